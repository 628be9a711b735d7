//! The blocking client: finds or starts the daemon, authenticates, and runs calls over a
//! small pool of connections so that one client serves many threads at once.

use std::fmt;
use std::io::{BufReader, ErrorKind, Read, Write};
use std::marker::PhantomData;
use std::net::{Ipv4Addr, SocketAddr, TcpStream};
use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::{Duration, Instant};

use serde::Serialize;
use serde::de::DeserializeOwned;

use crate::error::Error;
use crate::options::ServeOptions;
use crate::protocol::handshake::Role;
use crate::protocol::{
    self, DaemonInfo, Fingerprint, FrameError, ProtocolError, RemoteError, Secret,
};
use crate::runtime_dir::{self, HeldLock, RuntimeDir};
use crate::service::Service;
use crate::spawn::{self, Launch, SpawnError};

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
    options: ServeOptions,
    connect_timeout: Duration,
    start_timeout: Duration,
    call_timeout: Option<Duration>,
    daemon_command: Option<PathBuf>,
    attach: bool,
    service: PhantomData<fn() -> S>,
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
    /// else `$XDG_RUNTIME_DIR/loopback-singleton`, else `~/.cache/loopback-singleton`).
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

    /// Connects, starting the daemon with `init` if none runs.
    ///
    /// A running daemon is used if it was started with arguments equal to `init`, else
    /// [`Error::InitMismatch`] (see [`attach`](Self::attach)). Maps compare equal
    /// whatever the order of their entries, at any depth; a `HashSet` reaches serde as
    /// a sequence, so its iteration order (which differs between processes) counts: use
    /// a `BTreeSet` in init arguments.
    pub fn connect(self, init: S::Init) -> Result<S::Client, Error> {
        Client::<S>::connect(self, init).map(S::Client::from)
    }

    /// Connects the async client, starting the daemon with `init` if none runs. The
    /// blocking part (lock, spawn, handshake) runs on tokio's blocking pool; call it
    /// from within a tokio runtime.
    pub async fn connect_async(self, init: S::Init) -> Result<S::AsyncClient, Error> {
        crate::AsyncClient::<S>::connect(self, init)
            .await
            .map(S::AsyncClient::from)
    }
}

/// The untyped client underneath a generated `<Type>Client`: cheap to clone,
/// `Send + Sync`, usable from many threads at once (each call borrows a pooled
/// connection, so threads do not wait on each other's round trips).
pub struct Client<S> {
    inner: Arc<Inner>,
    service: PhantomData<fn() -> S>,
}

impl<S> Clone for Client<S> {
    fn clone(&self) -> Self {
        Client {
            inner: Arc::clone(&self.inner),
            service: PhantomData,
        }
    }
}

impl<S> fmt::Debug for Client<S> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let endpoint = self
            .inner
            .endpoint()
            .as_ref()
            .map(|endpoint| (endpoint.port, endpoint.pid));
        f.debug_struct("Client")
            .field("name", &self.inner.name)
            .field("runtime_dir", &self.inner.dir.path())
            .field("daemon", &endpoint)
            .finish()
    }
}

/// Where the daemon is and how to prove ourselves to it.
#[derive(Clone)]
struct Endpoint {
    port: u16,
    secret: Secret,
    pid: u32,
    instance: u64,
    /// The protocol version the daemon published in its metadata (a private file of
    /// ours, so trustworthy, unlike what a process on the port may claim).
    protocol: u16,
    /// For the daemon this client started: the token that tells it its starter came.
    starter: Option<protocol::Nonce>,
}

/// One authenticated connection with its reusable buffer.
struct Connection {
    reader: BufReader<TcpStream>,
    buf: Vec<u8>,
    instance: u64,
    /// The smaller of this client's and the daemon's frame limits: requests above it
    /// are refused before they are sent.
    max_frame: u32,
    /// Length of the last request sent from `buf` (its reply has replaced it since).
    request_len: usize,
}

struct Inner {
    name: String,
    /// The runtime directory as checked when the client was made. Looking for a daemon
    /// it does not know yet opens and checks the directory afresh.
    dir: RuntimeDir,
    service_id: &'static str,
    schema: Fingerprint,
    /// `None` with [`Builder::attach`].
    init: Option<Fingerprint>,
    launch: Launch,
    connect_timeout: Duration,
    start_timeout: Duration,
    call_timeout: Option<Duration>,
    max_frame: u32,
    daemon_command: Option<PathBuf>,
    endpoint: Mutex<Option<Endpoint>>,
    idle: Mutex<Vec<Connection>>,
    next_id: AtomicU64,
}

