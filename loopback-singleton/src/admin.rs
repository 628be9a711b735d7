//! What the `loopback-singleton` command-line tool needs to see and stop daemons without
//! knowing their services: the runtime base, the names under it, each name's published
//! metadata, and an admin connection (the handshake without a schema) that may ping,
//! ask for stats and shut down, never call. It never starts a daemon, and never creates a directory.
//!
//! Not covered by semver: an interface between this crate and its CLI of the same
//! version.

use std::io::{BufReader, Write};
use std::net::{Ipv4Addr, SocketAddr, TcpStream};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use crate::error::Error;
use crate::protocol::handshake::{Challenge, ClientHalf, Peer, Rejection, Verdict};
use crate::protocol::{
    self, DaemonInfo, FrameError, Kind, ProtocolError, RemoteError, Stats, Status,
};
use crate::runtime_dir::{self, Metadata, RuntimeDir};
use crate::sys;

/// The base directory the runtime uses: `$LOOPBACK_SINGLETON_DIR`, else the per-user
/// default (see the README's "Runtime files").
pub fn base_dir() -> Result<PathBuf, Error> {
    runtime_dir::base_dir(None)
}

/// The singleton names that have a directory under `base`, sorted; none if `base`
/// does not exist.
pub fn names(base: &Path) -> Result<Vec<String>, Error> {
    let entries = match std::fs::read_dir(base) {
        Ok(entries) => entries,
        Err(error) if error.kind() == std::io::ErrorKind::NotFound => return Ok(Vec::new()),
        Err(error) => return Err(Error::io(format!("listing {}", base.display()), error)),
    };
    let mut names: Vec<String> = entries
        .filter_map(Result::ok)
        .filter(|entry| entry.file_type().is_ok_and(|kind| kind.is_dir()))
        .filter_map(|entry| entry.file_name().into_string().ok())
        .filter(|name| runtime_dir::validate_name(name).is_ok())
        .collect();
    names.sort();
    Ok(names)
}

/// What a daemon published about itself in its metadata file.
#[derive(Debug, Clone)]
#[non_exhaustive]
pub struct Published {
    /// Its process id.
    pub pid: u32,
    /// Its TCP port on 127.0.0.1.
    pub port: u16,
    /// A random id of this daemon instance.
    pub instance: u64,
    /// The service it hosts.
    pub service: String,
    /// The service's schema fingerprint.
    pub schema: u64,
    /// Its protocol version.
    pub protocol: u16,
    /// The crate version it was built with.
    pub crate_version: String,
    /// The idle TTL it runs with (its options, else `LOOPBACK_SINGLETON_IDLE_TTL`);
    /// `None`: it never retires for want of clients.
    pub idle_ttl: Option<Duration>,
    /// Whether the process the metadata names still runs (pid and start time match, and
    /// it is not a zombie).
    pub alive: bool,
}

/// How [`Daemon::stop`] ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Stopped {
    /// No daemon ran (stale files, if any, were removed).
    NotRunning,
    /// The daemon retired on request.
    Gracefully,
    /// The daemon was killed (it did not retire in time, or `force`), its files removed.
    Killed,
}

/// One singleton name's runtime directory, opened and checked like a client does.
pub struct Daemon {
    dir: RuntimeDir,
}

/// How long a killed daemon's instance lock may take to be released after its process
/// is seen gone.
const LOCK_RELEASE: Duration = Duration::from_secs(2);

impl Daemon {
    /// Opens `<base>/<name>`: `Ok(None)` if it does not exist (nothing was ever started
    /// under this name); an error if it cannot be trusted.
    pub fn open(base: &Path, name: &str) -> Result<Option<Daemon>, Error> {
        runtime_dir::validate_name(name)?;
        match std::fs::symlink_metadata(base.join(name)) {
            Err(error) if error.kind() == std::io::ErrorKind::NotFound => return Ok(None),
            _ => {}
        }
        Ok(Some(Daemon {
            dir: RuntimeDir::open(base, name)?,
        }))
    }

    /// The directory's path.
    pub fn path(&self) -> &Path {
        self.dir.path()
    }

    /// The daemon's log file.
    pub fn log_path(&self) -> PathBuf {
        self.dir.log_path()
    }

    /// Opens the log to read it (`daemon.log`, or with `old` `daemon.log.1`), through
    /// the checked directory: `Ok(None)` if there is none; an error if it is not a
    /// regular file (a link is not followed, a pipe not waited on).
    pub fn open_log(&self, old: bool) -> Result<Option<std::fs::File>, Error> {
        self.dir.read_log(old)
    }

