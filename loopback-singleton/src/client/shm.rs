//! The client's side of the shared-memory transport (see [`crate::shm`]): taking the
//! region over after the handshake, and one call through it.

use std::io::{BufReader, Write};
use std::time::Instant;

use crate::error::Error;
use crate::shm::{self, ClientEnd, WaitError};
use crate::sys::{self, Mapping, Stream};

use super::connect::DialError;
use super::pool::{Connection, Inner};
use super::reply_body;

/// A connection's shared region, and a second buffer so that a request and its reply
/// need not share one.
pub(super) struct ShmLink {
    end: ClientEnd<Mapping>,
    spare: Vec<u8>,
}

impl Inner {
    /// After the daemon's welcome: asks for the region (a doorbell, sent only now that
    /// nothing more of the handshake is to be read), then receives, checks and maps it.
    pub(super) fn take_region(&self, reader: &mut BufReader<Stream>) -> Result<ShmLink, DialError> {
        let lost = |source: std::io::Error| {
            DialError::Busy(Error::ConnectionLost {
                name: self.name.clone(),
                source,
            })
        };
        let unavailable = |reason: String| {
            DialError::Fatal(Error::TransportUnavailable {
                name: self.name.clone(),
                transport: self.transport,
                reason,
            })
        };
        if !reader.buffer().is_empty() {
            return Err(unavailable(
                "the daemon spoke out of turn after its welcome".into(),
            ));
        }
        let mut stream = reader.get_ref();
        stream.write_all(&shm::DOORBELL).map_err(lost)?;
        let fd = match stream.recv_region() {
            Ok(Some(fd)) => fd,
            Ok(None) => {
                return Err(unavailable(
                    "the daemon could not create a shared-memory region (its log says why)".into(),
                ));
            }
            Err(error) if error.kind() == std::io::ErrorKind::InvalidData => {
                return Err(unavailable(error.to_string()));
            }
            Err(error) => return Err(lost(error)),
        };
        let mapping = sys::map_received(&fd, shm::REGION_BYTES)
            .map_err(|error| unavailable(format!("the shared region was refused: {error}")))?;
        let end = ClientEnd::new(mapping).map_err(|error| DialError::Fatal(error.into()))?;
        Ok(ShmLink {
            end,
            spare: Vec::new(),
        })
    }

    /// Whether the request in `connection.buf` (a whole frame) goes through the region.
    pub(super) fn through_region(connection: &Connection) -> bool {
        connection.shm.is_some() && shm::Region::<Mapping>::fits(connection.buf.len() - 4)
    }

    /// Sends the request in `connection.buf` through the region and reads the reply
    /// into the same buffer; returns where the reply's body starts.
    pub(super) fn shm_round_trip(
        &self,
        connection: &mut Connection,
        id: u64,
    ) -> Result<usize, Error> {
        let Connection {
            reader, buf, shm, ..
        } = connection;
        let link = shm.as_mut().expect("a connection with a region");
        std::mem::swap(buf, &mut link.spare);
        let deadline = self.call_timeout.map(|timeout| Instant::now() + timeout);
        let result = link.end.call(
            &link.spare[4..],
            reader,
            Stream::wait_readable,
            deadline,
            self.max_frame,
            buf,
        );
        match result {
            Ok(()) => reply_body(buf, id),
            Err(WaitError::Io(error)) => Err(self.lost(error)),
            Err(WaitError::Timeout) => Err(self.lost(std::io::ErrorKind::TimedOut.into())),
            Err(WaitError::Protocol(error)) => Err(Error::Protocol(error)),
        }
    }
}
