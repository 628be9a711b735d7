//! [`Transport`]: how a client's bytes reach the daemon. A client names its choice in
//! the handshake (`Auth::transport`), so that a daemon serving every transport knows how
//! to serve the connection once it is authenticated.

use std::fmt;

use serde::{Deserialize, Serialize};

/// How a client talks to its daemon, chosen per client with
/// [`Builder::transport`](crate::Builder::transport) or, where the code does not
/// choose, with `LOOPBACK_SINGLETON_TRANSPORT=tcp|unix|shm`.
///
/// Every daemon serves every transport its platform has, so clients with different
/// choices share one daemon and one instance. The connection is authenticated the same
/// way on each (the mutual handshake under the daemon's secret); calls, errors and
/// guarantees are the same. A transport the platform (or the running daemon) does not
/// have fails `connect` with [`Error::TransportUnavailable`](crate::Error::TransportUnavailable).
///
/// ```no_run
/// use loopback_singleton::{local_singleton, Transport};
///
/// #[derive(Default)]
/// pub struct Counter { value: u64 }
///
/// #[local_singleton]
/// impl Counter {
///     pub fn inc(&mut self) -> u64 { self.value += 1; self.value }
/// }
///
/// let counter = CounterClient::builder().transport(Transport::Unix).connect(())?;
/// assert_eq!(counter.client().transport(), Transport::Unix);
/// # Ok::<(), loopback_singleton::Error>(())
/// ```
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[non_exhaustive]
pub enum Transport {
    /// TCP on 127.0.0.1 (the default, on every platform).
    #[default]
    Tcp,
    /// A Unix-domain stream socket in the private runtime directory, whose peer must be
    /// the same user (checked on both sides from the kernel's peer credentials). Unix
    /// only; about a third faster than loopback TCP for small calls.
    Unix,
    /// A shared-memory region per connection, set up over an authenticated socket.
    SharedMemory,
}

impl Transport {
    /// Every transport, in the order of their names on the command line.
    pub const ALL: [Transport; 3] = [Transport::Tcp, Transport::Unix, Transport::SharedMemory];

    /// The transport's short name: `tcp`, `unix` or `shm` (what
    /// `LOOPBACK_SINGLETON_TRANSPORT` takes).
    pub fn name(self) -> &'static str {
        match self {
            Transport::Tcp => "tcp",
            Transport::Unix => "unix",
            Transport::SharedMemory => "shm",
        }
    }

    /// The transport of a short name (`tcp`, `unix`, `shm`; case and surrounding
    /// spaces ignored), if any.
    pub fn from_name(name: &str) -> Option<Transport> {
        let name = name.trim();
        Transport::ALL
            .into_iter()
            .find(|transport| transport.name().eq_ignore_ascii_case(name))
    }
}

impl fmt::Display for Transport {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_round_trip() {
        for transport in Transport::ALL {
            assert_eq!(Transport::from_name(transport.name()), Some(transport));
        }
        assert_eq!(Transport::from_name(" UNIX "), Some(Transport::Unix));
        assert_eq!(Transport::from_name("udp"), None);
        assert_eq!(Transport::from_name(""), None);
    }
}
