use loopback_singleton::local_singleton;

#[derive(Default)]
pub struct Counter {
    value: u64,
}

#[local_singleton(name = "../escape")]
impl Counter {
    pub fn get(&self) -> u64 {
        self.value
    }
}

fn main() {}
