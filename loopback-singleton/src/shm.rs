//! The shared-memory transport's mechanism: one region per connection, shared by the
//! client and the daemon, with a request slot and a reply slot, and the socket the
//! connection was authenticated on as its doorbell. Small calls go through the slots;
//! anything else (a payload larger than a slot, pipelined batches) goes over the socket
//! as usual.
//!
//! Layout (64-bit little-endian words, each group in its own cache line):
//!
//! ```text
//! word  0     magic, word 1 slot size           written once by the daemon
//! word  8     request sequence, word 9 length   written by the client
//! word 16     daemon asleep (0/1)               written by the daemon
//! word 24     reply sequence, word 25 length    written by the daemon
//! word 32     client asleep (0/1)               written by the client
//! byte 512    request slot (SLOT_BYTES)         a request frame's payload
//! then        reply slot (SLOT_BYTES)           a reply frame's payload
//! ```
//!
//! A call: the client writes the request into its slot, then its length, then bumps
//! the request sequence; the daemon sees the new sequence, copies the request out,
//! runs it, writes the reply (or, if it does not fit, sends it as a frame on the
//! socket and writes the length `ON_SOCKET`) and sets the reply sequence to the
//! request's. Each side waits for the other by spinning a few microseconds (the other
//! is usually already on its way), then yielding a little longer, then sleeping on the
//! socket after saying so in its "asleep" word; the other side, after publishing,
//! writes an empty frame (the doorbell) on the socket only if that word says so. The
//! stores and loads of a sequence and of an "asleep" word are sequentially consistent,
//! so either the sleeper sees the new sequence before sleeping or the publisher sees
//! that it sleeps: no lost wake-up, and back-to-back calls make no system call.
//!
//! Sleeping on the socket rather than on a futex: the daemon's connections are tasks
//! of one tokio thread, which sleeps in its reactor on all of their sockets at once;
//! a peer that dies closes its socket, which wakes the sleeper with end-of-file, with
//! no liveness tick (an idle daemon and an idle client make no wake-up at all); and
//! it is the same on Linux, macOS and the BSDs.
//!
//! The peer is untrusted input: every sequence and length is read once, checked, and
//! the payload copied out before it is decoded; a region that breaks the rules is a
//! [`ProtocolError`], and the connection is dropped. The region's words are atomics, so
//! whatever the peer writes, whenever, is defined behaviour here.

use std::io::{self, BufRead, BufReader, Read, Write};
use std::ops::Deref;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use crate::protocol::{self, FrameError, ProtocolError};

/// Bytes of each slot: requests and replies up to this size (frame payloads, without
/// their length prefix) go through shared memory, larger ones over the socket.
pub(crate) const SLOT_BYTES: usize = 16 << 10;
const HEADER_WORDS: usize = 64;
const SLOT_WORDS: usize = SLOT_BYTES / 8;
/// Bytes of a region.
pub(crate) const REGION_BYTES: usize = (HEADER_WORDS + 2 * SLOT_WORDS) * 8;

const MAGIC_AT: usize = 0;
const SLOT_SIZE_AT: usize = 1;
const REQUEST_SEQ: usize = 8;
const REQUEST_LEN: usize = 9;
const DAEMON_ASLEEP: usize = 16;
const REPLY_SEQ: usize = 24;
const REPLY_LEN: usize = 25;
const CLIENT_ASLEEP: usize = 32;
const MAGIC: u64 = u64::from_le_bytes(*b"LBSSHM01");
/// The reply length that means "the reply is a frame on the socket".
const ON_SOCKET: u64 = u64::MAX;

/// How long a waiter spins before it starts yielding its core.
const SPIN: Duration = Duration::from_micros(5);
/// How long a waiter spins and yields in all before it sleeps on the socket (at most:
/// see [`Spinner`]).
const SPIN_AND_YIELD: Duration = Duration::from_micros(50);
/// A budget below this is no budget.
const MIN_SPIN: Duration = Duration::from_micros(2);

fn garbage(reason: impl Into<String>) -> ProtocolError {
    ProtocolError::Malformed {
        what: "shared region",
        reason: reason.into(),
    }
}

/// Which side of the connection.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Side {
    Client,
    Daemon,
}

impl Side {
    fn asleep_at(self) -> usize {
        match self {
            Side::Client => CLIENT_ASLEEP,
            Side::Daemon => DAEMON_ASLEEP,
        }
    }
}

