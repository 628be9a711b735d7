//! Per-method metrics, always on: counts, bytes, and latency histograms of the handler
//! and of the wait for the instance. Recorded by the instance thread after each call
//! (one uncontended lock, a few counter bumps, two histogram records); read by `stats`
//! on the same thread.
//!
//! Histograms are `hdrhistogram`'s: fixed memory for the whole range (1 ns to an hour
//! at 2 significant digits, ~1% relative error), O(1) recording without allocation, and
//! percentiles that merge nothing lossy, which a ring of samples or a mean would.

use std::sync::{Mutex, PoisonError};
use std::time::{Duration, Instant};

use hdrhistogram::Histogram;

use crate::protocol::{Latency, MethodStats, Stats};

/// Method indices beyond the service's own are tracked up to this bound (a hand-written
/// service declares no names); a request naming a larger one is not recorded.
const MAX_UNNAMED: usize = 256;
/// The largest latency a histogram holds exactly: an hour, in nanoseconds; longer
/// ones are recorded as this.
const MAX_NANOS: u64 = 3_600_000_000_000;

/// How one call ended, as the metrics count it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Outcome {
    Ok,
    /// BadRequest or BadReply.
    Error,
    Panic,
    /// The instance was gone (the host retires): counted, not timed.
    Refused,
}

/// What one call contributes.
pub(super) struct Sample {
    pub index: u32,
    pub outcome: Outcome,
    pub bytes_in: usize,
    pub bytes_out: usize,
    /// Wait for the instance; `None` if the call never asked for it (undecodable).
    pub queue: Option<Duration>,
    /// Time in the method; `None` if it did not run.
    pub handler: Option<Duration>,
}

#[derive(Default)]
struct Method {
    calls: u64,
    errors: u64,
    panics: u64,
    bytes_in: u64,
    bytes_out: u64,
    handler: Option<Histogram<u64>>,
    queue: Option<Histogram<u64>>,
}

pub(super) struct Metrics {
    since: Instant,
    methods: Vec<Method>,
}

fn histogram() -> Histogram<u64> {
    Histogram::new_with_bounds(1, MAX_NANOS, 2).expect("valid histogram bounds")
}

fn record(slot: &mut Option<Histogram<u64>>, value: Duration) {
    let nanos = u64::try_from(value.as_nanos()).unwrap_or(u64::MAX);
    slot.get_or_insert_with(histogram)
        .saturating_record(nanos.clamp(1, MAX_NANOS));
}

fn summary(histogram: Option<&Histogram<u64>>) -> Latency {
    let Some(histogram) = histogram.filter(|histogram| !histogram.is_empty()) else {
        return Latency::default();
    };
    let at = |quantile: f64| Duration::from_nanos(histogram.value_at_quantile(quantile));
    Latency {
        count: histogram.len(),
        p50: at(0.5),
        p90: at(0.9),
        p99: at(0.99),
        // Like the percentiles, the top of its bucket: p99 <= max holds.
        max: Duration::from_nanos(histogram.max()),
    }
}

impl Metrics {
    pub(super) fn new() -> Self {
        Metrics {
            since: Instant::now(),
            methods: Vec::new(),
        }
    }

    pub(super) fn record(&mut self, sample: Sample) {
        let index = sample.index as usize;
        if index >= self.methods.len() {
            if index >= MAX_UNNAMED {
                return;
            }
            self.methods.resize_with(index + 1, Method::default);
        }
        let method = &mut self.methods[index];
        method.calls += 1;
        match sample.outcome {
            Outcome::Ok | Outcome::Refused => {}
            Outcome::Error => method.errors += 1,
            Outcome::Panic => method.panics += 1,
        }
        method.bytes_in += sample.bytes_in as u64;
        method.bytes_out += sample.bytes_out as u64;
        if let Some(queue) = sample.queue {
            record(&mut method.queue, queue);
        }
        if let Some(handler) = sample.handler {
            record(&mut method.handler, handler);
        }
    }

