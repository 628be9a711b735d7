//! The daemon: hosts the one instance and serves authenticated clients on 127.0.0.1.
//!
//! Two threads, each with a single-threaded tokio runtime:
//! - the **front** thread accepts connections, runs handshakes (with a deadline),
//!   counts clients, and retires the daemon after the idle TTL or on `shutdown`;
//! - the **instance** thread owns the instance (it is constructed there, so it need
//!   not be `Send`) and every authenticated connection: it reads a request, runs the
//!   method and writes the reply without any hop to another task or thread.
//!
//! A slow method therefore never delays a newcomer's handshake, and calls run one at a
//! time (an async mutex, fair, in arrival order per connection).

use std::any::Any;
use std::future::Future;
use std::panic::{AssertUnwindSafe, catch_unwind};
use std::pin::Pin;
use std::rc::Rc;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, Ordering};
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use serde::Serialize;
use tokio::io::{AsyncRead, AsyncWrite, AsyncWriteExt, BufReader};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{Mutex, Notify, mpsc};

use crate::error::Error;
use crate::options::ServeOptions;
use crate::protocol::handshake::Role;
use crate::protocol::{self, Fingerprint, FrameError, RemoteError, Secret};
use crate::runtime_dir::{self, HeldLock, Metadata, RuntimeDir};
use crate::service::{Dispatch, Service};
use crate::spawn::{self, Launch, Readiness, ReadySender};
use crate::sys;

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
            log(&format!("exiting on a panic: {}", panic_message(&*panic)));
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
    sys::daemon_stdio(dir.open_log());
    // The client waited for the predecessor to be gone before it spawned us, under the
    // start lock we share: the wait below is a safeguard.
    match run::<S>(&dir, launch, ready, None, PREDECESSOR_WAIT) {
        Ok(()) => 0,
        Err(error) => {
            log(&format!("exiting on error: {error}"));
            1
        }
    }
}

/// [`Service::serve`]: hosts `S` in this process until it retires.
pub(crate) fn serve<S: Service>(init: S::Init, options: ServeOptions) -> Result<(), Error> {
    let name = options.name.clone().unwrap_or_else(|| S::NAME.to_string());
    let base = runtime_dir::base_dir(options.dir.as_deref())?;
    let dir = RuntimeDir::open(&base, &name)?;
    let lock = dir.lock(Duration::from_secs(10))?;
    if let Some(metadata) = dir.live_daemon()? {
        return Err(Error::StartFailed {
            name,
            reason: format!("a daemon already runs (pid {})", metadata.pid),
        });
    }
    // A predecessor may still be retiring: `start` waits for its instance lock.
    dir.remove_stale()?;
    let launch = Launch {
        starter: None,
        ..Launch::new(name, base, options, &init)?
    };
    run::<S>(
        &dir,
        launch,
        ReadySender::none(),
        Some(lock),
        Duration::from_secs(10),
    )
}

/// State shared by the front and instance threads.
struct Shared {
    name: String,
    pid: u32,
    instance: u64,
    port: u16,
    started: Instant,
    schema: Fingerprint,
    init: Fingerprint,
    init_description: String,
    options: ServeOptions,
    /// Authenticated connections: what `max_connections`, the idle TTL and
    /// `DaemonInfo::clients` count. A peer without the secret counts for none of them.
    connections: AtomicU32,
    /// Connections still in their handshake (capped by `MAX_PENDING_HANDSHAKES`).
    handshaking: AtomicU32,
    /// When the last authenticated connection closed (or, before the first one, when
    /// the host published itself), in milliseconds since `started`: the idle TTL runs
    /// from there.
    idle_since_ms: AtomicU64,
    /// The token of the client that started the host, if any (see `protocol::handshake::Auth`).
    starter: Option<protocol::Nonce>,
    /// Until the starter has authenticated (or, with no starter, any client), the idle
    /// TTL runs a handshake timeout longer: the client that started the host is served
    /// whatever the constructor's duration or the TTL, even if other clients came and
    /// went before it, and a host whose starter died still retires.
    starter_arrived: AtomicBool,
    calls_served: AtomicU64,
    shutting_down: AtomicBool,
    /// Wakes the front thread: a connection closed, or shutdown was asked for.
    wake_front: Notify,
}

