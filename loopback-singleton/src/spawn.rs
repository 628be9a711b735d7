//! Starting a daemon: re-executing an executable with an environment marker, detaching
//! it, and the readiness pipe through which it reports `Ready` or `Failed`.
//!
//! The marker is an environment variable, never argv: a `cargo test` binary reads argv
//! as test filters. The re-executed process sees the marker in a pre-main hook emitted
//! by `#[local_singleton]`, forks (the client reaps the short-lived parent, so no zombie
//! is left behind), and the child becomes the daemon in a new session with its stdio
//! on `/dev/null` and the log file. It never returns to the program's `main`.
//!
//! Everything else travels as inherited descriptors, never as paths that could be
//! swapped in between: the readiness pipe, the start lock, the launch description (a
//! private file without a name), and the runtime directory the client checked, which
//! becomes the daemon's working directory.

use std::fs::File;
use std::io::{self, Read, Write};
use std::path::Path;
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use serde::{Deserialize, Serialize};

use crate::daemon::Launch;
use crate::runtime_dir::{HeldLock, RuntimeDir};

/// Names the service a re-executed process must become the daemon of.
pub(crate) const MARKER_ENV: &str = "LOOPBACK_SINGLETON_DAEMON";
/// Makes `connect` fail with `Error::NotRunning` instead of spawning a daemon.
pub(crate) const NO_SPAWN_ENV: &str = "LOOPBACK_SINGLETON_NO_SPAWN";
/// Jobserver variables: a daemon that keeps a `make`/`cargo` jobserver's fds or
/// tokens would hold up the build that started it.
const JOBSERVER_ENV: [&str; 3] = ["MAKEFLAGS", "CARGO_MAKEFLAGS", "MFLAGS"];
/// The file descriptor of the readiness pipe in the daemon.
#[cfg(unix)]
const READY_FD: i32 = 3;
/// The file descriptor of the start lock the daemon holds until it has published itself.
#[cfg(unix)]
const LOCK_FD: i32 = 4;
/// The file descriptor of the (nameless) file holding the [`Launch`]: name, options,
/// init arguments.
#[cfg(unix)]
const LAUNCH_FD: i32 = 5;
/// The highest descriptor handed over.
#[cfg(unix)]
const HIGHEST_FD: i32 = LAUNCH_FD;

/// Set once this process has become a daemon: a daemon never spawns another.
static IN_DAEMON: AtomicBool = AtomicBool::new(false);

pub(crate) fn in_daemon_mode() -> bool {
    IN_DAEMON.load(Ordering::Relaxed)
}

pub(crate) fn spawn_disabled() -> bool {
    std::env::var_os(NO_SPAWN_ENV).is_some_and(|value| !value.is_empty() && value != "0")
}

