//! Entry points for the fuzz targets in `fuzz/` (feature `fuzzing`, off by default; not
//! part of the public API). Thin wrappers over the crate's own decoders and the daemon's
//! connection handling, each asserting what must hold whatever the input: a failed
//! assertion is a finding.

use serde::Serialize;
use serde::de::DeserializeOwned;

use crate::host;
use crate::protocol::{self, DaemonInfo, FrameError, RemoteError};
use crate::runtime_dir::Metadata;
use crate::service::Service;
use crate::spawn::Launch;
use crate::spawn::{self, Readiness};

/// Reads `data` as a stream of frames under `limit`, with the blocking reader (client)
/// and the async one (daemon): both must agree, a frame must be read exactly when
/// `holds_frame` says it is complete, and nothing may be read past a refused frame.
/// Returns the number of frames read.
pub fn frames(data: &[u8], limit: u32) -> usize {
    let mut blocking = data;
    let mut nonblocking = data;
    let (mut buf, mut async_buf) = (Vec::new(), Vec::new());
    let mut count = 0;
    loop {
        let complete = protocol::holds_frame(blocking);
        let announced = (blocking.len() >= 4)
            .then(|| u32::from_le_bytes(blocking[..4].try_into().expect("4 bytes")));
        let read = protocol::read_frame(&mut blocking, &mut buf, limit);
        let read_async = block_on(protocol::read_frame_async(
            &mut nonblocking,
            &mut async_buf,
            limit,
        ));
        match (read, read_async) {
            (Ok(()), Ok(())) => {
                assert!(complete, "read a frame that holds_frame called incomplete");
                assert_eq!(buf, async_buf);
                assert_eq!(Some(buf.len() as u32), announced);
                assert_eq!(blocking.len(), nonblocking.len());
                let _ = protocol::split_request(&buf);
                let _ = protocol::split_reply(&buf);
                count += 1;
            }
            (Err(FrameError::Protocol(_)), Err(FrameError::Protocol(_))) => {
                assert!(announced.is_some_and(|len| len > limit));
                return count;
            }
            (Err(FrameError::Io(_)), Err(FrameError::Io(_))) => {
                assert!(
                    !complete || announced.is_some_and(|len| len > limit),
                    "holds_frame called a frame complete that could not be read"
                );
                return count;
            }
            (blocking, nonblocking) => {
                panic!("the readers disagree: {blocking:?} vs {nonblocking:?}")
            }
        }
    }
}

/// Decodes `data` as every message of the handshake (both directions), as a readiness
/// report (with and without its frame), as the launch description a daemon reads from
/// the nameless file it inherits, and as runtime metadata. Whatever decodes must re-encode and
/// decode to the same value.
pub fn handshake_messages(data: &[u8]) {
    round_trip::<protocol::handshake::Hello>(data);
    round_trip::<protocol::handshake::Challenge>(data);
    round_trip::<protocol::handshake::Auth>(data);
    round_trip::<protocol::handshake::Verdict>(data);
    round_trip::<DaemonInfo>(data);
    round_trip::<RemoteError>(data);
    round_trip::<Readiness>(data);
    round_trip::<Launch>(data);
    let _ = spawn::parse_readiness(data);
    if let Ok(metadata) = serde_json::from_slice::<Metadata>(data) {
        let json = serde_json::to_vec(&metadata).expect("metadata encodes");
        assert_eq!(
            serde_json::from_slice::<Metadata>(&json).ok(),
            Some(metadata)
        );
    }
}

fn round_trip<T: Serialize + DeserializeOwned + std::fmt::Debug>(data: &[u8]) {
    if let Ok(value) = protocol::decode::<T>("fuzz", data) {
        let encoded = postcard::to_stdvec(&value).expect("a decoded value encodes");
        let again: T = protocol::decode("fuzz", &encoded).expect("a re-encoded value decodes");
        assert_eq!(format!("{value:?}"), format!("{again:?}"));
    }
}

/// Decodes `data` as a reply frame's payload the way the client does: header, status,
/// then the value (`R`) or the daemon's error.
pub fn reply<R: DeserializeOwned>(data: &[u8]) -> Option<Result<R, RemoteError>> {
    let (_id, status, body) = protocol::split_reply(data).ok()?;
    match status {
        protocol::Status::Ok => postcard::from_bytes(body).ok().map(Ok),
        protocol::Status::Err => protocol::decode("remote error", body).ok().map(Err),
    }
}

