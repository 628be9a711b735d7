//! The one error type of the crate.

use std::io;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use crate::protocol::{Fingerprint, ProtocolError, RemoteError, Transport};

/// Everything that can go wrong between a client call and its result, apart from the
/// service's own errors: a method returning `Result<T, E>` gives the caller
/// `Result<Result<T, E>, Error>`, so `E` stays typed and apart from these.
///
/// ```no_run
/// # use loopback_singleton::{local_singleton, Error};
/// # #[derive(Default)] pub struct Counter { v: u64 }
/// # #[local_singleton] impl Counter { pub fn inc(&mut self) -> u64 { self.v += 1; self.v } }
/// match CounterClient::connect() {
///     Ok(counter) => println!("{}", counter.inc()?),
///     Err(Error::InitMismatch { wanted, running, .. }) => {
///         eprintln!("a daemon runs with {running}, we wanted {wanted}")
///     }
///     Err(other) => return Err(other),
/// }
/// # Ok::<(), Error>(())
/// ```
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// The runtime directory cannot be used safely (wrong owner, open permissions, a
    /// symlink) or at all (cannot be created). The message says how to fix it.
    #[error("runtime directory {path}: {reason}")]
    RuntimeDir {
        /// The directory in question.
        path: PathBuf,
        /// What is wrong and how to fix it.
        reason: String,
    },

    /// A TCP connection to the daemon could not be opened.
    #[error("cannot connect to the daemon of `{name}` at {addr}: {source}")]
    Connect {
        /// The singleton name.
        name: String,
        /// Where the daemon was expected.
        addr: SocketAddr,
        /// The operating system's reason.
        source: io::Error,
    },

    /// No daemon runs and `LOOPBACK_SINGLETON_NO_SPAWN` forbids starting one.
    #[error(
        "no daemon of `{name}` is running and LOOPBACK_SINGLETON_NO_SPAWN is set; \
         start one (unset the variable, or host it with `Service::serve`)"
    )]
    NotRunning {
        /// The singleton name.
        name: String,
    },

    /// The daemon could not be started: it exited or reported a failure (such as a
    /// panicking constructor) before becoming ready.
    #[error("starting the daemon of `{name}` failed: {reason}")]
    StartFailed {
        /// The singleton name.
        name: String,
        /// What the daemon reported, or why it could not be spawned.
        reason: String,
    },

    /// The daemon did not report readiness, or the start lock was not obtained, in time.
    #[error("the daemon of `{name}` did not become ready within {waited:?}: {what}")]
    StartTimeout {
        /// The singleton name.
        name: String,
        /// How long the client waited.
        waited: Duration,
        /// What it was waiting for.
        what: String,
    },

    /// The peer failed mutual authentication: it does not know this daemon's secret
    /// (a stale port reused by another program, or a tampered secret file).
    #[error("authentication with the daemon of `{name}` failed: {reason}")]
    Auth {
        /// The singleton name.
        name: String,
        /// Which side failed to prove what.
        reason: String,
    },

    /// Client and daemon speak different protocol versions (different crate versions).
    #[error(
        "protocol version mismatch for `{name}`: this client speaks {client}, the daemon {daemon}; \
         shut the old daemon down (`shutdown()`) or let its idle TTL retire it"
    )]
    ProtocolVersion {
        /// The singleton name.
        name: String,
        /// The client's protocol version.
        client: u16,
        /// The daemon's protocol version.
        daemon: u16,
    },

    /// The daemon hosts another version of the service: a method was added, removed,
    /// reordered or changed its signature, or a type that crosses the wire changed shape
    /// (a field or variant added, removed, reordered, renamed or retyped). Nothing was
    /// sent to the instance.
    #[error(
        "schema mismatch for `{name}`: {difference}; this client was built for schema \
         {client:016x}, the running daemon serves {daemon:016x}; rebuild both from the same \
         source, or shut the old daemon down"
    )]
    SchemaMismatch {
        /// The singleton name.
        name: String,
        /// The client's schema fingerprint.
        client: Fingerprint,
        /// The daemon's schema fingerprint.
        daemon: Fingerprint,
        /// What differs, from this client's point of view, such as
        /// "`Quota`: field `burst` added after `per_window` (in `set_quota(quota)`)".
        difference: String,
    },

    /// The running daemon was constructed with other `#[init]` arguments than this
    /// client asked for. The running daemon is left alone: others may be using it.
    /// Arguments are compared by value, maps whatever the order of their entries (see
    /// [`Builder::connect`](crate::Builder::connect)).
    #[error(
        "the daemon of `{name}` runs with init arguments {running}, but this client wanted {wanted}; \
         use another name for a second instance, or connect with the same arguments"
    )]
    InitMismatch {
        /// The singleton name.
        name: String,
        /// The arguments this client asked for.
        wanted: String,
        /// The arguments the running daemon was started with.
        running: String,
    },

    /// The peer broke the wire protocol (bad or oversized frame).
    #[error("protocol error: {0}")]
    Protocol(#[from] ProtocolError),

    /// The daemon could not run the call: the method panicked or the request could not
    /// be decoded. The daemon keeps serving.
    #[error("remote error: {0}")]
    Remote(#[from] RemoteError),

    /// The connection broke while a call was in flight (the daemon died or shut down).
    /// The call may or may not have run; the next call reconnects, starting a fresh
    /// daemon if needed.
    #[error("connection to the daemon of `{name}` lost: {source}")]
    ConnectionLost {
        /// The singleton name.
        name: String,
        /// The operating system's reason.
        source: io::Error,
    },

    /// A call got no reply within the configured call timeout.
    #[error("call to `{name}` timed out after {after:?}")]
    Timeout {
        /// The singleton name.
        name: String,
        /// The configured timeout.
        after: Duration,
    },

    /// A method of the singleton called the singleton itself, on the thread that runs
    /// its calls. Calls run one at a time, so the inner call would wait for the outer
    /// one, which waits for it: instead of deadlocking, the inner call fails at once.
    /// Call the method on `self` directly, or move the work out of the method.
    #[error(
        "a method of `{name}` called `{name}` itself: calls run one at a time, so this call \
         would wait forever for the one making it; call the method on `self` directly instead"
    )]
    Reentrant {
        /// The singleton name.
        name: String,
    },

    /// The transport this client chose cannot be used: the platform does not have it
    /// (Unix sockets on Windows), this build does not implement it yet, or the running
    /// daemon does not serve it (it could not bind its socket, or predates it). Nothing
    /// was sent; [`Transport::Tcp`] works everywhere.
    #[error("the {transport} transport is not available for `{name}`: {reason}")]
    TransportUnavailable {
        /// The singleton name.
        name: String,
        /// The transport asked for.
        transport: Transport,
        /// Why it cannot be used, and what to do.
        reason: String,
    },

    /// An environment variable of loopback-singleton has a value that does not parse
    /// (see the README's "Environment").
    #[error("{variable}={value:?} is not valid: {expected}")]
    Environment {
        /// The variable.
        variable: String,
        /// Its value.
        value: String,
        /// What it takes.
        expected: String,
    },

    /// A local I/O error (reading runtime files, spawning).
    #[error("{context}: {source}")]
    Io {
        /// What was being done.
        context: String,
        /// The operating system's reason.
        source: io::Error,
    },
}

impl Error {
    pub(crate) fn io(context: impl Into<String>, source: io::Error) -> Self {
        Error::Io {
            context: context.into(),
            source,
        }
    }
}