/// What a daemon reports over the readiness pipe, once.
#[derive(Debug, Serialize, Deserialize)]
pub(crate) enum Readiness {
    Ready { port: u16, pid: u32, instance: u64 },
    Failed { reason: String },
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
/// The caller holds the start lock; the daemon inherits it (the same open file, so the
/// same lock) and lets go once it has published itself or failed. A client that gives
/// up waiting therefore never lets a second daemon start beside a slow first one.
#[cfg(unix)]
pub(crate) fn spawn_daemon(
    exe: &Path,
    service_id: &str,
    launch: &Launch,
    dir: &RuntimeDir,
    start_lock: &HeldLock,
    timeout: Duration,
) -> Result<(u16, u32, u64), SpawnError> {
    use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
    use std::os::unix::process::CommandExt;

    let deadline = Instant::now() + timeout;
    let failed = |what: &str, error: io::Error| SpawnError::Failed(format!("{what}: {error}"));
    let mut fds = [0; 2];
    // SAFETY: fds is a valid array of two ints; O_CLOEXEC keeps the pipe out of every
    // other child this process spawns.
    if unsafe { libc::pipe2(fds.as_mut_ptr(), libc::O_CLOEXEC) } != 0 {
        return Err(failed(
            "creating the readiness pipe",
            io::Error::last_os_error(),
        ));
    }
    // SAFETY: pipe2 just returned these two fresh descriptors; each is owned once.
    let (read_end, write_end) =
        unsafe { (OwnedFd::from_raw_fd(fds[0]), OwnedFd::from_raw_fd(fds[1])) };
    // Descriptors 0-2 are replaced by /dev/null in the child before `pre_exec` runs: the
    // ones handed over must sit above them (a caller may run with stdio closed).
    let write_end = above_stdio(write_end).map_err(|error| failed("moving the pipe", error))?;
    let lock = above_stdio(
        start_lock
            .share()
            .map_err(|error| failed("sharing the lock", error))?,
    )
    .map_err(|error| failed("moving the lock", error))?;
    // The launch description (init arguments included) goes through a private file, not
    // the environment, whose strings are limited to 128 KiB.
    let launch_file = dir
        .anonymous_file(&postcard::to_stdvec(launch).expect("launch encodes"))
        .map_err(|error| SpawnError::Failed(error.to_string()))?;
    let launch_file = above_stdio(OwnedFd::from(launch_file))
        .map_err(|error| failed("moving the launch file", error))?;
    let workdir = dir
        .handle()
        .and_then(above_stdio)
        .map_err(|error| failed("sharing the runtime directory", error))?;
    let (write_fd, lock_fd, launch_fd, workdir_fd) = (
        write_end.as_raw_fd(),
        lock.as_raw_fd(),
        launch_file.as_raw_fd(),
        workdir.as_raw_fd(),
    );

    let mut command = Command::new(exe);
    // What `ps` shows: the program and which singleton it serves.
    let program = std::env::current_exe().ok();
    let program = program
        .as_deref()
        .and_then(Path::file_name)
        .unwrap_or(exe.as_os_str());
    command.arg0(format!(
        "{} [loopback-singleton daemon {}]",
        program.to_string_lossy(),
        launch.name
    ));
    command
        .env(MARKER_ENV, service_id)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null());
    for name in JOBSERVER_ENV {
        command.env_remove(name);
    }
    // SAFETY: the closure runs between fork and exec and only makes async-signal-safe
    // system calls (setsid, fchdir, dup2, fcntl, close_range) on plain integers.
    unsafe {
        command.pre_exec(move || {
            if libc::setsid() < 0 || libc::fchdir(workdir_fd) < 0 {
                return Err(io::Error::last_os_error());
            }
            // Every source is above HIGHEST_FD (see `above_stdio`), so no move clobbers
            // another; dup2 clears close-on-exec on the copies.
            for (from, to) in [
                (write_fd, READY_FD),
                (lock_fd, LOCK_FD),
                (launch_fd, LAUNCH_FD),
            ] {
                if libc::dup2(from, to) < 0 {
                    return Err(io::Error::last_os_error());
                }
            }
            close_others_on_exec();
            Ok(())
        });
    }
    let spawned = command.spawn();
    drop((write_end, lock, launch_file, workdir));
    let mut launcher =
        spawned.map_err(|error| failed(&format!("spawning {}", exe.display()), error))?;

    let readiness = read_readiness(File::from(read_end), deadline);
    // The launcher forks the daemon and exits at once; one that is still there now
    // (not our program, or hung) is stopped, so that nothing is left behind.
    if !matches!(launcher.try_wait(), Ok(Some(_))) {
        let _ = launcher.kill();
    }
    let _ = launcher.wait();
    match readiness? {
        Readiness::Ready {
            port,
            pid,
            instance,
        } => Ok((port, pid, instance)),
        Readiness::Failed { reason } => Err(SpawnError::Failed(reason)),
    }
}

/// Moves a descriptor above `HIGHEST_FD` (keeping it close-on-exec), so that the
/// child's stdio set-up and the moves to `READY_FD`..`HIGHEST_FD` cannot overwrite it.
#[cfg(unix)]
fn above_stdio(fd: std::os::fd::OwnedFd) -> io::Result<std::os::fd::OwnedFd> {
    use std::os::fd::{AsRawFd, FromRawFd};
    if fd.as_raw_fd() > HIGHEST_FD {
        return Ok(fd);
    }
    // SAFETY: F_DUPFD_CLOEXEC returns a new descriptor that we then own alone.
    let moved = unsafe { libc::fcntl(fd.as_raw_fd(), libc::F_DUPFD_CLOEXEC, HIGHEST_FD + 1) };
    if moved < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: `moved` is fresh and owned by nobody else.
    Ok(unsafe { std::os::fd::OwnedFd::from_raw_fd(moved) })
}

