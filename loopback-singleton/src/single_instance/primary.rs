//! [`Primary`]: the first launch, which receives what later launches hand over.

use std::fmt;
use std::sync::atomic::Ordering;
use std::sync::mpsc::{self, RecvTimeoutError, TryRecvError};
use std::sync::{Arc, Mutex, PoisonError};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use crate::client::lock;
use crate::host;

use super::*;

/// The guard of the primary role: holds it until dropped or [`release`](Self::release)d,
/// and receives the secondaries' messages.
///
/// Messages go to the registered callbacks when there is at least one (every callback
/// gets every message, on a background thread, one message at a time, in arrival order);
/// otherwise they wait in a queue read with [`recv`](Self::recv),
/// [`messages`](Self::messages) and the like. A callback registered later first gets the
/// messages that waited. `Primary` is `Send + Sync`: share it with `Arc` or scoped
/// threads.
///
/// ```no_run
/// use loopback_singleton::single_instance;
///
/// let primary = single_instance("my-app")?;
/// let id = primary.on_message(|m| println!("{} asked for {:?}", m.pid, m.args()));
/// // ... run the application ...
/// primary.remove_callback(id);
/// println!("{} later launches so far", primary.secondaries());
/// primary.release(); // another launch may become primary now
/// # Ok::<(), loopback_singleton::Error>(())
/// ```
pub struct Primary<P: Payload = ()> {
    name: String,
    state: Arc<State<P>>,
    controller: Mutex<Option<JoinHandle<()>>>,
}

impl<P: Payload> fmt::Debug for Primary<P> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let queue = self.state.queue();
        f.debug_struct("Primary")
            .field("name", &self.name)
            .field("secondaries", &queue.secondaries)
            .field("pending", &queue.pending.len())
            .field("callbacks", &queue.callbacks.len())
            .field("released", &queue.released)
            .finish()
    }
}

impl<P: Payload> Primary<P> {
    pub(super) fn new(
        name: String,
        state: Arc<State<P>>,
        host: host::Background,
        requests: mpsc::Receiver<()>,
        hold: Option<Duration>,
    ) -> Self {
        let controlled = Arc::clone(&state);
        let controller = std::thread::Builder::new()
            .name("loopback-singleton-primary".into())
            .spawn(move || {
                match hold {
                    Some(hold) => drop(requests.recv_timeout(hold)),
                    None => drop(requests.recv()),
                }
                controlled.close();
                host.stop();
                host.join();
                controlled.queue().released = true;
                controlled.changed.notify_all();
            });
        let controller = match controller {
            Ok(thread) => Some(thread),
            Err(error) => panic!("cannot spawn the primary's control thread: {error}"),
        };
        Primary {
            name,
            state,
            controller: Mutex::new(controller),
        }
    }

    /// The single-instance name.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// Calls `callback` with every delivered message until removed. Messages that
    /// waited in the queue go to it first, in order. Callbacks run on a background
    /// thread; a panic in one is caught (and logged when verbose).
    pub fn on_message(&self, callback: impl FnMut(&Message<P>) + Send + 'static) -> CallbackId {
        self.state.add_callback(Box::new(callback))
    }

    /// Removes a callback; it gets no message after this returns (unless called from
    /// within that callback's own invocation, which completes). Returns whether it was
    /// registered.
    pub fn remove_callback(&self, id: CallbackId) -> bool {
        let mut queue = self.state.queue();
        match queue
            .callbacks
            .iter()
            .position(|callback| callback.id == id.0)
        {
            Some(at) => {
                let callback = queue.callbacks.remove(at);
                callback.active.store(false, Ordering::Release);
                true
            }
            None => false,
        }
    }

    /// The next queued message, waiting for one; `None` once the role is given up and
    /// the queue is empty. (While callbacks are registered, messages go to them instead.)
    pub fn recv(&self) -> Option<Message<P>> {
        let mut queue = self.state.queue();
        loop {
            if let Some(message) = queue.pending.pop_front() {
                return Some(message);
            }
            if queue.closed {
                return None;
            }
            queue = self
                .state
                .changed
                .wait(queue)
                .unwrap_or_else(PoisonError::into_inner);
        }
    }

