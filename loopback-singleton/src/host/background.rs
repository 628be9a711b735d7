//! A host on background threads of the calling process (what a single-instance
//! primary runs): no fork, no global logging (its events go to its own `daemon.log`).

use std::sync::Arc;
use std::sync::atomic::Ordering;

use crate::error::Error;
use crate::runtime_dir::RuntimeDir;
use crate::service::Service;
use crate::spawn::{Launch, ReadySender};

use super::*;
/// A service hosted on background threads of the calling process, not in a detached
/// daemon: no fork, nothing on the application's stderr (see `log`). What a
/// single-instance primary runs. [`stop`](Self::stop) asks it to retire;
/// [`join`](Self::join) waits until it has unpublished itself and dropped the instance.
pub(crate) struct Background {
    shared: Arc<Shared>,
    thread: Option<std::thread::JoinHandle<()>>,
}

/// Starts `S` in this process (the start lock, if needed, is the caller's to hold):
/// returns once it is published and accepting.
pub(crate) fn start_background<S: Service>(
    dir: RuntimeDir,
    launch: Launch,
    construct: Construct<S>,
) -> Result<Background, Error> {
    // Its events go to its own `daemon.log` through a dispatcher of the host's threads,
    // never to the application's stderr or subscriber (see `log`).
    let host_log = log::open(&dir);
    let started = log::scoped(Some(host_log.clone()), || {
        start::<S>(
            &dir,
            launch,
            construct,
            &mut ReadySender::none(),
            PREDECESSOR_WAIT,
        )
    })?;
    let shared = Arc::clone(&started.shared);
    let thread = std::thread::Builder::new()
        .name("loopback-singleton-front".into())
        .spawn(move || {
            log::set(Some(host_log));
            let _ = started.serve(&dir, Signals::Ignore);
        })
        .map_err(|error| Error::io("spawning the front thread", error))?;
    Ok(Background {
        shared,
        thread: Some(thread),
    })
}

impl Background {
    /// Asks the host to retire (new handshakes are refused from now on); returns at once.
    pub(crate) fn stop(&self) {
        self.shared.shutting_down.store(true, Ordering::Release);
        self.shared.wake_front.notify_one();
    }

    /// Waits until the host has retired: unpublished, listener closed, instance dropped.
    pub(crate) fn join(mut self) {
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}
