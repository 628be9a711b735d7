//! `loopback-singleton`: see and stop the loopback-singleton daemons of this user.
//!
//! It finds daemons where the runtime does (`$LOOPBACK_SINGLETON_DIR`, else the per-user
//! default), authenticates like a client (same user, the secret read through the
//! runtime directory's trust checks) over an admin connection that may ping, ask for
//! stats and shut down but never call, and never starts a daemon.
//!
//! Exit codes: 0 done, 3 no such daemon running, 1 any other error (2: bad usage).

use std::io::{Read, Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::Duration;

use clap::{Parser, Subcommand};
use loopback_singleton::admin::{self, Daemon, Stopped};
use loopback_singleton::{Latency, Stats};
use serde::Serialize;

/// How long `list` and `status` wait for a daemon's answer before calling it unreachable.
const PING_TIMEOUT: Duration = Duration::from_secs(2);

/// Exit code: the daemon asked for does not run.
const NOT_RUNNING: u8 = 3;
/// Exit code: anything else went wrong.
const FAILED: u8 = 1;

#[derive(Parser)]
#[command(
    name = "loopback-singleton",
    version,
    about = "See and stop the loopback-singleton daemons of this user (never starts one)",
    after_help = "Daemons are looked for under $LOOPBACK_SINGLETON_DIR, else the per-user \
                  runtime directory.\nExit codes: 0 ok, 3 not running, 1 error, 2 bad usage."
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Every daemon of this user: name, pid, port, version, uptime, clients, calls, state.
    List {
        /// One JSON object per daemon, in an array (a stable shape; see the README).
        #[arg(long)]
        json: bool,
    },
    /// One daemon in detail.
    Status {
        /// The singleton name (as in `list`).
        name: String,
        /// A JSON object (a stable shape; see the README).
        #[arg(long)]
        json: bool,
    },
    /// Ask a daemon to shut down; after the timeout (or with --force) kill it and
    /// remove its runtime files.
    Stop {
        /// The singleton name (as in `list`).
        name: String,
        /// How long the graceful shutdown may take: `500ms`, `5s`, `2m` (bare: seconds).
        #[arg(long, default_value = "5s", value_parser = parse_duration)]
        timeout: Duration,
        /// Kill at once (SIGKILL), without asking.
        #[arg(long)]
        force: bool,
    },
    /// Per-method metrics of one daemon: calls, errors, panics, handler and queue
    /// latency (p50/p90/p99/max), bytes in and out.
    Stats {
        /// The singleton name (as in `list`).
        name: String,
        /// A JSON object (a stable shape; see the README).
        #[arg(long)]
        json: bool,
        /// Zero the daemon's metrics after reading them (the report covers up to then).
        #[arg(long)]
        zero: bool,
    },
    /// Print a daemon's log file.
    Logs {
        /// The singleton name (as in `list`).
        name: String,
        /// Keep printing what is appended, until interrupted (Ctrl-C).
        #[arg(short, long)]
        follow: bool,
    },
}

/// A failure: the message for stderr and the exit code.
struct Failure(String, u8);

impl From<loopback_singleton::Error> for Failure {
    fn from(error: loopback_singleton::Error) -> Self {
        Failure(error.to_string(), FAILED)
    }
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let outcome = admin::base_dir()
        .map_err(Failure::from)
        .and_then(|base| match cli.command {
            Command::List { json } => list(&base, json),
            Command::Status { name, json } => status(&base, &name, json),
            Command::Stop {
                name,
                timeout,
                force,
            } => stop(&base, &name, timeout, force),
            Command::Stats { name, json, zero } => stats(&base, &name, json, zero),
            Command::Logs { name, follow } => logs(&base, &name, follow),
        });
    match outcome {
        Ok(()) => ExitCode::SUCCESS,
        Err(Failure(message, code)) => {
            eprintln!("loopback-singleton: {message}");
            ExitCode::from(code)
        }
    }
}

fn parse_duration(text: &str) -> Result<Duration, String> {
    let text = text.trim();
    let split = text
        .find(|c: char| !c.is_ascii_digit() && c != '.')
        .unwrap_or(text.len());
    let (number, unit) = text.split_at(split);
    let number: f64 = number
        .parse()
        .map_err(|_| format!("`{text}` is not a duration such as 500ms, 5s or 2m"))?;
    let seconds = match unit.trim() {
        "ms" => number / 1000.0,
        "" | "s" => number,
        "m" => number * 60.0,
        other => return Err(format!("unknown unit `{other}`: use ms, s or m")),
    };
    Duration::try_from_secs_f64(seconds).map_err(|error| error.to_string())
}

