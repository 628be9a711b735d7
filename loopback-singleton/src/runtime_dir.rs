//! The per-user, per-name runtime directory: where it is, whether it can be trusted, the
//! locks, and the files in it (metadata, secret, log).
//!
//! Layout: `<base>/<name>/{metadata.json, secret, lock, instance.lock, daemon.log,
//! daemon.sock}` where
//! `<base>` is `$LOOPBACK_SINGLETON_DIR`, else `$XDG_RUNTIME_DIR/loopback-singleton`, else
//! the platform's per-user runtime directory (`$TMPDIR` on macOS, `%LOCALAPPDATA%` on
//! Windows) + `/loopback-singleton`, else `~/.cache/loopback-singleton`.
//!
//! Trust, the way `ssh` treats `~/.ssh` and `gpg-agent` its socket directory:
//! - the base and every directory above it belong to you or to root, and nobody else
//!   can write to them, unless the sticky bit keeps others from renaming your entries
//!   (as on `/tmp`);
//! - `<base>/<name>` is a real directory (not a symbolic link), yours, mode 0700. It is
//!   opened once and every file in it is reached relative to that handle (`openat`,
//!   `renameat`, `unlinkat`), so the directory checked is the directory used, whatever
//!   is renamed in the meantime;
//! - every file read for trust (secret, metadata) is a regular file, yours, readable by
//!   you alone; files are created 0600 from their first byte.
//!
//! A client opens the directory afresh (and so checks it again) every time it looks
//! for a daemon it does not know yet.

use std::fs::{self, File};
use std::io::{self, Read, Write};
use std::path::{Component, Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use serde::{Deserialize, Serialize};

use crate::error::Error;
use crate::protocol::{Fingerprint, Secret};
use crate::sys::{self, Access, FileKind, Stat};

/// Overrides the base directory (tests and users isolate runs with it).
pub(crate) const DIR_ENV: &str = "LOOPBACK_SINGLETON_DIR";

const METADATA: &str = "metadata.json";
const SECRET: &str = "secret";
const LOCK: &str = "lock";
const INSTANCE_LOCK: &str = "instance.lock";
const LOG: &str = "daemon.log";
/// The daemon's Unix socket (where the platform has them).
pub(crate) const SOCKET: &str = "daemon.sock";
/// The log before the last rotation (see `rotate_log`).
const OLD_LOG: &str = "daemon.log.1";

/// What a running daemon publishes about itself. Written atomically, 0600.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub(crate) struct Metadata {
    pub port: u16,
    pub pid: u32,
    /// The process start time (clock ticks since boot on Linux): a pid alone can be
    /// recycled, pid plus start time cannot.
    pub start_time: u64,
    pub instance: u64,
    pub service: String,
    pub schema: Fingerprint,
    pub init: Fingerprint,
    pub init_description: String,
    pub protocol: u16,
    pub crate_version: String,
    /// The daemon's Unix socket in this directory, if it listens on one (absent from
    /// the metadata of daemons that predate the Unix transport).
    #[serde(default)]
    pub socket: Option<String>,
    /// The idle TTL the daemon runs with, in milliseconds (options, else
    /// `LOOPBACK_SINGLETON_IDLE_TTL`); `None`: it never retires for want of clients.
    #[serde(default)]
    pub idle_ttl_ms: Option<u64>,
}

/// A validated, open runtime directory for one singleton name. Cheap to clone: clones
/// share the one handle.
#[derive(Debug, Clone)]
pub(crate) struct RuntimeDir {
    /// For messages and for users (`Client::runtime_dir`); never used to reach a file.
    path: PathBuf,
    name: String,
    handle: Arc<sys::DirHandle>,
}

/// The base directory under which each name gets its own directory.
pub(crate) fn base_dir(explicit: Option<&Path>) -> Result<PathBuf, Error> {
    if let Some(path) = explicit {
        return Ok(path.to_path_buf());
    }
    if let Some(dir) = std::env::var_os(DIR_ENV).filter(|value| !value.is_empty()) {
        return Ok(PathBuf::from(dir));
    }
    if let Some(dir) = std::env::var_os("XDG_RUNTIME_DIR").filter(|value| !value.is_empty()) {
        return Ok(PathBuf::from(dir).join("loopback-singleton"));
    }
    if let Some(dir) = sys::platform_runtime_base() {
        return Ok(dir.join("loopback-singleton"));
    }
    match std::env::var_os("HOME").filter(|value| !value.is_empty()) {
        Some(home) => Ok(PathBuf::from(home)
            .join(".cache")
            .join("loopback-singleton")),
        None => Err(Error::RuntimeDir {
            path: PathBuf::new(),
            reason: format!(
                "no XDG_RUNTIME_DIR and no HOME; set {DIR_ENV} to a directory only you can write"
            ),
        }),
    }
}

