//! The `loopback-singleton` binary run as a real process against real daemons of the
//! suite's services.
//!
//! These tests live in the CLI package because `CARGO_BIN_EXE_loopback-singleton`
//! exists only for a package's own binaries; the suite (root package) is a
//! dev-dependency for its services. The root suite's `tests/common` cannot be included
//! here (it names the suite's own helper binary), so `Env` below is its small
//! equivalent: an isolated runtime base, and every daemon under it killed on drop.

#[path = "../../tests/common/process.rs"]
mod process;

use std::path::PathBuf;
use std::process::{Command, Output, Stdio};
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::{Duration, Instant};

use loopback_singleton::Builder;
use loopback_singleton_suite::{Counter, CounterClient};
#[cfg(unix)]
use process::process_state;
use process::{kill, private_dir, recorded_pid, wait_gone};

const BIN: &str = env!("CARGO_BIN_EXE_loopback-singleton");

struct Env {
    base: PathBuf,
    prefix: String,
}

impl Env {
    fn new(test: &str) -> Self {
        static SEQ: AtomicU32 = AtomicU32::new(0);
        let seq = SEQ.fetch_add(1, Ordering::Relaxed);
        let base = std::env::temp_dir().join(format!("ls-cli-{}-{seq}-{test}", std::process::id()));
        private_dir(&base);
        Env {
            base,
            prefix: format!("{test}-{}-{seq}", std::process::id()),
        }
    }

    fn name(&self, suffix: &str) -> String {
        format!("{}-{suffix}", self.prefix)
    }

    /// Starts (through a client) a Counter daemon named `name`.
    fn counter(&self, name: &str) -> CounterClient {
        Builder::<Counter>::new()
            .runtime_dir(&self.base)
            .name(name)
            .idle_ttl(Duration::from_secs(30))
            .connect(0)
            .unwrap()
    }

    fn metadata(&self, name: &str) -> PathBuf {
        self.base.join(name).join("metadata.json")
    }

    /// Runs the CLI with this base, to completion within `limit`.
    fn run(&self, args: &[&str], limit: Duration) -> Output {
        let mut child = Command::new(BIN)
            .args(args)
            .env("LOOPBACK_SINGLETON_DIR", &self.base)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        let deadline = Instant::now() + limit;
        loop {
            if child.try_wait().unwrap().is_some() {
                return child.wait_with_output().unwrap();
            }
            if Instant::now() > deadline {
                let _ = child.kill();
                let output = child.wait_with_output().unwrap();
                panic!("`loopback-singleton {args:?}` ran over {limit:?}: {output:?}");
            }
            std::thread::sleep(Duration::from_millis(10));
        }
    }
}

impl Drop for Env {
    fn drop(&mut self) {
        if let Ok(entries) = std::fs::read_dir(&self.base) {
            for entry in entries.flatten() {
                if let Some(pid) = recorded_pid(&entry.path().join("metadata.json")) {
                    kill(pid);
                }
            }
        }
        let _ = std::fs::remove_dir_all(&self.base);
    }
}

#[cfg(unix)]
fn signal(pid: u32, signal: libc::c_int) {
    // SAFETY: kill has no memory-safety preconditions.
    unsafe { libc::kill(pid as libc::pid_t, signal) };
}

fn json(output: &Output) -> serde_json::Value {
    serde_json::from_slice(&output.stdout)
        .unwrap_or_else(|error| panic!("not JSON ({error}): {output:?}"))
}

const LIMIT: Duration = Duration::from_secs(30);

