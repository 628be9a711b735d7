//! What the primary hosts: the requests secondaries send, the shared state that
//! queues messages and runs callbacks, and the service that hands one to the other.

use std::cell::Cell;
use std::collections::VecDeque;
use std::panic::{AssertUnwindSafe, catch_unwind};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc::{self};
use std::sync::{Arc, Condvar, Mutex, MutexGuard};

use serde::{Deserialize, Serialize};

use crate::client::{Client, lock};
use crate::error::Error;
use crate::options::ServeOptions;
use crate::protocol::Fingerprint;
use crate::service::{Dispatch, Service};

use super::*;

/// What a secondary sends after the handshake: method 0 or 1 of the host "service".
#[derive(Serialize, Deserialize)]
pub(super) enum Request<P> {
    Forward(Message<P>),
    Announce { pid: u32 },
}

/// The primary's answer to a secondary.
#[derive(Serialize, Deserialize)]
pub(super) struct Reply {
    pub(super) receipt: Receipt,
    pub(super) pid: u32,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub(super) enum Receipt {
    Delivered,
    Ignored,
    Counted,
    /// The primary is giving its role up: decide again.
    Closed,
}

#[derive(Debug, Clone, Copy, Default)]
pub(super) struct Limits {
    pub(super) release_threshold: Option<u64>,
    pub(super) max_clients: Option<u64>,
}

/// The instance the primary's host serves: hands each request to the shared state.
pub(super) struct Host<P: Payload> {
    pub(super) state: Arc<State<P>>,
}

impl<P: Payload> Service for Host<P> {
    type Request = Request<P>;
    /// The payload's type name: compared in the handshake (as init arguments are), so
    /// that a secondary with another payload type is refused instead of misread.
    type Init = String;
    type Client = Client<Self>;
    type AsyncClient = crate::AsyncClient<Self>;

    const NAME: &'static str = "single-instance";
    const SERVICE_ID: &'static str = "loopback_singleton::single_instance::Host";
    /// "SINGLE" and the version of the messages above.
    const SCHEMA: Fingerprint = 0x5349_4e47_4c45_0001;

    fn construct(_payload_type: String) -> Result<Self, String> {
        Err(
            "a single-instance primary runs in its own application, never in a spawned daemon"
                .into(),
        )
    }

    fn serve(_payload_type: String, _options: ServeOptions) -> Result<(), Error> {
        Err(Error::StartFailed {
            name: Self::NAME.into(),
            reason: "a single-instance primary hosts itself with `single_instance`".into(),
        })
    }

    fn dispatch<'a>(&'a mut self, request: Request<P>, out: &'a mut Vec<u8>) -> Dispatch<'a> {
        let reply = Reply {
            receipt: self.state.receive(request),
            pid: std::process::id(),
        };
        Dispatch::ready(&reply, out)
    }
}

thread_local! {
    /// Set while this thread delivers messages to callbacks: `release` from a callback
    /// must not wait for the host (whose instance thread runs the callback).
    pub(super) static IN_DELIVERY: Cell<bool> = const { Cell::new(false) };
}

/// Marks the current thread as delivering until dropped.
pub(super) struct Delivering {
    pub(super) was: bool,
}

impl Delivering {
    pub(super) fn enter() -> Self {
        Delivering {
            was: IN_DELIVERY.replace(true),
        }
    }
}

impl Drop for Delivering {
    fn drop(&mut self) {
        IN_DELIVERY.set(self.was);
    }
}

pub(super) struct Callback<P> {
    pub(super) id: u64,
    pub(super) active: AtomicBool,
    pub(super) call: Mutex<BoxedCallback<P>>,
}

pub(super) struct Queue<P> {
    pub(super) pending: VecDeque<Message<P>>,
    pub(super) callbacks: Vec<Arc<Callback<P>>>,
    pub(super) next_callback: u64,
    pub(super) secondaries: u64,
    /// No more messages are accepted: the role is being given up.
    pub(super) closed: bool,
    /// The host has stopped and unpublished itself.
    pub(super) released: bool,
}

/// Shared by the guard, the host's instance and the control thread.
pub(super) struct State<P> {
    pub(super) queue: Mutex<Queue<P>>,
    pub(super) changed: Condvar,
    /// Held while messages go to callbacks, so that a backlog handed to a new callback
    /// and newly arriving messages cannot overtake each other.
    pub(super) delivery: Mutex<()>,
    pub(super) limits: Limits,
    pub(super) verbose: bool,
    pub(super) control: Mutex<mpsc::Sender<()>>,
}

impl<P: Payload> State<P> {
    pub(super) fn new(limits: Limits, verbose: bool, control: mpsc::Sender<()>) -> Self {
        State {
            queue: Mutex::new(Queue {
                pending: VecDeque::new(),
                callbacks: Vec::new(),
                next_callback: 0,
                secondaries: 0,
                closed: false,
                released: false,
            }),
            changed: Condvar::new(),
            delivery: Mutex::new(()),
            limits,
            verbose,
            control: Mutex::new(control),
        }
    }

