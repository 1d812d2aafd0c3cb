//! Descriptors under transports: the stream transport's [`Sock`] (a TCP
//! or Unix socket, or a pipe), the [`StreamSocket`] a program hands in,
//! and [`Held`] (an owned or borrowed descriptor, closed only when owned).

use std::fs::File;
use std::io::{self, IoSlice, Read, Write};
use std::net::Shutdown;
use std::os::fd::{AsRawFd, OwnedFd, RawFd};
use std::os::unix::fs::FileTypeExt;

use mio::unix::SourceFd;
use mio::{Interest, Registry, Token};
use socket2::Socket;

use crate::error::{Error, Result};
use crate::sys;
pub(crate) use crate::sys::Held;
use crate::transport::addr::Address;
use crate::transport::TransportKind;

/// The descriptor under a stream transport: a socket, or a pipe used as one.
pub(crate) enum Sock {
    Tcp(mio::net::TcpStream),
    Unix(mio::net::UnixStream),
    /// A pipe, FIFO, character device or socket used as a pipe.
    Pipe(PipeFd),
}

impl Sock {
    pub(crate) fn source(&mut self) -> &mut dyn mio::event::Source {
        match self {
            Sock::Tcp(s) => s,
            Sock::Unix(s) => s,
            Sock::Pipe(s) => s,
        }
    }

    pub(crate) fn read(&self, buf: &mut [u8]) -> io::Result<usize> {
        match self {
            Sock::Tcp(s) => (&*s).read(buf),
            Sock::Unix(s) => (&*s).read(buf),
            Sock::Pipe(s) => s.read(buf),
        }
    }

    pub(crate) fn write(&self, buf: &[u8]) -> io::Result<usize> {
        match self {
            Sock::Tcp(s) => (&*s).write(buf),
            Sock::Unix(s) => (&*s).write(buf),
            Sock::Pipe(s) => s.write(buf),
        }
    }

    pub(crate) fn write_vectored(&self, bufs: &[IoSlice<'_>]) -> io::Result<usize> {
        match self {
            Sock::Tcp(s) => (&*s).write_vectored(bufs),
            Sock::Unix(s) => (&*s).write_vectored(bufs),
            Sock::Pipe(s) => s.write_vectored(bufs),
        }
    }

    pub(crate) fn shutdown_write(&self) -> io::Result<()> {
        match self {
            Sock::Tcp(s) => s.shutdown(Shutdown::Write),
            Sock::Unix(s) => s.shutdown(Shutdown::Write),
            // A write pipe's write_eof is close(): never shut down.
            Sock::Pipe(_) => Ok(()),
        }
    }

    pub(crate) fn fd(&self) -> RawFd {
        match self {
            Sock::Tcp(s) => s.as_raw_fd(),
            Sock::Unix(s) => s.as_raw_fd(),
            Sock::Pipe(s) => s.fd(),
        }
    }

    pub(crate) fn peer(&self) -> Option<Address> {
        match self {
            Sock::Tcp(s) => s.peer_addr().ok().map(Address::Inet),
            Sock::Unix(s) => s.peer_addr().ok().map(|a| Address::of_unix(&a)),
            Sock::Pipe(_) => None,
        }
    }

    pub(crate) fn local(&self) -> Option<Address> {
        match self {
            Sock::Tcp(s) => s.local_addr().ok().map(Address::Inet),
            Sock::Unix(s) => s.local_addr().ok().map(|a| Address::of_unix(&a)),
            Sock::Pipe(_) => None,
        }
    }
}

/// A `&Sock` as an `io::Write`, for the write buffer.
pub(crate) struct SockWriter<'a>(pub(crate) &'a Sock);
impl Write for SockWriter<'_> {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        self.0.write(buf)
    }
    fn write_vectored(&mut self, bufs: &[IoSlice<'_>]) -> io::Result<usize> {
        self.0.write_vectored(bufs)
    }
    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

impl TransportKind {
    /// The poll interest of a transport of this kind on `sock`.
    pub(crate) fn interest(self, sock: &Sock) -> Interest {
        match self {
            TransportKind::Stream => Interest::READABLE | Interest::WRITABLE,
            TransportKind::ReadPipe => Interest::READABLE,
            // Readability of the write end means the reader went away
            // (asyncio adds a reader for pipes and sockets, not for ttys).
            TransportKind::WritePipe if self.watches_peer(sock) => Interest::READABLE | Interest::WRITABLE,
            TransportKind::WritePipe => Interest::WRITABLE,
        }
    }

    /// A write pipe on a FIFO or a socket: readiness to read means the peer closed.
    pub(crate) fn watches_peer(self, sock: &Sock) -> bool {
        self == TransportKind::WritePipe
            && matches!(sock, Sock::Pipe(p) if matches!(p.file_kind(), PipeFile::Fifo | PipeFile::Socket))
    }
}

/// The kind of file behind a pipe transport.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum PipeFile {
    Fifo,
    Socket,
    CharDevice,
}