/// Why opening a connection to an endpoint failed.
enum DialError {
    /// Nobody (or not our daemon) is there: the endpoint is stale.
    Stale(Error),
    /// Our daemon is there but busy (retiring, full, slow): wait and retry.
    Busy(Error),
    /// Our daemon is there and refuses us for good (version, schema, init arguments).
    Fatal(Error),
}

/// What probing the runtime directory found.
enum Probe {
    Found(Connection, Endpoint),
    Absent,
    Busy(Error),
    Fatal(Error),
}

/// Locks a mutex of the clients' or a primary's bookkeeping. A panic while holding one
/// leaves nothing half-updated (each critical section is a single insert, remove or
/// swap), so poisoning is ignored rather than spread to every later call.
pub(crate) fn lock<T>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    mutex.lock().unwrap_or_else(PoisonError::into_inner)
}

/// Appends a call's body to a started request frame: the method number (the request
/// enum's variant index), then the arguments as a tuple, which postcard encodes exactly
/// as that variant's fields.
pub(crate) fn encode_call<A: Serialize + ?Sized>(
    buf: &mut Vec<u8>,
    method: u32,
    args: &A,
) -> Result<(), Error> {
    postcard::to_io(&method, &mut *buf)
        .and_then(|buf| postcard::to_io(args, buf))
        .map(drop)
        .map_err(|error| {
            Error::Protocol(ProtocolError::Malformed {
                what: "request",
                reason: error.to_string(),
            })
        })
}

/// Refuses a request frame (length prefix included) above the frame limit before it is
/// sent, so that the connection stays usable.
pub(crate) fn check_frame_limit(frame: &[u8], max_frame: u32) -> Result<(), Error> {
    let (len, limit) = ((frame.len() - 4) as u64, u64::from(max_frame));
    if len > limit {
        Err(Error::Protocol(ProtocolError::FrameTooLarge { len, limit }))
    } else {
        Ok(())
    }
}

/// Where the body of the reply to call `id` starts in `payload`, or the daemon's error.
pub(crate) fn reply_body(payload: &[u8], id: u64) -> Result<usize, Error> {
    let (reply_id, status, body) = protocol::split_reply(payload)?;
    if reply_id != id {
        return Err(Error::Protocol(ProtocolError::Unexpected(format!(
            "reply to call {reply_id} while waiting for {id}"
        ))));
    }
    match status {
        protocol::Status::Ok => Ok(payload.len() - body.len()),
        protocol::Status::Err => Err(Error::Remote(protocol::decode("remote error", body)?)),
    }
}

/// Decodes a reply's body as the method's return type.
pub(crate) fn decode_reply<R: DeserializeOwned>(body: &[u8]) -> Result<R, Error> {
    postcard::from_bytes(body).map_err(|error| {
        Error::Remote(RemoteError::Decode {
            message: error.to_string(),
        })
    })
}

impl<S: Service> Client<S> {
    fn connect(builder: Builder<S>, init: S::Init) -> Result<Self, Error> {
        let inner = Self::prepare(builder, &init)?;
        let connection = inner.open()?;
        inner.checkin(connection);
        Ok(Client {
            inner: Arc::new(inner),
            service: PhantomData,
        })
    }

    /// Finds a live host of `S` and returns a client connected to it; if none runs,
    /// calls `start` instead of spawning a daemon, with the start lock held and stale
    /// files removed (what a single-instance primary does: it hosts `S` itself).
    /// `start` must publish its host before returning, so that the processes waiting for
    /// the lock find it. The returned client serves one call: it must not reconnect,
    /// because a reconnection could spawn.
    pub(crate) fn find_or_start<T>(
        builder: Builder<S>,
        init: S::Init,
        start: impl FnOnce(&RuntimeDir, &Launch) -> Result<T, Error>,
    ) -> Result<FoundOrStarted<S, T>, Error> {
        let inner = Self::prepare(builder, &init)?;
        let dir = inner.dir.clone();
        match inner.find_or_start(&dir, false, |_, _| start(&dir, &inner.launch))? {
            Established::Found(connection, endpoint) => {
                *inner.endpoint() = Some(endpoint);
                inner.checkin(connection);
                Ok(FoundOrStarted::Found(Client {
                    inner: Arc::new(inner),
                    service: PhantomData,
                }))
            }
            Established::Started(started) => Ok(FoundOrStarted::Started(started)),
        }
    }

    /// A client that has not connected yet (its first call finds or starts the daemon):
    /// what the async client builds on, from a thread that must not block.
    pub(crate) fn unconnected(builder: Builder<S>, init: &S::Init) -> Result<Self, Error> {
        Ok(Client {
            inner: Arc::new(Self::prepare(builder, init)?),
            service: PhantomData,
        })
    }

