//! The daemon's log: structured `tracing` events in `daemon.log`, filtered by
//! `LOOPBACK_SINGLETON_LOG`, capped by `LOOPBACK_SINGLETON_LOG_MAX` (rotated to
//! `daemon.log.1`). The daemons are spawned by `suite-client` processes, whose
//! environment they inherit, or by this test binary.

mod common;

use std::time::Duration;

use common::{TestEnv, field};
use loopback_singleton::{Error, RemoteError};
use loopback_singleton_suite::{Counter, CounterClient, Fragile, FragileClient};

/// Runs `suite-client ARGS` with `vars` set (the daemon it starts inherits them);
/// returns the daemon's pid after shutting it down, so that the log is complete.
fn run_with(env: &TestEnv, args: &[&str], vars: &[(&str, &str)]) -> u64 {
    let mut client = env.client(args);
    for (name, value) in vars {
        client.env(name, value);
    }
    let output = common::output_within(client, Duration::from_secs(60));
    let pid = field(&output, "pid");
    let counter: CounterClient = env.builder::<Counter>().connect(0).unwrap();
    assert_eq!(u64::from(counter.pid().unwrap()), pid);
    counter.shutdown().unwrap();
    pid
}

fn read_log(env: &TestEnv, file: &str) -> String {
    std::fs::read_to_string(env.dir().join(file)).unwrap_or_default()
}

#[test]
fn debug_logs_every_call_with_its_method() {
    let env = TestEnv::new("logdebug");
    run_with(
        &env,
        &["inc", "0", "3"],
        &[("LOOPBACK_SINGLETON_LOG", "debug")],
    );
    let log = read_log(&env, "daemon.log");
    let calls: Vec<&str> = log.lines().filter(|line| line.contains(" call ")).collect();
    assert!(
        calls
            .iter()
            .filter(|line| line.contains("method=inc"))
            .count()
            >= 3,
        "{log}"
    );
    assert!(calls.iter().all(|line| line.contains("DEBUG")), "{log}");
    assert!(calls[0].contains("outcome=Ok"), "{log}");
    assert!(calls[0].contains("handler_us="), "{log}");
}

#[test]
fn warn_hides_the_start_line_and_info_calls() {
    let env = TestEnv::new("logwarn");
    run_with(
        &env,
        &["inc", "0", "1"],
        &[("LOOPBACK_SINGLETON_LOG", "warn")],
    );
    let log = read_log(&env, "daemon.log");
    assert!(env.dir().join("daemon.log").exists());
    assert!(!log.contains("serving"), "{log}");
    assert!(!log.contains("retiring"), "{log}");

    // The default is `info`: the start line is there.
    let env = TestEnv::new("loginfo");
    run_with(&env, &["inc", "0", "1"], &[]);
    let log = read_log(&env, "daemon.log");
    assert!(log.contains(" INFO ") && log.contains("serving `"), "{log}");
    assert!(!log.contains(" call "), "no per-call events at info: {log}");
}

#[test]
fn a_bad_filter_or_cap_still_starts_the_daemon_and_says_so() {
    let env = TestEnv::new("logbad");
    run_with(
        &env,
        &["inc", "0", "2"],
        &[
            ("LOOPBACK_SINGLETON_LOG", "loopback_singleton=loud"),
            ("LOOPBACK_SINGLETON_LOG_MAX", "a lot"),
        ],
    );
    let log = read_log(&env, "daemon.log");
    assert!(log.contains("serving `"), "it logs at info: {log}");
    let warnings: Vec<&str> = log.lines().filter(|line| line.contains(" WARN ")).collect();
    assert!(
        warnings
            .iter()
            .any(|line| line.contains("LOOPBACK_SINGLETON_LOG=") && line.contains("loud")),
        "{log}"
    );
    assert!(
        warnings
            .iter()
            .any(|line| line.contains("LOOPBACK_SINGLETON_LOG_MAX")),
        "{log}"
    );
}

