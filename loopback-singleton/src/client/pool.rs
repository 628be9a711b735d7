//! The connections of one client (a small pool, so that threads never wait on each
//! other's round trips) and one request's round trip.

use std::io::{BufReader, ErrorKind, Read, Write};
use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Mutex, MutexGuard};
use std::time::{Duration, Instant};

use serde::de::DeserializeOwned;

use crate::error::Error;
use crate::protocol::{self, Fingerprint, FrameError, Transport};
use crate::runtime_dir::RuntimeDir;
use crate::spawn::Launch;

use super::connect::Probe;
use super::*;

/// One authenticated connection with its reusable buffer.
pub(super) struct Connection {
    pub(super) reader: BufReader<crate::sys::Stream>,
    pub(super) buf: Vec<u8>,
    pub(super) instance: u64,
    /// The smaller of this client's and the daemon's frame limits: requests above it
    /// are refused before they are sent.
    pub(super) max_frame: u32,
    /// Length of the last request sent from `buf` (its reply has replaced it since).
    pub(super) request_len: usize,
    /// The shared region, on a connection of the shm transport.
    pub(super) shm: Option<Box<super::shm::ShmLink>>,
}

pub(super) struct Inner {
    pub(super) name: String,
    /// The runtime directory as checked when the client was made. Looking for a daemon
    /// it does not know yet opens and checks the directory afresh.
    pub(super) dir: RuntimeDir,
    pub(super) service_id: &'static str,
    pub(super) schema: Fingerprint,
    /// This build's wire description, to say what differs when the schema is refused.
    pub(super) describe: fn() -> Vec<crate::protocol::schema::WireItem>,
    /// `None` with [`Builder::attach`].
    pub(super) init: Option<Fingerprint>,
    pub(super) launch: Launch,
    pub(super) connect_timeout: Duration,
    pub(super) start_timeout: Duration,
    pub(super) call_timeout: Option<Duration>,
    pub(super) max_frame: u32,
    pub(super) daemon_command: Option<PathBuf>,
    /// How this client's connections reach the daemon.
    pub(super) transport: Transport,
    pub(super) endpoint: Mutex<Option<Endpoint>>,
    pub(super) idle: Mutex<Vec<Connection>>,
    pub(super) next_id: AtomicU64,
}