    /// The client's state before its first connection.
    fn prepare(builder: Builder<S>, init: &S::Init) -> Result<Inner, Error> {
        let name = builder
            .options
            .name
            .clone()
            .unwrap_or_else(|| S::NAME.to_string());
        let base = runtime_dir::base_dir(builder.options.dir.as_deref())?;
        let dir = RuntimeDir::open(&base, &name)?;
        let launch = Launch::new(name.clone(), base, builder.options.clone(), init)?;
        let inner = Inner {
            init: (!builder.attach).then_some(launch.init_fingerprint),
            launch,
            name,
            dir,
            service_id: S::SERVICE_ID,
            schema: S::SCHEMA,
            connect_timeout: builder.connect_timeout,
            start_timeout: builder.start_timeout,
            call_timeout: builder.call_timeout,
            max_frame: builder.options.max_frame,
            daemon_command: builder.daemon_command,
            endpoint: Mutex::new(None),
            idle: Mutex::new(Vec::new()),
            next_id: AtomicU64::new(1),
        };
        Ok(inner)
    }
}

/// What [`Client::find_or_start`] came to.
pub(crate) enum FoundOrStarted<S, T> {
    /// A live host answered: a client connected to it.
    Found(Client<S>),
    /// None ran: what `start` returned.
    Started(T),
}

/// What [`Inner::find_or_start`] came to.
enum Established<T> {
    Found(Connection, Endpoint),
    Started(T),
}

impl<S> Client<S> {
    /// Runs method number `method` with its arguments encoded as a tuple (postcard
    /// encodes it exactly as the request enum's variant). Called by generated code.
    #[doc(hidden)]
    pub fn call<R: DeserializeOwned, A: Serialize + ?Sized>(
        &self,
        method: u32,
        args: &A,
    ) -> Result<R, Error> {
        self.inner
            .request(protocol::Kind::Call, |buf| encode_call(buf, method, args))
    }

    /// Runs method number `method` once per element of `calls`, pipelined on one
    /// connection: up to `window` requests are sent in one write before their replies
    /// are read, so a batch of small calls costs about one round trip instead of one
    /// each. Returns the results in order.
    ///
    /// `method` is the method's position among the service's public methods (the first
    /// one is `0`), and each element of `calls` its arguments as a tuple: `()` for
    /// none, `(x,)` for one, `(x, y)` for two. A wrong index or argument type is not
    /// undefined behaviour: the daemon answers [`RemoteError::BadRequest`] (or the reply
    /// fails to decode).
    ///
    /// The window is bounded twice, so that neither side can block writing while the
    /// other does too: by `window` (at least 1) and by 64 KiB of requests per batch
    /// (a larger request travels alone). The daemon answers each connection in order,
    /// so replies are matched to requests by their call ids.
    ///
    /// If a call fails, the calls already sent still run; their replies are drained to
    /// keep the connection in step, and the first error is returned.
    ///
    /// ```no_run
    /// # use loopback_singleton::local_singleton;
    /// # #[derive(Default)] pub struct Counter { v: u64 }
    /// # #[local_singleton] impl Counter {
    /// #     pub fn inc(&mut self) -> u64 { self.v += 1; self.v }
    /// #     pub fn add(&mut self, n: u64) -> u64 { self.v += n; self.v }
    /// # }
    /// let counter = CounterClient::connect()?;
    /// // `inc` is method 0 and takes no arguments: 1000 calls, 64 in flight at a time.
    /// let values: Vec<u64> = counter.client().pipeline(0, (0..1000).map(|_| ()), 64)?;
    /// assert_eq!(values.len(), 1000);
    /// // `add` is method 1 and takes one argument.
    /// let sums: Vec<u64> = counter.client().pipeline(1, (1..=3u64).map(|n| (n,)), 64)?;
    /// # Ok::<(), loopback_singleton::Error>(())
    /// ```
    pub fn pipeline<R, A, I>(&self, method: u32, calls: I, window: usize) -> Result<Vec<R>, Error>
    where
        R: DeserializeOwned,
        A: Serialize,
        I: IntoIterator<Item = A>,
    {
        /// Requests of one batch beyond this travel in the next batch.
        const BATCH_BYTES: usize = 64 << 10;
        let window = window.max(1);
        let mut calls = calls.into_iter().peekable();
        let mut results = Vec::with_capacity(calls.size_hint().0);
        let mut connection = self.inner.checkout()?;
        let mut batch = Vec::new();
        let mut first_error = None;
        while calls.peek().is_some() {
            batch.clear();
            let first_id = self
                .inner
                .next_id
                .fetch_add(window as u64, Ordering::Relaxed);
            let mut sent = 0;
            while sent < window && (sent == 0 || batch.len() < BATCH_BYTES) {
                let Some(args) = calls.next() else { break };
                let start = batch.len();
                protocol::append_header(&mut batch, first_id + sent as u64, protocol::Kind::Call);
                encode_call(&mut batch, method, &args)?;
                protocol::close_frame(&mut batch, start);
                sent += 1;
            }
            if let Err(error) = connection.reader.get_ref().write_all(&batch) {
                let error = self.inner.lost(error);
                self.inner.forget(connection.instance);
                return Err(error);
            }
            for offset in 0..sent {
                match self
                    .inner
                    .read_reply(&mut connection, first_id + offset as u64)
                {
                    Ok(body) => match decode_reply(&connection.buf[body..]) {
                        Ok(value) => results.push(value),
                        Err(error) => {
                            first_error.get_or_insert(error);
                        }
                    },
                    Err(error @ Error::Remote(_)) => {
                        first_error.get_or_insert(error);
                    }
                    Err(error) => {
                        // Dead or out of step: never reuse the connection.
                        if matches!(error, Error::ConnectionLost { .. }) {
                            self.inner.forget(connection.instance);
                        }
                        return Err(error);
                    }
                }
            }
            if first_error.is_some() {
                break;
            }
        }
        self.inner.checkin(connection);
        match first_error {
            Some(error) => Err(error),
            None => Ok(results),
        }
    }

