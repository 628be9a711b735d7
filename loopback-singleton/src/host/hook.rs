//! The pre-main hook: a process launched as a daemon becomes one before `main`.

use std::panic::{AssertUnwindSafe, catch_unwind};

use crate::runtime_dir::RuntimeDir;
use crate::service::Service;
use crate::spawn::{self, Launch, Readiness, ReadySender};
use crate::sys;

use super::*;
/// The pre-main hook emitted by `#[local_singleton]`: becomes the daemon of `S` if this
/// process was launched as one, else returns and lets the program run.
#[doc(hidden)]
pub fn daemon_hook<S: Service>() {
    let Some((launch, ready)) = spawn::take_launch(S::SERVICE_ID) else {
        return;
    };
    // A panic must not unwind out of the pre-main hook, which would abort the process
    // without a word; the daemon's own failures are reported and logged inside.
    let code = catch_unwind(AssertUnwindSafe(|| become_daemon::<S>(launch, ready))).unwrap_or_else(
        |panic| {
            let message = panic_message(&*panic);
            log::emit(|| tracing::error!("exiting on a panic: {message}"));
            101
        },
    );
    std::process::exit(code);
}

fn become_daemon<S: Service>(launch: Result<Launch, String>, mut ready: ReadySender) -> i32 {
    match launch {
        Err(reason) => {
            ready.send(&Readiness::Failed { reason });
            1
        }
        Ok(launch) => match sys::detach() {
            Err(error) => {
                ready.send(&Readiness::Failed {
                    reason: format!("fork: {error}"),
                });
                1
            }
            Ok(()) => run_launched::<S>(launch, ready),
        },
    }
}

fn run_launched<S: Service>(launch: Launch, mut ready: ReadySender) -> i32 {
    // The directory the client checked: it made it our working directory.
    let dir = match RuntimeDir::adopt_current(&launch.base, &launch.name) {
        Ok(dir) => dir,
        Err(error) => {
            ready.send(&Readiness::Failed {
                reason: error.to_string(),
            });
            return 1;
        }
    };
    log::install_daemon(log::open(&dir));
    // The client waited for the predecessor to be gone before it spawned us, under the
    // start lock we share: the wait below is a safeguard.
    match run::<S>(&dir, launch, ready, None, PREDECESSOR_WAIT) {
        Ok(()) => 0,
        Err(error) => {
            log::emit(|| tracing::error!("exiting on error: {error}"));
            1
        }
    }
}