    /// The published metadata, if any.
    pub fn published(&self) -> Result<Option<Published>, Error> {
        Ok(self.dir.read_metadata()?.map(|metadata| Published {
            alive: runtime_dir::daemon_alive(&metadata),
            pid: metadata.pid,
            port: metadata.port,
            instance: metadata.instance,
            service: metadata.service,
            schema: metadata.schema,
            protocol: metadata.protocol,
            crate_version: metadata.crate_version,
            idle_ttl: metadata.idle_ttl_ms.map(Duration::from_millis),
        }))
    }

    fn name(&self) -> String {
        self.dir
            .path()
            .file_name()
            .map_or_else(String::new, |name| name.to_string_lossy().into_owned())
    }

    /// Asks the live daemon for its [`DaemonInfo`] within `timeout`.
    pub fn ping(&self, timeout: Duration) -> Result<DaemonInfo, Error> {
        let metadata = self.live()?;
        let body = self.exchange(&metadata, Kind::Ping, timeout)?;
        protocol::decode("daemon info", &body).map_err(Error::Protocol)
    }

    /// Asks the live daemon for its per-method [`Stats`] within `timeout`; with `zero`,
    /// zeroes them in the same step (the report covers up to the reset).
    pub fn stats(&self, timeout: Duration, zero: bool) -> Result<Stats, Error> {
        let metadata = self.live()?;
        let body = self.exchange_with(&metadata, Kind::Stats, &[u8::from(zero)], timeout)?;
        protocol::decode("stats", &body).map_err(Error::Protocol)
    }

    /// Stops the daemon: a shutdown request, then waiting for the process to end until
    /// `timeout`; past it, or at once with `force`, SIGKILL and removal of its metadata,
    /// secret and socket.
    pub fn stop(&self, timeout: Duration, force: bool) -> Result<Stopped, Error> {
        let Some(metadata) = self.dir.live_daemon()? else {
            self.remove_files_of(None)?;
            return Ok(Stopped::NotRunning);
        };
        let deadline = Instant::now() + timeout;
        if !force && self.exchange(&metadata, Kind::Shutdown, timeout).is_ok() {
            while Instant::now() < deadline {
                if !runtime_dir::daemon_alive(&metadata) {
                    self.remove_files_of(Some(metadata.instance))?;
                    return Ok(Stopped::Gracefully);
                }
                std::thread::sleep(Duration::from_millis(10));
            }
        }
        // Only the process the metadata names (pid and start time), never a recycled pid.
        if runtime_dir::daemon_alive(&metadata) {
            sys::kill(metadata.pid)
                .map_err(|error| Error::io(format!("killing pid {}", metadata.pid), error))?;
            let gone_by = Instant::now() + Duration::from_secs(5);
            while runtime_dir::daemon_alive(&metadata) {
                if Instant::now() >= gone_by {
                    return Err(Error::io(
                        format!("waiting for pid {} to exit after SIGKILL", metadata.pid),
                        std::io::ErrorKind::TimedOut.into(),
                    ));
                }
                std::thread::sleep(Duration::from_millis(10));
            }
        }
        self.remove_files_of(Some(metadata.instance))?;
        Ok(Stopped::Killed)
    }

    /// Removes metadata, secret and socket if they still belong to `instance` (or, with
    /// `None`, to no live daemon): a successor's files are never touched.
    fn remove_files_of(&self, instance: Option<u64>) -> Result<(), Error> {
        let stale = match self.dir.read_metadata() {
            Ok(Some(metadata)) => match instance {
                Some(instance) => metadata.instance == instance,
                None => !runtime_dir::daemon_alive(&metadata),
            },
            Ok(None) => instance.is_none(),
            Err(error @ Error::RuntimeDir { .. }) => return Err(error),
            Err(_) => true,
        };
        if !stale {
            return Ok(());
        }
        self.dir.remove_stale()?;
        // The socket goes only if no host holds the name: a successor binds its socket
        // under the instance lock, before it publishes its metadata. A killed process
        // may be seen gone a moment before the kernel releases its lock: allow for that.
        if let Ok(_free) = self.dir.lock_instance(LOCK_RELEASE) {
            self.dir.remove_socket();
        }
        Ok(())
    }

    fn live(&self) -> Result<Metadata, Error> {
        self.dir
            .live_daemon()?
            .ok_or_else(|| Error::NotRunning { name: self.name() })
    }

