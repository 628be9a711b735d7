//! The processes the benchmark starts by re-executing itself with `LSB_ROLE` set: the
//! raw TCP server, the raw Unix-socket server, the tarpc server, throughput workers (one call at a time, or many
//! concurrent tasks on one async client), and the cold-start client. Roles talk to the parent with lines on stdin/stdout.

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{Ipv4Addr, SocketAddr, TcpListener, TcpStream};
use std::time::{Duration, Instant};

use futures::StreamExt;
use tarpc::server::{BaseChannel, Channel};
use tarpc::tokio_serde::formats::Bincode;
use tokio_util::codec::{Framed, LengthDelimitedCodec};

use crate::service::{BenchAsyncClient, BenchClient, TarpcBench, TarpcBenchClient, TarpcServer};

/// The role environment variable: never extra argv (see DESIGN.md §5, Spawn).
pub const ROLE: &str = "LSB_ROLE";

/// Raw protocol: the first byte of a connection chooses the mode.
pub const RAW_PING: u8 = b'p';
pub const RAW_BULK: u8 = b'b';

/// Largest payload of the sweep plus headroom (frame limits of every system).
pub const MAX_PAYLOAD: usize = 8 << 20;

fn env(name: &str) -> String {
    std::env::var(name).unwrap_or_else(|_| panic!("{name} is not set"))
}

fn env_num<T: std::str::FromStr>(name: &str) -> T {
    env(name)
        .parse()
        .unwrap_or_else(|_| panic!("{name} is not a number"))
}

/// Runs the role named by `LSB_ROLE`; returns `false` if none is set.
pub fn run_role() -> bool {
    let Ok(role) = std::env::var(ROLE) else {
        return false;
    };
    match role.as_str() {
        "raw-server" => raw_server(),
        "raw-unix-server" => raw_unix_server(),
        "shm-idle" => crate::shm::idle_client(),
        "tarpc-server" => tarpc_server(),
        "raw-worker" => {
            pin_from_env();
            worker(|deadline| {
                let mut stream = raw_connect(env_num("LSB_PORT"), RAW_PING);
                count_until(deadline, || raw_ping(&mut stream))
            })
        }
        "crate-worker" => worker(|deadline| {
            let client = crate_connect();
            // `LSB_PAYLOAD=N`: calls `sink` with N bytes instead (for profiling).
            match std::env::var("LSB_PAYLOAD")
                .ok()
                .and_then(|n| n.parse().ok())
            {
                Some(size) => {
                    let payload = vec![7u8; size];
                    count_until(deadline, || {
                        client.sink(&payload).expect("sink");
                    })
                }
                None => count_until(deadline, || {
                    client.inc().expect("inc");
                }),
            }
        }),
        "tarpc-worker" => {
            let runtime = current_thread();
            let client = runtime.block_on(tarpc_connect(env_num("LSB_PORT")));
            worker(|deadline| {
                runtime.block_on(async {
                    let mut calls = 0u64;
                    while Instant::now() < deadline {
                        for _ in 0..64 {
                            client
                                .inc(tarpc::context::current())
                                .await
                                .expect("tarpc inc");
                        }
                        calls += 64;
                    }
                    calls
                })
            })
        }
        // `LSB_TASKS` concurrent tasks on one client, on a current_thread runtime
        // pinned to `LSB_CPU` (the main process's tarpc client runs the same way).
        "async-tasks-worker" => {
            pin_from_env();
            let runtime = current_thread();
            let client = runtime.block_on(async {
                BenchAsyncClient::builder()
                    .runtime_dir(env("LOOPBACK_SINGLETON_DIR"))
                    .name(env("LSB_NAME"))
                    .connect_async(())
                    .await
                    .expect("connecting the async client to the bench daemon")
            });
            let tasks: usize = env_num("LSB_TASKS");
            worker(|deadline| {
                runtime.block_on(join_tasks((0..tasks).map(|_| {
                    let client = client.clone();
                    tokio::spawn(async move {
                        count_until_async(deadline, || async {
                            client.inc().await.expect("async inc");
                        })
                        .await
                    })
                })))
            })
        }
        "tarpc-tasks-worker" => {
            pin_from_env();
            let runtime = current_thread();
            let client = runtime.block_on(tarpc_connect(env_num("LSB_PORT")));
            let tasks: usize = env_num("LSB_TASKS");
            worker(|deadline| {
                runtime.block_on(join_tasks((0..tasks).map(|_| {
                    let client = client.clone();
                    tokio::spawn(async move {
                        count_until_async(deadline, || async {
                            client
                                .inc(tarpc::context::current())
                                .await
                                .expect("tarpc inc");
                        })
                        .await
                    })
                })))
            })
        }
        "cold" => cold(),
        other => panic!("unknown {ROLE} {other}"),
    }
    true
}

