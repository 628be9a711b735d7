//! Linux, macOS and the BSDs: `rustix` where it has the call, `libc` where it does not.

use std::ffi::OsStr;
use std::fs::File;
use std::io;
use std::os::fd::{AsFd, AsRawFd, FromRawFd, OwnedFd};
use std::os::unix::process::CommandExt;
use std::path::Path;
use std::process::{Child, Command};
use std::time::Duration;

use rustix::fs::{AtFlags, FileType, Mode, OFlags};

use super::{Access, FileKind, Handover, Inherited, Stat};

/// An open directory: the handle every file in it is reached through.
pub(crate) type DirHandle = OwnedFd;

fn stat_of(stat: &rustix::fs::Stat) -> Stat {
    // `st_mode` is a u16 on some systems.
    #[allow(clippy::useless_conversion)]
    let mode = u32::from(stat.st_mode);
    let kind = match FileType::from_raw_mode(stat.st_mode as _) {
        FileType::Directory => FileKind::Dir,
        FileType::RegularFile => FileKind::File,
        FileType::Symlink => FileKind::Symlink,
        FileType::Socket => FileKind::Socket,
        _ => FileKind::Other,
    };
    Stat {
        uid: stat.st_uid,
        mode: mode & 0o7777,
        kind,
    }
}

/// The effective user id: who owns what this process creates.
pub(crate) fn euid() -> u32 {
    rustix::process::geteuid().as_raw()
}

fn fstat(handle: impl AsFd) -> io::Result<Stat> {
    Ok(stat_of(&rustix::fs::fstat(handle)?))
}

/// What the open directory `dir` is (not what its path names now).
pub(crate) fn stat_dir(dir: &DirHandle) -> io::Result<Stat> {
    fstat(dir)
}

/// What the open `file` is (not what its path names now).
pub(crate) fn stat_file(file: &File) -> io::Result<Stat> {
    fstat(file)
}

/// `lstat`: a symbolic link is described, not followed.
pub(crate) fn lstat(path: &Path) -> io::Result<Stat> {
    Ok(stat_of(&rustix::fs::lstat(path)?))
}

/// `lstat` of `name` inside `dir`.
pub(crate) fn lstat_at(dir: &DirHandle, name: &str) -> io::Result<Stat> {
    Ok(stat_of(&rustix::fs::statat(
        dir,
        name,
        AtFlags::SYMLINK_NOFOLLOW,
    )?))
}

/// Flags to walk down a path one directory at a time, never following a link. O_PATH
/// (Linux) needs no read permission on the directories walked through.
fn walk_flags() -> OFlags {
    #[cfg(any(target_os = "linux", target_os = "android"))]
    let access = OFlags::PATH;
    #[cfg(not(any(target_os = "linux", target_os = "android")))]
    let access = OFlags::RDONLY;
    access | OFlags::DIRECTORY | OFlags::NOFOLLOW | OFlags::CLOEXEC
}

/// The root directory of `path` (`/`), to walk down from.
pub(crate) fn open_root(_path: &Path) -> io::Result<DirHandle> {
    Ok(rustix::fs::open("/", walk_flags(), Mode::empty())?)
}

/// The directory `name` inside `dir`, refusing a symbolic link (to walk through).
pub(crate) fn open_dir_at(dir: &DirHandle, name: &OsStr) -> io::Result<DirHandle> {
    Ok(rustix::fs::openat(dir, name, walk_flags(), Mode::empty())?)
}

/// The directory `name` inside `dir`, refusing a symbolic link (to work in).
pub(crate) fn open_workdir_at(dir: &DirHandle, name: &str) -> io::Result<DirHandle> {
    let flags = OFlags::RDONLY | OFlags::DIRECTORY | OFlags::NOFOLLOW | OFlags::CLOEXEC;
    Ok(rustix::fs::openat(dir, name, flags, Mode::empty())?)
}

/// Creates the directory `name` (0700) inside `dir`; one that exists already is fine.
pub(crate) fn mkdir_at(dir: &DirHandle, name: &str) -> io::Result<()> {
    match rustix::fs::mkdirat(dir, name, Mode::from_raw_mode(0o700)) {
        Ok(()) | Err(rustix::io::Errno::EXIST) => Ok(()),
        Err(error) => Err(error.into()),
    }
}

