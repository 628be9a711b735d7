//! The host's log: structured `tracing` events, written to `daemon.log` in the runtime
//! directory, size-capped (rotated to `daemon.log.1`), filtered by
//! `LOOPBACK_SINGLETON_LOG`. Never fails: a log that cannot be written (a full disk)
//! must not stop the host from serving, retiring, dropping its instance or cleaning up.
//!
//! Whose process it is decides where the events go:
//! - a spawned daemon ([`install_daemon`]) is ours: its log's dispatcher is the global
//!   default (so a service's own `tracing` events land in `daemon.log` too), panics are
//!   logged by a panic hook, and stdout and stderr are a pipe whose lines become events;
//! - an in-process host (`Service::serve`, a single-instance primary) runs inside the
//!   user's application: no global dispatcher, no panic hook, nothing on its stderr. Its
//!   events go to its own `daemon.log` through a dispatcher known to its threads only
//!   ([`scoped`]), and each event is sent to it explicitly ([`emit`]), so that the
//!   application's own events, even from a service method, stay the application's.

use std::cell::RefCell;
use std::fs::File;
use std::io::{self, Read, Write};
use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use tracing::Dispatch;
use tracing::level_filters::LevelFilter;
use tracing_subscriber::filter::Targets;
use tracing_subscriber::fmt::MakeWriter;
use tracing_subscriber::layer::{Layer, SubscriberExt};

use crate::runtime_dir::RuntimeDir;
use crate::service::panic_message;
use crate::sys;

/// The filter of the host's log: `tracing_subscriber::EnvFilter`'s syntax without span
/// and field directives (`warn`, `debug`, `info,my_service=debug`; default `info`),
/// parsed as a [`Targets`]. Span and field directives need a regex engine, which would
/// add about 0.65 MB to every binary that links this crate (measured on the counter
/// example, stripped, release).
const LOG_ENV: &str = "LOOPBACK_SINGLETON_LOG";
/// The size at which `daemon.log` is rotated to `daemon.log.1` (bytes, or with a unit:
/// `512KiB`, `4MiB`).
const LOG_MAX_ENV: &str = "LOOPBACK_SINGLETON_LOG_MAX";
/// The default of [`LOG_MAX_ENV`]: two files of at most this size, 8 MiB in all.
const DEFAULT_LOG_MAX: u64 = 4 << 20;

thread_local! {
    /// The log of the host whose thread this is, if any.
    static HOST_LOG: RefCell<Option<Dispatch>> = const { RefCell::new(None) };
}

/// Sends the events `event` makes to this thread's host log (none: dropped).
pub(super) fn emit(event: impl FnOnce()) {
    HOST_LOG.with_borrow(|log| {
        if let Some(log) = log {
            tracing::dispatcher::with_default(log, event);
        }
    });
}

/// An event about a peer that may not have the secret: at most one a second, so that
/// another user's connection flood cannot flood the log.
pub(super) fn emit_peer(event: impl FnOnce()) {
    static LAST: AtomicU64 = AtomicU64::new(u64::MAX);
    let second = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap_or_default()
        .as_secs();
    if LAST.swap(second, Ordering::Relaxed) != second {
        emit(event);
    }
}

/// One call, at `debug`: what ran, how it ended, how long it waited and ran. Costs one
/// atomic load per call unless some dispatcher of the process enables `debug`.
pub(super) fn call(
    method: Option<&str>,
    outcome: &dyn std::fmt::Debug,
    queue: Option<Duration>,
    handler: Option<Duration>,
) {
    if LevelFilter::current() < LevelFilter::DEBUG {
        return;
    }
    let micros = |duration: Option<Duration>| duration.map_or(0, |d| d.as_micros() as u64);
    emit(|| {
        tracing::debug!(
            target: "loopback_singleton::host::call",
            method = %method.unwrap_or("?"),
            outcome = ?outcome,
            queue_us = micros(queue),
            handler_us = micros(handler),
            "call"
        )
    });
}

/// This thread's host log (to hand to a thread the host starts).
pub(super) fn current() -> Option<Dispatch> {
    HOST_LOG.with_borrow(Clone::clone)
}

/// Runs `f` with `log` as this thread's host log, then restores the previous one.
pub(super) fn scoped<T>(log: Option<Dispatch>, f: impl FnOnce() -> T) -> T {
    let previous = HOST_LOG.replace(log);
    let result = f();
    HOST_LOG.set(previous);
    result
}

