//! The daemon's life: start, reuse, mismatch, shutdown, idle retirement, crashes and
//! stale state. Each test has its own runtime directory and name and stops what it
//! starts. Clients here run inside this test binary, so the daemons they start are
//! re-executions of a `cargo test` binary.

mod common;

use std::io::{BufRead, BufReader};
use std::process::{Child, Stdio};
use std::time::{Duration, Instant};

use common::{TestEnv, alive, field, value_of, wait_gone};
use loopback_singleton::{Error, RemoteError};
use loopback_singleton_suite::{
    Counter, CounterClient, CounterError, Fragile, FragileClient, Limits, LimitsClient,
};

#[test]
fn count_continues_across_processes_with_one_daemon() {
    let env = TestEnv::new("continues");
    let first = env.run_client(&["inc", "10", "5"]);
    let second = env.run_client(&["inc", "10", "5"]);
    assert_eq!(field(&first, "last"), 15);
    assert_eq!(
        field(&second, "last"),
        20,
        "the second process continues the count"
    );
    assert_eq!(
        field(&first, "pid"),
        field(&second, "pid"),
        "one daemon served both"
    );
}

#[test]
fn every_argument_form_and_typed_errors_work() {
    let env = TestEnv::new("forms");
    let counter: CounterClient = env.builder::<Counter>().connect(100).unwrap();
    assert_eq!(counter.add_all(&[1, 2, 3]).unwrap(), 106);
    assert_eq!(counter.slow_inc(20).unwrap(), 107);
    assert_eq!(counter.echo(vec![1, 2, 3]).unwrap(), vec![1, 2, 3]);
    assert_eq!(counter.checked_sub(7).unwrap(), Ok(100));
    // The service's own error stays typed and apart from transport errors.
    assert_eq!(
        counter.checked_sub(1000).unwrap(),
        Err(CounterError::Underflow { value: 100 })
    );
    counter.shutdown().unwrap();
}

#[test]
fn one_client_serves_many_threads_exactly() {
    let env = TestEnv::new("threads");
    let counter: CounterClient = env.builder::<Counter>().connect(0).unwrap();
    std::thread::scope(|scope| {
        for _ in 0..4 {
            scope.spawn(|| {
                for _ in 0..250 {
                    counter.inc().unwrap();
                }
            });
        }
    });
    assert_eq!(counter.get().unwrap(), 1000);
    counter.shutdown().unwrap();
}

#[test]
fn init_mismatch_is_typed_and_leaves_the_daemon_alone() {
    let env = TestEnv::new("mismatch");
    let first: CounterClient = env.builder::<Counter>().connect(1).unwrap();
    first.inc().unwrap();
    match env.builder::<Counter>().connect(2) {
        Err(Error::InitMismatch {
            wanted, running, ..
        }) => {
            assert_eq!(wanted, "2");
            assert_eq!(running, "1");
        }
        other => panic!("expected InitMismatch, got {other:?}"),
    }
    // The running daemon keeps serving its clients.
    assert_eq!(first.inc().unwrap(), 3);
    // `attach` accepts whatever runs.
    let attached: CounterClient = env.builder::<Counter>().attach().connect(2).unwrap();
    assert_eq!(attached.get().unwrap(), 3);
    first.shutdown().unwrap();
}

/// Equal init maps are equal whatever order each process's `HashMap` holds them in;
/// a changed entry is still refused. The daemon is started from this process, the
/// others connect from `suite-client` processes (each with its own `RandomState`).
#[test]
fn equal_init_maps_from_other_processes_are_accepted_whatever_their_order() {
    let env = TestEnv::new("map-order");
    let ours = Limits::standard(None);
    let our_order = Limits::order(&ours);
    let first: LimitsClient = env.builder::<Limits>().connect(ours).unwrap();
    let pid = u64::from(first.pid().unwrap());

    let same = env.run_client(&["limits"]);
    let stdout = String::from_utf8_lossy(&same.stdout).into_owned();
    // Guards the test itself: std seeds every process's hasher afresh, so the other
    // process's map iterates in another order (equal orders of 16 keys: ~1e-13).
    assert_ne!(value_of(&stdout, "order"), our_order, "{stdout}");
    assert_eq!(
        field(&same, "pid"),
        pid,
        "the same entries in another order reach the same daemon"
    );

    let changed = env.run_client(&["limits", "7"]);
    let stdout = String::from_utf8_lossy(&changed.stdout).into_owned();
    assert_eq!(
        changed.status.code(),
        Some(3),
        "expected InitMismatch: {stdout}"
    );
    // Both sides describe the map in key order, so equal entries read the same.
    let described = |bump: Option<usize>| {
        let entries: Vec<String> = (0..16)
            .map(|i| {
                let value = 100 + i as u64 + u64::from(Some(i) == bump);
                format!("\"limit-{i:02}\":{value}")
            })
            .collect();
        format!("{{{}}}", entries.join(","))
    };
    assert_eq!(line(&stdout, "wanted"), described(Some(7)), "{stdout}");
    assert_eq!(line(&stdout, "running"), described(None), "{stdout}");

    // The daemon is unharmed and still the one this process started.
    assert_eq!(first.limit("limit-07").unwrap(), Some(107));
    assert_eq!(u64::from(first.pid().unwrap()), pid);
    first.shutdown().unwrap();
}