/// Feeds `data` to the daemon's side of the handshake (as the bytes a peer sends).
/// Without the secret nobody is admitted, and the daemon says nothing but its challenge.
pub fn daemon_handshake<S: Service>(data: &[u8]) -> Vec<u8> {
    let (output, admitted) = host::fuzz::handshake::<S>(data);
    assert!(!admitted, "a peer without the secret was admitted");
    if !output.is_empty() {
        let mut reader = &output[..];
        let mut payload = Vec::new();
        protocol::read_frame(&mut reader, &mut payload, protocol::MAX_HANDSHAKE_FRAME)
            .expect("the challenge is one whole frame");
        assert!(reader.is_empty(), "nothing follows the challenge");
        let challenge: protocol::handshake::Challenge =
            protocol::decode("challenge", &payload).expect("a challenge");
        assert_eq!(challenge.magic, protocol::MAGIC);
        assert_eq!(challenge.version, protocol::PROTOCOL_VERSION);
    }
    output
}

/// Feeds `data` (the frames that follow a handshake) to the daemon's request loop on
/// `instance`, then checks what it wrote: one well-formed reply per request, in order,
/// up to the end of the input or the first frame that breaks the protocol (after which
/// the daemon closes the connection). Returns the daemon's output.
pub fn daemon_requests<S: Service>(instance: S, data: &[u8], max_frame: u32) -> Vec<u8> {
    // What the daemon must answer: the requests up to the first violation.
    let mut expected = Vec::new();
    let mut violation = false;
    let mut input = data;
    let mut payload = Vec::new();
    loop {
        match protocol::read_frame(&mut input, &mut payload, max_frame) {
            Ok(()) => match protocol::split_request(&payload) {
                Ok((id, kind, _)) => expected.push((id, kind)),
                _ => {
                    violation = true;
                    break;
                }
            },
            Err(FrameError::Protocol(_)) => {
                violation = true;
                break;
            }
            Err(FrameError::Io(_)) => break,
        }
    }

    let (output, clean) = host::fuzz::requests(instance, data, max_frame);
    assert_eq!(
        clean, !violation,
        "closed on a violation exactly when there is one"
    );
    let mut replies = &output[..];
    for &(id, kind) in &expected {
        protocol::read_frame(&mut replies, &mut payload, u32::MAX)
            .unwrap_or_else(|error| panic!("no reply to request {id} (kind {kind:?}): {error:?}"));
        let (reply_id, status, body) = protocol::split_reply(&payload).expect("a reply header");
        assert_eq!(reply_id, id, "replies come in request order");
        match (kind, status) {
            (protocol::Kind::Ping, protocol::Status::Ok) => {
                let _: DaemonInfo = protocol::decode("ping reply", body).expect("a ping reply");
            }
            (protocol::Kind::Stats, protocol::Status::Ok) => {
                let stats: protocol::Stats = protocol::decode("stats reply", body).expect("stats");
                for method in &stats.methods {
                    for latency in [&method.handler, &method.queue] {
                        assert!(latency.p50 <= latency.p90 && latency.p90 <= latency.p99);
                        assert!(latency.p99 <= latency.max);
                    }
                }
            }
            (protocol::Kind::Shutdown, protocol::Status::Ok) => assert!(body.is_empty()),
            (protocol::Kind::Call, protocol::Status::Ok) => {}
            (protocol::Kind::Call, protocol::Status::Err) => {
                let error: RemoteError = protocol::decode("remote error", body).expect("an error");
                let (_, rest) = postcard::take_from_bytes::<RemoteError>(body).expect("an error");
                assert!(rest.is_empty(), "trailing bytes after {error:?}");
            }
            (kind, status) => panic!("reply status {status:?} to a request of kind {kind:?}"),
        }
    }
    assert!(replies.is_empty(), "replies nobody asked for");
    output
}

