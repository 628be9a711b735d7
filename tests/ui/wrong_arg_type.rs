use loopback_singleton::local_singleton;

#[derive(Default)]
pub struct Counter {
    value: u64,
}

#[local_singleton]
impl Counter {
    pub fn add(&mut self, by: u64) -> u64 {
        self.value += by;
        self.value
    }
}

fn main() {
    let counter = CounterClient::connect().unwrap();
    let _ = counter.add("one");
}