impl Inner {
    pub(super) fn endpoint(&self) -> MutexGuard<'_, Option<Endpoint>> {
        lock(&self.endpoint)
    }

    /// One request-reply exchange; `encode_body` appends the request body.
    pub(super) fn request<R: DeserializeOwned>(
        &self,
        kind: protocol::Kind,
        encode_body: impl FnOnce(&mut Vec<u8>) -> Result<(), Error>,
    ) -> Result<R, Error> {
        let mut connection = self.checkout()?;
        let id = self.next_id.fetch_add(1, Ordering::Relaxed);
        connection.buf.clear();
        protocol::append_header(&mut connection.buf, id, kind);
        // A request that cannot be encoded or sent leaves the connection as it was.
        let encoded = encode_body(&mut connection.buf)
            .and_then(|()| check_frame_limit(&connection.buf, connection.max_frame));
        if let Err(error) = encoded {
            self.checkin(connection);
            return Err(error);
        }
        protocol::close_frame(&mut connection.buf, 0);
        connection.request_len = connection.buf.len();
        let body = match self.round_trip(&mut connection, id) {
            Ok(body) => body,
            Err(error) => {
                if matches!(
                    error,
                    Error::ConnectionLost { .. } | Error::Timeout { .. } | Error::Protocol(_)
                ) {
                    // The connection is dead or out of step: never reuse it.
                    if matches!(error, Error::ConnectionLost { .. }) {
                        self.forget(connection.instance);
                    }
                    return Err(error);
                }
                self.checkin(connection);
                return Err(error);
            }
        };
        let value = decode_reply(&connection.buf[body..]);
        self.checkin(connection);
        value
    }

    /// Sends the frame in `connection.buf` and reads the reply into the same buffer;
    /// returns where the reply's body starts.
    pub(super) fn round_trip(&self, connection: &mut Connection, id: u64) -> Result<usize, Error> {
        if Self::through_region(connection) {
            return self.shm_round_trip(connection, id);
        }
        let Connection { reader, buf, .. } = connection;
        reader
            .get_ref()
            .write_all(buf)
            .map_err(|error| self.lost(error))?;
        self.read_reply(connection, id)
    }

    /// A transport failure of a call: a timeout, or the connection is gone.
    pub(super) fn lost(&self, source: std::io::Error) -> Error {
        match source.kind() {
            ErrorKind::WouldBlock | ErrorKind::TimedOut => Error::Timeout {
                name: self.name.clone(),
                after: self.call_timeout.unwrap_or_default(),
            },
            _ => Error::ConnectionLost {
                name: self.name.clone(),
                source,
            },
        }
    }

    /// Reads the reply to call `id` into `connection.buf`; returns where its body starts.
    pub(super) fn read_reply(&self, connection: &mut Connection, id: u64) -> Result<usize, Error> {
        let Connection {
            reader, buf, shm, ..
        } = connection;
        // An shm connection's socket may also carry doorbells (empty frames).
        let read = match shm {
            Some(_) => crate::shm::next_frame(reader, buf, self.max_frame),
            None => protocol::read_frame(reader, buf, self.max_frame),
        };
        match read {
            Ok(()) => {}
            Err(FrameError::Io(error)) => return Err(self.lost(error)),
            Err(FrameError::Protocol(error)) => return Err(Error::Protocol(error)),
        }
        reply_body(buf, id)
    }

    /// A connection to the daemon that runs now, if any: pooled, or found by probing
    /// the runtime directory. Never starts one.
    pub(super) fn checkout_running(&self) -> Result<Option<Connection>, Error> {
        if let Some(connection) = self.pooled()? {
            return Ok(Some(connection));
        }
        match self.probe(&self.recheck_dir()?) {
            Probe::Found(connection, endpoint) => {
                *self.endpoint() = Some(endpoint);
                Ok(Some(connection))
            }
            Probe::Absent => Ok(None),
            Probe::Busy(error) | Probe::Fatal(error) => Err(error),
        }
    }

    /// After a shutdown was acknowledged: waits until the daemon has closed the
    /// connection (it does as it exits) and its process is gone.
    pub(super) fn await_exit(
        &self,
        mut connection: Connection,
        pid: Option<u32>,
    ) -> Result<(), Error> {
        let deadline = Instant::now() + self.start_timeout;
        let stream = connection.reader.get_mut();
        let _ = stream.set_read_timeout(Some(self.start_timeout));
        let mut sink = [0u8; 64];
        while matches!(stream.read(&mut sink), Ok(n) if n > 0) {}
        let Some(pid) = pid else { return Ok(()) };
        while !crate::sys::process_exited(pid) {
            if Instant::now() >= deadline {
                return Err(Error::Timeout {
                    name: self.name.clone(),
                    after: self.start_timeout,
                });
            }
            std::thread::sleep(Duration::from_millis(2));
        }
        Ok(())
    }

    pub(super) fn checkout(&self) -> Result<Connection, Error> {
        match self.pooled()? {
            Some(connection) => Ok(connection),
            None => {
                let connection = self.open()?;
                self.refuse_reentry(connection)
            }
        }
    }

    /// An idle pooled connection, if any.
    pub(super) fn pooled(&self) -> Result<Option<Connection>, Error> {
        let pooled = lock(&self.idle).pop();
        pooled
            .map(|connection| self.refuse_reentry(connection))
            .transpose()
    }

    /// Refuses a call from a method of the very instance it would call: calls run one
    /// at a time, so it would wait for itself forever.
    pub(super) fn refuse_reentry(&self, connection: Connection) -> Result<Connection, Error> {
        if crate::service::runs_on_this_thread(connection.instance) {
            self.checkin(connection);
            return Err(Error::Reentrant {
                name: self.name.clone(),
            });
        }
        Ok(connection)
    }

    pub(super) fn checkin(&self, mut connection: Connection) {
        const KEEP: usize = 64 << 10;
        // Large buffers stay while the last call filled a good part of them (a run of
        // large calls reuses one allocation); a huge one no longer used is let go.
        let used = connection.buf.len().max(connection.request_len);
        if connection.buf.capacity() > 16 * KEEP && used < connection.buf.capacity() / 4 {
            connection.buf = Vec::with_capacity(KEEP);
        }
        lock(&self.idle).push(connection);
    }

    /// Drops every pooled connection to `instance` and forgets its endpoint, so the
    /// next call finds (or starts) the daemon afresh.
    pub(super) fn forget(&self, instance: u64) {
        lock(&self.idle).retain(|connection| connection.instance != instance);
        let mut endpoint = self.endpoint();
        if endpoint
            .as_ref()
            .is_some_and(|endpoint| endpoint.instance == instance)
        {
            *endpoint = None;
        }
    }
}
