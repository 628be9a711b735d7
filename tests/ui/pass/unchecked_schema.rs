//! `#[unchecked_schema]` opts one argument (or a method's return type) out of the shape
//! check: the type must still be serializable, and the fingerprint keeps its spelling.

use loopback_singleton::local_singleton;
use serde::{Deserialize, Serialize};

/// From a crate that does not derive `Schema`, say.
#[derive(Clone, Serialize, Deserialize)]
pub struct Foreign {
    pub x: i64,
}

#[derive(Default)]
pub struct Canvas {
    last: i64,
}

#[local_singleton]
impl Canvas {
    #[init]
    pub fn new(#[unchecked_schema] start: Foreign) -> Self {
        Canvas { last: start.x }
    }

    pub fn draw(&mut self, #[unchecked_schema] point: &Foreign, times: u8) -> i64 {
        self.last = point.x * i64::from(times);
        self.last
    }

    #[unchecked_schema]
    pub fn last(&self) -> Foreign {
        Foreign { x: self.last }
    }
}

fn main() {}
