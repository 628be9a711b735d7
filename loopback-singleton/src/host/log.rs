//! The host's log lines (a spawned daemon's stderr is its log file). Never fails.

use std::sync::atomic::{AtomicU64, Ordering};

thread_local! {
    /// Set on the threads of an in-process host that was not asked to be verbose: an
    /// application's stderr is not a daemon log.
    pub(super) static QUIET: std::cell::Cell<bool> = const { std::cell::Cell::new(false) };
}

/// A line about a peer that may not have the secret: at most one a second, so that
/// another user's connection flood cannot fill the disk with the log.
pub(super) fn log_peer(message: &str) {
    static LAST: AtomicU64 = AtomicU64::new(u64::MAX);
    let second = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap_or_default()
        .as_secs();
    if LAST.swap(second, Ordering::Relaxed) != second {
        log(message);
    }
}

/// A line in the daemon's log (its stderr is the log file). Never fails: a log that
/// cannot be written (a full disk) must not stop the daemon from serving, retiring,
/// dropping its instance or cleaning up.
pub(super) fn log(message: &str) {
    use std::io::Write;
    if QUIET.get() {
        return;
    }
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap_or_default();
    let _ = writeln!(
        std::io::stderr().lock(),
        "[{}.{:03} pid {}] {message}",
        now.as_secs(),
        now.subsec_millis(),
        std::process::id()
    );
}
