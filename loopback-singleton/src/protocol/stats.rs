//! What a daemon reports about its methods (see `stats`): the answer to
//! [`Kind::Stats`](super::Kind::Stats). Summaries, not histograms, cross the wire, so
//! the protocol needs no histogram type.

use serde::{Deserialize, Serialize};
use std::time::Duration;

/// Per-method metrics of a daemon, since it started or since they were last zeroed.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[non_exhaustive]
pub struct Stats {
    /// The time the numbers cover: since the daemon started, or since the last reset.
    pub since: Duration,
    /// Every method the service declares, in order, then any other method index a
    /// request named (a hand-written service declares none).
    pub methods: Vec<MethodStats>,
}

/// One method's metrics.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[non_exhaustive]
pub struct MethodStats {
    /// The method's index on the wire (its request variant).
    pub index: u32,
    /// The method's name; empty if the service does not say.
    pub name: String,
    /// Requests for this method, whatever their outcome.
    pub calls: u64,
    /// Requests answered with `BadRequest` (undecodable) or `BadReply` (unencodable).
    pub errors: u64,
    /// Calls whose method panicked.
    pub panics: u64,
    /// Request frames' bytes, length prefixes included.
    pub bytes_in: u64,
    /// Reply frames' bytes, length prefixes included.
    pub bytes_out: u64,
    /// Time in the method (and encoding its reply), with the instance held.
    pub handler: Latency,
    /// Time from reading the request to holding the instance (behind other calls).
    pub queue: Latency,
}

/// A latency distribution's summary (zero when nothing was recorded).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[non_exhaustive]
pub struct Latency {
    /// Samples recorded.
    pub count: u64,
    /// Median.
    pub p50: Duration,
    /// 90th percentile.
    pub p90: Duration,
    /// 99th percentile.
    pub p99: Duration,
    /// Largest sample.
    pub max: Duration,
}
