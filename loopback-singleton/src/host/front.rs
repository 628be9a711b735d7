//! The front thread: accepts connections, runs the daemon's half of the handshake
//! under its deadline, counts clients, and decides when the host retires.

use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use serde::Serialize;
use tokio::io::{AsyncRead, AsyncWrite, AsyncWriteExt};
use tokio::sync::mpsc;

use crate::protocol::{self, Secret, Transport};
use crate::sys;

use super::*;
use crate::protocol::handshake::DaemonHalf;
/// Accepts, authenticates and counts connections until the daemon retires; says why.
pub(super) async fn front(
    listener: std::net::TcpListener,
    unix: Option<sys::UnixListener>,
    shared: Arc<Shared>,
    secret: Secret,
    to_instance: mpsc::UnboundedSender<ToInstance>,
    signals: Signals,
) -> &'static str {
    let listener = match sys::Listeners::new(listener, unix) {
        Ok(listener) => listener,
        Err(_) => return "cannot register the listener",
    };
    let mut stop_signals = (signals == Signals::Retire).then(sys::StopSignals::listen);
    loop {
        if shared.shutting_down.load(Ordering::Acquire) {
            return "shutdown requested";
        }
        let idle_deadline = shared.idle_deadline().map(tokio::time::Instant::from_std);
        // With every handshake slot taken, newcomers wait in the listen backlog until a
        // slot frees (each handshake has a deadline) instead of being turned away.
        let slot_free = shared.handshaking.load(Ordering::Acquire) < MAX_PENDING_HANDSHAKES;
        tokio::select! {
            accepted = listener.accept(), if slot_free => match accepted {
                Ok(stream) => {
                    // The kernel says who is at the other end of a Unix socket: only
                    // this user gets as far as the handshake.
                    match stream.peer_uid() {
                        Ok(Some(uid)) if uid != sys::euid() => {
                            log::emit_peer(|| tracing::warn!(uid, "connection refused: a Unix-socket peer of another user"));
                            continue;
                        }
                        Err(error) => {
                            log::emit_peer(|| tracing::warn!(%error, "connection refused: no peer credentials"));
                            continue;
                        }
                        Ok(_) => {}
                    }
                    if shared.connections.load(Ordering::Acquire) >= shared.options.max_connections {
                        log::emit_peer(|| tracing::warn!("connection refused: max_connections reached"));
                        continue;
                    }
                    shared.handshaking.fetch_add(1, Ordering::AcqRel);
                    tokio::spawn(admit(stream, Arc::clone(&shared), secret, to_instance.clone()));
                }
                Err(error) => {
                    // Typically EMFILE: back off instead of spinning.
                    log::emit_peer(|| tracing::warn!(%error, "accept failed"));
                    tokio::time::sleep(Duration::from_millis(20)).await;
                }
            },
            () = shared.wake_front.notified() => {}
            () = sleep_until_opt(idle_deadline) => {
                if shared.idle_deadline().is_some_and(|deadline| deadline <= Instant::now()) {
                    return "idle TTL elapsed with no client connected";
                }
            }
            () = stop_signal(&mut stop_signals) => return sys::StopSignals::DESCRIPTION,
        }
    }
}

/// Completes on SIGTERM or SIGINT, if the host listens to them.
pub(super) async fn stop_signal(signals: &mut Option<sys::StopSignals>) {
    match signals {
        Some(signals) => signals.recv().await,
        None => std::future::pending().await,
    }
}

pub(super) async fn sleep_until_opt(deadline: Option<tokio::time::Instant>) {
    match deadline {
        Some(deadline) => tokio::time::sleep_until(deadline).await,
        None => std::future::pending().await,
    }
}

/// Runs the handshake under its deadline; hands an authenticated connection over.
pub(super) async fn admit(
    mut stream: sys::AsyncStream,
    shared: Arc<Shared>,
    secret: Secret,
    to_instance: mpsc::UnboundedSender<ToInstance>,
) {
    let arrived_on = if stream.is_unix() {
        Transport::Unix
    } else {
        Transport::Tcp
    };
    let outcome = tokio::time::timeout(
        shared.options.handshake_timeout,
        handshake(&mut stream, &shared, &secret, arrived_on),
    )
    .await;
    if shared.handshaking.fetch_sub(1, Ordering::AcqRel) == MAX_PENDING_HANDSHAKES {
        // The front thread may be waiting for a free slot.
        shared.wake_front.notify_one();
    }
    if let Ok(Ok((admin, transport))) = outcome {
        if let Ok(stream) = stream.into_std() {
            shared.connections.fetch_add(1, Ordering::AcqRel);
            let guard = ConnectionGuard(Arc::clone(&shared));
            // If the instance thread is gone, the guard comes back and is dropped here.
            let _ = to_instance.send(ToInstance::Connection(Admitted {
                stream,
                guard,
                admin,
                transport,
            }));
        }
    }
}