/// Where a reply is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Reply {
    /// Copied out of the reply slot.
    Slot,
    /// It is the next non-empty frame on the socket.
    Socket,
}

/// A region's words seen through the protocol above.
pub(crate) struct Region<M> {
    mem: M,
}

impl<M: Deref<Target = [AtomicU64]>> Region<M> {
    /// The creator's view of a fresh (zeroed) region: writes the header.
    pub(crate) fn init(mem: M) -> Self {
        assert_eq!(mem.len() * 8, REGION_BYTES);
        mem[MAGIC_AT].store(MAGIC, Ordering::Relaxed);
        mem[SLOT_SIZE_AT].store(SLOT_BYTES as u64, Ordering::Release);
        Region { mem }
    }

    /// The other side's view of a region it received: checks its size and header.
    pub(crate) fn open(mem: M) -> Result<Self, ProtocolError> {
        if mem.len() * 8 != REGION_BYTES {
            return Err(garbage(format!("{} bytes", mem.len() * 8)));
        }
        let slot = mem[SLOT_SIZE_AT].load(Ordering::Acquire);
        if mem[MAGIC_AT].load(Ordering::Relaxed) != MAGIC || slot != SLOT_BYTES as u64 {
            return Err(garbage("bad magic or slot size"));
        }
        Ok(Region { mem })
    }

    fn word(&self, at: usize) -> &AtomicU64 {
        &self.mem[at]
    }

    fn slot(&self, side: Side) -> &[AtomicU64] {
        let start = match side {
            Side::Client => HEADER_WORDS,
            Side::Daemon => HEADER_WORDS + SLOT_WORDS,
        };
        &self.mem[start..start + SLOT_WORDS]
    }

    /// Whether a payload of `len` bytes fits a slot.
    pub(crate) fn fits(len: usize) -> bool {
        len <= SLOT_BYTES
    }

    fn write_slot(&self, side: Side, payload: &[u8]) {
        let slot = self.slot(side);
        for (word, chunk) in slot.iter().zip(payload.chunks(8)) {
            let mut bytes = [0u8; 8];
            bytes[..chunk.len()].copy_from_slice(chunk);
            word.store(u64::from_le_bytes(bytes), Ordering::Relaxed);
        }
    }

    /// Copies `len` bytes out of a slot (`len` already checked against its size).
    fn read_slot(&self, side: Side, len: usize, out: &mut Vec<u8>) {
        out.clear();
        for word in &self.slot(side)[..len.div_ceil(8)] {
            out.extend_from_slice(&word.load(Ordering::Relaxed).to_le_bytes());
        }
        out.truncate(len);
    }

    /// Publishes `payload` (which must fit) with sequence `seq`, then tells whether the
    /// other side sleeps (and must be woken through the socket).
    fn publish(&self, from: Side, seq: u64, len: u64, payload: &[u8]) -> bool {
        let (seq_at, len_at, other) = match from {
            Side::Client => (REQUEST_SEQ, REQUEST_LEN, Side::Daemon),
            Side::Daemon => (REPLY_SEQ, REPLY_LEN, Side::Client),
        };
        self.write_slot(from, payload);
        self.word(len_at).store(len, Ordering::Relaxed);
        self.word(seq_at).store(seq, Ordering::SeqCst);
        self.word(other.asleep_at()).load(Ordering::SeqCst) != 0
    }

    /// Client: posts request `seq` (the previous one plus one; it must fit a slot).
    /// Returns whether the daemon sleeps and needs the doorbell.
    pub(crate) fn post_request(&self, seq: u64, payload: &[u8]) -> bool {
        assert!(Self::fits(payload.len()));
        self.publish(Side::Client, seq, payload.len() as u64, payload)
    }

    /// Daemon: posts the reply to request `seq`, or says it went over the socket
    /// (`None`). Returns whether the client sleeps and needs the doorbell.
    pub(crate) fn post_reply(&self, seq: u64, payload: Option<&[u8]>) -> bool {
        match payload {
            Some(payload) => {
                assert!(Self::fits(payload.len()));
                self.publish(Side::Daemon, seq, payload.len() as u64, payload)
            }
            None => self.publish(Side::Daemon, seq, ON_SOCKET, &[]),
        }
    }

