//! Byte streams between client and daemon over TCP or a Unix-domain socket: blocking
//! ([`Stream`]) and under tokio ([`AsyncStream`], its owned halves, [`Listeners`]), so
//! that the client and the host are written once for both. Also the Unix socket's
//! platform parts: binding and connecting through the runtime directory's handle (its
//! path may not fit in `sun_path`), and the peer's uid from the kernel.
//!
//! Where there are no Unix sockets (Windows), only the TCP variants exist, and binding
//! or connecting a Unix socket fails with `Unsupported`.

use std::io::{self, Read, Write};
use std::net::TcpStream;
use std::path::Path;
use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::Duration;

use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};

use super::DirHandle;

/// Whether this platform has Unix-domain sockets (the `unix` transport).
pub(crate) const UNIX_SOCKETS: bool = cfg!(unix);

/// A connected stream, blocking.
#[derive(Debug)]
pub(crate) enum Stream {
    Tcp(TcpStream),
    #[cfg(unix)]
    Unix(std::os::unix::net::UnixStream),
}

/// Runs `$body` with `$s` bound to the inner stream of whichever variant `$value` is.
macro_rules! each {
    ($ty:ident, $value:expr, $s:ident => $body:expr) => {
        match $value {
            $ty::Tcp($s) => $body,
            #[cfg(unix)]
            $ty::Unix($s) => $body,
        }
    };
}

impl Stream {
    pub(crate) fn set_read_timeout(&self, timeout: Option<Duration>) -> io::Result<()> {
        each!(Stream, self, s => s.set_read_timeout(timeout))
    }

    pub(crate) fn set_write_timeout(&self, timeout: Option<Duration>) -> io::Result<()> {
        each!(Stream, self, s => s.set_write_timeout(timeout))
    }

    /// Disables Nagle's algorithm on TCP; nothing to do on a Unix socket.
    pub(crate) fn set_nodelay(&self) -> io::Result<()> {
        match self {
            Stream::Tcp(s) => s.set_nodelay(true),
            #[cfg(unix)]
            Stream::Unix(_) => Ok(()),
        }
    }

    /// The uid of the process at the other end of a Unix socket (as the kernel recorded
    /// it when the connection was made); `None` on TCP, which carries no credentials.
    pub(crate) fn peer_uid(&self) -> io::Result<Option<u32>> {
        match self {
            Stream::Tcp(_) => Ok(None),
            #[cfg(unix)]
            Stream::Unix(s) => unix::peer_uid(s).map(Some),
        }
    }

    /// The same connection under tokio (from within a runtime).
    pub(crate) fn into_async(self) -> io::Result<AsyncStream> {
        each!(Stream, &self, s => s.set_nonblocking(true))?;
        Ok(match self {
            Stream::Tcp(s) => AsyncStream::Tcp(tokio::net::TcpStream::from_std(s)?),
            #[cfg(unix)]
            Stream::Unix(s) => AsyncStream::Unix(tokio::net::UnixStream::from_std(s)?),
        })
    }
}

impl Read for &Stream {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        each!(Stream, *self, s => (&*s).read(buf))
    }
}

impl Write for &Stream {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        each!(Stream, *self, s => (&*s).write(buf))
    }

    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

impl Read for Stream {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        (&*self).read(buf)
    }
}

impl Write for Stream {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        (&*self).write(buf)
    }

    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

/// A connected stream under tokio.
#[derive(Debug)]
pub(crate) enum AsyncStream {
    Tcp(tokio::net::TcpStream),
    #[cfg(unix)]
    Unix(tokio::net::UnixStream),
}

impl AsyncStream {
    /// Back to a blocking stream (left in non-blocking mode, for another runtime to take).
    pub(crate) fn into_std(self) -> io::Result<Stream> {
        Ok(match self {
            AsyncStream::Tcp(s) => Stream::Tcp(s.into_std()?),
            #[cfg(unix)]
            AsyncStream::Unix(s) => Stream::Unix(s.into_std()?),
        })
    }

    /// Owned read and write halves, for two tasks.
    pub(crate) fn into_split(self) -> (ReadHalf, WriteHalf) {
        match self {
            AsyncStream::Tcp(s) => {
                let (read, write) = s.into_split();
                (ReadHalf::Tcp(read), WriteHalf::Tcp(write))
            }
            #[cfg(unix)]
            AsyncStream::Unix(s) => {
                let (read, write) = s.into_split();
                (ReadHalf::Unix(read), WriteHalf::Unix(write))
            }
        }
    }

    /// See [`Stream::peer_uid`].
    pub(crate) fn peer_uid(&self) -> io::Result<Option<u32>> {
        match self {
            AsyncStream::Tcp(_) => Ok(None),
            #[cfg(unix)]
            AsyncStream::Unix(s) => unix::peer_uid(s).map(Some),
        }
    }

    /// Whether this is a Unix-domain socket.
    pub(crate) fn is_unix(&self) -> bool {
        !matches!(self, AsyncStream::Tcp(_))
    }
}