/// The same for a process hosting the service itself (`Service::serve`): it
/// fingerprints its arguments as a client-started daemon does.
#[test]
fn a_served_instance_accepts_equal_init_maps_from_other_processes() {
    let env = TestEnv::new("map-serve");
    let mut host = Reaped(
        env.client(&["serve-limits"])
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .unwrap(),
    );
    let mut announced = String::new();
    BufReader::new(host.0.stdout.take().unwrap())
        .read_line(&mut announced)
        .unwrap();
    let deadline = Instant::now() + Duration::from_secs(30);
    while env.recorded_pid() != Some(host.0.id()) {
        assert!(host.0.try_wait().unwrap().is_none(), "the host exited");
        assert!(Instant::now() < deadline, "the host did not publish itself");
        std::thread::sleep(Duration::from_millis(10));
    }

    let ours = Limits::standard(None);
    assert_ne!(
        value_of(&announced, "order"),
        Limits::order(&ours),
        "{announced}"
    );
    let client: LimitsClient = env.builder::<Limits>().connect(ours).unwrap();
    assert_eq!(client.pid().unwrap(), host.0.id());
    let changed = env.run_client(&["limits", "7"]);
    assert_eq!(
        changed.status.code(),
        Some(3),
        "expected InitMismatch: {}",
        String::from_utf8_lossy(&changed.stdout)
    );

    client.shutdown().unwrap();
    let status = host.0.wait().unwrap();
    assert!(status.success(), "the host exits cleanly: {status}");
}

/// A child process, killed (if still running) and reaped when dropped.
struct Reaped(Child);

impl Drop for Reaped {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// The rest of the line starting with `key=` in `stdout`.
fn line<'a>(stdout: &'a str, key: &str) -> &'a str {
    stdout
        .lines()
        .find_map(|line| line.strip_prefix(key)?.strip_prefix('='))
        .unwrap_or_else(|| panic!("no {key}= line in {stdout:?}"))
}

#[test]
fn shutdown_stops_the_daemon_and_the_next_connect_starts_a_new_one() {
    let env = TestEnv::new("shutdown");
    let counter: CounterClient = env.builder::<Counter>().connect(0).unwrap();
    counter.inc().unwrap();
    let pid = counter.pid().unwrap();
    counter.shutdown().unwrap();
    assert!(!alive(pid), "shutdown returns once the daemon is gone");
    assert!(
        !env.metadata_path().exists(),
        "the daemon removed its metadata"
    );

    let again: CounterClient = env.builder::<Counter>().connect(0).unwrap();
    assert_ne!(again.pid().unwrap(), pid);
    assert_eq!(again.inc().unwrap(), 1, "a fresh instance");
    again.shutdown().unwrap();
}

#[test]
fn shutdown_lets_the_call_in_flight_finish() {
    let env = TestEnv::new("inflight");
    let counter: CounterClient = env.builder::<Counter>().connect(0).unwrap();
    let slow = counter.clone();
    let in_flight = std::thread::spawn(move || slow.slow_inc(300));
    std::thread::sleep(Duration::from_millis(100));
    counter.shutdown().unwrap();
    assert_eq!(in_flight.join().unwrap().unwrap(), 1);
}

#[test]
fn a_panicking_method_is_a_remote_error_and_the_next_call_succeeds() {
    let env = TestEnv::new("panic");
    let counter: CounterClient = env.builder::<Counter>().connect(0).unwrap();
    match counter.explode("kaboom") {
        Err(Error::Remote(RemoteError::Panic { message })) => assert_eq!(message, "kaboom"),
        other => panic!("expected a remote panic, got {other:?}"),
    }
    assert_eq!(counter.inc().unwrap(), 1);
    counter.shutdown().unwrap();
}

