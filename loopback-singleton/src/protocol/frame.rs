//! Frames: a `u32` little-endian payload length, then the payload. Two verbs build
//! one in a buffer that may already hold others (a batch goes out in one write):
//! [`open_frame`] reserves the length, [`close_frame`] fills it in;
//! [`encode_frame`] does both around one message.

use std::io::{self, Read};

use serde::{Deserialize, Serialize};

use super::error::ProtocolError;

/// Appends the length prefix of a new frame to `buf` (which may hold earlier frames,
/// for a batch sent in one write); returns where the frame starts.
pub(crate) fn open_frame(buf: &mut Vec<u8>) -> usize {
    let start = buf.len();
    buf.extend_from_slice(&[0; 4]);
    start
}

/// Fills in the length prefix of the frame opened at `start` by [`open_frame`]: the
/// frame runs to the end of `buf`.
pub(crate) fn close_frame(buf: &mut [u8], start: usize) {
    let len = u32::try_from(buf.len() - start - 4).expect("frames are limited to u32 lengths");
    buf[start..start + 4].copy_from_slice(&len.to_le_bytes());
}

/// Whether `buffered` starts with a complete frame (so reading it needs no wait).
pub(crate) fn holds_frame(buffered: &[u8]) -> bool {
    buffered.len() >= 4
        && (buffered.len() - 4) as u64
            >= u64::from(u32::from_le_bytes(
                buffered[..4].try_into().expect("4 bytes"),
            ))
}

/// Encodes one message as the only frame in `buf`.
pub(crate) fn encode_frame<T: Serialize>(message: &T, buf: &mut Vec<u8>) {
    buf.clear();
    let start = open_frame(buf);
    postcard::to_io(message, &mut *buf).expect("encoding into a Vec cannot fail");
    close_frame(buf, start);
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
}
