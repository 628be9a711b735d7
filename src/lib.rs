//! Services shared by the integration tests (`tests/`) and their helper binary
//! (`src/bin/suite-client.rs`). Not published.
//!
//! Defining them in a library also checks that a service defined in one crate and used
//! from another still auto-starts: the daemon hook travels with the library.

use std::collections::HashMap;
use std::time::Duration;

use loopback_singleton::local_singleton;
use serde::{Deserialize, Serialize};

/// A counter with every kind of method the tests need.
pub struct Counter {
    value: u64,
}

/// The error of [`Counter::checked_sub`].
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, loopback_singleton::Schema)]
pub enum CounterError {
    /// Subtracting would go below zero.
    Underflow {
        /// The value at the time.
        value: u64,
    },
}

#[local_singleton(name = "suite-counter")]
impl Counter {
    /// Starts at `start`.
    #[init]
    pub fn new(start: u64) -> Self {
        Counter { value: start }
    }

    /// Adds one.
    pub fn inc(&mut self) -> u64 {
        self.value += 1;
        self.value
    }

    /// The current value.
    pub fn get(&self) -> u64 {
        self.value
    }

    /// Adds every element.
    pub fn add_all(&mut self, xs: &[u64]) -> u64 {
        self.value += xs.iter().sum::<u64>();
        self.value
    }

    /// A typed application error, apart from transport errors.
    pub fn checked_sub(&mut self, n: u64) -> Result<u64, CounterError> {
        match self.value.checked_sub(n) {
            Some(value) => {
                self.value = value;
                Ok(value)
            }
            None => Err(CounterError::Underflow { value: self.value }),
        }
    }

    /// Panics with `message`: the caller gets a remote error, the daemon lives on.
    pub fn explode(&self, message: &str) -> u64 {
        panic!("{message}")
    }

    /// Sleeps, then adds one (an in-flight call for shutdown tests).
    pub async fn slow_inc(&mut self, millis: u64) -> u64 {
        // The daemon runs methods inside a tokio runtime, so tokio's timers work here.
        tokio::time::sleep(Duration::from_millis(millis)).await;
        self.value += 1;
        self.value
    }

    /// Returns its argument (payload tests).
    pub fn echo(&self, bytes: Vec<u8>) -> Vec<u8> {
        bytes
    }

    /// A byte slice argument: sums its bytes.
    pub fn byte_sum(&self, data: &[u8]) -> u64 {
        data.iter().map(|&b| u64::from(b)).sum()
    }

    /// The daemon's process id.
    pub fn pid(&self) -> u32 {
        std::process::id()
    }
}

/// A service whose constructor can be told to fail: `"panic"` panics, `"error"`
/// returns an error, `"slow"` takes 1.5 s, anything else succeeds at once.
pub struct Fragile;

#[local_singleton(name = "suite-fragile")]
impl Fragile {
    /// Fails as `mode` says.
    #[init]
    pub fn new(mode: &str) -> Result<Self, String> {
        match mode {
            "panic" => panic!("the constructor refused to start"),
            "error" => Err("no configuration found".to_string()),
            "slow" => {
                std::thread::sleep(std::time::Duration::from_millis(1500));
                Ok(Fragile)
            }
            _ => Ok(Fragile),
        }
    }

    /// Answers.
    pub fn hello(&self) -> String {
        "hello".to_string()
    }

    /// Prints `line` to stdout and to stderr, as a careless service might.
    pub fn print(&self, line: &str) {
        println!("out: {line}");
        eprintln!("err: {line}");
    }
}

/// The number of entries of [`Limits::standard`].
pub const LIMITS: usize = 16;

/// A service built from a map: equal init arguments must be recognised as equal in
/// every process, although each process's `HashMap` iterates in its own order.
pub struct Limits {
    limits: HashMap<String, u64>,
}

impl Limits {
    /// The suite's map: `limit-00` to `limit-15`, each `100 + i`; with `bump`, entry
    /// `bump` is one higher.
    pub fn standard(bump: Option<usize>) -> HashMap<String, u64> {
        (0..LIMITS)
            .map(|i| {
                let value = 100 + i as u64 + u64::from(Some(i) == bump);
                (format!("limit-{i:02}"), value)
            })
            .collect()
    }

    /// The keys of `map` in its iteration order, as their numbers (`3-11-0-...`): shows
    /// that two processes really hold their maps in different orders.
    pub fn order(map: &HashMap<String, u64>) -> String {
        map.keys()
            .map(|key| key.trim_start_matches("limit-").trim_start_matches('0'))
            .map(|number| if number.is_empty() { "0" } else { number })
            .collect::<Vec<_>>()
            .join("-")
    }
}

#[local_singleton(name = "suite-limits")]
impl Limits {
    /// Starts with these limits.
    #[init]
    pub fn new(limits: HashMap<String, u64>) -> Self {
        Limits { limits }
    }

