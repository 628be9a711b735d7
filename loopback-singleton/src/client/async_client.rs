//! The async client: many tasks share one connection, their calls multiplexed by call
//! id. Finding or starting the daemon reuses the blocking client's logic on tokio's
//! blocking pool; calls themselves never block a runtime thread.
//!
//! One writer task sends queued requests (several per write when they pile up), one
//! reader task hands each reply to the call waiting for its id. A call's future owns
//! its encoded request and a handle to the connection, never the caller's arguments,
//! so it is `Send + 'static` and can be spawned.

use std::collections::HashMap;
use std::fmt;
use std::future::Future;
use std::marker::PhantomData;
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::Duration;

use serde::Serialize;
use serde::de::DeserializeOwned;
use tokio::io::{AsyncWriteExt, BufReader};
use tokio::sync::{mpsc, oneshot};

use super::{self as client, Builder, Client, lock};
use crate::error::Error;
use crate::protocol::{self, DaemonInfo, FrameError, Stats, Transport};
use crate::service::Service;
use crate::sys;

/// The untyped async client underneath a generated `<Type>AsyncClient`: cheap to clone,
/// `Send + Sync`. Calls from any number of tasks share one connection; the daemon still
/// runs them one at a time. Needs a tokio runtime.
///
/// ```no_run
/// use loopback_singleton::local_singleton;
///
/// #[derive(Default)]
/// pub struct Counter { value: u64 }
///
/// #[local_singleton]
/// impl Counter {
///     pub fn inc(&mut self) -> u64 { self.value += 1; self.value }
/// }
///
/// # async fn run() -> Result<(), loopback_singleton::Error> {
/// let counter = CounterAsyncClient::connect().await?;
/// // The futures borrow nothing: spawn them, join them, drop them.
/// let calls: Vec<_> = (0..100).map(|_| tokio::spawn(counter.inc())).collect();
/// for call in calls {
///     call.await.expect("task")?;
/// }
/// # Ok(()) }
/// ```
pub struct AsyncClient<S> {
    blocking: Client<S>,
    core: Arc<Core>,
    service: PhantomData<fn() -> S>,
}

impl<S> Clone for AsyncClient<S> {
    fn clone(&self) -> Self {
        AsyncClient {
            blocking: self.blocking.clone(),
            core: Arc::clone(&self.core),
            service: PhantomData,
        }
    }
}

impl<S> fmt::Debug for AsyncClient<S> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("AsyncClient")
            .field("name", &self.blocking.name())
            .field("runtime_dir", &self.blocking.runtime_dir())
            .finish()
    }
}

/// A call on an [`AsyncClient`]: resolves to the method's return value, or the
/// transport error. It owns its encoded request and borrows nothing, so it can be
/// spawned. Like any Rust future it does nothing until polled: the request is sent on
/// the first poll. Dropping it after that stops the wait, not the call, which still
/// runs in the daemon.
#[must_use = "a call's reply is only awaited through its future"]
pub struct Call<T> {
    future: Pin<Box<dyn Future<Output = Result<T, Error>> + Send>>,
}

impl<T: 'static> Call<T> {
    fn new(future: impl Future<Output = Result<T, Error>> + Send + 'static) -> Self {
        Call {
            future: Box::pin(future),
        }
    }

    /// Converts the value once it arrives (generated code: `ByteBuf` into `Vec<u8>`).
    #[doc(hidden)]
    pub fn map<U: 'static>(self, convert: fn(T) -> U) -> Call<U> {
        Call::new(async move { self.await.map(convert) })
    }
}

impl<T> Future for Call<T> {
    type Output = Result<T, Error>;

    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        self.future.as_mut().poll(cx)
    }
}

impl<T> fmt::Debug for Call<T> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Call")
    }
}