/// Makes this thread a host thread logging to `log` for the rest of its life.
pub(super) fn set(log: Option<Dispatch>) {
    HOST_LOG.set(log);
}

/// The log of a host in `dir`: `daemon.log` there, capped at `LOOPBACK_SINGLETON_LOG_MAX`,
/// filtered by `LOOPBACK_SINGLETON_LOG`. A setting that does not parse falls back to its
/// default, and says so in the log.
pub(super) fn open(dir: &RuntimeDir) -> Dispatch {
    let mut warnings = Vec::new();
    let info = Targets::new().with_default(LevelFilter::INFO);
    let filter = match setting(LOG_ENV) {
        None => info,
        Some(value) => value.parse::<Targets>().unwrap_or_else(|error| {
            warnings.push(format!(
                "{LOG_ENV}={value:?} is not a filter ({error}; use e.g. warn, debug or \
                 info,my_crate=debug); logging at info"
            ));
            info
        }),
    };
    let cap = match setting(LOG_MAX_ENV) {
        None => DEFAULT_LOG_MAX,
        Some(value) => parse_size(&value).unwrap_or_else(|| {
            warnings.push(format!(
                "{LOG_MAX_ENV}={value:?} is not a size (use e.g. 4MiB, 512KiB or bytes); \
                 using {DEFAULT_LOG_MAX} bytes"
            ));
            DEFAULT_LOG_MAX
        }),
    };
    let writer = LogFile::open(dir.clone(), cap);
    let log = Dispatch::new(subscriber(writer, filter));
    for warning in warnings {
        tracing::dispatcher::with_default(&log, || tracing::warn!("{warning}"));
    }
    log
}

/// The value of the environment variable `name`, unless it is unset or empty (an empty
/// filter would turn the log off).
fn setting(name: &str) -> Option<String> {
    std::env::var(name)
        .ok()
        .filter(|value| !value.trim().is_empty())
}

/// One line per event to `writer`, those `filter` lets through. The filter is the
/// layer's own, so the subscriber's level hint is the filter's: events below it cost
/// their callsite one atomic load (see [`call`]).
fn subscriber(
    writer: impl for<'w> MakeWriter<'w> + Send + Sync + 'static,
    filter: Targets,
) -> impl tracing::Subscriber + Send + Sync {
    let format = tracing_subscriber::fmt::layer()
        .with_ansi(false)
        .with_writer(writer)
        .with_filter(filter);
    tracing_subscriber::registry().with(format)
}

/// Turns this process, a spawned daemon, into one that logs everything to `log`: the
/// global dispatcher (unless one is set already), a panic hook, and stdout and stderr
/// as a pipe whose lines become events (`stdio` target), so that what a service prints
/// is kept, and capped like the rest.
pub(super) fn install_daemon(log: Dispatch) {
    let _ = tracing::dispatcher::set_global_default(log.clone());
    std::panic::set_hook(Box::new(|info| {
        let thread = std::thread::current();
        let thread = thread.name().unwrap_or("unnamed");
        let location = info.location().map(ToString::to_string).unwrap_or_default();
        let message = panic_message(info.payload());
        let backtrace = std::backtrace::Backtrace::capture();
        if backtrace.status() == std::backtrace::BacktraceStatus::Captured {
            tracing::error!(thread = %thread, %location, %backtrace, "panicked: {message}");
        } else {
            tracing::error!(thread = %thread, %location, "panicked: {message}");
        }
    }));
    sys::daemon_stdio(|pipe| {
        let log = log.clone();
        std::thread::Builder::new()
            .name("loopback-singleton-stdio".into())
            .spawn(move || tracing::dispatcher::with_default(&log, || forward_lines(pipe)))
            .map(drop)
    });
    set(Some(log));
}

/// Turns what is written to `pipe` into one event per line (a line longer than 8 KiB
/// into several), until every writer is gone.
fn forward_lines(mut pipe: File) {
    const LONGEST: usize = 8 << 10;
    let mut pending = Vec::new();
    let mut chunk = [0u8; 4096];
    loop {
        let read = match pipe.read(&mut chunk) {
            Ok(0) => break,
            Ok(read) => read,
            Err(error) if error.kind() == io::ErrorKind::Interrupted => continue,
            Err(_) => break,
        };
        pending.extend_from_slice(&chunk[..read]);
        while let Some(end) = pending
            .iter()
            .position(|&byte| byte == b'\n')
            .or((pending.len() >= LONGEST).then_some(LONGEST))
        {
            let line: Vec<u8> = pending.drain(..=end.min(pending.len() - 1)).collect();
            let line = String::from_utf8_lossy(&line);
            tracing::warn!(target: "stdio", "{}", line.trim_end());
        }
    }
    if !pending.is_empty() {
        tracing::warn!(target: "stdio", "{}", String::from_utf8_lossy(&pending).trim_end());
    }
}

