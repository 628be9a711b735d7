//! Figures, the markdown table, the results page and the SVG chart.

use std::fmt::Write;

/// Median and 99th percentile of a set of durations, in nanoseconds.
#[derive(Clone, Copy, Debug)]
pub struct Stats {
    pub median: u64,
    pub p99: u64,
    pub count: usize,
}

impl Stats {
    pub fn of(mut samples: Vec<u64>) -> Stats {
        assert!(!samples.is_empty(), "no samples");
        samples.sort_unstable();
        let at = |q: f64| samples[((samples.len() - 1) as f64 * q).round() as usize];
        Stats {
            median: at(0.5),
            p99: at(0.99),
            count: samples.len(),
        }
    }
}

pub struct Crowd {
    pub clients: u32,
    pub rss_before_kib: u64,
    pub rss_kib: u64,
    pub latency: Stats,
}

/// The small call by transport, measured in the same interleaved rounds as `latency`.
pub struct TransportRow {
    /// The pinning.
    pub label: String,
    /// A raw `std::net` TCP ping-pong (the same samples as `latency`'s raw column).
    pub raw_tcp: Stats,
    /// A raw Unix-socket ping-pong: the floor of the `unix` transport.
    pub raw_unix: Stats,
    /// The blocking client over TCP (the same samples as `latency`'s).
    pub tcp: Stats,
    /// The blocking client over the daemon's Unix socket.
    pub unix: Stats,
}

/// Every figure of one run. Triples are (raw, loopback-singleton, tarpc).
pub struct Report {
    pub quick: bool,
    pub latency: Vec<(String, Stats, Stats, Stats)>,
    pub throughput: Vec<(String, f64, f64, f64)>,
    /// (pinning, raw, the async client, tarpc): the same raw and tarpc samples as
    /// `latency`, the async client measured in the same interleaved rounds.
    pub async_latency: Vec<(String, Stats, Stats, Stats)>,
    pub transports: Vec<TransportRow>,
    /// (load, raw TCP from one process one call at a time, the async client, tarpc).
    pub async_throughput: Vec<(String, f64, f64, f64)>,
    /// (label, size, raw, loopback-singleton, tarpc), bytes per second.
    pub payload: Vec<(String, usize, f64, f64, f64)>,
    pub warm_connect: Option<Stats>,
    pub idle_rss_kib: u64,
    pub idle_wakeups: Option<(u64, f64)>,
    pub crowd: Option<Crowd>,
    pub cold_parent: Option<Stats>,
    pub cold_child: Option<Stats>,
    /// The shared-memory transport beside raw TCP (see `shm.rs`).
    pub shm: Vec<ShmRow>,
}

/// One figure of the shared-memory section.
pub enum ShmRow {
    /// (pinning, raw TCP, shm small call).
    Latency(String, Stats, Stats),
    /// (clients, raw TCP calls/s, shm calls/s).
    Throughput(String, f64, f64),
    /// Context switches over `secs` of the daemon and of a connected shm client, both
    /// idle.
    Idle { daemon: u64, client: u64, secs: f64 },
}

pub fn micros(ns: u64) -> String {
    if ns >= 10_000_000 {
        format!("{:.1} ms", ns as f64 / 1e6)
    } else if ns >= 1_000_000 {
        format!("{:.2} ms", ns as f64 / 1e6)
    } else {
        format!("{:.1} µs", ns as f64 / 1e3)
    }
}

pub fn bytes(n: usize) -> String {
    match n {
        n if n >= 1 << 20 => format!("{} MiB", n >> 20),
        n if n >= 1 << 10 => format!("{} KiB", n >> 10),
        n => format!("{n} B"),
    }
}

fn rate(calls: f64) -> String {
    if calls >= 1e6 {
        format!("{:.2} M/s", calls / 1e6)
    } else {
        format!("{:.0} k/s", calls / 1e3)
    }
}

fn bandwidth(bytes_per_sec: f64) -> String {
    let mib = bytes_per_sec / (1 << 20) as f64;
    if mib >= 10.0 {
        format!("{mib:.0} MiB/s")
    } else {
        format!("{mib:.2} MiB/s")
    }
}

fn mark(ok: bool) -> &'static str {
    if ok { "met" } else { "**missed**" }
}

