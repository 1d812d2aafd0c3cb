//! Transports: the I/O side of a connection, paired with a [`Protocol`](crate::Protocol).
//!
//! Layers, each depending only on those above it in this list:
//! - [`addr`]: [`Address`] and [`ExtraInfo`], the one Unix-address conversion;
//! - [`core`]: the pure state every transport shares (protocol slot,
//!   lifecycle, write buffer), unit-tested without sockets;
//! - [`fd`]: descriptors (owned or borrowed) and their poll [`Registration`](fd::Registration);
//! - [`stream`]: the stream transport (TCP and Unix sockets, pipes);
//!   [`tls`]: TLS over a stream transport (rustls); [`handle`]: the public
//!   [`Transport`] over either, through the crate-private [`TransportOps`];
//! - [`registry`]: the weak set a server keeps of its connections;
//! - [`pipe`]: `connect_read_pipe`/`connect_write_pipe`; [`subprocess`]: child
//!   processes with pipe transports; [`datagram`]: the datagram transport.
//!
//! Servers ([`crate::server`]) and connectors ([`crate::connect`]) sit above
//! this module and are never imported by it.

pub mod addr;
pub(crate) mod core;
pub mod fd;
pub mod handle;
pub mod pipe;
pub(crate) mod registry;
pub mod stream;
pub mod subprocess;
pub mod tls;
pub mod datagram;

use std::cell::RefCell;
use std::os::fd::RawFd;
use std::rc::Rc;

use crate::error::Result;
use crate::event_loop::EventLoop;
use crate::protocol::ProtocolRef;
use crate::transport::core::lifecycle::Teardown;

pub use addr::{Address, ExtraInfo};
pub use core::slot::PauseHook;
pub use fd::StreamSocket;
pub use handle::Transport;
pub use subprocess::{
    Stdio, SubprocessConnection, SubprocessOptions, SubprocessProtocol, SubprocessProtocolRef, SubprocessTransport,
};
pub use tls::{TlsClientOptions, TlsConfig, TlsInfo, TlsOptions, TlsServerOptions};
pub use datagram::{
    DatagramEndpoint, DatagramOptions, DatagramProtocol, DatagramProtocolRef, DatagramSocket, DatagramTransport,
};

/// What a [`Transport`] runs on, which decides the few behaviours that differ.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum TransportKind {
    /// A connected stream socket (TCP or Unix), read and written.
    Stream,
    /// The read side of a pipe (see [`pipe`]).
    ReadPipe,
    /// The write side of a pipe (see [`pipe`]).
    WritePipe,
}


impl TransportKind {
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


/// What `create_connection` and friends complete with: the transport and the
/// protocol the factory made, typed.
pub type Connection<P> = (Transport, Rc<RefCell<P>>);


/// Bytes lent for the span of one call: e.g. a buffer owned by another
/// language's runtime, which may change them once control returns to it.
/// [`Transport::write_lent`] reads them only inside [`LentBytes::lend`]
/// and runs no callback meanwhile.
pub trait LentBytes {
    /// Call `f` with the bytes, valid only during the call.
    fn lend<R>(&self, f: impl FnOnce(&[u8]) -> R) -> R;
}

impl<T: LentBytes + ?Sized> LentBytes for &T {
    fn lend<R>(&self, f: impl FnOnce(&[u8]) -> R) -> R {
        (**self).lend(f)
    }
}

/// The operations of a stream transport, implemented by the plain stream
/// transport and the TLS transport alike; [`Transport`] documents each and
/// dispatches to one of the two. A method added here is implemented by
/// both, or the crate does not build. (`fatal_error` and `abort_with_error`
/// come from [`Teardown`].)
pub(crate) trait TransportOps: Teardown {
    fn get_loop(&self) -> EventLoop;
    fn close(self: &Rc<Self>);
    fn is_closing(&self) -> bool;
    /// `connection_lost` was delivered (or is scheduled).
    fn is_lost(&self) -> bool;
    fn abort(self: &Rc<Self>);
    fn close_socket(self: &Rc<Self>);
    fn write(self: &Rc<Self>, data: &[u8]) -> Result<()>;
    fn write_lent<B: LentBytes>(self: &Rc<Self>, data: B) -> Result<()>;
    fn write_owned(self: &Rc<Self>, data: Vec<u8>) -> Result<()>;
    fn writelines<'a, I: IntoIterator<Item = &'a [u8]>>(self: &Rc<Self>, chunks: I) -> Result<()>;
    fn write_eof(self: &Rc<Self>) -> Result<()>;
    fn can_write_eof(&self) -> bool;
    fn kind(&self) -> TransportKind;
    fn pause_reading(&self);
    fn resume_reading(self: &Rc<Self>);
    fn is_reading(&self) -> bool;
    fn get_write_buffer_size(&self) -> usize;
    fn get_write_buffer_limits(&self) -> (usize, usize);
    fn set_write_buffer_limits_signed(self: &Rc<Self>, high: Option<i64>, low: Option<i64>) -> Result<()>;
    fn is_writing_paused(&self) -> bool;
    /// False, changing nothing, where the hook is not supported.
    fn set_pause_hook(&self, hook: Option<Rc<dyn PauseHook>>) -> bool;
    fn get_extra_info(&self, name: &str) -> Option<ExtraInfo>;
    fn peername(&self) -> Option<Address>;
    fn sockname(&self) -> Option<Address>;
    fn socket_fd(&self) -> Option<RawFd>;
    fn on_drained<F: FnOnce(Result<()>) + 'static>(&self, f: F);
    fn set_protocol(&self, protocol: ProtocolRef);
    fn get_protocol(&self) -> Option<ProtocolRef>;
}
