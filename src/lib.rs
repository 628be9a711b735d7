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
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
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