    /// Connects as an admin (no schema), sends one request of `kind` and returns the
    /// reply's body; everything within `timeout`.
    fn exchange(
        &self,
        metadata: &Metadata,
        kind: Kind,
        timeout: Duration,
    ) -> Result<Vec<u8>, Error> {
        self.exchange_with(metadata, kind, &[], timeout)
    }

    /// [`exchange`](Self::exchange) with a request body.
    fn exchange_with(
        &self,
        metadata: &Metadata,
        kind: Kind,
        request: &[u8],
        timeout: Duration,
    ) -> Result<Vec<u8>, Error> {
        let name = self.name();
        let secret = self
            .dir
            .read_secret()?
            .ok_or_else(|| Error::NotRunning { name: name.clone() })?;
        let deadline = Instant::now() + timeout;
        let remaining = || {
            deadline
                .saturating_duration_since(Instant::now())
                .max(Duration::from_millis(1))
        };
        let addr = SocketAddr::from((Ipv4Addr::LOCALHOST, metadata.port));
        let stream =
            TcpStream::connect_timeout(&addr, remaining()).map_err(|source| Error::Connect {
                name: name.clone(),
                addr,
                source,
            })?;
        let lost = |source: std::io::Error| match source.kind() {
            std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut => Error::Timeout {
                name: name.clone(),
                after: timeout,
            },
            _ => Error::ConnectionLost {
                name: name.clone(),
                source,
            },
        };
        let frame_error = |error: FrameError| match error {
            FrameError::Io(source) => lost(source),
            FrameError::Protocol(error) => Error::Protocol(error),
        };
        let _ = stream.set_nodelay(true);
        let mut reader = BufReader::new(stream);
        let mut buf = Vec::new();
        let send = |reader: &mut BufReader<TcpStream>, buf: &[u8]| {
            let mut stream: &TcpStream = reader.get_ref();
            stream
                .set_write_timeout(Some(remaining()))
                .and_then(|()| stream.write_all(buf))
        };
        let receive = |reader: &mut BufReader<TcpStream>, buf: &mut Vec<u8>, limit| {
            reader
                .get_ref()
                .set_read_timeout(Some(remaining()))
                .map_err(FrameError::Io)
                .and_then(|()| protocol::read_frame(reader, buf, limit))
        };

        let (half, hello) = ClientHalf::hello();
        protocol::encode_frame(&hello, &mut buf);
        send(&mut reader, &buf).map_err(lost)?;
        receive(&mut reader, &mut buf, protocol::MAX_HANDSHAKE_FRAME).map_err(frame_error)?;
        let challenge: Challenge = protocol::decode("challenge", &buf)?;
        let auth = match half.answer(
            &secret,
            &challenge,
            None,
            None,
            None,
            protocol::Transport::Tcp,
        ) {
            Peer::Proven(auth) => auth,
            Peer::OtherVersion(version) => {
                return Err(Error::ProtocolVersion {
                    name,
                    client: protocol::PROTOCOL_VERSION,
                    daemon: version,
                });
            }
            Peer::Foreign => return Err(Error::Protocol(ProtocolError::BadMagic)),
            Peer::Unproven => {
                return Err(Error::Auth {
                    name,
                    reason: format!(
                        "the process on port {} could not prove it knows the daemon's secret",
                        metadata.port
                    ),
                });
            }
        };
        protocol::encode_frame(&auth, &mut buf);
        send(&mut reader, &buf).map_err(lost)?;
        receive(&mut reader, &mut buf, protocol::MAX_HANDSHAKE_FRAME).map_err(frame_error)?;
        match protocol::decode::<Verdict>("verdict", &buf)? {
            Verdict::Welcome { .. } => {}
            Verdict::Rejected(Rejection::ShuttingDown) => {
                return Err(Error::Remote(RemoteError::ShuttingDown));
            }
            Verdict::Rejected(_) => {
                return Err(Error::Protocol(ProtocolError::Unexpected(
                    "the daemon refused an admin connection".into(),
                )));
            }
        }
        buf.clear();
        protocol::append_header(&mut buf, 1, kind);
        buf.extend_from_slice(request);
        protocol::close_frame(&mut buf, 0);
        send(&mut reader, &buf).map_err(lost)?;
        receive(&mut reader, &mut buf, protocol::DEFAULT_MAX_FRAME).map_err(frame_error)?;
        let (_, status, body) = protocol::split_reply(&buf)?;
        match status {
            Status::Ok => Ok(body.to_vec()),
            Status::Err => Err(Error::Remote(protocol::decode("remote error", body)?)),
        }
    }
}