/// Checks a singleton name: it becomes a directory name.
pub(crate) fn validate_name(name: &str) -> Result<(), Error> {
    let ok = !name.is_empty()
        && name.len() <= 64
        && !name.starts_with('.')
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"._-".contains(&b));
    if ok {
        Ok(())
    } else {
        Err(Error::RuntimeDir {
            path: PathBuf::from(name),
            reason: "a singleton name must be 1 to 64 characters of A-Z a-z 0-9 . _ - and not start with '.'".into(),
        })
    }
}

impl RuntimeDir {
    /// Creates (0700) or opens `<base>/<name>`, checks that it and the directories
    /// above it can be trusted, and keeps it open.
    pub(crate) fn open(base: &Path, name: &str) -> Result<Self, Error> {
        validate_name(name)?;
        let path = base.join(name);
        create_private_dir(base)?;
        let base_handle = open_base(base)?;
        sys::mkdir_at(&base_handle, name).map_err(|error| {
            refuse(
                &path,
                format!("cannot create it ({error}); set {DIR_ENV} to a directory you own"),
            )
        })?;
        let handle = sys::open_workdir_at(&base_handle, name).map_err(|error| {
            let symlink =
                sys::lstat_at(&base_handle, name).is_ok_and(|stat| stat.kind == FileKind::Symlink);
            if symlink {
                refuse(
                    &path,
                    format!(
                        "it is a symbolic link; remove it (`rm {}`) and let loopback-singleton \
                         create a real directory",
                        path.display()
                    ),
                )
            } else {
                refuse(&path, format!("cannot open it as a directory: {error}"))
            }
        })?;
        Self::checked(path, name, handle)
    }

    /// The runtime directory a spawned daemon was started in: its working directory,
    /// which the client that validated it set (so no path is resolved again). Checked
    /// once more all the same.
    pub(crate) fn adopt_current(base: &Path, name: &str) -> Result<Self, Error> {
        validate_name(name)?;
        let path = base.join(name);
        let handle = sys::open_cwd().map_err(|error| {
            refuse(&path, format!("cannot open the working directory: {error}"))
        })?;
        Self::checked(path, name, handle)
    }

    /// The directory open at `handle`, once it is known to be a private directory of
    /// ours.
    fn checked(path: PathBuf, name: &str, handle: sys::DirHandle) -> Result<Self, Error> {
        let dir = RuntimeDir {
            path,
            name: name.to_string(),
            handle: Arc::new(handle),
        };
        dir.check_private(sys::stat_dir(&dir.handle), &dir.path, Private::Dir)?;
        Ok(dir)
    }

    pub(crate) fn path(&self) -> &Path {
        &self.path
    }

    /// Another handle on the directory (to become a spawned daemon's working
    /// directory).
    pub(crate) fn handle(&self) -> io::Result<sys::DirHandle> {
        sys::clone_handle(&self.handle)
    }

    /// The path of a file in the directory, for messages.
    fn display(&self, file: &str) -> PathBuf {
        self.path.join(file)
    }

    pub(crate) fn log_path(&self) -> PathBuf {
        self.display(LOG)
    }

    /// Opens `file` inside the directory, never following a symbolic link.
    fn open_file(&self, file: &str, access: Access) -> io::Result<File> {
        sys::open_at(&self.handle, file, access)
    }

    /// Removes `file`; a missing file is not an error.
    fn remove(&self, file: &str) -> io::Result<()> {
        match sys::remove_at(&self.handle, file) {
            Err(error) if error.kind() == io::ErrorKind::NotFound => Ok(()),
            other => other,
        }
    }