/// `4194304`, `512KiB`, `512k`, `4MiB`, `4M`, `1GiB`: a size in bytes, above zero.
fn parse_size(text: &str) -> Option<u64> {
    let text = text.trim();
    let split = text
        .find(|c: char| !c.is_ascii_digit())
        .unwrap_or(text.len());
    let (number, unit) = text.split_at(split);
    let number: u64 = number.parse().ok()?;
    let shift = match unit.trim().to_ascii_lowercase().as_str() {
        "" | "b" => 0,
        "k" | "kb" | "kib" => 10,
        "m" | "mb" | "mib" => 20,
        "g" | "gb" | "gib" => 30,
        _ => return None,
    };
    number.checked_mul(1 << shift).filter(|&size| size > 0)
}

/// `daemon.log`, reached through the runtime directory's handle, rotated to
/// `daemon.log.1` before a write would take it past `cap` (truncated instead if the
/// rename fails). Every error is swallowed: the log never stops the host.
struct LogFile {
    dir: RuntimeDir,
    cap: u64,
    current: Mutex<Current>,
}

struct Current {
    /// Opened on the first write, and again after a rotation.
    file: Option<File>,
    /// Its length as far as this process knows (from its open, plus what it wrote).
    size: u64,
}

impl LogFile {
    /// Opens it now, so that it exists (for `loopback-singleton logs`) even before the
    /// first event that passes the filter.
    fn open(dir: RuntimeDir, cap: u64) -> Self {
        LogFile {
            current: Mutex::new(Current::open(&dir)),
            dir,
            cap,
        }
    }

    fn append(&self, bytes: &[u8]) {
        let mut current = self
            .current
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        let len = bytes.len() as u64;
        if current.file.is_none() {
            *current = Current::open(&self.dir);
        }
        if current.size > 0 && current.size + len > self.cap {
            current.file = None;
            if self.dir.rotate_log().is_err() {
                if let Ok(file) = self.dir.open_log() {
                    let _ = file.set_len(0);
                }
            }
            *current = Current::open(&self.dir);
        }
        if let Some(file) = current.file.as_mut() {
            if file.write_all(bytes).is_ok() {
                current.size += len;
            }
        }
    }
}

impl Current {
    /// `daemon.log` as it is now (none if it cannot be opened: the next write retries).
    fn open(dir: &RuntimeDir) -> Self {
        let file = dir.open_log().ok();
        let size = file
            .as_ref()
            .and_then(|file| file.metadata().ok())
            .map_or(0, |meta| meta.len());
        Current { file, size }
    }
}

impl io::Write for &LogFile {
    fn write(&mut self, bytes: &[u8]) -> io::Result<usize> {
        self.append(bytes);
        Ok(bytes.len())
    }

    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

impl<'a> tracing_subscriber::fmt::MakeWriter<'a> for LogFile {
    type Writer = &'a LogFile;

    fn make_writer(&'a self) -> Self::Writer {
        self
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_level_hint_is_the_filters() {
        for (filter, hint) in [
            ("info", LevelFilter::INFO),
            ("warn", LevelFilter::WARN),
            ("debug", LevelFilter::DEBUG),
            (
                "info,loopback_singleton::host::call=debug",
                LevelFilter::DEBUG,
            ),
        ] {
            let log = subscriber(std::io::sink, filter.parse().unwrap());
            assert_eq!(
                tracing::Subscriber::max_level_hint(&log),
                Some(hint),
                "{filter}"
            );
        }
    }

    #[test]
    fn sizes_parse_with_their_unit() {
        assert_eq!(parse_size("4096"), Some(4096));
        assert_eq!(parse_size("16KiB"), Some(16 << 10));
        assert_eq!(parse_size("16k"), Some(16 << 10));
        assert_eq!(parse_size("4 MiB"), Some(4 << 20));
        assert_eq!(parse_size("1G"), Some(1 << 30));
        for bad in ["", "0", "MiB", "4 parsecs", "-1", "99999999999999999999"] {
            assert_eq!(parse_size(bad), None, "{bad}");
        }
    }
}
