//! Serving a connection whose client asked for shared memory (see [`crate::shm`]): the
//! region is handed over on the authenticated Unix socket, then small calls come
//! through it and anything else over the socket, all on the instance thread like any
//! other connection.
//!
//! The wait for a connection's next call spins on the instance thread for a few tens
//! of microseconds before sleeping on the socket: a client making calls back to back
//! gets its next one taken without a system call or a thread hop, and one call at a
//! time holds as it does for every connection (calls run on this one thread, under the
//! instance's lock). The cost is that other connections wait up to that spin when one
//! shm client pauses.

use std::time::Instant;

use tokio::io::{AsyncReadExt, AsyncWriteExt, BufReader};

use crate::protocol;
use crate::service::Service;
use crate::shm::{self, DaemonEnd, Event, Outgoing};
use crate::sys;

use super::instance::{Buffers, Serving};
use super::log;

/// Hands the region over, then serves calls until the client leaves or breaks the
/// protocol (logged; the connection is closed).
pub(super) async fn serve<S: Service>(mut stream: sys::AsyncStream, serving: &Serving<'_, S>) {
    // The client asks with a doorbell once it has read the verdict: the region goes
    // out only then, so that no buffered read of the verdict can swallow it (a plain
    // read drops the descriptor that comes with a byte).
    let mut ask = [0xff; 4];
    if stream.read_exact(&mut ask).await.is_err() || ask != shm::DOORBELL {
        return;
    }
    // The descriptor is closed once sent: the mapping keeps the region.
    let mut end = {
        let (mapping, fd) = match sys::create_region(shm::REGION_BYTES) {
            Ok(region) => region,
            Err(error) => {
                log::emit(|| tracing::error!(%error, "cannot create a shared-memory region"));
                let _ = stream.send_region(None).await;
                return;
            }
        };
        let end = DaemonEnd::new(mapping);
        if stream.send_region(Some(&fd)).await.is_err() {
            return;
        }
        end
    };
    let (reader, mut writer) = stream.into_split();
    let mut reader = BufReader::with_capacity(64 << 10, reader);
    let max_frame = serving.shared.options.max_frame;
    let mut buffers = Buffers {
        input: Vec::with_capacity(4096),
        output: Vec::with_capacity(4096),
    };
    loop {
        let Buffers { input, output } = &mut buffers;
        let event = match end.next(&mut reader, max_frame, input).await {
            Ok(Some(event)) => event,
            Ok(None) => return,
            Err(error) => {
                log::emit(|| tracing::warn!(%error, "closing a shared-memory connection"));
                return;
            }
        };
        let read_at = Instant::now();
        let (id, kind, body) = match protocol::split_request(input) {
            Ok(header) => header,
            Err(error) => {
                log::emit(|| tracing::warn!(%error, "closing a shared-memory connection"));
                return;
            }
        };
        output.clear();
        serving
            .answer(id, kind, body, input.len() + 4, read_at, output)
            .await;
        let sent = match event {
            Event::Frame => writer.write_all(output).await,
            // The reply frame without its length prefix, as the request came.
            Event::Slot => match end.reply(&output[4..]) {
                Outgoing::Slot { ring: false } => Ok(()),
                Outgoing::Slot { ring: true } => writer.write_all(&shm::DOORBELL).await,
                Outgoing::Socket => writer.write_all(output).await,
            },
        };
        if sent.is_err() {
            return;
        }
        buffers.trim();
        // A client whose next call always arrives while this task spins would never
        // let the thread go: tokio's cooperative budget makes it yield now and then,
        // so other connections are served too.
        tokio::task::consume_budget().await;
    }
}