    /// Refuses a directory another user could read or plant files in, or a file that
    /// is not a regular file of ours, readable and writable by us alone.
    fn check_private(
        &self,
        stat: io::Result<Stat>,
        path: &Path,
        kind: Private,
    ) -> Result<(), Error> {
        let stat = stat.map_err(|error| refuse(path, format!("cannot inspect it: {error}")))?;
        let me = sys::euid();
        let (wanted, what, trust, fix) = match kind {
            Private::Dir => (
                FileKind::Dir,
                "directory",
                "",
                format!("chmod 700 {}`", path.display()),
            ),
            Private::File => (
                FileKind::File,
                "regular file",
                ", so it cannot be trusted",
                format!(
                    "chmod 600 {}` and restart the daemon, whose secret may have been read \
                     (`shutdown()` it or stop its process; the next connect starts a fresh one)",
                    path.display()
                ),
            ),
        };
        if stat.kind != wanted {
            return Err(refuse(path, format!("it is not a {what}; remove it")));
        }
        if stat.uid != me {
            return Err(refuse(
                path,
                format!(
                    "it is owned by uid {}, not by you (uid {me}){trust}; remove it or choose \
                     another {DIR_ENV}",
                    stat.uid
                ),
            ));
        }
        if stat.mode & 0o077 != 0 {
            return Err(refuse(
                path,
                format!(
                    "its permissions {:o} let other users in{trust}; run `{fix}",
                    stat.mode & 0o777,
                ),
            ));
        }
        Ok(())
    }

    /// Reads a file that decides whom to trust: `Ok(None)` if it does not exist, an
    /// [`Error::RuntimeDir`] if it is not a regular file of yours that only you can
    /// read and write.
    fn read_private(&self, file: &str) -> Result<Option<Vec<u8>>, Error> {
        let path = self.display(file);
        let mut opened = match self.open_file(file, Access::Read) {
            Ok(opened) => opened,
            Err(error) if error.kind() == io::ErrorKind::NotFound => return Ok(None),
            Err(error) => {
                return Err(Error::io(format!("opening {}", path.display()), error));
            }
        };
        self.check_private(sys::stat_file(&opened), &path, Private::File)?;
        let mut bytes = Vec::new();
        opened
            .read_to_end(&mut bytes)
            .map_err(|error| Error::io(format!("reading {}", path.display()), error))?;
        Ok(Some(bytes))
    }
    /// The published metadata: `Ok(None)` when there is none; [`Error::RuntimeDir`] when
    /// the file cannot be trusted; another error when it cannot be read or parsed (a
    /// stale or corrupt file).
    pub(crate) fn read_metadata(&self) -> Result<Option<Metadata>, Error> {
        let Some(bytes) = self.read_private(METADATA)? else {
            return Ok(None);
        };
        serde_json::from_slice(&bytes).map(Some).map_err(|error| {
            Error::io(
                format!("parsing {}", self.display(METADATA).display()),
                io::Error::new(io::ErrorKind::InvalidData, error),
            )
        })
    }

    /// The metadata of the daemon that runs now, if any: `Ok(None)` when there is no
    /// metadata, or a corrupt one, or it names a process that is gone (stale state);
    /// [`Error::RuntimeDir`] when the file cannot be trusted (not ours to judge or
    /// remove).
    pub(crate) fn live_daemon(&self) -> Result<Option<Metadata>, Error> {
        match self.read_metadata() {
            Ok(metadata) => Ok(metadata.filter(daemon_alive)),
            Err(error @ Error::RuntimeDir { .. }) => Err(error),
            Err(_) => Ok(None),
        }
    }

    pub(crate) fn write_metadata(&self, metadata: &Metadata) -> Result<(), Error> {
        let json = serde_json::to_vec_pretty(metadata).expect("metadata serializes");
        self.write_atomically(METADATA, &json)
    }

    /// The daemon's secret: `Ok(None)` when there is none; [`Error::RuntimeDir`] when
    /// the file cannot be trusted; another error when it is not 32 bytes.
    pub(crate) fn read_secret(&self) -> Result<Option<Secret>, Error> {
        let Some(bytes) = self.read_private(SECRET)? else {
            return Ok(None);
        };
        let secret = bytes.try_into().map_err(|_| {
            Error::io(
                format!("reading {}", self.display(SECRET).display()),
                io::Error::new(
                    io::ErrorKind::InvalidData,
                    "the secret file is not 32 bytes",
                ),
            )
        })?;
        Ok(Some(secret))
    }

    pub(crate) fn write_secret(&self, secret: &Secret) -> Result<(), Error> {
        self.write_atomically(SECRET, secret)
    }

