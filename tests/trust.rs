//! What a client may trust, and when: retirement that drops the instance before a
//! successor can be built, a constructor slower than the idle TTL, a runtime
//! filesystem that is full, a port taken over after a call timed out, a method that
//! calls its own service, and runtime directories that another user could tamper with.
//!
//! Real daemons in real processes over real sockets. Each test has its own runtime
//! directory and name; a [`Reaper`] kills every process serving that name when the
//! test ends, including daemons still in their constructor (which have published
//! nothing the `TestEnv` cleanup could find).
//!
//! Unix only: other users are played with chown, processes are found through `/proc`
//! and signalled, and a full filesystem comes from `RLIMIT_FSIZE`.
#![cfg(unix)]

mod common;

use std::collections::BTreeMap;
use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use common::raw::{self, Rng};
use common::{OTHER_UID, TestEnv, alive, chmod, is_root, json_field, kill, wait_gone};
use loopback_singleton::{Builder, Error};
use loopback_singleton_suite::{
    Counter, CounterClient, Journal, JournalClient, SelfCaller, SelfCallerClient, SlowStart,
    SlowStartClient,
};

// ---------------------------------------------------------------------------------------
// Shared helpers
// ---------------------------------------------------------------------------------------

/// The live processes serving the singleton `name`: a spawned daemon's argv[0] ends in
/// `[loopback-singleton daemon <name>]` from its launch on, before it publishes
/// anything. Zombies have no command line and are not listed.
fn daemons_named(name: &str) -> Vec<u32> {
    let marker = format!("[loopback-singleton daemon {name}]");
    let Ok(entries) = std::fs::read_dir("/proc") else {
        return Vec::new();
    };
    entries
        .flatten()
        .filter_map(|entry| entry.file_name().to_str()?.parse::<u32>().ok())
        .filter(|&pid| pid != std::process::id())
        .filter(|pid| {
            std::fs::read(format!("/proc/{pid}/cmdline")).is_ok_and(|cmdline| {
                let argv0 = cmdline.split(|&b| b == 0).next().unwrap_or_default();
                String::from_utf8_lossy(argv0).ends_with(&marker)
            })
        })
        .collect()
}

/// Waits (bounded) until no process serves `name`; returns the ones still there.
fn wait_no_daemons(name: &str, limit: Duration) -> Vec<u32> {
    let deadline = Instant::now() + limit;
    loop {
        let left = daemons_named(name);
        if left.is_empty() || Instant::now() > deadline {
            return left;
        }
        std::thread::sleep(Duration::from_millis(10));
    }
}

/// Kills every process serving one of its names when dropped (a test that fails
/// half-way leaves nothing running, not even a daemon still in its constructor).
struct Reaper(Vec<String>);

impl Reaper {
    fn new(names: &[&str]) -> Self {
        Reaper(names.iter().map(|name| name.to_string()).collect())
    }
}

impl Drop for Reaper {
    fn drop(&mut self) {
        for name in &self.0 {
            for pid in daemons_named(name) {
                kill(pid);
            }
        }
    }
}

/// The port recorded in a runtime directory's metadata.
fn recorded_port(dir: &Path) -> u16 {
    let metadata = std::fs::read_to_string(dir.join("metadata.json")).unwrap();
    json_field(&metadata, "port").unwrap().parse().unwrap()
}

/// Sends SIGTERM (a graceful retirement) to `pid`.
fn sigterm(pid: u32) {
    // SAFETY: kill has no memory-safety preconditions.
    unsafe {
        libc::kill(pid as libc::pid_t, libc::SIGTERM);
    }
}

// ---------------------------------------------------------------------------------------
// D2: retirement drops the instance before a successor can be built
// ---------------------------------------------------------------------------------------

/// Outcomes of `inc` calls on a [`Journal`]: acknowledged ones must all be persisted;
/// those whose reply was lost may or may not have run.
#[derive(Default)]
struct Tally {
    acknowledged: AtomicU64,
    /// `ConnectionLost`, `Timeout`, `Protocol`: the call may have run.
    unknown: AtomicU64,
    /// Errors of calls that did not run, and of connects, by kind (for the report).
    refused: Mutex<BTreeMap<String, u64>>,
}

impl Tally {
    fn call(&self, result: Result<u64, Error>) {
        match result {
            Ok(_) => {
                self.acknowledged.fetch_add(1, Ordering::AcqRel);
            }
            Err(Error::ConnectionLost { .. } | Error::Timeout { .. } | Error::Protocol(_)) => {
                self.unknown.fetch_add(1, Ordering::AcqRel);
            }
            Err(error) => self.refuse("call", &error),
        }
    }

    fn refuse(&self, what: &str, error: &Error) {
        let debug = format!("{error:?}");
        let kind = debug.split([' ', '{']).next().unwrap_or_default();
        *common_lock(&self.refused)
            .entry(format!("{what}: {kind}"))
            .or_default() += 1;
    }

