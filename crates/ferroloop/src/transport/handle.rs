//! The public [`Transport`] handle: one type for every stream transport, a
//! plain socket or pipe ([`crate::transport::stream`]) or TLS layered over one
//! ([`crate::transport::tls`]). Each method is one `match` on the kind.

use std::fmt;
use std::os::fd::RawFd;
use std::rc::Rc;

use crate::error::{Error, Result};
use crate::event_loop::EventLoop;
use crate::protocol::ProtocolRef;
use crate::transport::lifecycle::Teardown;
use crate::transport::pipe::TransportKind;
use crate::transport::stream::{Address, ExtraInfo, LentBytes, StreamInner, StreamTransport};
use crate::transport::tls::{TlsInfo, TlsInner};

/// A stream transport, asyncio's `Transport`: a TCP or Unix socket, a read or
/// write pipe (see [`crate::transport::pipe`] and [`Transport::kind`]), or a
/// TLS connection over one of these (see [`crate::transport::tls`]); on a TLS
/// transport every method acts on the plaintext side.
///
/// A cheap, clonable handle: the protocol receives one in `connection_made`.
/// All methods may be called from within protocol methods.
#[derive(Clone)]
pub struct Transport {
    pub(crate) repr: Repr,
}

#[derive(Clone)]
pub(crate) enum Repr {
    Stream(StreamTransport),
    Tls(Rc<TlsInner>),
}

macro_rules! dispatch {
    ($self:ident, $t:ident => $e:expr) => {
        match &$self.repr {
            Repr::Stream($t) => $e,
            Repr::Tls($t) => $e,
        }
    };
}

impl fmt::Debug for Transport {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Transport")
            .field("fd", &self.socket_fd())
            .field("peername", &self.peername())
            .field("tls", &self.is_tls())
            .field("closing", &self.is_closing())
            .finish()
    }
}

impl PartialEq for Transport {
    fn eq(&self, other: &Self) -> bool {
        match (&self.repr, &other.repr) {
            (Repr::Stream(a), Repr::Stream(b)) => Rc::ptr_eq(&a.inner, &b.inner),
            (Repr::Tls(a), Repr::Tls(b)) => Rc::ptr_eq(a, b),
            _ => false,
        }
    }
}

impl Transport {
    pub(crate) fn from_stream(inner: Rc<StreamInner>) -> Transport {
        Transport { repr: Repr::Stream(StreamTransport { inner }) }
    }

    pub(crate) fn from_tls(inner: Rc<TlsInner>) -> Transport {
        Transport { repr: Repr::Tls(inner) }
    }

    /// The stream transport's state, if this is a plain stream transport.
    pub(crate) fn stream_inner(&self) -> Option<&Rc<StreamInner>> {
        match &self.repr {
            Repr::Stream(s) => Some(&s.inner),
            Repr::Tls(_) => None,
        }
    }

    pub(crate) fn tls_inner(&self) -> Option<&Rc<TlsInner>> {
        match &self.repr {
            Repr::Tls(t) => Some(t),
            Repr::Stream(_) => None,
        }
    }

    /// Wrap a connected socket (see `StreamTransport::spawn`).
    pub(crate) fn spawn(
        lp: &EventLoop,
        sock: crate::transport::stream::Sock,
        protocol: ProtocolRef,
        server: Option<(std::rc::Weak<crate::server::ServerInner>, usize)>,
        on_made: Option<Box<dyn FnOnce(Result<Transport>)>>,
    ) -> Result<Transport> {
        StreamTransport::spawn(lp, sock, protocol, server, on_made)
    }

    /// Wrap a connected stream socket handed in by the program; with
    /// `owns_fd` false the descriptor is borrowed and never closed.
    pub(crate) fn spawn_adopted(
        lp: &EventLoop,
        sock: crate::transport::stream::Sock,
        owns_fd: bool,
        protocol: ProtocolRef,
        on_made: Option<Box<dyn FnOnce(Result<Transport>)>>,
    ) -> Result<Transport> {
        StreamTransport::spawn_with(lp, sock, TransportKind::Stream, owns_fd, protocol, None, on_made)
    }

    /// Wrap a socket or pipe of any kind (see `StreamTransport::spawn_kind`).
    pub(crate) fn spawn_kind(
        lp: &EventLoop,
        sock: crate::transport::stream::Sock,
        kind: TransportKind,
        protocol: ProtocolRef,
        server: Option<(std::rc::Weak<crate::server::ServerInner>, usize)>,
        on_made: Option<Box<dyn FnOnce(Result<Transport>)>>,
    ) -> Result<Transport> {
        StreamTransport::spawn_kind(lp, sock, kind, protocol, server, on_made)
    }

