//! Single-instance applications with real processes: every launch is a `suite-single`
//! process (src/bin/suite-single.rs) deciding whether it is the primary. Each test has
//! its own runtime directory and name, bounds every wait, and kills every process it
//! started.

mod common;

use std::io::{BufRead, BufReader, Write};
use std::path::Path;
use std::process::{Child, ChildStdin, Command, ExitStatus, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use common::{TestEnv, alive};

const LIMIT: Duration = Duration::from_secs(30);

/// One `suite-single` process: its stdout lines arrive on a channel; killed on drop.
struct Launch {
    child: Child,
    stdin: Option<ChildStdin>,
    lines: mpsc::Receiver<String>,
    seen: Vec<String>,
}

impl Launch {
    fn command(env: &TestEnv, args: &[&str], vars: &[(&str, &str)]) -> Command {
        let mut command = Command::new(env!("CARGO_BIN_EXE_suite-single"));
        command
            .args(args)
            .env("LOOPBACK_SINGLETON_DIR", &env.base)
            .env("SUITE_NAME", &env.name)
            .env_remove("LOOPBACK_SINGLETON_NO_SPAWN")
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit());
        for (key, value) in vars {
            command.env(key, value);
        }
        command
    }

    fn start(env: &TestEnv, args: &[&str], vars: &[(&str, &str)]) -> Launch {
        Launch::spawn(Launch::command(env, args, vars))
    }

    fn spawn(mut command: Command) -> Launch {
        let mut child = command.spawn().expect("spawning suite-single");
        let stdout = child.stdout.take().unwrap();
        let (tx, lines) = mpsc::channel();
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines() {
                let Ok(line) = line else { break };
                if tx.send(line).is_err() {
                    break;
                }
            }
        });
        Launch {
            stdin: child.stdin.take(),
            child,
            lines,
            seen: Vec::new(),
        }
    }

    fn pid(&self) -> u32 {
        self.child.id()
    }

    /// The first line starting with `prefix` not taken yet (lines are printed by several
    /// threads, so others may come first: they are kept in `seen`).
    fn expect(&mut self, prefix: &str) -> String {
        if let Some(at) = self.seen.iter().position(|line| line.starts_with(prefix)) {
            return self.seen.remove(at);
        }
        let deadline = Instant::now() + LIMIT;
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            match self.lines.recv_timeout(left) {
                Ok(line) if line.starts_with(prefix) => return line,
                Ok(line) => self.seen.push(line),
                Err(_) => panic!(
                    "process {} printed no {prefix:?} line within {LIMIT:?}; it printed {:?}",
                    self.pid(),
                    self.seen
                ),
            }
        }
    }

    /// Every line printed within `quiet` of the last one.
    fn drain(&mut self, quiet: Duration) -> Vec<String> {
        let mut lines = std::mem::take(&mut self.seen);
        while let Ok(line) = self.lines.recv_timeout(quiet) {
            lines.push(line);
        }
        lines
    }

    fn send(&mut self, command: &str) {
        let stdin = self.stdin.as_mut().expect("stdin is open");
        writeln!(stdin, "{command}").unwrap();
        stdin.flush().unwrap();
    }

    /// Waits (bounded) for the process to exit.
    fn wait(&mut self) -> ExitStatus {
        let deadline = Instant::now() + LIMIT;
        loop {
            if let Some(status) = self.child.try_wait().unwrap() {
                return status;
            }
            assert!(
                Instant::now() < deadline,
                "process {} did not exit within {LIMIT:?}",
                self.pid()
            );
            std::thread::sleep(Duration::from_millis(5));
        }
    }

    /// Runs a launch that must be a secondary to completion; returns its stdout lines.
    fn secondary(env: &TestEnv, args: &[&str], vars: &[(&str, &str)]) -> Vec<String> {
        let mut launch = Launch::start(env, args, vars);
        let status = launch.wait();
        let lines = launch.drain(Duration::from_millis(50));
        assert!(status.success(), "a secondary failed: {status}, {lines:?}");
        assert!(
            !lines.iter().any(|line| line.starts_with("primary")),
            "expected a secondary, got {lines:?}"
        );
        lines
    }
}