    /// Daemon: the request after request `last`, copied into `out`, if the client has
    /// posted it. Any other sequence, or a length beyond the slot, is garbage; one
    /// beyond `limit` (the daemon's frame limit) too large.
    pub(crate) fn take_request(
        &self,
        last: u64,
        limit: u32,
        out: &mut Vec<u8>,
    ) -> Result<bool, ProtocolError> {
        let seq = self.word(REQUEST_SEQ).load(Ordering::SeqCst);
        if seq == last {
            return Ok(false);
        }
        if seq != last.wrapping_add(1) {
            return Err(garbage(format!("request sequence {seq} after {last}")));
        }
        let len = self.word(REQUEST_LEN).load(Ordering::Relaxed);
        if len > SLOT_BYTES as u64 {
            return Err(garbage(format!(
                "request of {len} bytes in a slot of {SLOT_BYTES}"
            )));
        }
        if len > u64::from(limit) {
            return Err(ProtocolError::FrameTooLarge {
                len,
                limit: limit.into(),
            });
        }
        self.read_slot(Side::Client, len as usize, out);
        Ok(true)
    }

    /// Client: the reply to request `seq`, if the daemon has posted it (copied into
    /// `out` when it is in the slot; one beyond `limit`, the client's frame limit, is
    /// too large).
    pub(crate) fn take_reply(
        &self,
        seq: u64,
        limit: u32,
        out: &mut Vec<u8>,
    ) -> Result<Option<Reply>, ProtocolError> {
        let posted = self.word(REPLY_SEQ).load(Ordering::SeqCst);
        if posted == seq.wrapping_sub(1) {
            return Ok(None);
        }
        if posted != seq {
            return Err(garbage(format!(
                "reply sequence {posted} for request {seq}"
            )));
        }
        match self.word(REPLY_LEN).load(Ordering::Relaxed) {
            ON_SOCKET => Ok(Some(Reply::Socket)),
            len if len <= SLOT_BYTES as u64 && len > u64::from(limit) => {
                Err(ProtocolError::FrameTooLarge {
                    len,
                    limit: limit.into(),
                })
            }
            len if len <= SLOT_BYTES as u64 => {
                self.read_slot(Side::Daemon, len as usize, out);
                Ok(Some(Reply::Slot))
            }
            len => Err(garbage(format!(
                "reply of {len} bytes in a slot of {SLOT_BYTES}"
            ))),
        }
    }

    /// Says that `side` is about to sleep on the socket. The caller then checks once
    /// more for what it waits for before sleeping.
    pub(crate) fn going_to_sleep(&self, side: Side) {
        self.word(side.asleep_at()).store(1, Ordering::SeqCst);
    }

    /// Says that `side` is awake (spinning or working).
    pub(crate) fn awake(&self, side: Side) {
        self.word(side.asleep_at()).store(0, Ordering::Relaxed);
    }
}

/// How long a side spins before sleeping, adapted to what spinning brought lately. A
/// wait the peer answered while spinning restores the full budget; one that ended in
/// sleep anyway halves it, down to none after a few. That is what makes two processes
/// on one core (where the peer cannot run while this side spins) sleep at once instead
/// of burning their shared core, and an idle-between-calls peer cost no spinning; every
/// 16th wait without a budget spins briefly again, to notice when spinning pays again.
pub(crate) struct Spinner {
    budget: Duration,
    waits_without: u32,
}

impl Spinner {
    pub(crate) fn new() -> Self {
        Spinner {
            budget: SPIN_AND_YIELD,
            waits_without: 0,
        }
    }

    /// Spins on `check` for up to [`SPIN`], then spins and yields the core, for the
    /// current budget in all; `None` if nothing came in that time (then sleep).
    pub(crate) fn spin<T, E>(
        &mut self,
        mut check: impl FnMut() -> Result<Option<T>, E>,
    ) -> Result<Option<T>, E> {
        let budget = if self.budget.is_zero() {
            self.waits_without = self.waits_without.wrapping_add(1);
            if self.waits_without % 16 != 0 {
                return check();
            }
            SPIN
        } else {
            self.budget
        };
        let start = Instant::now();
        loop {
            for _ in 0..32 {
                if let Some(found) = check()? {
                    self.budget = SPIN_AND_YIELD;
                    return Ok(Some(found));
                }
                std::hint::spin_loop();
            }
            let spent = start.elapsed();
            if spent >= budget {
                self.budget /= 2;
                if self.budget < MIN_SPIN {
                    self.budget = Duration::ZERO;
                }
                return Ok(None);
            }
            if spent >= SPIN {
                std::thread::yield_now();
            }
        }
    }
}

