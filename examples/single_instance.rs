//! A single-instance application: the first launch is the primary and prints what later
//! launches send it; a later launch hands over its arguments and working directory, then
//! exits.
//!
//! ```text
//! terminal 1:  cargo run --example single_instance
//! terminal 2:  cargo run --example single_instance -- open "my file.txt"
//! ```
//!
//! Terminal 1 then prints `pid 4242 in /home/me/project: ["open", "my file.txt"]`, and
//! terminal 2 exits at once. Stop the primary with Ctrl-C; the next launch takes over.

use loopback_singleton::{Role, SingleInstance};

fn main() -> Result<(), loopback_singleton::Error> {
    // `SingleInstance::new(NAME).start()` (or `single_instance(NAME)`) would exit a
    // secondary with status 0 by itself; `try_start` lets it say so first.
    let primary = match SingleInstance::new("loopback-singleton-example").try_start()? {
        Role::Primary(primary) => primary,
        Role::Secondary(other) => {
            println!(
                "{other}: handed it {:?}",
                std::env::args().skip(1).collect::<Vec<_>>()
            );
            return Ok(());
        }
    };
    println!(
        "primary (pid {}); run `cargo run --example single_instance -- ARGS...` elsewhere",
        std::process::id()
    );
    for message in primary.messages() {
        println!(
            "pid {} in {}: {:?}",
            message.pid,
            message.cwd.display(),
            message.args()
        );
    }
    Ok(())
}
