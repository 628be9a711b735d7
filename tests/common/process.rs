//! Processes and the metadata that names them, for tests of any package of the
//! workspace: the suite's `tests/common` re-exports it, and the CLI's tests include it
//! by path (they cannot use the rest of `tests/common`, which names the suite's own
//! helper binaries).

#![allow(dead_code)] // each test binary uses a different part of this module

use std::path::Path;
use std::time::{Duration, Instant};

/// The pid recorded in a daemon's `metadata.json`, if any.
pub fn recorded_pid(metadata: &Path) -> Option<u32> {
    json_field(&std::fs::read_to_string(metadata).ok()?, "pid")?
        .parse()
        .ok()
}

/// The value of `"key": value` in the daemon's metadata JSON, as written.
pub fn json_field<'a>(json: &'a str, key: &str) -> Option<&'a str> {
    let pattern = format!("\"{key}\":");
    let at = json.find(&pattern)? + pattern.len();
    json[at..].split([',', '\n', '}']).next().map(str::trim)
}

/// SIGKILLs `pid` and waits until it is gone.
pub fn kill(pid: u32) {
    // SAFETY: kill has no memory-safety preconditions.
    unsafe {
        libc::kill(pid as libc::pid_t, libc::SIGKILL);
    }
    wait_gone(pid, Duration::from_secs(10));
}

/// Whether a process with this pid exists (and is not a zombie).
pub fn alive(pid: u32) -> bool {
    process_state(pid).is_some_and(|state| state != 'Z')
}

/// The state letter of `/proc/<pid>/stat` (`R`, `S`, `T` stopped, `Z` zombie, ...), or
/// `None` if there is no such process.
pub fn process_state(pid: u32) -> Option<char> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    stat[stat.rfind(')')? + 1..].trim_start().chars().next()
}

/// Waits until `pid` is gone; returns whether it went within `limit`.
pub fn wait_gone(pid: u32, limit: Duration) -> bool {
    let deadline = Instant::now() + limit;
    while alive(pid) {
        if Instant::now() > deadline {
            return false;
        }
        std::thread::sleep(Duration::from_millis(10));
    }
    true
}