    /// Whether this is a TLS transport.
    pub fn is_tls(&self) -> bool {
        matches!(self.repr, Repr::Tls(_))
    }

    /// The TLS details (protocol version, cipher suite, ALPN, peer
    /// certificates, server name) of a TLS transport; `None` otherwise.
    pub fn tls_info(&self) -> Option<TlsInfo> {
        match &self.repr {
            Repr::Tls(t) => Some(t.info()),
            Repr::Stream(_) => None,
        }
    }

    /// The loop this transport runs on.
    pub fn get_loop(&self) -> EventLoop {
        dispatch!(self, t => t.get_loop())
    }

    /// Close: stop reading, flush the buffer, then `connection_lost(None)`.
    /// TLS: flush, send close_notify, wait (up to the shutdown timeout) for
    /// the peer's, then close the socket.
    pub fn close(&self) {
        dispatch!(self, t => t.close())
    }

    /// True once `close`/`abort` was called or the connection was lost.
    pub fn is_closing(&self) -> bool {
        dispatch!(self, t => t.is_closing())
    }

    /// Close at once, dropping buffered data; `connection_lost(None)` follows.
    pub fn abort(&self) {
        dispatch!(self, t => t.abort())
    }

    /// Close at once because of `err`: the exception handler hears of it
    /// (unless it is an OS error, which asyncio only logs in debug mode) and
    /// the protocol receives `connection_lost(Some(err))`.
    pub fn fatal_error(&self, err: Error, message: &str) {
        dispatch!(self, t => t.fatal_error(err, message))
    }

    /// Close at once because of `err`, without reporting it: the protocol
    /// receives `connection_lost(Some(err))`. For bindings that reported the
    /// failure themselves.
    pub fn abort_with_error(&self, err: Error) {
        dispatch!(self, t => t.abort_with_error(err))
    }

    /// Close the socket at once, without telling the protocol: for
    /// finalizers of transports that were never closed (asyncio's
    /// `__del__` does the same). Buffered data is dropped.
    pub fn close_socket(&self) {
        dispatch!(self, t => t.close_socket())
    }

    /// Write `data`: sent at once if nothing is queued, the rest buffered.
    ///
    /// Errors: [`Error::InvalidState`] after `write_eof`. Writes after the
    /// connection is lost are dropped (logged after 5 of them), as in asyncio.
    pub fn write(&self, data: &[u8]) -> Result<()> {
        dispatch!(self, t => t.write(data))
    }

    /// Write bytes lent for a moment ([`LentBytes`]): they are read inside
    /// `lend` only, and `data` is dropped before any callback (a
    /// dropped-write warning, `pause_writing`, a fatal write error) runs. A
    /// plain stream transport sends them at once from the lent memory and
    /// copies only what is left; a TLS transport encrypts them at once.
    pub fn write_lent<B: LentBytes>(&self, data: B) -> Result<()> {
        match &self.repr {
            Repr::Stream(t) => t.write_lent(data),
            Repr::Tls(t) => t.write_lent(data),
        }
    }

    /// Write an owned buffer: what cannot be sent at once is queued without a copy.
    pub fn write_owned(&self, data: Vec<u8>) -> Result<()> {
        match &self.repr {
            Repr::Stream(t) => t.write_owned(data),
            Repr::Tls(t) => t.write(&data),
        }
    }

    /// Write every buffer of `chunks` in order, with one vectored system call
    /// when nothing is queued.
    pub fn writelines<'a, I>(&self, chunks: I) -> Result<()>
    where
        I: IntoIterator<Item = &'a [u8]>,
    {
        dispatch!(self, t => t.writelines(chunks))
    }

    /// Shut down the write side once the buffer is flushed; data may still
    /// be received. A TLS transport cannot half-close: [`Error::InvalidState`].
    pub fn write_eof(&self) -> Result<()> {
        dispatch!(self, t => t.write_eof())
    }

    /// Stream sockets support half-close; a write pipe's `write_eof` closes
    /// it (true as in asyncio); a read pipe cannot write (false); TLS: false.
    pub fn can_write_eof(&self) -> bool {
        dispatch!(self, t => t.can_write_eof())
    }

    /// Stream socket, read pipe or write pipe (a TLS transport is a stream).
    pub fn kind(&self) -> TransportKind {
        dispatch!(self, t => t.kind())
    }

    /// Stop delivering data until [`Transport::resume_reading`]; effective at
    /// once, even inside `data_received`. No-op if closing or already paused.
    pub fn pause_reading(&self) {
        dispatch!(self, t => t.pause_reading())
    }

    /// Resume delivery; pending data arrives from the next loop iteration.
    pub fn resume_reading(&self) {
        dispatch!(self, t => t.resume_reading())
    }

