//! Platforms without Unix calls (Windows): paths instead of directory handles, no
//! ownership to check (the per-user `%LOCALAPPDATA%` is private by its default ACLs),
//! process facts from `GetProcessTimes`/`GetExitCodeProcess`, and no auto-start: a
//! service is hosted with `Service::serve`.

use std::ffi::OsStr;
use std::fs::{File, OpenOptions};
use std::io;
use std::path::{Path, PathBuf};
use std::process::{Child, Command};
use std::time::Duration;

use super::{Access, FileKind, Handover, Inherited, Stat};

/// A directory, by path.
pub(crate) type DirHandle = PathBuf;

fn unsupported() -> io::Error {
    io::Error::new(
        io::ErrorKind::Unsupported,
        "auto-start is implemented for Unix only; host the service with `Service::serve`",
    )
}

fn stat_of(metadata: &std::fs::Metadata) -> Stat {
    let kind = if metadata.file_type().is_symlink() {
        FileKind::Symlink
    } else if metadata.is_dir() {
        FileKind::Dir
    } else if metadata.is_file() {
        FileKind::File
    } else {
        FileKind::Other
    };
    // Reported private and ours: the ACLs are not inspected.
    let mode = if kind == FileKind::Dir { 0o700 } else { 0o600 };
    Stat {
        uid: euid(),
        mode,
        kind,
    }
}

pub(crate) fn euid() -> u32 {
    0
}

pub(crate) fn stat_dir(dir: &DirHandle) -> io::Result<Stat> {
    Ok(stat_of(&std::fs::metadata(dir)?))
}

pub(crate) fn stat_file(file: &File) -> io::Result<Stat> {
    Ok(stat_of(&file.metadata()?))
}

pub(crate) fn lstat(path: &Path) -> io::Result<Stat> {
    Ok(stat_of(&std::fs::symlink_metadata(path)?))
}

pub(crate) fn lstat_at(dir: &DirHandle, name: &str) -> io::Result<Stat> {
    lstat(&dir.join(name))
}

/// The root of `path` (a drive, say).
pub(crate) fn open_root(path: &Path) -> io::Result<DirHandle> {
    Ok(path.ancestors().last().unwrap_or(path).to_path_buf())
}

pub(crate) fn open_dir_at(dir: &DirHandle, name: &OsStr) -> io::Result<DirHandle> {
    Ok(dir.join(name))
}

pub(crate) fn open_workdir_at(dir: &DirHandle, name: &str) -> io::Result<DirHandle> {
    Ok(dir.join(name))
}

pub(crate) fn mkdir_at(dir: &DirHandle, name: &str) -> io::Result<()> {
    match std::fs::create_dir(dir.join(name)) {
        Err(error) if error.kind() == io::ErrorKind::AlreadyExists => Ok(()),
        other => other,
    }
}

pub(crate) fn open_cwd() -> io::Result<DirHandle> {
    std::env::current_dir()
}

pub(crate) fn clone_handle(dir: &DirHandle) -> io::Result<DirHandle> {
    Ok(dir.clone())
}

pub(crate) fn open_at(dir: &DirHandle, file: &str, access: Access) -> io::Result<File> {
    let mut options = OpenOptions::new();
    match access {
        Access::Read => options.read(true),
        Access::Lock => options.read(true).write(true).create(true).truncate(false),
        Access::Append => options.append(true).create(true),
        Access::CreateNew => options.read(true).write(true).create_new(true),
    };
    options.open(dir.join(file))
}

pub(crate) fn rename_at(dir: &DirHandle, from: &str, to: &str) -> io::Result<()> {
    std::fs::rename(dir.join(from), dir.join(to))
}

pub(crate) fn remove_at(dir: &DirHandle, file: &str) -> io::Result<()> {
    std::fs::remove_file(dir.join(file))
}