/// A pipe descriptor, owned: the I/O half of a pipe transport.
pub(crate) struct PipeFd {
    file: File,
    what: PipeFile,
    /// Some character devices (`/dev/null`) cannot be polled (`EPERM`); a
    /// write pipe on one never waits, since every write completes at once.
    unpolled: bool,
}

impl PipeFd {
    /// Check the file type as asyncio does and make the descriptor non-blocking.
    pub(crate) fn new(fd: OwnedFd, kind: TransportKind) -> Result<PipeFd> {
        let file = File::from(fd);
        let ft = file.metadata()?.file_type();
        let what = if ft.is_fifo() {
            PipeFile::Fifo
        } else if ft.is_socket() {
            PipeFile::Socket
        } else if ft.is_char_device() {
            PipeFile::CharDevice
        } else if kind == TransportKind::ReadPipe {
            return Err(Error::invalid("Pipe transport is for pipes/sockets only."));
        } else {
            return Err(Error::invalid("Pipe transport is only for pipes, sockets and character devices"));
        };
        sys::process::set_nonblocking(file.as_raw_fd())?;
        Ok(PipeFd { file, what, unpolled: false })
    }

    /// What the file is.
    pub(crate) fn file_kind(&self) -> PipeFile {
        self.what
    }

    pub(crate) fn read(&self, buf: &mut [u8]) -> io::Result<usize> {
        (&self.file).read(buf)
    }

    pub(crate) fn write(&self, buf: &[u8]) -> io::Result<usize> {
        (&self.file).write(buf)
    }

    pub(crate) fn write_vectored(&self, bufs: &[IoSlice<'_>]) -> io::Result<usize> {
        (&self.file).write_vectored(bufs)
    }

    pub(crate) fn fd(&self) -> RawFd {
        self.file.as_raw_fd()
    }
}

impl mio::event::Source for PipeFd {
    fn register(&mut self, registry: &Registry, token: Token, interests: Interest) -> io::Result<()> {
        match SourceFd(&self.file.as_raw_fd()).register(registry, token, interests) {
            Err(e) if e.raw_os_error() == Some(libc::EPERM) && interests == Interest::WRITABLE => {
                self.unpolled = true;
                Ok(())
            }
            r => r,
        }
    }

    fn reregister(&mut self, registry: &Registry, token: Token, interests: Interest) -> io::Result<()> {
        if self.unpolled {
            return Ok(());
        }
        SourceFd(&self.file.as_raw_fd()).reregister(registry, token, interests)
    }