/// The machine, as the README's performance section shows it.
pub fn machine() -> String {
    let cpu = std::fs::read_to_string("/proc/cpuinfo")
        .ok()
        .and_then(|info| {
            info.lines()
                .find_map(|line| line.strip_prefix("model name"))
                .map(|rest| rest.trim_start_matches([' ', '\t', ':']).to_string())
        })
        .unwrap_or_else(|| "unknown CPU".into());
    let kernel = std::fs::read_to_string("/proc/sys/kernel/osrelease")
        .map(|k| k.trim().to_string())
        .unwrap_or_else(|_| "unknown".into());
    format!(
        "{} CPUs ({cpu}), Linux {kernel}",
        crate::procs::available_cpus()
    )
}

impl Report {
    pub fn new(quick: bool) -> Report {
        Report {
            quick,
            latency: Vec::new(),
            throughput: Vec::new(),
            async_latency: Vec::new(),
            transports: Vec::new(),
            async_throughput: Vec::new(),
            payload: Vec::new(),
            warm_connect: None,
            idle_rss_kib: 0,
            idle_wakeups: None,
            crowd: None,
            cold_parent: None,
            cold_child: None,
            shm: Vec::new(),
        }
    }

    /// The shared-memory transport's rows, if measured.
    fn shm_markdown(&self, out: &mut String) {
        if self.shm.is_empty() {
            return;
        }
        let _ = writeln!(
            out,
            "\n**Shared-memory transport** (`Transport::SharedMemory`, blocking client; raw TCP \
             measured in the same interleaved rounds; ratio to raw)\n"
        );
        let _ = writeln!(
            out,
            "| small call | raw TCP | shm | ratio | target: shm median ≤ 2 µs cross-core |"
        );
        let _ = writeln!(out, "|---|---|---|---|---|");
        for row in &self.shm {
            match row {
                ShmRow::Latency(label, raw, shm) => {
                    let _ = writeln!(
                        out,
                        "| {label}, median / p99 | {} / {} | {} / {} | {:.2}× | {} |",
                        micros(raw.median),
                        micros(raw.p99),
                        micros(shm.median),
                        micros(shm.p99),
                        shm.median as f64 / raw.median as f64,
                        if label.starts_with("cross") {
                            mark(shm.median <= 2_000)
                        } else {
                            ""
                        },
                    );
                }
                ShmRow::Throughput(label, raw, shm) => {
                    let _ = writeln!(
                        out,
                        "| {label}, calls/s | {} | {} | {:.2}× | |",
                        rate(*raw),
                        rate(*shm),
                        shm / raw,
                    );
                }
                ShmRow::Idle {
                    daemon,
                    client,
                    secs,
                } => {
                    let _ = writeln!(
                        out,
                        "| idle, context switches in {secs:.0} s | | daemon {daemon}, connected shm client {client} | | |"
                    );
                }
            }
        }
    }