/// Handshakes in progress at once; more wait in the listen backlog. Each is bounded by
/// the handshake deadline, so peers without the secret can delay newcomers, not shut
/// out the clients already connected.
const MAX_PENDING_HANDSHAKES: u32 = 128;

impl Shared {
    /// When the daemon retires for want of clients, if it is idle and has a TTL.
    fn idle_deadline(&self) -> Option<Instant> {
        let ttl = self.options.idle_ttl?;
        if self.connections.load(Ordering::Acquire) != 0 {
            return None;
        }
        let since =
            self.started + Duration::from_millis(self.idle_since_ms.load(Ordering::Acquire));
        let grace = if self.starter_arrived.load(Ordering::Acquire) {
            Duration::ZERO
        } else {
            self.options.handshake_timeout
        };
        Some(since + ttl + grace)
    }

    /// Restarts the idle clock now.
    fn mark_idle_now(&self) {
        let since_start = self.started.elapsed().as_millis() as u64;
        self.idle_since_ms.store(since_start, Ordering::Release);
    }
}

/// What the front thread hands the instance thread.
enum ToInstance {
    Connection(std::net::TcpStream, ConnectionGuard),
    Retire,
}

/// Builds the instance on the instance thread (so it need not be `Send`): for a daemon,
/// the `#[init]` constructor on the decoded arguments; for an in-process host (a
/// single-instance primary), any closure. `Err` carries the reason reported to clients.
pub(crate) type Construct<S> = Box<dyn FnOnce() -> Result<S, String> + Send>;

/// A daemon's constructor: decodes the init arguments and runs `S::construct`.
fn construct_from<S: Service>(init: Vec<u8>) -> Construct<S> {
    Box::new(move || {
        let init: S::Init = postcard::from_bytes(&init)
            .map_err(|error| format!("decoding the init arguments: {error}"))?;
        S::construct(init).map_err(|reason| format!("the constructor failed: {reason}"))
    })
}

fn run<S: Service>(
    dir: &RuntimeDir,
    launch: Launch,
    mut ready: ReadySender,
    lock: Option<HeldLock>,
    predecessor_wait: Duration,
) -> Result<(), Error> {
    sys::raise_fd_limit();
    let construct = construct_from::<S>(launch.init.clone());
    let started = start::<S>(dir, launch, construct, &mut ready, predecessor_wait)?;
    drop(lock);
    started.serve(dir, Signals::Retire)
}

/// A host that is bound, built and published, but not serving yet.
struct Started {
    listener: std::net::TcpListener,
    shared: Arc<Shared>,
    secret: Secret,
    to_instance: mpsc::UnboundedSender<ToInstance>,
    instance_thread: std::thread::JoinHandle<()>,
    /// Held until the instance is dropped.
    instance_lock: HeldLock,
}

/// How long a spawned daemon or an in-process host waits for its predecessor to finish
/// retiring (its last call and its `Drop`) before it gives up.
const PREDECESSOR_WAIT: Duration = Duration::from_secs(60);