/// The working directory (a spawned daemon's runtime directory).
pub(crate) fn open_cwd() -> io::Result<DirHandle> {
    let flags = OFlags::RDONLY | OFlags::DIRECTORY | OFlags::CLOEXEC;
    Ok(rustix::fs::open(".", flags, Mode::empty())?)
}

/// Another handle on the same open directory.
pub(crate) fn clone_handle(dir: &DirHandle) -> io::Result<DirHandle> {
    dir.try_clone()
}

pub(crate) fn open_at(dir: &DirHandle, file: &str, access: Access) -> io::Result<File> {
    let flags = OFlags::NOFOLLOW
        | OFlags::CLOEXEC
        | match access {
            // Non-blocking, so that a pipe planted where a file should be cannot make
            // the open wait for a writer (or reader); callers then refuse what is not a
            // regular file. Reads and writes of regular files do not block either way.
            Access::Read => OFlags::RDONLY | OFlags::NONBLOCK,
            Access::Lock => OFlags::RDWR | OFlags::CREATE,
            Access::Append => OFlags::WRONLY | OFlags::APPEND | OFlags::CREATE | OFlags::NONBLOCK,
            Access::CreateNew => OFlags::RDWR | OFlags::CREATE | OFlags::EXCL,
        };
    let fd = rustix::fs::openat(dir, file, flags, Mode::from_raw_mode(0o600))?;
    Ok(File::from(fd))
}

pub(crate) fn rename_at(dir: &DirHandle, from: &str, to: &str) -> io::Result<()> {
    Ok(rustix::fs::renameat(dir, from, dir, to)?)
}

pub(crate) fn remove_at(dir: &DirHandle, file: &str) -> io::Result<()> {
    Ok(rustix::fs::unlinkat(dir, file, AtFlags::empty())?)
}

/// Whether a process is a zombie, and when it started (in units of the platform's
/// clock: ticks since boot on Linux, microseconds since the epoch on macOS and
/// FreeBSD); `None` if there is no such process. A pid alone can be recycled, pid
/// plus start time cannot.
#[cfg(target_os = "linux")]
fn process_facts(pid: u32) -> Option<(bool, u64)> {
    // `/proc/<pid>/stat`: the command name (field 2) may contain spaces and
    // parentheses, so skip past its last ')'. The state is then the first field after
    // it, the start time the 20th.
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    let mut fields = stat[stat.rfind(')')? + 1..].split_whitespace();
    let state = fields.next()?.chars().next()?;
    Some((state == 'Z', fields.nth(18)?.parse().ok()?))
}

#[cfg(any(target_os = "macos", target_os = "ios"))]
fn process_facts(pid: u32) -> Option<(bool, u64)> {
    // SAFETY: proc_bsdinfo is plain old data; all zeroes is a valid value.
    let mut info: libc::proc_bsdinfo = unsafe { std::mem::zeroed() };
    let size = std::mem::size_of::<libc::proc_bsdinfo>() as libc::c_int;
    // SAFETY: `info` is a writable proc_bsdinfo of `size` bytes.
    let written = unsafe {
        libc::proc_pidinfo(
            libc::c_int::try_from(pid).ok()?,
            libc::PROC_PIDTBSDINFO,
            0,
            (&raw mut info).cast(),
            size,
        )
    };
    (written == size).then(|| {
        let start = info.pbi_start_tvsec * 1_000_000 + info.pbi_start_tvusec;
        (info.pbi_status == libc::SZOMB, start)
    })
}

#[cfg(target_os = "freebsd")]
fn process_facts(pid: u32) -> Option<(bool, u64)> {
    // SAFETY: kinfo_proc is plain old data; all zeroes is a valid value.
    let mut info: libc::kinfo_proc = unsafe { std::mem::zeroed() };
    let mut size = std::mem::size_of::<libc::kinfo_proc>();
    let name = [
        libc::CTL_KERN,
        libc::KERN_PROC,
        libc::KERN_PROC_PID,
        libc::c_int::try_from(pid).ok()?,
    ];
    // SAFETY: `name` holds 4 ints; `info` is writable for `size` bytes.
    let status = unsafe {
        libc::sysctl(
            name.as_ptr(),
            4,
            (&raw mut info).cast(),
            &mut size,
            std::ptr::null(),
            0,
        )
    };
    (status == 0 && size == std::mem::size_of::<libc::kinfo_proc>()).then(|| {
        let start = info.ki_start.tv_sec as u64 * 1_000_000 + info.ki_start.tv_usec as u64;
        (info.ki_stat == libc::SZOMB, start)
    })
}