impl AsyncRead for AsyncStream {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        each!(AsyncStream, self.get_mut(), s => Pin::new(s).poll_read(cx, buf))
    }
}

impl AsyncWrite for AsyncStream {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        each!(AsyncStream, self.get_mut(), s => Pin::new(s).poll_write(cx, buf))
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        each!(AsyncStream, self.get_mut(), s => Pin::new(s).poll_flush(cx))
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        each!(AsyncStream, self.get_mut(), s => Pin::new(s).poll_shutdown(cx))
    }
}

/// The read half of an [`AsyncStream`].
#[derive(Debug)]
pub(crate) enum ReadHalf {
    Tcp(tokio::net::tcp::OwnedReadHalf),
    #[cfg(unix)]
    Unix(tokio::net::unix::OwnedReadHalf),
}

impl AsyncRead for ReadHalf {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        each!(ReadHalf, self.get_mut(), s => Pin::new(s).poll_read(cx, buf))
    }
}

/// The write half of an [`AsyncStream`].
#[derive(Debug)]
pub(crate) enum WriteHalf {
    Tcp(tokio::net::tcp::OwnedWriteHalf),
    #[cfg(unix)]
    Unix(tokio::net::unix::OwnedWriteHalf),
}

impl AsyncWrite for WriteHalf {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        each!(WriteHalf, self.get_mut(), s => Pin::new(s).poll_write(cx, buf))
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        each!(WriteHalf, self.get_mut(), s => Pin::new(s).poll_flush(cx))
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        each!(WriteHalf, self.get_mut(), s => Pin::new(s).poll_shutdown(cx))
    }
}

/// A bound Unix-domain listening socket (none can exist where there are no Unix
/// sockets).
#[cfg(unix)]
pub(crate) type UnixListener = std::os::unix::net::UnixListener;
/// A bound Unix-domain listening socket (none can exist where there are no Unix
/// sockets).
#[cfg(not(unix))]
#[derive(Debug)]
pub(crate) enum UnixListener {}

/// A daemon's listening sockets under tokio: TCP always, a Unix socket where it has one.
pub(crate) struct Listeners {
    tcp: tokio::net::TcpListener,
    #[cfg(unix)]
    unix: Option<tokio::net::UnixListener>,
}

impl Listeners {
    /// Registers the sockets with tokio (from within a runtime).
    pub(crate) fn new(tcp: std::net::TcpListener, unix: Option<UnixListener>) -> io::Result<Self> {
        tcp.set_nonblocking(true)?;
        #[cfg(not(unix))]
        let _ = unix;
        Ok(Listeners {
            tcp: tokio::net::TcpListener::from_std(tcp)?,
            #[cfg(unix)]
            unix: match unix {
                Some(unix) => {
                    unix.set_nonblocking(true)?;
                    Some(tokio::net::UnixListener::from_std(unix)?)
                }
                None => None,
            },
        })
    }

    /// The next connection on either socket (TCP with Nagle's algorithm off).
    pub(crate) async fn accept(&self) -> io::Result<AsyncStream> {
        #[cfg(unix)]
        if let Some(unix) = &self.unix {
            return tokio::select! {
                accepted = self.tcp.accept() => accept_tcp(accepted),
                accepted = unix.accept() => accepted.map(|(stream, _)| AsyncStream::Unix(stream)),
            };
        }
        accept_tcp(self.tcp.accept().await)
    }
}

fn accept_tcp(
    accepted: io::Result<(tokio::net::TcpStream, std::net::SocketAddr)>,
) -> io::Result<AsyncStream> {
    let (stream, _) = accepted?;
    let _ = stream.set_nodelay(true);
    Ok(AsyncStream::Tcp(stream))
}

/// Binds a Unix socket named `name` in the directory open at `dir` (whose path is
/// `path`), mode 0600. See [`connect_unix_at`] for how a long path is handled.
pub(crate) fn bind_unix_at(dir: &DirHandle, path: &Path, name: &str) -> io::Result<UnixListener> {
    #[cfg(unix)]
    {
        let listener = unix::with_address(dir, path, name, |address| {
            std::os::unix::net::UnixListener::bind(address)
        })?;
        unix::make_private(dir, name)?;
        Ok(listener)
    }
    #[cfg(not(unix))]
    {
        let _ = (dir, path, name);
        Err(no_unix_sockets())
    }
}

/// Connects to the Unix socket `name` in the directory open at `dir` (whose path is
/// `path`). On Linux and Android the address goes through the directory's handle
/// (`/proc/self/fd/<fd>/<name>`): the directory checked is the directory used, and its
/// path may be of any length. Elsewhere the path is used, and one longer than
/// `sun_path` holds (104 bytes on macOS and the BSDs) fails with `InvalidInput`.
/// A listener whose backlog is full makes the connect wait (on Linux) at most
/// `timeout`, then fail with `WouldBlock`.
pub(crate) fn connect_unix_at(
    dir: &DirHandle,
    path: &Path,
    name: &str,
    timeout: Duration,
) -> io::Result<Stream> {
    #[cfg(unix)]
    {
        unix::with_address(dir, path, name, |address| unix::connect(address, timeout))
            .map(Stream::Unix)
    }
    #[cfg(not(unix))]
    {
        let _ = (dir, path, name, timeout);
        Err(no_unix_sockets())
    }
}