/// What all clones, and the futures of their calls, share. Knows nothing of the
/// service type.
struct Core {
    name: String,
    /// Opens an authenticated connection, finding or starting the daemon (blocking).
    /// Returns the stream and the id of the daemon instance it leads to.
    connect: Box<dyn Fn() -> Result<(sys::Stream, u64), Error> + Send + Sync>,
    /// The live connection, if any.
    link: Mutex<Option<Arc<Link>>>,
    /// Held while (re)connecting, so that concurrent calls wait for one connection
    /// instead of opening one each.
    connecting: tokio::sync::Mutex<()>,
    next_id: AtomicU64,
    call_timeout: Option<Duration>,
    max_frame: u32,
}

/// One authenticated connection and its two tasks. Dropping the last handle closes the
/// request queue; the writer task then shuts the socket's write side, the daemon closes
/// the connection, and the reader task ends.
struct Link {
    /// The daemon instance at the other end.
    instance: u64,
    requests: mpsc::UnboundedSender<Vec<u8>>,
    waiters: Arc<Mutex<Waiters>>,
}

/// The calls waiting for their replies, by call id.
struct Waiters {
    /// Cleared when the connection fails: later calls reconnect.
    open: bool,
    replies: HashMap<u64, oneshot::Sender<Result<Vec<u8>, Error>>>,
}

impl<S: Service> AsyncClient<S> {
    /// Finds or starts the daemon and opens the shared connection.
    pub(crate) async fn connect(builder: Builder<S>, init: S::Init) -> Result<Self, Error> {
        let blocking = Client::<S>::unconnected(builder, &init)?;
        let (call_timeout, max_frame) = blocking.limits();
        let connector = blocking.clone();
        let client = AsyncClient {
            core: Arc::new(Core {
                name: blocking.name().to_string(),
                connect: Box::new(move || connector.detach_connection()),
                link: Mutex::new(None),
                connecting: tokio::sync::Mutex::new(()),
                next_id: AtomicU64::new(1),
                call_timeout,
                max_frame,
            }),
            blocking,
            service: PhantomData,
        };
        client.core.link().await?;
        Ok(client)
    }
}

impl<S: 'static> AsyncClient<S> {
    /// Runs method number `method` with its arguments encoded as a tuple. The request is
    /// encoded before this returns; the [`Call`] owns everything it needs. Called by
    /// generated code.
    #[doc(hidden)]
    pub fn call<R, A>(&self, method: u32, args: &A) -> Call<R>
    where
        R: DeserializeOwned + 'static,
        A: Serialize + ?Sized,
    {
        let request = self.request(protocol::Kind::Call, |buf| {
            client::encode_call(buf, method, args)
        });
        let core = Arc::clone(&self.core);
        Call::new(async move {
            let (id, frame) = request?;
            let reply = core.exchange(id, frame).await?;
            client::decode_reply(&reply[client::reply_body(&reply, id)?..])
        })
    }

    /// Asks the daemon about itself: pid, uptime, calls served, connected clients.
    pub async fn ping(&self) -> Result<DaemonInfo, Error> {
        let (id, frame) = self.request(protocol::Kind::Ping, |_| Ok(()))?;
        let reply = self.core.exchange(id, frame).await?;
        client::decode_reply(&reply[client::reply_body(&reply, id)?..])
    }

    /// The daemon's per-method metrics (see [`Client::stats`]).
    pub async fn stats(&self) -> Result<Stats, Error> {
        self.stats_request(false).await
    }

    /// The metrics, zeroed in the same step (see [`Client::take_stats`]).
    pub async fn take_stats(&self) -> Result<Stats, Error> {
        self.stats_request(true).await
    }

    async fn stats_request(&self, zero: bool) -> Result<Stats, Error> {
        let (id, frame) = self.request(protocol::Kind::Stats, |buf| {
            buf.extend(zero.then_some(1));
            Ok(())
        })?;
        let reply = self.core.exchange(id, frame).await?;
        client::decode_reply(&reply[client::reply_body(&reply, id)?..])
    }

    /// Makes sure a daemon runs, starting a fresh one if the one this client knew has
    /// died, and returns its info.
    pub async fn ensure_started(&self) -> Result<DaemonInfo, Error> {
        match self.ping().await {
            // The failure closed the dead connection; the retry finds or starts one.
            Err(Error::ConnectionLost { .. } | Error::Connect { .. }) => self.ping().await,
            other => other,
        }
    }

    /// Stops the daemon and returns once it is gone (see [`Client::shutdown`]).
    pub async fn shutdown(&self) -> Result<(), Error> {
        let blocking = self.blocking.clone();
        let result = tokio::task::spawn_blocking(move || blocking.shutdown())
            .await
            .map_err(|error| Error::io("the shutdown task", std::io::Error::other(error)))?;
        if let Some(link) = lock(&self.core.link).take() {
            link.fail(|| lost(self.blocking.name(), "the daemon was shut down"));
        }
        result
    }

    /// The singleton name this client talks to.
    pub fn name(&self) -> &str {
        self.blocking.name()
    }

    /// The transport this client's connection uses (see
    /// [`Builder::transport`](crate::Builder::transport)).
    pub fn transport(&self) -> Transport {
        self.blocking.transport()
    }

    /// Encodes a request frame with a fresh call id.
    fn request(
        &self,
        kind: protocol::Kind,
        encode_body: impl FnOnce(&mut Vec<u8>) -> Result<(), Error>,
    ) -> Result<(u64, Vec<u8>), Error> {
        let id = self.core.next_id.fetch_add(1, Ordering::Relaxed);
        let mut frame = Vec::new();
        protocol::append_header(&mut frame, id, kind);
        encode_body(&mut frame)?;
        client::check_frame_limit(&frame, self.core.max_frame)?;
        protocol::close_frame(&mut frame, 0);
        Ok((id, frame))
    }
}

