//! The shared-memory transport against real daemons in real processes: the same calls,
//! errors and guarantees as over a socket, one instance shared with TCP and Unix
//! clients, and no hang or crash when a peer dies or writes garbage into the region.

#![cfg(unix)]

mod common;

use std::io::{Read, Write};
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::os::unix::net::UnixStream;
use std::process::Stdio;
use std::time::{Duration, Instant};

use common::{TestEnv, raw};
use loopback_singleton::{Error, RemoteError, Service, Transport};
use loopback_singleton_suite::{Counter, CounterClient, CounterError};

fn shm_client(env: &TestEnv, start: u64) -> CounterClient {
    env.builder::<Counter>()
        .transport(Transport::SharedMemory)
        .connect(start)
        .unwrap()
}

#[test]
fn calls_small_and_large_work_through_shared_memory() {
    let env = TestEnv::new("shm-calls");
    let counter = shm_client(&env, 10);
    assert_eq!(
        counter.client().ping().unwrap().transport,
        Transport::SharedMemory
    );
    for expected in 11..=1000 {
        assert_eq!(counter.inc().unwrap(), expected);
    }
    // Larger than a slot each way, then one way only, then small again.
    let big: Vec<u8> = (0..200_000u32).map(|i| (i % 251) as u8).collect();
    assert_eq!(counter.echo(big.clone()).unwrap(), big);
    assert_eq!(
        counter.byte_sum(&big).unwrap(),
        big.iter().map(|&b| u64::from(b)).sum::<u64>()
    );
    let xs: Vec<u64> = (1..=5000).collect();
    assert_eq!(counter.add_all(&xs).unwrap(), 1000 + 5000 * 5001 / 2);
    assert_eq!(counter.echo(vec![1, 2, 3]).unwrap(), vec![1, 2, 3]);
    // Typed errors, panics isolated, the same as on a socket.
    assert!(matches!(
        counter.checked_sub(u64::MAX).unwrap(),
        Err(CounterError::Underflow { .. })
    ));
    assert!(matches!(
        counter.explode("boom"),
        Err(Error::Remote(RemoteError::Panic { .. }))
    ));
    let value = counter.get().unwrap();
    assert_eq!(counter.inc().unwrap(), value + 1);
    // An async method, and a pipelined batch (over the socket of the same connection).
    assert_eq!(counter.slow_inc(20).unwrap(), value + 2);
    let values: Vec<u64> = counter
        .client()
        .pipeline(0, (0..100).map(|_| ()), 16)
        .unwrap();
    assert_eq!(values.last(), Some(&(value + 102)));
    let stats = counter.client().stats().unwrap();
    let inc = stats
        .methods
        .iter()
        .find(|method| method.name == "inc")
        .unwrap();
    assert_eq!(inc.calls, 990 + 1 + 100);
}

#[test]
fn tcp_unix_and_shm_clients_share_one_instance_and_one_count() {
    let env = TestEnv::new("shm-mixed");
    let counter = shm_client(&env, 0);
    let clients: Vec<_> = ["tcp", "unix", "shm", "shm"]
        .into_iter()
        .map(|transport| {
            env.client(&["inc", "0", "500"])
                .env("LOOPBACK_SINGLETON_TRANSPORT", transport)
                .stdout(Stdio::piped())
                .stderr(Stdio::piped())
                .spawn()
                .unwrap()
        })
        .collect();
    for _ in 0..500 {
        counter.inc().unwrap();
    }
    let pid = counter.pid().unwrap();
    for client in clients {
        let output = client.wait_with_output().unwrap();
        assert!(output.status.success(), "{output:?}");
        let stdout = String::from_utf8(output.stdout).unwrap();
        assert!(
            stdout.contains(&format!("pid={pid} ")),
            "one daemon: {stdout}"
        );
    }
    assert_eq!(counter.get().unwrap(), 2500);
}

#[test]
fn a_client_killed_mid_call_leaves_the_daemon_serving() {
    let env = TestEnv::new("shm-client-killed");
    let counter = shm_client(&env, 0);
    let mut client = env
        .client(&["inc", "0", "100000000"])
        .env("LOOPBACK_SINGLETON_TRANSPORT", "shm")
        .stdout(Stdio::null())
        .spawn()
        .unwrap();
    // Wait until it is calling, then kill it in the middle of its stream of calls.
    let started = counter.get().unwrap();
    while counter.get().unwrap() < started + 1000 {
        std::thread::sleep(Duration::from_millis(5));
    }
    client.kill().unwrap();
    client.wait().unwrap();
    let deadline = Instant::now() + Duration::from_secs(20);
    while counter.client().ping().unwrap().clients > 1 {
        assert!(
            Instant::now() < deadline,
            "the dead client's connection is let go"
        );
        std::thread::sleep(Duration::from_millis(10));
    }
    let value = counter.get().unwrap();
    assert_eq!(counter.inc().unwrap(), value + 1);
    assert_eq!(shm_client(&env, 0).inc().unwrap(), value + 2);
}

