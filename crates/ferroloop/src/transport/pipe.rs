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
use std::os::fd::OwnedFd;
use std::rc::Rc;

use crate::error::Result;
use crate::event_loop::EventLoop;
use crate::future::LoopFuture;
use crate::protocol::{Protocol, ProtocolRef};
use crate::transport::fd::{Held, PipeFd, Sock};
use crate::transport::stream::StreamInner;
use crate::transport::{Connection, Transport, TransportKind};

/// Start a pipe transport on `fd` for `protocol` and complete `out` after `connection_made`.
fn start_pipe<P: Protocol>(lp: &EventLoop, fd: OwnedFd, kind: TransportKind, protocol: P, out: LoopFuture<Connection<P>>) {
    let proto = Rc::new(RefCell::new(protocol));
    let dyn_proto: ProtocolRef = proto.clone();
    let out2 = out.clone();
    let on_made = Box::new(move |r: Result<Transport>| out2.set(r.map(|t| (t, proto))));
    let r = PipeFd::new(fd, kind).and_then(|p| StreamInner::spawn(lp, Held::new(Sock::Pipe(p), true), kind, dyn_proto, None, Some(on_made)));
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
        StreamInner::spawn(self, Held::new(Sock::Pipe(p), true), TransportKind::ReadPipe, protocol, None, None)
    }

    /// A write pipe transport on `pipe` for an existing protocol (see
    /// [`EventLoop::create_read_pipe_transport`]).
    pub fn create_write_pipe_transport(&self, pipe: OwnedFd, protocol: ProtocolRef) -> Result<Transport> {
        let p = PipeFd::new(pipe, TransportKind::WritePipe)?;
        StreamInner::spawn(self, Held::new(Sock::Pipe(p), true), TransportKind::WritePipe, protocol, None, None)
    }
}
