//! Another build of "the same" service for the version-skew test (`tests/faults.rs`): it
//! shares `suite-counter`'s name and init arguments with `loopback_singleton_suite::Counter`
//! but not its methods (`inc` takes an argument here), so its schema fingerprint differs.
//!
//! ```text
//! suite-client-v2 inc START BY   # connect(START), inc(BY); prints "schema=HEX pid=P last=V"
//! ```
//! On failure it prints `schema=HEX` and then `error: ...` to stderr, exit status 1.
//! The singleton name comes from `SUITE_NAME`, the runtime dir from
//! `LOOPBACK_SINGLETON_DIR`.

use loopback_singleton::{Service, local_singleton};

/// The "next version" of the suite's counter.
pub struct Counter {
    value: u64,
}

#[local_singleton(name = "suite-counter")]
impl Counter {
    /// Starts at `start` (same init arguments as version 1).
    #[init]
    pub fn new(start: u64) -> Self {
        Counter { value: start }
    }

    /// Adds `by` (version 1 adds one and takes nothing).
    pub fn inc(&mut self, by: u32) -> u64 {
        self.value += u64::from(by);
        self.value
    }

    /// The daemon's process id.
    pub fn pid(&self) -> u32 {
        std::process::id()
    }
}

fn main() {
    let schema = <Counter as Service>::SCHEMA;
    if let Err(error) = run() {
        eprintln!("schema={schema:016x}");
        eprintln!("error: {error}");
        if let loopback_singleton::Error::SchemaMismatch { client, daemon, .. } = error {
            eprintln!("schema-mismatch client={client:016x} daemon={daemon:016x}");
        }
        std::process::exit(1);
    }
}

fn run() -> Result<(), loopback_singleton::Error> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let name = std::env::var("SUITE_NAME").expect("SUITE_NAME names the singleton");
    let number = |i: usize| -> u64 { args[i].parse().expect("a number") };
    match args.first().map(String::as_str) {
        Some("inc") => {
            let counter = CounterClient::builder().name(name).connect(number(1))?;
            let last = counter.inc(number(2) as u32)?;
            println!(
                "schema={:016x} pid={} last={last}",
                <Counter as Service>::SCHEMA,
                counter.pid()?
            );
        }
        other => panic!("unknown command {other:?}"),
    }
    Ok(())
}