    /// [`recv`](Self::recv) with a limit: `Disconnected` once the role is given up and
    /// the queue is empty.
    pub fn recv_timeout(&self, timeout: Duration) -> Result<Message<P>, RecvTimeoutError> {
        let deadline = Instant::now() + timeout;
        let mut queue = self.state.queue();
        loop {
            if let Some(message) = queue.pending.pop_front() {
                return Ok(message);
            }
            if queue.closed {
                return Err(RecvTimeoutError::Disconnected);
            }
            let now = Instant::now();
            if now >= deadline {
                return Err(RecvTimeoutError::Timeout);
            }
            queue = self
                .state
                .changed
                .wait_timeout(queue, deadline - now)
                .unwrap_or_else(PoisonError::into_inner)
                .0;
        }
    }

    /// The next queued message if there is one.
    pub fn try_recv(&self) -> Result<Message<P>, TryRecvError> {
        let mut queue = self.state.queue();
        match queue.pending.pop_front() {
            Some(message) => Ok(message),
            None if queue.closed => Err(TryRecvError::Disconnected),
            None => Err(TryRecvError::Empty),
        }
    }

    /// A blocking iterator over queued messages (see [`recv`](Self::recv)); it ends
    /// once the role is given up and the queue is drained.
    ///
    /// ```no_run
    /// let primary = loopback_singleton::single_instance("my-app")?;
    /// for message in primary.messages() {
    ///     println!("{:?} in {}", message.args(), message.cwd.display());
    /// }
    /// # Ok::<(), loopback_singleton::Error>(())
    /// ```
    pub fn messages(&self) -> Messages<'_, P> {
        Messages { primary: self }
    }

    /// How many secondaries have reached this primary so far, whether their messages
    /// were delivered, ignored ([`SingleInstance::max_clients`]) or not sent.
    pub fn secondaries(&self) -> u64 {
        self.state.queue().secondaries
    }

    /// A snapshot of the messages waiting in the queue, oldest first (they stay
    /// queued).
    pub fn pending(&self) -> Vec<Message<P>>
    where
        P: Clone,
    {
        self.state.queue().pending.iter().cloned().collect()
    }

    /// Whether the role has been given up (by [`release`](Self::release), the hold
    /// timeout or the release threshold).
    pub fn is_released(&self) -> bool {
        self.state.queue().released
    }

    /// Waits until the role has been given up, at most `timeout` (`None`: no limit);
    /// returns whether it was.
    pub fn wait_released(&self, timeout: Option<Duration>) -> bool {
        let deadline = timeout.map(|timeout| Instant::now() + timeout);
        let mut queue = self.state.queue();
        while !queue.released {
            queue = match deadline {
                None => self
                    .state
                    .changed
                    .wait(queue)
                    .unwrap_or_else(PoisonError::into_inner),
                Some(deadline) => {
                    let now = Instant::now();
                    if now >= deadline {
                        return false;
                    }
                    self.state
                        .changed
                        .wait_timeout(queue, deadline - now)
                        .unwrap_or_else(PoisonError::into_inner)
                        .0
                }
            };
        }
        true
    }

    /// Gives the role up: stops accepting secondaries, unpublishes this primary, and
    /// returns once another launch can become primary. Idempotent. Messages already
    /// queued stay readable. Called from inside a callback, it only asks (the role is
    /// given up right after the callback returns).
    pub fn release(&self) {
        self.state.request_release();
        if IN_DELIVERY.get() {
            return;
        }
        let controller = lock(&self.controller).take();
        match controller {
            Some(thread) => {
                let _ = thread.join();
            }
            None => {
                self.wait_released(None);
            }
        }
    }
}

impl<P: Payload> Drop for Primary<P> {
    fn drop(&mut self) {
        self.release();
    }
}

/// The blocking iterator of [`Primary::messages`].
#[derive(Debug)]
pub struct Messages<'a, P: Payload = ()> {
    primary: &'a Primary<P>,
}

impl<P: Payload> Iterator for Messages<'_, P> {
    type Item = Message<P>;

    fn next(&mut self) -> Option<Message<P>> {
        self.primary.recv()
    }
}

impl<'a, P: Payload> IntoIterator for &'a Primary<P> {
    type Item = Message<P>;
    type IntoIter = Messages<'a, P>;

    fn into_iter(self) -> Messages<'a, P> {
        self.messages()
    }
}

// ---------------------------------------------------------------------------------------
// The primary's side: a hand-written `Service` whose one request is a secondary's message.
