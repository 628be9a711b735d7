//! The wire protocol, importing nothing of the crate: frames, message headers, the
//! mutual handshake, and the init fingerprint. Host and client both build on it.
//!
//! Every frame is a `u32` little-endian payload length followed by the payload. A frame
//! is always sent with one write (header and payload in one buffer).
//!
//! Handshake (each line one frame; see [`handshake`]):
//!
//! ```text
//! client -> daemon  Hello      { magic, version, client nonce }
//! daemon -> client  Challenge  { magic, version, daemon nonce, daemon proof }
//! client -> daemon  Auth       { client proof, schema (None: admin), init fingerprint, starter token }
//! daemon -> client  Verdict    Welcome { pid, instance, max_frame } | Rejected(..)
//! ```
//!
//! After the handshake, a request frame is `varint id, u8 kind, body` and a reply frame
//! `varint id, u8 status, body` (see [`message`]). For a call, the body is the postcard
//! encoding of the generated request enum; the reply body is the method's return value.

mod error;
mod frame;
pub(crate) mod handshake;
mod init;
pub(crate) mod message;
pub(crate) mod schema;
mod stats;
mod transport;

pub use error::{ProtocolError, RemoteError};
pub(crate) use frame::{
    FrameError, check_len, close_frame, decode, encode_frame, holds_frame, read_frame,
    read_frame_async,
};
pub(crate) use init::{describe, init_fingerprint};
pub use message::DaemonInfo;
pub(crate) use message::{Kind, Status, append_header, split_reply, split_request};
pub use stats::{Latency, MethodStats, Stats};
pub use transport::Transport;

/// A compile-time hash of a service's name, its method signatures as written, and the
/// structure of every type that crosses the wire (`loopback_singleton::Schema`).
///
/// Client and daemon compare fingerprints in the handshake: postcard is positional, so a
/// client built from another version of the service, or with a type of another shape,
/// would otherwise misread the bytes.
pub type Fingerprint = u64;

/// Identifies a loopback-singleton peer.
pub(crate) const MAGIC: [u8; 8] = *b"LBSNGLTN";
/// Bumped on any incompatible change of the frames below or of what they mean. 2: the
/// init fingerprint ignores map order, the handshake carries the starter token, and
/// hosts hold the instance lock (a host of version 1 would not keep a successor waiting
/// while it drops its instance). 3: `Auth`'s schema is optional (an admin connection,
/// ping and shutdown only). Kind 3 (stats) was added without a bump: an older daemon
/// closes the connection on it, which the asker reports; nothing else changed. 4: `Auth`
/// names the client's transport, `Rejection::Transport` refuses one, and `DaemonInfo`
/// says which transport the asking connection uses.
pub(crate) const PROTOCOL_VERSION: u16 = 4;
/// Default frame size limit: 64 MiB.
pub(crate) const DEFAULT_MAX_FRAME: u32 = 64 << 20;
/// Frames of the handshake are tiny; anything bigger is refused before allocating.
pub(crate) const MAX_HANDSHAKE_FRAME: u32 = 64 << 10;

pub(crate) type Nonce = [u8; 32];
pub(crate) type Secret = [u8; 32];
pub(crate) type Proof = [u8; 32];

/// Fresh random bytes from the operating system (nonces, secrets, instance ids).
pub(crate) fn random_bytes<const N: usize>() -> [u8; N] {
    let mut bytes = [0u8; N];
    getrandom::fill(&mut bytes).expect("the operating system's random source failed");
    bytes
}
