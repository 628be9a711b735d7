use loopback_singleton::local_singleton;

#[derive(Default)]
pub struct Counter {
    value: u64,
}

#[local_singleton]
impl Counter {
    pub fn into_value(self) -> u64 {
        self.value
    }
}

fn main() {}