/// Waits for the instance lock (a predecessor may still be dropping its instance),
/// binds, builds the instance on its thread, publishes secret and metadata, and reports
/// readiness.
fn start<S: Service>(
    dir: &RuntimeDir,
    launch: Launch,
    construct: Construct<S>,
    ready: &mut ReadySender,
    predecessor_wait: Duration,
) -> Result<Started, Error> {
    let fail = |ready: &mut ReadySender, reason: String| {
        log(&format!("start failed: {reason}"));
        ready.send(&Readiness::Failed {
            reason: reason.clone(),
        });
        Error::StartFailed {
            name: launch.name.clone(),
            reason,
        }
    };

    // One instance of a name at a time: no constructor runs before the previous
    // instance's `Drop` has finished (which is where a service may persist its state).
    let instance_lock = match dir.lock_instance(predecessor_wait) {
        Ok(lock) => lock,
        Err(error) => return Err(fail(ready, error.to_string())),
    };
    let listener = match std::net::TcpListener::bind((std::net::Ipv4Addr::LOCALHOST, 0)) {
        Ok(listener) => listener,
        Err(error) => return Err(fail(ready, format!("binding 127.0.0.1: {error}"))),
    };
    let port = listener.local_addr().map(|addr| addr.port()).unwrap_or(0);
    let shared = Arc::new(Shared {
        name: launch.name.clone(),
        pid: std::process::id(),
        instance: u64::from_le_bytes(protocol::random_bytes()),
        port,
        started: Instant::now(),
        schema: S::SCHEMA,
        init: launch.init_fingerprint,
        init_description: launch.init_description.clone(),
        options: launch.options.clone(),
        connections: AtomicU32::new(0),
        handshaking: AtomicU32::new(0),
        idle_since_ms: AtomicU64::new(0),
        starter: launch.starter,
        starter_arrived: AtomicBool::new(false),
        calls_served: AtomicU64::new(0),
        shutting_down: AtomicBool::new(false),
        wake_front: Notify::new(),
    });

    // The instance is built on its own thread, which keeps it for life.
    let (to_instance, from_front) = mpsc::unbounded_channel();
    let (built_tx, built_rx) = std::sync::mpsc::channel();
    let instance_thread = {
        let quiet = QUIET.get();
        let instance = shared.instance;
        std::thread::Builder::new()
            .name("loopback-singleton-instance".into())
            .spawn(move || {
                QUIET.set(quiet);
                HOSTED_HERE.set(Some(instance));
                instance_thread::<S>(construct, built_tx, from_front)
            })
            .map_err(|error| fail(ready, format!("spawning the instance thread: {error}")))?
    };
    match built_rx.recv() {
        Ok(Ok(())) => {}
        Ok(Err(reason)) => {
            let _ = instance_thread.join();
            return Err(fail(ready, reason));
        }
        Err(_) => return Err(fail(ready, "the instance thread died".into())),
    }

    let secret: Secret = protocol::random_bytes();
    let metadata = Metadata {
        port,
        pid: shared.pid,
        start_time: crate::sys::process_start_time(shared.pid).unwrap_or(0),
        instance: shared.instance,
        service: S::SERVICE_ID.to_string(),
        schema: S::SCHEMA,
        init: shared.init,
        init_description: shared.init_description.clone(),
        protocol: protocol::PROTOCOL_VERSION,
        crate_version: env!("CARGO_PKG_VERSION").to_string(),
    };
    if let Err(error) = dir
        .write_secret(&secret)
        .and_then(|()| dir.write_metadata(&metadata))
    {
        let _ = to_instance.send(ToInstance::Retire);
        let _ = instance_thread.join();
        return Err(fail(ready, error.to_string()));
    }
    log(&format!(
        "serving `{}` (pid {}, instance {:016x}) on 127.0.0.1:{port}",
        shared.name, shared.pid, shared.instance
    ));
    ready.send(&Readiness::Ready {
        port,
        pid: shared.pid,
        instance: shared.instance,
    });
    // The idle clock starts now, not before a constructor that may have taken longer
    // than the TTL.
    shared.mark_idle_now();
    Ok(Started {
        listener,
        shared,
        secret,
        to_instance,
        instance_thread,
        instance_lock,
    })
}

/// Whether SIGTERM and SIGINT retire the host gracefully: yes for a daemon (the signals
/// of logout and service managers), no for a host inside an application, whose signals
/// are the application's business.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Signals {
    Retire,
    Ignore,
}

impl Started {
    /// Serves until the host retires, then unpublishes it and drops the instance.
    fn serve(self, dir: &RuntimeDir, signals: Signals) -> Result<(), Error> {
        let Started {
            listener,
            shared,
            secret,
            to_instance,
            instance_thread,
            instance_lock,
        } = self;
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .map_err(|error| Error::io("building the daemon runtime", error))?;
        let why = runtime.block_on(front(
            listener,
            Arc::clone(&shared),
            secret,
            to_instance.clone(),
            signals,
        ));
        log(&format!("retiring: {why}"));
        // Unpublish first, so that newcomers start a successor instead of finding us;
        // the successor waits for the instance lock, released only once our instance
        // is dropped.
        dir.retire(shared.instance);
        drop(runtime);
        let _ = to_instance.send(ToInstance::Retire);
        let _ = instance_thread.join();
        drop(instance_lock);
        log("instance dropped; exiting");
        Ok(())
    }
}

