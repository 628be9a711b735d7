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
    /// The client's service fingerprint; `None` for an admin connection (the
    /// `loopback-singleton` CLI), which knows no service: the daemon admits it for
    /// ping, stats and shutdown and refuses its calls.
    pub schema: Option<Fingerprint>,
    /// `None` attaches to whatever instance runs, whatever its init arguments.
    pub init: Option<Fingerprint>,
    /// The token of the client that started the daemon (from its launch description,
    /// which only that client and the daemon know): its arrival ends the daemon's grace
    /// before its first idle retirement.
    pub starter: Option<Nonce>,
    /// How the client wants this connection served once it is authenticated: over the
    /// socket it came on (TCP or Unix, which must match that socket), or through
    /// shared memory set up over it.
    pub transport: super::Transport,
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
    /// `wire`: the daemon's description of what crosses the wire, so that the client
    /// can say what differs; `None` if it would not fit in a handshake frame.
    Schema {
        daemon: Fingerprint,
        wire: Option<Vec<super::schema::WireItem>>,
    },
    Init {
        running: String,
    },
    ShuttingDown,
    /// The daemon cannot serve the transport the client asked for, and says why.
    Transport {
        reason: String,
    },
}

/// Which side a proof speaks for: the labels keep a daemon's proof from being replayed
/// as a client's.
#[derive(Clone, Copy)]
enum Role {
    Daemon,
    Client,
}

/// The keyed hash proving knowledge of `secret` for this pair of nonces.
fn proof(secret: &Secret, role: Role, client: &Nonce, daemon: &Nonce) -> blake3::Hash {
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
fn verify(secret: &Secret, role: Role, client: &Nonce, daemon: &Nonce, got: &Proof) -> bool {
    proof(secret, role, client, daemon) == blake3::Hash::from_bytes(*got)
}

/// The client's half, one step per message: [`ClientHalf::hello`], then
/// [`ClientHalf::answer`] to the challenge; the verdict is read by the caller.
pub(crate) struct ClientHalf {
    nonce: Nonce,
}

/// What a challenge says about the peer that sent it.
#[derive(Debug)]
pub(crate) enum Peer {
    /// Not a loopback-singleton endpoint at all.
    Foreign,
    /// It claims another protocol version; it cannot prove anything in ours, so the
    /// claim counts only if a trusted source (the daemon's own metadata) agrees.
    OtherVersion(u16),
    /// It does not know the secret.
    Unproven,
    /// The daemon: here is what to send it.
    Proven(Auth),
}

impl ClientHalf {
    /// The first message, with a fresh nonce.
    pub(crate) fn hello() -> (Self, Hello) {
        let nonce = super::random_bytes();
        let hello = Hello {
            magic: super::MAGIC,
            version: super::PROTOCOL_VERSION,
            nonce,
        };
        (ClientHalf { nonce }, hello)
    }

    /// Checks the daemon's proof in `challenge` and, if it holds, makes our own.
    pub(crate) fn answer(
        &self,
        secret: &Secret,
        challenge: &Challenge,
        schema: Option<Fingerprint>,
        init: Option<Fingerprint>,
        starter: Option<Nonce>,
        transport: super::Transport,
    ) -> Peer {
        if challenge.magic != super::MAGIC {
            return Peer::Foreign;
        }
        if challenge.version != super::PROTOCOL_VERSION {
            return Peer::OtherVersion(challenge.version);
        }
        if !verify(
            secret,
            Role::Daemon,
            &self.nonce,
            &challenge.nonce,
            &challenge.proof,
        ) {
            return Peer::Unproven;
        }
        Peer::Proven(Auth {
            proof: *proof(secret, Role::Client, &self.nonce, &challenge.nonce).as_bytes(),
            schema,
            init,
            starter,
            transport,
        })
    }
}

/// The daemon's half: [`DaemonHalf::challenge`] answers a hello, then
/// [`DaemonHalf::admits`] checks the client's proof; the verdict is the host's to give.
pub(crate) struct DaemonHalf {
    client_nonce: Nonce,
    nonce: Nonce,
}

impl DaemonHalf {
    /// The challenge to send in answer to `hello`, proving our knowledge of `secret`;
    /// `None` for a peer that is not a loopback-singleton client. The second value is
    /// whether the client speaks our version: if not, the challenge still goes out (it
    /// tells the client our version) and the connection closes after it.
    pub(crate) fn challenge(secret: &Secret, hello: &Hello) -> Option<(Self, Challenge, bool)> {
        if hello.magic != super::MAGIC {
            return None;
        }
        let nonce = super::random_bytes();
        let challenge = Challenge {
            magic: super::MAGIC,
            version: super::PROTOCOL_VERSION,
            nonce,
            proof: *proof(secret, Role::Daemon, &hello.nonce, &nonce).as_bytes(),
        };
        let half = DaemonHalf {
            client_nonce: hello.nonce,
            nonce,
        };
        Some((half, challenge, hello.version == super::PROTOCOL_VERSION))
    }

    /// Whether `auth` proves the client knows `secret`.
    pub(crate) fn admits(&self, secret: &Secret, auth: &Auth) -> bool {
        verify(
            secret,
            Role::Client,
            &self.client_nonce,
            &self.nonce,
            &auth.proof,
        )
    }
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

    #[test]
    fn the_two_halves_agree_and_refuse_a_wrong_secret() {
        let secret = [4u8; 32];
        let (client, hello) = ClientHalf::hello();
        let (daemon, challenge, same_version) = DaemonHalf::challenge(&secret, &hello).unwrap();
        assert!(same_version);
        let Peer::Proven(auth) = client.answer(
            &secret,
            &challenge,
            Some(1),
            Some(2),
            None,
            Default::default(),
        ) else {
            panic!("the daemon proved itself");
        };
        assert!(daemon.admits(&secret, &auth));
        assert!(!daemon.admits(&[5u8; 32], &auth));
        assert!(matches!(
            client.answer(
                &[5u8; 32],
                &challenge,
                Some(1),
                None,
                None,
                Default::default()
            ),
            Peer::Unproven
        ));
        let other = Challenge {
            version: 99,
            ..challenge
        };
        assert!(matches!(
            client.answer(&secret, &other, None, None, None, Default::default()),
            Peer::OtherVersion(99)
        ));
    }
}
