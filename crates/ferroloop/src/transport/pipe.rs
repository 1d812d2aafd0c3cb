//! Pipe transports: asyncio's `connect_read_pipe` and `connect_write_pipe`.
//!
//! A pipe transport is the stream transport ([`Transport`]) running on a
//! descriptor that is a pipe, a FIFO, a character device (a pty) or a socket,
//! in one direction only. Reading, buffering, `writev`, flow control and the
//! protocol state machine are the stream transport's; what differs is
//! asyncio's pipe semantics, selected by the transport's [`TransportKind`]:
//!
//! - **read pipe** (asyncio's `_UnixReadPipeTransport`): `pause_reading` /
//!   `resume_reading`; at end of file the protocol gets `eof_received` (its
//!   return value is ignored) and then `connection_lost(None)`; `write` is an
//!   error. A read error ends in `connection_lost(error)` (a pty whose other
//!   side closed reads `EIO`).
//! - **write pipe** (asyncio's `_UnixWritePipeTransport`): `write` sends at
//!   once and queues the rest, with water-mark flow control; `write_eof` is
//!   `close` (flush, then close the pipe; [`Transport::can_write_eof`] is
//!   true); `abort` drops the queue. The reader going away is seen through
//!   readiness, as asyncio does with a reader on the write end: for pipes,
//!   FIFOs and sockets, the transport closes with `connection_lost(None)`, or
//!   with a `BrokenPipeError`-like error ([`std::io::ErrorKind::BrokenPipe`],
//!   `EPIPE`) when data was still queued. Writes after `close` are dropped.
//!
//! The transport owns the descriptor and closes it after `connection_lost`.
//!
//! ```no_run
//! use std::os::fd::{AsFd, OwnedFd};
//! use ferroloop::{EventLoop, Protocol};
//!
//! #[derive(Default)]
//! struct Lines(Vec<u8>);
//! impl Protocol for Lines {
//!     fn data_received(&mut self, data: &[u8]) { self.0.extend_from_slice(data); }
//! }
//!
//! let lp = EventLoop::new().unwrap();
//! let stdin: OwnedFd = std::io::stdin().as_fd().try_clone_to_owned().unwrap();
//! let (transport, lines) = lp.run_until_complete(&lp.connect_read_pipe(Lines::default, stdin)).unwrap();
//! # let _ = (transport, lines);
//! ```

use std::cell::RefCell;
use std::fs::File;
use std::io::{self, IoSlice, Read, Write};
use std::os::fd::{AsRawFd, OwnedFd, RawFd};
use std::os::unix::fs::FileTypeExt;
use std::rc::Rc;

use mio::unix::SourceFd;
use mio::{Interest, Registry, Token};

use crate::error::{Error, Result};
use crate::event_loop::EventLoop;
use crate::future::LoopFuture;
use crate::protocol::{Protocol, ProtocolRef};
use crate::sys;
use crate::transport::stream::Sock;
use crate::transport::tcp::Connection;
use crate::transport::Transport;

/// What a [`Transport`] runs on, which decides the few behaviours that differ.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum TransportKind {
    /// A connected stream socket (TCP or Unix), read and written.
    Stream,
    /// The read side of a pipe (see the module documentation).
    ReadPipe,
    /// The write side of a pipe (see the module documentation).
    WritePipe,
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
    fn new(fd: OwnedFd, kind: TransportKind) -> Result<PipeFd> {
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

    /// Whether this is one of the pipe kinds.
    pub fn is_pipe(self) -> bool {
        self != TransportKind::Stream
    }

    /// The noun of error messages ("Fatal read error on pipe transport").
    pub(crate) fn noun(self) -> &'static str {
        if self.is_pipe() {
            "pipe"
        } else {
            "socket"
        }
    }
}

/// Start a pipe transport on `fd` for `protocol` and complete `out` after `connection_made`.
fn start_pipe<P: Protocol>(lp: &EventLoop, fd: OwnedFd, kind: TransportKind, protocol: P, out: LoopFuture<Connection<P>>) {
    let proto = Rc::new(RefCell::new(protocol));
    let dyn_proto: ProtocolRef = proto.clone();
    let out2 = out.clone();
    let on_made = Box::new(move |r: Result<Transport>| out2.set(r.map(|t| (t, proto))));
    let r = PipeFd::new(fd, kind).and_then(|p| Transport::spawn_kind(lp, Sock::Pipe(p), kind, dyn_proto, None, Some(on_made)));
    if let Err(e) = r {
        out.set(Err(e));
    }
}

impl EventLoop {
    /// Read from `pipe` (a pipe, FIFO, character device or socket) with a
    /// protocol made by `factory` (asyncio's `connect_read_pipe`). The future
    /// completes after `connection_made`. The transport takes the descriptor
    /// and makes it non-blocking; see the [module](crate::transport::pipe)
    /// documentation for the semantics.
    ///
    /// Errors: [`Error::InvalidArgument`] for a regular file or directory
    /// (asyncio's `ValueError`), an OS error if it cannot be polled.
    pub fn connect_read_pipe<P, F>(&self, factory: F, pipe: OwnedFd) -> LoopFuture<Connection<P>>
    where
        P: Protocol,
        F: FnOnce() -> P,
    {
        let out = LoopFuture::new();
        start_pipe(self, pipe, TransportKind::ReadPipe, factory(), out.clone());
        out
    }

    /// Write to `pipe` (a pipe, FIFO, character device or socket) with a
    /// protocol made by `factory` (asyncio's `connect_write_pipe`). The
    /// future completes after `connection_made`. See the
    /// [module](crate::transport::pipe) documentation.
    pub fn connect_write_pipe<P, F>(&self, factory: F, pipe: OwnedFd) -> LoopFuture<Connection<P>>
    where
        P: Protocol,
        F: FnOnce() -> P,
    {
        let out = LoopFuture::new();
        start_pipe(self, pipe, TransportKind::WritePipe, factory(), out.clone());
        out
    }

    /// A read pipe transport on `pipe` for an existing protocol, returned at
    /// once (`connection_made` follows from the ready queue). For bindings
    /// and for transports built from pipes, such as the subprocess transport.
    pub fn create_read_pipe_transport(&self, pipe: OwnedFd, protocol: ProtocolRef) -> Result<Transport> {
        let p = PipeFd::new(pipe, TransportKind::ReadPipe)?;
        Transport::spawn_kind(self, Sock::Pipe(p), TransportKind::ReadPipe, protocol, None, None)
    }

    /// A write pipe transport on `pipe` for an existing protocol (see
    /// [`EventLoop::create_read_pipe_transport`]).
    pub fn create_write_pipe_transport(&self, pipe: OwnedFd, protocol: ProtocolRef) -> Result<Transport> {
        let p = PipeFd::new(pipe, TransportKind::WritePipe)?;
        Transport::spawn_kind(self, Sock::Pipe(p), TransportKind::WritePipe, protocol, None, None)
    }
}
