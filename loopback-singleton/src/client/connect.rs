//! Finding the daemon, starting one if none runs, and the client's half of the
//! handshake.

use std::io::{BufReader, ErrorKind, Write};
use std::net::{Ipv4Addr, SocketAddr, TcpStream};
use std::time::{Duration, Instant};

use crate::error::Error;
use crate::protocol::{self, FrameError, ProtocolError, RemoteError, Secret, Transport};
use crate::runtime_dir::{self, HeldLock, RuntimeDir};
use crate::spawn::{self, SpawnError};
use crate::sys::{self, Stream};

use super::*;
use crate::protocol::handshake::{ClientHalf, Peer};

/// Where the daemon is and how to prove ourselves to it.
#[derive(Clone)]
pub(super) struct Endpoint {
    pub(super) port: u16,
    pub(super) secret: Secret,
    pub(super) pid: u32,
    pub(super) instance: u64,
    /// The protocol version the daemon published in its metadata (a private file of
    /// ours, so trustworthy, unlike what a process on the port may claim).
    pub(super) protocol: u16,
    /// For the daemon this client started: the token that tells it its starter came.
    pub(super) starter: Option<protocol::Nonce>,
    /// Whether it listens on its Unix socket (`runtime_dir::SOCKET` in `dir`).
    pub(super) socket: bool,
    /// The runtime directory the metadata was read from (and checked), through which
    /// the socket is reached.
    pub(super) dir: RuntimeDir,
}

/// Why opening a connection to an endpoint failed.
pub(super) enum DialError {
    /// Nobody (or not our daemon) is there: the endpoint is stale.
    Stale(Error),
    /// The connection was refused: nobody listens there. Stale, unless a host still
    /// holds the name (a daemon closing its listener as it retires; on macOS and the
    /// BSDs, a full listen queue of a Unix socket).
    Refused(Error),
    /// Our daemon is there but busy (retiring, full, slow): wait and retry.
    Busy(Error),
    /// Our daemon is there and refuses us for good (version, schema, init arguments).
    Fatal(Error),
}

/// What probing the runtime directory found.
pub(super) enum Probe {
    Found(Connection, Endpoint),
    Absent,
    Busy(Error),
    Fatal(Error),
}

impl Inner {
    /// A new connection: to the known endpoint if it still answers, else to whatever
    /// daemon the runtime directory names, starting one if none runs.
    pub(super) fn open(&self) -> Result<Connection, Error> {
        let known = self.endpoint().clone();
        if let Some(endpoint) = known {
            match self.dial(&endpoint) {
                Ok(connection) => return Ok(connection),
                Err(DialError::Fatal(error)) => return Err(error),
                Err(DialError::Stale(_) | DialError::Refused(_) | DialError::Busy(_)) => {}
            }
        }
        let (connection, endpoint) = self.establish(&self.recheck_dir()?)?;
        *self.endpoint() = Some(endpoint);
        Ok(connection)
    }

    /// Finds the running daemon in `dir` or starts one: try first; on failure take the
    /// start lock, try again under it, clean stale files, spawn, wait for readiness.
    pub(super) fn establish(&self, dir: &RuntimeDir) -> Result<(Connection, Endpoint), Error> {
        match self.find_or_start(dir, true, |deadline, lock| self.spawn(dir, deadline, lock))? {
            Established::Found(connection, endpoint)
            | Established::Started((connection, endpoint)) => Ok((connection, endpoint)),
        }
    }

    /// The runtime directory, opened and checked again: what a client trusts before it
    /// believes a daemon it does not know yet (the directory may have been replaced
    /// since the client was made).
    pub(super) fn recheck_dir(&self) -> Result<RuntimeDir, Error> {
        RuntimeDir::open(&self.launch.base, &self.name)
    }