#[test]
fn a_daemon_killed_mid_call_gives_the_shm_client_a_typed_error() {
    let env = TestEnv::new("shm-daemon-killed");
    // No call timeout: only noticing the daemon's death can end the call.
    let counter = shm_client(&env, 0);
    let pid = counter.pid().unwrap();
    let call = std::thread::spawn(move || {
        let started = Instant::now();
        (counter.slow_inc(60_000), started.elapsed())
    });
    std::thread::sleep(Duration::from_millis(300));
    common::kill(pid);
    let (result, took) = call.join().unwrap();
    assert!(
        matches!(result, Err(Error::ConnectionLost { .. })),
        "{result:?}"
    );
    assert!(took < Duration::from_secs(30), "{took:?}");
}

#[test]
fn a_call_timeout_applies_to_shm_calls() {
    let env = TestEnv::new("shm-timeout");
    let counter: CounterClient = env
        .builder::<Counter>()
        .transport(Transport::SharedMemory)
        .call_timeout(Duration::from_millis(200))
        .connect(0)
        .unwrap();
    assert!(matches!(
        counter.slow_inc(1_000),
        Err(Error::Timeout { .. })
    ));
    // The timed-out connection is not reused; a fresh one (without a timeout: the
    // slow call still holds the instance for a while) sees that call done.
    assert_eq!(shm_client(&env, 0).get().unwrap(), 1);
}

/// A same-user program that does the handshake as an shm client, then writes garbage
/// over the whole region and rings: the daemon must drop that connection, not crash.
#[test]
fn garbage_in_the_region_closes_that_connection_and_the_daemon_serves_on() {
    let env = TestEnv::new("shm-garbage");
    let counter = shm_client(&env, 0);
    assert_eq!(counter.inc().unwrap(), 1);
    let (_, secret) = raw::port_and_secret(&env.dir());
    for round in 0..3u64 {
        let mut stream = UnixStream::connect(env.dir().join("daemon.sock")).unwrap();
        stream
            .set_read_timeout(Some(Duration::from_secs(10)))
            .unwrap();
        let nonce = [round as u8; 32];
        write_message(
            &mut stream,
            &raw::Hello {
                magic: raw::MAGIC,
                version: raw::VERSION,
                nonce,
            },
        );
        let challenge: raw::Challenge = postcard::from_bytes(&read_frame(&mut stream)).unwrap();
        write_message(
            &mut stream,
            &raw::Auth {
                proof: raw::proof(&secret, false, &nonce, &challenge.nonce),
                schema: Some(Counter::SCHEMA),
                init: None,
                starter: None,
                transport: Transport::SharedMemory,
            },
        );
        let verdict: raw::Verdict = postcard::from_bytes(&read_frame(&mut stream)).unwrap();
        assert!(matches!(verdict, raw::Verdict::Welcome { .. }));
        stream.write_all(&[0; 4]).unwrap();
        let region = receive_fd(&stream);
        scribble(&region, round);
        // The daemon may have seen the garbage already (it spins on the region for a
        // while after the hand-over) and closed the connection: ringing can fail.
        let _ = stream.write_all(&[0; 4]);
        // Closed without a reply.
        let mut rest = Vec::new();
        let _ = stream.read_to_end(&mut rest);
        assert!(rest.is_empty(), "{rest:?}");
        assert_eq!(counter.inc().unwrap(), 2 + round);
    }
    let log = std::fs::read_to_string(env.dir().join("daemon.log")).unwrap_or_default();
    assert_eq!(
        log.matches("closing a shared-memory connection").count(),
        3,
        "{log}"
    );
}

fn write_message<T: serde::Serialize>(stream: &mut UnixStream, message: &T) {
    stream
        .write_all(&raw::frame(&postcard::to_stdvec(message).unwrap()))
        .unwrap();
}