    fn acknowledged(&self) -> u64 {
        self.acknowledged.load(Ordering::Acquire)
    }

    fn unknown(&self) -> u64 {
        self.unknown.load(Ordering::Acquire)
    }

    fn summary(&self) -> String {
        format!(
            "acknowledged={} unknown={} refused={:?}",
            self.acknowledged(),
            self.unknown(),
            common_lock(&self.refused)
        )
    }
}

fn common_lock<T>(mutex: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    mutex
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner)
}

/// A journal shared by every daemon of one test's name.
struct JournalWorld {
    env: TestEnv,
    path: PathBuf,
    tally: Tally,
}

impl JournalWorld {
    fn new(test: &str) -> Self {
        let env = TestEnv::new(test);
        let path = env.base.join("journal-value");
        JournalWorld {
            env,
            path,
            tally: Tally::default(),
        }
    }

    fn builder(&self, idle_ttl: Duration) -> Builder<Journal> {
        Builder::new()
            .runtime_dir(&self.env.base)
            .name(&self.env.name)
            .idle_ttl(idle_ttl)
            .start_timeout(Duration::from_secs(20))
            .call_timeout(Duration::from_secs(10))
    }

    fn connect(&self, idle_ttl: Duration) -> Option<JournalClient> {
        match self
            .builder(idle_ttl)
            .connect(self.path.to_str().unwrap().to_string())
        {
            Ok(client) => Some(client),
            Err(error) => {
                self.tally.refuse("connect", &error);
                None
            }
        }
    }

    /// Stops the last daemon, waits until no daemon of the name is left (each has
    /// dropped its instance by then), and checks that every acknowledged increment was
    /// persisted and that no two instances ever lived at once.
    fn settle(&self, case: &str) {
        let last = self
            .builder(Duration::from_secs(5))
            .connect(self.path.to_str().unwrap().to_string())
            .unwrap_or_else(|error| panic!("{case}: the final connect failed: {error}"));
        let held = last.get().unwrap();
        let pid = last.pid().unwrap();
        let shutdown = last.shutdown();
        drop(last);
        let gone = wait_gone(pid, Duration::from_secs(10));
        let left = wait_no_daemons(&self.env.name, Duration::from_secs(15));
        assert!(
            left.is_empty(),
            "{case}: daemons {left:?} still run 15 s after the final shutdown"
        );
        let persisted = Journal::persisted(&self.path);
        let overlaps = Journal::overlaps(&self.path);
        let history = Journal::history(&self.path);
        let (acknowledged, unknown) = (self.tally.acknowledged(), self.tally.unknown());
        let report = format!(
            "{case}: persisted={persisted} held by the last daemon={held} {}\n\
             final shutdown: {shutdown:?}, last daemon gone: {gone}\n\
             instances alive at once:\n{overlaps}\nhistory:\n{history}",
            self.tally.summary()
        );
        assert!(
            persisted >= acknowledged,
            "acknowledged increments were lost: {report}"
        );
        assert!(
            persisted <= acknowledged + unknown,
            "more increments persisted than were sent: {report}"
        );
        assert!(overlaps.is_empty(), "two instances lived at once: {report}");
        assert!(shutdown.is_ok() && gone, "{report}");
        assert!(acknowledged > 0, "nothing was exercised: {report}");
    }
}

/// Stops a group of worker threads (bounded: each also stops at its own deadline).
struct Workers {
    stop: Arc<AtomicBool>,
    threads: Vec<std::thread::JoinHandle<()>>,
}

impl Workers {
    /// Tells the workers to stop and waits for them (what dropping does).
    fn stop(self) {}

    /// Waits for the workers to finish their rounds.
    fn join(mut self) {
        for thread in self.threads.drain(..) {
            let _ = thread.join();
        }
    }
}

impl Drop for Workers {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Release);
        for thread in self.threads.drain(..) {
            let _ = thread.join();
        }
    }
}

/// `threads` threads that connect, `inc` and drop the client, over and over (2 ms
/// apart), until stopped, `rounds` rounds each, or `limit`.
fn churn(world: &Arc<JournalWorld>, threads: usize, rounds: u32, limit: Duration) -> Workers {
    let stop = Arc::new(AtomicBool::new(false));
    let threads = (0..threads)
        .map(|_| {
            let (world, stop) = (Arc::clone(world), Arc::clone(&stop));
            std::thread::spawn(move || {
                let deadline = Instant::now() + limit;
                for _ in 0..rounds {
                    if stop.load(Ordering::Acquire) || Instant::now() > deadline {
                        break;
                    }
                    if let Some(client) = world.connect(Duration::from_millis(500)) {
                        world.tally.call(client.inc());
                    }
                    // Paced, so that the rounds last as long as the test needs them.
                    std::thread::sleep(Duration::from_millis(2));
                }
            })
        })
        .collect();
    Workers { stop, threads }
}

