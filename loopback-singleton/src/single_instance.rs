//! Single-instance applications: the first launch becomes the **primary**, every later
//! launch (a **secondary**) hands the primary its arguments and working directory, then
//! exits.
//!
//! Built on the same machinery as the daemons: the per-user runtime directory, the start
//! lock, the mutual handshake under a per-primary secret, and the daemon's serving loop,
//! here run on background threads of the primary application instead of a detached
//! process. Deciding who is primary is the daemons' find-or-start: probe for a live
//! primary (metadata, pid plus start time, handshake); if none answers, take the start
//! lock, probe again under it, clean stale files, and become the primary — binding and
//! publishing before the lock is released, so that of N simultaneous launches exactly one
//! becomes primary and the others find it.
//!
//! ```no_run
//! use loopback_singleton::single_instance;
//!
//! fn main() -> Result<(), loopback_singleton::Error> {
//!     // A second launch forwards its argv and cwd to the first, then exits with status 0.
//!     let primary = single_instance("my-editor")?;
//!     for message in primary.messages() {
//!         println!("open {:?} (from {})", message.args(), message.cwd.display());
//!     }
//!     Ok(())
//! }
//! ```

use std::cell::Cell;
use std::collections::VecDeque;
use std::fmt;
use std::panic::{AssertUnwindSafe, catch_unwind};
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc::{self, RecvTimeoutError, TryRecvError};
use std::sync::{Arc, Condvar, Mutex, MutexGuard, PoisonError};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};

use crate::client::{Builder, Client, FoundOrStarted, lock};
use crate::error::Error;
use crate::host;
use crate::options::ServeOptions;
use crate::protocol::{Fingerprint, RemoteError};
use crate::service::{Dispatch, Service};

/// What a secondary may send along with its argv and cwd: any owned serde type.
///
/// Primary and secondaries must agree on the type (it is part of the handshake: a
/// secondary built with another payload type gets [`Error::InitMismatch`] naming both).
pub trait Payload: Serialize + DeserializeOwned + Send + 'static {}

impl<T: Serialize + DeserializeOwned + Send + 'static> Payload for T {}

/// What one secondary launch handed the primary. Arrives whole, in arrival order.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[non_exhaustive]
pub struct Message<P = ()> {
    /// The secondary's full argv, program first (what [`std::env::args`] returns;
    /// arguments that are not valid UTF-8 are converted lossily).
    pub argv: Vec<String>,
    /// The secondary's working directory (relative paths in `argv` are relative to it).
    pub cwd: PathBuf,
    /// The secondary's process id.
    pub pid: u32,
    /// The typed payload, if the secondary set one with [`SingleInstance::payload`].
    pub payload: Option<P>,
}

impl<P> Message<P> {
    /// The arguments without the program name (`argv[1..]`).
    ///
    /// ```
    /// # fn check(message: &loopback_singleton::Message) {
    /// for path in message.args() {
    ///     println!("open {}", message.cwd.join(path).display());
    /// }
    /// # }
    /// ```
    pub fn args(&self) -> &[String] {
        self.argv.get(1..).unwrap_or_default()
    }
}

/// What became of a secondary's message.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum Delivery {
    /// The primary took it: it went to the callbacks, or waits in the queue.
    Delivered,
    /// The primary counted this secondary but dropped its message: more secondaries
    /// came than [`SingleInstance::max_clients`] allows.
    Ignored,
    /// Nothing was sent ([`SingleInstance::forward`]`(false)`); the primary counted
    /// this secondary.
    NotSent,
}

/// The typed "another instance is primary" value that [`SingleInstance::try_start`]
/// returns to a secondary (the non-strict mode), after forwarding its message.
///
/// ```no_run
/// use loopback_singleton::{Role, SingleInstance};
///
/// match SingleInstance::new("my-app").try_start()? {
///     Role::Primary(primary) => { /* run the application */ }
///     Role::Secondary(other) => eprintln!("{other}"),
/// }
/// # Ok::<(), loopback_singleton::Error>(())
/// ```
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct AnotherInstance {
    /// The single-instance name.
    pub name: String,
    /// The primary's process id.
    pub primary_pid: u32,
    /// What became of this launch's message.
    pub delivery: Delivery,
}

impl fmt::Display for AnotherInstance {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "another instance of `{}` is primary (pid {})",
            self.name, self.primary_pid
        )
    }
}

impl std::error::Error for AnotherInstance {}

/// The outcome of [`SingleInstance::try_start`].
#[derive(Debug)]
pub enum Role<P: Payload = ()> {
    /// This process is the primary; the guard holds the role.
    Primary(Primary<P>),
    /// Another process is the primary and has this launch's message.
    Secondary(AnotherInstance),
}