    /// The table of figures, ratios to raw TCP beside the absolute values.
    pub fn markdown(&self) -> String {
        let mut out = String::new();
        let mode = if self.quick { " (--quick)" } else { "" };
        let _ = writeln!(out, "Machine: {}{mode}\n", machine());

        let _ = writeln!(
            out,
            "**Small call round trip** (`inc() -> u64`, blocking; median / p99 of {} calls each; ratio = median ÷ raw median)\n",
            self.latency.first().map_or(0, |(_, raw, _, _)| raw.count)
        );
        let _ = writeln!(
            out,
            "| pinning | raw TCP | loopback-singleton | ratio | tarpc | ratio | target ≤ 1.2× raw, < tarpc |"
        );
        let _ = writeln!(out, "|---|---|---|---|---|---|---|");
        for (label, raw, ours, tarpc) in &self.latency {
            let ratio = ours.median as f64 / raw.median as f64;
            let _ = writeln!(
                out,
                "| {label} | {} / {} | {} / {} | {ratio:.2}× | {} / {} | {:.2}× | {} |",
                micros(raw.median),
                micros(raw.p99),
                micros(ours.median),
                micros(ours.p99),
                micros(tarpc.median),
                micros(tarpc.p99),
                tarpc.median as f64 / raw.median as f64,
                mark(ratio <= 1.2 && ours.median < tarpc.median),
            );
        }

        if !self.transports.is_empty() {
            let _ = writeln!(
                out,
                "\n**Small call by transport** (`inc() -> u64`, blocking client, same daemon, same interleaved rounds; median / p99)\n"
            );
            let _ = writeln!(
                out,
                "| pinning | raw TCP | raw Unix socket | `tcp` | `unix` | `unix` ÷ raw TCP | `unix` ÷ raw Unix | target ≤ 0.8× raw TCP, ≤ 1.2× raw Unix |"
            );
            let _ = writeln!(out, "|---|---|---|---|---|---|---|---|");
            for row in &self.transports {
                let over_tcp = row.unix.median as f64 / row.raw_tcp.median as f64;
                let over_unix = row.unix.median as f64 / row.raw_unix.median as f64;
                let _ = writeln!(
                    out,
                    "| {} | {} / {} | {} / {} | {} / {} | {} / {} | {over_tcp:.2}× | {over_unix:.2}× | {} |",
                    row.label,
                    micros(row.raw_tcp.median),
                    micros(row.raw_tcp.p99),
                    micros(row.raw_unix.median),
                    micros(row.raw_unix.p99),
                    micros(row.tcp.median),
                    micros(row.tcp.p99),
                    micros(row.unix.median),
                    micros(row.unix.p99),
                    mark(over_tcp <= 0.8 && over_unix <= 1.2),
                );
            }
        }

        let _ = writeln!(
            out,
            "\n**Throughput** (small calls per second, all processes together; ratio to raw)\n"
        );
        let _ = writeln!(
            out,
            "| clients | raw TCP | loopback-singleton | ratio | tarpc | ratio | target |"
        );
        let _ = writeln!(out, "|---|---|---|---|---|---|---|");
        for (label, raw, ours, tarpc) in &self.throughput {
            let ratio = ours / raw;
            let target = if label.starts_with("4 ") {
                format!(
                    "≥ 0.7× raw, > tarpc: {}",
                    mark(ratio >= 0.7 && ours > tarpc)
                )
            } else {
                format!("> tarpc: {}", mark(ours > tarpc))
            };
            let _ = writeln!(
                out,
                "| {label} | {} | {} | {ratio:.2}× | {} | {:.2}× | {target} |",
                rate(*raw),
                rate(*ours),
                rate(*tarpc),
                tarpc / raw,
            );
        }

        self.shm_markdown(&mut out);

        if !self.async_latency.is_empty() || !self.async_throughput.is_empty() {
            let _ = writeln!(
                out,
                "\n**Async client** (`BenchAsyncClient`) against tarpc's client, both on a tokio \
                 current_thread runtime in the calling process, pinned like the rows above\n"
            );
        }
        if !self.async_latency.is_empty() {
            let _ = writeln!(
                out,
                "Small call round trip, one `inc().await` at a time from one task (median / p99 of {} calls each; \
                 raw and tarpc: the samples of the blocking table, measured in the same rounds)\n",
                self.async_latency
                    .first()
                    .map_or(0, |(_, _, ours, _)| ours.count)
            );
            let _ = writeln!(
                out,
                "| pinning | raw TCP | async client | ratio | tarpc | ratio | target < tarpc |"
            );
            let _ = writeln!(out, "|---|---|---|---|---|---|---|");
            for (label, raw, ours, tarpc) in &self.async_latency {
                let _ = writeln!(
                    out,
                    "| {label} | {} / {} | {} / {} | {:.2}× | {} / {} | {:.2}× | {} |",
                    micros(raw.median),
                    micros(raw.p99),
                    micros(ours.median),
                    micros(ours.p99),
                    ours.median as f64 / raw.median as f64,
                    micros(tarpc.median),
                    micros(tarpc.p99),
                    tarpc.median as f64 / raw.median as f64,
                    mark(ours.median < tarpc.median),
                );
            }
        }
        if !self.async_throughput.is_empty() {
            let _ = writeln!(
                out,
                "\nThroughput of one client process, concurrent tasks on one client (one connection), \
                 client pinned to CPU 0, servers to CPU 1. Baseline: raw TCP from one process with \
                 the same pinning, one call at a time (raw TCP has no concurrent client; the \
                 pipelined row above is its batched ceiling)\n"
            );
            let _ = writeln!(
                out,
                "| load | raw TCP, sequential | async client | ratio | tarpc | ratio | target > tarpc |"
            );
            let _ = writeln!(out, "|---|---|---|---|---|---|---|");
            for (label, raw, ours, tarpc) in &self.async_throughput {
                let _ = writeln!(
                    out,
                    "| {label} | {} | {} | {:.2}× | {} | {:.2}× | {} |",
                    rate(*raw),
                    rate(*ours),
                    ours / raw,
                    rate(*tarpc),
                    tarpc / raw,
                    mark(ours > tarpc),
                );
            }
        }

        let _ = writeln!(
            out,
            "\n**Payload sweep** (one argument of N bytes, sequential calls on one connection, pinned cross-core; ratio to raw). \
             `&[u8]`: the argument as written, which serde encodes element by element (tarpc: `Vec<u8>`); \
             bytes: the same argument as `&serde_bytes::ByteBuf` (tarpc: `ByteBuf`), encoded in one copy. \
             Identical bytes on the wire.\n"
        );
        let _ = writeln!(
            out,
            "| argument | raw TCP | loopback-singleton | ratio | tarpc | ratio | target |"
        );
        let _ = writeln!(out, "|---|---|---|---|---|---|---|");
        for (label, size, raw, ours, tarpc) in &self.payload {
            let ratio = ours / raw;
            let target = if *size == 4 << 20 {
                format!(
                    "≥ 0.5× raw, > tarpc: {}",
                    mark(ratio >= 0.5 && ours > tarpc)
                )
            } else {
                format!("> tarpc: {}", mark(ours > tarpc))
            };
            let _ = writeln!(
                out,
                "| {label} | {} | {} | {ratio:.2}× | {} | {:.2}× | {target} |",
                bandwidth(*raw),
                bandwidth(*ours),
                bandwidth(*tarpc),
                tarpc / raw,
            );
        }

        let _ = writeln!(out, "\n**Start, connect, footprint**\n");
        let _ = writeln!(out, "| figure | median | p99 | target |");
        let _ = writeln!(out, "|---|---|---|---|");
        if let Some(cold) = self.cold_parent {
            let _ = writeln!(
                out,
                "| cold start: spawn a fresh process, no daemon running → first result | {} | {} | ≤ 10 ms: {} |",
                micros(cold.median),
                micros(cold.p99),
                mark(cold.median <= 10_000_000)
            );
        }
        if let Some(cold) = self.cold_child {
            let _ = writeln!(
                out,
                "| cold start inside that process: `connect` (spawns the daemon) + first call | {} | {} | |",
                micros(cold.median),
                micros(cold.p99),
            );
        }
        if let Some(warm) = self.warm_connect {
            let _ = writeln!(
                out,
                "| warm `connect` (TCP connect + mutual handshake) | {} | {} | ≤ 1 ms: {} |",
                micros(warm.median),
                micros(warm.p99),
                mark(warm.median <= 1_000_000)
            );
        }
        let _ = writeln!(
            out,
            "| daemon idle RSS | {:.2} MiB | | ≤ 4 MiB: {} |",
            self.idle_rss_kib as f64 / 1024.0,
            mark(self.idle_rss_kib <= 4096)
        );
        if let Some((wakeups, secs)) = self.idle_wakeups {
            let _ = writeln!(
                out,
                "| daemon wake-ups while idle (no client, {secs:.0} s, TTL 60 s) | {wakeups} | | 0: {} |",
                mark(wakeups == 0)
            );
        }
        if let Some(crowd) = &self.crowd {
            let _ = writeln!(
                out,
                "| daemon RSS with {} connected clients (before: {:.2} MiB) | {:.2} MiB | | |",
                crowd.clients,
                crowd.rss_before_kib as f64 / 1024.0,
                crowd.rss_kib as f64 / 1024.0
            );
            let _ = writeln!(
                out,
                "| small call with {} connected clients, round-robin | {} | {} | |",
                crowd.clients,
                micros(crowd.latency.median),
                micros(crowd.latency.p99)
            );
        }
        out
    }