#[test]
fn idle_retirement_persists_every_acknowledged_increment() {
    let world = Arc::new(JournalWorld::new("jidle"));
    let _reaper = Reaper::new(&[&world.env.name]);
    // A short TTL (long enough for a starter to connect even when the TTL counts from
    // the daemon's start) and pauses of up to 100 ms between rounds: the daemon keeps
    // going idle and retiring while the next client arrives.
    let stop = Arc::new(AtomicBool::new(false));
    let threads: Vec<_> = (0..4u64)
        .map(|thread| {
            let (world, stop) = (Arc::clone(&world), Arc::clone(&stop));
            std::thread::spawn(move || {
                let deadline = Instant::now() + Duration::from_secs(20);
                for round in 0..15u64 {
                    if stop.load(Ordering::Acquire) || Instant::now() > deadline {
                        break;
                    }
                    if let Some(client) = world.connect(Duration::from_millis(30)) {
                        world.tally.call(client.inc());
                    }
                    let pause = (thread * 37 + round * 53) % 100;
                    std::thread::sleep(Duration::from_millis(pause));
                }
            })
        })
        .collect();
    Workers { stop, threads }.join();
    world.settle("idle TTL of 30 ms, 4 threads x 15 connect/inc/drop");
}

#[test]
fn shutdown_persists_every_acknowledged_increment_while_others_connect() {
    let world = Arc::new(JournalWorld::new("jshutdown"));
    let _reaper = Reaper::new(&[&world.env.name]);
    let workers = churn(&world, 3, 2000, Duration::from_secs(20));
    let mut shutdowns = Vec::new();
    for _ in 0..10 {
        if let Some(client) = world.connect(Duration::from_millis(500)) {
            world.tally.call(client.inc());
            std::thread::sleep(Duration::from_millis(20));
            shutdowns.push(format!(
                "{:?}",
                client.shutdown().map_err(|e| e.to_string())
            ));
        }
        std::thread::sleep(Duration::from_millis(30));
    }
    workers.stop();
    world.settle(&format!(
        "10 shutdowns while 3 threads connect/inc/drop (shutdowns: {shutdowns:?})"
    ));
}

#[test]
fn sigterm_with_a_call_in_flight_persists_every_acknowledged_increment() {
    let world = Arc::new(JournalWorld::new("jsigterm"));
    let _reaper = Reaper::new(&[&world.env.name]);
    for round in 0..8 {
        let Some(client) = world.connect(Duration::from_secs(2)) else {
            continue;
        };
        let pid = client.pid().unwrap();
        let served = client.ping().unwrap().calls_served;
        let slow = {
            let client = client.clone();
            std::thread::spawn(move || client.slow_inc(300))
        };
        // The slow call runs once the daemon counts it.
        let deadline = Instant::now() + Duration::from_secs(10);
        while client.ping().ok().map(|info| info.calls_served) == Some(served) {
            assert!(
                Instant::now() < deadline,
                "round {round}: the slow call never started"
            );
            std::thread::sleep(Duration::from_millis(2));
        }
        // Newcomers race the retirement.
        let newcomers = churn(&world, 2, 500, Duration::from_secs(10));
        std::thread::sleep(Duration::from_millis(10));
        sigterm(pid);
        // SIGTERM lets the call in flight finish: it is acknowledged, not lost.
        let slow = slow.join().unwrap();
        assert!(slow.is_ok(), "round {round}: the call in flight: {slow:?}");
        world.tally.call(slow);
        assert!(
            wait_gone(pid, Duration::from_secs(10)),
            "round {round}: the daemon did not exit after SIGTERM"
        );
        std::thread::sleep(Duration::from_millis(100));
        newcomers.stop();
    }
    world.settle("8 rounds of SIGTERM during a 300 ms call, 2 threads racing");
}

// ---------------------------------------------------------------------------------------
// D3: the daemon serves the client that started it, however slow its constructor
// ---------------------------------------------------------------------------------------

/// Connect with the default idle TTL (2 s) to a daemon whose constructor takes longer
/// than that: the starter is served, twice, by the same daemon.
fn slow_constructor_is_served(millis: u64) {
    let env = TestEnv::new(&format!("slowinit{millis}"));
    let _reaper = Reaper::new(&[&env.name]);
    // No idle_ttl: the default one (TestEnv::builder would set 3 s).
    let builder = Builder::<SlowStart>::new()
        .runtime_dir(&env.base)
        .name(&env.name)
        .call_timeout(Duration::from_secs(10));
    let client: SlowStartClient = builder
        .connect(millis)
        .unwrap_or_else(|error| panic!("connect with a {millis} ms constructor: {error:?}"));
    let first = client.pid();
    let hello = client.hello();
    let second = client.pid();
    let report = format!("pid {first:?}, hello {hello:?}, pid again {second:?}");
    assert!(first.is_ok() && hello.is_ok() && second.is_ok(), "{report}");
    assert_eq!(first.unwrap(), second.unwrap(), "one daemon: {report}");
    client.shutdown().unwrap();
}

#[test]
fn a_constructor_of_2500_ms_beyond_the_default_idle_ttl_serves_its_starter() {
    slow_constructor_is_served(2500);
}

