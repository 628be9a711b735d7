//! Intruders and bad input: mutual authentication, frame limits, handshake deadlines,
//! the connection cap, a storm of garbage, and the runtime directory's permissions.
//! After each attack a normal client still gets exact answers.
//!
//! Unix only: the runtime directory's trust checks are tested through Unix modes and
//! owners (chmod, chown, symlinks).
#![cfg(unix)]

mod common;

use std::io::Write;
use std::os::unix::fs::PermissionsExt;
use std::time::{Duration, Instant};

use common::TestEnv;
use common::raw::{self, Rng};
use loopback_singleton::{Error, ProtocolError, Service};
use loopback_singleton_suite::{Counter, CounterClient};

fn daemon(env: &TestEnv) -> CounterClient {
    env.builder::<Counter>()
        .handshake_timeout(Duration::from_millis(400))
        .connect(0)
        .unwrap()
}

#[test]
fn a_peer_without_the_secret_gets_nothing_but_a_closed_connection() {
    let env = TestEnv::new("nosecret");
    let counter = daemon(&env);
    let (port, secret) = raw::port_and_secret(&env.dir());

    // Garbage instead of a hello.
    let mut stream = raw::connect(port);
    stream
        .write_all(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")
        .unwrap();
    assert!(raw::closed_silently(&mut stream, Duration::from_secs(5)));

    // A well-formed hello: the daemon proves itself with the real secret, and only it.
    let nonce = [1u8; 32];
    let challenge = raw::hello(&mut raw::connect(port), nonce);
    assert_eq!(
        challenge.proof,
        raw::proof(&secret, true, &nonce, &challenge.nonce)
    );
    assert_ne!(
        challenge.proof,
        raw::proof(&[0; 32], true, &nonce, &challenge.nonce)
    );

    // Answers without the secret get no verdict: a proof made with another secret, and
    // the daemon's own proof replayed as the client's (the role labels differ).
    let forged: [fn(&raw::Challenge) -> [u8; 32]; 2] = [
        |challenge| raw::proof(&[0; 32], false, &[1; 32], &challenge.nonce),
        |challenge| challenge.proof,
    ];
    for forge in forged {
        let mut stream = raw::connect(port);
        let challenge = raw::hello(&mut stream, nonce);
        raw::answer(&mut stream, forge(&challenge), Some(Counter::SCHEMA));
        assert!(
            raw::closed_silently(&mut stream, Duration::from_secs(5)),
            "no verdict without a valid proof"
        );
    }

    // The real secret is accepted; the daemon served everyone else meanwhile.
    raw::close(raw::authenticate(port, &secret, Counter::SCHEMA));
    assert_eq!(counter.inc().unwrap(), 1);
    counter.shutdown().unwrap();
}

#[test]
fn an_oversized_frame_closes_that_connection_only() {
    let env = TestEnv::new("oversized");
    let counter = env
        .builder::<Counter>()
        .max_frame_size(1 << 20)
        .connect(0)
        .unwrap();
    let (port, secret) = raw::port_and_secret(&env.dir());

    // During the handshake: a length prefix of 4 GiB.
    let mut stream = raw::connect(port);
    stream.write_all(&u32::MAX.to_le_bytes()).unwrap();
    assert!(raw::closed_silently(&mut stream, Duration::from_secs(5)));

    // After authenticating: just above the configured limit.
    let mut stream = raw::authenticate(port, &secret, Counter::SCHEMA);
    stream.write_all(&((1u32 << 20) + 1).to_le_bytes()).unwrap();
    assert!(raw::closed_silently(&mut stream, Duration::from_secs(5)));

    // A request above the limit is refused by the client before it is sent, and the
    // connection stays usable.
    match counter.echo(vec![0; 2 << 20]) {
        Err(Error::Protocol(ProtocolError::FrameTooLarge { limit, .. })) => {
            assert_eq!(limit, 1 << 20)
        }
        other => panic!("expected FrameTooLarge, got {other:?}"),
    }
    // A client whose own limit is larger learns the daemon's in the handshake.
    let roomy: CounterClient = env.builder::<Counter>().connect(0).unwrap();
    match roomy.echo(vec![0; 2 << 20]) {
        Err(Error::Protocol(ProtocolError::FrameTooLarge { limit, .. })) => {
            assert_eq!(limit, 1 << 20)
        }
        other => panic!("expected FrameTooLarge at the daemon's limit, got {other:?}"),
    }
    assert_eq!(roomy.echo(vec![1; 1000]).unwrap(), vec![1; 1000]);
    assert_eq!(counter.inc().unwrap(), 1, "the daemon serves on");
    assert_eq!(counter.echo(vec![9; 1000]).unwrap(), vec![9; 1000]);
    counter.shutdown().unwrap();
}

#[test]
fn silent_and_slow_handshakes_are_dropped_at_the_deadline() {
    let env = TestEnv::new("deadline");
    let counter = daemon(&env);
    let (port, _) = raw::port_and_secret(&env.dir());

    let mut silent = raw::connect(port);
    let slow = std::thread::spawn(move || {
        // One byte every 100 ms: a valid hello would take seconds.
        let mut stream = raw::connect(port);
        let hello = raw::frame(
            &postcard::to_stdvec(&raw::Hello {
                magic: raw::MAGIC,
                version: raw::VERSION,
                nonce: [3; 32],
            })
            .unwrap(),
        );
        let started = Instant::now();
        for byte in hello {
            if stream.write_all(&[byte]).is_err() {
                break;
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        started.elapsed()
    });
    // Meanwhile a well-behaved client is served.
    for expected in 1..=20 {
        assert_eq!(counter.inc().unwrap(), expected);
    }
    assert!(
        raw::closed_silently(&mut silent, Duration::from_secs(5)),
        "the silent peer was dropped"
    );
    let slow_for = slow.join().unwrap();
    assert!(
        slow_for < Duration::from_secs(4),
        "the slow peer was cut off at the deadline ({slow_for:?})"
    );
    counter.shutdown().unwrap();
}

#[test]
fn the_connection_cap_counts_authenticated_clients_only() {
    let env = TestEnv::new("cap");
    let builder = || {
        env.builder::<Counter>()
            .max_connections(2)
            .start_timeout(Duration::from_millis(800))
    };
    let first: CounterClient = builder().connect(0).unwrap();
    let second: CounterClient = builder().connect(0).unwrap();
    // Peers without the secret take no slot and do not count as clients...
    let (port, _) = raw::port_and_secret(&env.dir());
    let silent: Vec<_> = (0..5).map(|_| raw::connect(port)).collect();
    std::thread::sleep(Duration::from_millis(50));
    assert_eq!(first.ping().unwrap().clients, 2);
    // ...while a third authenticated client is over the cap: closed at accept.
    match builder().connect(0) {
        Err(Error::StartTimeout { .. } | Error::ConnectionLost { .. } | Error::Connect { .. }) => {}
        other => panic!("expected the third client to be refused, got {other:?}"),
    }
    assert_eq!(
        first.inc().unwrap(),
        1,
        "the clients inside are served meanwhile"
    );
    assert_eq!(second.inc().unwrap(), 2);
    // A slot freed is a slot taken.
    drop(second);
    let deadline = Instant::now() + Duration::from_secs(5);
    while first.ping().unwrap().clients != 1 {
        assert!(
            Instant::now() < deadline,
            "the closed client was not counted out"
        );
        std::thread::sleep(Duration::from_millis(10));
    }
    let third: CounterClient = builder().connect(0).unwrap();
    assert_eq!(third.inc().unwrap(), 3);
    drop(silent);
    first.shutdown().unwrap();
}

#[test]
fn a_storm_of_garbage_leaves_the_daemon_serving_exact_answers() {
    let env = TestEnv::new("storm");
    let counter = env
        .builder::<Counter>()
        .handshake_timeout(Duration::from_millis(300))
        .connect(0)
        .unwrap();
    let (port, secret) = raw::port_and_secret(&env.dir());
    let mut rng = Rng(0x9E37_79B9_7F4A_7C15);
    let hello = postcard::to_stdvec(&raw::Hello {
        magic: raw::MAGIC,
        version: raw::VERSION,
        nonce: [5; 32],
    })
    .unwrap();
    let started = Instant::now();
    let mut sent = 0;
    // Before authentication: random bytes, random and huge length prefixes, truncated
    // and bit-flipped hellos.
    for round in 0..1500 {
        let mut stream = raw::connect(port);
        let bytes = match round % 4 {
            0 => {
                let len = rng.below(64) as usize;
                rng.bytes(len)
            }
            1 => {
                let mut bytes = (rng.next() as u32).to_le_bytes().to_vec();
                let len = rng.below(32) as usize;
                bytes.extend(rng.bytes(len));
                bytes
            }
            2 => raw::frame(&hello)[..rng.below(hello.len() as u64 + 4) as usize].to_vec(),
            _ => {
                let mut bytes = raw::frame(&hello);
                let at = rng.below(bytes.len() as u64) as usize;
                bytes[at] ^= 1 << rng.below(8);
                bytes
            }
        };
        let _ = stream.write_all(&bytes);
        sent += 1;
        raw::close(stream);
    }
    // After authentication: random request frames (unknown kinds, undecodable bodies).
    for _ in 0..50 {
        let mut stream = raw::authenticate(port, &secret, Counter::SCHEMA);
        for _ in 0..40 {
            let len = rng.below(48) as usize;
            let _ = stream.write_all(&raw::frame(&rng.bytes(len)));
            sent += 1;
        }
        raw::close(stream);
    }
    assert!(started.elapsed() < Duration::from_secs(60));
    assert!(sent >= 3500);
    // Exact answers afterwards, from this client and a fresh one.
    for expected in 1..=100 {
        assert_eq!(counter.inc().unwrap(), expected);
    }
    let fresh: CounterClient = env.builder::<Counter>().connect(0).unwrap();
    assert_eq!(fresh.get().unwrap(), 100);
    assert!(counter.ping().unwrap().calls_served >= 101);
    counter.shutdown().unwrap();
}

#[test]
fn with_every_handshake_slot_taken_a_newcomer_waits_instead_of_being_closed() {
    let env = TestEnv::new("slots");
    let counter = daemon(&env);
    let (port, secret) = raw::port_and_secret(&env.dir());
    // 128 silent peers fill every handshake slot until their 400 ms deadline.
    let silent: Vec<_> = (0..128).map(|_| raw::connect(port)).collect();
    std::thread::sleep(Duration::from_millis(100));
    // The newcomer is served once the deadline frees the slots, not turned away.
    let stream = raw::authenticate(port, &secret, Counter::SCHEMA);
    raw::close(stream);
    drop(silent);
    assert_eq!(counter.inc().unwrap(), 1);
    counter.shutdown().unwrap();
}

#[test]
fn a_daemon_reply_to_an_undecodable_request_is_a_typed_error() {
    let env = TestEnv::new("badrequest");
    let counter = daemon(&env);
    let (port, secret) = raw::port_and_secret(&env.dir());
    let mut stream = raw::authenticate(port, &secret, Counter::SCHEMA);
    // id 9, kind 0 (call), method 200: no such variant.
    raw::send(&mut stream, &(9u64, 0u8, 200u32)).unwrap();
    let reply = raw::receive(&mut stream).unwrap();
    let ((id, status), body) = postcard::take_from_bytes::<(u64, u8)>(&reply).unwrap();
    assert_eq!((id, status), (9, 1), "an error reply to call 9");
    let error: loopback_singleton::RemoteError = postcard::from_bytes(body).unwrap();
    assert!(
        matches!(error, loopback_singleton::RemoteError::BadRequest { .. }),
        "{error:?}"
    );
    // The same connection keeps working.
    raw::send(&mut stream, &(10u64, 0u8, 0u32)).unwrap(); // method 0: inc()
    let reply = raw::receive(&mut stream).unwrap();
    assert_eq!(
        postcard::from_bytes::<(u64, u8, u64)>(&reply).unwrap(),
        (10, 0, 1)
    );
    raw::close(stream);
    counter.shutdown().unwrap();
}

#[test]
fn runtime_files_are_private_from_creation() {
    let env = TestEnv::new("private");
    let counter = daemon(&env);
    let mode = |name: &str| {
        std::fs::metadata(env.dir().join(name))
            .unwrap()
            .permissions()
            .mode()
            & 0o777
    };
    assert_eq!(mode(""), 0o700);
    for file in ["metadata.json", "secret", "lock", "daemon.log"] {
        assert_eq!(mode(file), 0o600, "{file}");
    }
    counter.shutdown().unwrap();
}

#[test]
fn an_untrustworthy_runtime_dir_is_refused_with_a_fix() {
    let env = TestEnv::new("untrusted");
    std::fs::create_dir_all(env.dir()).unwrap();

    std::fs::set_permissions(env.dir(), std::fs::Permissions::from_mode(0o755)).unwrap();
    let error = env.builder::<Counter>().connect(0).unwrap_err();
    assert!(matches!(&error, Error::RuntimeDir { .. }), "{error:?}");
    assert!(error.to_string().contains("chmod 700"), "{error}");

    std::fs::set_permissions(env.dir(), std::fs::Permissions::from_mode(0o700)).unwrap();
    // SAFETY: chown on a path we own, to another uid (the tests run as root here, or fail).
    let path = std::ffi::CString::new(env.dir().to_str().unwrap()).unwrap();
    if unsafe { libc::chown(path.as_ptr(), 4242, 4242) } == 0 {
        let error = env.builder::<Counter>().connect(0).unwrap_err().to_string();
        assert!(error.contains("owned by uid 4242"), "{error}");
    }
    std::fs::remove_dir_all(env.dir()).unwrap();

    let elsewhere = env.base.join("elsewhere");
    std::fs::create_dir_all(&elsewhere).unwrap();
    std::os::unix::fs::symlink(&elsewhere, env.dir()).unwrap();
    let error = env.builder::<Counter>().connect(0).unwrap_err().to_string();
    assert!(error.contains("symbolic link"), "{error}");
    assert!(
        !env.metadata_path().exists(),
        "no daemon started in an untrusted place"
    );
}

#[test]
fn byte_buffers_travel_in_the_plain_postcard_format() {
    // The generated code moves `&[u8]` and `Vec<u8>` as serde byte strings for speed;
    // postcard writes those exactly like a sequence of `u8`, which this checks against a
    // peer that knows nothing of byte strings.
    let env = TestEnv::new("bytes");
    let counter = daemon(&env);
    let (port, secret) = raw::port_and_secret(&env.dir());
    let mut stream = raw::authenticate(port, &secret, Counter::SCHEMA);
    let payload: Vec<u8> = (0..=255).collect();
    const ECHO: u32 = 6; // the seventh exposed method of Counter
    raw::send(&mut stream, &(1u64, 0u8, ECHO, &payload)).unwrap();
    let reply = raw::receive(&mut stream).unwrap();
    assert_eq!(
        postcard::from_bytes::<(u64, u8, Vec<u8>)>(&reply).unwrap(),
        (1, 0, payload.clone())
    );
    raw::close(stream);
    // And through the generated client, both directions and the slice argument.
    assert_eq!(counter.echo(payload.clone()).unwrap(), payload);
    assert_eq!(counter.byte_sum(&payload).unwrap(), 255 * 256 / 2);
    counter.shutdown().unwrap();
}

#[test]
fn an_admin_connection_may_ping_and_not_call() {
    let env = TestEnv::new("admin");
    let counter = daemon(&env);
    let (port, secret) = raw::port_and_secret(&env.dir());
    // No schema: what the `loopback-singleton` CLI sends. Admitted all the same.
    let mut stream = raw::authenticate_as(port, &secret, None);

    // A call (id 1, kind 0, method 1): refused with an error reply, not run.
    raw::send_frame(&mut stream, &[1, 0, 1]);
    let reply = raw::receive(&mut stream).unwrap();
    assert_eq!(&reply[..2], &[1, 1], "id 1, status Err: {reply:?}");
    let error: loopback_singleton::RemoteError = postcard::from_bytes(&reply[2..]).unwrap();
    assert!(
        matches!(error, loopback_singleton::RemoteError::BadRequest { .. }),
        "{error:?}"
    );

    // A ping (id 2, kind 1) is answered.
    raw::send_frame(&mut stream, &[2, 1]);
    let reply = raw::receive(&mut stream).unwrap();
    assert_eq!(&reply[..2], &[2, 0], "id 2, status Ok: {reply:?}");
    let info: loopback_singleton::DaemonInfo = postcard::from_bytes(&reply[2..]).unwrap();
    assert_eq!(info.calls_served, 0, "the refused call did not run");
    raw::close(stream);

    assert_eq!(counter.inc().unwrap(), 1, "the instance was not touched");
    counter.shutdown().unwrap();
}