    /// A private file holding `bytes` that has no name any more: what a daemon being
    /// spawned reads its launch description from (init arguments included), so that
    /// nothing is left behind and nobody else can open it.
    pub(crate) fn anonymous_file(&self, bytes: &[u8]) -> Result<File, Error> {
        let tmp = temporary_name("launch");
        let result = (|| {
            let mut file = self.open_file(&tmp, Access::CreateNew)?;
            self.remove(&tmp)?;
            file.write_all(bytes)?;
            Ok(file)
        })();
        result.map_err(|error| {
            let _ = self.remove(&tmp);
            Error::io(
                format!("writing a launch file in {}", self.path.display()),
                error,
            )
        })
    }

    /// Opens (appending, creating 0600) the daemon's log file, which must be a regular
    /// file of ours: a planted device, pipe or socket is not written to.
    pub(crate) fn open_log(&self) -> io::Result<File> {
        let file = self.open_file(LOG, Access::Append)?;
        let stat = sys::stat_file(&file)?;
        if stat.kind != FileKind::File || stat.uid != sys::euid() {
            return Err(io::Error::new(
                io::ErrorKind::InvalidData,
                format!(
                    "{} is not a regular file of yours",
                    self.log_path().display()
                ),
            ));
        }
        Ok(file)
    }

    /// Opens the log (`daemon.log`, or with `old` the one before the last rotation) to
    /// read it: `Ok(None)` if there is none; an [`Error::RuntimeDir`] if it is not a
    /// regular file (opening never follows a link nor waits on a pipe).
    pub(crate) fn read_log(&self, old: bool) -> Result<Option<File>, Error> {
        let file = if old { OLD_LOG } else { LOG };
        let path = self.display(file);
        let opened = match self.open_file(file, Access::Read) {
            Ok(opened) => opened,
            Err(error) if error.kind() == io::ErrorKind::NotFound => return Ok(None),
            Err(error) => return Err(Error::io(format!("opening {}", path.display()), error)),
        };
        let stat = sys::stat_file(&opened)
            .map_err(|error| Error::io(format!("inspecting {}", path.display()), error))?;
        if stat.kind != FileKind::File {
            return Err(refuse(&path, "it is not a regular file; remove it".into()));
        }
        Ok(Some(opened))
    }

    /// Renames the daemon's log to `daemon.log.1` (replacing an older one): the next
    /// [`open_log`](Self::open_log) starts an empty file.
    pub(crate) fn rotate_log(&self) -> io::Result<()> {
        sys::rename_at(&self.handle, LOG, OLD_LOG)
    }

    /// Removes the files of a daemon that is gone. The lock files stay: deleting a lock
    /// file others may hold open would let two processes "hold" it at once.
    pub(crate) fn remove_stale(&self) -> Result<(), Error> {
        for file in [METADATA, SECRET] {
            self.remove(file).map_err(|error| {
                Error::io(
                    format!("removing stale {}", self.display(file).display()),
                    error,
                )
            })?;
        }
        Ok(())
    }

    /// Checks what sits where the daemon's Unix socket goes: `Ok(false)` for nothing,
    /// `Ok(true)` for a socket of ours; anything else (a symbolic link, a regular file,
    /// another user's socket) is an [`Error::RuntimeDir`], never removed or followed.
    pub(crate) fn check_socket_slot(&self) -> Result<bool, Error> {
        let path = self.display(SOCKET);
        let stat = match sys::lstat_at(&self.handle, SOCKET) {
            Err(error) if error.kind() == io::ErrorKind::NotFound => return Ok(false),
            Err(error) => return Err(refuse(&path, format!("cannot inspect it: {error}"))),
            Ok(stat) => stat,
        };
        if stat.kind != FileKind::Socket {
            let what = match stat.kind {
                FileKind::Symlink => "a symbolic link",
                FileKind::Dir => "a directory",
                FileKind::File => "a regular file",
                FileKind::Socket | FileKind::Other => "a special file",
            };
            return Err(refuse(
                &path,
                format!(
                    "it is not a socket (it is {what}); remove it (`rm {}`) and let the \
                     daemon create its socket",
                    path.display()
                ),
            ));
        }
        let me = sys::euid();
        if stat.uid != me {
            return Err(refuse(
                &path,
                format!(
                    "it is a socket of uid {}, not yours (uid {me}); remove it",
                    stat.uid
                ),
            ));
        }
        Ok(true)
    }