    pub fn results_page(&self, table: &str) -> String {
        format!(
            "# Benchmark results\n\nGenerated by `cargo run --release -p loopback-singleton-bench{}` \
             (one run; every ratio is against raw `std::net` loopback TCP measured in the same run).\n\n\
             ![latency and throughput against raw TCP and tarpc](bench.svg)\n\n{table}",
            if self.quick { " -- --quick" } else { "" }
        )
    }

    /// Three panels of grouped bars, each as a ratio to raw TCP (= 1), labelled with
    /// the absolute figures.
    pub fn svg(&self) -> String {
        let mut panels = Vec::new();
        let mut latency = Vec::new();
        // The async client's groups follow, its bar in the crate's colour.
        let async_rows = self.async_latency.iter().map(|(label, raw, ours, tarpc)| {
            let short = label.replace(" core", "");
            (format!("async {short}"), raw, ours, tarpc)
        });
        let blocking_rows = self
            .latency
            .iter()
            .map(|(label, raw, ours, tarpc)| (label.clone(), raw, ours, tarpc));
        // The blocking client over the unix transport, beside the same run's raw TCP and
        // tarpc (its own raw baseline, the raw Unix socket, is in the table).
        let unix_rows = self.transports.iter().filter_map(|row| {
            let (_, _, _, tarpc) = self
                .latency
                .iter()
                .find(|(label, ..)| *label == row.label)?;
            let short = row.label.replace(" core", "");
            Some((format!("unix {short}"), &row.raw_tcp, &row.unix, tarpc))
        });
        for (label, raw, ours, tarpc) in blocking_rows.chain(async_rows).chain(unix_rows) {
            for (what, pick) in [("median", 0), ("p99", 1)] {
                let get = |s: &Stats| if pick == 0 { s.median } else { s.p99 } as f64;
                let what = if label.starts_with("async") || label.starts_with("unix") {
                    if pick == 0 { "p50" } else { "p99" }
                } else {
                    what
                };
                latency.push(Group {
                    label: format!("{label} {what}"),
                    bars: [get(raw), get(ours), get(tarpc)],
                    text: [raw, ours, tarpc].map(|s| micros(get(s) as u64)),
                });
            }
        }
        panels.push((
            "Small-call latency ÷ raw TCP (lower is better)".to_string(),
            latency,
        ));
        let async_rows = self
            .async_throughput
            .iter()
            .map(|(label, raw, ours, tarpc)| {
                let tasks = label
                    .split(", ")
                    .nth(1)
                    .and_then(|rest| rest.split(' ').next())
                    .unwrap_or("?");
                (format!("async, {tasks} tasks"), raw, ours, tarpc)
            });
        let throughput = self
            .throughput
            .iter()
            .map(|(label, raw, ours, tarpc)| (label.clone(), raw, ours, tarpc))
            .chain(async_rows)
            .map(|(label, raw, ours, tarpc)| Group {
                label: label
                    .replace(" client processes", " procs")
                    .replace(" client process", " proc")
                    .replace(", 1 connection, window", " w=")
                    .replace(" (pinned cross-core)", ""),
                bars: [*raw, *ours, *tarpc],
                text: [raw, ours, tarpc].map(|r| rate(*r)),
            })
            .collect();
        panels.push((
            "Throughput ÷ raw TCP (higher is better)".to_string(),
            throughput,
        ));
        let payload = self
            .payload
            .iter()
            .map(|(label, _, raw, ours, tarpc)| Group {
                label: label.replace('`', ""),
                bars: [*raw, *ours, *tarpc],
                text: [raw, ours, tarpc].map(|b| bandwidth(*b)),
            })
            .collect();
        panels.push((
            "Payload bandwidth ÷ raw TCP (higher is better)".to_string(),
            payload,
        ));
        render(&panels, &machine())
    }
}