#[test]
fn list_shows_two_daemons_and_marks_a_killed_one_stale() {
    let env = Env::new("list");
    let (a, b) = (env.name("a"), env.name("b"));
    let client_a = env.counter(&a);
    let client_b = env.counter(&b);
    client_a.inc().unwrap();
    let (pid_a, pid_b) = (client_a.pid().unwrap(), client_b.pid().unwrap());

    let output = env.run(&["list", "--json"], LIMIT);
    assert!(output.status.success(), "{output:?}");
    let listed = json(&output);
    let listed = listed.as_array().unwrap();
    assert_eq!(listed.len(), 2, "{listed:?}");
    let find = |listed: &[serde_json::Value], name: &str| {
        listed
            .iter()
            .find(|entry| entry["name"] == name)
            .unwrap_or_else(|| panic!("{name} missing from {listed:?}"))
            .clone()
    };
    let entry_a = find(listed, &a);
    assert_eq!(entry_a["pid"], pid_a);
    assert_eq!(entry_a["state"], "running");
    assert_eq!(entry_a["calls_served"], 2, "inc and pid: {entry_a}");
    assert_eq!(entry_a["clients"], 1, "client_a, not the CLI: {entry_a}");
    assert_eq!(find(listed, &b)["pid"], pid_b);

    // The table for people names both.
    let table = env.run(&["list"], LIMIT);
    let text = String::from_utf8(table.stdout).unwrap();
    assert!(text.starts_with("NAME"), "{text}");
    assert!(text.contains(&a) && text.contains(&b), "{text}");

    kill(pid_b);
    let output = env.run(&["list", "--json"], LIMIT);
    assert!(output.status.success(), "{output:?}");
    let listed = json(&output);
    let listed = listed.as_array().unwrap();
    assert_eq!(find(listed, &b)["state"], "stale");
    assert_eq!(find(listed, &b)["uptime_ms"], serde_json::Value::Null);
    assert_eq!(find(listed, &a)["state"], "running");
    drop((client_a, client_b));
}

#[test]
fn status_of_a_name_without_daemon_exits_3_and_starts_nothing() {
    let env = Env::new("status");
    let name = env.name("none");
    let output = env.run(&["status", &name], LIMIT);
    assert_eq!(output.status.code(), Some(3), "{output:?}");
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(stderr.contains("no daemon named"), "{stderr}");
    assert!(!env.base.join(&name).exists(), "nothing was created");
    assert_eq!(std::fs::read_dir(&env.base).unwrap().count(), 0);

    let output = env.run(&["status", &name, "--json"], LIMIT);
    assert_eq!(output.status.code(), Some(3), "{output:?}");
    assert_eq!(json(&output)["state"], "not running");
    for command in [&["stop", &name][..], &["logs", &name][..]] {
        let output = env.run(command, LIMIT);
        assert_eq!(output.status.code(), Some(3), "{command:?}: {output:?}");
    }
    assert_eq!(std::fs::read_dir(&env.base).unwrap().count(), 0);
}

#[test]
fn status_json_has_the_documented_shape() {
    let env = Env::new("shape");
    let name = env.name("c");
    let client = env.counter(&name);
    let pid = client.pid().unwrap();
    let output = env.run(&["status", &name, "--json"], LIMIT);
    assert!(output.status.success(), "{output:?}");
    let detail = json(&output);
    // The golden shape: every field and its JSON type (see the README's "Operating it").
    let golden: &[(&str, &str)] = &[
        ("name", "string"),
        ("state", "string"),
        ("pid", "number"),
        ("port", "number"),
        ("version", "string"),
        ("uptime_ms", "number"),
        ("clients", "number"),
        ("calls_served", "number"),
        ("error", "null"),
        ("service", "string"),
        ("instance", "string"),
        ("schema", "string"),
        ("protocol", "number"),
        ("dir", "string"),
        ("log", "string"),
        ("idle_ttl_ms", "number"),
    ];
    let object = detail.as_object().unwrap();
    let mut fields: Vec<&str> = object.keys().map(String::as_str).collect();
    fields.sort();
    let mut expected: Vec<&str> = golden.iter().map(|(field, _)| *field).collect();
    expected.sort();
    assert_eq!(fields, expected, "{detail}");
    for (field, kind) in golden {
        let value = &object[*field];
        let actual = match value {
            serde_json::Value::Null => "null",
            serde_json::Value::String(_) => "string",
            serde_json::Value::Number(_) => "number",
            _ => "other",
        };
        assert_eq!(actual, *kind, "{field}: {value}");
    }
    assert_eq!(detail["pid"], pid);
    assert_eq!(detail["state"], "running");
    // The TTL the daemon was given (`Env::counter`: 30 s).
    assert_eq!(detail["idle_ttl_ms"], 30_000);

    // `list --json` entries are the first nine of these fields.
    let output = env.run(&["list", "--json"], LIMIT);
    let listed = json(&output);
    let entry = listed[0].as_object().unwrap();
    let mut fields: Vec<&str> = entry.keys().map(String::as_str).collect();
    fields.sort();
    let mut expected: Vec<&str> = golden[..9].iter().map(|(field, _)| *field).collect();
    expected.sort();
    assert_eq!(fields, expected, "{entry:?}");
    drop(client);
}