/// The empty frame that rings the doorbell.
pub(crate) const DOORBELL: [u8; 4] = [0; 4];

/// Why a client's wait for a reply ended without one.
#[derive(Debug)]
pub(crate) enum WaitError {
    /// The socket failed or closed (the daemon died): the connection is lost.
    Io(io::Error),
    /// The deadline passed.
    Timeout,
    /// The region or the socket broke the protocol.
    Protocol(ProtocolError),
}

impl From<FrameError> for WaitError {
    fn from(error: FrameError) -> Self {
        match error {
            FrameError::Io(error) => WaitError::Io(error),
            FrameError::Protocol(error) => WaitError::Protocol(error),
        }
    }
}

/// The client's half of a shared-memory connection.
pub(crate) struct ClientEnd<M> {
    region: Region<M>,
    seq: u64,
    spinner: Spinner,
}

impl<M: Deref<Target = [AtomicU64]>> ClientEnd<M> {
    /// Over a region received from the daemon (checked).
    pub(crate) fn new(mem: M) -> Result<Self, ProtocolError> {
        Ok(ClientEnd {
            region: Region::open(mem)?,
            seq: 0,
            spinner: Spinner::new(),
        })
    }

    /// One call through the region: `request` is a request frame's payload (which must
    /// fit a slot); the reply frame's payload replaces the content of `out`. `socket`
    /// is the connection's socket (doorbells in both directions, a reply too large
    /// for the slot), `wait_readable` waits until it has something to read or the time
    /// given passes (`false`), `deadline` bounds the whole wait.
    pub(crate) fn call<S>(
        &mut self,
        request: &[u8],
        socket: &mut BufReader<S>,
        wait_readable: impl Fn(&S, Option<Duration>) -> io::Result<bool>,
        deadline: Option<Instant>,
        max_frame: u32,
        out: &mut Vec<u8>,
    ) -> Result<(), WaitError>
    where
        S: Read,
        for<'a> &'a S: Write,
    {
        self.seq = self.seq.wrapping_add(1);
        let seq = self.seq;
        if self.region.post_request(seq, request) {
            socket
                .get_ref()
                .write_all(&DOORBELL)
                .map_err(WaitError::Io)?;
        }
        let region = &self.region;
        // The sleeping path reads a reply frame that wakes it: it returns `Slot`.
        let found = match self
            .spinner
            .spin(|| region.take_reply(seq, max_frame, out))
            .map_err(WaitError::Protocol)?
        {
            Some(found) => found,
            None => self.sleep_for_reply(socket, &wait_readable, deadline, max_frame, out)?,
        };
        if found == Reply::Socket {
            next_frame(socket, out, max_frame)?;
        }
        Ok(())
    }

    fn sleep_for_reply<S: Read>(
        &self,
        socket: &mut BufReader<S>,
        wait_readable: &impl Fn(&S, Option<Duration>) -> io::Result<bool>,
        deadline: Option<Instant>,
        max_frame: u32,
        out: &mut Vec<u8>,
    ) -> Result<Reply, WaitError> {
        let region = &self.region;
        loop {
            region.going_to_sleep(Side::Client);
            if let Some(found) = region
                .take_reply(self.seq, max_frame, out)
                .map_err(WaitError::Protocol)?
            {
                region.awake(Side::Client);
                return Ok(found);
            }
            if socket.buffer().is_empty() {
                let left = match deadline {
                    Some(deadline) => match deadline.checked_duration_since(Instant::now()) {
                        Some(left) => Some(left),
                        None => return Err(WaitError::Timeout),
                    },
                    None => None,
                };
                if !wait_readable(socket.get_ref(), left).map_err(WaitError::Io)? {
                    continue;
                }
            }
            region.awake(Side::Client);
            // A doorbell, a reply too large for the slot (announced in the region
            // before it was written), or the end of the connection (the daemon is gone).
            protocol::read_frame(socket, out, max_frame)?;
            if !out.is_empty() {
                let mut slot = Vec::new();
                return match region.take_reply(self.seq, max_frame, &mut slot) {
                    Ok(Some(Reply::Socket)) => Ok(Reply::Slot),
                    Err(error) => Err(WaitError::Protocol(error)),
                    Ok(_) => Err(WaitError::Protocol(ProtocolError::Unexpected(
                        "a frame on the socket while a call waits in shared memory".into(),
                    ))),
                };
            }
        }
    }
}

