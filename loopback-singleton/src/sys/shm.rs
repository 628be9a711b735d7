//! Shared memory between a daemon and one client: an anonymous region created by the
//! daemon, handed to the client over their Unix socket (`SCM_RIGHTS`), mapped by both.
//!
//! Why a descriptor passed over the socket rather than a file named in the runtime
//! directory: only the authenticated peer of that very connection ever holds it (no
//! name another process could open before it is unlinked, nothing left behind by a
//! crash), and where the system has `memfd_create` (Linux, FreeBSD) the region is
//! sealed against resizing. A peer that could shrink the region under the daemon's
//! mapping would make the daemon's next access fault (`SIGBUS`): a same-user client
//! must not be able to crash the daemon that way. macOS has no memfd: there the region
//! is a POSIX shared-memory object, unlinked as soon as it is created, whose size can
//! be set only once.
//!
//! The region is seen as a slice of `AtomicU64` words: the peer may write any word at
//! any time, and atomic loads and stores are what Rust defines for memory that another
//! party writes concurrently. What the words mean is `crate::shm`'s business.

use std::sync::atomic::AtomicU64;

/// A shared mapping of a region, unmapped on drop.
pub(crate) struct Mapping {
    #[cfg(unix)]
    addr: std::ptr::NonNull<AtomicU64>,
    words: usize,
}

// SAFETY: the mapping is only ever accessed through `&[AtomicU64]`, which is Sync.
unsafe impl Send for Mapping {}
// SAFETY: as above.
unsafe impl Sync for Mapping {}

impl std::ops::Deref for Mapping {
    type Target = [AtomicU64];

    fn deref(&self) -> &[AtomicU64] {
        #[cfg(unix)]
        // SAFETY: `addr` maps `words` words, readable and writable, page-aligned, for
        // as long as `self` lives; the peer may change them at any time, which atomics
        // allow.
        unsafe {
            std::slice::from_raw_parts(self.addr.as_ptr(), self.words)
        }
        #[cfg(not(unix))]
        &[][..self.words]
    }
}

#[cfg(unix)]
pub(crate) use unix::*;

#[cfg(unix)]
mod unix {
    use std::io::{self, IoSlice, IoSliceMut};
    use std::mem::MaybeUninit;
    use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
    use std::ptr::NonNull;
    use std::time::Duration;

    use rustix::mm::{MapFlags, ProtFlags};
    use rustix::net::{
        RecvAncillaryBuffer, RecvAncillaryMessage, RecvFlags, SendAncillaryBuffer,
        SendAncillaryMessage, SendFlags,
    };

    use super::Mapping;
    use crate::sys::{AsyncStream, Stream};

    /// What a region is handed over as.
    pub(crate) type RegionFd = OwnedFd;

    /// A new anonymous region of `bytes` bytes (zeroed), mapped, and its descriptor to
    /// hand to the peer.
    pub(crate) fn create_region(bytes: usize) -> io::Result<(Mapping, RegionFd)> {
        let fd = anonymous_file(bytes)?;
        let mapping = map(&fd, bytes)?;
        Ok((mapping, fd))
    }

    /// A sealed memfd: its size is fixed for whoever holds it.
    #[cfg(any(target_os = "linux", target_os = "android", target_os = "freebsd"))]
    fn anonymous_file(bytes: usize) -> io::Result<OwnedFd> {
        use rustix::fs::{MemfdFlags, SealFlags};
        let fd = rustix::fs::memfd_create(
            "loopback-singleton-shm",
            MemfdFlags::CLOEXEC | MemfdFlags::ALLOW_SEALING,
        )?;
        rustix::fs::ftruncate(&fd, bytes as u64)?;
        rustix::fs::fcntl_add_seals(&fd, SealFlags::SHRINK | SealFlags::GROW | SealFlags::SEAL)?;
        Ok(fd)
    }

    /// A POSIX shared-memory object under a random name, unlinked at once (the name
    /// exists for a few microseconds, `O_EXCL`, mode 0600); its size can be set once.
    #[cfg(not(any(target_os = "linux", target_os = "android", target_os = "freebsd")))]
    fn anonymous_file(bytes: usize) -> io::Result<OwnedFd> {
        use rustix::shm;
        let mut random = [0u8; 8];
        getrandom::fill(&mut random).map_err(|error| io::Error::other(error.to_string()))?;
        // macOS limits the name to 31 bytes.
        let name = format!("/lbs-{:016x}", u64::from_le_bytes(random));
        let fd = shm::open(
            &*name,
            shm::OFlags::CREATE | shm::OFlags::EXCL | shm::OFlags::RDWR,
            shm::Mode::from_raw_mode(0o600),
        )?;
        let _ = shm::unlink(&*name);
        rustix::io::fcntl_setfd(&fd, rustix::io::FdFlags::CLOEXEC)?;
        rustix::fs::ftruncate(&fd, bytes as u64)?;
        Ok(fd)
    }