#[test]
fn the_daemon_retires_after_the_idle_ttl() {
    let env = TestEnv::new("idle");
    let counter: CounterClient = env
        .builder::<Counter>()
        .idle_ttl(Duration::from_millis(300))
        .connect(0)
        .unwrap();
    let pid = counter.pid().unwrap();
    // Connected clients keep it alive beyond its TTL.
    std::thread::sleep(Duration::from_millis(600));
    assert!(alive(pid));
    drop(counter);
    assert!(
        wait_gone(pid, Duration::from_secs(10)),
        "the idle daemon exits by itself"
    );
    assert!(!env.metadata_path().exists());
}

#[test]
fn a_killed_daemon_is_replaced_on_the_next_connect() {
    let env = TestEnv::new("sigkill");
    // Under Wine 8 the connection to a process killed with TerminateProcess is at times
    // never closed (the wineserver keeps the dead peer's socket and spins), so the next
    // call would wait forever: there a call timeout bounds it, and a timeout counts as
    // losing the daemon. Unix and Windows itself close the connection at once.
    let wine = common::under_wine();
    let counter: CounterClient = env
        .builder::<Counter>()
        .call_timeout(wine.then_some(Duration::from_secs(5)))
        .connect(0)
        .unwrap();
    counter.inc().unwrap();
    let pid = counter.pid().unwrap();
    common::kill(pid);

    match counter.inc() {
        Err(Error::ConnectionLost { .. }) => {}
        Err(Error::Timeout { .. }) if wine => {}
        other => panic!("expected ConnectionLost, got {other:?}"),
    }
    let fresh: CounterClient = env.builder::<Counter>().connect(0).unwrap();
    let new_pid = fresh.pid().unwrap();
    assert_ne!(new_pid, pid);
    assert_eq!(fresh.inc().unwrap(), 1);
    // The old client reconnects to the new daemon on its next call.
    assert_eq!(counter.inc().unwrap(), 2);
    assert_eq!(counter.pid().unwrap(), new_pid);
    fresh.shutdown().unwrap();
}

#[test]
fn garbage_metadata_is_stale_state_and_connect_recovers() {
    let env = TestEnv::new("garbage");
    for garbage in [
        &b""[..],
        b"{\"port\": 1",
        b"\x00\xff garbage \x17",
        b"{\"port\":1,\"pid\":1}",
    ] {
        let counter: CounterClient = env.builder::<Counter>().connect(0).unwrap();
        let pid = counter.pid().unwrap();
        counter.shutdown().unwrap();
        assert!(!alive(pid));
        common::write_private(&env.metadata_path(), garbage);
        let counter: CounterClient = env.builder::<Counter>().connect(0).unwrap();
        assert_eq!(counter.inc().unwrap(), 1);
        counter.shutdown().unwrap();
    }
}

#[test]
fn a_failing_constructor_fails_connect_fast_with_its_reason() {
    let env = TestEnv::new("ctorfail");
    for (mode, expected) in [
        ("panic", "the constructor refused to start"),
        ("error", "no configuration found"),
    ] {
        let started = Instant::now();
        let result = env
            .builder::<Fragile>()
            .start_timeout(Duration::from_secs(60))
            .connect(mode.to_string());
        let waited = started.elapsed();
        match result {
            Err(Error::StartFailed { reason, .. }) => {
                assert!(reason.contains(expected), "{reason}")
            }
            other => panic!("expected StartFailed, got {other:?}"),
        }
        assert!(
            waited < Duration::from_secs(30),
            "failed from the readiness report, not the timeout"
        );
        assert!(!env.metadata_path().exists(), "no daemon was published");
    }
    // The name is free for a constructor that works.
    let fragile: FragileClient = env.builder::<Fragile>().connect("ok".to_string()).unwrap();
    assert_eq!(fragile.hello().unwrap(), "hello");
    fragile.shutdown().unwrap();
}

#[test]
fn no_spawn_switch_fails_instead_of_starting() {
    let env = TestEnv::new("nospawn");
    let output = common::output_within(
        {
            let mut command = env.client(&["get", "0"]);
            command.env("LOOPBACK_SINGLETON_NO_SPAWN", "1");
            command
        },
        Duration::from_secs(60),
    );
    assert!(!output.status.success());
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(stderr.contains("LOOPBACK_SINGLETON_NO_SPAWN"), "{stderr}");
    assert!(!env.metadata_path().exists());
}

