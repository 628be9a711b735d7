//! The benchmark of loopback-singleton (issue 4): small-call latency, throughput,
//! cold start, payload sweep and footprint, each against raw `std::net` loopback TCP
//! measured in the same run, and against tarpc over TCP; the blocking client and the
//! async client (`BenchAsyncClient`, beside tarpc's async client on the same kind of
//! tokio runtime).
//!
//! ```text
//! cargo run --release -p loopback-singleton-bench            # full run, a few minutes
//! cargo run --release -p loopback-singleton-bench -- --quick # smoke run, < 30 s
//! ```
//!
//! Prints a markdown table and writes `docs/bench-results.md` and `docs/bench.svg`
//! (add `--no-write` to only print). Helper processes are this binary re-executed with
//! `LSB_ROLE` set; every one is killed and reaped at the end, and the crate's daemons
//! live in a private runtime directory and are shut down.

mod procs;
mod report;
mod roles;
mod service;
mod shm;

use std::io::Write;
use std::path::Path;
use std::time::{Duration, Instant};

use procs::Proc;
use report::{Report, Stats};
use service::{BenchAsyncClient, BenchClient, INC};

/// Sizes of the measurement, full or `--quick`.
#[derive(Clone, Copy)]
pub(crate) struct Plan {
    quick: bool,
    warmup: usize,
    samples: usize,
    rounds: usize,
    throughput_secs: f64,
    payload_secs: f64,
    cold_runs: usize,
    connect_runs: usize,
    crowd: usize,
    crowd_rounds: usize,
    idle_secs: f64,
    pipeline_window: usize,
    /// Concurrent tasks on one async client (and on one tarpc client).
    async_tasks: u16,
}

impl Plan {
    fn new(quick: bool) -> Plan {
        if quick {
            Plan {
                quick,
                warmup: 500,
                samples: 4_000,
                rounds: 2,
                throughput_secs: 0.4,
                payload_secs: 0.15,
                cold_runs: 5,
                connect_runs: 100,
                crowd: 1_000,
                crowd_rounds: 3,
                idle_secs: 1.0,
                pipeline_window: 64,
                async_tasks: 64,
            }
        } else {
            Plan {
                quick,
                warmup: 3_000,
                samples: 40_000,
                rounds: 4,
                throughput_secs: 2.0,
                payload_secs: 1.0,
                cold_runs: 25,
                connect_runs: 500,
                crowd: 1_000,
                crowd_rounds: 20,
                idle_secs: 3.0,
                pipeline_window: 64,
                async_tasks: 64,
            }
        }
    }
}

fn main() {
    if roles::run_role() {
        return;
    }
    let args: Vec<String> = std::env::args().skip(1).collect();
    let quick = args.iter().any(|arg| arg == "--quick");
    let write = !args.iter().any(|arg| arg == "--no-write");
    if let Some(unknown) = args
        .iter()
        .find(|arg| !matches!(arg.as_str(), "--quick" | "--no-write"))
    {
        eprintln!(
            "unknown argument {unknown}; usage: loopback-singleton-bench [--quick] [--no-write]"
        );
        std::process::exit(2);
    }
    let plan = Plan::new(quick);
    let limit = if quick { 120 } else { 900 };
    procs::watchdog(Duration::from_secs(limit));
    procs::raise_fd_limit();

    let base = std::env::temp_dir().join(format!("lsb-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&base);
    std::fs::create_dir_all(&base).expect("creating the runtime dir");
    set_private(&base);
    procs::set_runtime_base(&base);

    let started = Instant::now();
    // A panic in a phase must not leave helpers or the daemon behind either.
    let report = std::panic::catch_unwind(|| run(&plan, &base));
    procs::stop_all(&base);
    let _ = std::fs::remove_dir_all(&base);
    let report = report.unwrap_or_else(|panic| std::panic::resume_unwind(panic));

    let table = report.markdown();
    println!("{table}");
    eprintln!("(benchmark took {:.1?})", started.elapsed());
    if write {
        let docs = Path::new(env!("CARGO_MANIFEST_DIR")).join("../docs");
        std::fs::create_dir_all(&docs).expect("creating docs/");
        let results = docs.join("bench-results.md");
        std::fs::write(&results, report.results_page(&table)).expect("writing results");
        std::fs::write(docs.join("bench.svg"), report.svg()).expect("writing the chart");
        eprintln!("wrote {} and bench.svg", results.display());
    }
}

fn set_private(path: &Path) {
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o700)).expect("chmod");
}

