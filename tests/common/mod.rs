//! What every integration test shares: an isolated runtime directory and name, the
//! helper client binary, and cleanup that stops every daemon the test started.

#![allow(dead_code)] // each test binary uses a different part of this module

pub mod process;
pub mod raw;

pub use process::*;

use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::Duration;

use loopback_singleton::Builder;
use loopback_singleton::Service;

/// One test's world: its own runtime base directory and singleton name. Dropping it
/// kills every daemon recorded under that directory and removes the directory.
pub struct TestEnv {
    pub base: PathBuf,
    pub name: String,
}

impl TestEnv {
    pub fn new(test: &str) -> Self {
        static SEQ: AtomicU32 = AtomicU32::new(0);
        let seq = SEQ.fetch_add(1, Ordering::Relaxed);
        let base =
            std::env::temp_dir().join(format!("ls-test-{}-{seq}-{test}", std::process::id()));
        private_dir(&base);
        TestEnv {
            base,
            name: format!("{test}-{}-{seq}", std::process::id()),
        }
    }

    /// A builder aimed at this test's directory and name, with a short idle TTL so
    /// that even a daemon the cleanup misses retires by itself.
    pub fn builder<S: Service>(&self) -> Builder<S> {
        Builder::new()
            .runtime_dir(&self.base)
            .name(&self.name)
            .idle_ttl(Duration::from_secs(3))
    }

    pub fn dir(&self) -> PathBuf {
        self.base.join(&self.name)
    }

    pub fn metadata_path(&self) -> PathBuf {
        self.dir().join("metadata.json")
    }

    /// The pid recorded in the metadata file, if any.
    pub fn recorded_pid(&self) -> Option<u32> {
        recorded_pid(&self.metadata_path())
    }

    /// A `suite-client` process aimed at this test's directory and name.
    pub fn client(&self, args: &[&str]) -> Command {
        let mut command = Command::new(env!("CARGO_BIN_EXE_suite-client"));
        command
            .args(args)
            .env("LOOPBACK_SINGLETON_DIR", &self.base)
            .env("SUITE_NAME", &self.name)
            .env_remove("LOOPBACK_SINGLETON_NO_SPAWN");
        command
    }

    /// Runs `suite-client` to completion (bounded), returning its output.
    pub fn run_client(&self, args: &[&str]) -> Output {
        output_within(self.client(args), Duration::from_secs(60))
    }
}

impl Drop for TestEnv {
    fn drop(&mut self) {
        if let Ok(entries) = std::fs::read_dir(&self.base) {
            for entry in entries.flatten() {
                if let Some(pid) = recorded_pid(&entry.path().join("metadata.json")) {
                    kill(pid);
                }
            }
        }
        let _ = std::fs::remove_dir_all(&self.base);
    }
}

/// Writes `bytes` to `path` as the runtime writes its files: created 0600, so that the
/// runtime takes it for a file of ours (corrupt, perhaps, but not planted).
pub fn write_private(path: &Path, bytes: &[u8]) {
    use std::io::Write;
    let _ = std::fs::remove_file(path);
    let mut options = std::fs::OpenOptions::new();
    options.write(true).create_new(true);
    #[cfg(unix)]
    std::os::unix::fs::OpenOptionsExt::mode(&mut options, 0o600);
    options
        .open(path)
        .and_then(|mut file| file.write_all(bytes))
        .unwrap();
    #[cfg(windows)]
    private_like_its_directory(path);
}

