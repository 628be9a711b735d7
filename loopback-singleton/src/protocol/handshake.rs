//! The mutual handshake's messages and proofs.
//!
//! Proofs are BLAKE3 keyed hashes, under the per-daemon secret, of a role label and both
//! nonces: the daemon proves itself first, so a client never hands a proof to a program
//! that merely took over a recycled port, and the secret never crosses the wire. A peer
//! that fails to prove itself gets nothing but a closed connection.

use serde::{Deserialize, Serialize};

use super::{Fingerprint, Nonce, Proof, Secret};

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

#[cfg(test)]
mod tests {
    use super::*;

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
}