fn current_thread() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("tokio runtime")
}

/// Connects the crate's client to the benchmark daemon (never starts one): over shared
/// memory if `LSB_SHM` is set, else TCP.
pub fn crate_connect() -> BenchClient {
    let transport = if std::env::var_os(crate::shm::SHM_WORKER).is_some() {
        loopback_singleton::Transport::SharedMemory
    } else {
        loopback_singleton::Transport::Tcp
    };
    crate_connect_with(transport)
}

/// [`crate_connect`] over `transport`.
pub fn crate_connect_with(transport: loopback_singleton::Transport) -> BenchClient {
    BenchClient::builder()
        .runtime_dir(env("LOOPBACK_SINGLETON_DIR"))
        .name(env("LSB_NAME"))
        .transport(transport)
        .connect(())
        .expect("connecting to the bench daemon")
}

/// A throughput worker: connects, says `ready`, waits for `go`, runs its calls for
/// `LSB_SECS`, prints `count N`.
fn worker(run: impl FnOnce(Instant) -> u64) {
    let secs: f64 = env_num("LSB_SECS");
    let stdin = std::io::stdin();
    let mut line = String::new();
    // Connect first (inside `run`'s setup is too late for the barrier), so the parent
    // starts the clock only when every worker is connected.
    println!("ready");
    std::io::stdout().flush().unwrap();
    stdin.lock().read_line(&mut line).unwrap();
    let deadline = Instant::now() + Duration::from_secs_f64(secs);
    let calls = run(deadline);
    println!("count {calls}");
}

/// Pins this thread (and so the threads it starts later) to `LSB_CPU`, if set.
fn pin_from_env() {
    if let Ok(cpu) = std::env::var("LSB_CPU") {
        let cpu: usize = cpu.parse().expect("LSB_CPU is not a number");
        crate::procs::pin_thread(Some(cpu % crate::procs::available_cpus()));
    }
}

/// Sums the call counts of spawned tasks.
async fn join_tasks(tasks: impl Iterator<Item = tokio::task::JoinHandle<u64>>) -> u64 {
    let tasks: Vec<_> = tasks.collect();
    let mut calls = 0;
    for task in tasks {
        calls += task.await.expect("a benchmark task panicked");
    }
    calls
}

/// [`count_until`] for one task of many: awaits `call` in batches of 16 until the
/// deadline (at most ten million calls, a bound that no deadline here reaches).
async fn count_until_async<F: Future<Output = ()>>(
    deadline: Instant,
    mut call: impl FnMut() -> F,
) -> u64 {
    let mut calls = 0u64;
    while Instant::now() < deadline && calls < 10_000_000 {
        for _ in 0..16 {
            call().await;
        }
        calls += 16;
    }
    calls
}

fn count_until(deadline: Instant, mut call: impl FnMut()) -> u64 {
    let mut calls = 0u64;
    while Instant::now() < deadline {
        for _ in 0..64 {
            call();
        }
        calls += 64;
    }
    calls
}

// ---------------------------------------------------------------------------------------
// Raw std::net TCP
// ---------------------------------------------------------------------------------------

/// Blocking thread-per-connection server: ping mode echoes 8 bytes; bulk mode reads a
/// `u32` length and the payload, and answers its length as 8 bytes.
fn raw_server() {
    let listener = TcpListener::bind((Ipv4Addr::LOCALHOST, 0)).expect("bind");
    println!("port {}", listener.local_addr().unwrap().port());
    std::io::stdout().flush().unwrap();
    for stream in listener.incoming() {
        let Ok(stream) = stream else { continue };
        std::thread::spawn(move || {
            let _ = serve_raw(stream);
        });
    }
}

fn serve_raw(stream: TcpStream) -> std::io::Result<()> {
    stream.set_nodelay(true)?;
    serve_raw_io(stream.try_clone()?, stream)
}

/// The raw server's loop on any stream (read and write ends apart).
fn serve_raw_io(reader: impl Read, mut writer: impl Write) -> std::io::Result<()> {
    let mut reader = BufReader::with_capacity(64 << 10, reader);
    let mut mode = [0u8];
    reader.read_exact(&mut mode)?;
    let mut small = [0u8; 8];
    let mut payload = Vec::new();
    loop {
        if mode[0] == RAW_PING {
            reader.read_exact(&mut small)?;
            writer.write_all(&small)?;
        } else {
            let mut header = [0u8; 4];
            reader.read_exact(&mut header)?;
            let len = u32::from_le_bytes(header) as usize;
            assert!(len <= MAX_PAYLOAD);
            payload.resize(len, 0);
            reader.read_exact(&mut payload)?;
            writer.write_all(&(len as u64).to_le_bytes())?;
        }
    }
}

