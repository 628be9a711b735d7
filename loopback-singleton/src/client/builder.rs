//! [`Builder`]: a client's settings, and `connect`.

use std::fmt;
use std::marker::PhantomData;
use std::path::PathBuf;
use std::time::Duration;

use crate::error::Error;
use crate::options::ServeOptions;
use crate::protocol::Transport;
use crate::service::Service;

use super::Client;

/// Configures a client before connecting: singleton name, idle TTL, timeouts, runtime
/// directory, daemon executable.
///
/// Obtained from the generated `<Type>Client::builder()`. [`connect`](Self::connect)
/// takes the `#[init]` constructor's arguments as one value: `()` for none, the value
/// itself for one argument, a tuple for several.
///
/// ```no_run
/// use std::time::Duration;
/// use loopback_singleton::local_singleton;
///
/// pub struct Counter { value: u64, step: u64 }
///
/// #[local_singleton]
/// impl Counter {
///     #[init]
///     pub fn new(start: u64, step: u64) -> Self { Counter { value: start, step } }
///     pub fn inc(&mut self) -> u64 { self.value += self.step; self.value }
/// }
///
/// let counter = CounterClient::builder()
///     .name("build-counter")
///     .idle_ttl(Duration::from_secs(30))
///     .call_timeout(Duration::from_secs(5))
///     .connect((10, 2))?;
/// counter.inc()?;
/// # Ok::<(), loopback_singleton::Error>(())
/// ```
pub struct Builder<S> {
    pub(super) options: ServeOptions,
    pub(super) connect_timeout: Duration,
    pub(super) start_timeout: Duration,
    pub(super) call_timeout: Option<Duration>,
    pub(super) daemon_command: Option<PathBuf>,
    pub(super) attach: bool,
    pub(super) transport: Option<Transport>,
    pub(super) service: PhantomData<fn() -> S>,
}

impl<S: Service> Default for Builder<S> {
    fn default() -> Self {
        Self::new()
    }
}

impl<S> fmt::Debug for Builder<S> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Builder")
            .field("options", &self.options)
            .field("connect_timeout", &self.connect_timeout)
            .field("start_timeout", &self.start_timeout)
            .field("call_timeout", &self.call_timeout)
            .field("daemon_command", &self.daemon_command)
            .field("attach", &self.attach)
            .field("transport", &self.transport)
            .finish()
    }
}

impl<S: Service> Builder<S> {
    /// Default settings: the service's own name, a 2 s idle TTL, 5 s connect timeout,
    /// 10 s start timeout, no call timeout, the current executable as the daemon.
    pub fn new() -> Self {
        Builder {
            options: ServeOptions::default(),
            connect_timeout: Duration::from_secs(5),
            start_timeout: Duration::from_secs(10),
            call_timeout: None,
            daemon_command: None,
            attach: false,
            transport: None,
            service: PhantomData,
        }
    }

    /// The singleton name (default `<crate>.<Type>`, or the macro's `name = "..."`).
    /// Different names are different daemons with different instances.
    pub fn name(mut self, name: impl Into<String>) -> Self {
        self.options = self.options.name(name);
        self
    }

    /// The base directory of runtime directories (default: `$LOOPBACK_SINGLETON_DIR`,
    /// else `$XDG_RUNTIME_DIR/loopback-singleton`, else `$TMPDIR/loopback-singleton` on
    /// macOS or `%LOCALAPPDATA%\loopback-singleton` on Windows, else
    /// `~/.cache/loopback-singleton`).
    pub fn runtime_dir(mut self, base: impl Into<PathBuf>) -> Self {
        self.options = self.options.runtime_dir(base);
        self
    }

    /// How long a daemon this client starts lives with no client connected (default
    /// 2 s). `None` keeps it until `shutdown`. Not compared with a running daemon's.
    pub fn idle_ttl(mut self, ttl: impl Into<Option<Duration>>) -> Self {
        self.options = self.options.idle_ttl(ttl.into());
        self
    }