#[test]
fn a_constructor_of_5000_ms_beyond_the_default_idle_ttl_serves_its_starter() {
    slow_constructor_is_served(5000);
}

/// 30 rounds: connect (starting a daemon whose constructor takes 10 ms, with an idle
/// TTL of `ttl`), one call, leave; the daemon retires before the next round.
fn tiny_ttl_serves_the_starter(ttl: Duration) {
    let env = TestEnv::new(&format!("tinyttl{}", ttl.as_millis()));
    let _reaper = Reaper::new(&[&env.name]);
    let deadline = Instant::now() + Duration::from_secs(45);
    let mut failures = Vec::new();
    let mut rounds = 0;
    for round in 0..30 {
        if Instant::now() > deadline {
            failures.push(format!("out of time after {round} rounds"));
            break;
        }
        rounds += 1;
        let connected = Builder::<SlowStart>::new()
            .runtime_dir(&env.base)
            .name(&env.name)
            .idle_ttl(ttl)
            .call_timeout(Duration::from_secs(10))
            .connect(10);
        let client: SlowStartClient = match connected {
            Ok(client) => client,
            Err(error) => {
                failures.push(format!("round {round}: connect: {error}"));
                continue;
            }
        };
        match client.pid() {
            Ok(pid) => {
                drop(client);
                if !wait_gone(pid, Duration::from_secs(5)) {
                    failures.push(format!("round {round}: daemon {pid} did not retire"));
                }
            }
            Err(error) => failures.push(format!("round {round}: call: {error}")),
        }
    }
    assert!(
        failures.is_empty(),
        "idle TTL {ttl:?}: {} of {rounds} rounds failed:\n{}",
        failures.len(),
        failures.join("\n")
    );
}

#[test]
fn an_idle_ttl_of_0_ms_still_serves_the_client_that_started_the_daemon() {
    tiny_ttl_serves_the_starter(Duration::ZERO);
}

#[test]
fn an_idle_ttl_of_1_ms_still_serves_the_client_that_started_the_daemon() {
    tiny_ttl_serves_the_starter(Duration::from_millis(1));
}

/// Several processes' worth of clients connect at once to a name with an idle TTL of
/// zero: whoever starts the daemon, and whoever comes and goes before the starter dials
/// it, every `connect` and call succeeds.
#[test]
fn with_an_idle_ttl_of_0_ms_clients_connecting_at_once_are_all_served() {
    let env = Arc::new(TestEnv::new("ttl0crowd"));
    let _reaper = Reaper::new(&[&env.name]);
    let mut failures = Vec::new();
    for round in 0..10 {
        let start = Arc::new(std::sync::Barrier::new(4));
        let threads: Vec<_> = (0..4)
            .map(|_| {
                let (env, start) = (Arc::clone(&env), Arc::clone(&start));
                std::thread::spawn(move || -> Result<u32, Error> {
                    start.wait();
                    let client: SlowStartClient = Builder::<SlowStart>::new()
                        .runtime_dir(&env.base)
                        .name(&env.name)
                        .idle_ttl(Duration::ZERO)
                        .call_timeout(Duration::from_secs(10))
                        .connect(0)?;
                    client.pid()
                })
            })
            .collect();
        for thread in threads {
            if let Err(error) = thread.join().unwrap() {
                failures.push(format!("round {round}: {error}"));
            }
        }
    }
    assert!(failures.is_empty(), "{}", failures.join("\n"));
}

// ---------------------------------------------------------------------------------------
// D4: a full runtime filesystem
// ---------------------------------------------------------------------------------------

/// A 512 KiB tmpfs mounted for the test; unmounted on drop, after every process serving
/// `name` was killed (a daemon keeps its log open there).
struct Tmpfs {
    dir: PathBuf,
    name: String,
}

impl Tmpfs {
    /// Mounts it, or says why not.
    fn mount(dir: &Path, name: &str) -> Result<Self, String> {
        std::fs::create_dir_all(dir).map_err(|error| error.to_string())?;
        let output = Command::new("mount")
            .args(["-t", "tmpfs", "-o", "size=512k,mode=0700", "tmpfs"])
            .arg(dir)
            .output()
            .map_err(|error| format!("running mount: {error}"))?;
        if !output.status.success() {
            return Err(format!(
                "mount -t tmpfs failed: {}",
                String::from_utf8_lossy(&output.stderr).trim()
            ));
        }
        Ok(Tmpfs {
            dir: dir.to_path_buf(),
            name: name.to_string(),
        })
    }
}

impl Drop for Tmpfs {
    fn drop(&mut self) {
        for pid in daemons_named(&self.name) {
            kill(pid);
        }
        let unmounted = Command::new("umount")
            .arg(&self.dir)
            .status()
            .is_ok_and(|status| status.success());
        if !unmounted {
            let _ = Command::new("umount").arg("-l").arg(&self.dir).status();
        }
    }
}