struct Group {
    label: String,
    /// Absolute values: raw, loopback-singleton, tarpc.
    bars: [f64; 3],
    text: [String; 3],
}

const COLORS: [&str; 3] = ["#9e9e9e", "#1f77b4", "#ff7f0e"];
const NAMES: [&str; 3] = [
    "raw std::net TCP",
    "loopback-singleton",
    "tarpc (bincode, TCP)",
];

fn render(panels: &[(String, Vec<Group>)], machine: &str) -> String {
    let width = 1000.0;
    let panel_height = 250.0;
    let top = 60.0;
    let height = top + panel_height * panels.len() as f64 + 10.0;
    let mut svg = String::new();
    let _ = writeln!(
        svg,
        r##"<svg xmlns="http://www.w3.org/2000/svg" width="{width}" height="{height}" viewBox="0 0 {width} {height}" font-family="sans-serif" font-size="11">"##
    );
    let _ = writeln!(
        svg,
        r##"<rect width="100%" height="100%" fill="white"/><text x="10" y="20" font-size="15" font-weight="bold">loopback-singleton vs raw TCP and tarpc</text><text x="10" y="38" fill="#555">{}</text>"##,
        escape(machine)
    );
    for (i, (name, color)) in NAMES.iter().zip(COLORS).enumerate() {
        let x = 520.0 + i as f64 * 160.0;
        let _ = writeln!(
            svg,
            r##"<rect x="{x}" y="10" width="12" height="12" fill="{color}"/><text x="{}" y="20">{}</text>"##,
            x + 16.0,
            escape(name)
        );
    }
    for (index, (title, groups)) in panels.iter().enumerate() {
        let y0 = top + index as f64 * panel_height;
        let (left, right) = (60.0, width - 20.0);
        // Below the axis: three staggered rows of absolute values, then the group name.
        let (plot_top, plot_bottom) = (y0 + 28.0, y0 + panel_height - 50.0);
        let ratios: Vec<[f64; 3]> = groups
            .iter()
            .map(|g| {
                g.bars
                    .map(|v| if g.bars[0] > 0.0 { v / g.bars[0] } else { 0.0 })
            })
            .collect();
        let max = ratios
            .iter()
            .flatten()
            .fold(1.0f64, |m, &r| m.max(r))
            .min(20.0)
            * 1.15;
        let scale = |r: f64| plot_bottom - (r.min(max) / max) * (plot_bottom - plot_top);
        let _ = writeln!(
            svg,
            r##"<text x="{left}" y="{}" font-size="13" font-weight="bold">{}</text>"##,
            y0 + 18.0,
            escape(title)
        );
        // Axis and the raw = 1 line.
        let _ = writeln!(
            svg,
            r##"<line x1="{left}" y1="{plot_bottom}" x2="{right}" y2="{plot_bottom}" stroke="#333"/><line x1="{left}" y1="{plot_top}" x2="{left}" y2="{plot_bottom}" stroke="#333"/>"##
        );
        let one = scale(1.0);
        let _ = writeln!(
            svg,
            r##"<line x1="{left}" y1="{one}" x2="{right}" y2="{one}" stroke="#999" stroke-dasharray="4 3"/><text x="{}" y="{}" text-anchor="end">1×</text><text x="{}" y="{}" text-anchor="end">{max:.1}×</text>"##,
            left - 4.0,
            one + 4.0,
            left - 4.0,
            plot_top + 4.0
        );
        let slot = (right - left) / groups.len().max(1) as f64;
        let bar = (slot * 0.8 / 3.0).min(60.0);
        for (g, (group, ratio)) in groups.iter().zip(&ratios).enumerate() {
            let gx = left + g as f64 * slot + (slot - 3.0 * bar) / 2.0;
            for k in 0..3 {
                let x = gx + k as f64 * bar;
                let y = scale(ratio[k]);
                let h = plot_bottom - y;
                let _ = writeln!(
                    svg,
                    r##"<rect x="{x:.1}" y="{y:.1}" width="{:.1}" height="{h:.1}" fill="{}"><title>{}: {} ({:.2}× raw)</title></rect>"##,
                    bar - 2.0,
                    COLORS[k],
                    escape(NAMES[k]),
                    escape(&group.text[k]),
                    ratio[k]
                );
                // A bar cut at the top of the axis says so.
                let clipped = if ratio[k] > max { " ↑" } else { "" };
                let _ = writeln!(
                    svg,
                    r##"<text x="{:.1}" y="{:.1}" font-size="9" text-anchor="middle">{:.2}×{clipped}</text>"##,
                    x + bar / 2.0 - 1.0,
                    y - 3.0,
                    ratio[k]
                );
                let _ = writeln!(
                    svg,
                    r##"<text x="{:.1}" y="{:.1}" font-size="8" fill="#444" text-anchor="middle">{}</text>"##,
                    x + bar / 2.0 - 1.0,
                    plot_bottom + 22.0 + 9.0 * k as f64 - 9.0,
                    escape(&group.text[k])
                );
            }
            let _ = writeln!(
                svg,
                r##"<text x="{:.1}" y="{:.1}" text-anchor="middle" font-weight="bold">{}</text>"##,
                gx + 1.5 * bar,
                plot_bottom + 46.0,
                escape(&group.label)
            );
        }
    }
    svg.push_str("</svg>\n");
    svg
}

fn escape(text: &str) -> String {
    text.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
}
