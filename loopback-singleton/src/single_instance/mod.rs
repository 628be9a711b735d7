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

mod primary;
mod state;

use std::fmt;
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::mpsc::{self};
use std::time::{Duration, Instant};

use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};

use crate::client::{Builder, Client, FoundOrStarted};
use crate::error::Error;
use crate::host;
use crate::options::ServeOptions;
use crate::protocol::RemoteError;

pub use primary::{Messages, Primary};
use state::{Host, IN_DELIVERY, Limits, Receipt, Reply, State};

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

    /// As primary, log panicking callbacks to stderr (default: silent). The primary's
    /// own events (connections closed on a protocol error, refused handshakes) go to
    /// `daemon.log` in its runtime directory, as a daemon's do.
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
                host::start_background::<Host<P>>(dir.clone(), launch, construct)
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
