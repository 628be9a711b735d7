use loopback_singleton::local_singleton;

pub struct Counter {
    value: u64,
}

#[local_singleton]
impl Counter {
    #[init]
    pub fn new(value: u64) -> Option<Self> {
        Some(Counter { value })
    }

    pub fn get(&self) -> u64 {
        self.value
    }
}

fn main() {}