/// One daemon as `list` and `status` show it. Field names and types are a stable
/// interface (see the README's "Operating it"); fields only ever get added.
#[derive(Serialize)]
struct Entry {
    name: String,
    /// `running`, `stale` (its process is gone) or `unreachable` (its process runs but
    /// did not answer).
    state: &'static str,
    pid: u32,
    port: u16,
    version: String,
    /// Known only when running.
    uptime_ms: Option<u64>,
    /// Other clients connected (this command's own connection not counted).
    clients: Option<u32>,
    calls_served: Option<u64>,
    /// Why the daemon is unreachable.
    error: Option<String>,
}

/// What `status` adds to an [`Entry`].
#[derive(Serialize)]
struct Detail {
    #[serde(flatten)]
    entry: Entry,
    service: String,
    /// Hex, as 64-bit values do not survive JSON numbers everywhere.
    instance: String,
    schema: String,
    protocol: u16,
    dir: PathBuf,
    log: PathBuf,
    /// The idle TTL the daemon runs with; null: it never retires for want of clients.
    idle_ttl_ms: Option<u64>,
}

/// Looks at one name: `None` if no daemon was ever published there (or the last one
/// retired cleanly).
fn inspect(base: &Path, name: &str) -> Result<Option<(Detail, Daemon)>, Failure> {
    let Some(daemon) = Daemon::open(base, name)? else {
        return Ok(None);
    };
    let Some(published) = daemon.published()? else {
        return Ok(None);
    };
    let mut entry = Entry {
        name: name.to_string(),
        state: "stale",
        pid: published.pid,
        port: published.port,
        version: published.crate_version.clone(),
        uptime_ms: None,
        clients: None,
        calls_served: None,
        error: None,
    };
    if published.alive {
        match daemon.ping(PING_TIMEOUT) {
            Ok(info) => {
                entry.state = "running";
                entry.uptime_ms = Some(millis(info.uptime));
                entry.clients = Some(info.clients.saturating_sub(1));
                entry.calls_served = Some(info.calls_served);
                entry.version = info.version;
            }
            Err(error) => {
                entry.state = "unreachable";
                entry.error = Some(error.to_string());
            }
        }
    }
    let detail = Detail {
        entry,
        service: published.service,
        instance: format!("{:016x}", published.instance),
        schema: format!("{:016x}", published.schema),
        protocol: published.protocol,
        dir: daemon.path().to_path_buf(),
        log: daemon.log_path(),
        idle_ttl_ms: published.idle_ttl.map(millis),
    };
    Ok(Some((detail, daemon)))
}

fn not_running(base: &Path, name: &str) -> Failure {
    Failure(
        format!(
            "no daemon named `{name}` is running under {} (it starts with its first client; \
             `loopback-singleton list` shows the names there)",
            base.display()
        ),
        NOT_RUNNING,
    )
}

fn print_json(value: &impl Serialize) -> Result<(), Failure> {
    let text = serde_json::to_string_pretty(value)
        .map_err(|error| Failure(format!("encoding JSON: {error}"), FAILED))?;
    println!("{text}");
    Ok(())
}

fn list(base: &Path, json: bool) -> Result<(), Failure> {
    let mut entries = Vec::new();
    for name in admin::names(base)? {
        match inspect(base, &name) {
            Ok(Some((detail, _))) => entries.push(detail.entry),
            Ok(None) => {}
            // A directory that cannot be trusted is reported, not fatal to the list.
            Err(Failure(message, _)) => eprintln!("loopback-singleton: {name}: {message}"),
        }
    }
    if json {
        return print_json(&entries);
    }
    if entries.is_empty() {
        println!("no daemons under {}", base.display());
        return Ok(());
    }
    let rows: Vec<[String; 8]> = entries
        .iter()
        .map(|entry| {
            let known = |value: Option<String>| value.unwrap_or_else(|| "-".into());
            [
                entry.name.clone(),
                entry.pid.to_string(),
                entry.port.to_string(),
                entry.version.clone(),
                known(entry.uptime_ms.map(human_duration)),
                known(entry.clients.map(|n| n.to_string())),
                known(entry.calls_served.map(|n| n.to_string())),
                entry.state.to_string(),
            ]
        })
        .collect();
    let header = [
        "NAME", "PID", "PORT", "VERSION", "UPTIME", "CLIENTS", "CALLS", "STATE",
    ];
    print_table(&header, &rows);
    Ok(())
}