/// Accepts, authenticates and counts connections until the daemon retires; says why.
async fn front(
    listener: std::net::TcpListener,
    shared: Arc<Shared>,
    secret: Secret,
    to_instance: mpsc::UnboundedSender<ToInstance>,
    signals: Signals,
) -> &'static str {
    let listener = match listener
        .set_nonblocking(true)
        .and_then(|()| TcpListener::from_std(listener))
    {
        Ok(listener) => listener,
        Err(_) => return "cannot register the listener",
    };
    let mut stop_signals = (signals == Signals::Retire).then(sys::StopSignals::listen);
    loop {
        if shared.shutting_down.load(Ordering::Acquire) {
            return "shutdown requested";
        }
        let idle_deadline = shared.idle_deadline().map(tokio::time::Instant::from_std);
        // With every handshake slot taken, newcomers wait in the listen backlog until a
        // slot frees (each handshake has a deadline) instead of being turned away.
        let slot_free = shared.handshaking.load(Ordering::Acquire) < MAX_PENDING_HANDSHAKES;
        tokio::select! {
            accepted = listener.accept(), if slot_free => match accepted {
                Ok((stream, _)) => {
                    if shared.connections.load(Ordering::Acquire) >= shared.options.max_connections {
                        log_peer("connection refused: max_connections reached");
                        continue;
                    }
                    shared.handshaking.fetch_add(1, Ordering::AcqRel);
                    tokio::spawn(admit(stream, Arc::clone(&shared), secret, to_instance.clone()));
                }
                Err(error) => {
                    // Typically EMFILE: back off instead of spinning.
                    log_peer(&format!("accept failed: {error}"));
                    tokio::time::sleep(Duration::from_millis(20)).await;
                }
            },
            () = shared.wake_front.notified() => {}
            () = sleep_until_opt(idle_deadline) => {
                if shared.idle_deadline().is_some_and(|deadline| deadline <= Instant::now()) {
                    return "idle TTL elapsed with no client connected";
                }
            }
            () = stop_signal(&mut stop_signals) => return "SIGTERM or SIGINT",
        }
    }
}

/// Completes on SIGTERM or SIGINT, if the host listens to them.
async fn stop_signal(signals: &mut Option<sys::StopSignals>) {
    match signals {
        Some(signals) => signals.recv().await,
        None => std::future::pending().await,
    }
}

async fn sleep_until_opt(deadline: Option<tokio::time::Instant>) {
    match deadline {
        Some(deadline) => tokio::time::sleep_until(deadline).await,
        None => std::future::pending().await,
    }
}

/// Runs the handshake under its deadline; hands an authenticated connection over.
async fn admit(
    mut stream: TcpStream,
    shared: Arc<Shared>,
    secret: Secret,
    to_instance: mpsc::UnboundedSender<ToInstance>,
) {
    let _ = stream.set_nodelay(true);
    let outcome = tokio::time::timeout(
        shared.options.handshake_timeout,
        handshake(&mut stream, &shared, &secret),
    )
    .await;
    if shared.handshaking.fetch_sub(1, Ordering::AcqRel) == MAX_PENDING_HANDSHAKES {
        // The front thread may be waiting for a free slot.
        shared.wake_front.notify_one();
    }
    if let Ok(Ok(())) = outcome {
        if let Ok(stream) = stream.into_std() {
            shared.connections.fetch_add(1, Ordering::AcqRel);
            let guard = ConnectionGuard(Arc::clone(&shared));
            // If the instance thread is gone, the guard comes back and is dropped here.
            let _ = to_instance.send(ToInstance::Connection(stream, guard));
        }
    }
}

/// Counts one authenticated connection until dropped, however it ends (a panic
/// included), and starts the idle TTL when the last one goes.
struct ConnectionGuard(Arc<Shared>);