/// Writes to `file` in `chunk`-byte pieces until the filesystem is full (bounded);
/// returns whether it filled up.
fn fill(file: &mut std::fs::File, chunk: usize) -> bool {
    let buf = vec![0x2e; chunk];
    for _ in 0..(2 << 20) / chunk {
        match file.write(&buf) {
            Ok(_) => {}
            Err(error) if error.raw_os_error() == Some(libc::ENOSPC) => return true,
            Err(error) => panic!("filling the tmpfs: {error}"),
        }
    }
    false
}

#[test]
fn a_full_runtime_filesystem_never_stops_retirement_drop_or_cleanup() {
    if !is_root() {
        eprintln!(
            "skipping a_full_runtime_filesystem_never_stops_retirement_drop_or_cleanup: \
             mounting a tmpfs needs root"
        );
        return;
    }
    let env = TestEnv::new("enospc");
    let mount_point = env.base.join("rt");
    let tmpfs = match Tmpfs::mount(&mount_point, &env.name) {
        Ok(tmpfs) => tmpfs,
        Err(reason) => {
            eprintln!(
                "skipping a_full_runtime_filesystem_never_stops_retirement_drop_or_cleanup: {reason}"
            );
            return;
        }
    };
    let _reaper = Reaper::new(&[&env.name]);
    // The journal lives outside the tmpfs: only the runtime directory is full.
    let journal = env.base.join("journal-value");
    let client: JournalClient = Builder::<Journal>::new()
        .runtime_dir(&tmpfs.dir)
        .name(&env.name)
        .idle_ttl(Duration::from_secs(30))
        .call_timeout(Duration::from_secs(10))
        .start_timeout(Duration::from_secs(10))
        .connect(journal.to_str().unwrap().to_string())
        .unwrap();
    for expected in 1..=3 {
        assert_eq!(client.inc().unwrap(), expected);
    }
    let pid = client.pid().unwrap();
    let dir = tmpfs.dir.join(&env.name);

    // Fill it: a filler file first, then the log file's last page itself.
    let mut filler = std::fs::File::create(tmpfs.dir.join("filler")).unwrap();
    assert!(fill(&mut filler, 64 << 10), "the filler never hit ENOSPC");
    let mut log = std::fs::OpenOptions::new()
        .append(true)
        .open(dir.join("daemon.log"))
        .unwrap();
    fill(&mut log, 4096);
    assert!(fill(&mut log, 1), "the log file never hit ENOSPC");

    let shutdown = client.shutdown();
    let gone = wait_gone(pid, Duration::from_secs(10));
    let persisted = Journal::persisted(&journal);
    let leftovers: Vec<&str> = ["metadata.json", "secret"]
        .into_iter()
        .filter(|file| dir.join(file).exists())
        .collect();
    let report = format!(
        "shutdown: {shutdown:?}; daemon {pid} gone: {gone}; persisted {persisted} of 3 \
         acknowledged; left behind: {leftovers:?}"
    );
    drop(client);
    assert!(shutdown.is_ok(), "{report}");
    assert!(gone, "{report}");
    assert_eq!(persisted, 3, "Drop did not run: {report}");
    assert!(leftovers.is_empty(), "{report}");
}

// ---------------------------------------------------------------------------------------
// D5: a peer that proved nothing cannot make an error fatal
// ---------------------------------------------------------------------------------------