/// Left-aligned columns two spaces apart, as wide as their widest cell.
fn print_table<const N: usize>(header: &[&str; N], rows: &[[String; N]]) {
    let mut widths = header.map(str::len);
    for row in rows {
        for (width, cell) in widths.iter_mut().zip(row) {
            *width = (*width).max(cell.len());
        }
    }
    let line = |cells: &[&str]| {
        let padded: Vec<String> = cells
            .iter()
            .zip(widths)
            .map(|(cell, width)| format!("{cell:<width$}"))
            .collect();
        println!("{}", padded.join("  ").trim_end());
    };
    line(header);
    for row in rows {
        line(&row.each_ref().map(String::as_str));
    }
}

/// Whole milliseconds, as the JSON shapes carry durations (saturating).
fn millis(duration: Duration) -> u64 {
    u64::try_from(duration.as_millis()).unwrap_or(u64::MAX)
}

fn human_duration(ms: u64) -> String {
    let seconds = ms / 1000;
    match seconds {
        0..60 => format!("{seconds}s"),
        60..3600 => format!("{}m{:02}s", seconds / 60, seconds % 60),
        3600..86400 => format!("{}h{:02}m", seconds / 3600, seconds % 3600 / 60),
        _ => format!("{}d{:02}h", seconds / 86400, seconds % 86400 / 3600),
    }
}

/// A TTL as set: `500ms`, `30s`, `5m00s`.
fn human_ttl(ms: u64) -> String {
    if ms % 1000 == 0 {
        human_duration(ms)
    } else {
        format!("{ms}ms")
    }
}

fn status(base: &Path, name: &str, json: bool) -> Result<(), Failure> {
    let Some((detail, _)) = inspect(base, name)? else {
        if json {
            // A script still gets an object to read.
            print_json(&serde_json::json!({ "name": name, "state": "not running" }))?;
        }
        return Err(not_running(base, name));
    };
    let stale = detail.entry.state == "stale";
    if json {
        print_json(&detail)?;
    } else {
        let entry = &detail.entry;
        let known = |value: Option<String>| value.unwrap_or_else(|| "-".into());
        println!("name:          {}", entry.name);
        println!("state:         {}", entry.state);
        println!("service:       {}", detail.service);
        println!("pid:           {}", entry.pid);
        println!("port:          {}", entry.port);
        println!("version:       {}", entry.version);
        println!(
            "uptime:        {}",
            known(entry.uptime_ms.map(human_duration))
        );
        println!(
            "clients:       {}",
            known(entry.clients.map(|n| n.to_string()))
        );
        println!(
            "calls served:  {}",
            known(entry.calls_served.map(|n| n.to_string()))
        );
        println!("instance:      {}", detail.instance);
        println!("schema:        {}", detail.schema);
        println!("protocol:      {}", detail.protocol);
        println!("directory:     {}", detail.dir.display());
        println!("log:           {}", detail.log.display());
        println!(
            "idle TTL:      {}",
            detail.idle_ttl_ms.map_or_else(
                || "none (never retires for want of clients)".to_string(),
                human_ttl
            )
        );
        if let Some(error) = &entry.error {
            println!("error:         {error}");
        }
    }
    if stale {
        return Err(Failure(
            format!(
                "the daemon `{name}` (pid {}) is gone but left its files; \
                 `loopback-singleton stop {name}` removes them",
                detail.entry.pid
            ),
            NOT_RUNNING,
        ));
    }
    Ok(())
}

