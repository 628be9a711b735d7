//! The daemon's side of a spawn: taking over what the launcher handed over, and
//! reporting readiness once.

use std::fs::File;
use std::io::Write;
use std::sync::atomic::Ordering;

use serde::{Deserialize, Serialize};

use super::{IN_DAEMON, Launch, MARKER_ENV, SpawnError};
use crate::protocol;
use crate::sys;

/// What a daemon reports over the readiness pipe, once.
#[derive(Debug, Serialize, Deserialize)]
pub(crate) enum Readiness {
    Ready { port: u16, pid: u32, instance: u64 },
    Failed { reason: String },
}

/// Parses the one readiness frame once `received` holds all of it.
pub(crate) fn parse(received: &[u8]) -> Result<Option<Readiness>, SpawnError> {
    if received.len() < 4 {
        return Ok(None);
    }
    let len = protocol::check_len(
        received[..4].try_into().expect("4 bytes"),
        protocol::MAX_HANDSHAKE_FRAME,
    )
    .map_err(|error| SpawnError::Failed(format!("bad readiness report: {error}")))?;
    if received.len() < 4 + len {
        return Ok(None);
    }
    protocol::decode("readiness report", &received[4..4 + len])
        .map(Some)
        .map_err(|error| SpawnError::Failed(error.to_string()))
}

/// The daemon's end of the readiness pipe, and the start lock it inherited. Reports
/// once, then lets the lock go; dropping it unreported closes the pipe, which the
/// client reads as "died before ready".
pub(crate) struct ReadySender {
    pipe: Option<File>,
    start_lock: Option<File>,
}

impl ReadySender {
    /// No pipe: a self-hosted daemon ([`Service::serve`](crate::Service::serve)).
    pub(crate) fn none() -> Self {
        ReadySender {
            pipe: None,
            start_lock: None,
        }
    }

    /// Reports readiness or failure. The daemon has published itself (or given up) by
    /// now, so the clients waiting for the start lock may look.
    pub(crate) fn send(&mut self, readiness: &Readiness) {
        if let Some(mut pipe) = self.pipe.take() {
            let mut frame = Vec::new();
            protocol::encode_frame(readiness, &mut frame);
            // The client may have given up already; nothing to do about that.
            let _ = pipe.write_all(&frame);
        }
        self.start_lock = None;
    }
}

/// If this process was launched as the daemon of `service_id`, takes the marker out of
/// the environment (so nothing this daemon spawns inherits it), marks the process as a
/// daemon, and returns the launch description and the readiness pipe.
///
/// Runs before `main`, while the process is single-threaded.
pub(crate) fn take_launch(service_id: &str) -> Option<(Result<Launch, String>, ReadySender)> {
    if std::env::var_os(MARKER_ENV)? != service_id {
        return None;
    }
    sys::remove_env_before_main(MARKER_ENV);
    IN_DAEMON.store(true, Ordering::Relaxed);
    let inherited = sys::take_inherited();
    let launch = inherited
        .launch
        .ok_or_else(|| "no launch description was handed over".to_string())
        .and_then(|file| {
            sys::read_from_start(&file)
                .map_err(|error| format!("reading the launch description: {error}"))
        })
        .and_then(|bytes| {
            postcard::from_bytes(&bytes).map_err(|error| format!("the launch description: {error}"))
        });
    let ready = ReadySender {
        pipe: inherited.ready,
        start_lock: inherited.start_lock,
    };
    Some((launch, ready))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn readiness_parses_only_whole_frames() {
        let mut frame = Vec::new();
        crate::protocol::encode_frame(
            &Readiness::Failed {
                reason: "boom".into(),
            },
            &mut frame,
        );
        assert!(matches!(parse(&frame[..frame.len() - 1]), Ok(None)));
        match parse(&frame) {
            Ok(Some(Readiness::Failed { reason })) => assert_eq!(reason, "boom"),
            other => panic!("{other:?}"),
        }
    }
}