    pub(super) fn queue(&self) -> MutexGuard<'_, Queue<P>> {
        lock(&self.queue)
    }

    pub(super) fn request_release(&self) {
        let _ = lock(&self.control).send(());
    }

    pub(super) fn close(&self) {
        self.queue().closed = true;
        self.changed.notify_all();
    }

    /// One secondary's request, on the host's instance thread (one at a time).
    pub(super) fn receive(&self, request: Request<P>) -> Receipt {
        let _delivery = lock(&self.delivery);
        let _delivering = Delivering::enter();
        let mut queue = self.queue();
        if queue.closed {
            return Receipt::Closed;
        }
        queue.secondaries += 1;
        let seen = queue.secondaries;
        let threshold = self
            .limits
            .release_threshold
            .is_some_and(|threshold| seen >= threshold);
        if threshold {
            // Later secondaries are told to decide again; this one still gets through.
            queue.closed = true;
            self.request_release();
        }
        let receipt = match request {
            Request::Announce { .. } => Receipt::Counted,
            Request::Forward(_) if self.limits.max_clients.is_some_and(|max| seen > max) => {
                Receipt::Ignored
            }
            Request::Forward(message) if queue.callbacks.is_empty() => {
                queue.pending.push_back(message);
                Receipt::Delivered
            }
            Request::Forward(message) => {
                let callbacks = queue.callbacks.clone();
                drop(queue);
                self.run_callbacks(&callbacks, &message);
                self.changed.notify_all();
                return Receipt::Delivered;
            }
        };
        drop(queue);
        self.changed.notify_all();
        receipt
    }

    pub(super) fn add_callback(&self, callback: BoxedCallback<P>) -> CallbackId {
        // From inside a callback this thread already holds the delivery lock.
        let _delivery = (!IN_DELIVERY.get()).then(|| lock(&self.delivery));
        let _delivering = Delivering::enter();
        let (callback, backlog) = {
            let mut queue = self.queue();
            let callback = Arc::new(Callback {
                id: queue.next_callback,
                active: AtomicBool::new(true),
                call: Mutex::new(callback),
            });
            queue.next_callback += 1;
            queue.callbacks.push(Arc::clone(&callback));
            let backlog: Vec<_> = queue.pending.drain(..).collect();
            (callback, backlog)
        };
        let id = CallbackId(callback.id);
        let callbacks = [callback];
        for message in &backlog {
            self.run_callbacks(&callbacks, message);
        }
        id
    }

