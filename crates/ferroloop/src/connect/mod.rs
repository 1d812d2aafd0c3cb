//! Connectors: how a client connection is made, above the transports
//! (which never import this module). [`tcp`]: `create_connection` with
//! Happy Eyeballs; [`unix`]: `create_unix_connection`; [`tls`]:
//! `create_connection_tls`; here: the options, and adopting a socket that
//! is already connected (`sock=`, `connect_accepted_socket`), which every
//! connector ends in.

pub mod tcp;
pub mod tls;
pub mod unix;

use std::cell::RefCell;
use std::net::SocketAddr;
use std::rc::Rc;

use crate::error::{Error, Result};
use crate::event_loop::EventLoop;
use crate::future::LoopFuture;
use crate::protocol::{Protocol, ProtocolRef};
use crate::resolve::Family;
use crate::transport::fd::{Held, Sock, StreamSocket};
use crate::transport::stream::StreamInner;
use crate::transport::{Transport, TransportKind};

pub use crate::transport::Connection;

/// Options of [`EventLoop::create_connection`], with asyncio's defaults.
#[derive(Clone, Debug, Default)]
pub struct ConnectOptions {
    /// Bind the socket to this local address before connecting.
    pub local_addr: Option<SocketAddr>,
    /// Happy Eyeballs: start the next attempt after this many seconds
    /// (RFC 8305 recommends 0.25). `None`: one attempt at a time.
    pub happy_eyeballs_delay: Option<f64>,
    /// Reorder addresses by family; the first family gets this many first.
    /// Defaults to 1 when `happy_eyeballs_delay` is set.
    pub interleave: Option<usize>,
    /// Only connect to addresses of this family.
    pub family: Option<Family>,
}

/// Start a transport on `sock` and complete `out` after `connection_made`.
pub(crate) fn start_transport<P: Protocol>(lp: &EventLoop, sock: Held<Sock>, protocol: P, out: LoopFuture<Connection<P>>) {
    let proto = Rc::new(RefCell::new(protocol));
    let dyn_proto: ProtocolRef = proto.clone();
    let out2 = out.clone();
    let on_made = Box::new(move |r: Result<Transport>| out2.set(r.map(|t| (t, proto))));
    if let Err(e) = StreamInner::spawn(lp, sock, TransportKind::Stream, dyn_proto, None, Some(on_made)) {
        out.set(Err(e));
    }
}

impl EventLoop {
    /// Run a protocol on an already connected socket (asyncio's
    /// `create_connection(sock=...)`, the spec's "register an open socket").
    pub fn create_connection_from_socket<P, F>(&self, factory: F, sock: impl Into<StreamSocket>) -> LoopFuture<Connection<P>>
    where
        P: Protocol,
        F: FnOnce() -> P,
    {
        let out = LoopFuture::new();
        if let Err(e) = self.check_closed() {
            out.set(Err(e));
            return out;
        }
        match sock.into().into_sock() {
            Ok(s) => start_transport(self, s, factory(), out.clone()),
            Err(e) => out.set(Err(Error::Io(e))),
        }
        out
    }

    /// Make a transport for `protocol` on a connected socket, synchronously
    /// (bindings: the protocol object is built by the caller).
    /// `connection_made` follows from the ready queue.
    pub fn create_transport(&self, sock: StreamSocket, protocol: ProtocolRef) -> Result<Transport> {
        StreamInner::spawn(self, sock.into_sock()?, TransportKind::Stream, protocol, None, None)
    }

    /// Run a protocol on a socket accepted outside the loop (asyncio's
    /// `connect_accepted_socket`).
    pub fn connect_accepted_socket<P, F>(&self, factory: F, sock: impl Into<StreamSocket>) -> LoopFuture<Connection<P>>
    where
        P: Protocol,
        F: FnOnce() -> P,
    {
        self.create_connection_from_socket(factory, sock)
    }
}