    /// Maps a region received from the peer, after checking that it is what the
    /// protocol says: a regular file (a memfd or shared-memory object is one), owned
    /// by this user, of exactly `bytes` bytes; sealed against resizing where seals
    /// exist.
    pub(crate) fn map_received(fd: &RegionFd, bytes: usize) -> io::Result<Mapping> {
        let stat = rustix::fs::fstat(fd)?;
        let refuse = |why: &str| Err(io::Error::new(io::ErrorKind::InvalidData, why.to_string()));
        if rustix::fs::FileType::from_raw_mode(stat.st_mode as _)
            != rustix::fs::FileType::RegularFile
        {
            return refuse("the shared region is not a regular file");
        }
        if stat.st_uid != rustix::process::geteuid().as_raw() {
            return refuse("the shared region belongs to another user");
        }
        if u64::try_from(stat.st_size).ok() != Some(bytes as u64) {
            return refuse("the shared region has the wrong size");
        }
        #[cfg(any(target_os = "linux", target_os = "android", target_os = "freebsd"))]
        {
            use rustix::fs::SealFlags;
            let seals = rustix::fs::fcntl_get_seals(fd)?;
            if !seals.contains(SealFlags::SHRINK | SealFlags::GROW) {
                return refuse("the shared region is not sealed against resizing");
            }
        }
        map(fd, bytes)
    }

    fn map(fd: &OwnedFd, bytes: usize) -> io::Result<Mapping> {
        assert!(bytes > 0 && bytes % 8 == 0);
        // SAFETY: a fresh shared mapping of a file we hold, at an address of the
        // kernel's choosing; nothing else refers to that memory yet.
        let addr = unsafe {
            rustix::mm::mmap(
                std::ptr::null_mut(),
                bytes,
                ProtFlags::READ | ProtFlags::WRITE,
                MapFlags::SHARED,
                fd,
                0,
            )?
        };
        Ok(Mapping {
            addr: NonNull::new(addr.cast()).expect("mmap returns no null mapping"),
            words: bytes / 8,
        })
    }

    impl Drop for Mapping {
        fn drop(&mut self) {
            // SAFETY: unmaps exactly what `map` mapped; the slices borrowed from it
            // cannot outlive `self`.
            unsafe {
                let _ = rustix::mm::munmap(self.addr.as_ptr().cast(), self.words * 8);
            }
        }
    }

    /// Waits until `socket` has something to read (data, or its end: the peer closed
    /// or died), at most `timeout` (forever if `None`); `false` if the time passed.
    pub(crate) fn wait_socket(
        socket: BorrowedFd<'_>,
        timeout: Option<Duration>,
    ) -> io::Result<bool> {
        use rustix::event::{PollFd, PollFlags, Timespec};
        let timeout = timeout.map(|timeout| Timespec {
            tv_sec: timeout.as_secs().min(i32::MAX as u64) as _,
            tv_nsec: timeout.subsec_nanos() as _,
        });
        let mut fds = [PollFd::new(&socket, PollFlags::IN)];
        match rustix::event::poll(&mut fds, timeout.as_ref()) {
            Ok(ready) => Ok(ready > 0),
            Err(rustix::io::Errno::INTR) => Ok(false),
            Err(error) => Err(error.into()),
        }
    }

    /// Sends `fd` with one byte `tag` over a connected Unix socket.
    pub(crate) fn send_fd(socket: BorrowedFd<'_>, fd: &RegionFd, tag: u8) -> io::Result<()> {
        let fds = [fd.as_fd()];
        let mut space = [MaybeUninit::uninit(); rustix::cmsg_space!(ScmRights(1))];
        let mut control = SendAncillaryBuffer::new(&mut space);
        if !control.push(SendAncillaryMessage::ScmRights(&fds)) {
            return Err(io::Error::other("no room for SCM_RIGHTS"));
        }
        let sent = rustix::net::sendmsg(
            socket,
            &[IoSlice::new(&[tag])],
            &mut control,
            SendFlags::empty(),
        )?;
        if sent != 1 {
            return Err(io::ErrorKind::WriteZero.into());
        }
        Ok(())
    }