    /// Asks the daemon about itself: pid, uptime, calls served, connected clients.
    ///
    /// ```no_run
    /// # use loopback_singleton::local_singleton;
    /// # #[derive(Default)] pub struct Counter { v: u64 }
    /// # #[local_singleton] impl Counter { pub fn inc(&mut self) -> u64 { self.v += 1; self.v } }
    /// let counter = CounterClient::connect()?;
    /// let info = counter.ping()?;
    /// println!("daemon pid {} served {} calls", info.pid, info.calls_served);
    /// # Ok::<(), loopback_singleton::Error>(())
    /// ```
    pub fn ping(&self) -> Result<DaemonInfo, Error> {
        self.inner.request(protocol::Kind::Ping, |_| Ok(()))
    }

    /// Makes sure a daemon runs, starting a fresh one (with this client's init
    /// arguments) if the one this client knew has died, and returns its info.
    pub fn ensure_started(&self) -> Result<DaemonInfo, Error> {
        match self.ping() {
            // The failure dropped the dead connections; the retry finds or starts one.
            Err(Error::ConnectionLost { .. } | Error::Connect { .. }) => self.ping(),
            other => other,
        }
    }

    /// Stops the daemon and returns once it is gone: calls in flight finish first, the
    /// instance is dropped, and the runtime files are removed. Other clients' next
    /// calls fail with [`Error::ConnectionLost`]; their next call after that starts a
    /// fresh daemon.
    pub fn shutdown(&self) -> Result<(), Error> {
        // A pooled connection may lead to a daemon that is gone already: look again once.
        for attempt in 0..2 {
            // Never start a daemon just to stop it.
            let Some(mut connection) = self.inner.checkout_running()? else {
                return Ok(());
            };
            let pid = self.inner.endpoint().as_ref().map(|endpoint| endpoint.pid);
            let id = self.inner.next_id.fetch_add(1, Ordering::Relaxed);
            connection.buf.clear();
            protocol::append_header(&mut connection.buf, id, protocol::Kind::Shutdown);
            protocol::close_frame(&mut connection.buf, 0);
            let result = self.inner.round_trip(&mut connection, id);
            self.inner.forget(connection.instance);
            match result {
                Ok(_) => return self.inner.await_exit(connection, pid),
                Err(Error::ConnectionLost { .. }) if attempt == 0 => {}
                Err(error) => return Err(error),
            }
        }
        Ok(())
    }

    /// Takes one authenticated connection out of this client (finding or starting the
    /// daemon if needed), for the async client to own. Blocking.
    /// Also returns the id of the daemon instance it leads to.
    pub(crate) fn detach_connection(&self) -> Result<(TcpStream, u64), Error> {
        let connection = self.inner.checkout()?;
        // The daemon speaks only when asked: nothing is buffered between calls.
        debug_assert!(connection.reader.buffer().is_empty());
        Ok((connection.reader.into_inner(), connection.instance))
    }

    /// The configured call timeout and frame limit.
    pub(crate) fn limits(&self) -> (Option<Duration>, u32) {
        (self.inner.call_timeout, self.inner.max_frame)
    }

    /// The singleton name this client talks to.
    pub fn name(&self) -> &str {
        &self.inner.name
    }

    /// The runtime directory of this singleton (metadata, secret, lock, log).
    pub fn runtime_dir(&self) -> &std::path::Path {
        self.inner.dir.path()
    }
}

