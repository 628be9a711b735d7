//! The wire: length-prefixed postcard frames, the mutual handshake, and call headers.
//!
//! Every frame is a `u32` little-endian payload length followed by the payload. A frame
//! is always sent with one write (header and payload in one buffer).
//!
//! Handshake (each line one frame):
//!
//! ```text
//! client -> daemon  Hello      { magic, version, client nonce }
//! daemon -> client  Challenge  { magic, version, daemon nonce, daemon proof }
//! client -> daemon  Auth       { client proof, schema, init fingerprint, init description }
//! daemon -> client  Verdict    Welcome { pid, instance, max_frame } | Rejected(..)
//! ```
//!
//! Proofs are BLAKE3 keyed hashes, under the per-daemon secret, of a role label and both
//! nonces: the daemon proves itself first, so a client never hands a proof to a program
//! that merely took over a recycled port, and the secret never crosses the wire. A peer
//! that fails to prove itself gets nothing but a closed connection.
//!
//! After the handshake, a request frame is `varint id, u8 kind, body` and a reply frame
//! `varint id, u8 status, body`. For a call, the body is the postcard encoding of the
//! generated request enum; the reply body is the method's return value.

use std::io::{self, Read};
use std::time::Duration;

use serde::{Deserialize, Serialize};

use crate::error::ProtocolError;
use crate::service::Fingerprint;

/// Identifies a loopback-singleton peer.
pub(crate) const MAGIC: [u8; 8] = *b"LBSNGLTN";
/// Bumped on any incompatible change of the frames below or of what they mean. 2: the
/// init fingerprint ignores map order, and hosts hold the instance lock (a host of
/// version 1 would not keep a successor waiting while it drops its instance).
pub(crate) const PROTOCOL_VERSION: u16 = 2;
/// Default frame size limit: 64 MiB.
pub(crate) const DEFAULT_MAX_FRAME: u32 = 64 << 20;
/// Frames of the handshake are tiny; anything bigger is refused before allocating.
pub(crate) const MAX_HANDSHAKE_FRAME: u32 = 64 << 10;

pub(crate) type Nonce = [u8; 32];
pub(crate) type Secret = [u8; 32];
pub(crate) type Proof = [u8; 32];

/// Request kinds.
pub(crate) const KIND_CALL: u8 = 0;
pub(crate) const KIND_PING: u8 = 1;
pub(crate) const KIND_SHUTDOWN: u8 = 2;

/// Reply statuses.
pub(crate) const STATUS_OK: u8 = 0;
pub(crate) const STATUS_ERR: u8 = 1;

#[derive(Debug, Serialize, Deserialize)]
pub(crate) struct Hello {
    pub magic: [u8; 8],
    pub version: u16,
    pub nonce: Nonce,
}

#[derive(Debug, Serialize, Deserialize)]
pub(crate) struct Challenge {
    pub magic: [u8; 8],
    pub version: u16,
    pub nonce: Nonce,
    pub proof: Proof,
}

#[derive(Debug, Serialize, Deserialize)]
pub(crate) struct Auth {
    pub proof: Proof,
    pub schema: Fingerprint,
    /// `None` attaches to whatever instance runs, whatever its init arguments.
    pub init: Option<Fingerprint>,
    /// The token of the client that started the daemon (from its launch description,
    /// which only that client and the daemon know): its arrival ends the daemon's grace
    /// before its first idle retirement.
    pub starter: Option<Nonce>,
}

#[derive(Debug, Serialize, Deserialize)]
pub(crate) enum Verdict {
    /// `max_frame`: the largest frame the daemon accepts, so that a client refuses a
    /// request above it before sending instead of losing the connection.
    Welcome {
        pid: u32,
        instance: u64,
        max_frame: u32,
    },
    Rejected(Rejection),
}

#[derive(Debug, Serialize, Deserialize)]
pub(crate) enum Rejection {
    Schema { daemon: Fingerprint },
    Init { running: String },
    ShuttingDown,
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
}

/// Which side a proof speaks for: the labels keep a daemon's proof from being replayed
/// as a client's.
#[derive(Clone, Copy)]
pub(crate) enum Role {
    Daemon,
    Client,
}

