//! Faults with real processes: racing starts, daemons killed mid-call, ports taken over,
//! corrupt and stale runtime files, version skew, leaks, and exact counts under churn.
//! Each test has its own runtime directory and name and stops what it starts.
//!
//! Unix only: these tests stop processes with SIGSTOP/SIGKILL, read `/proc` and raise
//! `RLIMIT_NOFILE`. The portable lifecycle tests (`lifecycle.rs`, `processes.rs`,
//! `single_instance.rs`) also run on Windows.
#![cfg(unix)]

mod common;

use std::collections::BTreeSet;
use std::io::{BufRead, BufReader, Read, Write};
use std::net::{TcpListener, TcpStream};
use std::process::{Child, Command, Output, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU32, Ordering};
use std::time::{Duration, Instant};

use common::{TestEnv, alive, field, kill, process_state};
use loopback_singleton::{Error, Service};
use loopback_singleton_suite::{Counter, CounterClient};

/// A `suite-faults` process aimed at this test's directory and `name`.
fn faults(env: &TestEnv, name: &str, args: &[&str]) -> Command {
    let mut command = Command::new(env!("CARGO_BIN_EXE_suite-faults"));
    command
        .args(args)
        .env("LOOPBACK_SINGLETON_DIR", &env.base)
        .env("SUITE_NAME", name)
        .env_remove("LOOPBACK_SINGLETON_NO_SPAWN")
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    command
}

/// Waits for every child, killing all of them if they are not done within `limit`.
fn wait_all(children: Vec<Child>, limit: Duration) -> Vec<Output> {
    let pids: Vec<u32> = children.iter().map(Child::id).collect();
    let done = Arc::new(AtomicBool::new(false));
    let watchdog = {
        let done = Arc::clone(&done);
        std::thread::spawn(move || {
            let deadline = Instant::now() + limit;
            while !done.load(Ordering::Acquire) {
                if Instant::now() > deadline {
                    for &pid in &pids {
                        // SAFETY: kill has no memory-safety preconditions.
                        unsafe { libc::kill(pid as libc::pid_t, libc::SIGKILL) };
                    }
                    return true;
                }
                std::thread::sleep(Duration::from_millis(20));
            }
            false
        })
    };
    let outputs: Vec<Output> = children
        .into_iter()
        .map(|child| child.wait_with_output().expect("waiting for a child"))
        .collect();
    done.store(true, Ordering::Release);
    assert!(
        !watchdog.join().unwrap(),
        "child processes did not finish within {limit:?}"
    );
    outputs
}

/// The start time of a live process, as the runtime records it (field 22 of
/// `/proc/<pid>/stat`, clock ticks since boot).
fn start_time(pid: u32) -> u64 {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap();
    let rest = &stat[stat.rfind(')').unwrap() + 1..];
    rest.split_whitespace().nth(19).unwrap().parse().unwrap()
}

/// The value of `"key": value` in the daemon's metadata JSON.
fn get_field<'a>(json: &'a str, key: &str) -> &'a str {
    common::json_field(json, key).unwrap_or_else(|| panic!("no {key} in {json}"))
}

/// Replaces the value of `"key": value` in the daemon's (pretty-printed) metadata JSON.
fn set_field(json: &str, key: &str, value: &str) -> String {
    let pattern = format!("\"{key}\": ");
    let at = json
        .find(&pattern)
        .unwrap_or_else(|| panic!("no {key} in {json}"))
        + pattern.len();
    let end = at + json[at..].find([',', '\n']).unwrap();
    format!("{}{value}{}", &json[..at], &json[end..])
}

/// Open descriptors of a process.
fn fd_count(pid: u32) -> usize {
    std::fs::read_dir(format!("/proc/{pid}/fd"))
        .unwrap()
        .count()
}

/// Waits until the daemon counts exactly `clients` connections (the asker included).
fn wait_clients(counter: &CounterClient, clients: u32) {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let now = counter.ping().unwrap().clients;
        if now == clients {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "the daemon still counts {now} clients, expected {clients}"
        );
        std::thread::sleep(Duration::from_millis(10));
    }
}

