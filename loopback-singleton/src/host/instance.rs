//! The instance thread: builds the instance, then serves every authenticated
//! connection on it, one call at a time; drops it last.

use std::any::Any;
use std::future::Future;
use std::panic::{AssertUnwindSafe, catch_unwind};
use std::pin::Pin;
use std::rc::Rc;
use std::sync::atomic::Ordering;
use std::task::{Context, Poll};
use std::time::Instant;

use tokio::io::{AsyncRead, AsyncWrite, AsyncWriteExt, BufReader};
use tokio::sync::{Mutex, mpsc};

use crate::protocol::{self, FrameError, RemoteError, Transport};
use crate::service::{Dispatch, Service};

use super::metrics::{self, Outcome, Sample};
use super::*;
/// The instance thread: builds the instance, reports, then serves connections until
/// told to retire; drops the instance last (after any call in flight), so that a
/// service can persist its state in `Drop`.
pub(super) fn instance_thread<S: Service>(
    construct: Construct<S>,
    built: std::sync::mpsc::Sender<Result<(), String>>,
    mut from_front: mpsc::UnboundedReceiver<ToInstance>,
) {
    let runtime = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(runtime) => runtime,
        Err(error) => {
            let _ = built.send(Err(format!("building the instance runtime: {error}")));
            return;
        }
    };
    let instance = match catch_unwind(AssertUnwindSafe(construct)) {
        Ok(Ok(instance)) => instance,
        Ok(Err(reason)) => {
            let _ = built.send(Err(reason));
            return;
        }
        Err(panic) => {
            let _ = built.send(Err(format!(
                "the constructor panicked: {}",
                panic_message(&*panic)
            )));
            return;
        }
    };
    let _ = built.send(Ok(()));
    let instance = Rc::new(Mutex::new(Some(instance)));
    let local = tokio::task::LocalSet::new();
    local.block_on(&runtime, async {
        while let Some(ToInstance::Connection(admitted)) = from_front.recv().await {
            tokio::task::spawn_local(serve_connection(admitted, Rc::clone(&instance)));
        }
        // Waits for the call in flight, if any; later calls find no instance.
        let dropped = instance.lock().await.take();
        drop(dropped);
    });
}

/// Per-connection buffers, reused across calls.
pub(super) struct Buffers {
    pub(super) input: Vec<u8>,
    pub(super) output: Vec<u8>,
}

impl Buffers {
    /// Keeps one huge payload from pinning its memory for the connection's lifetime,
    /// but keeps a big buffer while messages still fill a good part of it: dropping it
    /// after every large call cost a fresh allocation and its page faults per call.
    pub(super) fn trim(&mut self) {
        const KEEP: usize = 64 << 10;
        for buf in [&mut self.input, &mut self.output] {
            if buf.capacity() > 16 * KEEP && buf.len() < buf.capacity() / 4 {
                *buf = Vec::with_capacity(KEEP);
            }
        }
    }
}

/// Serves one authenticated connection; its guard counts it until this ends. An admin
/// connection (no schema) gets ping, stats and shutdown only. Every transport that
/// exists today is served over the socket itself; one served another way (shared
/// memory) branches off here on `admitted.transport`, which the front refuses until
/// it exists (`front::refused_transport`).
pub(super) async fn serve_connection<S: Service>(
    admitted: Admitted,
    instance: Rc<Mutex<Option<S>>>,
) {
    let Admitted {
        stream,
        guard,
        admin,
        transport,
    } = admitted;
    if let Ok(stream) = stream.into_async() {
        if transport == Transport::SharedMemory {
            let serving = Serving {
                instance: &instance,
                shared: &guard.0,
                admin,
                transport,
            };
            return super::shm::serve(stream, &serving).await;
        }
        let (reader, writer) = stream.into_split();
        let _ = connection_loop(reader, writer, &instance, &guard.0, admin, transport).await;
    }
}

