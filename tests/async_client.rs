//! The async client: many tasks multiplexed on one connection, typed errors, timeouts,
//! cancellation, a killed daemon, and shutdown — against real daemons.

mod common;

use std::time::Duration;

use common::{TestEnv, alive};
use loopback_singleton::{Error, RemoteError};
use loopback_singleton_suite::{Counter, CounterAsyncClient, CounterClient, CounterError};

async fn connect(env: &TestEnv) -> CounterAsyncClient {
    env.builder::<Counter>().connect_async(0).await.unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn many_tasks_share_one_connection_and_count_exactly() {
    let env = TestEnv::new("async-tasks");
    let counter = connect(&env).await;
    let tasks: Vec<_> = (0..50)
        .map(|_| {
            let counter = counter.clone();
            tokio::spawn(async move {
                for _ in 0..40 {
                    counter.inc().await.unwrap();
                }
            })
        })
        .collect();
    for task in tasks {
        task.await.unwrap();
    }
    assert_eq!(counter.get().await.unwrap(), 2000);
    let info = counter.ping().await.unwrap();
    assert_eq!(info.clients, 1, "every task went through one connection");
    // A blocking client of the same daemon sees the same instance.
    let blocking: CounterClient = env.builder::<Counter>().connect(0).unwrap();
    assert_eq!(blocking.inc().unwrap(), 2001);
    counter.shutdown().await.unwrap();
    assert!(!alive(info.pid));
}

#[tokio::test]
async fn every_argument_form_and_error_kind_travels() {
    let env = TestEnv::new("async-forms");
    let counter = connect(&env).await;
    assert_eq!(counter.add_all(&[1, 2, 3]).await.unwrap(), 6);
    assert_eq!(counter.slow_inc(10).await.unwrap(), 7);
    let payload: Vec<u8> = (0..=255).collect();
    assert_eq!(counter.echo(payload.clone()).await.unwrap(), payload);
    assert_eq!(counter.byte_sum(&payload).await.unwrap(), 255 * 256 / 2);
    assert_eq!(
        counter.checked_sub(100).await.unwrap(),
        Err(CounterError::Underflow { value: 7 })
    );
    match counter.explode("async kaboom").await {
        Err(Error::Remote(RemoteError::Panic { message })) => assert_eq!(message, "async kaboom"),
        other => panic!("expected a remote panic, got {other:?}"),
    }
    assert_eq!(
        counter.inc().await.unwrap(),
        8,
        "the connection survives the panic"
    );
    counter.shutdown().await.unwrap();
}

#[tokio::test]
async fn a_timed_out_or_dropped_call_leaves_the_connection_in_step() {
    let env = TestEnv::new("async-timeout");
    let counter: CounterAsyncClient = env
        .builder::<Counter>()
        .call_timeout(Duration::from_millis(100))
        .connect_async(0)
        .await
        .unwrap();
    match counter.slow_inc(400).await {
        Err(Error::Timeout { .. }) => {}
        other => panic!("expected Timeout, got {other:?}"),
    }
    // Dropping a call that was sent stops the wait, not the call.
    let gave_up = tokio::time::timeout(Duration::from_millis(20), counter.slow_inc(50)).await;
    assert!(gave_up.is_err());
    // A call never polled is never sent.
    drop(counter.inc());
    // Once the daemon is done with both slow calls, their late replies are dropped and
    // this call gets its own: both ran, the unsent one did not.
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert_eq!(counter.inc().await.unwrap(), 3);
    counter.shutdown().await.unwrap();
}

#[tokio::test]
async fn a_killed_daemon_fails_the_calls_in_flight_and_the_next_call_reconnects() {
    let env = TestEnv::new("async-killed");
    let counter = connect(&env).await;
    let pid = counter.ping().await.unwrap().pid;
    let in_flight = tokio::spawn(counter.slow_inc(5_000));
    tokio::time::sleep(Duration::from_millis(100)).await;
    common::kill(pid);
    let outcome = tokio::time::timeout(Duration::from_secs(10), in_flight)
        .await
        .expect("the call in flight ends when the daemon dies")
        .unwrap();
    assert!(
        matches!(outcome, Err(Error::ConnectionLost { .. })),
        "{outcome:?}"
    );
    // The next call finds no daemon and starts a fresh one.
    assert_eq!(counter.inc().await.unwrap(), 1);
    assert_ne!(counter.ping().await.unwrap().pid, pid);
    counter.shutdown().await.unwrap();
}

#[tokio::test]
async fn dropping_every_handle_closes_the_connection() {
    let env = TestEnv::new("async-drop");
    let blocking: CounterClient = env.builder::<Counter>().connect(0).unwrap();
    let counter = connect(&env).await;
    counter.inc().await.unwrap();
    assert_eq!(blocking.ping().unwrap().clients, 2);
    drop(counter);
    let deadline = std::time::Instant::now() + Duration::from_secs(5);
    while blocking.ping().unwrap().clients != 1 {
        assert!(
            std::time::Instant::now() < deadline,
            "the async connection stayed open"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    blocking.shutdown().unwrap();
}

#[test]
fn a_client_outlives_the_runtime_it_connected_in() {
    let env = TestEnv::new("async-runtimes");
    let first = tokio::runtime::Runtime::new().unwrap();
    let counter: CounterAsyncClient = first
        .block_on(env.builder::<Counter>().connect_async(0))
        .unwrap();
    assert_eq!(first.block_on(counter.inc()).unwrap(), 1);
    // The connection's tasks die with their runtime; the client notices and
    // reconnects from the runtime it is used in next, instead of waiting forever.
    drop(first);
    let second = tokio::runtime::Runtime::new().unwrap();
    let value = second
        .block_on(async { tokio::time::timeout(Duration::from_secs(10), counter.inc()).await })
        .expect("the call must not hang")
        .unwrap();
    assert_eq!(value, 2, "the same daemon, reached again");
    second.block_on(counter.shutdown()).unwrap();
}

#[tokio::test]
async fn async_stats_report_and_reset() {
    let env = TestEnv::new("async-stats");
    let counter = connect(&env).await;
    for _ in 0..4 {
        counter.inc().await.unwrap();
    }
    let stats = counter.client().stats().await.unwrap();
    let inc = stats.methods.iter().find(|m| m.name == "inc").unwrap();
    assert_eq!(inc.calls, 4);
    let taken = counter.client().take_stats().await.unwrap();
    assert_eq!(
        taken
            .methods
            .iter()
            .find(|m| m.name == "inc")
            .unwrap()
            .calls,
        4
    );
    let after = counter.client().stats().await.unwrap();
    assert_eq!(
        after
            .methods
            .iter()
            .find(|m| m.name == "inc")
            .unwrap()
            .calls,
        0
    );
    counter.shutdown().await.unwrap();
}