    fn deregister(&mut self, registry: &Registry) -> io::Result<()> {
        if self.unpolled {
            return Ok(());
        }
        SourceFd(&self.file.as_raw_fd()).deregister(registry)
    }
}

/// An already connected stream socket handed to the loop.
#[derive(Debug)]
pub enum StreamSocket {
    /// A TCP socket.
    Tcp(std::net::TcpStream),
    /// A Unix stream socket (e.g. one end of `UnixStream::pair()`).
    Unix(std::os::unix::net::UnixStream),
    /// A socket on a descriptor that its owner keeps and closes (see
    /// [`StreamSocket::borrow_raw`]).
    Borrowed(BorrowedSocket),
}

/// A connected stream socket on a borrowed descriptor: the transport made on
/// it reads and writes the descriptor but never closes it. Made by
/// [`StreamSocket::borrow_raw`].
#[derive(Debug)]
pub struct BorrowedSocket {
    /// Never dropped: that would close the owner's descriptor.
    sock: std::mem::ManuallyDrop<Socket>,
}

impl From<std::net::TcpStream> for StreamSocket {
    fn from(s: std::net::TcpStream) -> Self {
        StreamSocket::Tcp(s)
    }
}

impl From<std::os::unix::net::UnixStream> for StreamSocket {
    fn from(s: std::os::unix::net::UnixStream) -> Self {
        StreamSocket::Unix(s)
    }
}

impl StreamSocket {
    /// Take a connected stream socket of either family from an owned descriptor.
    pub fn from_fd(fd: std::os::fd::OwnedFd) -> io::Result<StreamSocket> {
        let sock = Socket::from(fd);
        let family = sock.local_addr()?.family();
        if family == libc::AF_UNIX as libc::sa_family_t {
            Ok(StreamSocket::Unix(sock.into()))
        } else {
            Ok(StreamSocket::Tcp(sock.into()))
        }
    }

    /// Duplicate `fd` (the caller keeps the original) and take the copy.
    pub fn dup_raw(fd: std::os::fd::RawFd) -> io::Result<StreamSocket> {
        Self::from_fd(crate::sys::dup_cloexec(fd)?)
    }

    /// Use `fd` without owning it: no duplicate, so a connection costs one
    /// descriptor. The transport made on it switches it to non-blocking
    /// mode, stops all I/O on it and removes it from the poll when the
    /// connection is lost (before `connection_lost` runs), closed with
    /// `close_socket`, or aborted, and never closes it. The caller keeps
    /// `fd` open until then and closes it afterwards (the Python face: the
    /// `socket` object, in the transport's `_finish`). Such a transport
    /// does not capture its addresses: `peername`/`sockname` are read from
    /// the socket when asked while it has it, and are `None` after (the
    /// owner of the descriptor keeps its own copy if it needs one).
    ///
    /// Fails unless `fd` is an open socket.
    ///
    /// # Safety
    ///
    /// `fd` must stay open, and be this socket, until the transport made on
    /// it has let go of it (its `connection_lost` ran, or `close_socket`
    /// returned); closing it earlier would let the engine act on whatever
    /// descriptor reuses the number.
    pub unsafe fn borrow_raw(fd: std::os::fd::RawFd) -> io::Result<StreamSocket> {
        Ok(StreamSocket::Borrowed(BorrowedSocket { sock: crate::sys::borrow_socket(fd)? }))
    }

    /// Whether the transport made on this socket owns (and so closes) its descriptor.
    pub fn owns_fd(&self) -> bool {
        !matches!(self, StreamSocket::Borrowed(_))
    }

    /// The socket, non-blocking (TCP: `TCP_NODELAY`, as asyncio sets it),
    /// held owned or borrowed as this socket is.
    pub(crate) fn into_sock(self) -> io::Result<Held<Sock>> {
        Ok(match self {
            StreamSocket::Borrowed(b) => {
                // Everything that can fail happens on the ManuallyDrop, which
                // never closes the descriptor; unwrapped, it goes straight
                // into a borrowed `Held`, which never drops it.
                let unix = b.sock.local_addr()?.family() == libc::AF_UNIX as libc::sa_family_t;
                b.sock.set_nonblocking(true)?;
                if !unix {
                    let _ = b.sock.set_tcp_nodelay(true);
                }
                let sock = std::mem::ManuallyDrop::into_inner(b.sock);
                let sock = if unix {
                    Sock::Unix(mio::net::UnixStream::from_std(sock.into()))
                } else {
                    Sock::Tcp(mio::net::TcpStream::from_std(sock.into()))
                };
                Held::new(sock, false)
            }
            StreamSocket::Tcp(s) => {
                s.set_nonblocking(true)?;
                let _ = s.set_nodelay(true);
                Held::new(Sock::Tcp(mio::net::TcpStream::from_std(s)), true)
            }
            StreamSocket::Unix(s) => {
                s.set_nonblocking(true)?;
                Held::new(Sock::Unix(mio::net::UnixStream::from_std(s)), true)
            }
        })
    }
}
