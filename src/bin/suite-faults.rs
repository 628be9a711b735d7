//! A client process for the fault tests (`tests/faults.rs`): racing starts, churning
//! connections, and a long-lived process that checks itself for leaks.
//!
//! ```text
//! suite-faults race          # prints "ready", waits for a line on stdin, then
//!                            # connect(0) and one inc(); prints "pid=P last=V"
//! suite-faults churn STOP    # connect(0) + get() + drop in a loop until the file STOP
//!                            # exists (at most 30 s); prints "rounds=N"
//! suite-faults leaks N EVERY # N x (connect(0), inc(), drop), shutting the daemon down
//!                            # every EVERY rounds; prints "rounds=N daemons=D
//!                            # zombies=Z fds_before=A fds_after=B"
//! ```
//! The singleton name comes from `SUITE_NAME`, the runtime dir from
//! `LOOPBACK_SINGLETON_DIR`. Errors go to stderr with exit status 1.

use std::collections::BTreeSet;
use std::io::BufRead;
use std::path::Path;
use std::time::{Duration, Instant};

use loopback_singleton_suite::{Counter, CounterClient};

fn main() {
    if let Err(error) = run() {
        eprintln!("error: {error}");
        std::process::exit(1);
    }
}

fn builder(name: &str) -> loopback_singleton::Builder<Counter> {
    CounterClient::builder()
        .name(name)
        .call_timeout(Duration::from_secs(20))
        .start_timeout(Duration::from_secs(20))
}

fn run() -> Result<(), loopback_singleton::Error> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let name = std::env::var("SUITE_NAME").expect("SUITE_NAME names the singleton");
    match args.first().map(String::as_str) {
        Some("race") => {
            println!("ready");
            let mut line = String::new();
            std::io::stdin()
                .lock()
                .read_line(&mut line)
                .expect("reading the go signal");
            let counter = builder(&name).connect(0)?;
            let last = counter.inc()?;
            println!("pid={} last={last}", counter.pid()?);
        }
        Some("churn") => {
            let stop = Path::new(&args[1]);
            let deadline = Instant::now() + Duration::from_secs(30);
            let mut rounds = 0u64;
            while !stop.exists() && Instant::now() < deadline {
                let counter = builder(&name).connect(0)?;
                counter.get()?;
                drop(counter);
                rounds += 1;
            }
            println!("rounds={rounds}");
        }
        Some("leaks") => {
            let rounds: u32 = args[1].parse().expect("a number");
            let every: u32 = args[2].parse().expect("a number");
            let fds_before = count_fds();
            let mut daemons = BTreeSet::new();
            for round in 1..=rounds {
                let counter = builder(&name).connect(0)?;
                counter.inc()?;
                daemons.insert(counter.pid()?);
                // The last round stops the daemon too: nothing of it is left to count.
                if round % every == 0 || round == rounds {
                    counter.shutdown()?;
                }
                drop(counter);
            }
            println!(
                "rounds={rounds} daemons={} zombies={} fds_before={fds_before} fds_after={}",
                daemons.len(),
                zombie_children(),
                count_fds()
            );
        }
        other => panic!("unknown command {other:?}"),
    }
    Ok(())
}

/// Open descriptors of this process.
fn count_fds() -> usize {
    std::fs::read_dir("/proc/self/fd")
        .expect("reading /proc/self/fd")
        .count()
}

/// Children of this process that exited and were never reaped.
fn zombie_children() -> usize {
    let me = std::process::id().to_string();
    let mut zombies = 0;
    for entry in std::fs::read_dir("/proc").expect("reading /proc").flatten() {
        let Ok(stat) = std::fs::read_to_string(entry.path().join("stat")) else {
            continue;
        };
        // Fields after the command name: state, ppid, ...
        let Some(at) = stat.rfind(')') else { continue };
        let mut fields = stat[at + 1..].split_whitespace();
        let (state, ppid) = (fields.next(), fields.next());
        if state == Some("Z") && ppid == Some(me.as_str()) {
            eprintln!("zombie child: {}", stat.trim());
            zombies += 1;
        }
    }
    zombies
}