#[cfg(not(unix))]
fn no_unix_sockets() -> io::Error {
    io::Error::new(
        io::ErrorKind::Unsupported,
        "this platform has no Unix-domain sockets",
    )
}

#[cfg(unix)]
mod unix {
    use std::io;
    use std::os::fd::AsFd;
    use std::os::unix::net::UnixStream;
    use std::path::{Path, PathBuf};
    use std::time::Duration;

    use super::DirHandle;

    /// What `sun_path` holds, its final NUL excluded (104 on macOS and the BSDs, 108 on
    /// Linux).
    fn sun_path_capacity() -> usize {
        // SAFETY: sockaddr_un is plain old data; all zeroes is a valid value.
        let address: libc::sockaddr_un = unsafe { std::mem::zeroed() };
        address.sun_path.len() - 1
    }

    /// Runs `call` with an address of `name` in `dir` (see `connect_unix_at`).
    pub(super) fn with_address<T>(
        dir: &DirHandle,
        path: &Path,
        name: &str,
        call: impl Fn(&Path) -> io::Result<T>,
    ) -> io::Result<T> {
        #[cfg(any(target_os = "linux", target_os = "android"))]
        {
            use std::os::fd::AsRawFd;
            let through_handle = PathBuf::from(format!("/proc/self/fd/{}/{name}", dir.as_raw_fd()));
            match call(&through_handle) {
                // No /proc (a minimal container): the path, if it fits.
                Err(error) if error.kind() == io::ErrorKind::NotFound && !proc_mounted() => {}
                other => return other,
            }
        }
        let _ = dir;
        let full: PathBuf = path.join(name);
        let len = full.as_os_str().len();
        if len > sun_path_capacity() {
            return Err(io::Error::new(
                io::ErrorKind::InvalidInput,
                format!(
                    "the socket path {} is {len} bytes, longer than the {} a Unix socket \
                     address holds; choose a shorter LOOPBACK_SINGLETON_DIR",
                    full.display(),
                    sun_path_capacity()
                ),
            ));
        }
        call(&full)
    }

    /// Connects to the socket at `address` within `timeout`. Linux makes a connect to a
    /// full backlog wait, bounded by the socket's send timeout, so that timeout is set
    /// before connecting; elsewhere such a connect fails at once.
    pub(super) fn connect(address: &Path, timeout: Duration) -> io::Result<UnixStream> {
        #[cfg(any(target_os = "linux", target_os = "android"))]
        {
            use rustix::net::{AddressFamily, SocketAddrUnix, SocketFlags, SocketType, sockopt};
            let socket = rustix::net::socket_with(
                AddressFamily::UNIX,
                SocketType::STREAM,
                SocketFlags::CLOEXEC,
                None,
            )?;
            let bound = Some(timeout.max(Duration::from_millis(1)));
            sockopt::set_socket_timeout(&socket, sockopt::Timeout::Send, bound)?;
            rustix::net::connect(&socket, &SocketAddrUnix::new(address)?)?;
            sockopt::set_socket_timeout(&socket, sockopt::Timeout::Send, None)?;
            Ok(UnixStream::from(socket))
        }
        #[cfg(not(any(target_os = "linux", target_os = "android")))]
        {
            let _ = timeout;
            UnixStream::connect(address)
        }
    }

    #[cfg(any(target_os = "linux", target_os = "android"))]
    fn proc_mounted() -> bool {
        Path::new("/proc/self/fd").is_dir()
    }

    /// Makes the socket `name` readable and writable by its owner alone.
    pub(super) fn make_private(dir: &DirHandle, name: &str) -> io::Result<()> {
        Ok(rustix::fs::chmodat(
            dir,
            name,
            rustix::fs::Mode::from_raw_mode(0o600),
            rustix::fs::AtFlags::empty(),
        )?)
    }

    /// The effective uid of the peer of a connected Unix socket.
    pub(super) fn peer_uid(socket: &impl AsFd) -> io::Result<u32> {
        #[cfg(any(target_os = "linux", target_os = "android"))]
        {
            Ok(rustix::net::sockopt::socket_peercred(socket)?.uid.as_raw())
        }
        #[cfg(not(any(target_os = "linux", target_os = "android")))]
        {
            use std::os::fd::AsRawFd;
            let (mut uid, mut gid) = (0, 0);
            // SAFETY: a valid socket descriptor and two writable integers.
            let status =
                unsafe { libc::getpeereid(socket.as_fd().as_raw_fd(), &mut uid, &mut gid) };
            if status == 0 {
                Ok(uid)
            } else {
                Err(io::Error::last_os_error())
            }
        }
    }
}