/// Identifies a callback registered with [`Primary::on_message`], to remove it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct CallbackId(u64);

type BoxedCallback<P> = Box<dyn FnMut(&Message<P>) + Send>;

/// Configures a single-instance launch; [`start`](Self::start) (strict) or
/// [`try_start`](Self::try_start) (non-strict) decide the role.
///
/// The options mirror Python's `Socket_Singleton`: `hold_timeout` is its `timeout`,
/// `forward` its `client`, `try_start` its `strict=False`, and `release_threshold`,
/// `max_clients` and `verbose` keep their names. There is no address or port: the
/// primary listens on an ephemeral 127.0.0.1 port published in the runtime directory,
/// and the per-user secret (always on) replaces the optional `secret`.
///
/// ```no_run
/// use std::time::Duration;
/// use loopback_singleton::SingleInstance;
///
/// let primary = SingleInstance::new("my-app")
///     .hold_timeout(Duration::from_secs(600)) // give the role up after 10 minutes
///     .release_threshold(100)                 // ... or after 100 secondaries
///     .max_clients(10)                        // deliver only the first 10 messages
///     .on_message(|message| println!("{:?}", message.args()))
///     .start()?;                              // a secondary exits here
/// # Ok::<(), loopback_singleton::Error>(())
/// ```
pub struct SingleInstance<P: Payload = ()> {
    name: String,
    runtime_dir: Option<PathBuf>,
    hold_timeout: Option<Duration>,
    limits: Limits,
    forward: bool,
    argv: Option<Vec<String>>,
    payload: Option<P>,
    callbacks: Vec<BoxedCallback<P>>,
    verbose: bool,
    connect_timeout: Duration,
    start_timeout: Duration,
}

impl<P: Payload> fmt::Debug for SingleInstance<P> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("SingleInstance")
            .field("name", &self.name)
            .field("runtime_dir", &self.runtime_dir)
            .field("hold_timeout", &self.hold_timeout)
            .field("release_threshold", &self.limits.release_threshold)
            .field("max_clients", &self.limits.max_clients)
            .field("forward", &self.forward)
            .field("argv", &self.argv)
            .field("payload", &self.payload.is_some())
            .field("callbacks", &self.callbacks.len())
            .field("verbose", &self.verbose)
            .finish()
    }
}

/// The strict single-instance check with default options: returns the [`Primary`]
/// guard in the first process; in any later one, forwards argv and cwd to the primary
/// and exits the process with status 0. Shorthand for
/// `SingleInstance::new(name).start()`.
///
/// `name` names the runtime directory (1 to 64 characters of `A-Z a-z 0-9 . _ -`).
///
/// ```no_run
/// let primary = loopback_singleton::single_instance("my-app")?;
/// primary.on_message(|message| println!("another launch: {:?}", message.args()));
/// # Ok::<(), loopback_singleton::Error>(())
/// ```
pub fn single_instance(name: impl Into<String>) -> Result<Primary, Error> {
    SingleInstance::new(name).start()
}

impl SingleInstance<()> {
    /// A single-instance launch under `name`, without a typed payload.
    pub fn new(name: impl Into<String>) -> Self {
        Self::typed(name)
    }
}

impl<P: Payload> SingleInstance<P> {
    /// A single-instance launch whose secondaries may send a payload of type `P`.
    ///
    /// ```no_run
    /// use loopback_singleton::{Role, SingleInstance};
    /// use serde::{Deserialize, Serialize};
    ///
    /// #[derive(Serialize, Deserialize)]
    /// enum Command { Open(String), Quit }
    ///
    /// let launch = SingleInstance::<Command>::typed("my-editor")
    ///     .payload(Command::Open("notes.txt".into()));
    /// if let Role::Primary(primary) = launch.try_start()? {
    ///     for message in primary.messages() {
    ///         if let Some(Command::Quit) = message.payload { break; }
    ///     }
    /// }
    /// # Ok::<(), loopback_singleton::Error>(())
    /// ```
    pub fn typed(name: impl Into<String>) -> Self {
        SingleInstance {
            name: name.into(),
            runtime_dir: None,
            hold_timeout: None,
            limits: Limits::default(),
            forward: true,
            argv: None,
            payload: None,
            callbacks: Vec::new(),
            verbose: false,
            connect_timeout: Duration::from_secs(5),
            start_timeout: Duration::from_secs(10),
        }
    }

    /// The base of the runtime directories (default: `$LOOPBACK_SINGLETON_DIR`, else
    /// `$XDG_RUNTIME_DIR/loopback-singleton`, else `~/.cache/loopback-singleton`).
    pub fn runtime_dir(mut self, base: impl Into<PathBuf>) -> Self {
        self.runtime_dir = Some(base.into());
        self
    }

