use loopback_singleton::local_singleton;

/// Not `Serialize`/`Deserialize`: it can't travel to the daemon.
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
