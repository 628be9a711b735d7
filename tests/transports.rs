//! Transports: which one a client uses (builder, `LOOPBACK_SINGLETON_TRANSPORT`), one
//! daemon serving clients of every transport at once, the Unix socket's guards (peer
//! credentials, stale and hostile files, long paths), and the core suites rerun on
//! every transport. Real daemons in real processes; each test has its own runtime
//! directory and name and stops what it starts.
//!
//! Unix only: Windows has no Unix-socket or shared-memory transport (TCP, its one
//! transport, is what the portable suites use).
#![cfg(unix)]

mod common;

use std::io::{Read, Write};
use std::os::unix::fs::{FileTypeExt, PermissionsExt};
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::time::{Duration, Instant};

use common::{
    OTHER_UID, TestEnv, chmod, field, is_root, kill, output_within, raw, this_test_as_other_user,
    wait_gone, word,
};
use loopback_singleton::{Error, Transport};
use loopback_singleton_suite::{Counter, CounterClient, Fragile, FragileClient};

/// The transports every platform of these tests (Unix) has, and what the daemon says
/// each connection uses.
const SOCKET_TRANSPORTS: [Transport; 2] = [Transport::Tcp, Transport::Unix];

#[test]
fn the_builder_chooses_the_transport_and_the_daemon_serves_it() {
    let env = TestEnv::new("tr-builder");
    for transport in SOCKET_TRANSPORTS {
        let counter: CounterClient = env
            .builder::<Counter>()
            .transport(transport)
            .connect(0)
            .unwrap();
        assert_eq!(counter.client().transport(), transport);
        assert_eq!(
            counter.ping().unwrap().transport,
            transport,
            "the daemon saw the connection arrive over {transport}"
        );
    }
    let default: CounterClient = env.builder::<Counter>().connect(0).unwrap();
    if std::env::var_os("LOOPBACK_SINGLETON_TRANSPORT").is_none() {
        assert_eq!(default.ping().unwrap().transport, Transport::Tcp);
    }
    default.client().shutdown().unwrap();
}

#[test]
fn the_environment_chooses_the_transport_and_the_builder_wins() {
    let env = TestEnv::new("tr-env");
    for transport in SOCKET_TRANSPORTS {
        let mut client = env.client(&["inc", "0", "1"]);
        client.env("LOOPBACK_SINGLETON_TRANSPORT", transport.name());
        let output = output_within(client, Duration::from_secs(60));
        assert_eq!(word(&output, "transport"), transport.name());
        assert_eq!(word(&output, "served-over"), transport.name());
    }
    // The code's choice beats the environment's.
    let mut client = env.client(&["inc", "0", "1"]);
    client
        .env("LOOPBACK_SINGLETON_TRANSPORT", "tcp")
        .env("SUITE_TRANSPORT", "unix");
    let output = output_within(client, Duration::from_secs(60));
    assert_eq!(word(&output, "served-over"), "unix");
    assert_eq!(
        field(&output, "last"),
        3,
        "all three processes shared one count"
    );
}

#[test]
fn an_invalid_transport_in_the_environment_is_a_typed_error() {
    let env = TestEnv::new("tr-badenv");
    let mut client = env.client(&["inc", "0", "1"]);
    client.env("LOOPBACK_SINGLETON_TRANSPORT", "carrier-pigeon");
    let output = output_within(client, Duration::from_secs(60));
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert_eq!(output.status.code(), Some(1), "{stderr}");
    assert!(
        stderr.contains("debug: Environment {")
            && stderr.contains("LOOPBACK_SINGLETON_TRANSPORT")
            && stderr.contains("carrier-pigeon")
            && stderr.contains("tcp, unix or shm"),
        "{stderr}"
    );
    assert!(
        env.recorded_pid().is_none(),
        "nothing was started for a client that could not say how to connect"
    );
}

#[test]
fn shared_memory_is_chosen_by_the_builder() {
    let env = TestEnv::new("tr-shm");
    let counter: CounterClient = env
        .builder::<Counter>()
        .transport(Transport::SharedMemory)
        .connect(0)
        .unwrap();
    assert_eq!(counter.client().transport(), Transport::SharedMemory);
    assert_eq!(counter.ping().unwrap().transport, Transport::SharedMemory);
    assert_eq!(counter.inc().unwrap(), 1);
}

