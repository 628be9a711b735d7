//! Request and reply headers: `varint id, u8 kind` or `varint id, u8 status`, then the
//! body. Both sides name kinds and statuses through the enums here.

use serde::{Deserialize, Serialize};
use std::time::Duration;

use super::error::ProtocolError;
use super::frame::open_frame;

/// What a request asks for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(u8)]
pub(crate) enum Kind {
    /// Run a method: the body is the request enum.
    Call = 0,
    /// Report [`DaemonInfo`].
    Ping = 1,
    /// Retire the daemon.
    Shutdown = 2,
    /// Report [`Stats`](super::Stats); a body of one byte `1` also zeroes them (the
    /// report is of what came before). Empty body: report only.
    Stats = 3,
}

/// How a reply answers.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(u8)]
pub(crate) enum Status {
    /// The body is the answer (a method's return value, [`DaemonInfo`], or nothing).
    Ok = 0,
    /// The body is a [`RemoteError`](super::RemoteError).
    Err = 1,
}

impl Kind {
    fn from_u8(byte: u8) -> Option<Self> {
        [Kind::Call, Kind::Ping, Kind::Shutdown, Kind::Stats]
            .into_iter()
            .find(|kind| *kind as u8 == byte)
    }
}

impl Status {
    fn from_u8(byte: u8) -> Option<Self> {
        [Status::Ok, Status::Err]
            .into_iter()
            .find(|status| *status as u8 == byte)
    }
}

/// Opens a new frame at the end of `buf` (which may hold earlier frames) with a request
/// or reply header; returns the index of the kind or status byte, so that a reply's
/// status can be patched once the method has run. Close it with
/// [`close_frame`](super::close_frame) at the length `buf` had before.
pub(crate) fn append_header(buf: &mut Vec<u8>, id: u64, tag: impl Into<u8>) -> usize {
    open_frame(buf);
    postcard::to_io(&id, &mut *buf).expect("encoding into a Vec cannot fail");
    buf.push(tag.into());
    buf.len() - 1
}

impl From<Kind> for u8 {
    fn from(kind: Kind) -> u8 {
        kind as u8
    }
}

impl From<Status> for u8 {
    fn from(status: Status) -> u8 {
        status as u8
    }
}

fn split<'a>(what: &'static str, payload: &'a [u8]) -> Result<(u64, u8, &'a [u8]), ProtocolError> {
    let ((id, tag), body) = postcard::take_from_bytes::<(u64, u8)>(payload).map_err(|error| {
        ProtocolError::Malformed {
            what,
            reason: error.to_string(),
        }
    })?;
    Ok((id, tag, body))
}

/// Splits a request frame into its id, kind and body.
pub(crate) fn split_request(payload: &[u8]) -> Result<(u64, Kind, &[u8]), ProtocolError> {
    let (id, tag, body) = split("request", payload)?;
    let kind = Kind::from_u8(tag)
        .ok_or_else(|| ProtocolError::Unexpected(format!("unknown request kind {tag}")))?;
    Ok((id, kind, body))
}

/// Splits a reply frame into its id, status and body.
pub(crate) fn split_reply(payload: &[u8]) -> Result<(u64, Status, &[u8]), ProtocolError> {
    let (id, tag, body) = split("reply", payload)?;
    let status = Status::from_u8(tag)
        .ok_or_else(|| ProtocolError::Unexpected(format!("reply status {tag}")))?;
    Ok((id, status, body))
}

/// What a daemon reports about itself (see `ping`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[non_exhaustive]
pub struct DaemonInfo {
    /// The daemon's process id.
    pub pid: u32,
    /// A random id of this daemon instance (a restarted daemon has another).
    pub instance: u64,
    /// The TCP port it listens on, on 127.0.0.1.
    pub port: u16,
    /// Time since the daemon started.
    pub uptime: Duration,
    /// Calls executed on the instance so far.
    pub calls_served: u64,
    /// Clients connected right now (including the one asking).
    pub clients: u32,
    /// The crate version the daemon was built with.
    pub version: String,
    /// The transport of the connection that asked.
    pub transport: super::Transport,
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::protocol::close_frame;

    #[test]
    fn message_header_round_trips() {
        let mut buf = Vec::new();
        let status_at = append_header(&mut buf, 300, Status::Ok);
        buf.extend_from_slice(b"body");
        buf[status_at] = Status::Err.into();
        close_frame(&mut buf, 0);
        let (id, status, body) = split_reply(&buf[4..]).unwrap();
        assert_eq!((id, status, body), (300, Status::Err, &b"body"[..]));
        let request = [5, 9];
        assert!(split_request(&request).is_err(), "kind 9 does not exist");
        assert_eq!(split_request(&[5, 3]).unwrap().1, Kind::Stats);
    }
}