    pub(super) fn run_callbacks(&self, callbacks: &[Arc<Callback<P>>], message: &Message<P>) {
        for callback in callbacks {
            if !callback.active.load(Ordering::Acquire) {
                continue;
            }
            let mut call = lock(&callback.call);
            if let Err(panic) = catch_unwind(AssertUnwindSafe(|| (*call)(message))) {
                if self.verbose {
                    use std::io::Write;
                    let _ = writeln!(
                        std::io::stderr().lock(),
                        "loopback-singleton: a single-instance callback panicked: {}",
                        crate::service::panic_message(&*panic)
                    );
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use std::sync::mpsc::TryRecvError;

    use super::*;

    fn scratch() -> PathBuf {
        let dir = std::env::temp_dir().join(format!(
            "ls-single-{}-{:x}",
            std::process::id(),
            u64::from_le_bytes(crate::protocol::random_bytes())
        ));
        std::fs::create_dir_all(&dir).unwrap();
        dir
    }

    fn secondary(base: &PathBuf, argv: &[&str]) -> AnotherInstance {
        match SingleInstance::new("app")
            .runtime_dir(base)
            .argv(argv.iter().copied())
            .try_start()
            .unwrap()
        {
            Role::Secondary(other) => other,
            Role::Primary(_) => panic!("a second primary"),
        }
    }

    #[test]
    fn queue_callbacks_and_release_in_one_process() {
        let base = scratch();
        let Role::Primary(primary) = SingleInstance::new("app")
            .runtime_dir(&base)
            .try_start()
            .unwrap()
        else {
            panic!("the first launch must be primary");
        };
        let other = secondary(&base, &["prog", "a b", ""]);
        assert_eq!(other.primary_pid, std::process::id());
        assert_eq!(other.delivery, Delivery::Delivered);
        secondary(&base, &["prog", "second"]);
        assert_eq!(primary.pending().len(), 2);
        let first = primary.recv_timeout(Duration::from_secs(5)).unwrap();
        assert_eq!(first.args(), ["a b", ""]);
        assert_eq!(first.cwd, std::env::current_dir().unwrap());

        // A callback registered now gets the waiting message first, then new ones.
        let (tx, rx) = mpsc::channel();
        let id = primary.on_message(move |m| tx.send(m.args().to_vec()).unwrap());
        assert_eq!(rx.recv().unwrap(), ["second"]);
        secondary(&base, &["prog", "third"]);
        assert_eq!(rx.recv().unwrap(), ["third"]);
        assert!(primary.remove_callback(id));
        assert!(!primary.remove_callback(id));
        secondary(&base, &["prog", "fourth"]);
        assert_eq!(primary.try_recv().unwrap().args(), ["fourth"]);
        assert_eq!(primary.secondaries(), 4);

        primary.release();
        primary.release();
        assert!(primary.is_released());
        assert!(matches!(
            primary.try_recv(),
            Err(TryRecvError::Disconnected)
        ));
        // The role is free again.
        let Role::Primary(next) = SingleInstance::new("app")
            .runtime_dir(&base)
            .try_start()
            .unwrap()
        else {
            panic!("after release, the next launch must be primary");
        };
        drop(next);
        let _ = std::fs::remove_dir_all(&base);
    }

    #[test]
    fn payload_type_is_checked_in_the_handshake() {
        let base = scratch();
        let Role::Primary(_primary) = SingleInstance::<u32>::typed("app")
            .runtime_dir(&base)
            .try_start()
            .unwrap()
        else {
            panic!("the first launch must be primary");
        };
        let wrong = SingleInstance::<String>::typed("app")
            .runtime_dir(&base)
            .payload("x".into())
            .try_start();
        assert!(
            matches!(wrong, Err(Error::InitMismatch { .. })),
            "{wrong:?}"
        );
        let right = SingleInstance::<u32>::typed("app")
            .runtime_dir(&base)
            .payload(7)
            .try_start()
            .unwrap();
        assert!(matches!(right, Role::Secondary(_)));
        assert_eq!(
            _primary.try_recv().unwrap().payload,
            Some(7),
            "the typed payload arrives"
        );
        let _ = std::fs::remove_dir_all(&base);
    }
}
