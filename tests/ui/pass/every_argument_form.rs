//! Every supported argument and return form: owned, `&T`, `&str`, `&[T]`, `mut` bindings,
//! `&self`, `&mut self`, `async fn`, `Result` returns, `#[init]` with borrowed arguments.

use loopback_singleton::local_singleton;
use serde::{Deserialize, Serialize};

#[derive(Clone, Serialize, Deserialize, loopback_singleton::Schema)]
pub struct Point {
    pub x: i64,
    pub y: i64,
}

#[derive(Debug, Serialize, Deserialize, loopback_singleton::Schema)]
pub enum CanvasError {
    Empty,
}

pub struct Canvas {
    title: String,
    points: Vec<Point>,
}

#[local_singleton]
impl Canvas {
    /// Kept untouched.
    pub const MAX: usize = 1024;

    #[init]
    pub fn new(title: &str, capacity: usize) -> Self {
        Canvas { title: title.to_owned(), points: Vec::with_capacity(capacity) }
    }

    /// Adds a point.
    pub fn draw(&mut self, point: Point) -> usize {
        self.points.push(point);
        self.points.len()
    }

    pub fn draw_ref(&mut self, point: &Point) {
        self.points.push(point.clone());
    }

    pub fn draw_all(&mut self, points: &[Point], mut times: u8) -> usize {
        while times > 0 {
            self.points.extend_from_slice(points);
            times -= 1;
        }
        self.points.len()
    }

    pub fn rename(&mut self, title: &str) -> String {
        std::mem::replace(&mut self.title, title.to_owned())
    }

    pub(crate) fn last(&self) -> Result<Point, CanvasError> {
        self.points.last().cloned().ok_or(CanvasError::Empty)
    }

    pub async fn count(&self) -> usize {
        self.points.len()
    }

    pub async fn clear(&mut self) -> Result<(), CanvasError> {
        self.points.clear();
        Ok(())
    }

    #[deprecated = "use `count`"]
    pub fn size(&self) -> (usize, u8) {
        (self.points.len(), 0)
    }

    #[cfg(any())]
    pub fn compiled_out(&self) {}

    #[allow(dead_code)]
    fn private_helper(&self) -> usize {
        Self::MAX
    }

    pub fn associated() -> u8 {
        1
    }
}

#[allow(dead_code, deprecated)]
fn use_client() -> Result<(), loopback_singleton::Error> {
    let canvas = CanvasClient::connect("sketch", 16)?;
    let _: usize = canvas.draw(Point { x: 1, y: 2 })?;
    canvas.draw_ref(&Point { x: 3, y: 4 })?;
    let _: usize = canvas.draw_all(&[Point { x: 5, y: 6 }], 2)?;
    let _: String = canvas.rename("renamed")?;
    let _: Result<Point, CanvasError> = canvas.last()?;
    let _: usize = canvas.count()?;
    let _: Result<(), CanvasError> = canvas.clear()?;
    let _: (usize, u8) = canvas.size()?;
    let _ = canvas.ping()?;
    canvas.ensure_started()?;
    let _ = canvas.clone().client();
    canvas.shutdown()
}

fn main() {
    let _ = Canvas::associated();
}
