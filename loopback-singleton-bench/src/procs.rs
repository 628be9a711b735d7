//! Helper processes (this binary re-executed with `LSB_ROLE`), CPU pinning and /proc
//! readings. Every process started here is killed and reaped at the end, or by the
//! watchdog if the benchmark overruns its time limit.

use std::io::{BufRead, BufReader, Write};
use std::path::{Path, PathBuf};
use std::process::{Child, ChildStdin, ChildStdout, Command, Stdio};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use crate::roles::ROLE;

/// Pids of every live helper and daemon, for the watchdog and the final cleanup.
static PIDS: Mutex<Vec<u32>> = Mutex::new(Vec::new());
static BASE: Mutex<Option<PathBuf>> = Mutex::new(None);

pub fn register_pid(pid: u32) {
    PIDS.lock().unwrap().push(pid);
}

fn unregister_pid(pid: u32) {
    PIDS.lock().unwrap().retain(|&p| p != pid);
}

pub fn set_runtime_base(base: &Path) {
    *BASE.lock().unwrap() = Some(base.to_path_buf());
}

fn runtime_base() -> PathBuf {
    BASE.lock().unwrap().clone().expect("runtime base set")
}

/// A helper process with line-based stdin/stdout.
pub struct Proc {
    child: Child,
    stdin: Option<ChildStdin>,
    stdout: BufReader<ChildStdout>,
}

impl Proc {
    pub fn spawn(role: &str, env: &[(&str, &str)]) -> Proc {
        let exe = std::env::current_exe().expect("current exe");
        let mut command = Command::new(exe);
        command
            .env(ROLE, role)
            .env("LOOPBACK_SINGLETON_DIR", runtime_base())
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit());
        for (key, value) in env {
            command.env(key, value);
        }
        let mut child = command.spawn().expect("spawning a helper process");
        register_pid(child.id());
        let stdin = child.stdin.take();
        let stdout = BufReader::new(child.stdout.take().expect("piped stdout"));
        Proc {
            child,
            stdin,
            stdout,
        }
    }

    /// A server role that prints `port N` once it listens.
    pub fn server(role: &str, env: &[(&str, &str)]) -> Proc {
        Proc::spawn(role, env)
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    pub fn read_line(&mut self) -> String {
        let mut line = String::new();
        self.stdout.read_line(&mut line).expect("reading a helper");
        line.trim_end().to_string()
    }

    /// The port a server role prints (`port N`) once it listens.
    pub fn port(&mut self) -> u16 {
        let line = self.read_line();
        line.strip_prefix("port ")
            .and_then(|port| port.parse().ok())
            .unwrap_or_else(|| panic!("a server said {line:?} instead of its port"))
    }

    fn send_line(&mut self, line: &str) {
        let stdin = self.stdin.as_mut().expect("stdin open");
        writeln!(stdin, "{line}").expect("writing to a helper");
        stdin.flush().expect("flushing a helper's stdin");
    }

    /// Waits for a helper that is finishing by itself (bounded: killed after 20 s).
    pub fn wait(mut self) {
        self.stdin = None;
        let deadline = Instant::now() + Duration::from_secs(20);
        while Instant::now() < deadline {
            if let Ok(Some(_)) = self.child.try_wait() {
                return; // Drop reaps nothing more
            }
            std::thread::sleep(Duration::from_millis(2));
        }
        // Drop kills it.
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        unregister_pid(self.child.id());
    }
}

/// Starts `n` worker processes of `role` (with numeric settings such as `LSB_PORT` in
/// their environment), starts them together once all are connected, and returns their
/// total calls per second.
pub fn workers(role: &str, n: usize, secs: f64, numbers: &[(&str, u16)], name: &str) -> f64 {
    let secs_text = secs.to_string();
    let numbers: Vec<(String, String)> = numbers
        .iter()
        .map(|(key, port)| (key.to_string(), port.to_string()))
        .collect();
    let mut env: Vec<(&str, &str)> = vec![
        ("LSB_SECS", secs_text.as_str()),
        ("LSB_NAME", name),
        ("LOOPBACK_SINGLETON_NO_SPAWN", "1"),
    ];
    env.extend(numbers.iter().map(|(k, v)| (k.as_str(), v.as_str())));
    let mut workers: Vec<Proc> = (0..n).map(|_| Proc::spawn(role, &env)).collect();
    for worker in &mut workers {
        let line = worker.read_line();
        assert_eq!(line, "ready", "a {role} said {line:?}");
    }
    let start = Instant::now();
    for worker in &mut workers {
        worker.send_line("go");
    }
    let mut calls = 0u64;
    for worker in &mut workers {
        let line = worker.read_line();
        calls += line
            .strip_prefix("count ")
            .and_then(|n| n.parse::<u64>().ok())
            .unwrap_or_else(|| panic!("a {role} said {line:?}"));
    }
    let elapsed = start.elapsed().as_secs_f64();
    for worker in workers {
        worker.wait();
    }
    calls as f64 / elapsed
}