/// `sleep 30`: a live process of another program, killed and reaped on drop.
struct OtherProgram(Child);

impl OtherProgram {
    fn start() -> Self {
        OtherProgram(Command::new("sleep").arg("30").spawn().unwrap())
    }

    fn pid(&self) -> u32 {
        self.0.id()
    }
}

impl Drop for OtherProgram {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// A server that took over a port: answers every connection like an HTTP server
/// answers bytes it does not understand. Counts connections; stops on drop.
struct GarbageServer {
    port: u16,
    connections: Arc<AtomicU32>,
    stop: Arc<AtomicBool>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl GarbageServer {
    /// Listens on `port` (0: any free port).
    fn start(port: u16) -> Self {
        let deadline = Instant::now() + Duration::from_secs(5);
        let listener = loop {
            match TcpListener::bind(("127.0.0.1", port)) {
                Ok(listener) => break listener,
                Err(error) if Instant::now() > deadline => panic!("binding port {port}: {error}"),
                Err(_) => std::thread::sleep(Duration::from_millis(20)),
            }
        };
        let port = listener.local_addr().unwrap().port();
        listener.set_nonblocking(true).unwrap();
        let connections = Arc::new(AtomicU32::new(0));
        let stop = Arc::new(AtomicBool::new(false));
        let thread = {
            let (connections, stop) = (Arc::clone(&connections), Arc::clone(&stop));
            std::thread::spawn(move || {
                while !stop.load(Ordering::Acquire) {
                    match listener.accept() {
                        Ok((stream, _)) => {
                            connections.fetch_add(1, Ordering::AcqRel);
                            answer_garbage(stream);
                        }
                        Err(_) => std::thread::sleep(Duration::from_millis(5)),
                    }
                }
            })
        };
        GarbageServer {
            port,
            connections,
            stop,
            thread: Some(thread),
        }
    }

    fn connections(&self) -> u32 {
        self.connections.load(Ordering::Acquire)
    }
}

fn answer_garbage(mut stream: TcpStream) {
    let _ = stream.set_nonblocking(false);
    let _ = stream.set_read_timeout(Some(Duration::from_secs(1)));
    let mut request = [0u8; 1024];
    let _ = stream.read(&mut request);
    let _ = stream.write_all(
        b"HTTP/1.1 400 Bad Request\r\nContent-Type: text/html\r\nContent-Length: 11\r\n\r\nbad request",
    );
}

impl Drop for GarbageServer {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Release);
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

/// A daemon started from this test binary, its pid, and its metadata as written.
fn start_daemon(env: &TestEnv) -> (CounterClient, u32, String) {
    let counter: CounterClient = env.builder::<Counter>().connect(0).unwrap();
    assert_eq!(counter.inc().unwrap(), 1);
    let pid = counter.pid().unwrap();
    let metadata = std::fs::read_to_string(env.metadata_path()).unwrap();
    (counter, pid, metadata)
}

/// `connect` works, on a fresh daemon (not `old_pid`) with a fresh instance.
fn assert_recovers(env: &TestEnv, old_pid: u32, case: &str) {
    let started = Instant::now();
    let counter: CounterClient = match env.builder::<Counter>().connect(0) {
        Ok(counter) => counter,
        Err(error) => panic!("{case}: connect did not recover: {error}"),
    };
    let pid = counter.pid().unwrap();
    assert_ne!(pid, old_pid, "{case}: a fresh daemon");
    assert_eq!(counter.inc().unwrap(), 1, "{case}: a fresh instance");
    assert!(
        started.elapsed() < Duration::from_secs(5),
        "{case}: recovered only after {:?}",
        started.elapsed()
    );
    counter.shutdown().unwrap();
    assert!(!alive(pid));
}

#[test]
fn thirty_two_processes_racing_to_start_get_one_daemon_ten_times_over() {
    let env = TestEnv::new("race32");
    for round in 0..10 {
        let name = format!("{}-r{round}", env.name);
        let mut children: Vec<Child> = (0..32)
            .map(|_| {
                faults(&env, &name, &["race"])
                    .stdin(Stdio::piped())
                    .spawn()
                    .unwrap()
            })
            .collect();
        // The barrier: every process is up and waiting before any may go.
        let mut stdouts = Vec::new();
        for child in &mut children {
            let mut stdout = BufReader::new(child.stdout.take().unwrap());
            let mut line = String::new();
            stdout.read_line(&mut line).unwrap();
            assert_eq!(line.trim(), "ready", "round {round}");
            stdouts.push(stdout);
        }
        for child in &mut children {
            child.stdin.take().unwrap().write_all(b"go\n").unwrap();
        }
        let mut outputs = wait_all(children, Duration::from_secs(60));
        for (output, mut stdout) in outputs.iter_mut().zip(stdouts) {
            stdout.read_to_end(&mut output.stdout).unwrap();
        }
        let pids: BTreeSet<u64> = outputs.iter().map(|output| field(output, "pid")).collect();
        assert_eq!(pids.len(), 1, "round {round}: one daemon, got {pids:?}");
        let lasts: BTreeSet<u64> = outputs.iter().map(|output| field(output, "last")).collect();
        assert_eq!(
            lasts,
            (1..=32).collect(),
            "round {round}: every call counted once"
        );
        let log = std::fs::read_to_string(env.base.join(&name).join("daemon.log")).unwrap();
        assert_eq!(
            log.matches("serving `").count(),
            1,
            "round {round}: exactly one daemon ever started:\n{log}"
        );
        let counter: CounterClient = loopback_singleton::Builder::<Counter>::new()
            .runtime_dir(&env.base)
            .name(&name)
            .connect(0)
            .unwrap();
        assert_eq!(counter.get().unwrap(), 32);
        assert_eq!(u64::from(counter.pid().unwrap()), *pids.first().unwrap());
        counter.shutdown().unwrap();
    }
}

#[test]
fn a_daemon_killed_mid_call_is_a_typed_error_at_once_and_connect_starts_afresh() {
    let env = TestEnv::new("killmid");
    let counter: CounterClient = env
        .builder::<Counter>()
        .call_timeout(Duration::from_secs(30))
        .connect(0)
        .unwrap();
    let pid = counter.pid().unwrap();
    let served = counter.ping().unwrap().calls_served;
    let slow = counter.clone();
    let in_flight = std::thread::spawn(move || {
        let started = Instant::now();
        (slow.slow_inc(5000), started.elapsed())
    });
    // The call is running once the daemon counts it.
    let deadline = Instant::now() + Duration::from_secs(10);
    while counter.ping().unwrap().calls_served == served {
        assert!(Instant::now() < deadline, "the slow call never started");
        std::thread::sleep(Duration::from_millis(5));
    }
    kill(pid);
    let (result, waited) = in_flight.join().unwrap();
    match result {
        Err(Error::ConnectionLost { .. }) => {}
        other => panic!("expected ConnectionLost, got {other:?}"),
    }
    assert!(
        waited < Duration::from_secs(4),
        "the error came from the kill, not the call finishing: {waited:?}"
    );

    assert_recovers(&env, pid, "after SIGKILL mid-call");
}

#[test]
fn a_frozen_daemon_is_a_timeout_not_a_hang() {
    let env = TestEnv::new("frozen");
    let counter: CounterClient = env
        .builder::<Counter>()
        .call_timeout(Duration::from_millis(500))
        .connect(0)
        .unwrap();
    let sender: CounterClient = env
        .builder::<Counter>()
        .call_timeout(Duration::from_millis(500))
        .connect(0)
        .unwrap();
    let pid = counter.pid().unwrap();
    // SAFETY: kill has no memory-safety preconditions.
    unsafe { libc::kill(pid as libc::pid_t, libc::SIGSTOP) };
    // The signal is delivered asynchronously: wait until the kernel reports it stopped.
    let deadline = Instant::now() + Duration::from_secs(5);
    while process_state(pid) != Some('T') {
        assert!(Instant::now() < deadline, "the daemon did not stop");
        std::thread::sleep(Duration::from_millis(2));
    }

    // Sending a request larger than the socket buffers waits no longer than the call
    // timeout either.
    let started = Instant::now();
    match sender.echo(vec![7; 32 << 20]) {
        Err(Error::Timeout { .. }) => {}
        other => panic!("expected Timeout while sending, got {other:?}"),
    }
    assert!(
        started.elapsed() < Duration::from_secs(3),
        "{:?}",
        started.elapsed()
    );

    // A call waits no longer than its timeout.
    let started = Instant::now();
    match counter.inc() {
        Err(Error::Timeout { .. }) => {}
        other => panic!("expected Timeout, got {other:?}"),
    }
    assert!(
        started.elapsed() < Duration::from_secs(3),
        "{:?}",
        started.elapsed()
    );

    // A newcomer's handshake goes unanswered: connect gives up at its limits.
    let started = Instant::now();
    let result = env
        .builder::<Counter>()
        .connect_timeout(Duration::from_millis(300))
        .start_timeout(Duration::from_secs(1))
        .connect(0);
    assert!(result.is_err(), "connected to a frozen daemon");
    assert!(
        started.elapsed() < Duration::from_secs(4),
        "{:?}",
        started.elapsed()
    );

    kill(pid);
    assert_recovers(&env, pid, "after a frozen daemon was killed");
}

#[test]
fn a_killed_daemons_port_taken_by_another_server_is_stale_state() {
    let env = TestEnv::new("porttaken");

    // The metadata names the dead daemon; its port now answers like an HTTP server.
    let (counter, pid, metadata) = start_daemon(&env);
    let port: u16 = get_field(&metadata, "port").parse().unwrap();
    kill(pid);
    drop(counter);
    let server = GarbageServer::start(port);
    assert_recovers(&env, pid, "dead pid, port taken");
    drop(server);

    // The metadata names a live process of another program (pid and its real start
    // time), and a port where a garbage server answers: only the handshake can tell.
    let (counter, pid, metadata) = start_daemon(&env);
    kill(pid);
    drop(counter);
    let other = OtherProgram::start();
    let server = GarbageServer::start(0);
    let forged = set_field(&metadata, "pid", &other.pid().to_string());
    let forged = set_field(&forged, "start_time", &start_time(other.pid()).to_string());
    let forged = set_field(&forged, "port", &server.port.to_string());
    std::fs::write(env.metadata_path(), forged).unwrap();
    assert_recovers(
        &env,
        pid,
        "live pid of another program, port answers garbage",
    );
    assert!(
        server.connections() >= 1,
        "the client tried the recorded port before starting a daemon"
    );
    assert!(alive(other.pid()), "the other program was left alone");
}

#[test]
fn corrupt_and_stale_metadata_beside_a_real_secret_is_cleaned_up() {
    let env = TestEnv::new("stalemeta");
    let other = OtherProgram::start();
    let other_pid = other.pid().to_string();
    let other_start = start_time(other.pid()).to_string();
    type Corrupt = Box<dyn Fn(&str) -> Vec<u8>>;
    let cases: Vec<(&str, Corrupt)> = vec![
        ("dead pid", Box::new(|json: &str| json.as_bytes().to_vec())),
        ("empty", Box::new(|_: &str| Vec::new())),
        (
            "truncated",
            Box::new(|json: &str| json.as_bytes()[..json.len() / 2].to_vec()),
        ),
        (
            "garbage",
            Box::new(|_: &str| (0..512u32).map(|i| (i * 131 % 251) as u8).collect()),
        ),
        (
            "wrong versions",
            Box::new(|json: &str| {
                let json = set_field(json, "protocol", "99");
                set_field(&json, "crate_version", "\"0.0.0\"").into_bytes()
            }),
        ),
        (
            "wrong versions, live pid of another program, closed port",
            Box::new(move |json: &str| {
                let json = set_field(json, "protocol", "99");
                let json = set_field(&json, "crate_version", "\"0.0.0\"");
                let json = set_field(&json, "pid", &other_pid);
                set_field(&json, "start_time", &other_start).into_bytes()
            }),
        ),
        (
            "recycled pid (live, another start time)",
            Box::new({
                let other_pid = other.pid().to_string();
                move |json: &str| set_field(json, "pid", &other_pid).into_bytes()
            }),
        ),
        (
            "fields of the wrong type",
            Box::new(|json: &str| set_field(json, "port", "\"http\"").into_bytes()),
        ),
    ];
    for (case, corrupt) in cases {
        let (counter, pid, metadata) = start_daemon(&env);
        kill(pid);
        drop(counter);
        assert!(env.dir().join("secret").exists());
        std::fs::write(env.metadata_path(), corrupt(&metadata)).unwrap();
        assert_recovers(&env, pid, case);
    }
    assert!(alive(other.pid()), "the other program was left alone");
}

#[test]
fn a_missing_short_or_wrong_secret_is_stale_state() {
    let env = TestEnv::new("secret");
    let secret = env.dir().join("secret");

    // The daemon is gone and so is its secret.
    let (counter, pid, _) = start_daemon(&env);
    kill(pid);
    drop(counter);
    std::fs::remove_file(&secret).unwrap();
    assert_recovers(&env, pid, "dead daemon, no secret");

    // The daemon lives on but its secret was deleted, cut short, or replaced: nobody
    // new can authenticate with it any more. It still holds the name (its instance
    // lock): a second instance beside it would split the state, so newcomers get a
    // start timeout that names the lock, and its own clients keep it. Once it is gone,
    // a fresh daemon takes the name.
    let tamper: [(&str, &dyn Fn()); 3] = [
        ("live daemon, no secret", &|| {
            std::fs::remove_file(&secret).unwrap()
        }),
        ("live daemon, short secret", &|| {
            std::fs::write(&secret, b"short").unwrap()
        }),
        ("live daemon, wrong secret", &|| {
            std::fs::write(&secret, [0x5a; 32]).unwrap()
        }),
    ];
    for (case, tamper) in tamper {
        let (counter, pid, _) = start_daemon(&env);
        tamper();
        let refused = env
            .builder::<Counter>()
            .start_timeout(Duration::from_millis(300))
            .connect(0)
            .map(drop);
        match refused {
            Err(Error::StartTimeout { what, .. }) => {
                assert!(what.contains("instance lock"), "{case}: {what}")
            }
            other => panic!("{case}: expected a start timeout, got {other:?}"),
        }
        // The unreachable daemon still serves the client that knew it.
        assert_eq!(counter.inc().unwrap(), 2, "{case}");
        assert!(alive(pid));
        kill(pid);
        assert_recovers(&env, pid, case);
    }
}

#[test]
fn a_build_with_another_schema_gets_schema_mismatch_and_the_daemon_keeps_serving() {
    let env = TestEnv::new("skew");
    let first = env.run_client(&["inc", "0", "3"]);
    let pid = field(&first, "pid");
    assert_eq!(field(&first, "last"), 3);

    let mut v2 = Command::new(env!("CARGO_BIN_EXE_suite-client-v2"));
    v2.args(["inc", "0", "10"])
        .env("LOOPBACK_SINGLETON_DIR", &env.base)
        .env("SUITE_NAME", &env.name)
        .env_remove("LOOPBACK_SINGLETON_NO_SPAWN");
    let output = common::output_within(v2, Duration::from_secs(60));
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(!output.status.success(), "v2 connected: {stderr}");
    let v2_schema = stderr
        .split_whitespace()
        .find_map(|word| word.strip_prefix("schema="))
        .unwrap_or_else(|| panic!("no schema in {stderr}"))
        .to_string();
    let v1_schema = format!("{:016x}", <Counter as Service>::SCHEMA);
    assert_ne!(v1_schema, v2_schema);
    let message = stderr
        .lines()
        .find(|line| line.starts_with("error: "))
        .unwrap_or_else(|| panic!("no error in {stderr}"));
    assert!(
        message.contains("schema mismatch"),
        "a SchemaMismatch: {message}"
    );
    assert!(
        message.contains(&v1_schema) && message.contains(&v2_schema),
        "the message names both fingerprints ({v1_schema}, {v2_schema}): {message}"
    );
    assert!(
        stderr.contains(&format!(
            "schema-mismatch client={v2_schema} daemon={v1_schema}"
        )),
        "{stderr}"
    );

    // The daemon still serves version 1, with its count intact.
    let again = env.run_client(&["inc", "0", "1"]);
    assert_eq!(field(&again, "pid"), pid);
    assert_eq!(field(&again, "last"), 4);
    let counter: CounterClient = env.builder::<Counter>().connect(0).unwrap();
    counter.shutdown().unwrap();
}

/// Runs one build of the schema-skew service (`src/bin/suite-shapes-*.rs`).
fn shapes(env: &TestEnv, binary: &str, args: &[&str]) -> Output {
    let mut command = Command::new(binary);
    command
        .args(args)
        .env("LOOPBACK_SINGLETON_DIR", &env.base)
        .env("SUITE_NAME", &env.name)
        .env_remove("LOOPBACK_SINGLETON_NO_SPAWN");
    common::output_within(command, Duration::from_secs(60))
}

/// The schema mismatch a build got, or a panic saying what it got instead.
fn schema_mismatch(output: &Output) -> String {
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(
        !output.status.success(),
        "the other build connected: {stderr}"
    );
    let message = stderr
        .lines()
        .find_map(|line| line.strip_prefix("error: "))
        .unwrap_or_else(|| panic!("no error in {stderr}"));
    assert!(
        message.contains("schema mismatch"),
        "a SchemaMismatch: {message}"
    );
    message.to_string()
}

#[test]
fn a_struct_or_enum_changing_shape_between_builds_gets_schema_mismatch_and_the_daemon_keeps_serving()
 {
    let env = TestEnv::new("shapes");
    let v1 = env!("CARGO_BIN_EXE_suite-shapes-v1");
    let first = shapes(&env, v1, &["set-quota", "10"]);
    assert!(first.status.success(), "{first:?}");
    let pid = field(&first, "pid");
    assert_eq!(field(&first, "sets"), 1);

    // `Quota` gained a field: same methods, same signatures as written.
    let field_added = shapes(
        &env,
        env!("CARGO_BIN_EXE_suite-shapes-field"),
        &["set-quota", "20"],
    );
    let message = schema_mismatch(&field_added);
    assert!(
        message.contains("`Quota`: field `burst` added after `per_window` (in `set_quota(quota)`)"),
        "the message says what differs: {message}"
    );

    // `Mode` gained a variant in the middle, which would shift `Lenient` on the wire.
    let variant_added = shapes(
        &env,
        env!("CARGO_BIN_EXE_suite-shapes-variant"),
        &["set-mode"],
    );
    let message = schema_mismatch(&variant_added);
    assert!(
        message.contains("`Mode`: variant `Relaxed` added after `Strict` (in `set_mode(mode)`)"),
        "the message says what differs: {message}"
    );

    // Neither reached the instance: version 1 finds its state as it left it, in the
    // same daemon, and keeps working.
    let again = shapes(&env, v1, &["sets"]);
    assert_eq!(field(&again, "pid"), pid);
    assert_eq!(field(&again, "sets"), 1);
    let more = shapes(&env, v1, &["set-mode"]);
    assert_eq!(field(&more, "sets"), 2);
    assert!(shapes(&env, v1, &["shutdown"]).status.success());
}

#[test]
fn a_long_lived_client_leaves_no_zombie_and_no_descriptor_behind() {
    let env = TestEnv::new("leaks");
    let output = wait_all(
        vec![
            faults(&env, &env.name, &["leaks", "200", "20"])
                .spawn()
                .unwrap(),
        ],
        Duration::from_secs(60),
    )
    .remove(0);
    assert_eq!(field(&output, "rounds"), 200);
    assert_eq!(field(&output, "daemons"), 10, "a daemon per 20 rounds");
    assert_eq!(field(&output, "zombies"), 0, "no zombie child");
    assert_eq!(
        field(&output, "fds_after"),
        field(&output, "fds_before"),
        "no descriptor leaked"
    );
}

#[test]
fn the_daemon_returns_to_its_descriptor_baseline_after_a_thousand_connections() {
    const CONNECTIONS: usize = 1000;
    // Room for our end of every connection.
    let mut limit = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: getrlimit/setrlimit with a valid rlimit struct.
    unsafe {
        assert_eq!(libc::getrlimit(libc::RLIMIT_NOFILE, &mut limit), 0);
        let wanted = (CONNECTIONS as libc::rlim_t + 256).min(limit.rlim_max);
        if limit.rlim_cur < wanted {
            limit.rlim_cur = wanted;
            assert_eq!(libc::setrlimit(libc::RLIMIT_NOFILE, &limit), 0);
        }
    }
    let env = TestEnv::new("daemonfds");
    let anchor: CounterClient = env.builder::<Counter>().connect(0).unwrap();
    let pid = anchor.pid().unwrap();
    wait_clients(&anchor, 1);
    let baseline = fd_count(pid);

    for _ in 0..2 {
        let mut clients = Vec::with_capacity(CONNECTIONS);
        for _ in 0..CONNECTIONS / 100 {
            for _ in 0..100 {
                clients.push(env.builder::<Counter>().connect(0).unwrap());
            }
            clients.last().unwrap().inc().unwrap();
        }
        let info = anchor.ping().unwrap();
        assert_eq!(info.pid, pid);
        assert_eq!(info.clients as usize, CONNECTIONS + 1);
        assert!(fd_count(pid) >= baseline + CONNECTIONS);
        drop(clients);
        wait_clients(&anchor, 1);
        assert_eq!(fd_count(pid), baseline, "the daemon's descriptors");
    }
    anchor.shutdown().unwrap();
}

#[test]
fn sixteen_processes_count_exactly_while_others_connect_and_disconnect() {
    let env = TestEnv::new("exact");
    let anchor: CounterClient = env.builder::<Counter>().connect(0).unwrap();
    for _ in 0..7 {
        anchor.inc().unwrap();
    }
    let start = anchor.get().unwrap();
    let pid = u64::from(anchor.pid().unwrap());

    let stop = env.base.join("stop-churn");
    let stop_arg = stop.to_str().unwrap();
    let churners: Vec<Child> = (0..3)
        .map(|_| {
            faults(&env, &env.name, &["churn", stop_arg])
                .spawn()
                .unwrap()
        })
        .collect();
    let counters: Vec<Child> = (0..16)
        .map(|_| {
            env.client(&["inc", "0", "2000"])
                .stdout(Stdio::piped())
                .stderr(Stdio::piped())
                .spawn()
                .unwrap()
        })
        .collect();
    let outputs = wait_all(counters, Duration::from_secs(50));
    std::fs::write(&stop, b"").unwrap();
    let churned = wait_all(churners, Duration::from_secs(30));

    for output in &outputs {
        assert_eq!(field(output, "pid"), pid, "one daemon served everyone");
    }
    for output in &churned {
        assert!(field(output, "rounds") > 0, "the churners connected");
    }
    assert_eq!(anchor.get().unwrap(), start + 32_000);
    anchor.shutdown().unwrap();
}