/// Builds the bytes a peer sends from fuzz input, so that most inputs are well framed:
/// a control byte `c` below 0x80 frames the next `c` bytes (length prefix added), one
/// from 0x80 passes the next `c - 0x80` bytes through raw (bad or oversized prefixes).
pub fn framed(mut data: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(data.len() * 2);
    while let Some((&control, rest)) = data.split_first() {
        let len = usize::from(control & 0x7f).min(rest.len());
        let (chunk, rest) = rest.split_at(len);
        if control & 0x80 == 0 {
            out.extend_from_slice(&(len as u32).to_le_bytes());
        }
        out.extend_from_slice(chunk);
        data = rest;
    }
    out
}

/// Polls a future that cannot wait (it reads from a byte slice) to completion.
fn block_on<F: std::future::Future>(future: F) -> F::Output {
    let mut future = std::pin::pin!(future);
    let mut context = std::task::Context::from_waker(std::task::Waker::noop());
    match future.as_mut().poll(&mut context) {
        std::task::Poll::Ready(output) => output,
        std::task::Poll::Pending => panic!("reading from a slice never waits"),
    }
}

/// The fuzz targets' checks in the unit tests: the inputs the fuzzers found, and a
/// bounded, seeded random run (mutations of valid messages and plain noise), so that
/// CI, which does not run the fuzzers, still runs every check.
#[cfg(test)]
mod tests {
    use super::*;
    use crate::protocol::Fingerprint;
    use crate::service::Dispatch;

    /// A service with a few argument shapes, implemented by hand (the macro's paths
    /// name this crate from outside).
    #[derive(Default)]
    struct Echo {
        value: u64,
    }

    #[derive(serde::Deserialize)]
    enum Call {
        Inc,
        Add(u64, u32),
        Put(String, Vec<u8>),
        Describe(Option<char>, (bool, i16), Vec<(i32, i32)>),
        Later(u8),
    }

    impl Service for Echo {
        type Request = Call;
        type Init = ();
        type Client = crate::Client<Echo>;
        type AsyncClient = crate::AsyncClient<Echo>;
        const NAME: &'static str = "echo";
        const SERVICE_ID: &'static str = "fuzzing::tests::Echo";
        const SCHEMA: Fingerprint = 0xec40;

        fn construct((): ()) -> Result<Self, String> {
            Ok(Echo::default())
        }

        fn serve((): (), options: crate::ServeOptions) -> Result<(), crate::Error> {
            crate::host::serve::<Self>((), options)
        }

        fn dispatch<'a>(&'a mut self, request: Call, out: &'a mut Vec<u8>) -> Dispatch<'a> {
            match request {
                Call::Inc => {
                    self.value += 1;
                    Dispatch::ready(&self.value, out)
                }
                Call::Add(n, m) => {
                    self.value = self.value.wrapping_add(n).wrapping_add(u64::from(m));
                    Dispatch::ready(&self.value, out)
                }
                Call::Put(key, value) => Dispatch::ready(&(key.len() + value.len()), out),
                Call::Describe(tag, flags, points) => {
                    Dispatch::ready(&format!("{tag:?} {flags:?} {points:?}"), out)
                }
                Call::Later(n) => Dispatch::pending(async move { encode_reply_u8(n, out) }),
            }
        }
    }

    fn encode_reply_u8(n: u8, out: &mut Vec<u8>) -> Result<(), postcard::Error> {
        crate::service::encode_reply(&n, out)
    }

    fn request(id: u64, kind: protocol::Kind, body: &[u8]) -> Vec<u8> {
        let mut frame = Vec::new();
        let tag = protocol::append_header(&mut frame, id, kind);
        assert_eq!(frame[tag], kind as u8);
        frame.extend_from_slice(body);
        protocol::close_frame(&mut frame, 0);
        frame
    }

    #[test]
    fn replies_before_a_violation_are_sent() {
        // Found by the daemon_requests fuzzer: a call pipelined ahead of an empty frame
        // ran, but its reply was dropped with the connection.
        let mut input = request(1, protocol::Kind::Call, &[0]);
        input.extend_from_slice(&request(2, protocol::Kind::Ping, &[]));
        input.extend_from_slice(&[0, 0, 0, 0]);
        let output = daemon_requests(Echo::default(), &input, protocol::DEFAULT_MAX_FRAME);
        let mut replies = &output[..];
        let mut payload = Vec::new();
        protocol::read_frame(&mut replies, &mut payload, u32::MAX).unwrap();
        assert_eq!(reply::<u64>(&payload), Some(Ok(1)));
        // The fuzzer's own input, through the fuzz crate's builder.
        daemon_requests(Echo::default(), &framed(&[2, 0, 0, 0, 10]), 64 << 20);
    }

