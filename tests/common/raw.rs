//! A second, independent implementation of the client side of the wire protocol, for
//! tests that must misbehave on purpose (or check the daemon's proofs by hand). It
//! follows the protocol as documented in the runtime's `wire` module.

use std::io::{Read, Write};
use std::net::{Shutdown, TcpStream};
use std::path::Path;
use std::time::Duration;

use serde::{Deserialize, Serialize};

pub const MAGIC: [u8; 8] = *b"LBSNGLTN";
pub const VERSION: u16 = 4;

#[derive(Serialize, Deserialize)]
pub struct Hello {
    pub magic: [u8; 8],
    pub version: u16,
    pub nonce: [u8; 32],
}

#[derive(Serialize, Deserialize)]
pub struct Challenge {
    pub magic: [u8; 8],
    pub version: u16,
    pub nonce: [u8; 32],
    pub proof: [u8; 32],
}

#[derive(Serialize, Deserialize)]
pub struct Auth {
    pub proof: [u8; 32],
    /// `None`: an admin connection (ping and shutdown only).
    pub schema: Option<u64>,
    pub init: Option<u64>,
    pub starter: Option<[u8; 32]>,
    /// How the connection is to be served (must match the socket it came on).
    pub transport: loopback_singleton::Transport,
}

/// Only `Welcome` is decoded here; anything else fails the test that expects it.
#[derive(Debug, Serialize, Deserialize)]
pub enum Verdict {
    Welcome {
        pid: u32,
        instance: u64,
        max_frame: u32,
    },
}

pub fn proof(
    secret: &[u8; 32],
    daemon: bool,
    client_nonce: &[u8; 32],
    daemon_nonce: &[u8; 32],
) -> [u8; 32] {
    let label: &[u8] = if daemon {
        b"loopback-singleton v1 daemon proof"
    } else {
        b"loopback-singleton v1 client proof"
    };
    let mut hasher = blake3::Hasher::new_keyed(secret);
    hasher.update(label);
    hasher.update(client_nonce);
    hasher.update(daemon_nonce);
    *hasher.finalize().as_bytes()
}

pub fn frame(payload: &[u8]) -> Vec<u8> {
    let mut out = (payload.len() as u32).to_le_bytes().to_vec();
    out.extend_from_slice(payload);
    out
}

pub fn send<T: Serialize>(stream: &mut TcpStream, message: &T) -> std::io::Result<()> {
    stream.write_all(&frame(&postcard::to_stdvec(message).unwrap()))
}

/// Sends `payload` as one frame.
pub fn send_frame(stream: &mut TcpStream, payload: &[u8]) {
    stream.write_all(&frame(payload)).unwrap();
}

pub fn receive(stream: &mut TcpStream) -> std::io::Result<Vec<u8>> {
    let mut header = [0u8; 4];
    stream.read_exact(&mut header)?;
    let mut payload = vec![0u8; u32::from_le_bytes(header) as usize];
    stream.read_exact(&mut payload)?;
    Ok(payload)
}

/// Whether the peer closes the connection without sending anything more within `limit`.
pub fn closed_silently(stream: &mut TcpStream, limit: Duration) -> bool {
    stream.set_read_timeout(Some(limit)).unwrap();
    let mut buf = [0u8; 256];
    match stream.read(&mut buf) {
        Ok(0) => true,
        Err(error) => error.kind() == std::io::ErrorKind::ConnectionReset,
        Ok(_) => false,
    }
}

pub fn port_and_secret(dir: &Path) -> (u16, [u8; 32]) {
    let metadata = std::fs::read_to_string(dir.join("metadata.json")).unwrap();
    let port = super::json_field(&metadata, "port")
        .unwrap()
        .parse()
        .unwrap();
    let secret = std::fs::read(dir.join("secret"))
        .unwrap()
        .try_into()
        .unwrap();
    (port, secret)
}

pub fn connect(port: u16) -> TcpStream {
    let stream = TcpStream::connect(("127.0.0.1", port)).unwrap();
    stream
        .set_read_timeout(Some(Duration::from_secs(10)))
        .unwrap();
    stream
}

/// Sends a hello with `nonce` and returns the daemon's challenge.
pub fn hello(stream: &mut TcpStream, nonce: [u8; 32]) -> Challenge {
    send(
        stream,
        &Hello {
            magic: MAGIC,
            version: VERSION,
            nonce,
        },
    )
    .unwrap();
    postcard::from_bytes(&receive(stream).unwrap()).unwrap()
}

/// Answers a challenge with `proof` (and no init check); schema `None`: as an admin.
pub fn answer(stream: &mut TcpStream, proof: [u8; 32], schema: Option<u64>) {
    let auth = Auth {
        proof,
        schema,
        init: None,
        starter: None,
        transport: loopback_singleton::Transport::Tcp,
    };
    send(stream, &auth).unwrap();
}

/// Runs the whole handshake with `secret`; returns the authenticated stream.
pub fn authenticate(port: u16, secret: &[u8; 32], schema: u64) -> TcpStream {
    authenticate_as(port, secret, Some(schema))
}

/// [`authenticate`], as an admin (no schema) with `None`.
pub fn authenticate_as(port: u16, secret: &[u8; 32], schema: Option<u64>) -> TcpStream {
    let mut stream = connect(port);
    let nonce = [7u8; 32];
    let challenge = hello(&mut stream, nonce);
    assert_eq!(
        challenge.proof,
        proof(secret, true, &nonce, &challenge.nonce),
        "the daemon proves itself"
    );
    answer(
        &mut stream,
        proof(secret, false, &nonce, &challenge.nonce),
        schema,
    );
    let verdict: Verdict = postcard::from_bytes(&receive(&mut stream).unwrap()).unwrap();
    assert!(matches!(verdict, Verdict::Welcome { .. }), "{verdict:?}");
    stream
}

pub fn close(stream: TcpStream) {
    let _ = stream.shutdown(Shutdown::Both);
}

/// A small deterministic generator (xorshift64*) for reproducible garbage.
pub struct Rng(pub u64);

impl Rng {
    pub fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_F491_4F6C_DD1D)
    }

    pub fn below(&mut self, n: u64) -> u64 {
        self.next() % n
    }

    pub fn bytes(&mut self, len: usize) -> Vec<u8> {
        (0..len).map(|_| self.next() as u8).collect()
    }
}