    /// [`establish`](Self::establish) with `start` in place of spawning (`spawning`
    /// applies the spawn-only checks: `LOOPBACK_SINGLETON_NO_SPAWN`, daemon mode).
    pub(super) fn find_or_start<T>(
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
        // What would keep the daemon from binding its socket is refused here, before
        // anything is spawned, as any other hostile file in the directory.
        dir.check_socket_slot()?;
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
    pub(super) fn spawn(
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
        // The daemon published its metadata before reporting ready.
        let socket = dir
            .read_metadata()?
            .filter(|metadata| metadata.instance == instance)
            .is_some_and(|metadata| metadata.socket.is_some());
        let endpoint = Endpoint {
            port,
            secret,
            pid,
            instance,
            protocol: protocol::PROTOCOL_VERSION,
            starter: self.launch.starter,
            socket,
            dir: dir.clone(),
        };
        // The daemon we started keeps its first handshake timeout for us whatever its
        // idle TTL; a busy moment (a loaded machine) is worth another try.
        loop {
            match self.dial(&endpoint) {
                Ok(connection) => return Ok((connection, endpoint)),
                Err(DialError::Busy(_)) if Instant::now() < deadline => {
                    std::thread::sleep(Duration::from_millis(5));
                }
                Err(
                    DialError::Stale(error)
                    | DialError::Refused(error)
                    | DialError::Busy(error)
                    | DialError::Fatal(error),
                ) => {
                    return Err(error);
                }
            }
        }
    }

    /// Looks at the runtime directory: is a live daemon there, and does it take us?
    /// Files that cannot be trusted (another owner, open permissions) are an error, not
    /// stale state: they are not ours to remove.
    pub(super) fn probe(&self, dir: &RuntimeDir) -> Probe {
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
            socket: metadata.socket.is_some(),
            dir: dir.clone(),
        };
        match self.dial(&endpoint) {
            Ok(connection) => Probe::Found(connection, endpoint),
            // Refused while a host holds the instance lock: the files are that host's, and
            // removing them would orphan it. Wait for it instead.
            Err(DialError::Refused(error)) if dir.instance_held() => Probe::Busy(error),
            Err(DialError::Stale(_) | DialError::Refused(_)) => Probe::Absent,
            Err(DialError::Busy(error)) => Probe::Busy(error),
            Err(DialError::Fatal(error)) => Probe::Fatal(error),
        }
    }

    /// Opens a socket to `endpoint` on this client's transport: TCP, or the daemon's
    /// Unix socket, whose peer must be this user.
    fn open_stream(&self, endpoint: &Endpoint) -> Result<Stream, DialError> {
        let unavailable = |reason: String| {
            DialError::Fatal(Error::TransportUnavailable {
                name: self.name.clone(),
                transport: self.transport,
                reason,
            })
        };
        let socket = match self.transport {
            // The metadata says whether the daemon listens on a socket, not where: a name
            // read from a file is never made into a path.
            Transport::Unix | Transport::SharedMemory if endpoint.socket => runtime_dir::SOCKET,
            Transport::Unix | Transport::SharedMemory => {
                return Err(unavailable(format!(
                    "the running daemon (pid {}) listens on no Unix socket (its log, {}, \
                     says why, or it predates the unix transport)",
                    endpoint.pid,
                    endpoint.dir.log_path().display()
                )));
            }
            _ => {
                let addr = SocketAddr::from((Ipv4Addr::LOCALHOST, endpoint.port));
                return TcpStream::connect_timeout(&addr, self.connect_timeout)
                    .map(Stream::Tcp)
                    .map_err(|source| {
                        let refused = source.kind() == ErrorKind::ConnectionRefused;
                        let error = Error::Connect {
                            name: self.name.clone(),
                            addr,
                            source,
                        };
                        if refused {
                            DialError::Refused(error)
                        } else {
                            DialError::Busy(error)
                        }
                    });
            }
        };
        let path = endpoint.dir.path().join(socket);
        let stream = endpoint
            .dir
            .connect_socket(socket, self.connect_timeout)
            .map_err(|source| {
                let kind = source.kind();
                if matches!(kind, ErrorKind::InvalidInput | ErrorKind::Unsupported) {
                    return unavailable(source.to_string());
                }
                let error = Error::io(
                    format!(
                        "cannot connect to the daemon of `{}` at {}",
                        self.name,
                        path.display()
                    ),
                    source,
                );
                // Refused: nobody listens any more (the daemon is exiting). A missing file
                // under a live daemon is not stale state to clean up (the daemon may be
                // retiring, which removes it, or someone deleted it): wait and look again.
                if kind == ErrorKind::ConnectionRefused {
                    DialError::Refused(error)
                } else {
                    DialError::Busy(error)
                }
            })?;
        // Only this user (or root) can put a socket in the private runtime directory;
        // the kernel's word on who listens on it is checked all the same.
        let me = sys::euid();
        match stream.peer_uid() {
            Ok(Some(uid)) if uid == me => Ok(stream),
            Ok(peer) => Err(DialError::Fatal(Error::Auth {
                name: self.name.clone(),
                reason: format!(
                    "the process listening on {} runs as uid {}, not as you (uid {me})",
                    path.display(),
                    peer.map_or_else(|| "?".into(), |uid| uid.to_string())
                ),
            })),
            Err(source) => Err(DialError::Busy(Error::io(
                format!("reading the peer credentials of {}", path.display()),
                source,
            ))),
        }
    }