    /// Limit for opening and authenticating one connection (default 5 s).
    pub fn connect_timeout(mut self, timeout: Duration) -> Self {
        self.connect_timeout = timeout;
        self
    }

    /// Limit for starting a daemon: lock, spawn, construct, ready (default 10 s).
    pub fn start_timeout(mut self, timeout: Duration) -> Self {
        self.start_timeout = timeout;
        self
    }

    /// Limit for sending one call and receiving its reply (default: none). A killed
    /// daemon is noticed at once without it, because its sockets close; a stopped or
    /// stuck one (SIGSTOP, a method that never returns) is not: set one where a
    /// caller must never wait past a bound.
    pub fn call_timeout(mut self, timeout: impl Into<Option<Duration>>) -> Self {
        self.call_timeout = timeout.into();
        self
    }

    /// The largest frame sent or accepted, in bytes (default 64 MiB).
    pub fn max_frame_size(mut self, bytes: u32) -> Self {
        self.options = self.options.max_frame_size(bytes);
        self
    }

    /// How long a daemon this client starts gives a new connection to authenticate
    /// (default 5 s); slower peers are dropped.
    pub fn handshake_timeout(mut self, timeout: Duration) -> Self {
        self.options = self.options.handshake_timeout(timeout);
        self
    }

    /// The most connections a daemon this client starts serves at once (default 4096);
    /// further ones are closed at once.
    pub fn max_connections(mut self, connections: u32) -> Self {
        self.options = self.options.max_connections(connections);
        self
    }

    /// Replaces all daemon-side settings at once.
    pub fn serve_options(mut self, options: ServeOptions) -> Self {
        self.options = options;
        self
    }

    /// Starts daemons from this executable instead of the current one. It must link
    /// the same service (its pre-main hook becomes the daemon).
    pub fn daemon_command(mut self, executable: impl Into<PathBuf>) -> Self {
        self.daemon_command = Some(executable.into());
        self
    }

    /// Accepts a running daemon whatever init arguments it was started with (instead of
    /// failing with [`Error::InitMismatch`]). The arguments still start a daemon when
    /// none runs.
    pub fn attach(mut self) -> Self {
        self.attach = true;
        self
    }

    /// How this client talks to the daemon (default: `LOOPBACK_SINGLETON_TRANSPORT`,
    /// else [`Transport::Tcp`]). Every daemon serves every transport its platform has,
    /// so this is the client's choice alone: clients with different transports share
    /// one daemon and one instance. A transport that cannot be used fails `connect`
    /// with [`Error::TransportUnavailable`].
    pub fn transport(mut self, transport: Transport) -> Self {
        self.transport = Some(transport);
        self
    }

    /// Connects, starting the daemon with `init` if none runs.
    ///
    /// A running daemon is used if it was started with arguments equal to `init`, else
    /// [`Error::InitMismatch`] (see [`attach`](Self::attach)). Maps compare equal
    /// whatever the order of their entries, at any depth; a `HashSet` reaches serde as
    /// a sequence, so its iteration order (which differs between processes) counts: use
    /// a `BTreeSet` in init arguments.
    pub fn connect(self, init: S::Init) -> Result<S::Client, Error>
    where
        S::Client: From<Client<S>>,
    {
        Client::<S>::connect(self, init).map(S::Client::from)
    }

    /// Connects the async client, starting the daemon with `init` if none runs. The
    /// blocking part (lock, spawn, handshake) runs on tokio's blocking pool; call it
    /// from within a tokio runtime.
    pub async fn connect_async(self, init: S::Init) -> Result<S::AsyncClient, Error>
    where
        S::AsyncClient: From<crate::AsyncClient<S>>,
    {
        crate::AsyncClient::<S>::connect(self, init)
            .await
            .map(S::AsyncClient::from)
    }
}