pub(super) async fn connection_loop<S: Service>(
    reader: impl AsyncRead + Unpin,
    mut writer: impl AsyncWrite + Unpin,
    instance: &Mutex<Option<S>>,
    shared: &Shared,
    admin: bool,
    transport: Transport,
) -> Result<(), ()> {
    let mut reader = BufReader::with_capacity(64 << 10, reader);
    let mut buffers = Buffers {
        input: Vec::with_capacity(4096),
        output: Vec::with_capacity(4096),
    };
    let serving = Serving {
        instance,
        shared,
        admin,
        transport,
    };
    let outcome = loop {
        let Buffers { input, output } = &mut buffers;
        match protocol::read_frame_async(&mut reader, input, shared.options.max_frame).await {
            Ok(()) => {}
            Err(FrameError::Io(_)) => break Ok(()),
            Err(FrameError::Protocol(error)) => {
                log::emit(|| tracing::warn!(%error, "closing a connection"));
                break Err(());
            }
        }
        let read_at = Instant::now();
        let bytes_in = input.len() + 4;
        let (id, kind, body) = match protocol::split_request(input) {
            Ok(header) => header,
            Err(error) => {
                log::emit(|| tracing::warn!(%error, "closing a connection"));
                break Err(());
            }
        };
        // Replies accumulate in `output` while requests already received wait behind
        // this one (see below); each starts its own frame at the end. A call that must
        // wait for the instance (another call runs, or the host is retiring) sends the
        // replies of the calls that already ran first: they are not held hostage, and
        // not lost if the host retires meanwhile.
        if !output.is_empty() && kind == protocol::Kind::Call && instance.try_lock().is_err() {
            writer.write_all(output).await.map_err(drop)?;
            output.clear();
        }
        serving
            .answer(id, kind, body, bytes_in, read_at, output)
            .await;
        // Pipelined calls: while the next request is already complete in the read
        // buffer, it runs at once and its reply joins this one, so a batch of calls is
        // answered with one write instead of one per call. Nothing here waits on the
        // socket or on another connection.
        if output.len() < 64 << 10 && protocol::holds_frame(reader.buffer()) {
            continue;
        }
        writer.write_all(output).await.map_err(drop)?;
        buffers.trim();
        buffers.output.clear();
    };
    // The replies of pipelined requests that came before a violation still go out:
    // those calls ran.
    if !buffers.output.is_empty() {
        let _ = writer.write_all(&buffers.output).await;
    }
    outcome
}

/// What answering a request on a connection needs.
pub(super) struct Serving<'a, S> {
    pub(super) instance: &'a Mutex<Option<S>>,
    pub(super) shared: &'a Shared,
    /// No schema: ping, stats and shutdown only.
    pub(super) admin: bool,
    /// The connection's transport (what a ping reports).
    pub(super) transport: Transport,
}

impl<S: Service> Serving<'_, S> {
    /// Answers request `id` of `kind` (its frame was `bytes_in` bytes, read at
    /// `read_at`) by appending the reply frame to `output`.
    pub(super) async fn answer(
        &self,
        id: u64,
        kind: protocol::Kind,
        body: &[u8],
        bytes_in: usize,
        read_at: Instant,
        output: &mut Vec<u8>,
    ) {
        let Serving {
            instance,
            shared,
            admin,
            transport,
        } = *self;
        let start = output.len();
        match kind {
            protocol::Kind::Call if admin => {
                protocol::append_header(output, id, protocol::Status::Err);
                let refusal = RemoteError::BadRequest {
                    message: "an admin connection (no schema) may ping, ask for stats and shut down, not call"
                        .into(),
                };
                postcard::to_io(&refusal, &mut *output).expect("encoding into a Vec cannot fail");
            }
            protocol::Kind::Call => {
                let sample = run_call(instance, shared, id, body, output, read_at).await;
                if let Some(mut sample) = sample {
                    sample.bytes_in = bytes_in;
                    sample.bytes_out = output.len() - start;
                    metrics::lock(&shared.metrics).record(sample);
                }
            }
            protocol::Kind::Ping => {
                protocol::append_header(output, id, protocol::Status::Ok);
                let info = daemon_info(shared, transport);
                postcard::to_io(&info, &mut *output).expect("encoding into a Vec cannot fail");
            }
            protocol::Kind::Stats => {
                protocol::append_header(output, id, protocol::Status::Ok);
                let mut metrics = metrics::lock(&shared.metrics);
                let stats = metrics.snapshot(S::METHODS);
                if body.first() == Some(&1) {
                    metrics.zero();
                }
                drop(metrics);
                postcard::to_io(&stats, &mut *output).expect("encoding into a Vec cannot fail");
            }
            protocol::Kind::Shutdown => {
                log::emit(|| tracing::info!("shutdown requested by a client"));
                shared.shutting_down.store(true, Ordering::Release);
                shared.wake_front.notify_one();
                protocol::append_header(output, id, protocol::Status::Ok);
            }
        }
        protocol::close_frame(output, start);
    }
}