impl Core {
    /// Sends one request frame and waits for its reply's payload.
    async fn exchange(self: &Arc<Self>, id: u64, frame: Vec<u8>) -> Result<Vec<u8>, Error> {
        let link = self.link().await?;
        // An `async fn` method awaiting a call to its own instance would wait for
        // itself: calls run one at a time.
        if crate::service::runs_on_this_thread(link.instance) {
            return Err(Error::Reentrant {
                name: self.name.clone(),
            });
        }
        let (reply_tx, reply_rx) = oneshot::channel();
        {
            let mut waiters = lock(&link.waiters);
            if !waiters.open {
                return Err(lost(&self.name, "the connection closed"));
            }
            waiters.replies.insert(id, reply_tx);
        }
        if link.requests.send(frame).is_err() {
            lock(&link.waiters).replies.remove(&id);
            return Err(lost(&self.name, "the connection closed"));
        }
        let reply = match self.call_timeout {
            None => reply_rx.await,
            Some(limit) => match tokio::time::timeout(limit, reply_rx).await {
                Ok(reply) => reply,
                Err(_) => {
                    // A late reply finds no waiter and is dropped.
                    lock(&link.waiters).replies.remove(&id);
                    return Err(Error::Timeout {
                        name: self.name.clone(),
                        after: limit,
                    });
                }
            },
        };
        reply.unwrap_or_else(|_| Err(lost(&self.name, "the connection closed")))
    }

    /// The live connection, or a new one (finding or starting the daemon).
    async fn link(self: &Arc<Self>) -> Result<Arc<Link>, Error> {
        if let Some(link) = self.live_link() {
            return Ok(link);
        }
        let _connecting = self.connecting.lock().await;
        if let Some(link) = self.live_link() {
            return Ok(link);
        }
        let core = Arc::clone(self);
        let (stream, instance) = tokio::task::spawn_blocking(move || (core.connect)())
            .await
            .map_err(|error| Error::io("the connect task", std::io::Error::other(error)))??;
        let link = Link::start(stream, instance, self.max_frame, &self.name)?;
        *lock(&self.link) = Some(Arc::clone(&link));
        Ok(link)
    }

    fn live_link(&self) -> Option<Arc<Link>> {
        lock(&self.link)
            .as_ref()
            .filter(|link| lock(&link.waiters).open)
            .cloned()
    }
}

