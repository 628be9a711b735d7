//! A key-value cache shared by every process of this user, with init arguments and a
//! typed application error.
//!
//! ```text
//! cargo run --example kv_cache -- put greeting hello
//! cargo run --example kv_cache -- get greeting        # hello, from another process
//! cargo run --example kv_cache -- get missing         # error: no key `missing`
//! cargo run --example kv_cache -- stats
//! ```
//!
//! The first process to connect decides the capacity (`#[init]`); a later process that
//! asks for another capacity gets `Error::InitMismatch` naming both, and the running
//! cache is left alone.

use std::collections::BTreeMap;
use std::time::Duration;

use loopback_singleton::local_singleton;
use serde::{Deserialize, Serialize};

/// The shared cache: lives in the daemon.
pub struct Cache {
    capacity: usize,
    entries: BTreeMap<String, Vec<u8>>,
    hits: u64,
    misses: u64,
}

/// The cache's own errors: they reach the caller typed, apart from transport errors.
#[derive(
    Debug,
    Clone,
    PartialEq,
    Eq,
    Serialize,
    Deserialize,
    loopback_singleton::Schema,
    thiserror::Error,
)]
pub enum CacheError {
    /// The key is absent.
    #[error("no key `{0}`")]
    NotFound(String),
    /// Inserting would exceed the capacity chosen at start.
    #[error("the cache is full ({capacity} entries)")]
    Full {
        /// The capacity the daemon was started with.
        capacity: usize,
    },
}

/// Hit and miss counts.
#[derive(Debug, Clone, Copy, Serialize, Deserialize, loopback_singleton::Schema)]
pub struct Stats {
    /// Entries stored.
    pub entries: usize,
    /// Successful `get`s.
    pub hits: u64,
    /// `get`s of absent keys.
    pub misses: u64,
}

#[local_singleton(name = "kv-cache-example")]
impl Cache {
    /// Creates an empty cache holding at most `capacity` entries.
    #[init]
    pub fn new(capacity: usize) -> Self {
        Cache {
            capacity,
            entries: BTreeMap::new(),
            hits: 0,
            misses: 0,
        }
    }

    /// Stores `value` under `key`, replacing any previous value.
    pub fn put(&mut self, key: &str, value: &[u8]) -> Result<(), CacheError> {
        if !self.entries.contains_key(key) && self.entries.len() >= self.capacity {
            return Err(CacheError::Full {
                capacity: self.capacity,
            });
        }
        self.entries.insert(key.to_owned(), value.to_vec());
        Ok(())
    }

    /// The value under `key`.
    pub fn get(&mut self, key: &str) -> Result<Vec<u8>, CacheError> {
        match self.entries.get(key) {
            Some(value) => {
                self.hits += 1;
                Ok(value.clone())
            }
            None => {
                self.misses += 1;
                Err(CacheError::NotFound(key.to_owned()))
            }
        }
    }

    /// Hit and miss counts.
    pub fn stats(&self) -> Stats {
        Stats {
            entries: self.entries.len(),
            hits: self.hits,
            misses: self.misses,
        }
    }
}

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let cache = CacheClient::builder()
        .idle_ttl(Duration::from_secs(30))
        .connect(1_000)?;
    match args.iter().map(String::as_str).collect::<Vec<_>>()[..] {
        ["put", key, value] => {
            // Outer `?`: transport error; inner `?`: the cache's own error.
            cache.put(key, value.as_bytes())??;
            println!("stored {key}");
        }
        ["get", key] => match cache.get(key)? {
            Ok(value) => println!("{}", String::from_utf8_lossy(&value)),
            Err(error) => println!("error: {error}"),
        },
        ["stats"] => println!("{:?}", cache.stats()?),
        _ => eprintln!("usage: kv_cache put KEY VALUE | get KEY | stats"),
    }
    Ok(())
}