fn read_frame(stream: &mut UnixStream) -> Vec<u8> {
    let mut header = [0u8; 4];
    stream.read_exact(&mut header).unwrap();
    let mut payload = vec![0u8; u32::from_le_bytes(header) as usize];
    stream.read_exact(&mut payload).unwrap();
    payload
}

/// Receives the byte and the descriptor the daemon hands over.
fn receive_fd(stream: &UnixStream) -> OwnedFd {
    let mut byte = [0u8; 1];
    let mut iov = libc::iovec {
        iov_base: byte.as_mut_ptr().cast(),
        iov_len: 1,
    };
    let mut control = [0u64; 8];
    // SAFETY: a zeroed msghdr pointing at live buffers of the sizes given.
    let fd = unsafe {
        let mut message: libc::msghdr = std::mem::zeroed();
        message.msg_iov = &mut iov;
        message.msg_iovlen = 1;
        message.msg_control = control.as_mut_ptr().cast();
        message.msg_controllen = std::mem::size_of_val(&control) as _;
        assert_eq!(libc::recvmsg(stream.as_raw_fd(), &mut message, 0), 1);
        let header = libc::CMSG_FIRSTHDR(&message);
        assert!(!header.is_null());
        assert_eq!((*header).cmsg_type, libc::SCM_RIGHTS);
        std::ptr::read_unaligned(libc::CMSG_DATA(header).cast::<libc::c_int>())
    };
    assert_eq!(byte[0], 1);
    // SAFETY: the kernel just gave us this descriptor.
    unsafe { OwnedFd::from_raw_fd(fd) }
}

/// Overwrites every byte of the mapped region with garbage of kind `round`.
fn scribble(region: &OwnedFd, round: u64) {
    // SAFETY: fstat into a zeroed struct; a shared mapping of the whole file, written
    // through a raw pointer and unmapped before returning.
    unsafe {
        let mut stat: libc::stat = std::mem::zeroed();
        assert_eq!(libc::fstat(region.as_raw_fd(), &mut stat), 0);
        let len = stat.st_size as usize;
        let at = libc::mmap(
            std::ptr::null_mut(),
            len,
            libc::PROT_READ | libc::PROT_WRITE,
            libc::MAP_SHARED,
            region.as_raw_fd(),
            0,
        );
        assert_ne!(at, libc::MAP_FAILED);
        let words = at.cast::<u64>();
        let mut rng = raw::Rng(0x9e37_79b9_7f4a_7c15 ^ round);
        for i in 0..len / 8 {
            let value = match round {
                // Sequences and lengths at their extremes.
                0 => u64::MAX,
                1 => rng.next(),
                _ => (i as u64).wrapping_mul(0x1_0000_0001),
            };
            std::ptr::write_volatile(words.add(i), value);
        }
        libc::munmap(at, len);
    }
}

/// The daemon's context switches (all threads), from `/proc`.
#[cfg(target_os = "linux")]
fn context_switches(pid: u32) -> u64 {
    let mut total = 0;
    for task in std::fs::read_dir(format!("/proc/{pid}/task"))
        .unwrap()
        .flatten()
    {
        let status = std::fs::read_to_string(task.path().join("status")).unwrap_or_default();
        for line in status.lines() {
            if let Some(count) = line
                .strip_prefix("voluntary_ctxt_switches:")
                .or_else(|| line.strip_prefix("nonvoluntary_ctxt_switches:"))
            {
                total += count.trim().parse::<u64>().unwrap();
            }
        }
    }
    total
}

/// A connected shm client that makes no call costs the daemon no wake-up: it sleeps on
/// the socket, not on a timer or a spin (a 100 ms liveness tick would show 10).
#[cfg(target_os = "linux")]
#[test]
fn an_idle_shm_connection_wakes_the_daemon_up_for_nothing() {
    let env = TestEnv::new("shm-idle");
    let counter: CounterClient = env
        .builder::<Counter>()
        .transport(Transport::SharedMemory)
        .idle_ttl(Duration::from_secs(600))
        .connect(0)
        .unwrap();
    let pid = counter.pid().unwrap();
    for _ in 0..100 {
        counter.inc().unwrap();
    }
    // Past any spinning after the last call.
    std::thread::sleep(Duration::from_millis(200));
    let before = context_switches(pid);
    std::thread::sleep(Duration::from_secs(1));
    let woke = context_switches(pid) - before;
    assert!(woke < 5, "the idle daemon woke {woke} times in a second");
    assert_eq!(counter.inc().unwrap(), 101);
}