/// The keyed hash proving knowledge of `secret` for this pair of nonces.
pub(crate) fn proof(secret: &Secret, role: Role, client: &Nonce, daemon: &Nonce) -> blake3::Hash {
    let label: &[u8] = match role {
        Role::Daemon => b"loopback-singleton v1 daemon proof",
        Role::Client => b"loopback-singleton v1 client proof",
    };
    let mut hasher = blake3::Hasher::new_keyed(secret);
    hasher.update(label);
    hasher.update(client);
    hasher.update(daemon);
    hasher.finalize()
}

/// Checks a received proof in constant time (`blake3::Hash`'s `==` is constant-time).
pub(crate) fn verify(
    secret: &Secret,
    role: Role,
    client: &Nonce,
    daemon: &Nonce,
    got: &Proof,
) -> bool {
    proof(secret, role, client, daemon) == blake3::Hash::from_bytes(*got)
}

/// Fresh random bytes from the operating system (nonces, secrets, instance ids).
pub(crate) fn random_bytes<const N: usize>() -> [u8; N] {
    let mut bytes = [0u8; N];
    getrandom::fill(&mut bytes).expect("the operating system's random source failed");
    bytes
}

/// Fingerprint of init arguments (compared in the handshake): equal arguments agree
/// whatever order their maps iterate in (see [`crate::canonical`]).
pub(crate) fn init_fingerprint<T: Serialize + ?Sized>(
    init: &T,
) -> Result<Fingerprint, crate::canonical::Unencodable> {
    crate::canonical::fingerprint(init)
}

/// A readable rendering of init arguments for mismatch errors (JSON where the type
/// allows it, else its fingerprint). Objects list their keys in order (map keys and
/// struct fields alike), so that equal arguments read the same whatever order their
/// maps iterate in.
pub(crate) fn describe<T: Serialize + ?Sized>(init: &T) -> String {
    /// Long enough to tell arguments apart, short enough for any message.
    const MAX: usize = 1024;
    let fingerprint = || match init_fingerprint(init) {
        Ok(fingerprint) => format!("<init arguments {fingerprint:016x}>"),
        Err(_) => "<unencodable init arguments>".to_string(),
    };
    let json = serde_json::to_value(init).and_then(|mut value| {
        value.sort_all_objects();
        serde_json::to_string(&value)
    });
    match json {
        Ok(json) if json.len() <= MAX => json,
        Ok(json) => {
            let cut = (0..=MAX - 64)
                .rev()
                .find(|&at| json.is_char_boundary(at))
                .unwrap_or(0);
            format!("{}... {}", &json[..cut], fingerprint())
        }
        Err(_) => fingerprint(),
    }
}

/// Starts a frame in `buf`: clears it and reserves the length prefix.
pub(crate) fn begin_frame(buf: &mut Vec<u8>) {
    buf.clear();
    open_frame(buf);
}

/// Fills in the length prefix reserved by [`begin_frame`].
pub(crate) fn finish_frame(buf: &mut [u8]) {
    let len = u32::try_from(buf.len() - 4).expect("frames are limited to u32 lengths");
    buf[..4].copy_from_slice(&len.to_le_bytes());
}

/// Appends the length prefix of a new frame to `buf` (which may hold earlier frames,
/// for a batch sent in one write); returns where the frame starts.
pub(crate) fn open_frame(buf: &mut Vec<u8>) -> usize {
    let start = buf.len();
    buf.extend_from_slice(&[0; 4]);
    start
}

/// Fills in the length prefix of the frame opened at `start` by [`open_frame`].
pub(crate) fn close_frame(buf: &mut [u8], start: usize) {
    finish_frame(&mut buf[start..]);
}

/// Appends a request or reply header as a new frame at the end of `buf` (which may
/// hold earlier frames); returns the index of the tag byte. Close it with
/// [`close_frame`] at the length `buf` had before.
pub(crate) fn append_message(buf: &mut Vec<u8>, id: u64, tag: u8) -> usize {
    open_frame(buf);
    postcard::to_io(&id, &mut *buf).expect("encoding into a Vec cannot fail");
    buf.push(tag);
    buf.len() - 1
}

/// Whether `buffered` starts with a complete frame (so reading it needs no wait).
pub(crate) fn holds_frame(buffered: &[u8]) -> bool {
    buffered.len() >= 4
        && (buffered.len() - 4) as u64
            >= u64::from(u32::from_le_bytes(
                buffered[..4].try_into().expect("4 bytes"),
            ))
}