#[test]
fn a_start_slower_than_the_timeout_still_ends_with_one_daemon() {
    let env = TestEnv::new("slowstart");
    let impatient = env
        .builder::<Fragile>()
        .start_timeout(Duration::from_millis(300))
        .connect("slow".to_string());
    assert!(
        matches!(impatient, Err(Error::StartTimeout { .. })),
        "{impatient:?}"
    );
    // The slow daemon holds the start lock until it has published itself: the next
    // clients wait for it instead of starting a second one.
    let patient = || {
        env.builder::<Fragile>()
            .start_timeout(Duration::from_secs(20))
            .connect("slow".to_string())
            .unwrap()
    };
    let (first, second): (FragileClient, FragileClient) = (patient(), patient());
    assert_eq!(first.ping().unwrap().pid, second.ping().unwrap().pid);
    let log = std::fs::read_to_string(env.dir().join("daemon.log")).unwrap();
    assert_eq!(
        log.matches("serving `").count(),
        1,
        "one daemon started:\n{log}"
    );
    first.shutdown().unwrap();
}

/// Unix only: the daemon command is a shell script.
#[cfg(unix)]
#[test]
fn a_daemon_command_that_never_reports_is_stopped_at_the_start_timeout() {
    use std::os::unix::fs::PermissionsExt;
    let env = TestEnv::new("notadaemon");
    let script = env.base.join("not-a-daemon.sh");
    std::fs::write(&script, "#!/bin/sh\nexec sleep 30\n").unwrap();
    std::fs::set_permissions(&script, std::fs::Permissions::from_mode(0o755)).unwrap();
    let started = Instant::now();
    let result = env
        .builder::<Counter>()
        .daemon_command(&script)
        .start_timeout(Duration::from_secs(1))
        .connect(0);
    assert!(
        matches!(result, Err(Error::StartTimeout { .. })),
        "{result:?}"
    );
    assert!(
        started.elapsed() < Duration::from_secs(10),
        "{:?}",
        started.elapsed()
    );
}

#[test]
fn large_init_arguments_reach_the_daemon() {
    // Init arguments travel through a private file, not the environment (whose
    // strings are limited to 128 KiB).
    let env = TestEnv::new("biginit");
    let big = "x".repeat(300_000);
    let fragile: FragileClient = env.builder::<Fragile>().connect(big.clone()).unwrap();
    assert_eq!(fragile.hello().unwrap(), "hello");
    // The same arguments find the same daemon; others are told what runs.
    let again: FragileClient = env.builder::<Fragile>().connect(big).unwrap();
    assert_eq!(again.ping().unwrap().pid, fragile.ping().unwrap().pid);
    assert!(
        !env.dir().join("launch").exists(),
        "the launch file is removed"
    );
    fragile.shutdown().unwrap();
}

#[test]
fn the_idle_ttl_counts_from_the_last_disconnect() {
    let env = TestEnv::new("idlefrom");
    let ttl = Duration::from_millis(700);
    let counter: CounterClient = env.builder::<Counter>().idle_ttl(ttl).connect(0).unwrap();
    counter.inc().unwrap();
    let pid = counter.pid().unwrap();
    // A session longer than the TTL...
    std::thread::sleep(ttl * 2);
    drop(counter);
    // ...then a reconnect well within the TTL finds the same daemon and state.
    std::thread::sleep(ttl / 4);
    let again: CounterClient = env.builder::<Counter>().idle_ttl(ttl).connect(0).unwrap();
    assert_eq!(
        again.pid().unwrap(),
        pid,
        "the daemon retired at once after the session"
    );
    assert_eq!(again.get().unwrap(), 1);
    again.shutdown().unwrap();
}

/// Unix only: Windows's equivalent, a console event, cannot reach a daemon created
/// without a console.
#[cfg(unix)]
#[test]
fn sigterm_retires_the_daemon_gracefully() {
    let env = TestEnv::new("sigterm");
    let counter: CounterClient = env.builder::<Counter>().connect(0).unwrap();
    let pid = counter.pid().unwrap();
    // SAFETY: kill has no memory-safety preconditions.
    unsafe { libc::kill(pid as libc::pid_t, libc::SIGTERM) };
    assert!(wait_gone(pid, Duration::from_secs(10)));
    assert!(
        !env.metadata_path().exists(),
        "it unpublished itself on the way out"
    );
    let log = std::fs::read_to_string(env.dir().join("daemon.log")).unwrap();
    assert!(log.contains("retiring reason=SIGTERM"), "{log}");
}

