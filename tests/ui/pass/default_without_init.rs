//! Without `#[init]`, the daemon builds the instance with `Default`, and `connect` takes
//! no arguments.

use loopback_singleton::local_singleton;

#[derive(Default)]
pub struct Counter {
    value: u64,
}

#[local_singleton]
impl Counter {
    pub fn inc(&mut self) -> u64 {
        self.value += 1;
        self.value
    }

    pub fn get(&self) -> u64 {
        self.value
    }
}

#[allow(dead_code)]
fn use_client() -> Result<u64, loopback_singleton::Error> {
    let counter = CounterClient::connect()?;
    counter.inc()?;
    counter.get()
}

fn main() {}
