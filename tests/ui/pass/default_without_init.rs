//! Without `#[init]`, the daemon builds the instance with `Default`, and `connect` takes
//! no arguments. Without `name = "..."`, the singleton name is `<crate>.<Type>`.

use loopback_singleton::{Service, local_singleton};

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

fn main() {
    // Computed by the macro at expansion: the same as the compiler's own `CARGO_PKG_NAME`.
    assert_eq!(
        <Counter as Service>::NAME,
        concat!(env!("CARGO_PKG_NAME"), ".Counter")
    );
}