/// Elsewhere (the other BSDs) only existence is known: start time 0.
#[cfg(not(any(
    target_os = "linux",
    target_os = "macos",
    target_os = "ios",
    target_os = "freebsd"
)))]
fn process_facts(pid: u32) -> Option<(bool, u64)> {
    // SAFETY: kill with signal 0 only checks for existence and permission.
    let alive = unsafe { libc::kill(pid as libc::pid_t, 0) } == 0;
    alive.then_some((false, 0))
}

/// The start time of a live process, or `None` if no such process exists or it has
/// exited (a zombie waiting for its parent is not live).
pub(crate) fn process_start_time(pid: u32) -> Option<u64> {
    process_facts(pid)
        .filter(|&(zombie, _)| !zombie)
        .map(|(_, start_time)| start_time)
}

/// Whether a process has exited: gone, or a zombie waiting for its parent to reap it.
pub(crate) fn process_exited(pid: u32) -> bool {
    process_facts(pid).is_none_or(|(zombie, _)| zombie)
}

/// Sends SIGKILL to `pid` (the CLI's `stop` of a daemon that does not retire).
pub(crate) fn kill(pid: u32) -> io::Result<()> {
    let pid = libc::pid_t::try_from(pid)
        .ok()
        .filter(|pid| *pid > 0)
        .ok_or_else(|| io::Error::new(io::ErrorKind::InvalidInput, "not a single process id"))?;
    // SAFETY: kill takes plain integers; a positive pid names one process.
    if unsafe { libc::kill(pid, libc::SIGKILL) } == 0 {
        Ok(())
    } else {
        Err(io::Error::last_os_error())
    }
}

/// Lifts the soft open-file limit to the hard one, so a daemon can hold many clients.
pub(crate) fn raise_fd_limit() {
    let mut limit = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: getrlimit/setrlimit with a valid rlimit struct.
    unsafe {
        if libc::getrlimit(libc::RLIMIT_NOFILE, &mut limit) == 0 && limit.rlim_cur < limit.rlim_max
        {
            limit.rlim_cur = limit.rlim_max;
            libc::setrlimit(libc::RLIMIT_NOFILE, &limit);
        }
    }
}

/// The launcher forks the daemon and exits at once (see [`detach`]).
pub(crate) const LAUNCHER_IS_DAEMON: bool = false;

/// What the launcher reads the readiness report from: a pipe.
pub(crate) type ReadyPipe = File;

/// The launcher process.
pub(crate) type Launcher = Child;

/// The descriptor of the readiness pipe in the daemon.
const READY_FD: i32 = 3;
/// The descriptor of the start lock the daemon holds until it has published itself.
const LOCK_FD: i32 = 4;
/// The descriptor of the (nameless) file holding the launch description.
const LAUNCH_FD: i32 = 5;
/// The highest descriptor handed over.
const HIGHEST_FD: i32 = LAUNCH_FD;

/// Spawns `command` as `title` (what `ps` shows) in a new session with the
/// [`Handover`] in place (the runtime directory as its working directory, the start
/// lock and launch description at fixed descriptors, every other descriptor closed at
/// exec); returns the child and the read end of the readiness pipe, whose write end
/// the child holds.
pub(crate) fn spawn_with(
    command: &mut Command,
    title: &str,
    handover: Handover,
) -> io::Result<(Launcher, ReadyPipe)> {
    command.arg0(title);
    let (read_end, write_end) = cloexec_pipe()?;
    // Descriptors 0-2 are replaced by /dev/null in the child before `pre_exec` runs: the
    // ones handed over must sit above them (a caller may run with stdio closed).
    let write_end = above_stdio(write_end)?;
    let lock = above_stdio(OwnedFd::from(handover.start_lock))?;
    let launch = above_stdio(OwnedFd::from(handover.launch))?;
    let workdir = above_stdio(handover.workdir)?;
    let (write_fd, lock_fd, launch_fd, workdir_fd) = (
        write_end.as_raw_fd(),
        lock.as_raw_fd(),
        launch.as_raw_fd(),
        workdir.as_raw_fd(),
    );
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
    let child = command.spawn()?;
    Ok((child, File::from(read_end)))
}