/// A program that took over a dead daemon's port and answers every hello with a
/// well-formed challenge claiming protocol version 99 (with a proof of nothing).
/// Stops on drop.
struct Squatter {
    hellos: Arc<AtomicU32>,
    stop: Arc<AtomicBool>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl Squatter {
    fn bind(port: u16) -> std::io::Result<Self> {
        let listener = TcpListener::bind(("127.0.0.1", port))?;
        listener.set_nonblocking(true)?;
        let hellos = Arc::new(AtomicU32::new(0));
        let stop = Arc::new(AtomicBool::new(false));
        let thread = {
            let (hellos, stop) = (Arc::clone(&hellos), Arc::clone(&stop));
            std::thread::spawn(move || {
                let mut rng = Rng(u64::from(std::process::id()) << 16 | u64::from(port));
                let deadline = Instant::now() + Duration::from_secs(60);
                while !stop.load(Ordering::Acquire) && Instant::now() < deadline {
                    match listener.accept() {
                        Ok((stream, _)) => {
                            if answer_version_99(stream, &mut rng) {
                                hellos.fetch_add(1, Ordering::AcqRel);
                            }
                        }
                        Err(_) => std::thread::sleep(Duration::from_millis(5)),
                    }
                }
            })
        };
        Ok(Squatter {
            hellos,
            stop,
            thread: Some(thread),
        })
    }
}

/// Reads a hello, answers a challenge of version 99; whether a hello came.
fn answer_version_99(mut stream: TcpStream, rng: &mut Rng) -> bool {
    let _ = stream.set_nonblocking(false);
    let _ = stream.set_read_timeout(Some(Duration::from_secs(2)));
    let Ok(payload) = raw::receive(&mut stream) else {
        return false;
    };
    if postcard::from_bytes::<raw::Hello>(&payload).is_err() {
        return false;
    }
    let challenge = raw::Challenge {
        magic: raw::MAGIC,
        version: 99,
        nonce: rng.bytes(32).try_into().unwrap(),
        proof: rng.bytes(32).try_into().unwrap(),
    };
    let _ = raw::send(&mut stream, &challenge);
    // Let the client read it before the connection closes.
    let mut sink = [0u8; 64];
    let _ = stream.read(&mut sink);
    true
}

impl Drop for Squatter {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Release);
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

#[test]
fn a_squatter_on_the_port_of_a_timed_out_daemon_cannot_make_calls_fail_for_good() {
    let env = TestEnv::new("squatter");
    let _reaper = Reaper::new(&[&env.name]);
    let connect = || -> CounterClient {
        env.builder::<Counter>()
            .call_timeout(Duration::from_millis(300))
            .connect(0)
            .unwrap()
    };
    let mut bind_errors = Vec::new();
    let mut setup = None;
    for _ in 0..3 {
        let client = connect();
        let pid = client.pid().unwrap();
        let port = recorded_port(&env.dir());
        match client.slow_inc(3000) {
            Err(Error::Timeout { .. }) => {}
            other => panic!("expected a Timeout, got {other:?}"),
        }
        kill(pid);
        match Squatter::bind(port) {
            Ok(squatter) => {
                setup = Some((client, pid, squatter));
                break;
            }
            Err(error) => bind_errors.push(format!("port {port}: {error}")),
        }
    }
    let Some((client, old_pid, squatter)) = setup else {
        panic!("could not bind a dead daemon's port three times over: {bind_errors:?}");
    };

    let first = client.inc();
    let second = client.inc();
    let pid = client.pid();
    let report = format!(
        "after the squatter took port of pid {old_pid} ({} hellos answered): \
         inc {first:?}, inc {second:?}, pid {pid:?}",
        squatter.hellos.load(Ordering::Acquire)
    );
    drop(squatter);
    assert_eq!(first.as_ref().ok(), Some(&1), "a fresh daemon: {report}");
    assert_eq!(second.as_ref().ok(), Some(&2), "{report}");
    assert!(pid.as_ref().is_ok_and(|&pid| pid != old_pid), "{report}");
    client.shutdown().unwrap();
}

// ---------------------------------------------------------------------------------------
// D6: a method that calls its own service
// ---------------------------------------------------------------------------------------

fn self_caller(env: &TestEnv) -> SelfCallerClient {
    env.builder::<SelfCaller>()
        .call_timeout(Duration::from_secs(20))
        .connect(())
        .unwrap()
}

/// A method of `SelfCaller` that calls its own service (through `call`) gets
/// `Reentrant` at once, and the daemon keeps serving.
fn self_call_is_reentrant(
    test: &str,
    call: impl FnOnce(&SelfCallerClient, String, String) -> Result<String, Error>,
) {
    let env = TestEnv::new(test);
    let _reaper = Reaper::new(&[&env.name]);
    let client = self_caller(&env);
    let outcome = call(
        &client,
        env.base.to_str().unwrap().to_string(),
        env.name.clone(),
    )
    .unwrap();
    assert!(
        outcome.starts_with("Err(Reentrant"),
        "the inner call's outcome: {outcome}"
    );
    assert_eq!(client.hello().unwrap(), "hello", "the daemon keeps serving");
    client.shutdown().unwrap();
}

#[test]
fn a_method_calling_its_own_service_gets_reentrant_at_once() {
    self_call_is_reentrant("reentrant", |client, base, name| {
        client.call_self(base, name)
    });
}

#[test]
fn an_async_method_calling_its_own_service_gets_reentrant_at_once() {
    self_call_is_reentrant("reentrantasync", |client, base, name| {
        client.call_self_async(base, name)
    });
}

// ---------------------------------------------------------------------------------------
// D1: runtime directories another user could tamper with
// ---------------------------------------------------------------------------------------

/// `connect` of a Counter, expecting a refusal. A client that connected anyway stops
/// the daemon it reached if `stop` (one it started itself) before the test fails.
/// Returns the error's path and reason.
fn expect_runtime_dir_error(
    result: Result<CounterClient, Error>,
    case: &str,
    stop: bool,
) -> Result<(PathBuf, String), String> {
    match result {
        Err(Error::RuntimeDir { path, reason }) => Ok((path, reason)),
        Err(other) => Err(format!("{case}: expected Error::RuntimeDir, got {other:?}")),
        Ok(client) => {
            let pid = client.pid();
            if stop {
                let _ = client.shutdown();
            }
            Err(format!(
                "{case}: expected Error::RuntimeDir, but connect succeeded (daemon pid {pid:?})"
            ))
        }
    }
}

#[test]
fn a_base_directory_anyone_can_write_without_the_sticky_bit_is_refused() {
    let env = TestEnv::new("base777");
    let _reaper = Reaper::new(&[&env.name]);
    chmod(&env.base, 0o777);
    let refused = expect_runtime_dir_error(env.builder::<Counter>().connect(0), "base 0777", true);
    let (_, reason) = refused.unwrap_or_else(|failure| panic!("{failure}"));
    assert!(
        reason.contains("chmod") || reason.contains("sticky"),
        "the reason says how to fix it: {reason}"
    );

    // With the sticky bit (like /tmp) nobody can replace another's entries: accepted.
    chmod(&env.base, 0o1777);
    let counter: CounterClient = env.builder::<Counter>().connect(0).unwrap();
    assert_eq!(counter.inc().unwrap(), 1);
    counter.shutdown().unwrap();
}

#[test]
fn a_live_daemons_secret_or_metadata_readable_by_others_is_refused_to_newcomers() {
    let env = TestEnv::new("filemodes");
    let _reaper = Reaper::new(&[&env.name]);
    let first: CounterClient = env.builder::<Counter>().connect(0).unwrap();
    assert_eq!(first.inc().unwrap(), 1);
    let mut failures = Vec::new();
    for file in ["secret", "metadata.json"] {
        let path = env.dir().join(file);
        chmod(&path, 0o644);
        let result = env.builder::<Counter>().connect(0);
        chmod(&path, 0o600);
        // A client that connected anyway reached the live daemon: leave it running.
        match expect_runtime_dir_error(result, &format!("{file} 0644"), false) {
            Ok((path, reason)) => {
                if !format!("{} {reason}", path.display()).contains(file) {
                    failures.push(format!(
                        "{file} 0644: the error names neither path nor file: {} {reason}",
                        path.display()
                    ));
                }
            }
            Err(failure) => failures.push(failure),
        }
    }
    // The daemon was left alone; its client still works.
    assert_eq!(first.inc().unwrap(), 2);
    first.shutdown().unwrap();
    assert!(failures.is_empty(), "{}", failures.join("\n"));
}

#[test]
fn a_long_lived_client_revalidates_the_directory_and_never_reaches_an_impostor() {
    let env = TestEnv::new("revalidate");
    let attacker = TestEnv::new("attacker");
    let _reaper = Reaper::new(&[&env.name, &attacker.name]);
    chmod(&attacker.base, 0o700);

    let victim: CounterClient = env.builder::<Counter>().connect(0).unwrap();
    assert_eq!(victim.inc().unwrap(), 1);
    let victim_pid = victim.pid().unwrap();

    // The impostor: a real daemon of the same service, init and secret of its own.
    let impostor: CounterClient = attacker
        .builder::<Counter>()
        .idle_ttl(Duration::from_secs(30))
        .connect(0)
        .unwrap();
    for _ in 0..5 {
        impostor.inc().unwrap();
    }
    let served_before = impostor.ping().unwrap().calls_served;

    victim.shutdown().unwrap();
    assert!(!alive(victim_pid));
    std::fs::rename(env.dir(), env.base.join(format!("{}.moved", env.name))).unwrap();
    std::os::unix::fs::symlink(attacker.dir(), env.dir()).unwrap();

    let result = victim.inc();
    let served_after = impostor.ping().unwrap().calls_served;
    let report = format!(
        "the long-lived client's call through the symlink: {result:?}; \
         impostor calls served {served_before} -> {served_after}"
    );
    let _ = std::fs::remove_file(env.dir());
    impostor.shutdown().unwrap();
    assert_eq!(
        served_after, served_before,
        "the impostor was reached: {report}"
    );
    assert!(
        matches!(result, Err(Error::RuntimeDir { .. })),
        "expected Error::RuntimeDir: {report}"
    );
}

#[test]
fn a_base_directory_owned_by_another_user_is_refused() {
    if !is_root() {
        eprintln!(
            "skipping a_base_directory_owned_by_another_user_is_refused: \
             chown to another uid needs root"
        );
        return;
    }
    let env = TestEnv::new("baseowner");
    let _reaper = Reaper::new(&[&env.name]);
    let base = env.base.join("theirs");
    std::fs::create_dir(&base).unwrap();
    std::os::unix::fs::chown(&base, Some(OTHER_UID), Some(OTHER_UID)).unwrap();
    chmod(&base, 0o755);
    let result = Builder::<Counter>::new()
        .runtime_dir(&base)
        .name(&env.name)
        .idle_ttl(Duration::from_secs(3))
        .connect(0);
    let (_, reason) = expect_runtime_dir_error(result, "base owned by another uid", true)
        .unwrap_or_else(|failure| panic!("{failure}"));
    assert!(
        reason.contains("own") || reason.contains(&OTHER_UID.to_string()),
        "the reason names the owner: {reason}"
    );
}

/// A loopback listener that counts connections (and answers none); stops on drop.
struct Listener {
    port: u16,
    accepted: Arc<AtomicU32>,
    stop: Arc<AtomicBool>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl Listener {
    fn start() -> Self {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let port = listener.local_addr().unwrap().port();
        listener.set_nonblocking(true).unwrap();
        let accepted = Arc::new(AtomicU32::new(0));
        let stop = Arc::new(AtomicBool::new(false));
        let thread = {
            let (accepted, stop) = (Arc::clone(&accepted), Arc::clone(&stop));
            std::thread::spawn(move || {
                let deadline = Instant::now() + Duration::from_secs(60);
                while !stop.load(Ordering::Acquire) && Instant::now() < deadline {
                    match listener.accept() {
                        Ok(_) => {
                            accepted.fetch_add(1, Ordering::AcqRel);
                        }
                        Err(_) => std::thread::sleep(Duration::from_millis(5)),
                    }
                }
            })
        };
        Listener {
            port,
            accepted,
            stop,
            thread: Some(thread),
        }
    }
}

impl Drop for Listener {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Release);
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

/// Replaces the value of `"key": value` in pretty-printed metadata JSON.
fn set_field(json: &str, key: &str, value: &str) -> String {
    let pattern = format!("\"{key}\": ");
    let at = json.find(&pattern).unwrap() + pattern.len();
    let end = at + json[at..].find([',', '\n']).unwrap();
    format!("{}{value}{}", &json[..at], &json[end..])
}

#[test]
fn in_a_shared_sticky_base_entries_of_another_user_are_refused_before_any_connection() {
    if !is_root() {
        eprintln!(
            "skipping in_a_shared_sticky_base_entries_of_another_user_are_refused_before_any_connection: \
             acting as another uid needs root"
        );
        return;
    }
    use std::os::unix::process::CommandExt;
    let env = TestEnv::new("stickyshared");
    let donor = TestEnv::new("donor");
    let _reaper = Reaper::new(&[&env.name, &donor.name]);
    let mut failures = Vec::new();

    // A /tmp-like base: sticky, world-writable, owned by root. The other user made
    // `<name>` first (0777) and planted a metadata file naming a live daemon (a real
    // one's pid and start time) at a port where a listener counts connections. (The
    // owner check of `<name>` refuses this already; kept so that it stays refused.)
    let shared = env.base.join("shared");
    std::fs::create_dir(&shared).unwrap();
    chmod(&shared, 0o1777);
    // The other user must be able to reach the shared directory.
    chmod(&env.base, 0o755);
    let planted = shared.join(&env.name);
    let made = Command::new("mkdir")
        .arg("-m")
        .arg("0777")
        .arg(&planted)
        .uid(OTHER_UID)
        .gid(OTHER_UID)
        .status()
        .unwrap();
    assert!(made.success(), "mkdir as uid {OTHER_UID}");
    let live: CounterClient = donor.builder::<Counter>().connect(0).unwrap();
    let listener = Listener::start();
    let metadata = std::fs::read_to_string(donor.metadata_path()).unwrap();
    let forged = set_field(&metadata, "port", &listener.port.to_string());
    std::fs::write(planted.join("metadata.json"), forged).unwrap();
    std::fs::copy(donor.dir().join("secret"), planted.join("secret")).unwrap();
    for file in ["metadata.json", "secret"] {
        std::os::unix::fs::chown(planted.join(file), Some(OTHER_UID), Some(OTHER_UID)).unwrap();
    }
    let result = Builder::<Counter>::new()
        .runtime_dir(&shared)
        .name(&env.name)
        .idle_ttl(Duration::from_secs(3))
        .connect_timeout(Duration::from_secs(1))
        .start_timeout(Duration::from_secs(3))
        .connect(0);
    match expect_runtime_dir_error(result, "<name> made by another uid in a sticky base", true) {
        Ok((_, reason)) if !(reason.contains("own") || reason.contains(&OTHER_UID.to_string())) => {
            failures.push(format!("the reason does not name the owner: {reason}"));
        }
        Ok(_) => {}
        Err(failure) => failures.push(failure),
    }
    let accepted = listener.accepted.load(Ordering::Acquire);
    if accepted != 0 {
        failures.push(format!(
            "the client connected to the planted port ({accepted} connections)"
        ));
    }
    drop(listener);
    live.shutdown().unwrap();

    // A sticky base owned by another user: its owner may rename or delete anything in
    // it, `<name>` included, so nothing in it can be trusted. (Accepted today.)
    let theirs = env.base.join("theirs-sticky");
    std::fs::create_dir(&theirs).unwrap();
    std::os::unix::fs::chown(&theirs, Some(OTHER_UID), Some(OTHER_UID)).unwrap();
    chmod(&theirs, 0o1777);
    let result = Builder::<Counter>::new()
        .runtime_dir(&theirs)
        .name(&env.name)
        .idle_ttl(Duration::from_secs(3))
        .connect(0);
    if let Err(failure) =
        expect_runtime_dir_error(result, "a sticky base owned by another uid", true)
    {
        failures.push(failure);
    }
    assert!(failures.is_empty(), "{}", failures.join("\n"));
}
