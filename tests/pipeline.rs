//! `Client::pipeline`: many calls on one connection, sent ahead of their replies.

mod common;

use common::TestEnv;
use loopback_singleton::{Error, RemoteError};
use loopback_singleton_suite::{Counter, CounterError};

// Method numbers of `Counter`: the position of each public method in its impl block.
const INC: u32 = 0;
const CHECKED_SUB: u32 = 3;
const EXPLODE: u32 = 4;
const ECHO: u32 = 6;

#[test]
fn pipelined_calls_run_in_order_and_return_every_result() {
    let env = TestEnv::new("pipeline-order");
    let counter = env.builder::<Counter>().connect(0).unwrap();
    let values: Vec<u64> = counter
        .client()
        .pipeline(INC, (0..1000).map(|_| ()), 64)
        .unwrap();
    assert_eq!(values, (1..=1000).collect::<Vec<u64>>());
    // A window of 0 is taken as 1, and a window larger than the calls is fine.
    let values: Vec<u64> = counter.client().pipeline(INC, [(), ()], 0).unwrap();
    assert_eq!(values, [1001, 1002]);
    let values: Vec<u64> = counter.client().pipeline(INC, [()], 1000).unwrap();
    assert_eq!(values, [1003]);
    let none: Vec<u64> = counter
        .client()
        .pipeline(INC, std::iter::empty::<()>(), 8)
        .unwrap();
    assert!(none.is_empty());
    assert_eq!(counter.get().unwrap(), 1003);
    // Typed errors of the service stay values, one per call.
    let results: Vec<Result<u64, CounterError>> = counter
        .client()
        .pipeline(CHECKED_SUB, [(1000u64,), (1000,), (3,)], 8)
        .unwrap();
    assert_eq!(
        results,
        [Ok(3), Err(CounterError::Underflow { value: 3 }), Ok(0)]
    );
    counter.shutdown().unwrap();
}

#[test]
fn large_pipelined_payloads_do_not_deadlock() {
    let env = TestEnv::new("pipeline-large");
    let counter = env.builder::<Counter>().connect(0).unwrap();
    // Replies as big as the requests, far more in flight than socket buffers hold if
    // the window were unbounded: the 64 KiB batch bound keeps both sides moving.
    for size in [30 << 10, 300 << 10, 2 << 20] {
        let payloads: Vec<Vec<u8>> = (0..24u8).map(|i| vec![i; size]).collect();
        let echoed: Vec<Vec<u8>> = counter
            .client()
            .pipeline(ECHO, payloads.iter().map(|p| (p.clone(),)), 64)
            .unwrap();
        assert_eq!(echoed, payloads, "payloads of {size} bytes");
    }
    counter.shutdown().unwrap();
}

#[test]
fn a_failing_call_reports_its_error_and_leaves_the_connection_usable() {
    let env = TestEnv::new("pipeline-error");
    let counter = env.builder::<Counter>().connect(0).unwrap();
    let result: Result<Vec<u64>, Error> =
        counter
            .client()
            .pipeline(EXPLODE, [("first",), ("second",)], 8);
    match result {
        Err(Error::Remote(RemoteError::Panic { message })) => assert_eq!(message, "first"),
        other => panic!("expected the first call's panic, got {other:?}"),
    }
    // A wrong method number or argument type is refused by the daemon, not misread.
    let wrong: Result<Vec<u64>, Error> = counter.client().pipeline(999, [()], 8);
    assert!(
        matches!(wrong, Err(Error::Remote(RemoteError::BadRequest { .. }))),
        "{wrong:?}"
    );
    // The same pooled connection still answers, in step.
    let values: Vec<u64> = counter.client().pipeline(INC, [(), ()], 8).unwrap();
    assert_eq!(values, [1, 2]);
    assert_eq!(counter.inc().unwrap(), 3);
    assert_eq!(counter.ping().unwrap().clients, 1);
    counter.shutdown().unwrap();
}