    /// The limit named `key`, if any.
    pub fn limit(&self, key: &str) -> Option<u64> {
        self.limits.get(key).copied()
    }

    /// The daemon's process id.
    pub fn pid(&self) -> u32 {
        std::process::id()
    }
}

/// A counter that persists itself: `#[init]` loads the value from a file, `Drop` writes
/// it back. Every daemon of one name shares the file, so a successor that is built
/// before its predecessor was dropped starts from a stale value (a lost update), which
/// is what the retirement-ordering tests (`tests/trust.rs`) look for.
///
/// Beside the value file it keeps `<path>.live`, naming the pid of the instance that
/// exists now: a constructor that finds it (another instance is not dropped yet)
/// appends a line to `<path>.overlaps`. Every construction and drop is appended to
/// `<path>.history`, for the failure reports.
pub struct Journal {
    path: std::path::PathBuf,
    value: u64,
}

impl Journal {
    /// How long `Drop` waits before writing: widens the window in which a successor
    /// could be built beside the instance being dropped.
    pub const DROP_DELAY: Duration = Duration::from_millis(50);

    /// The value persisted at `path` (0 if none).
    pub fn persisted(path: &std::path::Path) -> u64 {
        match std::fs::read_to_string(path) {
            Ok(text) => text.trim().parse().expect("a journal holds a number"),
            Err(error) if error.kind() == std::io::ErrorKind::NotFound => 0,
            Err(error) => panic!("reading {}: {error}", path.display()),
        }
    }

    /// What the constructors recorded about instances alive at once ("" if none).
    pub fn overlaps(path: &std::path::Path) -> String {
        std::fs::read_to_string(sibling(path, "overlaps")).unwrap_or_default()
    }

    /// Every construction and drop, in order ("" if none).
    pub fn history(path: &std::path::Path) -> String {
        std::fs::read_to_string(sibling(path, "history")).unwrap_or_default()
    }
}

/// `<path>.<extension>`, next to `path`.
fn sibling(path: &std::path::Path, extension: &str) -> std::path::PathBuf {
    let mut name = path.as_os_str().to_owned();
    name.push(".");
    name.push(extension);
    name.into()
}

/// Writes `text` to `path` through a temporary file and a rename.
fn write_atomically(path: &std::path::Path, text: &str) {
    let tmp = sibling(path, &format!("tmp.{}", std::process::id()));
    std::fs::write(&tmp, text).expect("writing the journal");
    std::fs::rename(&tmp, path).expect("renaming the journal");
}

/// Appends one line to `<path>.<extension>`.
fn append_line(path: &std::path::Path, extension: &str, line: &str) {
    use std::io::Write;
    let mut file = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(sibling(path, extension))
        .expect("opening a journal log");
    file.write_all(format!("{line}\n").as_bytes())
        .expect("writing a journal log");
}

#[local_singleton(name = "suite-journal")]
impl Journal {
    /// Loads the value persisted at `path` (0 if none).
    #[init]
    pub fn new(path: String) -> Self {
        let path = std::path::PathBuf::from(path);
        let me = std::process::id();
        // Looked at before loading: an instance not dropped yet when the value is read
        // is still named here.
        let previous = std::fs::read_to_string(sibling(&path, "live"));
        let value = Journal::persisted(&path);
        if let Ok(previous) = previous {
            append_line(
                &path,
                "overlaps",
                &format!(
                    "pid {me} was built (loading {value}) while pid {} was not dropped yet",
                    previous.trim()
                ),
            );
        }
        write_atomically(&sibling(&path, "live"), &me.to_string());
        append_line(&path, "history", &format!("pid {me} built, loaded {value}"));
        Journal { path, value }
    }

    /// Adds one.
    pub fn inc(&mut self) -> u64 {
        self.value += 1;
        self.value
    }

    /// The current value.
    pub fn get(&self) -> u64 {
        self.value
    }

    /// Sleeps, then adds one (a call in flight).
    pub async fn slow_inc(&mut self, millis: u64) -> u64 {
        tokio::time::sleep(Duration::from_millis(millis)).await;
        self.value += 1;
        self.value
    }

    /// The daemon's process id.
    pub fn pid(&self) -> u32 {
        std::process::id()
    }
}

impl Drop for Journal {
    fn drop(&mut self) {
        let me = std::process::id();
        std::thread::sleep(Journal::DROP_DELAY);
        write_atomically(&self.path, &self.value.to_string());
        append_line(
            &self.path,
            "history",
            &format!("pid {me} dropped, wrote {}", self.value),
        );
        let live = sibling(&self.path, "live");
        if std::fs::read_to_string(&live).is_ok_and(|pid| pid.trim() == me.to_string()) {
            let _ = std::fs::remove_file(live);
        }
    }
}