impl Drop for ConnectionGuard {
    fn drop(&mut self) {
        let shared = &self.0;
        shared.mark_idle_now();
        shared.connections.fetch_sub(1, Ordering::AcqRel);
        shared.wake_front.notify_one();
    }
}

/// The daemon's side of the mutual handshake (see [`crate::wire`]). Any failure closes
/// the connection without a word: an unauthenticated peer learns nothing.
async fn handshake<T: AsyncRead + AsyncWrite + Unpin>(
    stream: &mut T,
    shared: &Shared,
    secret: &Secret,
) -> Result<(), ()> {
    let mut buf = Vec::new();
    protocol::read_frame_async(stream, &mut buf, protocol::MAX_HANDSHAKE_FRAME)
        .await
        .map_err(drop)?;
    let hello: protocol::handshake::Hello = protocol::decode("hello", &buf).map_err(drop)?;
    if hello.magic != protocol::MAGIC {
        return Err(());
    }
    let nonce = protocol::random_bytes();
    let challenge = protocol::handshake::Challenge {
        magic: protocol::MAGIC,
        version: protocol::PROTOCOL_VERSION,
        nonce,
        proof: *protocol::handshake::proof(secret, Role::Daemon, &hello.nonce, &nonce).as_bytes(),
    };
    write_message(stream, &challenge, &mut buf).await?;
    if hello.version != protocol::PROTOCOL_VERSION {
        // The client reads our version from the challenge and reports the mismatch.
        return Err(());
    }
    protocol::read_frame_async(stream, &mut buf, protocol::MAX_HANDSHAKE_FRAME)
        .await
        .map_err(drop)?;
    let auth: protocol::handshake::Auth = protocol::decode("auth", &buf).map_err(drop)?;
    if !protocol::handshake::verify(secret, Role::Client, &hello.nonce, &nonce, &auth.proof) {
        log_peer("handshake refused: bad client proof");
        return Err(());
    }
    let verdict = if shared.shutting_down.load(Ordering::Acquire) {
        protocol::handshake::Verdict::Rejected(protocol::handshake::Rejection::ShuttingDown)
    } else if auth.schema != shared.schema {
        protocol::handshake::Verdict::Rejected(protocol::handshake::Rejection::Schema {
            daemon: shared.schema,
        })
    } else if auth.init.is_some_and(|init| init != shared.init) {
        protocol::handshake::Verdict::Rejected(protocol::handshake::Rejection::Init {
            running: shared.init_description.clone(),
        })
    } else {
        protocol::handshake::Verdict::Welcome {
            pid: shared.pid,
            instance: shared.instance,
            max_frame: shared.options.max_frame,
        }
    };
    let welcomed = matches!(verdict, protocol::handshake::Verdict::Welcome { .. });
    write_message(stream, &verdict, &mut buf).await?;
    if !welcomed {
        return Err(());
    }
    // The starter's token proves nothing on its own: it counts only from a client that
    // proved the secret. Without a starter, any first client ends the grace.
    if shared.starter.is_none() || auth.starter == shared.starter {
        shared.starter_arrived.store(true, Ordering::Release);
    }
    Ok(())
}

async fn write_message<T: Serialize>(
    stream: &mut (impl AsyncWrite + Unpin),
    message: &T,
    buf: &mut Vec<u8>,
) -> Result<(), ()> {
    protocol::encode_frame(message, buf);
    stream.write_all(buf).await.map_err(drop)
}

/// The instance thread: builds the instance, reports, then serves connections until
/// told to retire; drops the instance last (after any call in flight), so that a
/// service can persist its state in `Drop`.
fn instance_thread<S: Service>(
    construct: Construct<S>,
    built: std::sync::mpsc::Sender<Result<(), String>>,
    mut from_front: mpsc::UnboundedReceiver<ToInstance>,
) {
    let runtime = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(runtime) => runtime,
        Err(error) => {
            let _ = built.send(Err(format!("building the instance runtime: {error}")));
            return;
        }
    };
    let instance = match catch_unwind(AssertUnwindSafe(construct)) {
        Ok(Ok(instance)) => instance,
        Ok(Err(reason)) => {
            let _ = built.send(Err(reason));
            return;
        }
        Err(panic) => {
            let _ = built.send(Err(format!(
                "the constructor panicked: {}",
                panic_message(&*panic)
            )));
            return;
        }
    };
    let _ = built.send(Ok(()));
    let instance = Rc::new(Mutex::new(Some(instance)));
    let local = tokio::task::LocalSet::new();
    local.block_on(&runtime, async {
        while let Some(ToInstance::Connection(stream, guard)) = from_front.recv().await {
            tokio::task::spawn_local(serve_connection(stream, guard, Rc::clone(&instance)));
        }
        // Waits for the call in flight, if any; later calls find no instance.
        let dropped = instance.lock().await.take();
        drop(dropped);
    });
}