/// A pipe whose ends close on exec, so that no other child of this process inherits
/// them: atomically where the system can (`pipe2`), else marked right after creation
/// (macOS, as std's own `Command` does there).
fn cloexec_pipe() -> io::Result<(OwnedFd, OwnedFd)> {
    #[cfg(not(any(target_os = "macos", target_os = "ios")))]
    {
        Ok(rustix::pipe::pipe_with(rustix::pipe::PipeFlags::CLOEXEC)?)
    }
    #[cfg(any(target_os = "macos", target_os = "ios"))]
    {
        let (read_end, write_end) = rustix::pipe::pipe()?;
        for end in [&read_end, &write_end] {
            rustix::io::fcntl_setfd(end, rustix::io::FdFlags::CLOEXEC)?;
        }
        Ok((read_end, write_end))
    }
}

/// Moves a descriptor above `HIGHEST_FD` (keeping it close-on-exec), so that the
/// child's stdio set-up and the moves to `READY_FD`..`HIGHEST_FD` cannot overwrite it.
fn above_stdio(fd: OwnedFd) -> io::Result<OwnedFd> {
    if fd.as_raw_fd() > HIGHEST_FD {
        return Ok(fd);
    }
    // SAFETY: F_DUPFD_CLOEXEC returns a new descriptor that we then own alone.
    let moved = unsafe { libc::fcntl(fd.as_raw_fd(), libc::F_DUPFD_CLOEXEC, HIGHEST_FD + 1) };
    if moved < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: `moved` is fresh and owned by nobody else.
    Ok(unsafe { OwnedFd::from_raw_fd(moved) })
}

/// Marks every descriptor above `HIGHEST_FD` close-on-exec (between fork and exec).
/// `close_range` with `CLOSE_RANGE_CLOEXEC` (Linux 5.11) does it in one call; older
/// kernels get the loop. Marking rather than closing keeps std's exec-error pipe working.
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

/// Waits until `file` has something to read (or its writer closed it); `false` when
/// `timeout` passed first.
pub(crate) fn wait_readable(file: &ReadyPipe, timeout: Duration) -> io::Result<bool> {
    let mut poll = libc::pollfd {
        fd: file.as_raw_fd(),
        events: libc::POLLIN,
        revents: 0,
    };
    let millis = timeout.as_millis().clamp(1, i32::MAX as u128) as i32;
    // SAFETY: one valid pollfd, count 1.
    let ready = unsafe { libc::poll(&mut poll, 1, millis) };
    match ready {
        n if n > 0 => Ok(true),
        0 => Ok(false),
        _ => {
            let error = io::Error::last_os_error();
            if error.kind() == io::ErrorKind::Interrupted {
                Ok(false)
            } else {
                Err(error)
            }
        }
    }
}

/// The descriptors a launcher handed over (see [`spawn_with`]), each made
/// close-on-exec so that nothing the service spawns inherits it.
pub(crate) fn take_inherited() -> Inherited {
    let take = |fd: i32| {
        // SAFETY: fcntl F_GETFD only inspects the descriptor.
        let open = unsafe { libc::fcntl(fd, libc::F_GETFD) } >= 0;
        // SAFETY: the launcher put it there and nothing else in this fresh process owns
        // it.
        open.then(|| unsafe {
            libc::fcntl(fd, libc::F_SETFD, libc::FD_CLOEXEC);
            File::from_raw_fd(fd)
        })
    };
    Inherited {
        ready: take(READY_FD),
        start_lock: take(LOCK_FD),
        launch: take(LAUNCH_FD),
    }
}

/// The whole content of `file` from its first byte, whatever its offset (a file
/// shared with the process that wrote it has its offset at the end).
pub(crate) fn read_from_start(file: &File) -> io::Result<Vec<u8>> {
    use std::os::unix::fs::FileExt;
    let mut bytes = Vec::new();
    let mut chunk = vec![0; 64 << 10];
    loop {
        match file.read_at(&mut chunk, bytes.len() as u64) {
            Ok(0) => return Ok(bytes),
            Ok(n) => bytes.extend_from_slice(&chunk[..n]),
            Err(error) if error.kind() == io::ErrorKind::Interrupted => {}
            Err(error) => return Err(error),
        }
    }
}