#[test]
fn shutdown_of_a_daemon_already_gone_starts_none() {
    let env = TestEnv::new("shutgone");
    let first: CounterClient = env.builder::<Counter>().connect(0).unwrap();
    let second: CounterClient = env.builder::<Counter>().connect(0).unwrap();
    first.shutdown().unwrap();
    // The second client's pooled connection leads nowhere now: nothing to stop, and
    // no daemon is started just to be stopped.
    second.shutdown().unwrap();
    second.shutdown().unwrap();
    assert!(!env.metadata_path().exists());
    let log = std::fs::read_to_string(env.dir().join("daemon.log")).unwrap();
    // "serving `<name>`" once per daemon (not "serving TCP only", which a daemon
    // without Unix sockets, on Windows, also logs).
    assert_eq!(log.matches("serving `").count(), 1, "{log}");
}

#[test]
fn the_idle_ttl_comes_from_the_environment_where_the_code_leaves_the_default() {
    let env = TestEnv::new("envttl");
    // suite-client leaves the idle TTL at its default (2 s); the environment says never.
    let mut client = env.client(&["inc", "0", "1"]);
    client.env("LOOPBACK_SINGLETON_IDLE_TTL", "none");
    let output = common::output_within(client, Duration::from_secs(60));
    let pid = field(&output, "pid") as u32;
    // Past the default TTL with no client: still there.
    std::thread::sleep(Duration::from_millis(3500));
    assert!(
        alive(pid),
        "LOOPBACK_SINGLETON_IDLE_TTL=none keeps the daemon"
    );
    let counter: CounterClient = env.builder::<Counter>().connect(0).unwrap();
    assert_eq!(counter.pid().unwrap(), pid);
    counter.shutdown().unwrap();

    // A value that does not parse is a clear error, and starts nothing.
    let mut client = env.client(&["inc", "0", "1"]);
    client.env("LOOPBACK_SINGLETON_IDLE_TTL", "soon");
    let output = common::output_within(client, Duration::from_secs(60));
    assert!(!output.status.success());
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(
        stderr.contains("LOOPBACK_SINGLETON_IDLE_TTL") && stderr.contains("30s"),
        "{stderr}"
    );
    assert!(env.recorded_pid().is_none(), "nothing was started");
}

#[test]
fn stats_count_calls_errors_and_panics_per_method_and_take_stats_resets() {
    let env = TestEnv::new("stats");
    let counter: CounterClient = env.builder::<Counter>().connect(0).unwrap();
    for _ in 0..3 {
        counter.inc().unwrap();
    }
    assert!(counter.explode("kaboom").is_err());
    // An index no method has: BadRequest, reported under its index without a name.
    let refused: Result<u64, Error> = counter.client().call(99, &());
    assert!(matches!(
        refused,
        Err(Error::Remote(RemoteError::BadRequest { .. }))
    ));

    let stats = counter.client().stats().unwrap();
    let find = |stats: &loopback_singleton::Stats, index: u32| {
        stats
            .methods
            .iter()
            .find(|method| method.index == index)
            .unwrap_or_else(|| panic!("no method {index} in {stats:?}"))
            .clone()
    };
    let inc = find(&stats, 0);
    assert_eq!((inc.name.as_str(), inc.calls, inc.errors), ("inc", 3, 0));
    assert_eq!((inc.handler.count, inc.queue.count), (3, 3));
    assert!(inc.handler.p50 <= inc.handler.p99 && inc.handler.p99 <= inc.handler.max);
    let explode = stats
        .methods
        .iter()
        .find(|method| method.name == "explode")
        .unwrap();
    assert_eq!((explode.calls, explode.panics), (1, 1));
    let unknown = find(&stats, 99);
    assert_eq!(
        (unknown.name.as_str(), unknown.calls, unknown.errors),
        ("", 1, 1)
    );
    assert_eq!(unknown.handler.count, 0, "never ran");

    let taken = counter.client().take_stats().unwrap();
    assert_eq!(
        find(&taken, 0).calls,
        3,
        "the report covers up to the reset"
    );
    let after = counter.client().stats().unwrap();
    assert_eq!(find(&after, 0).calls, 0);
    assert!(after.methods.iter().all(|method| method.index != 99));
    counter.shutdown().unwrap();
}