    /// Binds the daemon's Unix socket, replacing a stale one: the caller holds the
    /// instance lock, so a socket of that name is a predecessor's that is gone (killed,
    /// or it never removed it). Anything else there is refused (see
    /// [`check_socket_slot`](Self::check_socket_slot)). `Ok(Err(reason))` when this
    /// daemon cannot have a socket (no Unix sockets on the platform, or an address too
    /// long for it): it serves TCP only.
    pub(crate) fn bind_socket(&self) -> Result<Result<sys::UnixListener, String>, Error> {
        let path = self.display(SOCKET);
        if self.check_socket_slot()? {
            self.remove(SOCKET).map_err(|error| {
                Error::io(format!("removing the stale {}", path.display()), error)
            })?;
        }
        Ok(sys::bind_unix_at(&self.handle, &self.path, SOCKET)
            .map_err(|error| format!("cannot listen on {}: {error}", path.display())))
    }

    /// Removes the daemon's socket file (the caller holds the instance lock and bound it).
    pub(crate) fn remove_socket(&self) {
        let _ = self.remove(SOCKET);
    }

    /// Connects to the Unix socket `socket` of this directory within `timeout` (see
    /// `sys::connect_unix_at` for how a path too long for a socket address is handled).
    pub(crate) fn connect_socket(
        &self,
        socket: &str,
        timeout: Duration,
    ) -> io::Result<sys::Stream> {
        sys::connect_unix_at(&self.handle, &self.path, socket, timeout)
    }

    /// Unpublishes the daemon `instance`: removes metadata and secret if the metadata
    /// still names it. The caller holds the instance lock, so no successor can have
    /// published in the meantime; the check only spares files of an unrelated writer.
    pub(crate) fn retire(&self, instance: u64) {
        if let Ok(Some(metadata)) = self.read_metadata() {
            if metadata.instance == instance {
                let _ = self.remove_stale();
                if metadata.socket.as_deref() == Some(SOCKET) {
                    self.remove_socket();
                }
            }
        }
    }

    /// Takes the start lock, retrying until `timeout`: held while deciding whether to
    /// start a daemon and until the one started has published itself.
    pub(crate) fn lock(&self, timeout: Duration) -> Result<HeldLock, Error> {
        self.acquire(
            LOCK,
            timeout,
            "the start lock",
            "another process is starting the daemon",
        )
    }

    /// Takes the instance lock, retrying until `timeout`: held by the process hosting
    /// the instance, from before it is built until after it is dropped, so that a
    /// successor's constructor never runs beside a predecessor's `Drop`.
    pub(crate) fn lock_instance(&self, timeout: Duration) -> Result<HeldLock, Error> {
        self.acquire(
            INSTANCE_LOCK,
            timeout,
            "the instance lock",
            "a previous daemon of this name still holds it: either it is retiring (finishing a \
             call or dropping its instance), or it runs but cannot be reached any more because \
             its secret or metadata were removed or changed; then stop it",
        )
    }

    /// Whether a host holds the instance lock now (it runs, or is still retiring).
    pub(crate) fn instance_held(&self) -> bool {
        matches!(
            self.lock_instance(Duration::ZERO),
            Err(Error::StartTimeout { .. })
        )
    }

    fn acquire(
        &self,
        file: &str,
        timeout: Duration,
        what: &str,
        holder: &str,
    ) -> Result<HeldLock, Error> {
        let path = self.display(file);
        let opened = self
            .open_file(file, Access::Lock)
            .map_err(|error| Error::io(format!("opening {what} {}", path.display()), error))?;
        let deadline = Instant::now() + timeout;
        let mut pause = Duration::from_millis(1);
        loop {
            match fs4::FileExt::try_lock(&opened) {
                Ok(()) => return Ok(HeldLock { file: opened }),
                Err(fs4::TryLockError::WouldBlock) => {}
                Err(fs4::TryLockError::Error(error)) => {
                    return Err(Error::io(format!("locking {}", path.display()), error));
                }
            }
            let now = Instant::now();
            if now >= deadline {
                return Err(Error::StartTimeout {
                    name: self.name.clone(),
                    waited: timeout,
                    what: format!("{what} {} ({holder})", path.display()),
                });
            }
            std::thread::sleep(pause.min(deadline - now));
            pause = (pause * 2).min(Duration::from_millis(20));
        }
    }

