//! The errors the protocol itself defines: a broken frame, and the daemon's report of
//! a call it could not complete (which travels on the wire).

/// A violation of the wire protocol.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum ProtocolError {
    /// A frame's length prefix exceeds the configured limit.
    #[error("frame of {len} bytes exceeds the limit of {limit} bytes")]
    FrameTooLarge {
        /// The announced length.
        len: u64,
        /// The configured limit.
        limit: u64,
    },
    /// The peer is not a loopback-singleton endpoint (bad magic).
    #[error("the peer is not a loopback-singleton endpoint (bad magic)")]
    BadMagic,
    /// A frame could not be decoded.
    #[error("malformed {what}: {reason}")]
    Malformed {
        /// Which message.
        what: &'static str,
        /// The decoder's complaint.
        reason: String,
    },
    /// A message arrived that is not valid at this point of the protocol.
    #[error("unexpected message: {0}")]
    Unexpected(String),
}

/// The daemon's report of a call it could not complete.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error, serde::Serialize, serde::Deserialize)]
#[non_exhaustive]
pub enum RemoteError {
    /// The method panicked; the daemon caught it and keeps serving.
    #[error("the method panicked: {message}")]
    Panic {
        /// The panic message.
        message: String,
    },
    /// The daemon could not decode the request.
    #[error("the daemon could not decode the request: {message}")]
    BadRequest {
        /// The decoder's complaint.
        message: String,
    },
    /// The daemon could not encode the method's return value.
    #[error("the daemon could not encode the reply: {message}")]
    BadReply {
        /// The encoder's complaint.
        message: String,
    },
    /// The client could not decode the daemon's reply.
    #[error("the reply could not be decoded: {message}")]
    Decode {
        /// The decoder's complaint.
        message: String,
    },
    /// The daemon is shutting down and takes no new calls.
    #[error("the daemon is shutting down")]
    ShuttingDown,
}