    /// The report: every named method (called or not), then any other index called.
    pub(super) fn snapshot(&self, names: &[&str]) -> Stats {
        let count = names.len().max(self.methods.len());
        let methods = (0..count)
            .map(|index| {
                let name = names.get(index).copied().unwrap_or_default().to_string();
                let mut stats = MethodStats {
                    index: index as u32,
                    name,
                    calls: 0,
                    errors: 0,
                    panics: 0,
                    bytes_in: 0,
                    bytes_out: 0,
                    handler: Latency::default(),
                    queue: Latency::default(),
                };
                if let Some(method) = self.methods.get(index) {
                    stats.calls = method.calls;
                    stats.errors = method.errors;
                    stats.panics = method.panics;
                    stats.bytes_in = method.bytes_in;
                    stats.bytes_out = method.bytes_out;
                    stats.handler = summary(method.handler.as_ref());
                    stats.queue = summary(method.queue.as_ref());
                }
                stats
            })
            .filter(|stats| index_named(stats, names) || stats.calls > 0)
            .collect();
        Stats {
            since: self.since.elapsed(),
            methods,
        }
    }

    /// Starts over; histograms keep their memory.
    pub(super) fn zero(&mut self) {
        self.since = Instant::now();
        for method in &mut self.methods {
            let (mut handler, mut queue) = (method.handler.take(), method.queue.take());
            for histogram in [&mut handler, &mut queue].into_iter().flatten() {
                histogram.reset();
            }
            *method = Method {
                handler,
                queue,
                ..Method::default()
            };
        }
    }
}

fn index_named(stats: &MethodStats, names: &[&str]) -> bool {
    (stats.index as usize) < names.len()
}

/// Locks the metrics; a panic elsewhere while holding them left nothing half-written
/// that matters (counters), so poisoning is ignored.
pub(super) fn lock(metrics: &Mutex<Metrics>) -> std::sync::MutexGuard<'_, Metrics> {
    metrics.lock().unwrap_or_else(PoisonError::into_inner)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample(index: u32, outcome: Outcome, micros: u64) -> Sample {
        Sample {
            index,
            outcome,
            bytes_in: 10,
            bytes_out: 20,
            queue: Some(Duration::from_micros(1)),
            handler: Some(Duration::from_micros(micros)),
        }
    }

    #[test]
    fn records_summarises_and_zeroes() {
        let mut metrics = Metrics::new();
        for micros in 1..=100 {
            metrics.record(sample(1, Outcome::Ok, micros));
        }
        metrics.record(sample(1, Outcome::Error, 5));
        metrics.record(sample(1, Outcome::Panic, 5));
        metrics.record(sample(9, Outcome::Ok, 5));
        let stats = metrics.snapshot(&["a", "b"]);
        let names: Vec<_> = stats
            .methods
            .iter()
            .map(|m| (m.index, m.name.as_str()))
            .collect();
        assert_eq!(names, [(0, "a"), (1, "b"), (9, "")]);
        let b = &stats.methods[1];
        assert_eq!((b.calls, b.errors, b.panics), (102, 1, 1));
        assert_eq!((b.bytes_in, b.bytes_out), (1020, 2040));
        assert_eq!(b.handler.count, 102);
        assert!(b.handler.p50 <= b.handler.p90 && b.handler.p90 <= b.handler.p99);
        assert!(b.handler.p99 <= b.handler.max);
        let p50 = b.handler.p50.as_micros();
        assert!((49..=52).contains(&p50), "p50 {p50}");
        assert_eq!(stats.methods[0].handler, Latency::default());

        metrics.zero();
        let stats = metrics.snapshot(&["a", "b"]);
        assert_eq!(stats.methods.len(), 2, "index 9 has no calls left");
        assert_eq!(stats.methods[1].calls, 0);
        assert_eq!(stats.methods[1].handler, Latency::default());
    }

    #[test]
    fn large_indices_are_not_tracked() {
        let mut metrics = Metrics::new();
        metrics.record(sample(u32::MAX, Outcome::Error, 1));
        assert!(metrics.snapshot(&[]).methods.is_empty());
    }
}