    /// Writes `file` through a 0600 temporary file, fsynced, then renamed, so a reader
    /// sees the old content or the new, never a torn file.
    fn write_atomically(&self, file: &str, bytes: &[u8]) -> Result<(), Error> {
        let tmp = temporary_name(file);
        let result = (|| {
            let mut opened = self.open_file(&tmp, Access::CreateNew)?;
            opened.write_all(bytes)?;
            opened.sync_all()?;
            sys::rename_at(&self.handle, &tmp, file)
        })();
        result.map_err(|error| {
            let _ = self.remove(&tmp);
            Error::io(format!("writing {}", self.display(file).display()), error)
        })
    }
}

/// A unique name for a temporary file beside `file`.
fn temporary_name(file: &str) -> String {
    let suffix = u64::from_le_bytes(crate::protocol::random_bytes());
    format!("{file}.tmp.{}.{suffix:016x}", std::process::id())
}

/// A held lock: an `flock` on a lock file, which belongs to the open file, not to a
/// descriptor. Dropping this closes our descriptor, which releases the lock unless a
/// daemon being spawned shares the file ([`share`](Self::share)): then the lock lasts
/// until that daemon lets it go. Never `unlock` explicitly, which would release it for
/// the daemon too. A crashed holder's lock dies with it.
#[derive(Debug)]
pub(crate) struct HeldLock {
    file: File,
}

impl HeldLock {
    /// Another descriptor of the locked file, to hand to a daemon being spawned.
    pub(crate) fn share(&self) -> io::Result<File> {
        self.file.try_clone()
    }
}

/// Creates `path` and any missing parents, 0700 for those it creates.
fn create_private_dir(path: &Path) -> Result<(), Error> {
    sys::create_dir_all_private(path).map_err(|error| Error::RuntimeDir {
        path: path.to_path_buf(),
        reason: format!("cannot create it ({error}); set {DIR_ENV} to a directory you own"),
    })
}

/// What must be private: the runtime directory, or a file in it read for trust.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Private {
    Dir,
    File,
}

fn refuse(path: &Path, reason: String) -> Error {
    Error::RuntimeDir {
        path: path.to_path_buf(),
        reason,
    }
}

/// Whether someone other than us (and root) can replace what is inside a directory:
/// its owner is another user, or others may write to it and no sticky bit stops them
/// from renaming our entries.
fn check_guarding_dir(stat: &Stat, path: &Path) -> Result<(), Error> {
    let me = sys::euid();
    if stat.uid != me && stat.uid != 0 {
        return Err(refuse(
            path,
            format!(
                "it is owned by uid {}, not by you (uid {me}) or root, so that user could \
                 replace the runtime directory and impersonate your daemon; choose a base \
                 directory of your own with {DIR_ENV}",
                stat.uid
            ),
        ));
    }
    if stat.mode & 0o022 != 0 && stat.mode & 0o1000 == 0 {
        return Err(refuse(
            path,
            format!(
                "its permissions {:o} let other users write to it without the sticky bit, \
                 so they could replace the runtime directory and impersonate your daemon; run \
                 `chmod go-w {}` (or `chmod +t` for a shared directory like /tmp), or choose \
                 another {DIR_ENV}",
                stat.mode,
                path.display()
            ),
        ));
    }
    Ok(())
}

/// Opens the base directory after checking it and every directory above it. The walk
/// goes down from the root one component at a time, never following a link, and checks
/// each directory through the handle it opened: a directory swapped during the walk is
/// refused, never checked in the place of another.
fn open_base(base: &Path) -> Result<sys::DirHandle, Error> {
    check_links_in(base)?;
    let canonical = fs::canonicalize(base)
        .map_err(|error| refuse(base, format!("cannot resolve it: {error}")))?;
    let mut walked = canonical
        .ancestors()
        .last()
        .unwrap_or(&canonical)
        .to_path_buf();
    let mut handle = sys::open_root(&canonical)
        .map_err(|error| refuse(&walked, format!("cannot open it: {error}")))?;
    let names = canonical
        .components()
        .filter_map(|component| match component {
            Component::Normal(name) => Some(name),
            _ => None,
        });
    for name in names {
        let stat = sys::stat_dir(&handle)
            .map_err(|error| refuse(&walked, format!("cannot inspect it: {error}")))?;
        check_guarding_dir(&stat, &walked)?;
        walked.push(name);
        handle = sys::open_dir_at(&handle, name).map_err(|error| {
            refuse(
                &walked,
                format!("cannot open it ({error}); was it replaced while being checked?"),
            )
        })?;
    }
    let stat = sys::stat_dir(&handle)
        .map_err(|error| refuse(&walked, format!("cannot inspect it: {error}")))?;
    check_guarding_dir(&stat, &walked)?;
    Ok(handle)
}