    /// Connects to `endpoint` and runs the client's side of the mutual handshake.
    pub(super) fn dial(&self, endpoint: &Endpoint) -> Result<Connection, DialError> {
        let stream = self.open_stream(endpoint)?;
        let lost = |source: std::io::Error| {
            DialError::Busy(Error::ConnectionLost {
                name: self.name.clone(),
                source,
            })
        };
        let configure = stream
            .set_nodelay()
            .and_then(|()| stream.set_read_timeout(Some(self.connect_timeout)))
            .and_then(|()| stream.set_write_timeout(Some(self.connect_timeout)));
        configure.map_err(lost)?;
        let mut reader = BufReader::with_capacity(64 << 10, stream);
        let mut buf = Vec::with_capacity(4096);

        let (half, hello) = ClientHalf::hello();
        protocol::encode_frame(&hello, &mut buf);
        reader.get_ref().write_all(&buf).map_err(lost)?;
        let challenge: protocol::handshake::Challenge =
            self.read_handshake(&mut reader, &mut buf, "challenge")?;
        let peer = half.answer(
            &endpoint.secret,
            &challenge,
            Some(self.schema),
            self.init,
            endpoint.starter,
            self.transport,
        );
        let auth = match peer {
            Peer::Proven(auth) => auth,
            Peer::Foreign => {
                return Err(DialError::Stale(Error::Protocol(ProtocolError::BadMagic)));
            }
            // Nothing an unproven peer says is acted on: a program that took over a
            // recycled port could claim any version. A daemon of another version is one
            // whose own metadata announced the version it now claims.
            Peer::OtherVersion(version) if version == endpoint.protocol => {
                return Err(DialError::Fatal(Error::ProtocolVersion {
                    name: self.name.clone(),
                    client: protocol::PROTOCOL_VERSION,
                    daemon: version,
                }));
            }
            Peer::OtherVersion(version) => {
                return Err(DialError::Stale(Error::Protocol(
                    ProtocolError::Unexpected(format!(
                        "the process on port {} claims protocol version {version} and has proved nothing",
                        endpoint.port
                    )),
                )));
            }
            Peer::Unproven => {
                return Err(DialError::Stale(Error::Auth {
                    name: self.name.clone(),
                    reason: format!(
                        "the process on port {} could not prove it knows the daemon's secret",
                        endpoint.port
                    ),
                }));
            }
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
                wire,
            }) => {
                return Err(DialError::Fatal(Error::SchemaMismatch {
                    name: self.name.clone(),
                    client: self.schema,
                    daemon,
                    difference: protocol::schema::difference(&(self.describe)(), wire.as_deref()),
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
            protocol::handshake::Verdict::Rejected(protocol::handshake::Rejection::Transport {
                reason,
            }) => {
                return Err(DialError::Fatal(Error::TransportUnavailable {
                    name: self.name.clone(),
                    transport: self.transport,
                    reason,
                }));
            }
        };
        let shm = match self.transport {
            Transport::SharedMemory => Some(Box::new(self.take_region(&mut reader)?)),
            _ => None,
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
            shm,
        })
    }

    pub(super) fn read_handshake<T: serde::de::DeserializeOwned>(
        &self,
        reader: &mut BufReader<Stream>,
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