/// Unix only: a hung daemon is made with SIGSTOP, which Windows has no equivalent of.
#[cfg(unix)]
#[test]
fn stop_kills_a_hung_daemon_within_its_timeout_and_cleans_up() {
    let env = Env::new("stop");
    let name = env.name("hung");
    let client = env.counter(&name);
    let pid = client.pid().unwrap();
    signal(pid, libc::SIGSTOP);
    let deadline = Instant::now() + Duration::from_secs(5);
    while process_state(pid) != Some('T') {
        assert!(Instant::now() < deadline, "the daemon did not stop");
        std::thread::sleep(Duration::from_millis(2));
    }

    let started = Instant::now();
    let output = env.run(&["stop", &name, "--timeout", "1s"], LIMIT);
    let took = started.elapsed();
    assert!(output.status.success(), "{output:?}");
    assert!(took < Duration::from_secs(4), "took {took:?}");
    assert!(
        String::from_utf8_lossy(&output.stdout).contains("killed"),
        "{output:?}"
    );
    assert!(
        wait_gone(pid, Duration::from_secs(5)),
        "pid {pid} still runs"
    );
    for file in ["metadata.json", "secret", "daemon.sock"] {
        assert!(
            std::fs::symlink_metadata(env.base.join(&name).join(file)).is_err(),
            "{file} left behind"
        );
    }
    drop(client);
}

#[test]
fn stop_retires_a_running_daemon_gracefully() {
    let env = Env::new("graceful");
    let name = env.name("ok");
    let client = env.counter(&name);
    let pid = client.pid().unwrap();
    let output = env.run(&["stop", &name], LIMIT);
    assert!(output.status.success(), "{output:?}");
    assert!(
        String::from_utf8_lossy(&output.stdout).contains("stopped"),
        "{output:?}"
    );
    assert!(wait_gone(pid, Duration::from_secs(5)));
    assert!(!env.metadata(&name).exists());
    drop(client);
}

#[test]
fn an_admin_connection_cannot_call() {
    // The CLI speaks ping and shutdown only; a call from it would be refused. Here: its
    // pings do not count as calls, and do not disturb a client.
    let env = Env::new("admin");
    let name = env.name("c");
    let client = env.counter(&name);
    for _ in 0..3 {
        assert!(env.run(&["status", &name], LIMIT).status.success());
    }
    let output = env.run(&["status", &name, "--json"], LIMIT);
    assert_eq!(json(&output)["calls_served"], 0);
    assert_eq!(client.inc().unwrap(), 1);
}

#[test]
fn logs_prints_the_start_line() {
    let env = Env::new("logs");
    let name = env.name("c");
    let client = env.counter(&name);
    let output = env.run(&["logs", &name], LIMIT);
    assert!(output.status.success(), "{output:?}");
    let text = String::from_utf8_lossy(&output.stdout);
    assert!(text.contains("serving `"), "{text}");
    drop(client);
}