    /// Receives one byte and the descriptor sent with it, if any, over a connected
    /// Unix socket (blocking if the socket blocks). More than one is refused.
    pub(crate) fn recv_fd(socket: BorrowedFd<'_>) -> io::Result<(u8, Option<RegionFd>)> {
        let mut space = [MaybeUninit::uninit(); rustix::cmsg_space!(ScmRights(1))];
        let mut control = RecvAncillaryBuffer::new(&mut space);
        let mut byte = [0u8];
        #[cfg(any(target_os = "linux", target_os = "android", target_os = "freebsd"))]
        let flags = RecvFlags::CMSG_CLOEXEC;
        #[cfg(not(any(target_os = "linux", target_os = "android", target_os = "freebsd")))]
        let flags = RecvFlags::empty();
        let received = rustix::net::recvmsg(
            socket,
            &mut [IoSliceMut::new(&mut byte)],
            &mut control,
            flags,
        )?;
        if received.bytes == 0 {
            return Err(io::ErrorKind::UnexpectedEof.into());
        }
        let mut fds: Vec<OwnedFd> = Vec::new();
        for message in control.drain() {
            if let RecvAncillaryMessage::ScmRights(received) = message {
                fds.extend(received);
            }
        }
        if fds.len() > 1 {
            return Err(io::Error::new(
                io::ErrorKind::InvalidData,
                format!(
                    "expected one shared region, received {} descriptors",
                    fds.len()
                ),
            ));
        }
        let fd = fds.pop();
        #[cfg(not(any(target_os = "linux", target_os = "android", target_os = "freebsd")))]
        if let Some(fd) = &fd {
            rustix::io::fcntl_setfd(fd, rustix::io::FdFlags::CLOEXEC)?;
        }
        Ok((byte[0], fd))
    }

    impl Stream {
        /// Receives the region the daemon hands over: `Ok(None)` if it says it has
        /// none to give (tag 0).
        pub(crate) fn recv_region(&self) -> io::Result<Option<RegionFd>> {
            let Stream::Unix(socket) = self else {
                return Err(not_unix());
            };
            match recv_fd(socket.as_fd())? {
                (1, Some(fd)) => Ok(Some(fd)),
                (0, None) => Ok(None),
                _ => Err(io::Error::new(
                    io::ErrorKind::InvalidData,
                    "a malformed shared-region hand-over",
                )),
            }
        }

        /// Waits until the socket has something to read, or its end (see
        /// [`wait_socket`]).
        pub(crate) fn wait_readable(&self, timeout: Option<Duration>) -> io::Result<bool> {
            match self {
                Stream::Unix(socket) => wait_socket(socket.as_fd(), timeout),
                Stream::Tcp(socket) => wait_socket(socket.as_fd(), timeout),
            }
        }
    }

    impl AsyncStream {
        /// Hands `region` over (tag 1), or says there is none (tag 0).
        pub(crate) async fn send_region(&self, region: Option<&RegionFd>) -> io::Result<()> {
            let AsyncStream::Unix(socket) = self else {
                return Err(not_unix());
            };
            socket
                .async_io(tokio::io::Interest::WRITABLE, || match region {
                    Some(fd) => send_fd(socket.as_fd(), fd, 1),
                    None => rustix::net::send(socket, &[0], SendFlags::empty())
                        .map_err(io::Error::from)
                        .map(drop),
                })
                .await
        }
    }

    fn not_unix() -> io::Error {
        io::Error::new(
            io::ErrorKind::Unsupported,
            "shared memory is set up over a Unix socket",
        )
    }
}

/// Where shared memory is not available (Windows): every operation says so.
#[cfg(not(unix))]
pub(crate) use other::*;

#[cfg(not(unix))]
mod other {
    use std::io;

    use super::Mapping;

    /// No region can be handed over here.
    pub(crate) enum RegionFd {}

    fn unavailable<T>() -> io::Result<T> {
        Err(io::Error::new(
            io::ErrorKind::Unsupported,
            "shared memory needs a Unix socket to hand the region over",
        ))
    }

    pub(crate) fn create_region(_bytes: usize) -> io::Result<(Mapping, RegionFd)> {
        unavailable()
    }

    pub(crate) fn map_received(fd: &RegionFd, _bytes: usize) -> io::Result<Mapping> {
        match *fd {}
    }

    impl crate::sys::Stream {
        pub(crate) fn recv_region(&self) -> io::Result<Option<RegionFd>> {
            unavailable()
        }

        pub(crate) fn wait_readable(
            &self,
            _timeout: Option<std::time::Duration>,
        ) -> io::Result<bool> {
            unavailable()
        }
    }

    impl crate::sys::AsyncStream {
        pub(crate) async fn send_region(&self, _region: Option<&RegionFd>) -> io::Result<()> {
            unavailable()
        }
    }
}