    /// True unless reading is paused or the transport is closing (always
    /// false for a write pipe).
    pub fn is_reading(&self) -> bool {
        dispatch!(self, t => t.is_reading())
    }

    /// Bytes queued for sending (TLS: plaintext not yet encrypted plus
    /// ciphertext not yet sent).
    pub fn get_write_buffer_size(&self) -> usize {
        dispatch!(self, t => t.get_write_buffer_size())
    }

    /// `(low, high)` water marks.
    pub fn get_write_buffer_limits(&self) -> (usize, usize) {
        dispatch!(self, t => t.get_write_buffer_limits())
    }

    /// Set the water marks (see [`crate::flow`]); `pause_writing` is called at
    /// once if the buffer is now over the new high mark.
    pub fn set_write_buffer_limits(&self, high: Option<usize>, low: Option<usize>) -> Result<()> {
        let conv = |v: Option<usize>| v.map(|x| i64::try_from(x).unwrap_or(i64::MAX));
        self.set_write_buffer_limits_signed(conv(high), conv(low))
    }

    /// As [`Transport::set_write_buffer_limits`], with signed arguments so that
    /// negative values get asyncio's error (bindings).
    pub fn set_write_buffer_limits_signed(&self, high: Option<i64>, low: Option<i64>) -> Result<()> {
        dispatch!(self, t => t.set_write_buffer_limits_signed(high, low))
    }

    /// Whether `pause_writing` was called without a `resume_writing` yet.
    pub fn is_writing_paused(&self) -> bool {
        dispatch!(self, t => t.is_writing_paused())
    }

    /// Have `hook` told of `pause_writing` synchronously, from inside the
    /// `write` (or `set_write_buffer_limits`) that takes the buffer over the
    /// high-water mark, instead of the protocol after its current method
    /// returns (see [`PauseHook`]); `None` restores the default. Returns
    /// false, and changes nothing, on a TLS transport (whose protocol is
    /// told from the loop).
    ///
    /// [`PauseHook`]: crate::transport::PauseHook
    pub fn set_pause_hook(&self, hook: Option<Rc<dyn crate::transport::PauseHook>>) -> bool {
        match &self.repr {
            Repr::Stream(s) => {
                s.set_pause_hook(hook);
                true
            }
            Repr::Tls(_) => false,
        }
    }

    /// Look up extra information by asyncio's key: `peername`, `sockname`,
    /// `socket` for a stream socket; `pipe` (the descriptor) for a pipe; a
    /// TLS transport adds `peercert` ([`ExtraInfo::Bytes`], the DER of the
    /// peer's end certificate), `cipher` ([`ExtraInfo::Cipher`]),
    /// `compression` (always `None`: TLS compression is never used),
    /// `alpn_protocol` ([`ExtraInfo::Bytes`], the protocol ALPN agreed on, if
    /// any) and `server_hostname` ([`ExtraInfo::Text`]: on a client the name
    /// the server was verified against, on a server the SNI the client sent,
    /// if any), `ssl_object` ([`ExtraInfo::Tls`], what the session
    /// negotiated, as [`Transport::tls_info`]) and `sslcontext`
    /// ([`ExtraInfo::TlsConfig`], the rustls configuration).
    pub fn get_extra_info(&self, name: &str) -> Option<ExtraInfo> {
        dispatch!(self, t => t.get_extra_info(name))
    }

    /// The peer's address (captured when the transport was made).
    pub fn peername(&self) -> Option<Address> {
        dispatch!(self, t => t.peername())
    }

    /// The socket's own address.
    pub fn sockname(&self) -> Option<Address> {
        dispatch!(self, t => t.sockname())
    }

    /// The socket's file descriptor while the transport owns an open socket.
    pub fn socket_fd(&self) -> Option<RawFd> {
        dispatch!(self, t => t.socket_fd())
    }

    /// Run `f` once everything written so far has been handed to the kernel
    /// (at once if nothing is queued), or with an error if the connection is
    /// lost first. Replaces a previous callback. (asyncio's "empty waiter",
    /// used by `sendfile`.)
    pub fn on_drained<F: FnOnce(Result<()>) + 'static>(&self, f: F) {
        dispatch!(self, t => t.on_drained(f))
    }

    /// Switch the protocol; later events go to `protocol`. Allowed from
    /// within the current protocol's methods.
    pub fn set_protocol(&self, protocol: ProtocolRef) {
        dispatch!(self, t => t.set_protocol(protocol))
    }

    /// The current protocol (`None` after `connection_lost`).
    pub fn get_protocol(&self) -> Option<ProtocolRef> {
        dispatch!(self, t => t.get_protocol())
    }
}