/// Kills every helper still registered and every daemon recorded under `base`.
pub fn stop_all(base: &Path) {
    let pids: Vec<u32> = PIDS.lock().unwrap().drain(..).collect();
    for pid in pids {
        if alive(pid) {
            kill(pid);
        }
    }
    if let Ok(entries) = std::fs::read_dir(base) {
        for entry in entries.flatten() {
            let metadata = entry.path().join("metadata.json");
            if let Some(pid) = recorded_pid(&metadata) {
                kill(pid);
            }
        }
    }
}

/// After `limit`, kills everything and exits: the benchmark never hangs a machine.
pub fn watchdog(limit: Duration) {
    std::thread::spawn(move || {
        std::thread::sleep(limit);
        eprintln!("benchmark exceeded {limit:?}: stopping every helper");
        let base = BASE.lock().unwrap().clone();
        if let Some(base) = base {
            stop_all(&base);
            let _ = std::fs::remove_dir_all(&base);
        }
        std::process::exit(3);
    });
}

fn recorded_pid(metadata: &Path) -> Option<u32> {
    let text = std::fs::read_to_string(metadata).ok()?;
    let at = text.find("\"pid\":")? + "\"pid\":".len();
    text[at..]
        .trim_start()
        .split(|c: char| !c.is_ascii_digit())
        .next()?
        .parse()
        .ok()
}

fn kill(pid: u32) {
    // SAFETY: kill(2) has no memory-safety preconditions.
    unsafe {
        libc::kill(pid as libc::pid_t, libc::SIGKILL);
    }
    let deadline = Instant::now() + Duration::from_secs(5);
    while alive(pid) && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(5));
    }
}

fn alive(pid: u32) -> bool {
    match std::fs::read_to_string(format!("/proc/{pid}/stat")) {
        Ok(stat) => stat
            .rfind(')')
            .map(|at| !stat[at + 1..].trim_start().starts_with('Z'))
            .unwrap_or(false),
        Err(_) => false,
    }
}

fn cpu_set(cpu: Option<usize>) -> libc::cpu_set_t {
    // SAFETY: cpu_set_t is plain data; CPU_SET writes inside it.
    unsafe {
        let mut set: libc::cpu_set_t = std::mem::zeroed();
        match cpu {
            Some(cpu) => libc::CPU_SET(cpu, &mut set),
            None => {
                for cpu in 0..available_cpus() {
                    libc::CPU_SET(cpu, &mut set);
                }
            }
        }
        set
    }
}

/// CPUs online (not `available_parallelism`, which shrinks to the pinned set).
pub fn available_cpus() -> usize {
    // SAFETY: sysconf has no preconditions.
    let n = unsafe { libc::sysconf(libc::_SC_NPROCESSORS_ONLN) };
    usize::try_from(n).unwrap_or(1).max(1)
}

fn set_affinity(tid: libc::pid_t, cpu: Option<usize>) {
    let set = cpu_set(cpu);
    // SAFETY: a valid cpu_set_t of the size passed.
    unsafe {
        libc::sched_setaffinity(tid, std::mem::size_of::<libc::cpu_set_t>(), &set);
    }
}

/// Pins the calling thread to `cpu` (`None`: every CPU).
pub fn pin_thread(cpu: Option<usize>) {
    set_affinity(0, cpu);
}

/// Pins every thread of `pid` (what `taskset -a -p` does).
pub fn pin_process(pid: u32, cpu: Option<usize>) {
    if let Ok(tasks) = std::fs::read_dir(format!("/proc/{pid}/task")) {
        for task in tasks.flatten() {
            if let Some(tid) = task.file_name().to_str().and_then(|t| t.parse().ok()) {
                set_affinity(tid, cpu);
            }
        }
    }
}

/// Resident set size of `pid`, in KiB.
pub fn rss_kib(pid: u32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
    status
        .lines()
        .find_map(|line| line.strip_prefix("VmRSS:"))
        .and_then(|rest| rest.split_whitespace().next()?.parse().ok())
        .unwrap_or(0)
}

/// Context switches (voluntary and not) of every thread of `pid`: each wake-up of a
/// sleeping thread adds one.
pub fn context_switches(pid: u32) -> u64 {
    let Ok(tasks) = std::fs::read_dir(format!("/proc/{pid}/task")) else {
        return 0;
    };
    let mut total = 0;
    for task in tasks.flatten() {
        let status = std::fs::read_to_string(task.path().join("status")).unwrap_or_default();
        for line in status.lines() {
            if let Some(rest) = line
                .strip_prefix("voluntary_ctxt_switches:")
                .or_else(|| line.strip_prefix("nonvoluntary_ctxt_switches:"))
            {
                total += rest.trim().parse::<u64>().unwrap_or(0);
            }
        }
    }
    total
}

/// Lifts this process's open-file limit (1,000 clients need 1,000 sockets).
pub fn raise_fd_limit() {
    let mut limit = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: getrlimit/setrlimit with a valid struct.
    unsafe {
        if libc::getrlimit(libc::RLIMIT_NOFILE, &mut limit) == 0 && limit.rlim_cur < limit.rlim_max
        {
            limit.rlim_cur = limit.rlim_max;
            libc::setrlimit(libc::RLIMIT_NOFILE, &limit);
        }
    }
}