/// Per-connection buffers, reused across calls.
struct Buffers {
    input: Vec<u8>,
    output: Vec<u8>,
}

impl Buffers {
    /// Keeps one huge payload from pinning its memory for the connection's lifetime,
    /// but keeps a big buffer while messages still fill a good part of it: dropping it
    /// after every large call cost a fresh allocation and its page faults per call.
    fn trim(&mut self) {
        const KEEP: usize = 64 << 10;
        for buf in [&mut self.input, &mut self.output] {
            if buf.capacity() > 16 * KEEP && buf.len() < buf.capacity() / 4 {
                *buf = Vec::with_capacity(KEEP);
            }
        }
    }
}

/// Serves one authenticated connection; its guard counts it until this ends.
async fn serve_connection<S: Service>(
    stream: std::net::TcpStream,
    guard: ConnectionGuard,
    instance: Rc<Mutex<Option<S>>>,
) {
    if let Ok(mut stream) = TcpStream::from_std(stream) {
        let (reader, writer) = stream.split();
        let _ = connection_loop(reader, writer, &instance, &guard.0).await;
    }
}

async fn connection_loop<S: Service>(
    reader: impl AsyncRead + Unpin,
    mut writer: impl AsyncWrite + Unpin,
    instance: &Mutex<Option<S>>,
    shared: &Shared,
) -> Result<(), ()> {
    let mut reader = BufReader::with_capacity(64 << 10, reader);
    let mut buffers = Buffers {
        input: Vec::with_capacity(4096),
        output: Vec::with_capacity(4096),
    };
    let outcome = loop {
        let Buffers { input, output } = &mut buffers;
        match protocol::read_frame_async(&mut reader, input, shared.options.max_frame).await {
            Ok(()) => {}
            Err(FrameError::Io(_)) => break Ok(()),
            Err(FrameError::Protocol(error)) => {
                log(&format!("closing a connection: {error}"));
                break Err(());
            }
        }
        let (id, kind, body) = match protocol::split_request(input) {
            Ok(header) => header,
            Err(error) => {
                log(&format!("closing a connection: {error}"));
                break Err(());
            }
        };
        // Replies accumulate in `output` while requests already received wait behind
        // this one (see below); each starts its own frame at the end. A call that must
        // wait for the instance (another call runs, or the host is retiring) sends the
        // replies of the calls that already ran first: they are not held hostage, and
        // not lost if the host retires meanwhile.
        if !output.is_empty() && kind == protocol::Kind::Call && instance.try_lock().is_err() {
            writer.write_all(output).await.map_err(drop)?;
            output.clear();
        }
        let start = output.len();
        match kind {
            protocol::Kind::Call => run_call(instance, shared, id, body, output).await,
            protocol::Kind::Ping => {
                protocol::append_header(output, id, protocol::Status::Ok);
                let info = daemon_info(shared);
                postcard::to_io(&info, &mut *output).expect("encoding into a Vec cannot fail");
            }
            protocol::Kind::Shutdown => {
                log("shutdown requested by a client");
                shared.shutting_down.store(true, Ordering::Release);
                shared.wake_front.notify_one();
                protocol::append_header(output, id, protocol::Status::Ok);
            }
        }
        protocol::close_frame(output, start);
        // Pipelined calls: while the next request is already complete in the read
        // buffer, it runs at once and its reply joins this one, so a batch of calls is
        // answered with one write instead of one per call. Nothing here waits on the
        // socket or on another connection.
        if output.len() < 64 << 10 && protocol::holds_frame(reader.buffer()) {
            continue;
        }
        writer.write_all(output).await.map_err(drop)?;
        buffers.trim();
        buffers.output.clear();
    };
    // The replies of pipelined requests that came before a violation still go out:
    // those calls ran.
    if !buffers.output.is_empty() {
        let _ = writer.write_all(&buffers.output).await;
    }
    outcome
}

