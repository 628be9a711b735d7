//! The shared-memory transport beside raw TCP, in the same run: small-call latency
//! pinned same-core and cross-core, throughput with 1 and 4 client processes, and the
//! wake-ups of the idle daemon and of an idle connected shm client.

use std::path::Path;
use std::time::Duration;

use loopback_singleton::Transport;

use crate::procs::{self, Proc};
use crate::report::{Report, ShmRow, Stats};
use crate::service::BenchClient;
use crate::{Plan, roles, time_calls};

/// The environment variable that makes a `crate-worker` use shared memory.
pub const SHM_WORKER: &str = "LSB_SHM";

pub fn run(
    plan: &Plan,
    base: &Path,
    name: &str,
    (raw_port, raw_pid): (u16, u32),
    daemon_pid: u32,
    report: &mut Report,
) {
    let mut raw_stream = roles::raw_connect(raw_port, roles::RAW_PING);
    let client = BenchClient::builder()
        .runtime_dir(base)
        .name(name)
        .transport(Transport::SharedMemory)
        .connect(())
        .expect("connecting over shared memory");
    for (label, client_cpu, server_cpu) in [("same core", 0, 0), ("cross core", 0, 1)] {
        eprintln!("shm latency, {label}...");
        procs::pin_thread(Some(client_cpu));
        for pid in [raw_pid, daemon_pid] {
            procs::pin_process(pid, Some(server_cpu % procs::available_cpus()));
        }
        let (mut raw_samples, mut shm_samples) = (Vec::new(), Vec::new());
        let per_round = plan.samples / plan.rounds;
        for round in 0..plan.rounds {
            let warmup = if round == 0 { plan.warmup } else { 100 };
            raw_samples.extend(time_calls(warmup, per_round, || {
                roles::raw_ping(&mut raw_stream)
            }));
            shm_samples.extend(time_calls(warmup, per_round, || {
                client.inc().expect("inc");
            }));
        }
        report.shm.push(ShmRow::Latency(
            label.to_string(),
            Stats::of(raw_samples),
            Stats::of(shm_samples),
        ));
    }
    procs::pin_thread(None);
    for pid in [raw_pid, daemon_pid] {
        procs::pin_process(pid, None);
    }
    for procs_n in [1usize, 4] {
        eprintln!("shm throughput, {procs_n} processes...");
        let secs = plan.throughput_secs;
        let raw_rate = procs::workers("raw-worker", procs_n, secs, &[("LSB_PORT", raw_port)], name);
        let shm_rate = procs::workers("crate-worker", procs_n, secs, &[(SHM_WORKER, 1)], name);
        report.shm.push(ShmRow::Throughput(
            format!(
                "{procs_n} client process{}",
                if procs_n == 1 { "" } else { "es" }
            ),
            raw_rate,
            shm_rate,
        ));
    }

    // Idle: this process's client stays connected, and another process holds an shm
    // connection it made a call on; neither calls for `idle_secs`.
    eprintln!("shm idle...");
    let dir = base.to_string_lossy().into_owned();
    let mut idle = Proc::spawn(
        "shm-idle",
        &[("LSB_NAME", name), ("LOOPBACK_SINGLETON_DIR", dir.as_str())],
    );
    assert_eq!(idle.read_line(), "ready");
    std::thread::sleep(Duration::from_millis(300));
    let before = (
        procs::context_switches(daemon_pid),
        procs::context_switches(idle.pid()),
    );
    std::thread::sleep(Duration::from_secs_f64(plan.idle_secs));
    let after = (
        procs::context_switches(daemon_pid),
        procs::context_switches(idle.pid()),
    );
    report.shm.push(ShmRow::Idle {
        daemon: after.0.saturating_sub(before.0),
        client: after.1.saturating_sub(before.1),
        secs: plan.idle_secs,
    });
    drop(idle);
    drop(client);
}

/// The `shm-idle` role: connects over shared memory, makes one call, says `ready`, then
/// waits for its parent (or its end) without calling again.
pub fn idle_client() {
    use std::io::{BufRead, Write};
    let client = roles::crate_connect_with(Transport::SharedMemory);
    client.inc().expect("inc");
    println!("ready");
    std::io::stdout().flush().unwrap();
    let mut line = String::new();
    let _ = std::io::stdin().lock().read_line(&mut line);
    drop(client);
}
