//! The quickstart: one counter shared by every process of this user.
//!
//! ```text
//! cargo run --example counter   # prints 12 (a daemon starts, counting from 10 by 2)
//! cargo run --example counter   # prints 14: the same daemon, still counting
//! ```
//!
//! The daemon retires by itself once no client has been connected for its idle TTL
//! (5 s here); the next run then starts from 10 again.

use std::time::Duration;

use loopback_singleton::local_singleton;

/// The shared object. It lives in the daemon; clients only ever hold a `CounterClient`.
pub struct Counter {
    value: u64,
    step: u64,
}

#[local_singleton]
impl Counter {
    /// Runs once, inside the daemon. Its parameters become `connect`'s parameters.
    #[init]
    pub fn new(start: u64, step: u64) -> Self {
        Counter { value: start, step }
    }

    /// Adds the step and returns the new value.
    pub fn inc(&mut self) -> u64 {
        self.value += self.step;
        self.value
    }

    /// The current value.
    pub fn get(&self) -> u64 {
        self.value
    }
}

fn main() -> Result<(), loopback_singleton::Error> {
    let counter = CounterClient::builder()
        .idle_ttl(Duration::from_secs(5))
        .connect((10, 2))?; // finds or starts the daemon
    let value = counter.inc()?;
    let info = counter.ping()?;
    println!("{value}");
    eprintln!(
        "(daemon pid {}, up {:.1?}, {} calls served)",
        info.pid, info.uptime, info.calls_served
    );
    Ok(())
}
