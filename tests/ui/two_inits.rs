use loopback_singleton::local_singleton;

pub struct Counter {
    value: u64,
}

#[local_singleton]
impl Counter {
    #[init]
    pub fn new() -> Self {
        Counter { value: 0 }
    }

    #[init]
    pub fn starting_at(value: u64) -> Self {
        Counter { value }
    }

    pub fn get(&self) -> u64 {
        self.value
    }
}

fn main() {}
