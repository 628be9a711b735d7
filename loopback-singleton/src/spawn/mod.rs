//! Starting a daemon: re-executing an executable with an environment marker, detaching
//! it, and the readiness pipe through which it reports `Ready` or `Failed`.
//!
//! The marker is an environment variable, never argv: a `cargo test` binary reads argv
//! as test filters. The re-executed process sees the marker in a pre-main hook emitted
//! by `#[local_singleton]` and becomes the daemon; it never returns to the program's
//! `main`.
//!
//! - On Unix it forks (the client reaps the short-lived parent, so no zombie is left
//!   behind), and the child serves in a new session with its stdio on `/dev/null` and
//!   the log file. Everything else travels as inherited descriptors, never as paths
//!   that could be swapped in between: the readiness pipe, the start lock, the
//!   [`Launch`] description (a private file without a name), and the runtime directory
//!   the client checked, which becomes the daemon's working directory.
//! - On Windows it is created detached (no console, its own process group) in the
//!   runtime directory, and serves in that process. Only its standard handles are
//!   inherited: the launch description arrives on stdin, the readiness report leaves on
//!   stdout (then pointed at the log). A byte-range lock cannot change hands between
//!   processes, so the client holds the start lock until the report, and stops a
//!   daemon that did not report in time before letting the lock go.
//!
//! The launcher side is here; the daemon's side is [`readiness`].

mod launch;
mod readiness;

use std::io::{self, Read};
use std::path::Path;
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

pub(crate) use launch::Launch;
pub(crate) use readiness::{Readiness, ReadySender, parse as parse_readiness, take_launch};

use crate::runtime_dir::{HeldLock, RuntimeDir};
use crate::sys::{self, Handover};

/// Names the service a re-executed process must become the daemon of.
pub(crate) const MARKER_ENV: &str = "LOOPBACK_SINGLETON_DAEMON";
/// Makes `connect` fail with `Error::NotRunning` instead of spawning a daemon.
pub(crate) const NO_SPAWN_ENV: &str = "LOOPBACK_SINGLETON_NO_SPAWN";
/// Jobserver variables: a daemon that keeps a `make`/`cargo` jobserver's fds or
/// tokens would hold up the build that started it.
const JOBSERVER_ENV: [&str; 3] = ["MAKEFLAGS", "CARGO_MAKEFLAGS", "MFLAGS"];
/// Set once this process has become a daemon: a daemon never spawns another.
static IN_DAEMON: AtomicBool = AtomicBool::new(false);

pub(crate) fn in_daemon_mode() -> bool {
    IN_DAEMON.load(Ordering::Relaxed)
}

pub(crate) fn spawn_disabled() -> bool {
    std::env::var_os(NO_SPAWN_ENV).is_some_and(|value| !value.is_empty() && value != "0")
}

/// Why a spawn did not produce a ready daemon.
#[derive(Debug)]
pub(crate) enum SpawnError {
    /// The daemon said why, or exited without saying.
    Failed(String),
    /// No word within the start timeout.
    TimedOut,
}

/// Starts `exe` as the daemon of `service_id` and waits for its readiness report.
///
/// The caller holds the start lock; on Unix the daemon inherits it (the same open file,
/// so the same lock) and lets go once it has published itself or failed, on Windows
/// the caller keeps it and stops a daemon that did not report. A client that gives up
/// waiting therefore never lets a second daemon start beside a slow first one.
pub(crate) fn spawn_daemon(
    exe: &Path,
    service_id: &str,
    launch: &Launch,
    dir: &RuntimeDir,
    start_lock: &HeldLock,
    timeout: Duration,
) -> Result<(u16, u32, u64), SpawnError> {
    let deadline = Instant::now() + timeout;
    let failed = |what: &str, error: io::Error| SpawnError::Failed(format!("{what}: {error}"));
    let handover = Handover {
        start_lock: start_lock
            .share()
            .map_err(|error| failed("sharing the lock", error))?,
        // The launch description (init arguments included) goes through a private file,
        // not the environment, whose strings are limited to 128 KiB.
        launch: dir
            .anonymous_file(&postcard::to_stdvec(launch).expect("launch encodes"))
            .map_err(|error| SpawnError::Failed(error.to_string()))?,
        workdir: dir
            .handle()
            .map_err(|error| failed("sharing the runtime directory", error))?,
    };

    let mut command = Command::new(exe);
    command
        .env(MARKER_ENV, service_id)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null());
    for name in JOBSERVER_ENV {
        command.env_remove(name);
    }
    // What `ps` shows: the program and which singleton it serves.
    let program = std::env::current_exe().ok();
    let program = program
        .as_deref()
        .and_then(Path::file_name)
        .unwrap_or(exe.as_os_str());
    let title = format!(
        "{} [loopback-singleton daemon {}]",
        program.to_string_lossy(),
        launch.name
    );
    let (mut launcher, pipe) = sys::spawn_with(&mut command, &title, handover)
        .map_err(|error| failed(&format!("spawning {}", exe.display()), error))?;

    let readiness = read_readiness(pipe, deadline);
    // On Unix the launcher forks the daemon and exits at once; one that is still there
    // now (not our program, or hung) is stopped, so that nothing is left behind. On
    // Windows the launcher is the daemon: one that did not report ready is stopped, so
    // that the start lock we let go of next never lets a second daemon start beside it.
    let ready = matches!(readiness, Ok(Readiness::Ready { .. }));
    if !(sys::LAUNCHER_IS_DAEMON && ready) {
        if !matches!(launcher.try_wait(), Ok(Some(_))) {
            let _ = launcher.kill();
        }
        let _ = launcher.wait();
    }
    match readiness? {
        Readiness::Ready {
            port,
            pid,
            instance,
        } => Ok((port, pid, instance)),
        Readiness::Failed { reason } => Err(SpawnError::Failed(reason)),
    }
}

/// Reads the one readiness frame, or EOF (the daemon died first), until `deadline`.
fn read_readiness(mut pipe: sys::ReadyPipe, deadline: Instant) -> Result<Readiness, SpawnError> {
    let mut received = Vec::new();
    let mut chunk = [0u8; 4096];
    loop {
        if let Some(readiness) = parse_readiness(&received)? {
            return Ok(readiness);
        }
        let remaining = deadline.saturating_duration_since(Instant::now());
        if remaining.is_zero() {
            return Err(SpawnError::TimedOut);
        }
        match sys::wait_readable(&pipe, remaining) {
            Ok(true) => {}
            Ok(false) => continue,
            Err(error) => {
                return Err(SpawnError::Failed(format!(
                    "waiting for readiness: {error}"
                )));
            }
        }
        match pipe.read(&mut chunk) {
            Ok(0) => {
                return Err(SpawnError::Failed(
                    "the daemon exited before reporting readiness (see daemon.log in the runtime directory)".into(),
                ));
            }
            Ok(n) => received.extend_from_slice(&chunk[..n]),
            Err(error) if error.kind() == io::ErrorKind::Interrupted => {}
            Err(error) => return Err(SpawnError::Failed(format!("reading readiness: {error}"))),
        }
    }
}