/// The symbolic links on the way to `base` as configured: each decides where the base
/// is, so each must belong to you or to root.
fn check_links_in(base: &Path) -> Result<(), Error> {
    let me = sys::euid();
    for prefix in base
        .ancestors()
        .filter(|prefix| !prefix.as_os_str().is_empty())
    {
        let Ok(stat) = sys::lstat(prefix) else {
            continue;
        };
        if stat.kind == FileKind::Symlink && stat.uid != me && stat.uid != 0 {
            return Err(refuse(
                prefix,
                format!(
                    "it is a symbolic link owned by uid {}, not by you (uid {me}) or root, so \
                     that user decides where your runtime directory is; point {DIR_ENV} at a \
                     directory of your own",
                    stat.uid
                ),
            ));
        }
    }
    Ok(())
}

/// Whether the process that wrote `metadata` still runs: pid and start time match (a
/// zombie, or an exited process whose handle someone still holds, has no start time).
pub(crate) fn daemon_alive(metadata: &Metadata) -> bool {
    sys::process_start_time(metadata.pid) == Some(metadata.start_time)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn scratch() -> PathBuf {
        let dir = std::env::temp_dir().join(format!(
            "ls-rtdir-{}-{:x}",
            std::process::id(),
            u64::from_le_bytes(crate::protocol::random_bytes())
        ));
        fs::create_dir_all(&dir).unwrap();
        // Private whatever the umask: a group-writable base is refused.
        #[cfg(unix)]
        chmod(&dir, 0o700);
        dir
    }

    #[test]
    fn names_are_checked() {
        assert!(validate_name("my-app.counter_2").is_ok());
        for bad in ["", ".hidden", "a/b", "..", "x y", &"n".repeat(65)] {
            assert!(validate_name(bad).is_err(), "{bad:?} should be refused");
        }
    }

    #[cfg(unix)]
    fn mode(path: &Path) -> u32 {
        use std::os::unix::fs::PermissionsExt;
        fs::metadata(path).unwrap().permissions().mode() & 0o7777
    }

    #[cfg(unix)]
    fn chmod(path: &Path, mode: u32) {
        use std::os::unix::fs::PermissionsExt;
        fs::set_permissions(path, fs::Permissions::from_mode(mode)).unwrap();
    }

    fn reason(result: Result<impl std::fmt::Debug, Error>) -> String {
        match result.unwrap_err() {
            Error::RuntimeDir { reason, .. } => reason,
            other => panic!("expected a runtime-dir error, got {other:?}"),
        }
    }

    #[cfg(unix)]
    #[test]
    fn directory_and_files_are_private() {
        let base = scratch();
        let dir = RuntimeDir::open(&base, "svc").unwrap();
        assert_eq!(mode(dir.path()), 0o700);
        dir.write_secret(&[7; 32]).unwrap();
        assert_eq!(mode(&dir.path().join(SECRET)), 0o600);
        assert_eq!(dir.read_secret().unwrap(), Some([7; 32]));

        chmod(dir.path(), 0o755);
        assert!(reason(RuntimeDir::open(&base, "svc")).contains("chmod 700"));

        std::os::unix::fs::symlink(dir.path(), base.join("link")).unwrap();
        assert!(reason(RuntimeDir::open(&base, "link")).contains("symbolic link"));
        fs::remove_dir_all(&base).unwrap();
    }

    #[cfg(unix)]
    #[test]
    fn a_base_others_can_write_needs_the_sticky_bit() {
        let base = scratch();
        chmod(&base, 0o777);
        let refused = reason(RuntimeDir::open(&base, "svc"));
        assert!(
            refused.contains("sticky") && refused.contains("chmod go-w"),
            "{refused}"
        );
        chmod(&base, 0o1777);
        RuntimeDir::open(&base, "svc").unwrap();
        // An ancestor open to others is as bad as the base itself.
        let inner = base.join("inner");
        fs::create_dir(&inner).unwrap();
        chmod(&base, 0o770);
        let refused = reason(RuntimeDir::open(&inner, "svc"));
        assert!(refused.contains("770"), "{refused}");
        chmod(&base, 0o700);
        fs::remove_dir_all(&base).unwrap();
    }

    #[cfg(unix)]
    #[test]
    fn secret_and_metadata_others_can_read_are_not_trusted() {
        let base = scratch();
        let dir = RuntimeDir::open(&base, "svc").unwrap();
        dir.write_secret(&[7; 32]).unwrap();
        chmod(&dir.path().join(SECRET), 0o644);
        assert!(reason(dir.read_secret()).contains("chmod 600"));
        fs::write(dir.path().join(METADATA), b"{}").unwrap();
        chmod(&dir.path().join(METADATA), 0o640);
        assert!(reason(dir.read_metadata()).contains("cannot be trusted"));
        fs::remove_file(dir.path().join(SECRET)).unwrap();
        std::os::unix::fs::symlink("/etc/hostname", dir.path().join(SECRET)).unwrap();
        assert!(
            dir.read_secret().is_err(),
            "a symbolic link is never followed"
        );
        fs::remove_dir_all(&base).unwrap();
    }

    #[test]
    fn corrupt_metadata_is_reported_not_trusted() {
        let base = scratch();
        let dir = RuntimeDir::open(&base, "svc").unwrap();
        assert!(matches!(dir.read_metadata(), Ok(None)));
        dir.write_atomically(METADATA, b"{ not json").unwrap();
        assert!(matches!(dir.read_metadata(), Err(Error::Io { .. })));
        fs::remove_dir_all(&base).unwrap();
    }

    #[cfg(unix)]
    #[test]
    fn the_open_handle_keeps_pointing_at_the_checked_directory() {
        let base = scratch();
        let dir = RuntimeDir::open(&base, "svc").unwrap();
        dir.write_secret(&[1; 32]).unwrap();
        // Swapped for another directory after the check: the handle still reads ours.
        fs::rename(dir.path(), base.join("moved")).unwrap();
        fs::create_dir(base.join("svc")).unwrap();
        fs::write(base.join("svc").join(SECRET), [2; 32]).unwrap();
        assert_eq!(dir.read_secret().unwrap(), Some([1; 32]));
        fs::remove_dir_all(&base).unwrap();
    }

    #[test]
    fn the_instance_lock_is_exclusive_until_dropped() {
        let base = scratch();
        let dir = RuntimeDir::open(&base, "svc").unwrap();
        let held = dir.lock_instance(Duration::ZERO).unwrap();
        assert!(matches!(
            dir.lock_instance(Duration::from_millis(20)),
            Err(Error::StartTimeout { .. })
        ));
        drop(held);
        dir.lock_instance(Duration::ZERO).unwrap();
        fs::remove_dir_all(&base).unwrap();
    }

    /// Windows: the owner and DACL stand for the uid and mode (see `sys::windows`).
    #[cfg(windows)]
    #[test]
    fn directory_and_files_are_private_by_their_dacl() {
        let me = sys::current_user_sid().unwrap();
        let base = scratch();
        let dir = RuntimeDir::open(&base, "svc").unwrap();
        dir.write_secret(&[7; 32]).unwrap();
        assert_eq!(dir.read_secret().unwrap(), Some([7; 32]));

        // The secret readable by Everyone.
        let secret = dir.path().join(SECRET);
        sys::set_dacl(&secret, &format!("D:(A;;FA;;;{me})(A;;FR;;;WD)"));
        assert!(reason(dir.read_secret()).contains("let other users in"));

        // The runtime directory readable by Everyone.
        sys::set_dacl(dir.path(), &format!("D:(A;OICI;FA;;;{me})(A;;FR;;;WD)"));
        assert!(reason(RuntimeDir::open(&base, "svc")).contains("let other users in"));
        fs::remove_dir_all(&base).unwrap();

        // A base directory Everyone may write to.
        let base = scratch();
        sys::set_dacl(&base, &format!("D:(A;OICI;FA;;;{me})(A;;FA;;;WD)"));
        assert!(reason(RuntimeDir::open(&base, "svc")).contains("without the sticky bit"));
        fs::remove_dir_all(&base).unwrap();
    }

    /// Where the OS gives a start time (Linux, macOS, FreeBSD, Windows): not the other
    /// BSDs, which answer 0 for every pid.
    #[cfg(any(
        target_os = "linux",
        target_os = "macos",
        target_os = "freebsd",
        windows
    ))]
    #[test]
    fn own_process_is_alive_with_a_stable_start_time() {
        let pid = std::process::id();
        let start = sys::process_start_time(pid).unwrap();
        assert_eq!(sys::process_start_time(pid), Some(start));
        assert_eq!(sys::process_start_time(u32::MAX), None);
    }
}