/// Every measurement, in an order that keeps the expensive ones apart.
fn run(plan: &Plan, base: &Path) -> Report {
    let mut report = Report::new(plan.quick);
    let name = "bench-main";
    eprintln!("starting servers...");
    let mut raw = Proc::server("raw-server", &[]);
    let mut tarpc = Proc::server("tarpc-server", &[]);
    let raw_socket = base.join("raw.sock");
    let mut raw_unix = Proc::server(
        "raw-unix-server",
        &[("LSB_SOCKET", raw_socket.to_str().expect("a UTF-8 temp dir"))],
    );
    let raw_port = raw.port();
    let tarpc_port = tarpc.port();
    raw_unix.port();
    let crate_client = BenchClient::builder()
        .runtime_dir(base)
        .name(name)
        .idle_ttl(Duration::from_secs(60))
        .connect(())
        .expect("starting the bench daemon");
    let daemon_pid = crate_client.ping().expect("ping").pid;
    procs::register_pid(daemon_pid);
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("tokio runtime");
    let tarpc_client = runtime.block_on(roles::tarpc_connect(tarpc_port));
    // The async client lives on the same current_thread runtime as tarpc's client: its
    // writer and reader tasks run on this (pinned) thread while `block_on` runs.
    let async_client = runtime
        .block_on(
            BenchAsyncClient::builder()
                .runtime_dir(base)
                .name(name)
                .connect_async(()),
        )
        .expect("connecting the async client");
    let mut raw_stream = roles::raw_connect(raw_port, roles::RAW_PING);
    let mut raw_unix_stream = roles::raw_unix_connect(&raw_socket, roles::RAW_PING);
    // The same daemon, reached over its Unix socket.
    let unix_client = BenchClient::builder()
        .runtime_dir(base)
        .name(name)
        .transport(loopback_singleton::Transport::Unix)
        .connect(())
        .expect("connecting over the Unix socket");

    // 1-3. Small-call latency, pinned same-core and cross-core, interleaved rounds: raw
    // TCP, the blocking client, tarpc, the async client (one `inc().await` at a time),
    // and by transport: raw Unix socket, the blocking client over the unix transport.
    for (label, client_cpu, server_cpu) in [("same core", 0, 0), ("cross core", 0, 1)] {
        eprintln!("latency, {label}...");
        procs::pin_thread(Some(client_cpu));
        for pid in [raw.pid(), tarpc.pid(), daemon_pid, raw_unix.pid()] {
            procs::pin_process(pid, Some(server_cpu));
        }
        let mut samples = [(); 6].map(|()| Vec::new());
        let per_round = plan.samples / plan.rounds;
        for round in 0..plan.rounds {
            let warmup = if round == 0 { plan.warmup } else { 100 };
            samples[0].extend(time_calls(warmup, per_round, || {
                roles::raw_ping(&mut raw_stream)
            }));
            samples[1].extend(time_calls(warmup, per_round, || {
                crate_client.inc().expect("inc");
            }));
            samples[2].extend(runtime.block_on(async {
                let mut out = Vec::with_capacity(per_round);
                for i in 0..warmup + per_round {
                    let start = Instant::now();
                    tarpc_client
                        .inc(tarpc::context::current())
                        .await
                        .expect("tarpc inc");
                    if i >= warmup {
                        out.push(start.elapsed().as_nanos() as u64);
                    }
                }
                out
            }));
            samples[3].extend(runtime.block_on(async {
                let mut out = Vec::with_capacity(per_round);
                for i in 0..warmup + per_round {
                    let start = Instant::now();
                    async_client.inc().await.expect("async inc");
                    if i >= warmup {
                        out.push(start.elapsed().as_nanos() as u64);
                    }
                }
                out
            }));
            samples[4].extend(time_calls(warmup, per_round, || {
                roles::raw_ping(&mut raw_unix_stream)
            }));
            samples[5].extend(time_calls(warmup, per_round, || {
                unix_client.inc().expect("inc over unix");
            }));
        }
        let [raw_s, crate_s, tarpc_s, async_s, raw_unix_s, unix_s] = samples.map(Stats::of);
        report.transports.push(report::TransportRow {
            label: label.to_string(),
            raw_tcp: raw_s,
            raw_unix: raw_unix_s,
            tcp: crate_s,
            unix: unix_s,
        });
        report
            .latency
            .push((label.to_string(), raw_s, crate_s, tarpc_s));
        report
            .async_latency
            .push((label.to_string(), raw_s, async_s, tarpc_s));
    }
    procs::pin_thread(None);
    for pid in [raw.pid(), tarpc.pid(), daemon_pid, raw_unix.pid()] {
        procs::pin_process(pid, None);
    }
    drop((unix_client, raw_unix_stream, raw_unix));
    // 1b. The shared-memory transport beside raw TCP.
    shm::run(
        plan,
        base,
        name,
        (raw_port, raw.pid()),
        daemon_pid,
        &mut report,
    );
    // Close the async connection before the idle footprint (no client connected): its
    // writer task shuts the socket and its reader sees the daemon close, but only while
    // the runtime runs.
    drop(async_client);
    runtime.block_on(async { tokio::time::sleep(Duration::from_millis(30)).await });

    // 5b. Warm connect: a new client (TCP connect + mutual handshake) to a running daemon.
    eprintln!("warm connect...");
    let mut connects = Vec::new();
    for _ in 0..plan.connect_runs {
        let start = Instant::now();
        let client = BenchClient::builder()
            .runtime_dir(base)
            .name(name)
            .connect(())
            .expect("warm connect");
        connects.push(start.elapsed().as_nanos() as u64);
        drop(client);
    }
    report.warm_connect = Some(Stats::of(connects));

    // 7a. Footprint while idle: no client connected, nothing to do.
    eprintln!("idle footprint...");
    drop(crate_client);
    std::thread::sleep(Duration::from_millis(300));
    let before = procs::context_switches(daemon_pid);
    report.idle_rss_kib = procs::rss_kib(daemon_pid);
    std::thread::sleep(Duration::from_secs_f64(plan.idle_secs));
    let after = procs::context_switches(daemon_pid);
    report.idle_wakeups = Some((after.saturating_sub(before), plan.idle_secs));
    let crate_client = BenchClient::builder()
        .runtime_dir(base)
        .name(name)
        .connect(())
        .expect("reconnect");

    // 4. Throughput with 1, 4 and 16 client processes, then pipelined on one connection.
    for procs_n in [1usize, 4, 16] {
        eprintln!("throughput, {procs_n} processes...");
        let secs = plan.throughput_secs;
        let raw_rate = procs::workers("raw-worker", procs_n, secs, &[("LSB_PORT", raw_port)], name);
        let crate_rate = procs::workers("crate-worker", procs_n, secs, &[], name);
        let tarpc_rate = procs::workers(
            "tarpc-worker",
            procs_n,
            secs,
            &[("LSB_PORT", tarpc_port)],
            name,
        );
        report.throughput.push((
            format!(
                "{procs_n} client process{}",
                if procs_n == 1 { "" } else { "es" }
            ),
            raw_rate,
            crate_rate,
            tarpc_rate,
        ));
    }
    // Single-connection phases run pinned cross-core (client CPU 0, servers CPU 1):
    // unpinned, the scheduler's placement (same core ≈ 14 µs, cross core ≈ 65 µs per
    // round trip on the reference VM) decides the figure more than the code does.
    procs::pin_thread(Some(0));
    for pid in [raw.pid(), tarpc.pid(), daemon_pid] {
        procs::pin_process(pid, Some(1 % procs::available_cpus()));
    }
    {
        eprintln!("throughput, pipelined...");
        let window = plan.pipeline_window;
        let secs = plan.throughput_secs;
        let mut scratch = Vec::new();
        let raw_rate = rate_for(secs, window, || {
            roles::raw_ping_batch(&mut raw_stream, window, &mut scratch)
        });
        let crate_rate = rate_for(secs, window * 16, || {
            let values: Vec<u64> = crate_client
                .client()
                .pipeline(INC, (0..window * 16).map(|_| ()), window)
                .expect("pipeline");
            assert_eq!(values.len(), window * 16);
        });
        let tarpc_rate = runtime.block_on(async {
            use futures::StreamExt;
            let start = Instant::now();
            let mut calls = 0u64;
            while start.elapsed().as_secs_f64() < secs {
                let batch = futures::stream::iter(0..window * 16)
                    .map(|_| tarpc_client.inc(tarpc::context::current()))
                    .buffer_unordered(window)
                    .collect::<Vec<_>>()
                    .await;
                calls += batch.len() as u64;
            }
            calls as f64 / start.elapsed().as_secs_f64()
        });
        report.throughput.push((
            format!("pipelined, 1 connection, window {window} (pinned cross-core)"),
            raw_rate,
            crate_rate,
            tarpc_rate,
        ));
    }
    {
        // One client process pinned to CPU 0 (servers on CPU 1): many tasks on one async
        // client, and as many on one tarpc client, each on a current_thread runtime;
        // the baseline is raw TCP from one process, one call at a time, same pinning.
        let tasks = plan.async_tasks;
        eprintln!("throughput, {tasks} tasks on one async client...");
        let secs = plan.throughput_secs;
        let raw_rate = procs::workers(
            "raw-worker",
            1,
            secs,
            &[("LSB_PORT", raw_port), ("LSB_CPU", 0)],
            name,
        );
        let async_rate = procs::workers(
            "async-tasks-worker",
            1,
            secs,
            &[("LSB_TASKS", tasks), ("LSB_CPU", 0)],
            name,
        );
        let tarpc_rate = procs::workers(
            "tarpc-tasks-worker",
            1,
            secs,
            &[
                ("LSB_PORT", tarpc_port),
                ("LSB_TASKS", tasks),
                ("LSB_CPU", 0),
            ],
            name,
        );
        report.async_throughput.push((
            format!("1 client process, {tasks} tasks on one client"),
            raw_rate,
            async_rate,
            tarpc_rate,
        ));
    }

    // 6. Payload sweep: one connection, sequential calls, bytes per second; the
    // argument as `&[u8]` (serde's default: a sequence) and as a byte string.
    let mut raw_bulk = roles::raw_connect(raw_port, roles::RAW_BULK);
    for size in [8usize, 1 << 10, 64 << 10, 1 << 20, 4 << 20] {
        eprintln!("payload {}...", report::bytes(size));
        let payload = vec![7u8; size];
        let mut message = (size as u32).to_le_bytes().to_vec();
        message.extend_from_slice(&payload);
        let secs = plan.payload_secs;
        let raw_rate = rate_for(secs, 1, || roles::raw_bulk(&mut raw_bulk, &message));
        let crate_rate = rate_for(secs, 1, || {
            assert_eq!(crate_client.sink(&payload).expect("sink"), size as u64);
        });
        let as_bytes = serde_bytes::ByteBuf::from(payload.clone());
        let crate_bytes_rate = rate_for(secs, 1, || {
            assert_eq!(
                crate_client.sink_bytes(&as_bytes).expect("sink"),
                size as u64
            );
        });
        let tarpc_rate = |as_bytes: bool| {
            runtime.block_on(async {
                let start = Instant::now();
                let mut calls = 0u64;
                while start.elapsed().as_secs_f64() < secs || calls < 3 {
                    let context = tarpc::context::current();
                    let n = if as_bytes {
                        let data = serde_bytes::ByteBuf::from(payload.clone());
                        tarpc_client.sink_bytes(context, data).await
                    } else {
                        tarpc_client.sink(context, payload.clone()).await
                    };
                    assert_eq!(n.expect("tarpc sink"), size as u64);
                    calls += 1;
                }
                calls as f64 / start.elapsed().as_secs_f64()
            })
        };
        let (tarpc_seq, tarpc_bytes) = (tarpc_rate(false), tarpc_rate(true));
        let to_bytes = |rate: f64| rate * size as f64;
        report.payload.push((
            format!("{} `&[u8]`", report::bytes(size)),
            size,
            to_bytes(raw_rate),
            to_bytes(crate_rate),
            to_bytes(tarpc_seq),
        ));
        report.payload.push((
            format!("{} bytes", report::bytes(size)),
            size,
            to_bytes(raw_rate),
            to_bytes(crate_bytes_rate),
            to_bytes(tarpc_bytes),
        ));
    }

    procs::pin_thread(None);
    for pid in [raw.pid(), tarpc.pid(), daemon_pid] {
        procs::pin_process(pid, None);
    }

    // 7b. Footprint with 1,000 connected clients.
    eprintln!("{} connected clients...", plan.crowd);
    let rss_before = procs::rss_kib(daemon_pid);
    let crowd: Vec<BenchClient> = (0..plan.crowd)
        .map(|_| {
            BenchClient::builder()
                .runtime_dir(base)
                .name(name)
                .connect(())
                .expect("crowd connect")
        })
        .collect();
    let clients = crate_client.ping().expect("ping").clients;
    let mut samples = Vec::new();
    for _ in 0..plan.crowd_rounds {
        for client in &crowd {
            let start = Instant::now();
            client.inc().expect("crowd inc");
            samples.push(start.elapsed().as_nanos() as u64);
        }
    }
    report.crowd = Some(report::Crowd {
        clients,
        rss_before_kib: rss_before,
        rss_kib: procs::rss_kib(daemon_pid),
        latency: Stats::of(samples),
    });
    drop(crowd);

    // 5a. Cold start: a fresh process, no daemon, to the first call's result.
    eprintln!("cold start...");
    let mut parent_view = Vec::new();
    let mut child_view = Vec::new();
    for run in 0..plan.cold_runs {
        let cold_name = format!("bench-cold-{run}");
        let start = Instant::now();
        let mut child = Proc::spawn("cold", &[("LSB_NAME", cold_name.as_str())]);
        let line = child.read_line();
        parent_view.push(start.elapsed().as_nanos() as u64);
        let ns = line
            .strip_prefix("cold_ns ")
            .and_then(|n| n.trim().parse().ok())
            .unwrap_or_else(|| panic!("cold start child said {line:?}"));
        child_view.push(ns);
        child.wait();
    }
    report.cold_parent = Some(Stats::of(parent_view));
    report.cold_child = Some(Stats::of(child_view));

    eprintln!("shutting down...");
    crate_client
        .shutdown()
        .expect("shutting the bench daemon down");
    drop(raw_stream);
    drop(raw_bulk);
    drop(tarpc_client);
    drop(runtime);
    drop(raw);
    drop(tarpc);
    let _ = std::io::stderr().flush();
    report
}

/// Times `samples` calls after `warmup` untimed ones; nanoseconds per call.
pub(crate) fn time_calls(warmup: usize, samples: usize, mut call: impl FnMut()) -> Vec<u64> {
    for _ in 0..warmup {
        call();
    }
    let mut out = Vec::with_capacity(samples);
    for _ in 0..samples {
        let start = Instant::now();
        call();
        out.push(start.elapsed().as_nanos() as u64);
    }
    out
}

/// Runs `batch` (which makes `per_batch` calls) for about `secs`; calls per second.
fn rate_for(secs: f64, per_batch: usize, mut batch: impl FnMut()) -> f64 {
    batch(); // warm-up
    let start = Instant::now();
    let mut calls = 0u64;
    while start.elapsed().as_secs_f64() < secs || calls < 3 * per_batch as u64 {
        batch();
        calls += per_batch as u64;
    }
    calls as f64 / start.elapsed().as_secs_f64()
}