/// Counts one authenticated connection until dropped, however it ends (a panic
/// included), and starts the idle TTL when the last one goes.
pub(super) struct ConnectionGuard(pub(super) Arc<Shared>);

impl Drop for ConnectionGuard {
    fn drop(&mut self) {
        let shared = &self.0;
        shared.mark_idle_now();
        shared.connections.fetch_sub(1, Ordering::AcqRel);
        shared.wake_front.notify_one();
    }
}

/// The daemon's side of the mutual handshake (see [`crate::protocol::handshake`]) on a
/// connection that came on the socket of `arrived_on`. Any failure closes the
/// connection without a word: an unauthenticated peer learns nothing. Returns whether it
/// is an admin connection (no schema: ping, stats and shutdown only), and the transport
/// the client asked for.
pub(super) async fn handshake<T: AsyncRead + AsyncWrite + Unpin>(
    stream: &mut T,
    shared: &Shared,
    secret: &Secret,
    arrived_on: Transport,
) -> Result<(bool, Transport), ()> {
    let mut buf = Vec::new();
    protocol::read_frame_async(stream, &mut buf, protocol::MAX_HANDSHAKE_FRAME)
        .await
        .map_err(drop)?;
    let hello: protocol::handshake::Hello = protocol::decode("hello", &buf).map_err(drop)?;
    let (half, challenge, same_version) = DaemonHalf::challenge(secret, &hello).ok_or(())?;
    write_message(stream, &challenge, &mut buf).await?;
    if !same_version {
        // The client reads our version from the challenge and decides what it means.
        return Err(());
    }
    protocol::read_frame_async(stream, &mut buf, protocol::MAX_HANDSHAKE_FRAME)
        .await
        .map_err(drop)?;
    let auth: protocol::handshake::Auth = protocol::decode("auth", &buf).map_err(drop)?;
    if !half.admits(secret, &auth) {
        log::emit_peer(|| tracing::warn!("handshake refused: bad client proof"));
        return Err(());
    }
    let verdict = if shared.shutting_down.load(Ordering::Acquire) {
        protocol::handshake::Verdict::Rejected(protocol::handshake::Rejection::ShuttingDown)
    } else if auth.schema.is_some_and(|schema| schema != shared.schema) {
        protocol::handshake::Verdict::Rejected(protocol::handshake::Rejection::Schema {
            daemon: shared.schema,
            wire: shared.wire.clone(),
        })
    } else if auth.schema.is_some() && auth.init.is_some_and(|init| init != shared.init) {
        protocol::handshake::Verdict::Rejected(protocol::handshake::Rejection::Init {
            running: shared.init_description.clone(),
        })
    } else if let Some(reason) = refused_transport(auth.transport, arrived_on) {
        protocol::handshake::Verdict::Rejected(protocol::handshake::Rejection::Transport { reason })
    } else {
        protocol::handshake::Verdict::Welcome {
            pid: shared.pid,
            instance: shared.instance,
            max_frame: shared.options.max_frame,
        }
    };
    let welcomed = matches!(verdict, protocol::handshake::Verdict::Welcome { .. });
    write_message(stream, &verdict, &mut buf).await?;
    if !welcomed {
        return Err(());
    }
    // The starter's token proves nothing on its own: it counts only from a client that
    // proved the secret. Without a starter, any first client ends the grace. An admin
    // connection (someone looking at the daemon) is not the client it waits for.
    let admin = auth.schema.is_none();
    if !admin && (shared.starter.is_none() || auth.starter == shared.starter) {
        shared.starter_arrived.store(true, Ordering::Release);
    }
    Ok((admin, auth.transport))
}

/// Why a client asking for `asked` on a connection that came on the socket of
/// `arrived_on` cannot be served, if it cannot.
fn refused_transport(asked: Transport, arrived_on: Transport) -> Option<String> {
    match asked {
        // Shared memory is set up over the Unix socket.
        Transport::SharedMemory if arrived_on == Transport::Unix => None,
        asked if asked != arrived_on => Some(format!(
            "a client asking for the {asked} transport connected over {arrived_on}"
        )),
        _ => None,
    }
}

pub(super) async fn write_message<T: Serialize>(
    stream: &mut (impl AsyncWrite + Unpin),
    message: &T,
    buf: &mut Vec<u8>,
) -> Result<(), ()> {
    protocol::encode_frame(message, buf);
    stream.write_all(buf).await.map_err(drop)
}