/// Runs one call on the instance and appends the reply (minus its length) to `output`:
/// the method's encoded return value, or the reason it has none.
async fn run_call<S: Service>(
    instance: &Mutex<Option<S>>,
    shared: &Shared,
    id: u64,
    body: &[u8],
    output: &mut Vec<u8>,
) {
    let status_at = protocol::append_header(output, id, protocol::Status::Ok);
    let fault = match postcard::from_bytes::<S::Request>(body) {
        Err(error) => Some(RemoteError::BadRequest {
            message: error.to_string(),
        }),
        Ok(request) => {
            let mut guard = instance.lock().await;
            match guard.as_mut() {
                None => Some(RemoteError::ShuttingDown),
                Some(service) => {
                    shared.calls_served.fetch_add(1, Ordering::Relaxed);
                    let out = &mut *output;
                    let outcome = match catch_unwind(AssertUnwindSafe(move || {
                        service.dispatch(request, out)
                    })) {
                        Ok(Dispatch::Ready(result)) => Ok(result),
                        Ok(Dispatch::Pending(future)) => CatchUnwind(future).await,
                        Err(panic) => Err(panic),
                    };
                    match outcome {
                        Ok(Ok(())) => None,
                        Ok(Err(error)) => Some(RemoteError::BadReply {
                            message: error.to_string(),
                        }),
                        Err(panic) => Some(RemoteError::Panic {
                            message: panic_message(&*panic),
                        }),
                    }
                }
            }
        }
    };
    if let Some(fault) = fault {
        output.truncate(status_at + 1);
        output[status_at] = protocol::Status::Err.into();
        postcard::to_io(&fault, &mut *output).expect("encoding into a Vec cannot fail");
    }
}

fn daemon_info(shared: &Shared) -> protocol::DaemonInfo {
    protocol::DaemonInfo {
        pid: shared.pid,
        instance: shared.instance,
        port: shared.port,
        uptime: shared.started.elapsed(),
        calls_served: shared.calls_served.load(Ordering::Relaxed),
        clients: shared.connections.load(Ordering::Relaxed),
        version: env!("CARGO_PKG_VERSION").to_string(),
    }
}

/// Polls a future, turning a panic inside it into an error (for `async fn` methods).
struct CatchUnwind<F>(F);

impl<F: Future + Unpin> Future for CatchUnwind<F> {
    type Output = Result<F::Output, Box<dyn Any + Send>>;

    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let inner = &mut self.0;
        match catch_unwind(AssertUnwindSafe(|| Pin::new(inner).poll(cx))) {
            Ok(Poll::Pending) => Poll::Pending,
            Ok(Poll::Ready(value)) => Poll::Ready(Ok(value)),
            Err(panic) => Poll::Ready(Err(panic)),
        }
    }
}

/// The message of a caught panic.
pub(crate) fn panic_message(panic: &(dyn Any + Send)) -> String {
    if let Some(message) = panic.downcast_ref::<&str>() {
        (*message).to_string()
    } else if let Some(message) = panic.downcast_ref::<String>() {
        message.clone()
    } else {
        "a panic with a non-string payload".to_string()
    }
}

thread_local! {
    /// Set on the threads of an in-process host that was not asked to be verbose: an
    /// application's stderr is not a daemon log.
    static QUIET: std::cell::Cell<bool> = const { std::cell::Cell::new(false) };

    /// On an instance thread, the instance it hosts: a call from this thread to that
    /// instance would wait behind the very call that makes it.
    static HOSTED_HERE: std::cell::Cell<Option<u64>> = const { std::cell::Cell::new(None) };
}