    /// As primary, give the role up this long after taking it (Python's `timeout`);
    /// `None` (the default) holds it until [`Primary::release`] or drop.
    pub fn hold_timeout(mut self, timeout: impl Into<Option<Duration>>) -> Self {
        self.hold_timeout = timeout.into();
        self
    }

    /// As primary, give the role up once this many secondaries have come (`0`, the
    /// default: never). The last one's message is still delivered; later launches
    /// become primary themselves.
    pub fn release_threshold(mut self, secondaries: u64) -> Self {
        self.limits.release_threshold = (secondaries > 0).then_some(secondaries);
        self
    }

    /// As primary, deliver the messages of the first `secondaries` secondaries only
    /// (`0`, the default: all). Later secondaries are still accepted and counted, and
    /// still exit, but their messages are dropped ([`Delivery::Ignored`]).
    pub fn max_clients(mut self, secondaries: u64) -> Self {
        self.limits.max_clients = (secondaries > 0).then_some(secondaries);
        self
    }

    /// As secondary, send argv, cwd and payload to the primary (`true`, the default), or
    /// only announce this launch (`false`: the primary counts it, delivers nothing).
    pub fn forward(mut self, forward: bool) -> Self {
        self.forward = forward;
        self
    }

    /// As secondary, send these arguments (program first) instead of this process's.
    pub fn argv<I, A>(mut self, argv: I) -> Self
    where
        I: IntoIterator<Item = A>,
        A: Into<String>,
    {
        self.argv = Some(argv.into_iter().map(Into::into).collect());
        self
    }

    /// As secondary, send this payload with argv and cwd.
    pub fn payload(mut self, payload: P) -> Self {
        self.payload = Some(payload);
        self
    }

    /// As primary, call `callback` with every delivered message, from the moment the
    /// role is taken (so that none is missed). Same as [`Primary::on_message`].
    pub fn on_message(mut self, callback: impl FnMut(&Message<P>) + Send + 'static) -> Self {
        self.callbacks.push(Box::new(callback));
        self
    }

    /// As primary, log connection failures, refused handshakes and panicking callbacks
    /// to stderr (default: silent).
    pub fn verbose(mut self, verbose: bool) -> Self {
        self.verbose = verbose;
        self
    }

    /// Limit for connecting to and authenticating with a primary (default 5 s).
    pub fn connect_timeout(mut self, timeout: Duration) -> Self {
        self.connect_timeout = timeout;
        self
    }

    /// Limit for the whole decision: waiting for the start lock and for a primary that
    /// is giving its role up (default 10 s).
    pub fn start_timeout(mut self, timeout: Duration) -> Self {
        self.start_timeout = timeout;
        self
    }

    /// Strict mode: returns the [`Primary`] guard, or, if another process is primary,
    /// forwards this launch's message and **exits the process with status 0**.
    pub fn start(self) -> Result<Primary<P>, Error> {
        match self.try_start()? {
            Role::Primary(primary) => Ok(primary),
            Role::Secondary(_) => std::process::exit(0),
        }
    }