/// Reads the next non-empty frame into `out`, skipping doorbells.
pub(crate) fn next_frame(
    socket: &mut impl BufRead,
    out: &mut Vec<u8>,
    max_frame: u32,
) -> Result<(), FrameError> {
    loop {
        protocol::read_frame(socket, out, max_frame)?;
        if !out.is_empty() {
            return Ok(());
        }
    }
}

/// What woke the daemon's half of a connection.
#[derive(Debug, PartialEq, Eq)]
pub(crate) enum Event {
    /// A request from the slot, now in the buffer.
    Slot,
    /// A request frame from the socket, now in the buffer.
    Frame,
}

/// The daemon's half of a shared-memory connection.
pub(crate) struct DaemonEnd<M> {
    region: Region<M>,
    /// The sequence of the last request taken from the slot.
    seq: u64,
    /// Whether the last request came through the slot: only then is the next one
    /// worth spinning for (a client that uses the socket, such as the async client,
    /// would only make the daemon spin in vain).
    spin: bool,
    spinner: Spinner,
}

impl<M: Deref<Target = [AtomicU64]>> DaemonEnd<M> {
    /// Over a region this daemon created.
    pub(crate) fn new(mem: M) -> Self {
        DaemonEnd {
            region: Region::init(mem),
            seq: 0,
            spin: true,
            spinner: Spinner::new(),
        }
    }

    /// The next request, from the slot or from the socket, into `buf`. After a request
    /// through the slot, spins a few microseconds first (blocking the thread: the
    /// client's next call usually follows its last reply closely), then sleeps on the
    /// socket. `Ok(None)`: the client closed the connection.
    pub(crate) async fn next<R>(
        &mut self,
        socket: &mut tokio::io::BufReader<R>,
        max_frame: u32,
        buf: &mut Vec<u8>,
    ) -> Result<Option<Event>, ProtocolError>
    where
        R: tokio::io::AsyncRead + Unpin,
    {
        let region = &self.region;
        let last = self.seq;
        if socket.buffer().is_empty()
            && self
                .spinner
                .spin(|| {
                    region
                        .take_request(last, max_frame, buf)
                        .map(|got| got.then_some(()))
                })?
                .is_some()
        {
            self.seq = last.wrapping_add(1);
            return Ok(Some(Event::Slot));
        }
        loop {
            region.going_to_sleep(Side::Daemon);
            if region.take_request(last, max_frame, buf)? {
                region.awake(Side::Daemon);
                self.seq = last.wrapping_add(1);
                self.spin = true;
                return Ok(Some(Event::Slot));
            }
            let read = protocol::read_frame_async(socket, buf, max_frame).await;
            region.awake(Side::Daemon);
            match read {
                Ok(()) if buf.is_empty() => continue,
                Ok(()) => {
                    self.spin = false;
                    return Ok(Some(Event::Frame));
                }
                Err(FrameError::Io(_)) => return Ok(None),
                Err(FrameError::Protocol(error)) => return Err(error),
            }
        }
    }

    /// Answers the request last taken from the slot: `reply` is the reply frame's
    /// payload. One that does not fit the slot is announced in the region here and
    /// must then be written on the socket as a frame (which also wakes a sleeping
    /// client).
    pub(crate) fn reply(&self, reply: &[u8]) -> Outgoing {
        if Region::<M>::fits(reply.len()) {
            Outgoing::Slot {
                ring: self.region.post_reply(self.seq, Some(reply)),
            }
        } else {
            self.region.post_reply(self.seq, None);
            Outgoing::Socket
        }
    }
}

/// Where a reply to a slot request goes.
#[derive(Debug, PartialEq, Eq)]
pub(crate) enum Outgoing {
    /// Posted in the slot; ring the doorbell if `ring`.
    Slot { ring: bool },
    /// Too large: write it as a frame on the socket.
    Socket,
}

#[cfg(all(test, unix))]
mod tests;