/// A service whose constructor takes `millis` milliseconds (longer than an idle TTL).
pub struct SlowStart;

#[local_singleton(name = "suite-slow-start")]
impl SlowStart {
    /// Sleeps `millis` milliseconds before the instance exists.
    #[init]
    pub fn new(millis: u64) -> Self {
        std::thread::sleep(Duration::from_millis(millis));
        SlowStart
    }

    /// The daemon's process id.
    pub fn pid(&self) -> u32 {
        std::process::id()
    }

    /// Answers.
    pub fn hello(&self) -> String {
        "hello".to_string()
    }
}

/// A service whose methods connect to their own singleton and call it: a call that
/// waits for the daemon running it.
#[derive(Default)]
pub struct SelfCaller;

#[local_singleton(name = "suite-self-caller")]
impl SelfCaller {
    /// Connects to the singleton `name` under `base` (this very daemon) with a 3 s call
    /// timeout and calls `hello` on it; returns the outcome as `{:?}`.
    pub fn call_self(&self, base: String, name: String) -> String {
        let outcome = SelfCallerClient::builder()
            .runtime_dir(base)
            .name(name)
            .call_timeout(Duration::from_secs(3))
            .connect(())
            .and_then(|client| client.hello());
        format!("{outcome:?}")
    }

    /// [`call_self`](Self::call_self) with the async client, from an `async fn`.
    pub async fn call_self_async(&self, base: String, name: String) -> String {
        let outcome = match SelfCallerClient::builder()
            .runtime_dir(base)
            .name(name)
            .call_timeout(Duration::from_secs(3))
            .connect_async(())
            .await
        {
            Ok(client) => client.hello().await,
            Err(error) => Err(error),
        };
        format!("{outcome:?}")
    }

    /// Answers.
    pub fn hello(&self) -> String {
        "hello".to_string()
    }
}

/// Defines the `Limiter` service of the schema-skew tests around the `Quota` and `Mode`
/// given, plus a `main` that runs one command against the singleton named by
/// `SUITE_NAME` (runtime dir from `LOOPBACK_SINGLETON_DIR`). Each `suite-shapes-*`
/// binary is one build of "the same" service, its types changed in one way:
///
/// ```text
/// suite-shapes-<build> set-quota N | set-mode | sets | shutdown
/// ```
/// prints `schema=HEX pid=P sets=S`; on failure `schema=HEX` then `error: ...` to stderr,
/// exit status 1.
#[macro_export]
macro_rules! shapes_service {
    ($($types:item)*) => {
        $($types)*

        /// Counts the quotas and modes it was given.
        #[derive(Default)]
        pub struct Limiter {
            quota: Option<Quota>,
            mode: Option<Mode>,
            sets: u64,
        }

        #[::loopback_singleton::local_singleton(name = "suite-shapes")]
        impl Limiter {
            /// Replaces the quota; returns how many settings were made so far.
            pub fn set_quota(&mut self, quota: Quota) -> u64 {
                self.quota = Some(quota);
                self.sets += 1;
                self.sets
            }

            /// Replaces the mode; returns how many settings were made so far.
            pub fn set_mode(&mut self, mode: Mode) -> u64 {
                self.mode = Some(mode);
                self.sets += 1;
                self.sets
            }

            /// How many settings were made so far.
            pub fn sets(&self) -> u64 {
                let _ = (&self.quota, &self.mode);
                self.sets
            }

            /// The daemon's process id.
            pub fn pid(&self) -> u32 {
                ::std::process::id()
            }
        }

        fn main() {
            let schema = <Limiter as ::loopback_singleton::Service>::SCHEMA;
            if let Err(error) = run() {
                eprintln!("schema={schema:016x}");
                eprintln!("error: {error}");
                ::std::process::exit(1);
            }
        }

        fn run() -> Result<(), ::loopback_singleton::Error> {
            let args: Vec<String> = ::std::env::args().skip(1).collect();
            let name = ::std::env::var("SUITE_NAME").expect("SUITE_NAME names the singleton");
            let limiter = LimiterClient::builder()
                .name(name)
                .idle_ttl(::std::time::Duration::from_secs(60))
                .connect(())?;
            let sets = match args.first().map(String::as_str) {
                Some("set-quota") => limiter.set_quota(Quota::new(args[1].parse().unwrap()))?,
                Some("set-mode") => limiter.set_mode(Mode::last())?,
                Some("sets") => limiter.sets()?,
                Some("shutdown") => return limiter.shutdown(),
                other => panic!("unknown command {other:?}"),
            };
            println!(
                "schema={:016x} pid={} sets={sets}",
                <Limiter as ::loopback_singleton::Service>::SCHEMA,
                limiter.pid()?
            );
            Ok(())
        }
    };
}
