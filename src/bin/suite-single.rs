//! A single-instance application for the integration tests (`tests/single_instance.rs`):
//! each run is one real launch deciding whether it is the primary.
//!
//! The name comes from `SUITE_NAME`, the runtime dir from `LOOPBACK_SINGLETON_DIR`;
//! options from `SINGLE_MODE` (`strict`, default, or `try`), `SINGLE_HOLD_MS`,
//! `SINGLE_RELEASE_THRESHOLD`, `SINGLE_MAX_CLIENTS`, `SINGLE_FORWARD` (`0` to only
//! announce) and `SINGLE_DELIVERY` (`iter`, default; `callback`; `none` to leave messages
//! queued). Every argument is forwarded.
//!
//! A primary prints `primary pid=P`, then `msg pid=P cwd=DEBUG args=DEBUG` per message
//! and `released secondaries=N` once it gives the role up, and reads commands from stdin
//! until EOF: `release` (prints `release-returned`), `status` (prints
//! `status secondaries=N pending=M`), `pending` (prints `pending args=DEBUG` per queued
//! message, then `pending-end`). A `try` secondary prints
//! `secondary primary_pid=P delivery=D`; a strict one exits with status 0 silently.

use std::io::BufRead;
use std::time::Duration;

use loopback_singleton::{Message, Primary, Role, SingleInstance};

fn var(name: &str) -> Option<String> {
    std::env::var(name).ok().filter(|value| !value.is_empty())
}

fn number(name: &str) -> Option<u64> {
    var(name).map(|value| value.parse().expect("a number"))
}

fn print_message(message: &Message) {
    println!(
        "msg pid={} cwd={:?} args={:?}",
        message.pid,
        message.cwd,
        message.args()
    );
}

fn main() {
    let name = var("SUITE_NAME").expect("SUITE_NAME names the single instance");
    let delivery = var("SINGLE_DELIVERY").unwrap_or_else(|| "iter".into());
    let mut launch =
        SingleInstance::new(name).forward(var("SINGLE_FORWARD").as_deref() != Some("0"));
    if let Some(ms) = number("SINGLE_HOLD_MS") {
        launch = launch.hold_timeout(Duration::from_millis(ms));
    }
    if let Some(n) = number("SINGLE_RELEASE_THRESHOLD") {
        launch = launch.release_threshold(n);
    }
    if let Some(n) = number("SINGLE_MAX_CLIENTS") {
        launch = launch.max_clients(n);
    }
    if delivery == "callback" {
        launch = launch.on_message(print_message);
    }
    let primary = if var("SINGLE_MODE").as_deref() == Some("try") {
        match launch.try_start() {
            Ok(Role::Primary(primary)) => primary,
            Ok(Role::Secondary(other)) => {
                println!(
                    "secondary primary_pid={} delivery={:?}",
                    other.primary_pid, other.delivery
                );
                return;
            }
            Err(error) => fail(error),
        }
    } else {
        launch.start().unwrap_or_else(|error| fail(error))
    };
    println!("primary pid={}", std::process::id());
    serve(&primary, &delivery);
}

fn fail(error: loopback_singleton::Error) -> ! {
    eprintln!("error: {error}");
    std::process::exit(1);
}

fn serve(primary: &Primary, delivery: &str) {
    std::thread::scope(|scope| {
        scope.spawn(|| {
            primary.wait_released(None);
            println!("released secondaries={}", primary.secondaries());
        });
        if delivery == "iter" {
            scope.spawn(|| {
                for message in primary.messages() {
                    print_message(&message);
                }
            });
        }
        for line in std::io::stdin().lock().lines() {
            let Ok(line) = line else { break };
            match line.trim() {
                "release" => {
                    primary.release();
                    println!("release-returned");
                }
                "status" => println!(
                    "status secondaries={} pending={}",
                    primary.secondaries(),
                    primary.pending().len()
                ),
                "pending" => {
                    for message in primary.pending() {
                        println!("pending args={:?}", message.args());
                    }
                    println!("pending-end");
                }
                other => println!("unknown command {other:?}"),
            }
        }
        // Stdin closed: give the role up so that the scoped threads end.
        primary.release();
    });
}