pub fn raw_connect(port: u16, mode: u8) -> TcpStream {
    let mut stream = TcpStream::connect((Ipv4Addr::LOCALHOST, port)).expect("raw connect");
    stream.set_nodelay(true).unwrap();
    stream.write_all(&[mode]).unwrap();
    stream
}

/// The raw server on a Unix socket at `LSB_SOCKET` (ping and bulk modes as over TCP):
/// the floor for the `unix` transport. Prints `port 0` once it listens.
fn raw_unix_server() {
    let path = env("LSB_SOCKET");
    let _ = std::fs::remove_file(&path);
    let listener = std::os::unix::net::UnixListener::bind(&path).expect("bind");
    println!("port 0");
    std::io::stdout().flush().unwrap();
    for stream in listener.incoming() {
        let Ok(stream) = stream else { continue };
        std::thread::spawn(move || {
            let _ = stream
                .try_clone()
                .and_then(|reader| serve_raw_io(reader, stream));
        });
    }
}

pub fn raw_unix_connect(path: &std::path::Path, mode: u8) -> std::os::unix::net::UnixStream {
    let mut stream = std::os::unix::net::UnixStream::connect(path).expect("raw unix connect");
    stream.write_all(&[mode]).unwrap();
    stream
}

/// One 8-byte request, one 8-byte reply.
pub fn raw_ping(stream: &mut (impl Read + Write)) {
    stream.write_all(&[1u8; 8]).expect("raw write");
    let mut reply = [0u8; 8];
    stream.read_exact(&mut reply).expect("raw read");
}

/// `window` pings in one write, then their replies.
pub fn raw_ping_batch(stream: &mut TcpStream, window: usize, scratch: &mut Vec<u8>) {
    scratch.clear();
    scratch.resize(window * 8, 1);
    stream.write_all(scratch).expect("raw write");
    stream.read_exact(scratch).expect("raw read");
}

/// One bulk message (`message` holds the length prefix and the payload).
pub fn raw_bulk(stream: &mut TcpStream, message: &[u8]) {
    stream.write_all(message).expect("raw write");
    let mut reply = [0u8; 8];
    stream.read_exact(&mut reply).expect("raw read");
}

// ---------------------------------------------------------------------------------------
// tarpc
// ---------------------------------------------------------------------------------------

fn framed(stream: tokio::net::TcpStream) -> Framed<tokio::net::TcpStream, LengthDelimitedCodec> {
    stream.set_nodelay(true).expect("nodelay");
    let codec = LengthDelimitedCodec::builder()
        .max_frame_length(2 * MAX_PAYLOAD)
        .new_codec();
    Framed::new(stream, codec)
}

/// tarpc's usual server: the multi-threaded tokio runtime, bincode over TCP.
fn tarpc_server() {
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .expect("tokio runtime");
    runtime.block_on(async {
        let listener = tokio::net::TcpListener::bind((Ipv4Addr::LOCALHOST, 0))
            .await
            .expect("bind");
        println!("port {}", listener.local_addr().unwrap().port());
        std::io::stdout().flush().unwrap();
        let server = TarpcServer::default();
        loop {
            let Ok((stream, _)) = listener.accept().await else {
                continue;
            };
            let transport = tarpc::serde_transport::new(framed(stream), Bincode::default());
            let server = server.clone();
            tokio::spawn(
                BaseChannel::with_defaults(transport)
                    .execute(server.serve())
                    .for_each(|response| async move {
                        tokio::spawn(response);
                    }),
            );
        }
    });
}

pub async fn tarpc_connect(port: u16) -> TarpcBenchClient {
    let stream = tokio::net::TcpStream::connect(SocketAddr::from((Ipv4Addr::LOCALHOST, port)))
        .await
        .expect("tarpc connect");
    let transport = tarpc::serde_transport::new(framed(stream), Bincode::default());
    TarpcBenchClient::new(tarpc::client::Config::default(), transport).spawn()
}

// ---------------------------------------------------------------------------------------
// Cold start
// ---------------------------------------------------------------------------------------

/// A fresh process, no daemon running: time from here to the first call's result (the
/// parent also times it from before the exec). Then shuts the daemon down.
fn cold() {
    let started = Instant::now();
    let client = BenchClient::builder()
        .runtime_dir(env("LOOPBACK_SINGLETON_DIR"))
        .name(env("LSB_NAME"))
        .idle_ttl(Duration::from_secs(30))
        .connect(())
        .expect("cold connect");
    let value = client.inc().expect("cold inc");
    let elapsed = started.elapsed();
    assert_eq!(value, 1, "the daemon was not fresh");
    println!("cold_ns {}", elapsed.as_nanos());
    std::io::stdout().flush().unwrap();
    client.shutdown().expect("shutdown");
}
