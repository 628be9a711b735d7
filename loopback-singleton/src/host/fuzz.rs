//! The daemon's side of one connection, fed from a byte slice (feature `fuzzing`, and
//! the crate's unit tests).

use std::future::Future;
use std::sync::atomic::{AtomicBool, AtomicU32, AtomicU64};
use std::time::Instant;

use tokio::sync::{Mutex, Notify};

use super::front;
use super::instance::connection_loop;
use super::*;

fn shared<S: Service>(max_frame: u32) -> Shared {
    Shared {
        name: "fuzz".into(),
        pid: 1,
        instance: 7,
        port: 1,
        started: Instant::now(),
        schema: S::SCHEMA,
        wire: protocol::schema::sendable(crate::service::wire_description::<S>()),
        init: 0,
        init_description: "()".into(),
        options: ServeOptions::default().max_frame_size(max_frame),
        connections: AtomicU32::new(1),
        handshaking: AtomicU32::new(0),
        idle_since_ms: AtomicU64::new(0),
        starter: None,
        starter_arrived: AtomicBool::new(true),
        calls_served: AtomicU64::new(0),
        metrics: std::sync::Mutex::new(metrics::Metrics::new()),
        shutting_down: AtomicBool::new(false),
        wake_front: Notify::new(),
    }
}

fn block_on<F: Future>(future: F) -> F::Output {
    thread_local! {
        static RUNTIME: tokio::runtime::Runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .expect("a tokio runtime");
    }
    RUNTIME.with(|runtime| runtime.block_on(future))
}

/// Runs the daemon's side of the handshake on `input`; returns what it wrote and
/// whether it admitted the peer.
pub(crate) fn handshake<S: Service>(input: &[u8]) -> (Vec<u8>, bool) {
    let shared = shared::<S>(protocol::DEFAULT_MAX_FRAME);
    let secret = [0x42; 32];
    let mut output = Vec::new();
    let admitted = block_on(async {
        let mut stream = tokio::io::join(input, &mut output);
        front::handshake(&mut stream, &shared, &secret, protocol::Transport::Tcp)
            .await
            .is_ok()
    });
    (output, admitted)
}

/// Runs the daemon's request loop on `input` (the frames after a handshake) against
/// `instance`; returns what it wrote and whether it closed the connection cleanly
/// (at the end of the input) rather than on a protocol violation.
pub(crate) fn requests<S: Service>(instance: S, input: &[u8], max_frame: u32) -> (Vec<u8>, bool) {
    let shared = shared::<S>(max_frame);
    let instance = Mutex::new(Some(instance));
    let mut output = Vec::new();
    let clean = block_on(connection_loop(
        input,
        &mut output,
        &instance,
        &shared,
        false,
        protocol::Transport::Tcp,
    ))
    .is_ok();
    (output, clean)
}