#[test]
fn tcp_and_unix_clients_share_one_daemon_and_one_exact_count() {
    const PER_CLIENT: u64 = 300;
    let env = TestEnv::new("tr-shared");
    let clients: Vec<_> = SOCKET_TRANSPORTS
        .iter()
        .flat_map(|transport| [transport, transport])
        .map(|transport| {
            let mut client = env.client(&["inc", "0", &PER_CLIENT.to_string()]);
            client.env("SUITE_TRANSPORT", transport.name());
            client
        })
        .collect();
    let handles: Vec<_> = clients
        .into_iter()
        .map(|client| std::thread::spawn(move || output_within(client, Duration::from_secs(60))))
        .collect();
    let outputs: Vec<Output> = handles.into_iter().map(|h| h.join().unwrap()).collect();
    let pids: Vec<u64> = outputs.iter().map(|output| field(output, "pid")).collect();
    assert!(
        pids.iter().all(|pid| *pid == pids[0]),
        "one daemon: {pids:?}"
    );
    let served: Vec<String> = outputs
        .iter()
        .map(|output| word(output, "served-over"))
        .collect();
    assert_eq!(served, ["tcp", "tcp", "unix", "unix"]);
    // In process, on each transport, the same instance.
    let total = 4 * PER_CLIENT;
    for transport in SOCKET_TRANSPORTS {
        let counter: CounterClient = env
            .builder::<Counter>()
            .transport(transport)
            .connect(0)
            .unwrap();
        assert_eq!(counter.get().unwrap(), total, "over {transport}");
        assert_eq!(u64::from(counter.pid().unwrap()), pids[0]);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_async_client_works_over_the_unix_socket() {
    let env = TestEnv::new("tr-async");
    let counter = env
        .builder::<Counter>()
        .transport(Transport::Unix)
        .connect_async(0)
        .await
        .unwrap();
    assert_eq!(counter.client().transport(), Transport::Unix);
    let calls: Vec<_> = (0..200).map(|_| tokio::spawn(counter.inc())).collect();
    for call in calls {
        call.await.unwrap().unwrap();
    }
    assert_eq!(counter.get().await.unwrap(), 200);
    assert_eq!(counter.ping().await.unwrap().transport, Transport::Unix);
    counter.shutdown().await.unwrap();
}

#[test]
fn the_daemon_listens_on_a_private_socket_and_removes_it_when_it_retires() {
    let env = TestEnv::new("tr-file");
    let counter: CounterClient = env
        .builder::<Counter>()
        .transport(Transport::Unix)
        .connect(0)
        .unwrap();
    let socket = env.dir().join("daemon.sock");
    let metadata = std::fs::symlink_metadata(&socket).unwrap();
    assert!(metadata.file_type().is_socket());
    assert_eq!(metadata.permissions().mode() & 0o777, 0o600);
    let published = std::fs::read_to_string(env.metadata_path()).unwrap();
    assert!(
        published.contains("\"socket\": \"daemon.sock\""),
        "{published}"
    );
    counter.client().shutdown().unwrap();
    assert!(
        std::fs::symlink_metadata(&socket).is_err(),
        "a daemon that retires removes its socket"
    );
}

#[test]
fn a_daemon_that_fails_to_start_leaves_no_socket_file() {
    let env = TestEnv::new("tr-failed");
    let result: Result<FragileClient, Error> = env
        .builder::<Fragile>()
        .transport(Transport::Unix)
        .connect("panic".to_string());
    assert!(
        matches!(result, Err(Error::StartFailed { .. })),
        "{result:?}"
    );
    assert!(
        std::fs::symlink_metadata(env.dir().join("daemon.sock")).is_err(),
        "the failed daemon removed the socket it had bound"
    );
}

#[test]
fn a_stale_socket_file_of_a_killed_daemon_is_replaced() {
    let env = TestEnv::new("tr-stale");
    let first: CounterClient = env
        .builder::<Counter>()
        .transport(Transport::Unix)
        .connect(0)
        .unwrap();
    first.inc().unwrap();
    let pid = first.pid().unwrap();
    kill(pid);
    assert!(wait_gone(pid, Duration::from_secs(10)));
    let socket = env.dir().join("daemon.sock");
    assert!(
        std::fs::symlink_metadata(&socket).is_ok(),
        "a killed daemon leaves its socket file behind"
    );
    let second: CounterClient = env
        .builder::<Counter>()
        .transport(Transport::Unix)
        .connect(0)
        .unwrap();
    assert_ne!(second.pid().unwrap(), pid, "a fresh daemon");
    assert_eq!(second.inc().unwrap(), 1);
    assert_eq!(second.ping().unwrap().transport, Transport::Unix);
    second.client().shutdown().unwrap();
}

#[test]
fn a_file_or_symlink_where_the_socket_goes_is_refused_not_followed() {
    let env = TestEnv::new("tr-hostile");
    std::fs::create_dir(env.dir()).unwrap();
    chmod(&env.dir(), 0o700);
    let socket = env.dir().join("daemon.sock");
    let target = env.base.join("target");
    std::fs::write(&target, b"keep me").unwrap();
    for plant in ["file", "symlink"] {
        let _ = std::fs::remove_file(&socket);
        match plant {
            "file" => std::fs::write(&socket, b"not a socket").unwrap(),
            _ => std::os::unix::fs::symlink(&target, &socket).unwrap(),
        }
        for transport in SOCKET_TRANSPORTS {
            let result = env.builder::<Counter>().transport(transport).connect(0);
            match result {
                Err(Error::RuntimeDir { path, reason }) => {
                    assert_eq!(path, socket);
                    assert!(reason.contains("not a socket"), "{reason}");
                }
                other => panic!("a {plant} at the socket path: expected RuntimeDir, got {other:?}"),
            }
        }
        assert!(env.recorded_pid().is_none(), "no daemon was started");
    }
    assert_eq!(std::fs::read(&target).unwrap(), b"keep me");
}

#[test]
fn a_runtime_dir_path_longer_than_a_socket_address_works() {
    let env = TestEnv::new("tr-long");
    let mut base = env.base.clone();
    for _ in 0..3 {
        base.push("d".repeat(40));
    }
    std::fs::create_dir_all(&base).unwrap();
    let mut walked = env.base.clone();
    for _ in 0..3 {
        walked.push("d".repeat(40));
        chmod(&walked, 0o700);
    }
    let socket = base.join(&env.name).join("daemon.sock");
    assert!(
        socket.as_os_str().len() > 108,
        "longer than any sun_path: {}",
        socket.display()
    );
    let result = loopback_singleton::Builder::<Counter>::new()
        .runtime_dir(&base)
        .name(&env.name)
        .idle_ttl(Duration::from_secs(3))
        .transport(Transport::Unix)
        .connect(0);
    if cfg!(any(target_os = "linux", target_os = "android")) {
        // Bound and reached through the directory's handle.
        let counter: CounterClient = result.unwrap();
        assert_eq!(counter.ping().unwrap().transport, Transport::Unix);
        assert!(
            std::fs::symlink_metadata(&socket)
                .unwrap()
                .file_type()
                .is_socket()
        );
        counter.client().shutdown().unwrap();
    } else {
        // Documented: the daemon serves TCP only, the unix client is told why.
        match result {
            Err(Error::TransportUnavailable { reason, .. }) => {
                assert!(reason.contains("socket"), "{reason}")
            }
            other => panic!("expected TransportUnavailable, got {other:?}"),
        }
        let counter: CounterClient = loopback_singleton::Builder::<Counter>::new()
            .runtime_dir(&base)
            .name(&env.name)
            .connect(0)
            .unwrap();
        counter.client().shutdown().unwrap();
    }
}

/// Set in the child process of the foreign-uid test: the socket to connect to.
const FOREIGN_SOCKET_ENV: &str = "TRANSPORTS_TEST_FOREIGN_SOCKET";

#[test]
fn a_peer_of_another_uid_on_the_unix_socket_is_refused_before_the_handshake() {
    if let Some(socket) = std::env::var_os(FOREIGN_SOCKET_ENV) {
        // The child, running as another uid: connect, say hello, report what came back.
        let mut stream = match UnixStream::connect(PathBuf::from(socket)) {
            Ok(stream) => stream,
            Err(error) => {
                println!("foreign=connect-failed {error}");
                return;
            }
        };
        stream
            .set_read_timeout(Some(Duration::from_secs(10)))
            .unwrap();
        let hello = raw::Hello {
            magic: raw::MAGIC,
            version: raw::VERSION,
            nonce: [5; 32],
        };
        let _ = stream.write_all(&raw::frame(&postcard::to_allocvec(&hello).unwrap()));
        let mut reply = Vec::new();
        let outcome = match stream.read_to_end(&mut reply) {
            Ok(_) if reply.is_empty() => "closed".to_string(),
            Ok(_) => format!("answered-{}-bytes", reply.len()),
            Err(error) => format!("error-{:?}", error.kind()),
        };
        println!("foreign={outcome}");
        return;
    }
    if !is_root() {
        eprintln!(
            "skipping a_peer_of_another_uid_on_the_unix_socket_is_refused_before_the_handshake: \
             connecting as another uid needs root"
        );
        return;
    }
    let env = TestEnv::new("tr-foreign");
    let counter: CounterClient = env
        .builder::<Counter>()
        .transport(Transport::Unix)
        .idle_ttl(Duration::from_secs(30))
        .connect(0)
        .unwrap();
    // Open the way for the other user (the runtime refuses such a directory to its
    // clients, but a daemon already running keeps its socket): the kernel's peer
    // credentials are then all that stands between that user and the daemon.
    let socket = env.dir().join("daemon.sock");
    for dir in [&env.base, &env.dir()] {
        chmod(dir, 0o711);
    }
    chmod(&socket, 0o777);
    let mut ancestors_open = true;
    for ancestor in env.base.ancestors().skip(1) {
        let mode = std::fs::metadata(ancestor).unwrap().permissions().mode();
        ancestors_open &= mode & 0o001 != 0;
    }
    assert!(ancestors_open, "the temp dir is reachable by others");
    let mut child = this_test_as_other_user(
        "a_peer_of_another_uid_on_the_unix_socket_is_refused_before_the_handshake",
    );
    child.env(FOREIGN_SOCKET_ENV, &socket);
    let output = output_within(child, Duration::from_secs(60));
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert!(
        stdout.contains("foreign=closed") || stdout.contains("foreign=error-ConnectionReset"),
        "the other uid connected and got nothing back: {stdout}\n{}",
        String::from_utf8_lossy(&output.stderr)
    );
    for dir in [&env.base, &env.dir()] {
        chmod(dir, 0o700);
    }
    // The daemon serves on.
    assert_eq!(counter.inc().unwrap(), 1);
    counter.client().shutdown().unwrap();
}

/// The core integration suites (lifecycle, races, pipelines, the async client,
/// single-instance applications), rerun with `LOOPBACK_SINGLETON_TRANSPORT` set to each
/// transport but TCP (which their own run covers): every client they make, in process
/// or not, then uses it. Runs the suites' test executables that cargo built beside this
/// one, each with its test-name filters (none: all of it). `faults` is TCP-minded (a
/// recorded port taken by another server), so only its race runs here.
#[test]
fn the_core_suites_pass_on_every_transport() {
    const SUITES: [(&str, &[&str]); 6] = [
        ("lifecycle", &[]),
        ("pipeline", &[]),
        ("async_client", &[]),
        ("single_instance", &[]),
        ("processes", &[]),
        ("faults", &["racing"]),
    ];
    let deps = std::env::current_exe()
        .unwrap()
        .parent()
        .unwrap()
        .to_path_buf();
    for transport in [Transport::Unix, Transport::SharedMemory] {
        for (suite, filters) in SUITES {
            // A suite that is not there must not pass unnoticed: `cargo test` builds every
            // test target of the package before it runs any.
            let executable = newest_test_executable(&deps, suite).unwrap_or_else(|| {
                panic!(
                    "the {suite} suite's test executable is not built next to {}: run this \
                     test with `cargo test --workspace` (or `cargo test --tests`)",
                    deps.display()
                )
            });
            let started = Instant::now();
            let mut command = Command::new(&executable);
            command
                .env("LOOPBACK_SINGLETON_TRANSPORT", transport.name())
                .arg("--test-threads=2")
                .args(filters);
            let output = output_within(command, Duration::from_secs(300));
            let stdout = String::from_utf8_lossy(&output.stdout);
            assert!(
                output.status.success(),
                "the {suite} suite failed on {transport} ({}):\n{stdout}\n{}",
                executable.display(),
                String::from_utf8_lossy(&output.stderr)
            );
            eprintln!(
                "{suite} on {transport}: passed in {:?} ({})",
                started.elapsed(),
                stdout
                    .lines()
                    .rfind(|line| line.starts_with("test result"))
                    .unwrap_or("")
            );
        }
    }
}

/// The most recently built test executable of `suite` in cargo's `deps` directory.
fn newest_test_executable(deps: &Path, suite: &str) -> Option<PathBuf> {
    let prefix = format!("{suite}-");
    std::fs::read_dir(deps)
        .ok()?
        .flatten()
        .filter(|entry| {
            let name = entry.file_name();
            let name = name.to_string_lossy();
            name.strip_prefix(&prefix)
                .is_some_and(|hash| hash.len() == 16 && hash.chars().all(|c| c.is_ascii_hexdigit()))
                && entry.metadata().is_ok_and(|metadata| {
                    metadata.is_file() && metadata.permissions().mode() & 0o111 != 0
                })
        })
        .max_by_key(|entry| entry.metadata().and_then(|m| m.modified()).ok())
        .map(|entry| entry.path())
}

/// The raw Auth frame's verdict for a client asking for `transport` over TCP: the
/// postcard bytes `Verdict` starts with (variant indices).
fn verdict_over_tcp(env: &TestEnv, transport: Transport) -> Vec<u8> {
    let (port, secret) = raw::port_and_secret(&env.dir());
    let mut stream = raw::connect(port);
    let nonce = [9u8; 32];
    let challenge = raw::hello(&mut stream, nonce);
    let auth = raw::Auth {
        proof: raw::proof(&secret, false, &nonce, &challenge.nonce),
        schema: None,
        init: None,
        starter: None,
        transport,
    };
    raw::send(&mut stream, &auth).unwrap();
    raw::receive(&mut stream).unwrap()
}

#[test]
fn a_transport_the_connection_cannot_have_is_rejected_with_a_reason() {
    let env = TestEnv::new("tr-mismatch");
    let counter: CounterClient = env.builder::<Counter>().connect(0).unwrap();
    assert_eq!(
        verdict_over_tcp(&env, Transport::Tcp)[0],
        0,
        "Welcome for a TCP client on the TCP socket"
    );
    for asked in [Transport::Unix, Transport::SharedMemory] {
        let verdict = verdict_over_tcp(&env, asked);
        // Verdict::Rejected (1), Rejection::Transport (3), then the reason.
        assert_eq!(verdict[..2], [1, 3], "{asked} over TCP: {verdict:?}");
        let reason = String::from_utf8_lossy(&verdict[3..]);
        assert!(reason.contains(asked.name()), "{reason}");
    }
    assert_eq!(counter.inc().unwrap(), 1, "the daemon serves on");
    counter.client().shutdown().unwrap();
}

#[test]
fn a_refused_socket_under_a_live_daemon_leaves_its_files_alone() {
    // A connection refused on the socket of a daemon that still lives (a full listen
    // queue on macOS and the BSDs, a daemon closing its listener as it retires) must not
    // make its files stale: removing them would orphan the live daemon.
    let env = TestEnv::new("tr-refused");
    let tcp: CounterClient = env.builder::<Counter>().connect(0).unwrap();
    tcp.inc().unwrap();
    let pid = tcp.pid().unwrap();
    // Where the daemon's socket was, a socket nobody listens on any more: connecting
    // to it is refused, while the daemon lives on.
    let socket = env.dir().join("daemon.sock");
    std::fs::remove_file(&socket).unwrap();
    drop(std::os::unix::net::UnixListener::bind(&socket).unwrap());
    let refused = env
        .builder::<Counter>()
        .transport(Transport::Unix)
        .start_timeout(Duration::from_millis(500))
        .connect(0);
    assert!(refused.is_err(), "nobody listens on the socket");
    for file in ["metadata.json", "secret"] {
        assert!(
            env.dir().join(file).exists(),
            "{file} of the live daemon was removed"
        );
    }
    // A newcomer still finds the daemon, and its state.
    let newcomer: CounterClient = env.builder::<Counter>().connect(0).unwrap();
    assert_eq!(newcomer.pid().unwrap(), pid);
    assert_eq!(newcomer.inc().unwrap(), 2);
    newcomer.client().shutdown().unwrap();
}

/// Where the child of the next test, running as [`OTHER_UID`], listens.
const FOREIGN_LISTENER_ENV: &str = "TRANSPORTS_TEST_FOREIGN_LISTENER";

#[test]
fn a_client_refuses_a_socket_another_uid_listens_on_before_sending_anything() {
    if let Some(path) = std::env::var_os(FOREIGN_LISTENER_ENV) {
        // The child, running as another uid: listen, say so, report what a client sent.
        let listener = std::os::unix::net::UnixListener::bind(PathBuf::from(path)).unwrap();
        println!("listening");
        std::io::stdout().flush().unwrap();
        // Bounded: a client that never connects must not keep this process alive.
        listener.set_nonblocking(true).unwrap();
        let deadline = Instant::now() + Duration::from_secs(20);
        let mut stream = loop {
            match listener.accept() {
                Ok((stream, _)) => break stream,
                Err(_) if Instant::now() < deadline => {
                    std::thread::sleep(Duration::from_millis(5));
                }
                Err(_) => {
                    println!("foreign-received=no-connection");
                    return;
                }
            }
        };
        stream.set_nonblocking(false).unwrap();
        stream
            .set_read_timeout(Some(Duration::from_secs(20)))
            .unwrap();
        let mut received = Vec::new();
        let outcome = match stream.read_to_end(&mut received) {
            Ok(_) => format!("{}", received.len()),
            Err(error) => format!("error-{:?}-after-{}", error.kind(), received.len()),
        };
        println!("foreign-received={outcome}");
        return;
    }
    if !is_root() {
        eprintln!(
            "skipping a_client_refuses_a_socket_another_uid_listens_on_before_sending_anything: \
             listening as another uid needs root"
        );
        return;
    }
    let env = TestEnv::new("tr-impostor");
    let counter: CounterClient = env.builder::<Counter>().connect(0).unwrap();
    // Another user's listener, in a directory of theirs, then moved (by root) to where
    // the daemon's socket is: only the kernel's word on the listener's uid tells.
    let theirs = env.base.join("theirs");
    std::fs::create_dir(&theirs).unwrap();
    std::os::unix::fs::chown(&theirs, Some(OTHER_UID), Some(OTHER_UID)).unwrap();
    chmod(&env.base, 0o711);
    let planted = theirs.join("listener.sock");
    let mut child = this_test_as_other_user(
        "a_client_refuses_a_socket_another_uid_listens_on_before_sending_anything",
    );
    child
        .env(FOREIGN_LISTENER_ENV, &planted)
        .stdout(std::process::Stdio::piped());
    let mut child = child.spawn().unwrap();
    let mut stdout = std::io::BufReader::new(child.stdout.take().unwrap());
    let mut line = String::new();
    loop {
        line.clear();
        assert_ne!(
            std::io::BufRead::read_line(&mut stdout, &mut line).unwrap(),
            0,
            "the foreign listener ended before listening"
        );
        // libtest may print "test <name> ... " on the same line first.
        if line.trim_end().ends_with("listening") {
            break;
        }
    }
    // The file is made ours: what is left to tell is the listener's uid.
    let socket = env.dir().join("daemon.sock");
    std::fs::rename(&planted, &socket).unwrap();
    std::os::unix::fs::chown(&socket, Some(0), Some(0)).unwrap();
    let refused = env
        .builder::<Counter>()
        .transport(Transport::Unix)
        .connect(0);
    let mut rest = String::new();
    stdout.read_to_string(&mut rest).unwrap();
    let _ = child.wait();
    match refused {
        Err(Error::Auth { reason, .. }) => {
            assert!(reason.contains(&OTHER_UID.to_string()), "{reason}");
        }
        Err(other) => panic!("expected Error::Auth naming uid {OTHER_UID}, got {other:?}"),
        Ok(_) => panic!("a client talked to another user's listener"),
    }
    assert!(
        rest.contains("foreign-received=0"),
        "the client sent something to another user's listener: {rest}"
    );
    // The daemon itself serves on over TCP.
    assert_eq!(counter.inc().unwrap(), 1);
    counter.client().shutdown().unwrap();
}