fn stop(base: &Path, name: &str, timeout: Duration, force: bool) -> Result<(), Failure> {
    let Some(daemon) = Daemon::open(base, name)? else {
        return Err(not_running(base, name));
    };
    let pid = daemon.published()?.map(|published| published.pid);
    match daemon.stop(timeout, force)? {
        Stopped::NotRunning => Err(not_running(base, name)),
        Stopped::Gracefully => {
            println!("stopped `{name}` (pid {})", pid.unwrap_or_default());
            Ok(())
        }
        Stopped::Killed => {
            let why = if force {
                "--force".to_string()
            } else {
                format!("it did not shut down within {timeout:?}")
            };
            println!(
                "killed `{name}` (pid {}, {why}) and removed its runtime files",
                pid.unwrap_or_default()
            );
            Ok(())
        }
    }
}

/// `stats --json`: field names and types are a stable interface (see the README);
/// fields only ever get added.
#[derive(Serialize)]
struct StatsReport {
    name: String,
    /// The time the numbers cover: since the daemon started, or since the last `--zero`.
    since_ms: u64,
    /// Whether this report zeroed the daemon's metrics.
    zeroed: bool,
    methods: Vec<MethodReport>,
}

#[derive(Serialize)]
struct MethodReport {
    index: u32,
    /// Empty if the service does not name its methods.
    name: String,
    calls: u64,
    errors: u64,
    panics: u64,
    bytes_in: u64,
    bytes_out: u64,
    /// Time in the method, in nanoseconds.
    handler_ns: LatencyReport,
    /// Time from the request's arrival to the instance's availability, in nanoseconds.
    queue_ns: LatencyReport,
}

#[derive(Serialize)]
struct LatencyReport {
    count: u64,
    p50: u64,
    p90: u64,
    p99: u64,
    max: u64,
}

fn nanos(duration: Duration) -> u64 {
    u64::try_from(duration.as_nanos()).unwrap_or(u64::MAX)
}

impl From<&Latency> for LatencyReport {
    fn from(latency: &Latency) -> Self {
        LatencyReport {
            count: latency.count,
            p50: nanos(latency.p50),
            p90: nanos(latency.p90),
            p99: nanos(latency.p99),
            max: nanos(latency.max),
        }
    }
}

fn stats_report(name: &str, stats: &Stats, zeroed: bool) -> StatsReport {
    StatsReport {
        name: name.to_string(),
        since_ms: millis(stats.since),
        zeroed,
        methods: stats
            .methods
            .iter()
            .map(|method| MethodReport {
                index: method.index,
                name: method.name.clone(),
                calls: method.calls,
                errors: method.errors,
                panics: method.panics,
                bytes_in: method.bytes_in,
                bytes_out: method.bytes_out,
                handler_ns: (&method.handler).into(),
                queue_ns: (&method.queue).into(),
            })
            .collect(),
    }
}

/// `850ns`, `12.3us`, `4.56ms`, `1.20s`: three significant digits at most.
fn human_latency(duration: Duration) -> String {
    let ns = duration.as_nanos() as f64;
    let (value, unit) = if ns < 1e3 {
        return format!("{ns}ns");
    } else if ns < 1e6 {
        (ns / 1e3, "us")
    } else if ns < 1e9 {
        (ns / 1e6, "ms")
    } else {
        (ns / 1e9, "s")
    };
    let decimals = if value < 10.0 {
        2
    } else if value < 100.0 {
        1
    } else {
        0
    };
    format!("{value:.decimals$}{unit}")
}

fn human_bytes(bytes: u64) -> String {
    match bytes {
        0..1024 => format!("{bytes}B"),
        1024..1_048_576 => format!("{:.1}KiB", bytes as f64 / 1024.0),
        1_048_576..1_073_741_824 => format!("{:.1}MiB", bytes as f64 / 1_048_576.0),
        _ => format!("{:.1}GiB", bytes as f64 / 1_073_741_824.0),
    }
}