impl Drop for Launch {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn message_line(pid: u32, cwd: &Path, args: &[String]) -> String {
    format!("msg pid={pid} cwd={cwd:?} args={args:?}")
}

fn strings(args: &[&str]) -> Vec<String> {
    args.iter().map(|arg| arg.to_string()).collect()
}

#[test]
fn ten_simultaneous_launches_elect_one_primary_that_gets_nine_argv_lists_intact() {
    let env = TestEnv::new("single-ten");
    let cwd = std::env::current_dir().unwrap();
    let argv: Vec<Vec<String>> = (0..10)
        .map(|i| {
            vec![
                format!("launch {i}"),
                String::new(),
                "ünïcødé ✓ 日本".to_string(),
                "a|b | c".to_string(),
                "--flag=x y".to_string(),
                "\"quoted\" 'single'".to_string(),
                format!("{i}"),
            ]
        })
        .collect();
    let mut launches: Vec<Launch> = argv
        .iter()
        .map(|args| {
            let args: Vec<&str> = args.iter().map(String::as_str).collect();
            Launch::start(&env, &args, &[])
        })
        .collect();

    // Nine exit with status 0 and print nothing; one stays and is the primary.
    let deadline = Instant::now() + LIMIT;
    let mut exited = vec![None; 10];
    while exited.iter().filter(|status| status.is_some()).count() < 9 {
        for (i, launch) in launches.iter_mut().enumerate() {
            if exited[i].is_none() {
                exited[i] = launch.child.try_wait().unwrap();
            }
        }
        assert!(
            Instant::now() < deadline,
            "nine launches did not exit: {exited:?}"
        );
        std::thread::sleep(Duration::from_millis(5));
    }
    std::thread::sleep(Duration::from_millis(100));
    for (i, launch) in launches.iter_mut().enumerate() {
        if exited[i].is_none() {
            exited[i] = launch.child.try_wait().unwrap();
        }
    }
    let running: Vec<usize> = (0..10).filter(|&i| exited[i].is_none()).collect();
    assert_eq!(running.len(), 1, "exactly one primary stays: {exited:?}");
    let primary = running[0];
    for (i, status) in exited.iter().enumerate() {
        if let Some(status) = status {
            assert!(status.success(), "launch {i} exited with {status}");
            assert_eq!(
                launches[i].drain(Duration::from_millis(20)),
                Vec::<String>::new(),
                "a strict secondary prints nothing"
            );
        }
    }

    let mut expected: Vec<String> = (0..10)
        .filter(|&i| i != primary)
        .map(|i| message_line(launches[i].pid(), &cwd, &argv[i]))
        .collect();
    let host = &mut launches[primary];
    host.expect("primary");
    let mut received: Vec<String> = (0..9).map(|_| host.expect("msg")).collect();
    expected.sort();
    received.sort();
    assert_eq!(
        received, expected,
        "each argv list arrives whole and intact"
    );
    host.send("status");
    assert_eq!(host.expect("status"), "status secondaries=9 pending=0");
}

#[test]
fn a_secondarys_working_directory_arrives() {
    let env = TestEnv::new("single-cwd");
    let mut primary = Launch::start(&env, &[], &[("SINGLE_DELIVERY", "callback")]);
    primary.expect("primary");
    // Characters every platform allows in a name ('|' and the like are not on Windows).
    let dir = env.base.join("a dir with spaces, é & #");
    std::fs::create_dir_all(&dir).unwrap();
    // What the secondary's `current_dir()` says: symbolic links resolved on Unix (a
    // temporary directory may be reached through one); on Windows `canonicalize` would
    // give a `\\?\` path, which `current_dir()` never does.
    #[cfg(unix)]
    let dir = std::fs::canonicalize(&dir).unwrap();
    let mut command = Launch::command(&env, &["relative/file.txt"], &[]);
    command.current_dir(&dir);
    let mut secondary = Launch::spawn(command);
    assert!(secondary.wait().success());
    assert_eq!(
        primary.expect("msg"),
        message_line(secondary.pid(), &dir, &strings(&["relative/file.txt"]))
    );
}

#[test]
fn release_lets_the_next_launch_become_primary() {
    let env = TestEnv::new("single-release");
    let mut first = Launch::start(&env, &[], &[]);
    first.expect("primary");
    Launch::secondary(&env, &["before"], &[]);
    assert!(first.expect("msg").ends_with(r#"args=["before"]"#));

    first.send("release");
    first.expect("release-returned");
    first.expect("released secondaries=1");
    // Idempotent, and the released process is still running: the role was given up,
    // not lost with the process.
    first.send("release");
    first.expect("release-returned");
    assert!(alive(first.pid()));

    let mut second = Launch::start(&env, &[], &[]);
    second.expect("primary");
    Launch::secondary(&env, &["after"], &[]);
    assert!(second.expect("msg").ends_with(r#"args=["after"]"#));
    let stray = first.drain(Duration::from_millis(100));
    assert!(
        !stray.iter().any(|line| line.starts_with("msg")),
        "the released primary got {stray:?}"
    );
}

#[test]
fn hold_timeout_gives_the_role_up_after_the_duration() {
    let env = TestEnv::new("single-hold");
    let mut first = Launch::start(&env, &[], &[("SINGLE_HOLD_MS", "1500")]);
    first.expect("primary");
    let primary_since = Instant::now();
    let lines = Launch::secondary(&env, &["within"], &[("SINGLE_MODE", "try")]);
    assert!(lines[0].ends_with("delivery=Delivered"), "{lines:?}");
    first.expect("msg");
    first.expect("released secondaries=1");
    let held = primary_since.elapsed();
    assert!(
        held >= Duration::from_millis(1300),
        "released after {held:?}, before the hold timeout"
    );
    let mut second = Launch::start(&env, &[], &[]);
    second.expect("primary");
    assert!(alive(first.pid()), "the first process keeps running");
}

#[test]
fn release_threshold_stops_accepting_after_n_secondaries() {
    let env = TestEnv::new("single-threshold");
    let mut first = Launch::start(&env, &[], &[("SINGLE_RELEASE_THRESHOLD", "2")]);
    first.expect("primary");
    for arg in ["one", "two"] {
        let lines = Launch::secondary(&env, &[arg], &[("SINGLE_MODE", "try")]);
        assert!(
            lines[0].starts_with(&format!("secondary primary_pid={} ", first.pid())),
            "{lines:?}"
        );
        assert!(lines[0].ends_with("delivery=Delivered"), "{lines:?}");
    }
    // The second secondary's message is still delivered, then the role is given up.
    assert!(first.expect("msg").ends_with(r#"args=["one"]"#));
    assert!(first.expect("msg").ends_with(r#"args=["two"]"#));
    first.expect("released secondaries=2");
    let mut third = Launch::start(&env, &["three"], &[]);
    third.expect("primary");
    let stray = first.drain(Duration::from_millis(100));
    assert!(
        !stray.iter().any(|line| line.starts_with("msg")),
        "{stray:?}"
    );
}

#[test]
fn max_clients_keeps_accepting_but_stops_delivering() {
    let env = TestEnv::new("single-max");
    let mut first = Launch::start(&env, &[], &[("SINGLE_MAX_CLIENTS", "2")]);
    first.expect("primary");
    let mut deliveries = Vec::new();
    for arg in ["one", "two", "three", "four"] {
        let lines = Launch::secondary(&env, &[arg], &[("SINGLE_MODE", "try")]);
        deliveries.push(lines[0].rsplit('=').next().unwrap().to_string());
    }
    assert_eq!(deliveries, ["Delivered", "Delivered", "Ignored", "Ignored"]);
    assert!(first.expect("msg").ends_with(r#"args=["one"]"#));
    assert!(first.expect("msg").ends_with(r#"args=["two"]"#));
    first.send("status");
    assert_eq!(first.expect("status"), "status secondaries=4 pending=0");
    let stray = first.drain(Duration::from_millis(100));
    assert!(
        !stray.iter().any(|line| line.starts_with("msg")),
        "{stray:?}"
    );
    assert!(alive(first.pid()), "still primary");
    let lines = Launch::secondary(&env, &["five"], &[("SINGLE_MODE", "try")]);
    assert!(lines[0].ends_with("delivery=Ignored"), "{lines:?}");
}

#[test]
fn undelivered_messages_can_be_inspected_and_announcements_count() {
    let env = TestEnv::new("single-pending");
    let mut first = Launch::start(&env, &[], &[("SINGLE_DELIVERY", "none")]);
    first.expect("primary");
    Launch::secondary(&env, &["x y", ""], &[]);
    let lines = Launch::secondary(
        &env,
        &["not sent"],
        &[("SINGLE_MODE", "try"), ("SINGLE_FORWARD", "0")],
    );
    assert!(lines[0].ends_with("delivery=NotSent"), "{lines:?}");
    first.send("pending");
    assert_eq!(first.expect("pending"), r#"pending args=["x y", ""]"#);
    first.expect("pending-end");
    first.send("status");
    assert_eq!(first.expect("status"), "status secondaries=2 pending=1");
}

#[test]
fn a_primary_killed_with_sigkill_is_succeeded_by_the_next_launch() {
    let env = TestEnv::new("single-sigkill");
    let mut first = Launch::start(&env, &[], &[]);
    first.expect("primary");
    Launch::secondary(&env, &["early"], &[]);
    first.expect("msg");
    first.child.kill().unwrap();
    first.child.wait().unwrap();

    let mut second = Launch::start(&env, &[], &[]);
    second.expect("primary");
    Launch::secondary(&env, &["late"], &[]);
    assert!(second.expect("msg").ends_with(r#"args=["late"]"#));
}

#[test]
fn a_peer_without_the_secret_delivers_nothing() {
    let env = TestEnv::new("single-auth");
    let mut first = Launch::start(&env, &[], &[]);
    first.expect("primary");
    let metadata = std::fs::read_to_string(env.metadata_path()).unwrap();
    let port: u16 = common::json_field(&metadata, "port")
        .unwrap()
        .parse()
        .unwrap();
    // A peer that skips the handshake and sends what could pass for a message, and one
    // that answers the challenge with a made-up proof: both are dropped unheard.
    for payload in [&b"\x00\x02\x05hello\x00"[..], &[0u8; 200][..]] {
        let mut stream = std::net::TcpStream::connect(("127.0.0.1", port)).unwrap();
        stream
            .set_read_timeout(Some(Duration::from_secs(10)))
            .unwrap();
        let mut frame = (payload.len() as u32).to_le_bytes().to_vec();
        frame.extend_from_slice(payload);
        let _ = stream.write_all(&frame);
        let _ = stream.write_all(&frame);
        let mut sink = Vec::new();
        let _ = std::io::Read::read_to_end(&mut stream, &mut sink);
    }
    first.send("status");
    assert_eq!(first.expect("status"), "status secondaries=0 pending=0");
    Launch::secondary(&env, &["real"], &[]);
    assert!(first.expect("msg").ends_with(r#"args=["real"]"#));
}
