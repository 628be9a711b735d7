//! The per-user, per-name runtime directory: where it is, whether it can be trusted, the
//! start lock, and the files in it (metadata, secret, log).
//!
//! Layout: `<base>/<name>/{metadata.json, secret, lock, daemon.log}` where `<base>` is
//! `$LOOPBACK_SINGLETON_DIR`, else `$XDG_RUNTIME_DIR/loopback-singleton`, else
//! `~/.cache/loopback-singleton`.

use std::fs::{self, File, OpenOptions};
use std::io::{self, Write};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use serde::{Deserialize, Serialize};

use crate::error::Error;
use crate::service::Fingerprint;
use crate::wire::Secret;

/// Overrides the base directory (tests and users isolate runs with it).
pub(crate) const DIR_ENV: &str = "LOOPBACK_SINGLETON_DIR";

const METADATA: &str = "metadata.json";
const SECRET: &str = "secret";
const LOCK: &str = "lock";
const LOG: &str = "daemon.log";
const LAUNCH: &str = "launch";

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
}

/// A validated runtime directory for one singleton name.
#[derive(Debug, Clone)]
pub(crate) struct RuntimeDir {
    path: PathBuf,
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
    #[cfg(windows)]
    if let Some(dir) = std::env::var_os("LOCALAPPDATA").filter(|value| !value.is_empty()) {
        return Ok(PathBuf::from(dir).join("loopback-singleton"));
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
    /// Creates (0700) or opens `<base>/<name>` and checks that it can be trusted.
    pub(crate) fn open(base: &Path, name: &str) -> Result<Self, Error> {
        validate_name(name)?;
        let path = base.join(name);
        create_private_dir(&path)?;
        check_private_dir(&path)?;
        Ok(RuntimeDir { path })
    }

    pub(crate) fn path(&self) -> &Path {
        &self.path
    }

    pub(crate) fn metadata_path(&self) -> PathBuf {
        self.path.join(METADATA)
    }

    pub(crate) fn secret_path(&self) -> PathBuf {
        self.path.join(SECRET)
    }

    pub(crate) fn log_path(&self) -> PathBuf {
        self.path.join(LOG)
    }

    /// The published metadata: `Ok(None)` when there is none, `Err` with a reason when
    /// it cannot be parsed (a stale or corrupt file).
    pub(crate) fn read_metadata(&self) -> Result<Option<Metadata>, String> {
        match fs::read(self.metadata_path()) {
            Ok(bytes) => serde_json::from_slice(&bytes)
                .map(Some)
                .map_err(|error| format!("unparsable metadata: {error}")),
            Err(error) if error.kind() == io::ErrorKind::NotFound => Ok(None),
            Err(error) => Err(format!("unreadable metadata: {error}")),
        }
    }

    pub(crate) fn write_metadata(&self, metadata: &Metadata) -> Result<(), Error> {
        let json = serde_json::to_vec_pretty(metadata).expect("metadata serializes");
        write_private_atomically(&self.metadata_path(), &json)
    }

    pub(crate) fn read_secret(&self) -> io::Result<Secret> {
        let bytes = fs::read(self.secret_path())?;
        bytes.try_into().map_err(|_| {
            io::Error::new(
                io::ErrorKind::InvalidData,
                "the secret file is not 32 bytes",
            )
        })
    }

    pub(crate) fn write_secret(&self, secret: &Secret) -> Result<(), Error> {
        write_private_atomically(&self.secret_path(), secret)
    }

    /// Writes what a daemon being spawned needs (0600, atomically); returns its path.
    /// Only the holder of the start lock spawns, so one name suffices.
    pub(crate) fn write_launch(&self, bytes: &[u8]) -> Result<PathBuf, Error> {
        let path = self.path.join(LAUNCH);
        write_private_atomically(&path, bytes)?;
        Ok(path)
    }

    /// Removes the launch file (the daemon removes it too, once read).
    pub(crate) fn remove_launch(&self) {
        let _ = fs::remove_file(self.path.join(LAUNCH));
    }

    /// Removes the files of a daemon that is gone. The lock file stays: deleting a lock
    /// file others may hold open would let two processes "hold" it at once.
    pub(crate) fn remove_stale(&self) -> Result<(), Error> {
        for path in [self.metadata_path(), self.secret_path()] {
            match fs::remove_file(&path) {
                Ok(()) => {}
                Err(error) if error.kind() == io::ErrorKind::NotFound => {}
                Err(error) => {
                    return Err(Error::io(
                        format!("removing stale {}", path.display()),
                        error,
                    ));
                }
            }
        }
        Ok(())
    }

    /// Removes the metadata only if it still names `instance` (a newer daemon may have
    /// replaced it). Holds the start lock while checking, when it can get it quickly.
    pub(crate) fn retire(&self, instance: u64) {
        let Ok(_lock) = self.lock(Duration::from_millis(500)) else {
            // Someone holds the lock: a client starting a successor (which overwrites the
            // file) or probing; either way a stale file is recognised by its dead pid.
            return;
        };
        if let Ok(Some(metadata)) = self.read_metadata() {
            if metadata.instance == instance {
                let _ = self.remove_stale();
            }
        }
    }

    /// Takes the start lock, retrying until `timeout`.
    pub(crate) fn lock(&self, timeout: Duration) -> Result<StartLock, Error> {
        let path = self.path.join(LOCK);
        let file = private_options()
            .read(true)
            .write(true)
            .create(true)
            .truncate(false)
            .open(&path)
            .map_err(|error| {
                Error::io(format!("opening the lock file {}", path.display()), error)
            })?;
        let deadline = Instant::now() + timeout;
        let mut pause = Duration::from_millis(1);
        loop {
            match fs4::FileExt::try_lock(&file) {
                Ok(()) => return Ok(StartLock { file }),
                Err(fs4::TryLockError::WouldBlock) => {}
                Err(fs4::TryLockError::Error(error)) => {
                    return Err(Error::io(format!("locking {}", path.display()), error));
                }
            }
            let now = Instant::now();
            if now >= deadline {
                return Err(Error::StartTimeout {
                    name: self.name(),
                    waited: timeout,
                    what: format!(
                        "the start lock {} (another process is starting the daemon)",
                        path.display()
                    ),
                });
            }
            std::thread::sleep(pause.min(deadline - now));
            pause = (pause * 2).min(Duration::from_millis(20));
        }
    }

    pub(crate) fn name(&self) -> String {
        self.path
            .file_name()
            .map(|name| name.to_string_lossy().into_owned())
            .unwrap_or_default()
    }
}

/// The held start lock: an `flock` on the lock file, which belongs to the open file,
/// not to a descriptor. Dropping this closes our descriptor, which releases the lock
/// unless a daemon being spawned shares the file ([`share`](Self::share)): then the
/// lock lasts until that daemon has published itself. Never `unlock` explicitly, which
/// would release it for the daemon too. A crashed holder's lock dies with it.
#[derive(Debug)]
pub(crate) struct StartLock {
    file: File,
}

impl StartLock {
    /// Another descriptor of the locked file, to hand to a daemon being spawned.
    #[cfg(unix)]
    pub(crate) fn share(&self) -> io::Result<std::os::fd::OwnedFd> {
        self.file.try_clone().map(std::os::fd::OwnedFd::from)
    }
}

/// Open options that create files readable by the owner only, from the first byte.
fn private_options() -> OpenOptions {
    let mut options = OpenOptions::new();
    #[cfg(unix)]
    {
        use std::os::unix::fs::OpenOptionsExt;
        options.mode(0o600);
    }
    options
}

/// Opens (appending, creating 0600) the daemon's log file.
pub(crate) fn open_log(path: &Path) -> io::Result<File> {
    private_options().append(true).create(true).open(path)
}

/// Writes `bytes` to `path` through a 0600 temporary file, fsynced, then renamed, so a
/// reader sees the old content or the new, never a torn file.
fn write_private_atomically(path: &Path, bytes: &[u8]) -> Result<(), Error> {
    let suffix = u64::from_le_bytes(crate::wire::random_bytes());
    let tmp = path.with_extension(format!("tmp.{}.{suffix:016x}", std::process::id()));
    let result = (|| {
        let mut file = private_options().write(true).create_new(true).open(&tmp)?;
        file.write_all(bytes)?;
        file.sync_all()?;
        fs::rename(&tmp, path)
    })();
    result.map_err(|error| {
        let _ = fs::remove_file(&tmp);
        Error::io(format!("writing {}", path.display()), error)
    })
}

fn create_private_dir(path: &Path) -> Result<(), Error> {
    let mut builder = fs::DirBuilder::new();
    builder.recursive(true);
    #[cfg(unix)]
    {
        use std::os::unix::fs::DirBuilderExt;
        builder.mode(0o700);
    }
    builder.create(path).map_err(|error| Error::RuntimeDir {
        path: path.to_path_buf(),
        reason: format!("cannot create it ({error}); set {DIR_ENV} to a directory you own"),
    })
}

/// Refuses a directory another user could read or plant files in.
#[cfg(unix)]
fn check_private_dir(path: &Path) -> Result<(), Error> {
    use std::os::unix::fs::MetadataExt;
    let refuse = |reason: String| Error::RuntimeDir {
        path: path.to_path_buf(),
        reason,
    };
    let metadata = fs::symlink_metadata(path)
        .map_err(|error| refuse(format!("cannot inspect it: {error}")))?;
    if metadata.file_type().is_symlink() {
        return Err(refuse(format!(
            "it is a symbolic link; remove it (`rm {}`) and let loopback-singleton create a real directory",
            path.display()
        )));
    }
    if !metadata.is_dir() {
        return Err(refuse("it is not a directory; remove it".into()));
    }
    // SAFETY: geteuid has no preconditions and cannot fail.
    let uid = unsafe { libc::geteuid() };
    if metadata.uid() != uid {
        return Err(refuse(format!(
            "it is owned by uid {}, not by you (uid {uid}); remove it or choose another {DIR_ENV}",
            metadata.uid()
        )));
    }
    if metadata.mode() & 0o077 != 0 {
        return Err(refuse(format!(
            "its permissions {:o} let other users in; run `chmod 700 {}`",
            metadata.mode() & 0o777,
            path.display()
        )));
    }
    Ok(())
}

#[cfg(not(unix))]
fn check_private_dir(_path: &Path) -> Result<(), Error> {
    // The per-user %LOCALAPPDATA% is private to its user by default ACLs.
    Ok(())
}

/// The state letter (field 3: `R`, `S`, `Z`...) and start time (field 22, clock ticks
/// since boot) of a process, from `/proc/<pid>/stat`; `None` if there is no such process.
#[cfg(target_os = "linux")]
fn proc_stat(pid: u32) -> Option<(char, u64)> {
    let stat = fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // The command name (field 2) may contain spaces and parentheses: skip past its last
    // ')'. The state is then the first field after it, the start time the 20th.
    let mut fields = stat[stat.rfind(')')? + 1..].split_whitespace();
    let state = fields.next()?.chars().next()?;
    Some((state, fields.nth(18)?.parse().ok()?))
}

/// The start time of a live process (Linux: field 22 of `/proc/<pid>/stat`), or `None`
/// if no such process exists.
pub(crate) fn process_start_time(pid: u32) -> Option<u64> {
    #[cfg(target_os = "linux")]
    {
        proc_stat(pid).map(|(_, start_time)| start_time)
    }
    #[cfg(all(unix, not(target_os = "linux")))]
    {
        // SAFETY: kill with signal 0 only checks for existence and permission.
        let alive = unsafe { libc::kill(pid as libc::pid_t, 0) } == 0;
        alive.then_some(0)
    }
    #[cfg(not(unix))]
    {
        let _ = pid;
        Some(0)
    }
}

/// Whether a process has exited: gone, or a zombie waiting for its parent to reap it.
pub(crate) fn process_exited(pid: u32) -> bool {
    #[cfg(target_os = "linux")]
    {
        proc_stat(pid).is_none_or(|(state, _)| state == 'Z')
    }
    #[cfg(not(target_os = "linux"))]
    {
        process_start_time(pid).is_none()
    }
}

/// Whether the process that wrote `metadata` still runs (pid and start time match).
pub(crate) fn daemon_alive(metadata: &Metadata) -> bool {
    process_start_time(metadata.pid) == Some(metadata.start_time)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn scratch() -> PathBuf {
        let dir = std::env::temp_dir().join(format!(
            "ls-rtdir-{}-{:x}",
            std::process::id(),
            u64::from_le_bytes(crate::wire::random_bytes())
        ));
        fs::create_dir_all(&dir).unwrap();
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
    #[test]
    fn directory_and_files_are_private() {
        use std::os::unix::fs::PermissionsExt;
        let base = scratch();
        let dir = RuntimeDir::open(&base, "svc").unwrap();
        let mode = |p: &Path| fs::metadata(p).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode(dir.path()), 0o700);
        dir.write_secret(&[7; 32]).unwrap();
        assert_eq!(mode(&dir.secret_path()), 0o600);
        assert_eq!(dir.read_secret().unwrap(), [7; 32]);

        fs::set_permissions(dir.path(), fs::Permissions::from_mode(0o755)).unwrap();
        let error = RuntimeDir::open(&base, "svc").unwrap_err().to_string();
        assert!(error.contains("chmod 700"), "{error}");

        std::os::unix::fs::symlink(dir.path(), base.join("link")).unwrap();
        let error = RuntimeDir::open(&base, "link").unwrap_err().to_string();
        assert!(error.contains("symbolic link"), "{error}");
        fs::remove_dir_all(&base).unwrap();
    }

    #[test]
    fn corrupt_metadata_is_reported_not_trusted() {
        let base = scratch();
        let dir = RuntimeDir::open(&base, "svc").unwrap();
        assert_eq!(dir.read_metadata(), Ok(None));
        fs::write(dir.metadata_path(), b"{ not json").unwrap();
        assert!(dir.read_metadata().is_err());
        fs::remove_dir_all(&base).unwrap();
    }

    #[cfg(target_os = "linux")]
    #[test]
    fn own_process_is_alive_with_a_stable_start_time() {
        let pid = std::process::id();
        let start = process_start_time(pid).unwrap();
        assert_eq!(process_start_time(pid), Some(start));
        assert_eq!(process_start_time(u32::MAX), None);
    }
}
