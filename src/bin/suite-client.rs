//! A client process for the integration tests: each run is one real process talking to
//! the shared daemon, as a user's programs would.
//!
//! ```text
//! suite-client inc START COUNT      # connect(START), COUNT x inc(); prints "pid=P last=V"
//!                                   # and "transport=T served-over=D" (this client's
//!                                   # transport, and the daemon's word on it)
//! suite-client get START            # prints "pid=P value=V"
//! suite-client fragile MODE         # connect Fragile (ok|panic|error); prints "hello"
//! suite-client limits [BUMP]        # connect Limits::standard(BUMP); prints "pid=P order=O"
//! suite-client serve-limits         # prints "order=O", then hosts Limits::standard(None)
//!                                   # itself (Service::serve) until shut down
//! ```
//! The singleton name comes from `SUITE_NAME`, the runtime dir from
//! `LOOPBACK_SINGLETON_DIR`; `SUITE_TRANSPORT`, if set, is passed to
//! `builder().transport(..)`. Errors go to stderr (Display, then Debug on a `debug: `
//! line) with exit status 1, except that
//! `limits` reports `InitMismatch` on stdout (`wanted=...` and `running=...` lines)
//! with exit status 3.

use std::io::Write;
use std::time::Duration;

use loopback_singleton::{Error, ServeOptions, Service, Transport};
use loopback_singleton_suite::{CounterClient, FragileClient, Limits, LimitsClient};

fn main() {
    if let Err(error) = run() {
        eprintln!("error: {error}\ndebug: {error:?}");
        std::process::exit(1);
    }
}

fn run() -> Result<(), loopback_singleton::Error> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let name = std::env::var("SUITE_NAME").expect("SUITE_NAME names the singleton");
    let number = |i: usize| -> u64 { args[i].parse().expect("a number") };
    match args.first().map(String::as_str) {
        Some("inc") => {
            let mut builder = CounterClient::builder().name(name);
            if let Ok(transport) = std::env::var("SUITE_TRANSPORT") {
                builder = builder.transport(
                    Transport::from_name(&transport).expect("SUITE_TRANSPORT: tcp|unix|shm"),
                );
            }
            let counter = builder.connect(number(1))?;
            let mut last = 0;
            for _ in 0..number(2) {
                last = counter.inc()?;
            }
            println!("pid={} last={last}", counter.pid()?);
            println!(
                "transport={} served-over={}",
                counter.client().transport(),
                counter.ping()?.transport
            );
        }
        Some("get") => {
            let counter = CounterClient::builder().name(name).connect(number(1))?;
            println!("pid={} value={}", counter.pid()?, counter.get()?);
        }
        Some("fragile") => {
            let fragile = FragileClient::builder()
                .name(name)
                .connect(args[1].clone())?;
            println!("{}", fragile.hello()?);
        }
        Some("limits") => {
            let bump = args
                .get(1)
                .map(|bump| bump.parse().expect("an entry number"));
            let limits = Limits::standard(bump);
            let order = Limits::order(&limits);
            match LimitsClient::builder().name(name).connect(limits) {
                Ok(client) => println!("pid={} order={order}", client.pid()?),
                Err(Error::InitMismatch {
                    wanted, running, ..
                }) => {
                    println!("init-mismatch order={order}\nwanted={wanted}\nrunning={running}");
                    std::process::exit(3);
                }
                Err(other) => return Err(other),
            }
        }
        Some("serve-limits") => {
            let limits = Limits::standard(None);
            println!("order={}", Limits::order(&limits));
            std::io::stdout().flush().expect("stdout");
            let options = ServeOptions::default()
                .name(name)
                .idle_ttl(Some(Duration::from_secs(30)));
            Limits::serve(limits, options)?;
        }
        other => panic!("unknown command {other:?}"),
    }
    Ok(())
}
