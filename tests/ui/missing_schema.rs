use loopback_singleton::local_singleton;
use serde::{Deserialize, Serialize};

/// Serializable, but without `Schema`: the fingerprint could not cover its shape.
#[derive(Serialize, Deserialize)]
pub struct Point {
    pub x: i64,
    pub y: i64,
}

#[derive(Default)]
pub struct Canvas {
    points: u64,
}

#[local_singleton]
impl Canvas {
    pub fn draw(&mut self, point: Point) -> u64 {
        let _ = (point.x, point.y);
        self.points += 1;
        self.points
    }
}

fn main() {}
