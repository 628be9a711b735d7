//! [`ServeOptions`]: how a host runs. Shared by the host, which obeys them, and the
//! client, which hands them to the daemons it starts.

use std::path::PathBuf;
use std::time::Duration;

use serde::{Deserialize, Serialize};

use crate::protocol::{self, Transport};

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
    /// Whether the code chose the idle TTL (then `LOOPBACK_SINGLETON_IDLE_TTL` does
    /// not override it).
    pub(crate) idle_ttl_chosen: bool,
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
            idle_ttl_chosen: false,
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
    ///
    /// Where the code does not choose, `LOOPBACK_SINGLETON_IDLE_TTL` can (`30s`,
    /// `500ms`, `5m`, `1h`, or `none`), for users who cannot change the code.
    pub fn idle_ttl(mut self, ttl: Option<Duration>) -> Self {
        self.idle_ttl = ttl;
        self.idle_ttl_chosen = true;
        self
    }

    /// These options with the settings of the environment applied where the code left
    /// the default: `LOOPBACK_SINGLETON_IDLE_TTL`. A value that does not parse is an
    /// error that says what would.
    pub(crate) fn with_environment(mut self) -> Result<Self, String> {
        if self.idle_ttl_chosen {
            return Ok(self);
        }
        if let Some(value) = std::env::var_os(IDLE_TTL_ENV).filter(|value| !value.is_empty()) {
            let value = value.to_string_lossy();
            self.idle_ttl = parse_ttl(&value).ok_or_else(|| {
                format!(
                    "{IDLE_TTL_ENV}={value:?} is not a duration: use e.g. 30s, 500ms, 5m, 1h or none"
                )
            })?;
        }
        Ok(self)
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

/// Sets the idle TTL of daemons whose code leaves it at the default.
pub(crate) const IDLE_TTL_ENV: &str = "LOOPBACK_SINGLETON_IDLE_TTL";

/// Chooses the transport of clients whose code does not (`tcp`, `unix`, `shm`).
pub(crate) const TRANSPORT_ENV: &str = "LOOPBACK_SINGLETON_TRANSPORT";

/// The transport `LOOPBACK_SINGLETON_TRANSPORT` names: `Ok(None)` when it is unset or
/// empty, `Err(value)` when it names none.
pub(crate) fn transport_from_env() -> Result<Option<Transport>, String> {
    match std::env::var_os(TRANSPORT_ENV).filter(|value| !value.is_empty()) {
        None => Ok(None),
        Some(value) => {
            let value = value.to_string_lossy();
            Transport::from_name(&value)
                .map(Some)
                .ok_or_else(|| value.into_owned())
        }
    }
}

/// `none`, or a whole number with a unit (`ms`, `s`, `m`, `h`): `Some(None)` for no
/// TTL, `Some(Some(d))` for a duration, `None` if it does not parse.
fn parse_ttl(text: &str) -> Option<Option<Duration>> {
    let text = text.trim();
    if text.eq_ignore_ascii_case("none") {
        return Some(None);
    }
    let split = text.find(|c: char| !c.is_ascii_digit())?;
    let (number, unit) = text.split_at(split);
    let number: u64 = number.parse().ok()?;
    let duration = match unit.trim() {
        "ms" => Duration::from_millis(number),
        "s" => Duration::from_secs(number),
        "m" => Duration::from_secs(number.checked_mul(60)?),
        "h" => Duration::from_secs(number.checked_mul(3600)?),
        _ => return None,
    };
    Some(Some(duration))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn idle_ttls_parse_with_their_unit() {
        assert_eq!(parse_ttl("30s"), Some(Some(Duration::from_secs(30))));
        assert_eq!(parse_ttl("500ms"), Some(Some(Duration::from_millis(500))));
        assert_eq!(parse_ttl("5m"), Some(Some(Duration::from_secs(300))));
        assert_eq!(parse_ttl("1h"), Some(Some(Duration::from_secs(3600))));
        assert_eq!(parse_ttl("None"), Some(None));
        for bad in ["", "30", "s", "3x", "-1s", "1.5s"] {
            assert_eq!(parse_ttl(bad), None, "{bad:?}");
        }
    }
}
