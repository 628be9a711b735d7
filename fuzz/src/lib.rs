//! What the fuzz targets share: a service with every kind of argument and return value
//! the macro supports, and a way to build a stream of frames from fuzz input.

use std::collections::BTreeMap;

use loopback_singleton::local_singleton;
use serde::{Deserialize, Serialize};

/// An argument with enum, struct-variant and sequence shapes.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub enum Shape {
    Point,
    Circle { r: f64 },
    Poly(Vec<(i32, i32)>),
}

/// The service the daemon's request loop runs the fuzzed calls on.
#[derive(Default)]
pub struct Target {
    value: u64,
    map: BTreeMap<String, Vec<u8>>,
}

#[local_singleton(name = "fuzz-target")]
impl Target {
    pub fn inc(&mut self) -> u64 {
        self.value = self.value.wrapping_add(1);
        self.value
    }

    pub fn add(&mut self, n: u64, m: u32) -> u64 {
        self.value = self.value.wrapping_add(n).wrapping_add(u64::from(m));
        self.value
    }

    pub fn put(&mut self, key: String, value: Vec<u8>) -> usize {
        if self.map.len() < 64 || self.map.contains_key(&key) {
            self.map.insert(key, value);
        }
        self.map.len()
    }

    pub fn get(&self, key: &str) -> Option<Vec<u8>> {
        self.map.get(key).cloned()
    }

    pub fn sum(&self, xs: &[u64]) -> u64 {
        xs.iter().fold(0, |sum, x| sum.wrapping_add(*x))
    }

    pub fn checked(&self, n: i64) -> Result<i64, String> {
        n.checked_mul(2).ok_or_else(|| format!("{n} * 2 overflows"))
    }

    pub fn describe(&self, shape: Shape, tag: Option<char>, flags: (bool, u8, i16)) -> String {
        format!("{shape:?} {tag:?} {flags:?}")
    }

    pub async fn later(&mut self, n: u8) -> u8 {
        self.value = self.value.wrapping_add(u64::from(n));
        n
    }
}

pub use loopback_singleton::fuzzing::framed;

/// A frame size limit chosen by one byte of input: tiny ones to hit the limit checks,
/// larger ones for everything else. (A reader allocates what a length prefix announces,
/// up to the limit, before the payload arrives: the default 64 MiB limit only slows the
/// fuzzer down, so it comes up rarely.)
pub fn limit(selector: u8) -> u32 {
    match selector % 16 {
        0 => 0,
        1 => 1,
        2 => 8,
        3 => 64,
        4 => 1024,
        5 => 64 << 10,
        15 => 64 << 20,
        _ => 1 << 20,
    }
}