/// Gives the file at `path` its directory's DACL, as Windows does when the file is
/// created there (the runtime directory's ACE is inheritable). Under Wine, which keeps
/// a DACL as Unix permissions and does not pass ACEs on to new files, a file std
/// creates gets the umask's 0644, which the runtime rightly takes for readable by
/// others; on Windows itself this changes nothing.
#[cfg(windows)]
fn private_like_its_directory(path: &Path) {
    use std::os::windows::ffi::OsStrExt;
    use windows_sys::Win32::Foundation::LocalFree;
    use windows_sys::Win32::Security::Authorization::{
        GetNamedSecurityInfoW, SE_FILE_OBJECT, SetNamedSecurityInfoW,
    };
    use windows_sys::Win32::Security::{
        ACL, DACL_SECURITY_INFORMATION, PROTECTED_DACL_SECURITY_INFORMATION, PSECURITY_DESCRIPTOR,
    };
    let wide = |path: &Path| -> Vec<u16> { path.as_os_str().encode_wide().chain([0]).collect() };
    let (dir, file) = (wide(path.parent().unwrap()), wide(path));
    let mut dacl: *mut ACL = std::ptr::null_mut();
    let mut descriptor: PSECURITY_DESCRIPTOR = std::ptr::null_mut();
    // SAFETY: both paths are NUL-terminated; the DACL points into the descriptor, freed
    // after its last use.
    unsafe {
        let status = GetNamedSecurityInfoW(
            dir.as_ptr(),
            SE_FILE_OBJECT,
            DACL_SECURITY_INFORMATION,
            std::ptr::null_mut(),
            std::ptr::null_mut(),
            &mut dacl,
            std::ptr::null_mut(),
            &mut descriptor,
        );
        assert_eq!(status, 0, "reading the DACL of {}", path.display());
        let status = SetNamedSecurityInfoW(
            file.as_ptr(),
            SE_FILE_OBJECT,
            DACL_SECURITY_INFORMATION | PROTECTED_DACL_SECURITY_INFORMATION,
            std::ptr::null_mut(),
            std::ptr::null_mut(),
            dacl,
            std::ptr::null(),
        );
        LocalFree(descriptor);
        assert_eq!(status, 0, "setting the DACL of {}", path.display());
    }
}

/// `Command::output()` with a bound: a process that does not finish in time is killed
/// and the test fails instead of hanging CI.
pub fn output_within(mut command: Command, limit: Duration) -> Output {
    let child = command
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("spawning a client process");
    let pid = child.id();
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        let _ = tx.send(child.wait_with_output());
    });
    match rx.recv_timeout(limit) {
        Ok(output) => output.expect("waiting for a client process"),
        Err(_) => {
            kill(pid);
            panic!("client process {pid} did not finish within {limit:?}");
        }
    }
}

/// The value of the `key=value` word in `stdout`.
pub fn value_of<'a>(stdout: &'a str, key: &str) -> &'a str {
    stdout
        .split_whitespace()
        .find_map(|word| word.strip_prefix(key)?.strip_prefix('='))
        .unwrap_or_else(|| panic!("no {key}= in {stdout:?}"))
}

/// The `key=value` word of a client's stdout, as text; the client must have succeeded.
pub fn word(output: &Output, key: &str) -> String {
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert!(
        output.status.success(),
        "client failed: {}\nstdout: {stdout}\nstderr: {}",
        output.status,
        String::from_utf8_lossy(&output.stderr)
    );
    value_of(&stdout, key).to_string()
}

/// Parses `key=value` words of a client's stdout.
pub fn field(output: &Output, key: &str) -> u64 {
    word(output, key).parse().unwrap()
}

/// Whether the tests run as root (those that need another user skip otherwise). Unix
/// only, like `chmod`.
#[cfg(unix)]
pub fn is_root() -> bool {
    // SAFETY: geteuid has no preconditions and cannot fail.
    unsafe { libc::geteuid() == 0 }
}

/// A uid nobody uses, for tests that play another user (as root).
#[cfg(unix)]
pub const OTHER_UID: u32 = 54321;

/// This test binary again, running only the test `test`, as [`OTHER_UID`]: the part of
/// a test that plays another user (it tells which part it is by an environment variable
/// the caller sets).
#[cfg(unix)]
pub fn this_test_as_other_user(test: &str) -> Command {
    use std::os::unix::process::CommandExt;
    let mut child = Command::new(std::env::current_exe().unwrap());
    child
        .args(["--exact", test, "--nocapture", "--test-threads=1"])
        .uid(OTHER_UID)
        .gid(OTHER_UID);
    child
}

#[cfg(unix)]
pub fn chmod(path: &Path, mode: u32) {
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode))
        .unwrap_or_else(|error| panic!("chmod {mode:o} {}: {error}", path.display()));
}