/// Marks every descriptor above `HIGHEST_FD` close-on-exec (between fork and exec).
/// `close_range` with `CLOSE_RANGE_CLOEXEC` (Linux 5.11) does it in one call; older
/// kernels get the loop. Marking rather than closing keeps std's exec-error pipe working.
#[cfg(unix)]
unsafe fn close_others_on_exec() {
    #[cfg(target_os = "linux")]
    // SAFETY: close_range only changes descriptor flags.
    if unsafe {
        libc::syscall(
            libc::SYS_close_range,
            HIGHEST_FD + 1,
            u32::MAX,
            libc::CLOSE_RANGE_CLOEXEC,
        )
    } == 0
    {
        return;
    }
    // SAFETY: getrlimit/fcntl on plain integers; invalid descriptors just fail.
    unsafe {
        let mut limit = libc::rlimit {
            rlim_cur: 0,
            rlim_max: 0,
        };
        let max = if libc::getrlimit(libc::RLIMIT_NOFILE, &mut limit) == 0 {
            limit.rlim_cur.min(65_536) as i32
        } else {
            1024
        };
        for fd in HIGHEST_FD + 1..max {
            libc::fcntl(fd, libc::F_SETFD, libc::FD_CLOEXEC);
        }
    }
}

#[cfg(not(unix))]
pub(crate) fn spawn_daemon(
    _exe: &Path,
    _service_id: &str,
    _launch: &Launch,
    _dir: &RuntimeDir,
    _start_lock: &HeldLock,
    _timeout: Duration,
) -> Result<(u16, u32, u64), SpawnError> {
    Err(SpawnError::Failed(
        "auto-start is implemented for Unix only; host the service with `Service::serve`".into(),
    ))
}