impl Link {
    /// Takes over an authenticated connection: spawns its writer and reader tasks.
    fn start(
        stream: sys::Stream,
        instance: u64,
        max_frame: u32,
        name: &str,
    ) -> Result<Arc<Link>, Error> {
        let register = |error| Error::io("registering the connection with tokio", error);
        stream.set_read_timeout(None).map_err(register)?;
        let (reader, writer) = stream.into_async().map_err(register)?.into_split();
        let (requests, queue) = mpsc::unbounded_channel();
        let waiters = Arc::new(Mutex::new(Waiters {
            open: true,
            replies: HashMap::new(),
        }));
        tokio::spawn(write_requests(
            writer,
            queue,
            Arc::clone(&waiters),
            name.to_string(),
        ));
        tokio::spawn(read_replies(
            reader,
            Arc::clone(&waiters),
            max_frame,
            name.to_string(),
        ));
        Ok(Arc::new(Link {
            instance,
            requests,
            waiters,
        }))
    }

    fn fail(&self, error: impl Fn() -> Error) {
        fail_all(&self.waiters, error);
    }
}

/// Marks the connection dead and fails every waiting call.
fn fail_all(waiters: &Mutex<Waiters>, error: impl Fn() -> Error) {
    let mut waiters = lock(waiters);
    waiters.open = false;
    for (_, reply) in waiters.replies.drain() {
        let _ = reply.send(Err(error()));
    }
}

fn lost(name: &str, why: &str) -> Error {
    Error::ConnectionLost {
        name: name.to_string(),
        source: std::io::Error::new(std::io::ErrorKind::ConnectionAborted, why.to_string()),
    }
}

/// Sends queued requests, several per write when they have piled up.
async fn write_requests(
    mut writer: sys::WriteHalf,
    mut queue: mpsc::UnboundedReceiver<Vec<u8>>,
    waiters: Arc<Mutex<Waiters>>,
    name: String,
) {
    const BATCH: usize = 64 << 10;
    let mut batch = Vec::new();
    while let Some(first) = queue.recv().await {
        batch.clear();
        batch.extend_from_slice(&first);
        while batch.len() < BATCH {
            match queue.try_recv() {
                Ok(next) => batch.extend_from_slice(&next),
                Err(_) => break,
            }
        }
        if let Err(error) = writer.write_all(&batch).await {
            let why = error.to_string();
            fail_all(&waiters, || lost(&name, &why));
            return;
        }
    }
    // Every handle is gone: let the daemon see the end of the stream.
    let _ = writer.shutdown().await;
}

/// Fails the waiting calls when the reader task ends for any reason, including its
/// runtime shutting down under it: a call must never wait for a reply nobody reads.
struct FailOnDrop {
    waiters: Arc<Mutex<Waiters>>,
    name: String,
}

impl Drop for FailOnDrop {
    fn drop(&mut self) {
        fail_all(&self.waiters, || {
            lost(&self.name, "the connection's reader stopped")
        });
    }
}

/// Hands each reply to the call waiting for its id, until the connection ends.
async fn read_replies(
    reader: sys::ReadHalf,
    waiters: Arc<Mutex<Waiters>>,
    max_frame: u32,
    name: String,
) {
    let _fail_on_exit = FailOnDrop {
        waiters: Arc::clone(&waiters),
        name: name.clone(),
    };
    let mut reader = BufReader::with_capacity(64 << 10, reader);
    loop {
        let mut payload = Vec::new();
        let failure = match protocol::read_frame_async(&mut reader, &mut payload, max_frame).await {
            Ok(()) => match protocol::split_reply(&payload) {
                Ok((id, _, _)) => {
                    if let Some(reply) = lock(&waiters).replies.remove(&id) {
                        let _ = reply.send(Ok(payload));
                    }
                    continue;
                }
                Err(error) => error.to_string(),
            },
            Err(FrameError::Io(error)) => error.to_string(),
            Err(FrameError::Protocol(error)) => error.to_string(),
        };
        fail_all(&waiters, || lost(&name, &failure));
        return;
    }
}