    /// xorshift64*: reproducible noise.
    struct Rng(u64);

    impl Rng {
        fn next(&mut self) -> u64 {
            self.0 ^= self.0 >> 12;
            self.0 ^= self.0 << 25;
            self.0 ^= self.0 >> 27;
            self.0.wrapping_mul(0x2545_f491_4f6c_dd1d)
        }

        fn below(&mut self, n: usize) -> usize {
            (self.next() % n as u64) as usize
        }

        fn byte(&mut self) -> u8 {
            const INTERESTING: [u8; 8] = [0, 1, 2, 4, 0x7f, 0x80, 0xfe, 0xff];
            if self.below(2) == 0 {
                INTERESTING[self.below(INTERESTING.len())]
            } else {
                self.next() as u8
            }
        }

        /// A seed with a few bytes flipped, inserted or removed, or plain noise.
        fn input(&mut self, seeds: &[Vec<u8>]) -> Vec<u8> {
            if self.below(4) == 0 {
                return (0..self.below(96)).map(|_| self.byte()).collect();
            }
            let mut data = seeds[self.below(seeds.len())].clone();
            for _ in 0..=self.below(4) {
                let at = self.below(data.len() + 1);
                match self.below(3) {
                    0 if at < data.len() => data[at] = self.byte(),
                    1 => data.insert(at, self.byte()),
                    _ if at < data.len() => {
                        data.remove(at);
                    }
                    _ => {}
                }
            }
            data
        }
    }

    fn seeds() -> Vec<Vec<u8>> {
        let mut hello = Vec::new();
        protocol::encode_frame(
            &protocol::handshake::Hello {
                magic: protocol::MAGIC,
                version: protocol::PROTOCOL_VERSION,
                nonce: [3; 32],
            },
            &mut hello,
        );
        let mut auth = hello.clone();
        let mut frame = Vec::new();
        protocol::encode_frame(
            &protocol::handshake::Auth {
                proof: [9; 32],
                schema: Some(Echo::SCHEMA),
                init: Some(1),
                starter: None,
                transport: protocol::Transport::Tcp,
            },
            &mut frame,
        );
        auth.extend_from_slice(&frame);
        let call = |id: u64, body: &[u8]| request(id, protocol::Kind::Call, body);
        let mut pipelined = call(1, &[0]);
        pipelined.extend(call(2, &[1, 0x80, 1, 7]));
        pipelined.extend(call(3, &[2, 2, b'k', b'v', 1, 9]));
        pipelined.extend(call(4, &[3, 1, b'x', 1, 0xfe, 0xff, 1, 1, 2]));
        pipelined.extend(call(5, &[4, 200]));
        pipelined.extend(request(6, protocol::Kind::Ping, &[]));
        pipelined.extend(request(7, protocol::Kind::Shutdown, &[]));
        vec![hello, auth, pipelined, Vec::new()]
    }

    #[test]
    fn bounded_random_inputs_pass_every_check() {
        let seeds = seeds();
        let mut rng = Rng(0x5eed_1e55_c0ff_ee00);
        for _ in 0..3000 {
            let data = rng.input(&seeds);
            // Limits stay small: a length prefix makes the readers allocate up to the
            // limit, which only slows an unoptimized build down.
            let limit = [0, 1, 8, 64, 1024, 64 << 10][rng.below(6)];
            frames(&data, limit);
            handshake_messages(&data);
            // Frame payloads as the client and the daemon decode them.
            let payload = data.get(4..).unwrap_or_default();
            let _ = reply::<u64>(payload);
            let _ = reply::<Result<i64, String>>(payload);
            handshake_messages(payload);
            daemon_handshake::<Echo>(&data);
            daemon_requests(Echo::default(), &data, limit.max(64));
            daemon_requests(Echo::default(), &framed(&data), 64 << 10);
        }
    }
}