// Unix only: FIFOs and unprivileged symbolic links.
#[cfg(unix)]
#[test]
fn logs_refuses_a_pipe_or_link_planted_as_the_log_instead_of_hanging() {
    let env = Env::new("logsfifo");
    let name = env.name("c");
    let client = env.counter(&name);
    let log = env.base.join(&name).join("daemon.log");
    let elsewhere = env.base.join("elsewhere.txt");
    std::fs::write(&elsewhere, "not the daemon's log\n").unwrap();
    for plant in ["fifo", "symlink"] {
        std::fs::remove_file(&log).unwrap();
        if plant == "fifo" {
            let path = std::ffi::CString::new(log.as_os_str().as_encoded_bytes()).unwrap();
            // SAFETY: a valid NUL-terminated path.
            assert_eq!(unsafe { libc::mkfifo(path.as_ptr(), 0o600) }, 0);
        } else {
            std::os::unix::fs::symlink(&elsewhere, &log).unwrap();
        }
        // Opening a pipe with no writer would wait for ever; a link would be followed.
        let output = env.run(&["logs", &name], LIMIT);
        assert!(!output.status.success(), "{plant}: {output:?}");
        assert!(
            !String::from_utf8_lossy(&output.stdout).contains("not the daemon's log"),
            "{plant}: {output:?}"
        );
    }
    drop(client);
}

#[test]
fn stats_counts_calls_per_method_and_zero_resets() {
    let env = Env::new("stats");
    let name = env.name("c");
    let client = env.counter(&name);
    const N: u64 = 25;
    for _ in 0..N {
        client.inc().unwrap();
    }
    client.get().unwrap();

    let output = env.run(&["stats", &name, "--json"], LIMIT);
    assert!(output.status.success(), "{output:?}");
    let report = json(&output);
    assert_eq!(report["name"], name.as_str());
    assert_eq!(report["zeroed"], false);
    let method = |report: &serde_json::Value, wanted: &str| {
        report["methods"]
            .as_array()
            .unwrap()
            .iter()
            .find(|method| method["name"] == wanted)
            .unwrap_or_else(|| panic!("{wanted} missing from {report}"))
            .clone()
    };
    let inc = method(&report, "inc");
    assert_eq!(inc["calls"], N, "{inc}");
    assert_eq!((&inc["errors"], &inc["panics"]), (&0.into(), &0.into()));
    assert!(inc["bytes_in"].as_u64().unwrap() >= N * 6, "{inc}");
    assert!(inc["bytes_out"].as_u64().unwrap() >= N * 6, "{inc}");
    for latency in [&inc["handler_ns"], &inc["queue_ns"]] {
        let at = |key: &str| latency[key].as_u64().unwrap();
        assert_eq!(at("count"), N, "{latency}");
        assert!(
            at("p50") <= at("p90") && at("p90") <= at("p99"),
            "{latency}"
        );
        assert!(at("p99") <= at("max") && at("max") > 0, "{latency}");
    }
    assert_eq!(method(&report, "get")["calls"], 1);
    assert_eq!(
        method(&report, "add_all")["calls"],
        0,
        "declared, never called"
    );

    // The table for people.
    let output = env.run(&["stats", &name], LIMIT);
    assert!(output.status.success(), "{output:?}");
    let text = String::from_utf8(output.stdout).unwrap();
    assert!(text.contains("METHOD") && text.contains("inc"), "{text}");

    // --zero reports what came before, then starts over.
    let output = env.run(&["stats", &name, "--json", "--zero"], LIMIT);
    assert!(output.status.success(), "{output:?}");
    let report = json(&output);
    assert_eq!(report["zeroed"], true);
    assert_eq!(method(&report, "inc")["calls"], N);
    client.inc().unwrap();
    let report = json(&env.run(&["stats", &name, "--json"], LIMIT));
    assert_eq!(method(&report, "inc")["calls"], 1, "{report}");
    assert_eq!(method(&report, "inc")["handler_ns"]["count"], 1);
    assert_eq!(method(&report, "get")["calls"], 0);

    // No daemon: exit 3, as for status.
    let output = env.run(&["stats", &env.name("none")], LIMIT);
    assert_eq!(output.status.code(), Some(3), "{output:?}");
    drop(client);
}