/// Whether a process has exited, and when it was created (100 ns units since 1601);
/// `None` if there is no such process (or it cannot be inspected).
#[cfg(windows)]
fn process_facts(pid: u32) -> Option<(bool, u64)> {
    use windows_sys::Win32::Foundation::{CloseHandle, FILETIME, STILL_ACTIVE};
    use windows_sys::Win32::System::Threading::{
        GetExitCodeProcess, GetProcessTimes, OpenProcess, PROCESS_QUERY_LIMITED_INFORMATION,
    };
    let zero = FILETIME {
        dwLowDateTime: 0,
        dwHighDateTime: 0,
    };
    let (mut created, mut exited, mut kernel, mut user) = (zero, zero, zero, zero);
    let mut code = 0u32;
    // SAFETY: a handle opened here is closed here; the out-pointers are valid locals.
    let (times, status) = unsafe {
        let handle = OpenProcess(PROCESS_QUERY_LIMITED_INFORMATION, 0, pid);
        if handle.is_null() {
            return None;
        }
        let times = GetProcessTimes(handle, &mut created, &mut exited, &mut kernel, &mut user);
        let status = GetExitCodeProcess(handle, &mut code);
        CloseHandle(handle);
        (times, status)
    };
    if times == 0 {
        return None;
    }
    let start = (u64::from(created.dwHighDateTime) << 32) | u64::from(created.dwLowDateTime);
    Some((status != 0 && code != STILL_ACTIVE as u32, start))
}

/// Without Unix or Windows calls, every pid is taken for a live process (start time 0).
#[cfg(not(windows))]
fn process_facts(_pid: u32) -> Option<(bool, u64)> {
    Some((false, 0))
}

/// The creation time of a live process, or `None` if no such process exists or it has
/// exited (an exited process whose handle someone still holds is not live).
pub(crate) fn process_start_time(pid: u32) -> Option<u64> {
    process_facts(pid)
        .filter(|&(exited, _)| !exited)
        .map(|(_, start)| start)
}

/// Whether a process has exited (or does not exist).
pub(crate) fn process_exited(pid: u32) -> bool {
    process_facts(pid).is_none_or(|(exited, _)| exited)
}

pub(crate) fn raise_fd_limit() {}

pub(crate) fn kill(_pid: u32) -> io::Result<()> {
    Err(unsupported())
}

pub(crate) fn spawn_with(
    _command: &mut Command,
    _title: &str,
    _handover: Handover,
) -> io::Result<(Child, File)> {
    Err(unsupported())
}

pub(crate) fn wait_readable(_file: &File, _timeout: Duration) -> io::Result<bool> {
    Err(unsupported())
}

pub(crate) fn take_inherited() -> Inherited {
    Inherited {
        ready: None,
        start_lock: None,
        launch: None,
    }
}

pub(crate) fn remove_env_before_main(_name: &str) {}

pub(crate) fn read_from_start(_file: &File) -> io::Result<Vec<u8>> {
    Err(unsupported())
}

pub(crate) fn detach() -> io::Result<()> {
    Err(unsupported())
}

pub(crate) fn daemon_stdio(_reader: impl FnOnce(File) -> io::Result<()>) {}

pub(crate) fn release_stdio() {}

/// No stop signals are listened to.
pub(crate) struct StopSignals;

impl StopSignals {
    pub(crate) fn listen() -> Self {
        StopSignals
    }

    pub(crate) async fn recv(&mut self) {
        std::future::pending().await
    }
}

/// Creates `path` and any missing parents.
pub(crate) fn create_dir_all_private(path: &Path) -> io::Result<()> {
    std::fs::create_dir_all(path)
}

/// The platform's own per-user directory for runtime state: `%LOCALAPPDATA%`, private
/// to its user by default ACLs.
pub(crate) fn platform_runtime_base() -> Option<PathBuf> {
    std::env::var_os("LOCALAPPDATA")
        .filter(|value| !value.is_empty())
        .map(PathBuf::from)
}