    /// Non-strict mode: like [`start`](Self::start), but a secondary gets
    /// [`Role::Secondary`] (after forwarding) and decides itself what to do.
    pub fn try_start(self) -> Result<Role<P>, Error> {
        let SingleInstance {
            name,
            runtime_dir,
            hold_timeout,
            limits,
            forward,
            argv,
            payload,
            callbacks,
            verbose,
            connect_timeout,
            start_timeout,
        } = self;
        let deadline = Instant::now() + start_timeout;
        let (control, requests) = mpsc::channel();
        let state = Arc::new(State::new(limits, verbose, control));
        for callback in callbacks {
            state.add_callback(callback);
        }
        let message = Message {
            argv: argv.unwrap_or_else(|| {
                std::env::args_os()
                    .map(|arg| arg.to_string_lossy().into_owned())
                    .collect()
            }),
            cwd: std::env::current_dir()
                .map(|cwd| PathBuf::from(cwd.to_string_lossy().into_owned()))
                .unwrap_or_default(),
            pid: std::process::id(),
            payload,
        };
        loop {
            let remaining = deadline.saturating_duration_since(Instant::now());
            let mut builder = Builder::<Host<P>>::new()
                .serve_options(ServeOptions::default().idle_ttl(None))
                .name(&name)
                .connect_timeout(connect_timeout)
                .start_timeout(remaining)
                // A primary that stops answering (a stuck callback, SIGSTOP) must not
                // hang the secondary: it gives up when its start timeout runs out.
                .call_timeout(remaining.max(connect_timeout));
            if let Some(base) = &runtime_dir {
                builder = builder.runtime_dir(base);
            }
            let payload_type = std::any::type_name::<P>().to_string();
            let host_state = Arc::clone(&state);
            let found = Client::find_or_start(builder, payload_type, move |dir, launch| {
                let launch = launch.clone();
                let construct = Box::new(move || Ok(Host { state: host_state }));
                host::start_background::<Host<P>>(dir.clone(), launch, construct, verbose)
            })?;
            let client = match found {
                FoundOrStarted::Started(host) => {
                    return Ok(Role::Primary(Primary::new(
                        name,
                        state,
                        host,
                        requests,
                        hold_timeout,
                    )));
                }
                FoundOrStarted::Found(client) => client,
            };
            let sent = if forward {
                client.call::<Reply, _>(0, &message)
            } else {
                client.call::<Reply, _>(1, &std::process::id())
            };
            let retry_after = match sent {
                Ok(Reply {
                    receipt: Receipt::Closed,
                    ..
                }) => Error::Remote(RemoteError::ShuttingDown),
                Ok(Reply { receipt, pid }) => {
                    let delivery = match receipt {
                        Receipt::Delivered => Delivery::Delivered,
                        Receipt::Ignored => Delivery::Ignored,
                        Receipt::Counted | Receipt::Closed => Delivery::NotSent,
                    };
                    return Ok(Role::Secondary(AnotherInstance {
                        name,
                        primary_pid: pid,
                        delivery,
                    }));
                }
                // The primary is giving its role up (or died) while we talked to it:
                // decide again, against its successor or as the successor.
                Err(error @ (Error::ConnectionLost { .. } | Error::Remote(_))) => error,
                Err(error) => return Err(error),
            };
            if Instant::now() >= deadline {
                return Err(Error::StartTimeout {
                    name,
                    waited: start_timeout,
                    what: format!("a primary that kept giving its role up ({retry_after})"),
                });
            }
            std::thread::sleep(Duration::from_millis(5));
        }
    }
}

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
    fn new(
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

/// What a secondary sends after the handshake: method 0 or 1 of the host "service".
#[derive(Serialize, Deserialize)]
enum Request<P> {
    Forward(Message<P>),
    Announce { pid: u32 },
}

/// The primary's answer to a secondary.
#[derive(Serialize, Deserialize)]
struct Reply {
    receipt: Receipt,
    pid: u32,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
enum Receipt {
    Delivered,
    Ignored,
    Counted,
    /// The primary is giving its role up: decide again.
    Closed,
}

#[derive(Debug, Clone, Copy, Default)]
struct Limits {
    release_threshold: Option<u64>,
    max_clients: Option<u64>,
}

/// The instance the primary's host serves: hands each request to the shared state.
struct Host<P: Payload> {
    state: Arc<State<P>>,
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
    static IN_DELIVERY: Cell<bool> = const { Cell::new(false) };
}

/// Marks the current thread as delivering until dropped.
struct Delivering {
    was: bool,
}

impl Delivering {
    fn enter() -> Self {
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

struct Callback<P> {
    id: u64,
    active: AtomicBool,
    call: Mutex<BoxedCallback<P>>,
}

struct Queue<P> {
    pending: VecDeque<Message<P>>,
    callbacks: Vec<Arc<Callback<P>>>,
    next_callback: u64,
    secondaries: u64,
    /// No more messages are accepted: the role is being given up.
    closed: bool,
    /// The host has stopped and unpublished itself.
    released: bool,
}

/// Shared by the guard, the host's instance and the control thread.
struct State<P> {
    queue: Mutex<Queue<P>>,
    changed: Condvar,
    /// Held while messages go to callbacks, so that a backlog handed to a new callback
    /// and newly arriving messages cannot overtake each other.
    delivery: Mutex<()>,
    limits: Limits,
    verbose: bool,
    control: Mutex<mpsc::Sender<()>>,
}

impl<P: Payload> State<P> {
    fn new(limits: Limits, verbose: bool, control: mpsc::Sender<()>) -> Self {
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

    fn queue(&self) -> MutexGuard<'_, Queue<P>> {
        lock(&self.queue)
    }

    fn request_release(&self) {
        let _ = lock(&self.control).send(());
    }

    fn close(&self) {
        self.queue().closed = true;
        self.changed.notify_all();
    }

    /// One secondary's request, on the host's instance thread (one at a time).
    fn receive(&self, request: Request<P>) -> Receipt {
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

    fn add_callback(&self, callback: BoxedCallback<P>) -> CallbackId {
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

    fn run_callbacks(&self, callbacks: &[Arc<Callback<P>>], message: &Message<P>) {
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
