//! [`ServeOptions`]: how a host runs. Shared by the host, which obeys them, and the
//! client, which hands them to the daemons it starts.

use std::path::PathBuf;
use std::time::Duration;

use serde::{Deserialize, Serialize};

use crate::protocol;

/// How a daemon runs: its name, where its files live, when it retires, and its limits.
///
/// Used by [`Service::serve`](crate::Service::serve) to host a service yourself, and, through
/// [`Builder`](crate::Builder), for daemons that clients start.
///
/// ```
/// use std::time::Duration;
/// use loopback_singleton::ServeOptions;
///
/// let options = ServeOptions::default()
///     .name("my-cache")
///     .idle_ttl(Some(Duration::from_secs(60)))
///     .max_connections(256);
/// ```
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ServeOptions {
    pub(crate) name: Option<String>,
    pub(crate) dir: Option<PathBuf>,
    pub(crate) idle_ttl: Option<Duration>,
    pub(crate) handshake_timeout: Duration,
    pub(crate) max_frame: u32,
    pub(crate) max_connections: u32,
}

impl Default for ServeOptions {
    fn default() -> Self {
        ServeOptions {
            name: None,
            dir: None,
            idle_ttl: Some(Duration::from_secs(2)),
            handshake_timeout: Duration::from_secs(5),
            max_frame: protocol::DEFAULT_MAX_FRAME,
            max_connections: 4096,
        }
    }
}

impl ServeOptions {
    /// The singleton name (default: the service's `<crate>.<Type>`). Names the runtime
    /// directory: 1 to 64 characters of `A-Z a-z 0-9 . _ -`.
    pub fn name(mut self, name: impl Into<String>) -> Self {
        self.name = Some(name.into());
        self
    }

    /// The base of the runtime directories (default: `$LOOPBACK_SINGLETON_DIR`, else
    /// `$XDG_RUNTIME_DIR/loopback-singleton`, else `$TMPDIR/loopback-singleton` on macOS
    /// or `%LOCALAPPDATA%\loopback-singleton` on Windows, else `~/.cache/loopback-singleton`).
    pub fn runtime_dir(mut self, base: impl Into<PathBuf>) -> Self {
        self.dir = Some(base.into());
        self
    }

    /// How long the daemon lives with no client connected (default 2 s), counted from
    /// the moment the last authenticated client left; `None` keeps it until `shutdown`.
    ///
    /// Until the client that started it has connected, a daemon waits a handshake
    /// timeout longer than the TTL: that client is always served, however slow the
    /// constructor or short the TTL (zero included), and a daemon whose starter died
    /// still retires.
    pub fn idle_ttl(mut self, ttl: Option<Duration>) -> Self {
        self.idle_ttl = ttl;
        self
    }

    /// How long a new connection may take to authenticate (default 5 s).
    pub fn handshake_timeout(mut self, timeout: Duration) -> Self {
        self.handshake_timeout = timeout;
        self
    }

    /// The largest frame accepted, in bytes (default 64 MiB).
    pub fn max_frame_size(mut self, bytes: u32) -> Self {
        self.max_frame = bytes;
        self
    }

    /// The most connections served at once (default 4096); further ones are closed.
    pub fn max_connections(mut self, connections: u32) -> Self {
        self.max_connections = connections;
        self
    }
}