/// Leaves the launcher process: forks, the parent exits at once (the client reaps it),
/// and the child, already in its own session, carries on as the daemon. Called before
/// `main`, while the process is single-threaded.
pub(crate) fn detach() -> io::Result<()> {
    // SAFETY: called before main while single-threaded; the parent only calls _exit.
    match unsafe { libc::fork() } {
        -1 => Err(io::Error::last_os_error()),
        0 => Ok(()),
        _ => unsafe { libc::_exit(0) },
    }
}

/// Ignores SIGPIPE, so that a vanished client never kills the daemon (std sets that up
/// in `main`, which a daemon started before `main` never reaches), and makes stdout and
/// stderr the write end of a pipe whose read end `reader` takes (a thread that drains
/// it into the capped log); if there is no pipe or `reader` fails, they stay as they
/// are (the null device of a spawned daemon).
pub(crate) fn daemon_stdio(reader: impl FnOnce(File) -> io::Result<()>) {
    // SAFETY: setting a signal disposition to SIG_IGN is always sound.
    unsafe {
        libc::signal(libc::SIGPIPE, libc::SIG_IGN);
    }
    // Close-on-exec from creation; the copies made onto 1 and 2 are not (dup2 clears
    // the flag), so the service's own children inherit stdout and stderr as usual.
    let Ok((read, write)) = cloexec_pipe() else {
        return;
    };
    if reader(File::from(read)).is_ok() {
        // SAFETY: dup2 onto the standard descriptors, which this process owns.
        unsafe {
            libc::dup2(write.as_raw_fd(), 1);
            libc::dup2(write.as_raw_fd(), 2);
        }
    }
}

/// Points stdout and stderr at `/dev/null` (closing whatever they were, such as the
/// write end of [`daemon_stdio`]'s pipe). Best effort.
pub(crate) fn release_stdio() {
    let Ok(null) = File::options().write(true).open("/dev/null") else {
        return;
    };
    // SAFETY: dup2 onto the standard descriptors, which this process owns.
    unsafe {
        libc::dup2(null.as_raw_fd(), 1);
        libc::dup2(null.as_raw_fd(), 2);
    }
}

/// SIGTERM and SIGINT, the signals of logout and service managers.
pub(crate) struct StopSignals(Option<(tokio::signal::unix::Signal, tokio::signal::unix::Signal)>);

impl StopSignals {
    /// What the host logs when one arrives.
    pub(crate) const DESCRIPTION: &str = "SIGTERM or SIGINT";

    /// Starts listening (inside a tokio runtime).
    pub(crate) fn listen() -> Self {
        use tokio::signal::unix::{SignalKind, signal};
        StopSignals(
            signal(SignalKind::terminate())
                .and_then(|terminate| Ok((terminate, signal(SignalKind::interrupt())?)))
                .ok(),
        )
    }

    /// Completes when one arrives (never, if listening failed).
    pub(crate) async fn recv(&mut self) {
        if let Some((terminate, interrupt)) = &mut self.0 {
            tokio::select! {
                _ = terminate.recv() => return,
                _ = interrupt.recv() => return,
            }
        }
        std::future::pending().await
    }
}

/// Creates `path` and any missing parents, 0700 for those it creates.
pub(crate) fn create_dir_all_private(path: &Path) -> io::Result<()> {
    use std::os::unix::fs::DirBuilderExt;
    std::fs::DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(path)
}

/// The platform's own per-user directory for runtime state, where `XDG_RUNTIME_DIR`
/// is not set: on macOS `$TMPDIR`, which launchd gives each user under `/var/folders`
/// (mode 0700, emptied at boot: the lifetime of a runtime directory, unlike
/// `~/Library/Caches`, which outlives reboots); elsewhere none (`~/.cache` then).
pub(crate) fn platform_runtime_base() -> Option<std::path::PathBuf> {
    if cfg!(target_os = "macos") {
        std::env::var_os("TMPDIR")
            .filter(|value| !value.is_empty())
            .map(std::path::PathBuf::from)
    } else {
        None
    }
}