#[test]
fn the_log_is_rotated_at_its_cap() {
    const CAP: u64 = 16 << 10;
    let env = TestEnv::new("logcap");
    // At debug, every call is an event of about 150 bytes: 2000 of them fill the cap
    // many times over.
    run_with(
        &env,
        &["inc", "0", "2000"],
        &[
            ("LOOPBACK_SINGLETON_LOG", "debug"),
            ("LOOPBACK_SINGLETON_LOG_MAX", "16KiB"),
        ],
    );
    let size = |file: &str| std::fs::metadata(env.dir().join(file)).map(|meta| meta.len());
    let (current, previous) = (size("daemon.log").unwrap(), size("daemon.log.1"));
    assert!(current <= CAP, "daemon.log is {current} bytes");
    let previous = previous.expect("daemon.log.1, the rotated log, exists");
    assert!(previous <= CAP, "daemon.log.1 is {previous} bytes");
    assert!(
        previous > CAP / 2,
        "daemon.log.1 was filled: {previous} bytes"
    );
    // Both are the daemon's own, private files (Unix modes: checked on Unix), and the
    // latest events are in the current one.
    #[cfg(unix)]
    for file in ["daemon.log", "daemon.log.1"] {
        use std::os::unix::fs::PermissionsExt;
        let mode = std::fs::metadata(env.dir().join(file))
            .unwrap()
            .permissions()
            .mode();
        assert_eq!(mode & 0o777, 0o600, "{file}");
    }
    assert!(read_log(&env, "daemon.log").contains("retiring"));
}

#[test]
fn a_panicking_method_is_logged_with_its_message_and_place() {
    let env = TestEnv::new("logpanic");
    let counter: CounterClient = env.builder::<Counter>().connect(0).unwrap();
    let message = "the widget came loose";
    match counter.explode(message) {
        Err(Error::Remote(RemoteError::Panic { message: got })) => assert_eq!(got, message),
        other => panic!("expected a remote panic, got {other:?}"),
    }
    assert_eq!(counter.inc().unwrap(), 1, "the daemon keeps serving");
    counter.shutdown().unwrap();
    let log = read_log(&env, "daemon.log");
    let lines: Vec<&str> = log.lines().filter(|line| line.contains(message)).collect();
    // The panic hook's event (where) and the call's (which method), both errors.
    assert!(
        lines
            .iter()
            .any(|line| line.contains(" ERROR ") && line.contains("location=")),
        "{log}"
    );
    assert!(
        lines
            .iter()
            .any(|line| line.contains(" ERROR ") && line.contains("method=explode")),
        "{log}"
    );
}

#[test]
fn an_in_process_host_logs_to_its_file_not_to_the_applications_stderr() {
    let env = TestEnv::new("logserve");
    let host = env
        .client(&["serve-limits"])
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    // Wait for it to publish, then stop it.
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    while env.recorded_pid().is_none() {
        assert!(
            std::time::Instant::now() < deadline,
            "the host never published"
        );
        std::thread::sleep(Duration::from_millis(10));
    }
    let limits: loopback_singleton_suite::LimitsClient = env
        .builder::<loopback_singleton_suite::Limits>()
        .connect(loopback_singleton_suite::Limits::standard(None))
        .unwrap();
    limits.shutdown().unwrap();
    let output = host.wait_with_output().unwrap();
    assert!(output.status.success(), "{output:?}");
    // The application's subscriber (to its stderr, every level) got its own event and
    // none of the host's.
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert_eq!(stderr.lines().count(), 1, "{stderr}");
    assert!(stderr.contains("application event"), "{stderr}");
    let log = read_log(&env, "daemon.log");
    assert!(
        log.contains("serving `") && log.contains("retiring"),
        "{log}"
    );
}

#[test]
fn what_a_spawned_daemon_prints_becomes_events_of_its_log() {
    let env = TestEnv::new("logstdio");
    let fragile: FragileClient = env.builder::<Fragile>().connect("ok".into()).unwrap();
    fragile.print("a careless line").unwrap();
    // The lines travel through a pipe and a thread of the daemon: wait for them.
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    let mut log = String::new();
    while std::time::Instant::now() < deadline {
        log = read_log(&env, "daemon.log");
        if log.matches("a careless line").count() >= 2 {
            break;
        }
        std::thread::sleep(Duration::from_millis(10));
    }
    fragile.shutdown().unwrap();
    for stream in ["out", "err"] {
        assert!(
            log.lines().any(|line| line.contains(" WARN stdio: ")
                && line.ends_with(&format!("{stream}: a careless line"))),
            "{log}"
        );
    }
}

#[test]
fn what_a_spawned_daemon_prints_as_it_exits_reaches_its_log() {
    let env = TestEnv::new("logdrop");
    let fragile: FragileClient = env.builder::<Fragile>().connect("loud".into()).unwrap();
    fragile.hello().unwrap();
    // `shutdown` returns once the process is gone: whatever reached the log is there.
    fragile.shutdown().unwrap();
    let log = read_log(&env, "daemon.log");
    for last_words in ["dropped, state saved", "goodbye"] {
        assert!(
            log.lines()
                .any(|line| line.contains(" WARN stdio: ") && line.ends_with(last_words)),
            "{last_words:?} is missing from the log:\n{log}"
        );
    }
}