fn stats(base: &Path, name: &str, json: bool, zero: bool) -> Result<(), Failure> {
    let Some(daemon) = Daemon::open(base, name)? else {
        return Err(not_running(base, name));
    };
    let stats = match daemon.stats(PING_TIMEOUT, zero) {
        Ok(stats) => stats,
        Err(loopback_singleton::Error::NotRunning { .. }) => return Err(not_running(base, name)),
        Err(error) => return Err(error.into()),
    };
    if json {
        return print_json(&stats_report(name, &stats, zero));
    }
    let since = millis(stats.since);
    let what = if zero { ", now zeroed" } else { "" };
    println!("{name}: over the last {}{what}", human_duration(since));
    let latencies = |latency: &Latency| {
        [latency.p50, latency.p90, latency.p99, latency.max]
            .map(human_latency)
            .join("/")
    };
    let rows: Vec<[String; 8]> = stats
        .methods
        .iter()
        .map(|method| {
            let label = if method.name.is_empty() {
                format!("#{}", method.index)
            } else {
                method.name.clone()
            };
            let timed = |latency: &Latency| {
                if latency.count == 0 {
                    "-".to_string()
                } else {
                    latencies(latency)
                }
            };
            [
                label,
                method.calls.to_string(),
                method.errors.to_string(),
                method.panics.to_string(),
                timed(&method.handler),
                timed(&method.queue),
                human_bytes(method.bytes_in),
                human_bytes(method.bytes_out),
            ]
        })
        .collect();
    let header = [
        "METHOD",
        "CALLS",
        "ERRORS",
        "PANICS",
        "HANDLER p50/p90/p99/max",
        "QUEUE p50/p90/p99/max",
        "IN",
        "OUT",
    ];
    print_table(&header, &rows);
    Ok(())
}

fn logs(base: &Path, name: &str, follow: bool) -> Result<(), Failure> {
    let Some(daemon) = Daemon::open(base, name)? else {
        return Err(not_running(base, name));
    };
    let path = daemon.log_path();
    // Through the checked directory: a link planted there is not followed, a pipe not
    // waited on.
    let open = |old| daemon.open_log(old).map_err(Failure::from);
    let Some(mut file) = open(false)? else {
        return Err(Failure(
            format!("there is no log at {}", path.display()),
            NOT_RUNNING,
        ));
    };
    // The log before the last rotation first: it holds the start of the story.
    if let Some(mut old) = open(true)? {
        let mut buf = Vec::new();
        old.read_to_end(&mut buf)
            .map_err(|error| Failure(format!("reading {}.1: {error}", path.display()), FAILED))?;
        let mut stdout = std::io::stdout().lock();
        if stdout.write_all(&buf).is_err() {
            return Ok(());
        }
    }
    let mut stdout = std::io::stdout().lock();
    let mut buf = Vec::new();
    let mut position = 0u64;
    // The file that replaced `file` at `path`, once the end of `file` is read.
    let mut next: Option<std::fs::File> = None;
    loop {
        buf.clear();
        file.read_to_end(&mut buf)
            .map_err(|error| Failure(format!("reading {}: {error}", path.display()), FAILED))?;
        position += buf.len() as u64;
        if stdout
            .write_all(&buf)
            .and_then(|()| stdout.flush())
            .is_err()
        {
            return Ok(()); // stdout closed (a pipe to `head`): done
        }
        if !follow {
            return Ok(());
        }
        if let Some(new) = next.take() {
            file = new;
            position = 0;
            continue;
        }
        std::thread::sleep(Duration::from_millis(200));
        // Rotated (the daemon renamed it to `daemon.log.1`): what it wrote there since
        // the last read first, then the new file from its start. (A file rotated out
        // and over within one pause is missed.)
        if rotated(&file, &path, position) {
            if let Ok(Some(new)) = daemon.open_log(false) {
                next = Some(new);
                continue;
            }
        }
        // Truncated (when it cannot be rotated): start over.
        if file.metadata().is_ok_and(|meta| meta.len() < position) {
            position = file.seek(SeekFrom::Start(0)).unwrap_or(0);
        }
    }
}

/// Whether `path` now names another file than `file` (read up to `position`).
#[cfg(unix)]
fn rotated(file: &std::fs::File, path: &Path, _position: u64) -> bool {
    use std::os::unix::fs::MetadataExt;
    match (file.metadata(), std::fs::symlink_metadata(path)) {
        (Ok(open), Ok(named)) => (open.dev(), open.ino()) != (named.dev(), named.ino()),
        _ => false,
    }
}

/// Whether `path` now names another file than `file` (read up to `position`): without
/// file identities, a file at `path` shorter than what was read is a new one.
#[cfg(not(unix))]
fn rotated(_file: &std::fs::File, path: &Path, position: u64) -> bool {
    std::fs::symlink_metadata(path).is_ok_and(|named| named.len() < position)
}