impl Inner {
    fn endpoint(&self) -> MutexGuard<'_, Option<Endpoint>> {
        lock(&self.endpoint)
    }

    /// One request-reply exchange; `encode_body` appends the request body.
    fn request<R: DeserializeOwned>(
        &self,
        kind: protocol::Kind,
        encode_body: impl FnOnce(&mut Vec<u8>) -> Result<(), Error>,
    ) -> Result<R, Error> {
        let mut connection = self.checkout()?;
        let id = self.next_id.fetch_add(1, Ordering::Relaxed);
        connection.buf.clear();
        protocol::append_header(&mut connection.buf, id, kind);
        // A request that cannot be encoded or sent leaves the connection as it was.
        let encoded = encode_body(&mut connection.buf)
            .and_then(|()| check_frame_limit(&connection.buf, connection.max_frame));
        if let Err(error) = encoded {
            self.checkin(connection);
            return Err(error);
        }
        protocol::close_frame(&mut connection.buf, 0);
        connection.request_len = connection.buf.len();
        let body = match self.round_trip(&mut connection, id) {
            Ok(body) => body,
            Err(error) => {
                if matches!(
                    error,
                    Error::ConnectionLost { .. } | Error::Timeout { .. } | Error::Protocol(_)
                ) {
                    // The connection is dead or out of step: never reuse it.
                    if matches!(error, Error::ConnectionLost { .. }) {
                        self.forget(connection.instance);
                    }
                    return Err(error);
                }
                self.checkin(connection);
                return Err(error);
            }
        };
        let value = decode_reply(&connection.buf[body..]);
        self.checkin(connection);
        value
    }

    /// Sends the frame in `connection.buf` and reads the reply into the same buffer;
    /// returns where the reply's body starts.
    fn round_trip(&self, connection: &mut Connection, id: u64) -> Result<usize, Error> {
        let Connection { reader, buf, .. } = connection;
        reader
            .get_ref()
            .write_all(buf)
            .map_err(|error| self.lost(error))?;
        self.read_reply(connection, id)
    }

    /// A transport failure of a call: a timeout, or the connection is gone.
    fn lost(&self, source: std::io::Error) -> Error {
        match source.kind() {
            ErrorKind::WouldBlock | ErrorKind::TimedOut => Error::Timeout {
                name: self.name.clone(),
                after: self.call_timeout.unwrap_or_default(),
            },
            _ => Error::ConnectionLost {
                name: self.name.clone(),
                source,
            },
        }
    }

    /// Reads the reply to call `id` into `connection.buf`; returns where its body starts.
    fn read_reply(&self, connection: &mut Connection, id: u64) -> Result<usize, Error> {
        let Connection { reader, buf, .. } = connection;
        match protocol::read_frame(reader, buf, self.max_frame) {
            Ok(()) => {}
            Err(FrameError::Io(error)) => return Err(self.lost(error)),
            Err(FrameError::Protocol(error)) => return Err(Error::Protocol(error)),
        }
        reply_body(buf, id)
    }

    /// A connection to the daemon that runs now, if any: pooled, or found by probing
    /// the runtime directory. Never starts one.
    fn checkout_running(&self) -> Result<Option<Connection>, Error> {
        if let Some(connection) = self.pooled()? {
            return Ok(Some(connection));
        }
        match self.probe(&self.recheck_dir()?) {
            Probe::Found(connection, endpoint) => {
                *self.endpoint() = Some(endpoint);
                Ok(Some(connection))
            }
            Probe::Absent => Ok(None),
            Probe::Busy(error) | Probe::Fatal(error) => Err(error),
        }
    }

    /// After a shutdown was acknowledged: waits until the daemon has closed the
    /// connection (it does as it exits) and its process is gone.
    fn await_exit(&self, mut connection: Connection, pid: Option<u32>) -> Result<(), Error> {
        let deadline = Instant::now() + self.start_timeout;
        let stream = connection.reader.get_mut();
        let _ = stream.set_read_timeout(Some(self.start_timeout));
        let mut sink = [0u8; 64];
        while matches!(stream.read(&mut sink), Ok(n) if n > 0) {}
        let Some(pid) = pid else { return Ok(()) };
        while !crate::sys::process_exited(pid) {
            if Instant::now() >= deadline {
                return Err(Error::Timeout {
                    name: self.name.clone(),
                    after: self.start_timeout,
                });
            }
            std::thread::sleep(Duration::from_millis(2));
        }
        Ok(())
    }

    fn checkout(&self) -> Result<Connection, Error> {
        match self.pooled()? {
            Some(connection) => Ok(connection),
            None => {
                let connection = self.open()?;
                self.refuse_reentry(connection)
            }
        }
    }

    /// An idle pooled connection, if any.
    fn pooled(&self) -> Result<Option<Connection>, Error> {
        let pooled = lock(&self.idle).pop();
        pooled
            .map(|connection| self.refuse_reentry(connection))
            .transpose()
    }

    /// Refuses a call from a method of the very instance it would call: calls run one
    /// at a time, so it would wait for itself forever.
    fn refuse_reentry(&self, connection: Connection) -> Result<Connection, Error> {
        if crate::service::runs_on_this_thread(connection.instance) {
            self.checkin(connection);
            return Err(Error::Reentrant {
                name: self.name.clone(),
            });
        }
        Ok(connection)
    }

    fn checkin(&self, mut connection: Connection) {
        const KEEP: usize = 64 << 10;
        // Large buffers stay while the last call filled a good part of them (a run of
        // large calls reuses one allocation); a huge one no longer used is let go.
        let used = connection.buf.len().max(connection.request_len);
        if connection.buf.capacity() > 16 * KEEP && used < connection.buf.capacity() / 4 {
            connection.buf = Vec::with_capacity(KEEP);
        }
        lock(&self.idle).push(connection);
    }

    /// Drops every pooled connection to `instance` and forgets its endpoint, so the
    /// next call finds (or starts) the daemon afresh.
    fn forget(&self, instance: u64) {
        lock(&self.idle).retain(|connection| connection.instance != instance);
        let mut endpoint = self.endpoint();
        if endpoint
            .as_ref()
            .is_some_and(|endpoint| endpoint.instance == instance)
        {
            *endpoint = None;
        }
    }

    /// A new connection: to the known endpoint if it still answers, else to whatever
    /// daemon the runtime directory names, starting one if none runs.
    fn open(&self) -> Result<Connection, Error> {
        let known = self.endpoint().clone();
        if let Some(endpoint) = known {
            match self.dial(&endpoint) {
                Ok(connection) => return Ok(connection),
                Err(DialError::Fatal(error)) => return Err(error),
                Err(DialError::Stale(_) | DialError::Busy(_)) => {}
            }
        }
        let (connection, endpoint) = self.establish()?;
        *self.endpoint() = Some(endpoint);
        Ok(connection)
    }

    /// Finds the running daemon or starts one: try first; on failure take the start
    /// lock, try again under it, clean stale files, spawn, wait for readiness.
    fn establish(&self) -> Result<(Connection, Endpoint), Error> {
        let dir = self.recheck_dir()?;
        match self.find_or_start(&dir, true, |deadline, lock| {
            self.spawn(&dir, deadline, lock)
        })? {
            Established::Found(connection, endpoint)
            | Established::Started((connection, endpoint)) => Ok((connection, endpoint)),
        }
    }

    /// The runtime directory, opened and checked again: what a client trusts before it
    /// believes a daemon it does not know yet (the directory may have been replaced
    /// since the client was made).
    fn recheck_dir(&self) -> Result<RuntimeDir, Error> {
        RuntimeDir::open(&self.launch.base, &self.name)
    }

    /// [`establish`](Self::establish) with `start` in place of spawning (`spawning`
    /// applies the spawn-only checks: `LOOPBACK_SINGLETON_NO_SPAWN`, daemon mode).
    fn find_or_start<T>(
        &self,
        dir: &RuntimeDir,
        spawning: bool,
        start: impl FnOnce(Instant, &HeldLock) -> Result<T, Error>,
    ) -> Result<Established<T>, Error> {
        let deadline = Instant::now() + self.start_timeout;
        let mut start_lock = None;
        loop {
            match self.probe(dir) {
                Probe::Found(connection, endpoint) => {
                    return Ok(Established::Found(connection, endpoint));
                }
                Probe::Fatal(error) => return Err(error),
                Probe::Busy(error) => {
                    if Instant::now() >= deadline {
                        return Err(error);
                    }
                    std::thread::sleep(Duration::from_millis(5));
                }
                Probe::Absent if start_lock.is_some() => break,
                Probe::Absent => {
                    if spawning && spawn::spawn_disabled() {
                        return Err(Error::NotRunning {
                            name: self.name.clone(),
                        });
                    }
                    if spawning && spawn::in_daemon_mode() {
                        return Err(Error::StartFailed {
                            name: self.name.clone(),
                            reason: "this process is a loopback-singleton daemon, and a daemon never spawns another"
                                .into(),
                        });
                    }
                    let remaining = deadline.saturating_duration_since(Instant::now());
                    start_lock = Some(dir.lock(remaining)?);
                }
            }
        }
        let start_lock = start_lock.expect("the loop leaves with the lock held");
        dir.remove_stale()?;
        // A predecessor that unpublished itself may still be finishing its last call or
        // dropping its instance: its successor starts only once it is gone. (Free now,
        // the instance lock stays free while we hold the start lock: only a host holding
        // the start lock takes it.)
        let remaining = deadline.saturating_duration_since(Instant::now());
        drop(dir.lock_instance(remaining)?);
        let started = start(deadline, &start_lock)?;
        drop(start_lock);
        Ok(Established::Started(started))
    }

    /// Spawns a daemon (the start lock is held, and shared with it) and connects to it.
    fn spawn(
        &self,
        dir: &RuntimeDir,
        deadline: Instant,
        lock: &HeldLock,
    ) -> Result<(Connection, Endpoint), Error> {
        let exe = match &self.daemon_command {
            Some(path) => path.clone(),
            None => crate::sys::current_exe()
                .map_err(|error| Error::io("locating the current executable", error))?,
        };
        let remaining = deadline.saturating_duration_since(Instant::now());
        let (port, pid, instance) =
            spawn::spawn_daemon(&exe, self.service_id, &self.launch, dir, lock, remaining)
                .map_err(|error| match error {
                    SpawnError::Failed(reason) => Error::StartFailed {
                        name: self.name.clone(),
                        reason,
                    },
                    SpawnError::TimedOut => Error::StartTimeout {
                        name: self.name.clone(),
                        waited: self.start_timeout,
                        what: format!(
                            "the daemon's readiness report (see {})",
                            dir.log_path().display()
                        ),
                    },
                })?;
        let secret = dir.read_secret()?.ok_or_else(|| Error::StartFailed {
            name: self.name.clone(),
            reason: "the daemon reported ready but its secret file is missing".into(),
        })?;
        let endpoint = Endpoint {
            port,
            secret,
            pid,
            instance,
            protocol: protocol::PROTOCOL_VERSION,
            starter: self.launch.starter,
        };
        // The daemon we started keeps its first handshake timeout for us whatever its
        // idle TTL; a busy moment (a loaded machine) is worth another try.
        loop {
            match self.dial(&endpoint) {
                Ok(connection) => return Ok((connection, endpoint)),
                Err(DialError::Busy(_)) if Instant::now() < deadline => {
                    std::thread::sleep(Duration::from_millis(5));
                }
                Err(DialError::Stale(error) | DialError::Busy(error) | DialError::Fatal(error)) => {
                    return Err(error);
                }
            }
        }
    }

    /// Looks at the runtime directory: is a live daemon there, and does it take us?
    /// Files that cannot be trusted (another owner, open permissions) are an error, not
    /// stale state: they are not ours to remove.
    fn probe(&self, dir: &RuntimeDir) -> Probe {
        let metadata = match dir.live_daemon() {
            Ok(Some(metadata)) => metadata,
            Ok(None) => return Probe::Absent,
            Err(error) => return Probe::Fatal(error),
        };
        let secret = match dir.read_secret() {
            Ok(Some(secret)) => secret,
            Ok(None) => return Probe::Absent,
            Err(error @ Error::RuntimeDir { .. }) => return Probe::Fatal(error),
            Err(_) => return Probe::Absent,
        };
        let endpoint = Endpoint {
            port: metadata.port,
            secret,
            pid: metadata.pid,
            instance: metadata.instance,
            protocol: metadata.protocol,
            starter: None,
        };
        match self.dial(&endpoint) {
            Ok(connection) => Probe::Found(connection, endpoint),
            Err(DialError::Stale(_)) => Probe::Absent,
            Err(DialError::Busy(error)) => Probe::Busy(error),
            Err(DialError::Fatal(error)) => Probe::Fatal(error),
        }
    }

    /// Connects to `endpoint` and runs the client's side of the mutual handshake.
    fn dial(&self, endpoint: &Endpoint) -> Result<Connection, DialError> {
        let addr = SocketAddr::from((Ipv4Addr::LOCALHOST, endpoint.port));
        let stream = TcpStream::connect_timeout(&addr, self.connect_timeout).map_err(|source| {
            let refused = source.kind() == ErrorKind::ConnectionRefused;
            let error = Error::Connect {
                name: self.name.clone(),
                addr,
                source,
            };
            if refused {
                DialError::Stale(error)
            } else {
                DialError::Busy(error)
            }
        })?;
        let lost = |source: std::io::Error| {
            DialError::Busy(Error::ConnectionLost {
                name: self.name.clone(),
                source,
            })
        };
        let configure = stream
            .set_nodelay(true)
            .and_then(|()| stream.set_read_timeout(Some(self.connect_timeout)))
            .and_then(|()| stream.set_write_timeout(Some(self.connect_timeout)));
        configure.map_err(lost)?;
        let mut reader = BufReader::with_capacity(64 << 10, stream);
        let mut buf = Vec::with_capacity(4096);

        let nonce = protocol::random_bytes();
        let hello = protocol::handshake::Hello {
            magic: protocol::MAGIC,
            version: protocol::PROTOCOL_VERSION,
            nonce,
        };
        protocol::encode_frame(&hello, &mut buf);
        reader.get_ref().write_all(&buf).map_err(lost)?;
        let challenge: protocol::handshake::Challenge =
            self.read_handshake(&mut reader, &mut buf, "challenge")?;
        if challenge.magic != protocol::MAGIC {
            return Err(DialError::Stale(Error::Protocol(ProtocolError::BadMagic)));
        }
        // Nothing an unproven peer says is acted on: a program that took over a
        // recycled port could claim any version. A daemon of another version is one
        // whose own metadata announced the version it now claims.
        if challenge.version != protocol::PROTOCOL_VERSION {
            if challenge.version == endpoint.protocol {
                return Err(DialError::Fatal(Error::ProtocolVersion {
                    name: self.name.clone(),
                    client: protocol::PROTOCOL_VERSION,
                    daemon: challenge.version,
                }));
            }
            return Err(DialError::Stale(Error::Protocol(
                ProtocolError::Unexpected(format!(
                    "the process on port {} claims protocol version {} and has proved nothing",
                    endpoint.port, challenge.version
                )),
            )));
        }
        if !protocol::handshake::verify(
            &endpoint.secret,
            Role::Daemon,
            &nonce,
            &challenge.nonce,
            &challenge.proof,
        ) {
            return Err(DialError::Stale(Error::Auth {
                name: self.name.clone(),
                reason: format!(
                    "the process on port {} could not prove it knows the daemon's secret",
                    endpoint.port
                ),
            }));
        }
        let auth = protocol::handshake::Auth {
            proof: *protocol::handshake::proof(
                &endpoint.secret,
                Role::Client,
                &nonce,
                &challenge.nonce,
            )
            .as_bytes(),
            schema: self.schema,
            init: self.init,
            starter: endpoint.starter,
        };
        protocol::encode_frame(&auth, &mut buf);
        reader.get_ref().write_all(&buf).map_err(lost)?;
        // The daemon has proved itself: whatever goes wrong from here is not stale state,
        // and must never get its files removed.
        let verdict = self
            .read_handshake(&mut reader, &mut buf, "verdict")
            .map_err(|error| match error {
                DialError::Stale(error) => DialError::Fatal(error),
                other => other,
            })?;
        let (instance, max_frame) = match verdict {
            protocol::handshake::Verdict::Welcome {
                instance,
                max_frame,
                ..
            } => (instance, max_frame.min(self.max_frame)),
            protocol::handshake::Verdict::Rejected(protocol::handshake::Rejection::Schema {
                daemon,
            }) => {
                return Err(DialError::Fatal(Error::SchemaMismatch {
                    name: self.name.clone(),
                    client: self.schema,
                    daemon,
                }));
            }
            protocol::handshake::Verdict::Rejected(protocol::handshake::Rejection::Init {
                running,
            }) => {
                return Err(DialError::Fatal(Error::InitMismatch {
                    name: self.name.clone(),
                    wanted: self.launch.init_description.clone(),
                    running,
                }));
            }
            protocol::handshake::Verdict::Rejected(
                protocol::handshake::Rejection::ShuttingDown,
            ) => {
                return Err(DialError::Busy(Error::Remote(RemoteError::ShuttingDown)));
            }
        };
        let stream = reader.get_ref();
        stream
            .set_read_timeout(self.call_timeout)
            .and_then(|()| stream.set_write_timeout(self.call_timeout))
            .map_err(lost)?;
        Ok(Connection {
            reader,
            buf,
            instance,
            max_frame,
            request_len: 0,
        })
    }

    fn read_handshake<T: serde::de::DeserializeOwned>(
        &self,
        reader: &mut BufReader<TcpStream>,
        buf: &mut Vec<u8>,
        what: &'static str,
    ) -> Result<T, DialError> {
        match protocol::read_frame(reader, buf, protocol::MAX_HANDSHAKE_FRAME) {
            Ok(()) => {}
            // Closed or silent: a daemon retiring or overloaded, or not a daemon at all.
            Err(FrameError::Io(source)) => {
                return Err(DialError::Busy(Error::ConnectionLost {
                    name: self.name.clone(),
                    source,
                }));
            }
            Err(FrameError::Protocol(error)) => {
                return Err(DialError::Stale(Error::Protocol(error)));
            }
        }
        protocol::decode(what, buf).map_err(|error| DialError::Stale(Error::Protocol(error)))
    }
}
