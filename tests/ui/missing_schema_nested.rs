use loopback_singleton::local_singleton;
use serde::{Deserialize, Serialize};

/// Serializable, but without `Schema`, inside a `Result`.
#[derive(Serialize, Deserialize)]
pub enum DrawError {
    Full,
}

#[derive(Default)]
pub struct Canvas {
    points: u64,
}

#[local_singleton]
impl Canvas {
    pub fn draw(&mut self) -> Result<u64, DrawError> {
        self.points += 1;
        Ok(self.points)
    }
}

fn main() {}