/// Encodes one message as a complete frame.
pub(crate) fn encode_frame<T: Serialize>(message: &T, buf: &mut Vec<u8>) {
    begin_frame(buf);
    postcard::to_io(message, &mut *buf).expect("encoding into a Vec cannot fail");
    finish_frame(buf);
}

/// Checks a length prefix against the limit.
pub(crate) fn check_len(header: [u8; 4], limit: u32) -> Result<usize, ProtocolError> {
    let len = u32::from_le_bytes(header);
    if len > limit {
        return Err(ProtocolError::FrameTooLarge {
            len: u64::from(len),
            limit: u64::from(limit),
        });
    }
    Ok(len as usize)
}

/// Why reading a frame failed.
#[derive(Debug)]
pub(crate) enum FrameError {
    Io(io::Error),
    Protocol(ProtocolError),
}

impl From<io::Error> for FrameError {
    fn from(error: io::Error) -> Self {
        FrameError::Io(error)
    }
}

/// Reads one frame's payload into `buf` (blocking).
pub(crate) fn read_frame(
    reader: &mut impl Read,
    buf: &mut Vec<u8>,
    limit: u32,
) -> Result<(), FrameError> {
    let mut header = [0u8; 4];
    reader.read_exact(&mut header)?;
    let len = check_len(header, limit).map_err(FrameError::Protocol)?;
    prepare_payload(buf, len);
    reader.take(len as u64).read_to_end(buf)?;
    payload_complete(buf, len)
}

/// Reads one frame's payload into `buf` (async).
pub(crate) async fn read_frame_async<R>(
    reader: &mut R,
    buf: &mut Vec<u8>,
    limit: u32,
) -> Result<(), FrameError>
where
    R: tokio::io::AsyncRead + Unpin,
{
    use tokio::io::AsyncReadExt;
    let mut header = [0u8; 4];
    reader.read_exact(&mut header).await?;
    let len = check_len(header, limit).map_err(FrameError::Protocol)?;
    prepare_payload(buf, len);
    reader.take(len as u64).read_to_end(buf).await?;
    payload_complete(buf, len)
}

/// Memory for a payload is committed as its bytes arrive, not as its length prefix
/// announces: four bytes from a peer must not make the daemon allocate (and zero) up to
/// the frame limit. A reused buffer that is already large enough costs nothing here.
fn prepare_payload(buf: &mut Vec<u8>, len: usize) {
    const UP_FRONT: usize = 256 << 10;
    buf.clear();
    buf.reserve(len.min(UP_FRONT));
}

/// A payload shorter than announced means the peer closed mid-frame.
fn payload_complete(buf: &[u8], len: usize) -> Result<(), FrameError> {
    if buf.len() == len {
        Ok(())
    } else {
        Err(FrameError::Io(io::ErrorKind::UnexpectedEof.into()))
    }
}

/// Decodes a whole handshake message.
pub(crate) fn decode<'a, T: Deserialize<'a>>(
    what: &'static str,
    payload: &'a [u8],
) -> Result<T, ProtocolError> {
    postcard::from_bytes(payload).map_err(|error| ProtocolError::Malformed {
        what,
        reason: error.to_string(),
    })
}

/// Splits a request or reply frame into its header (`id`, kind or status) and body.
pub(crate) fn split_header<'a>(
    what: &'static str,
    payload: &'a [u8],
) -> Result<(u64, u8, &'a [u8]), ProtocolError> {
    let ((id, tag), body) = postcard::take_from_bytes::<(u64, u8)>(payload).map_err(|error| {
        ProtocolError::Malformed {
            what,
            reason: error.to_string(),
        }
    })?;
    Ok((id, tag, body))
}

