use loopback_singleton::local_singleton;

#[derive(Default)]
pub struct Counter {
    value: u64,
}

#[local_singleton]
impl Counter {
    pub fn add(&mut self, by: impl Into<u64>) -> u64 {
        self.value += by.into();
        self.value
    }
}

fn main() {}