/// Runs one call on the instance and appends the reply (minus its length) to `output`:
/// the method's encoded return value, or the reason it has none. Returns what the
/// metrics record of it (bytes left to the caller), unless the body names no method.
pub(super) async fn run_call<S: Service>(
    instance: &Mutex<Option<S>>,
    shared: &Shared,
    id: u64,
    body: &[u8],
    output: &mut Vec<u8>,
    read_at: Instant,
) -> Option<Sample> {
    let status_at = protocol::append_header(output, id, protocol::Status::Ok);
    // The request enum's variant index comes first (a varint), whatever follows.
    let index = postcard::take_from_bytes::<u32>(body)
        .ok()
        .map(|(index, _)| index);
    let (mut queue, mut handler) = (None, None);
    let fault = match postcard::from_bytes::<S::Request>(body) {
        Err(error) => Some(RemoteError::BadRequest {
            message: error.to_string(),
        }),
        Ok(request) => {
            let mut guard = instance.lock().await;
            let locked_at = Instant::now();
            queue = Some(locked_at - read_at);
            match guard.as_mut() {
                None => Some(RemoteError::ShuttingDown),
                Some(service) => {
                    shared.calls_served.fetch_add(1, Ordering::Relaxed);
                    let out = &mut *output;
                    let outcome = match catch_unwind(AssertUnwindSafe(move || {
                        service.dispatch(request, out)
                    })) {
                        Ok(Dispatch::Ready(result)) => Ok(result),
                        Ok(Dispatch::Pending(future)) => CatchUnwind(future).await,
                        Err(panic) => Err(panic),
                    };
                    handler = Some(locked_at.elapsed());
                    match outcome {
                        Ok(Ok(())) => None,
                        Ok(Err(error)) => Some(RemoteError::BadReply {
                            message: error.to_string(),
                        }),
                        Err(panic) => {
                            let message = panic_message(&*panic);
                            let method = method_name::<S>(index);
                            log::emit(|| {
                                tracing::error!(
                                    method = %method.unwrap_or("?"),
                                    "a call panicked: {message}"
                                )
                            });
                            Some(RemoteError::Panic { message })
                        }
                    }
                }
            }
        }
    };
    let outcome = match &fault {
        None => Outcome::Ok,
        Some(RemoteError::Panic { .. }) => Outcome::Panic,
        Some(RemoteError::ShuttingDown) => Outcome::Refused,
        Some(_) => Outcome::Error,
    };
    log::call(method_name::<S>(index), &outcome, queue, handler);
    if let Some(fault) = fault {
        output.truncate(status_at + 1);
        output[status_at] = protocol::Status::Err.into();
        postcard::to_io(&fault, &mut *output).expect("encoding into a Vec cannot fail");
    }
    Some(Sample {
        index: index?,
        outcome,
        bytes_in: 0,
        bytes_out: 0,
        queue,
        handler,
    })
}

/// The name of the method a request's variant index names, if it names one.
fn method_name<S: Service>(index: Option<u32>) -> Option<&'static str> {
    S::METHODS.get(usize::try_from(index?).ok()?).copied()
}

/// What a ping on a connection of `transport` answers.
pub(super) fn daemon_info(shared: &Shared, transport: Transport) -> protocol::DaemonInfo {
    protocol::DaemonInfo {
        pid: shared.pid,
        instance: shared.instance,
        port: shared.port,
        uptime: shared.started.elapsed(),
        calls_served: shared.calls_served.load(Ordering::Relaxed),
        clients: shared.connections.load(Ordering::Relaxed),
        version: env!("CARGO_PKG_VERSION").to_string(),
        transport,
    }
}

/// Polls a future, turning a panic inside it into an error (for `async fn` methods).
pub(super) struct CatchUnwind<F>(F);

impl<F: Future + Unpin> Future for CatchUnwind<F> {
    type Output = Result<F::Output, Box<dyn Any + Send>>;

    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let inner = &mut self.0;
        match catch_unwind(AssertUnwindSafe(|| Pin::new(inner).poll(cx))) {
            Ok(Poll::Pending) => Poll::Pending,
            Ok(Poll::Ready(value)) => Poll::Ready(Ok(value)),
            Err(panic) => Poll::Ready(Err(panic)),
        }
    }
}
