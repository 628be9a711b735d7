use loopback_singleton::local_singleton;

#[derive(Default)]
pub struct Link {
    up: bool,
}

#[local_singleton]
impl Link {
    pub fn connect(&mut self) -> bool {
        self.up = true;
        self.up
    }
}

fn main() {}
