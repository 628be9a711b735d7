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

/// A fresh directory only we can use: 0700 on Unix whatever the umask (a group-writable
/// base is refused); on Windows the per-user temporary directory's ACL already keeps
/// others out.
pub fn private_dir(path: &Path) {
    let _ = std::fs::remove_dir_all(path);
    std::fs::create_dir_all(path).unwrap();
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o700)).unwrap();
    }
}

/// Kills `pid` at once (SIGKILL on Unix, `TerminateProcess` on Windows) and waits until
/// it is gone.
pub fn kill(pid: u32) {
    #[cfg(unix)]
    // SAFETY: kill has no memory-safety preconditions.
    unsafe {
        libc::kill(pid as libc::pid_t, libc::SIGKILL);
    }
    #[cfg(windows)]
    // SAFETY: a handle opened here is closed here.
    unsafe {
        use windows_sys::Win32::Foundation::CloseHandle;
        use windows_sys::Win32::System::Threading::{
            OpenProcess, PROCESS_TERMINATE, TerminateProcess,
        };
        let handle = OpenProcess(PROCESS_TERMINATE, 0, pid);
        if !handle.is_null() {
            TerminateProcess(handle, 1);
            CloseHandle(handle);
        }
    }
    wait_gone(pid, Duration::from_secs(10));
}

/// Whether a process with this pid exists and has not exited (a zombie has).
#[cfg(unix)]
pub fn alive(pid: u32) -> bool {
    // SAFETY: signal 0 only checks that the process exists.
    let exists = unsafe { libc::kill(pid as libc::pid_t, 0) } == 0;
    exists && process_state(pid) != Some('Z')
}

/// Whether a process with this pid exists and has not exited.
#[cfg(windows)]
pub fn alive(pid: u32) -> bool {
    use windows_sys::Win32::Foundation::{CloseHandle, STILL_ACTIVE};
    use windows_sys::Win32::System::Threading::{
        GetExitCodeProcess, OpenProcess, PROCESS_QUERY_LIMITED_INFORMATION,
    };
    let mut code = 0u32;
    // SAFETY: a handle opened here is closed here; `code` is a valid local.
    unsafe {
        let handle = OpenProcess(PROCESS_QUERY_LIMITED_INFORMATION, 0, pid);
        if handle.is_null() {
            return false;
        }
        let queried = GetExitCodeProcess(handle, &mut code);
        CloseHandle(handle);
        queried != 0 && code == STILL_ACTIVE as u32
    }
}

/// The state letter of Linux's `/proc/<pid>/stat` (`R`, `S`, `T` stopped, `Z` zombie,
/// ...), or `None` if there is no such process (or no `/proc`: other Unixes).
#[cfg(unix)]
pub fn process_state(pid: u32) -> Option<char> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    stat[stat.rfind(')')? + 1..].trim_start().chars().next()
}

/// Whether this is a Windows build running under Wine, which puts its own variables
/// in every process's environment.
pub fn under_wine() -> bool {
    cfg!(windows) && std::env::var_os("WINECONFIGDIR").is_some()
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