/// Reads the one readiness frame, or EOF (the daemon died first), within `timeout`.
#[cfg(unix)]
fn read_readiness(mut pipe: File, deadline: Instant) -> Result<Readiness, SpawnError> {
    use std::os::fd::AsRawFd;

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
        let mut poll = libc::pollfd {
            fd: pipe.as_raw_fd(),
            events: libc::POLLIN,
            revents: 0,
        };
        let millis = remaining.as_millis().clamp(1, i32::MAX as u128) as i32;
        // SAFETY: one valid pollfd, count 1.
        let ready = unsafe { libc::poll(&mut poll, 1, millis) };
        if ready < 0 {
            let error = io::Error::last_os_error();
            if error.kind() == io::ErrorKind::Interrupted {
                continue;
            }
            return Err(SpawnError::Failed(format!(
                "waiting for readiness: {error}"
            )));
        }
        if ready == 0 {
            continue;
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

pub(crate) fn parse_readiness(received: &[u8]) -> Result<Option<Readiness>, SpawnError> {
    if received.len() < 4 {
        return Ok(None);
    }
    let len = crate::protocol::check_len(
        received[..4].try_into().expect("4 bytes"),
        crate::protocol::MAX_HANDSHAKE_FRAME,
    )
    .map_err(|error| SpawnError::Failed(format!("bad readiness report: {error}")))?;
    if received.len() < 4 + len {
        return Ok(None);
    }
    crate::protocol::decode("readiness report", &received[4..4 + len])
        .map(Some)
        .map_err(|error| SpawnError::Failed(error.to_string()))
}

/// The daemon's end of the readiness pipe, and the start lock it inherited. Reports
/// once, then lets the lock go; dropping it unreported closes the pipe, which the
/// client reads as "died before ready".
pub(crate) struct ReadySender {
    pipe: Option<File>,
    start_lock: Option<File>,
}

impl ReadySender {
    /// No pipe: a self-hosted daemon ([`Service::serve`](crate::Service::serve)).
    pub(crate) fn none() -> Self {
        ReadySender {
            pipe: None,
            start_lock: None,
        }
    }

    /// Reports readiness or failure. The daemon has published itself (or given up) by
    /// now, so the clients waiting for the start lock may look.
    pub(crate) fn send(&mut self, readiness: &Readiness) {
        if let Some(mut pipe) = self.pipe.take() {
            let mut frame = Vec::new();
            crate::protocol::encode_frame(readiness, &mut frame);
            // The client may have given up already; nothing to do about that.
            let _ = pipe.write_all(&frame);
        }
        self.start_lock = None;
    }
}

/// If this process was launched as the daemon of `service_id`, takes the launch
/// description out of the environment (so nothing this daemon spawns inherits it),
/// marks the process as a daemon, and returns the description and the readiness pipe.
///
/// Runs before `main`, while the process is single-threaded.
pub(crate) fn take_launch(service_id: &str) -> Option<(Result<Launch, String>, ReadySender)> {
    if std::env::var_os(MARKER_ENV)? != service_id {
        return None;
    }
    // SAFETY: this runs in a pre-main hook, before any other thread exists.
    unsafe {
        std::env::remove_var(MARKER_ENV);
    }
    IN_DAEMON.store(true, Ordering::Relaxed);
    Some(inherited())
}

/// The launch description, the readiness pipe and the start lock the launcher handed
/// over.
#[cfg(unix)]
fn inherited() -> (Result<Launch, String>, ReadySender) {
    use std::os::fd::FromRawFd;
    use std::os::unix::fs::FileExt;
    let take = |fd: i32| {
        // SAFETY: fcntl F_GETFD only inspects the descriptor.
        let open = unsafe { libc::fcntl(fd, libc::F_GETFD) } >= 0;
        // SAFETY: the launcher put it there and nothing else in this fresh process owns
        // it. Close-on-exec, so that nothing the service spawns inherits it.
        open.then(|| unsafe {
            libc::fcntl(fd, libc::F_SETFD, libc::FD_CLOEXEC);
            File::from_raw_fd(fd)
        })
    };
    let ready = ReadySender {
        pipe: take(READY_FD),
        start_lock: take(LOCK_FD),
    };
    let launch = take(LAUNCH_FD)
        .ok_or_else(|| "no launch description was handed over".to_string())
        .and_then(|file| {
            // The launcher's writes left the shared offset at the end: read from 0.
            let mut bytes = Vec::new();
            let mut chunk = vec![0; 64 << 10];
            loop {
                match file.read_at(&mut chunk, bytes.len() as u64) {
                    Ok(0) => break Ok(bytes),
                    Ok(n) => bytes.extend_from_slice(&chunk[..n]),
                    Err(error) if error.kind() == io::ErrorKind::Interrupted => {}
                    Err(error) => break Err(format!("reading the launch description: {error}")),
                }
            }
        })
        .and_then(|bytes| {
            postcard::from_bytes(&bytes).map_err(|error| format!("the launch description: {error}"))
        });
    (launch, ready)
}

#[cfg(not(unix))]
fn inherited() -> (Result<Launch, String>, ReadySender) {
    (
        Err("auto-start is implemented for Unix only".into()),
        ReadySender::none(),
    )
}

/// Leaves the launcher process: forks, the parent exits at once (the client reaps it),
/// and the child, already in its own session, carries on as the daemon.
#[cfg(unix)]
pub(crate) fn detach() -> io::Result<()> {
    // SAFETY: called before main while single-threaded; the parent only calls _exit.
    match unsafe { libc::fork() } {
        -1 => Err(io::Error::last_os_error()),
        0 => Ok(()),
        _ => unsafe { libc::_exit(0) },
    }
}

/// Points stdout and stderr at the log file and ignores SIGPIPE, so that a vanished
/// client never kills the daemon (std sets that up in `main`, which a daemon started
/// before `main` never reaches).
#[cfg(unix)]
pub(crate) fn daemon_stdio(log: io::Result<File>) {
    use std::os::fd::AsRawFd;
    // SAFETY: setting a signal disposition to SIG_IGN is always sound.
    unsafe {
        libc::signal(libc::SIGPIPE, libc::SIG_IGN);
    }
    if let Ok(file) = log {
        // SAFETY: dup2 onto the standard descriptors, which this process owns.
        unsafe {
            libc::dup2(file.as_raw_fd(), 1);
            libc::dup2(file.as_raw_fd(), 2);
        }
    }
}

#[cfg(not(unix))]
pub(crate) fn detach() -> io::Result<()> {
    Ok(())
}

#[cfg(not(unix))]
pub(crate) fn daemon_stdio(_log: io::Result<File>) {}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn readiness_parses_only_whole_frames() {
        let mut frame = Vec::new();
        crate::protocol::encode_frame(
            &Readiness::Failed {
                reason: "boom".into(),
            },
            &mut frame,
        );
        assert!(matches!(
            parse_readiness(&frame[..frame.len() - 1]),
            Ok(None)
        ));
        match parse_readiness(&frame) {
            Ok(Some(Readiness::Failed { reason })) => assert_eq!(reason, "boom"),
            other => panic!("{other:?}"),
        }
    }
}