/// Starts a request or reply frame with its header; returns the index of the tag byte
/// so that a reply's status can be patched once the method has run.
pub(crate) fn begin_message(buf: &mut Vec<u8>, id: u64, tag: u8) -> usize {
    buf.clear();
    append_message(buf, id, tag)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn frames_round_trip_and_respect_the_limit() {
        let mut buf = Vec::new();
        encode_frame(&(7u64, "hello"), &mut buf);
        let mut payload = Vec::new();
        read_frame(&mut &buf[..], &mut payload, 1024).unwrap();
        let decoded: (u64, String) = decode("test", &payload).unwrap();
        assert_eq!(decoded, (7, "hello".to_string()));

        match read_frame(&mut &buf[..], &mut payload, 3) {
            Err(FrameError::Protocol(ProtocolError::FrameTooLarge { limit: 3, .. })) => {}
            other => panic!("expected FrameTooLarge, got {other:?}"),
        }
    }

    #[test]
    fn truncated_frame_is_an_io_error() {
        let mut buf = Vec::new();
        encode_frame(&vec![1u8; 100], &mut buf);
        let mut payload = Vec::new();
        assert!(matches!(
            read_frame(&mut &buf[..50], &mut payload, 1024),
            Err(FrameError::Io(_))
        ));
    }

    #[test]
    fn init_descriptions_are_readable_and_bounded() {
        assert_eq!(describe(&(10u64, "x")), r#"[10,"x"]"#);
        let long = describe(&"é".repeat(5000));
        assert!(long.len() < 1100, "{}", long.len());
        assert!(long.contains("<init arguments "), "{long}");
    }

    #[test]
    fn init_descriptions_list_map_entries_in_order() {
        use std::collections::HashMap;
        let map = |keys: &mut dyn Iterator<Item = u32>| -> HashMap<String, u32> {
            keys.map(|i| (format!("k{i:02}"), i)).collect()
        };
        let expected = format!(
            "[{{{}}},2]",
            (0..16)
                .map(|i| format!("\"k{i:02}\":{i}"))
                .collect::<Vec<_>>()
                .join(",")
        );
        assert_eq!(describe(&(map(&mut (0..16)), 2)), expected);
        assert_eq!(describe(&(map(&mut (0..16).rev()), 2)), expected);
        // Integer keys are JSON strings, listed as strings; nested maps are sorted too.
        let nested: HashMap<u8, HashMap<String, u32>> =
            [(10, map(&mut (0..2))), (9, map(&mut (0..1)))].into();
        assert_eq!(
            describe(&nested),
            r#"{"10":{"k00":0,"k01":1},"9":{"k00":0}}"#
        );
        // Too long: cut, and marked with the fingerprint, equal for equal arguments.
        let big = |keys: &mut dyn Iterator<Item = u32>| -> HashMap<String, String> {
            keys.map(|i| (format!("k{i:03}"), "v".repeat(20))).collect()
        };
        let (a, b) = (big(&mut (0..100)), big(&mut (0..100).rev()));
        assert_eq!(describe(&a), describe(&b));
        assert!(
            describe(&a).contains("<init arguments "),
            "{}",
            describe(&a)
        );
    }

    #[test]
    fn a_length_prefix_alone_commits_no_memory() {
        let mut bytes = (60u32 << 20).to_le_bytes().to_vec();
        bytes.extend_from_slice(&[1; 10]);
        let mut payload = Vec::new();
        assert!(matches!(
            read_frame(&mut &bytes[..], &mut payload, 64 << 20),
            Err(FrameError::Io(_))
        ));
        assert!(payload.capacity() <= 256 << 10, "{}", payload.capacity());
    }

    #[test]
    fn proofs_depend_on_secret_role_and_nonces() {
        let secret = [1u8; 32];
        let (a, b) = ([2u8; 32], [3u8; 32]);
        let daemon = *proof(&secret, Role::Daemon, &a, &b).as_bytes();
        assert!(verify(&secret, Role::Daemon, &a, &b, &daemon));
        assert!(!verify(&secret, Role::Client, &a, &b, &daemon));
        assert!(!verify(&[9u8; 32], Role::Daemon, &a, &b, &daemon));
        assert!(!verify(&secret, Role::Daemon, &b, &a, &daemon));
    }

    #[test]
    fn message_header_round_trips() {
        let mut buf = Vec::new();
        let status_at = begin_message(&mut buf, 300, STATUS_OK);
        buf.extend_from_slice(b"body");
        buf[status_at] = STATUS_ERR;
        finish_frame(&mut buf);
        let (id, status, body) = split_header("reply", &buf[4..]).unwrap();
        assert_eq!((id, status, body), (300, STATUS_ERR, &b"body"[..]));
    }
}
