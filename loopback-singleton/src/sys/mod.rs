//! Every `unsafe` block, `libc` call and platform `cfg` of the crate, behind one
//! interface: file-system calls relative to a directory handle, process facts (start
//! time, exit, effective uid, executable), descriptors handed to a spawned daemon and
//! taken over by it, detaching, signals, limits.
//!
//! One file per platform family: [`unix`] (Linux, macOS, the BSDs) and `windows`; one
//! per facility that spans families: `stream` (TCP and Unix sockets) and `shm` (shared
//! regions). Imports nothing of the crate.

use std::path::PathBuf;

#[cfg(unix)]
mod unix;
#[cfg(unix)]
pub(crate) use unix::*;

#[cfg(windows)]
mod windows;
#[cfg(windows)]
pub(crate) use windows::*;

mod stream;
pub(crate) use stream::*;

mod shm;
pub(crate) use shm::*;

/// What `fstat` says about a file, as far as trust is concerned.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Stat {
    pub uid: u32,
    /// Permission bits, sticky bit included (`0o7777`).
    pub mode: u32,
    pub kind: FileKind,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum FileKind {
    Dir,
    File,
    Symlink,
    /// A Unix-domain socket.
    Socket,
    Other,
}

/// How a file in a directory is opened. Every mode refuses a symbolic link, and every
/// file it creates is 0600.
#[derive(Debug, Clone, Copy)]
pub(crate) enum Access {
    Read,
    /// Read-write, created if missing (lock files).
    Lock,
    /// Append-only, created if missing (a log).
    Append,
    /// A new file that must not exist yet.
    CreateNew,
}

/// What a launcher hands to the daemon it spawns.
pub(crate) struct Handover {
    /// The start lock, which the daemon holds until it has published itself (on Unix;
    /// on Windows the launcher keeps holding its own).
    pub start_lock: std::fs::File,
    /// The launch description (a file without a name).
    pub launch: std::fs::File,
    /// The runtime directory, which becomes the daemon's working directory.
    pub workdir: DirHandle,
}

/// What a spawned daemon finds handed over (each `None` if it was not).
pub(crate) struct Inherited {
    pub ready: Option<std::fs::File>,
    pub start_lock: Option<std::fs::File>,
    pub launch: Option<std::fs::File>,
}

/// The executable to re-execute as the daemon: this one.
pub(crate) fn current_exe() -> std::io::Result<PathBuf> {
    if cfg!(target_os = "linux") {
        // The running image even if its file was replaced or deleted since.
        Ok(PathBuf::from("/proc/self/exe"))
    } else {
        std::env::current_exe()
    }
}

/// Removes an environment variable; only before `main`, while the process is
/// single-threaded (nothing else can read the environment at the same time).
pub(crate) fn remove_env_before_main(name: &str) {
    // SAFETY: called from the pre-main hook, before any other thread exists.
    unsafe { std::env::remove_var(name) }
}
