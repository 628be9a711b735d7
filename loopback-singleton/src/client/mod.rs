//! The blocking client: finds or starts the daemon, authenticates, and runs calls over a
//! small pool of connections so that one client serves many threads at once.
//!
//! Files: [`builder`] (settings, `connect`), this module (the typed-call surface:
//! `call`, `pipeline`, `ping`, `shutdown`), [`pool`] (connections and one request's
//! round trip), [`connect`] (finding, starting and authenticating with the daemon),
//! [`async_client`] (one multiplexed connection for many tasks).

pub(crate) mod async_client;
mod builder;
mod connect;
mod pool;
mod shm;

pub use builder::Builder;

use std::fmt;
use std::io::Write;
use std::marker::PhantomData;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::Duration;

use serde::Serialize;
use serde::de::DeserializeOwned;

use crate::error::Error;
use crate::options::{TRANSPORT_ENV, transport_from_env};
use crate::protocol::{self, DaemonInfo, ProtocolError, RemoteError, Stats, Transport};
use crate::runtime_dir::{self, RuntimeDir};
use crate::service::Service;
use crate::spawn::Launch;

use self::connect::Endpoint;
use self::pool::{Connection, Inner};

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
        // The first connection: through the directory `prepare` has just opened and
        // checked (later ones check it afresh before they believe a new daemon).
        let (connection, endpoint) = inner.establish(&inner.dir)?;
        *inner.endpoint() = Some(endpoint);
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
        let transport = match builder.transport {
            Some(transport) => transport,
            None => transport_from_env()
                .map_err(|value| Error::Environment {
                    variable: TRANSPORT_ENV.into(),
                    value,
                    expected: "tcp, unix or shm".into(),
                })?
                .unwrap_or_default(),
        };
        let unavailable = |reason: &str| Error::TransportUnavailable {
            name: name.clone(),
            transport,
            reason: reason.into(),
        };
        match transport {
            Transport::Unix | Transport::SharedMemory if !crate::sys::UNIX_SOCKETS => {
                return Err(unavailable(
                    "this platform has no Unix-domain sockets (which shared memory is set \
                     up over); use tcp",
                ));
            }
            _ => {}
        }
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
            describe: crate::service::wire_description::<S>,
            connect_timeout: builder.connect_timeout,
            start_timeout: builder.start_timeout,
            call_timeout: builder.call_timeout,
            max_frame: builder.options.max_frame,
            daemon_command: builder.daemon_command,
            transport,
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

/// What [`Inner::find_or_start`] came to. Made once per daemon found or started, so
/// its size does not matter.
#[allow(clippy::large_enum_variant)]
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

    /// The daemon's per-method metrics: calls, errors, panics, bytes, and latency
    /// percentiles of the method and of the wait for the instance (see [`Stats`]).
    pub fn stats(&self) -> Result<Stats, Error> {
        self.inner.request(protocol::Kind::Stats, |_| Ok(()))
    }

    /// Like [`stats`](Self::stats), and zeroes the daemon's metrics in the same step:
    /// the report covers up to the reset, the next one starts from it.
    pub fn take_stats(&self) -> Result<Stats, Error> {
        self.inner.request(protocol::Kind::Stats, |buf| {
            buf.push(1);
            Ok(())
        })
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
    pub(crate) fn detach_connection(&self) -> Result<(crate::sys::Stream, u64), Error> {
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

    /// The transport this client's connections use (see [`Builder::transport`]).
    pub fn transport(&self) -> Transport {
        self.inner.transport
    }

    /// The runtime directory of this singleton (metadata, secret, lock, log).
    pub fn runtime_dir(&self) -> &std::path::Path {
        self.inner.dir.path()
    }
}
