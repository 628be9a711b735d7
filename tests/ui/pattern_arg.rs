use loopback_singleton::local_singleton;

#[derive(Default)]
pub struct Counter {
    value: u64,
}

#[local_singleton]
impl Counter {
    pub fn add_pair(&mut self, (a, b): (u64, u64)) -> u64 {
        self.value += a + b;
        self.value
    }
}

fn main() {}
