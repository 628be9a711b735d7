//! The host: serves the one instance and serves authenticated clients on 127.0.0.1
//! and, where the platform has them, on a Unix socket in the runtime directory.
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
//!
//! Files: [`hook`] (the pre-main hook that turns a re-executed process into a daemon),
//! this module (`serve`, start-up: instance lock, bind, construct, publish), [`front`]
//! (accept, handshake, limits, idle TTL, signals), [`instance`] (the instance thread:
//! connections, calls, panics), [`metrics`] (per-method counts and latencies),
//! [`background`] (an in-process host), [`log`].

mod background;
mod front;
#[cfg(any(test, feature = "fuzzing"))]
pub(crate) mod fuzz;
mod hook;
mod instance;
mod log;
mod metrics;
mod shm;

pub(crate) use background::{Background, start_background};
pub use hook::daemon_hook;

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use tokio::sync::{Notify, mpsc};

use crate::error::Error;
use crate::options::ServeOptions;
use crate::protocol::{self, Fingerprint, Secret};
use crate::runtime_dir::{self, HeldLock, Metadata, RuntimeDir};
use crate::service::Service;
use crate::spawn::{Launch, Readiness, ReadySender};
use crate::sys;

use self::front::{ConnectionGuard, front};
use self::instance::instance_thread;
use crate::service::panic_message;

/// [`Service::serve`]: hosts `S` in this process until it retires.
#[doc(hidden)]
pub fn serve<S: Service>(init: S::Init, options: ServeOptions) -> Result<(), Error> {
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
    // An application's own host: its events go to its `daemon.log`, through a
    // dispatcher of this thread and the host's (see `log`), not the application's.
    log::scoped(Some(log::open(&dir)), || {
        run::<S>(
            &dir,
            launch,
            ReadySender::none(),
            Some(lock),
            Duration::from_secs(10),
        )
    })
}

/// State shared by the front and instance threads.
struct Shared {
    name: String,
    pid: u32,
    instance: u64,
    port: u16,
    started: Instant,
    schema: Fingerprint,
    /// What crosses the wire, sent to a client whose schema differs (built once).
    wire: Option<Vec<protocol::schema::WireItem>>,
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
    /// Per-method metrics, recorded and read on the instance thread.
    metrics: std::sync::Mutex<metrics::Metrics>,
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
    Connection(Admitted),
    Retire,
}

/// An authenticated connection, for the instance thread to serve.
struct Admitted {
    /// The socket it came on (left in non-blocking mode).
    stream: sys::Stream,
    /// Counts it until it ends.
    guard: ConnectionGuard,
    /// No schema: ping, stats and shutdown only.
    admin: bool,
    /// How the client asked to be served: over `stream` (TCP or Unix, matching it), or
    /// through shared memory set up over it.
    transport: protocol::Transport,
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
    /// The Unix socket, where the platform has one and it could be bound.
    unix: Option<sys::UnixListener>,
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
        log::emit(|| tracing::error!("start failed: {reason}"));
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
    log::emit(|| {
        tracing::info!(
            name = %launch.name,
            pid = std::process::id(),
            version = %env!("CARGO_PKG_VERSION"),
            "starting"
        )
    });
    let instance_lock = match dir.lock_instance(predecessor_wait) {
        Ok(lock) => lock,
        Err(error) => return Err(fail(ready, error.to_string())),
    };
    let listener = match std::net::TcpListener::bind((std::net::Ipv4Addr::LOCALHOST, 0)) {
        Ok(listener) => listener,
        Err(error) => return Err(fail(ready, format!("binding 127.0.0.1: {error}"))),
    };
    let port = listener.local_addr().map(|addr| addr.port()).unwrap_or(0);
    // Under the instance lock: a socket file left there is a dead predecessor's.
    let unix = match dir.bind_socket() {
        Ok(Ok(unix)) => Some(unix),
        Ok(Err(reason)) => {
            // Where the platform has no Unix sockets, TCP only is the normal state.
            if sys::UNIX_SOCKETS {
                log::emit(|| tracing::warn!(%reason, "serving TCP only"));
            }
            None
        }
        Err(error) => return Err(fail(ready, error.to_string())),
    };
    // A start that fails from here leaves no socket file behind.
    let bound = unix.is_some();
    let fail = |ready: &mut ReadySender, reason: String| {
        if bound {
            dir.remove_socket();
        }
        fail(ready, reason)
    };
    let shared = Arc::new(Shared {
        name: launch.name.clone(),
        pid: std::process::id(),
        instance: u64::from_le_bytes(protocol::random_bytes()),
        port,
        started: Instant::now(),
        schema: S::SCHEMA,
        wire: protocol::schema::sendable(crate::service::wire_description::<S>()),
        init: launch.init_fingerprint,
        init_description: launch.init_description.clone(),
        options: launch.options.clone(),
        connections: AtomicU32::new(0),
        handshaking: AtomicU32::new(0),
        idle_since_ms: AtomicU64::new(0),
        starter: launch.starter,
        starter_arrived: AtomicBool::new(false),
        calls_served: AtomicU64::new(0),
        metrics: std::sync::Mutex::new(metrics::Metrics::new()),
        shutting_down: AtomicBool::new(false),
        wake_front: Notify::new(),
    });

    // The instance is built on its own thread, which keeps it for life.
    let (to_instance, from_front) = mpsc::unbounded_channel();
    let (built_tx, built_rx) = std::sync::mpsc::channel();
    let instance_thread = {
        let host_log = log::current();
        let instance = shared.instance;
        std::thread::Builder::new()
            .name("loopback-singleton-instance".into())
            .spawn(move || {
                log::set(host_log);
                crate::service::host_on_this_thread(instance);
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
        socket: unix.is_some().then(|| runtime_dir::SOCKET.to_string()),
        idle_ttl_ms: shared
            .options
            .idle_ttl
            .map(|ttl| u64::try_from(ttl.as_millis()).unwrap_or(u64::MAX)),
    };
    if let Err(error) = dir
        .write_secret(&secret)
        .and_then(|()| dir.write_metadata(&metadata))
    {
        let _ = to_instance.send(ToInstance::Retire);
        let _ = instance_thread.join();
        return Err(fail(ready, error.to_string()));
    }
    log::emit(|| {
        tracing::info!(
            pid = shared.pid,
            port,
            version = %env!("CARGO_PKG_VERSION"),
            instance = %format_args!("{:016x}", shared.instance),
            idle_ttl = %shared.options.idle_ttl.map_or("none".into(), |ttl| format!("{ttl:?}")),
            socket = %unix.as_ref().map_or_else(
                || "none".into(),
                |_| dir.path().join(runtime_dir::SOCKET).display().to_string()
            ),
            "serving `{}`",
            shared.name
        )
    });
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
        unix,
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
            unix,
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
            unix,
            Arc::clone(&shared),
            secret,
            to_instance.clone(),
            signals,
        ));
        log::emit(|| tracing::info!(reason = %why, "retiring"));
        // Unpublish first, so that newcomers start a successor instead of finding us;
        // the successor waits for the instance lock, released only once our instance
        // is dropped.
        dir.retire(shared.instance);
        drop(runtime);
        let _ = to_instance.send(ToInstance::Retire);
        let _ = instance_thread.join();
        drop(instance_lock);
        log::emit(|| tracing::info!("instance dropped; exiting"));
        Ok(())
    }
}