/// Whether the calling thread is the one running `instance`'s methods: a call to it
/// from here can never be answered (calls run one at a time).
pub(crate) fn runs_on_this_thread(instance: u64) -> bool {
    HOSTED_HERE.get() == Some(instance)
}

/// A line about a peer that may not have the secret: at most one a second, so that
/// another user's connection flood cannot fill the disk with the log.
fn log_peer(message: &str) {
    static LAST: AtomicU64 = AtomicU64::new(u64::MAX);
    let second = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap_or_default()
        .as_secs();
    if LAST.swap(second, Ordering::Relaxed) != second {
        log(message);
    }
}

/// A line in the daemon's log (its stderr is the log file). Never fails: a log that
/// cannot be written (a full disk) must not stop the daemon from serving, retiring,
/// dropping its instance or cleaning up.
fn log(message: &str) {
    use std::io::Write;
    if QUIET.get() {
        return;
    }
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap_or_default();
    let _ = writeln!(
        std::io::stderr().lock(),
        "[{}.{:03} pid {}] {message}",
        now.as_secs(),
        now.subsec_millis(),
        std::process::id()
    );
}

/// A service hosted on background threads of the calling process, not in a detached
/// daemon: no fork, no log redirection (logs only when `verbose`). What a
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
    verbose: bool,
) -> Result<Background, Error> {
    let previous = QUIET.replace(!verbose);
    let started = start::<S>(
        &dir,
        launch,
        construct,
        &mut ReadySender::none(),
        PREDECESSOR_WAIT,
    );
    QUIET.set(previous);
    let started = started?;
    let shared = Arc::clone(&started.shared);
    let thread = std::thread::Builder::new()
        .name("loopback-singleton-front".into())
        .spawn(move || {
            QUIET.set(!verbose);
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

/// The daemon's side of one connection, fed from a byte slice (feature `fuzzing`, and
/// the crate's unit tests).
#[cfg(any(test, feature = "fuzzing"))]
pub(crate) mod fuzz {
    use super::*;

    fn shared<S: Service>(max_frame: u32) -> Shared {
        Shared {
            name: "fuzz".into(),
            pid: 1,
            instance: 7,
            port: 1,
            started: Instant::now(),
            schema: S::SCHEMA,
            init: 0,
            init_description: "()".into(),
            options: ServeOptions::default().max_frame_size(max_frame),
            connections: AtomicU32::new(1),
            handshaking: AtomicU32::new(0),
            idle_since_ms: AtomicU64::new(0),
            starter: None,
            starter_arrived: AtomicBool::new(true),
            calls_served: AtomicU64::new(0),
            shutting_down: AtomicBool::new(false),
            wake_front: Notify::new(),
        }
    }

    fn block_on<F: Future>(future: F) -> F::Output {
        thread_local! {
            static RUNTIME: tokio::runtime::Runtime = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .expect("a tokio runtime");
        }
        QUIET.set(true);
        RUNTIME.with(|runtime| runtime.block_on(future))
    }

    /// Runs the daemon's side of the handshake on `input`; returns what it wrote and
    /// whether it admitted the peer.
    pub(crate) fn handshake<S: Service>(input: &[u8]) -> (Vec<u8>, bool) {
        let shared = shared::<S>(protocol::DEFAULT_MAX_FRAME);
        let secret = [0x42; 32];
        let mut output = Vec::new();
        let admitted = block_on(async {
            let mut stream = tokio::io::join(input, &mut output);
            super::handshake(&mut stream, &shared, &secret)
                .await
                .is_ok()
        });
        (output, admitted)
    }

    /// Runs the daemon's request loop on `input` (the frames after a handshake) against
    /// `instance`; returns what it wrote and whether it closed the connection cleanly
    /// (at the end of the input) rather than on a protocol violation.
    pub(crate) fn requests<S: Service>(
        instance: S,
        input: &[u8],
        max_frame: u32,
    ) -> (Vec<u8>, bool) {
        let shared = shared::<S>(max_frame);
        let instance = Mutex::new(Some(instance));
        let mut output = Vec::new();
        let clean = block_on(connection_loop(input, &mut output, &instance, &shared)).is_ok();
        (output, clean)
    }
}
