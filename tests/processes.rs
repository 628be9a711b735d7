//! Many real processes against one daemon, and a daemon that never holds its caller's
//! pipes or runs its host binary's tests.

mod common;

use std::collections::BTreeSet;
use std::process::Stdio;
use std::time::Duration;

use common::{TestEnv, alive, field};
use loopback_singleton_suite::{Counter, CounterClient};

#[test]
fn eight_processes_racing_to_start_share_one_daemon_and_count_exactly() {
    let env = TestEnv::new("eight");
    let children: Vec<_> = (0..8)
        .map(|_| {
            env.client(&["inc", "0", "500"])
                .stdout(Stdio::piped())
                .stderr(Stdio::piped())
                .spawn()
                .unwrap()
        })
        .collect();
    let outputs: Vec<_> = children
        .into_iter()
        .map(|child| child.wait_with_output().unwrap())
        .collect();
    let pids: BTreeSet<u64> = outputs.iter().map(|output| field(output, "pid")).collect();
    assert_eq!(pids.len(), 1, "every process saw the same daemon: {pids:?}");
    let last = outputs
        .iter()
        .map(|output| field(output, "last"))
        .max()
        .unwrap();
    assert_eq!(last, 4000);
    let total = field(&env.run_client(&["get", "0"]), "value");
    assert_eq!(total, 4000, "exactly 8 x 500 increments");
}

#[test]
fn output_returns_when_the_client_exits_and_the_daemon_lives_on() {
    let env = TestEnv::new("output");
    // `output_within` fails the test if the call does not return: a daemon holding the
    // client's stdout or stderr pipe would keep it waiting for EOF.
    let first = env.run_client(&["inc", "0", "1"]);
    let pid = field(&first, "pid") as u32;
    assert!(alive(pid), "the daemon outlives the client that started it");
    let second = env.run_client(&["inc", "0", "1"]);
    assert_eq!(field(&second, "pid"), u64::from(pid));
    assert_eq!(field(&second, "last"), 2);
    #[cfg(target_os = "linux")]
    assert_no_pipes(pid);
}

/// None of the daemon's descriptors is a pipe that leads out of it: stdin is /dev/null,
/// the readiness pipe closed once it reported; stdout and stderr are a pipe of its own
/// (its log's), whose read end it holds too. Linux only: it reads `/proc/<pid>/fd`.
#[cfg(target_os = "linux")]
fn assert_no_pipes(pid: u32) {
    // pipe inode -> (a read end held, a write end held)
    let mut pipes = std::collections::BTreeMap::<String, (bool, bool)>::new();
    for entry in std::fs::read_dir(format!("/proc/{pid}/fd"))
        .unwrap()
        .flatten()
    {
        let target = std::fs::read_link(entry.path()).unwrap_or_default();
        let target = target.to_string_lossy();
        if !target.starts_with("pipe:") {
            continue;
        }
        let fdinfo = format!("/proc/{pid}/fdinfo/{}", entry.file_name().to_string_lossy());
        let flags = std::fs::read_to_string(fdinfo)
            .unwrap_or_default()
            .lines()
            .find_map(|line| line.strip_prefix("flags:"))
            .and_then(|flags| u32::from_str_radix(flags.trim(), 8).ok())
            .unwrap_or(0);
        let ends = pipes.entry(target.into_owned()).or_default();
        match flags & libc::O_ACCMODE as u32 {
            0 => ends.0 = true,
            _ => ends.1 = true,
        }
    }
    for (pipe, ends) in pipes {
        assert_eq!(ends, (true, true), "the daemon holds one end of {pipe}");
    }
}

/// Run only as a child of `a_daemon_started_from_a_test_binary_runs_no_test`: starts a
/// daemon from this test binary, whose environment carries `SENTINEL_FILE`.
#[test]
#[ignore = "a helper: run by a_daemon_started_from_a_test_binary_runs_no_test"]
fn start_daemon_from_test_binary() {
    let base = std::env::var("CHILD_BASE").unwrap();
    let name = std::env::var("CHILD_NAME").unwrap();
    let counter: CounterClient = loopback_singleton::Builder::<Counter>::new()
        .runtime_dir(base)
        .name(name)
        .connect(0)
        .unwrap();
    println!("daemon-pid={}", counter.pid().unwrap());
}

/// Writes its pid to `SENTINEL_FILE` whenever it runs in a process that has one: if a
/// daemon re-executed from this binary ran the test harness, this would run in it.
#[test]
fn sentinel_records_where_tests_run() {
    if let Some(path) = std::env::var_os("SENTINEL_FILE") {
        std::fs::write(path, std::process::id().to_string()).unwrap();
    }
}

#[test]
fn a_daemon_started_from_a_test_binary_runs_no_test() {
    let env = TestEnv::new("harness");
    let sentinel = env.base.join("sentinel");
    let mut command = std::process::Command::new(std::env::current_exe().unwrap());
    command
        .args([
            "--exact",
            "start_daemon_from_test_binary",
            "--ignored",
            "--nocapture",
        ])
        .env("SENTINEL_FILE", &sentinel)
        .env("CHILD_BASE", &env.base)
        .env("CHILD_NAME", &env.name);
    let output = common::output_within(command, Duration::from_secs(60));
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert!(output.status.success(), "{stdout}");
    let pid: u32 = stdout
        .split_whitespace()
        .find_map(|word| word.strip_prefix("daemon-pid="))
        .unwrap_or_else(|| panic!("no daemon pid in {stdout}"))
        .parse()
        .unwrap();
    std::thread::sleep(Duration::from_millis(200));
    assert!(
        alive(pid),
        "the daemon serves instead of running tests and exiting"
    );
    assert!(!sentinel.exists(), "a test ran inside the daemon");
    // Linux only: the command line is read from `/proc`.
    #[cfg(target_os = "linux")]
    assert_daemon_argv_is_its_name_alone(pid);
}

#[cfg(target_os = "linux")]
fn assert_daemon_argv_is_its_name_alone(pid: u32) {
    let cmdline = std::fs::read(format!("/proc/{pid}/cmdline")).unwrap();
    let args = cmdline
        .split(|&b| b == 0)
        .filter(|arg| !arg.is_empty())
        .count();
    assert_eq!(args, 1, "the daemon got no argv beyond its name");
}
