//! The public [`Transport`] handle: one type for every stream transport, a
//! plain socket or pipe ([`crate::transport::stream`]) or TLS layered over one
//! ([`crate::transport::tls`]). Each method is one `match` on the kind,
//! calling the [`TransportOps`] method both implement.

use std::fmt;
use std::os::fd::RawFd;
use std::rc::{Rc, Weak};

use crate::error::{Error, Result};
use crate::event_loop::EventLoop;
use crate::protocol::ProtocolRef;
use crate::transport::stream::StreamInner;
use crate::transport::tls::{TlsInfo, TlsInner};
use crate::transport::core::lifecycle::Teardown;
use crate::transport::{Address, ExtraInfo, LentBytes, PauseHook, TransportKind, TransportOps};

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
    Stream(Rc<StreamInner>),
    Tls(Rc<TlsInner>),
}

/// Call the [`TransportOps`] method `$m` on whichever transport this is.
macro_rules! dispatch {
    ($self:ident . $m:ident ( $($arg:expr),* )) => {
        match &$self.repr {
            Repr::Stream(t) => t.$m($($arg),*),
            Repr::Tls(t) => t.$m($($arg),*),
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
            (Repr::Stream(a), Repr::Stream(b)) => Rc::ptr_eq(a, b),
            (Repr::Tls(a), Repr::Tls(b)) => Rc::ptr_eq(a, b),
            _ => false,
        }
    }
}

impl Transport {
    pub(crate) fn from_stream(inner: Rc<StreamInner>) -> Transport {
        Transport { repr: Repr::Stream(inner) }
    }

    pub(crate) fn from_tls(inner: Rc<TlsInner>) -> Transport {
        Transport { repr: Repr::Tls(inner) }
    }

    /// The stream transport's state, if this is a plain stream transport.
    pub(crate) fn stream_inner(&self) -> Option<&Rc<StreamInner>> {
        match &self.repr {
            Repr::Stream(s) => Some(s),
            Repr::Tls(_) => None,
        }
    }

    pub(crate) fn tls_inner(&self) -> Option<&Rc<TlsInner>> {
        match &self.repr {
            Repr::Tls(t) => Some(t),
            Repr::Stream(_) => None,
        }
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
        dispatch!(self.get_loop())
    }

    /// Close: stop reading, flush the buffer, then `connection_lost(None)`.
    /// TLS: flush, send close_notify, wait (up to the shutdown timeout) for
    /// the peer's, then close the socket.
    pub fn close(&self) {
        dispatch!(self.close())
    }

    /// True once `close`/`abort` was called or the connection was lost.
    pub fn is_closing(&self) -> bool {
        dispatch!(self.is_closing())
    }

    /// Close at once, dropping buffered data; `connection_lost(None)` follows.
    pub fn abort(&self) {
        dispatch!(self.abort())
    }

    /// Close at once because of `err`: the exception handler hears of it
    /// (unless it is an OS error, which asyncio only logs in debug mode) and
    /// the protocol receives `connection_lost(Some(err))`.
    pub fn fatal_error(&self, err: Error, message: &str) {
        dispatch!(self.fatal_error(err, message))
    }

    /// Close at once because of `err`, without reporting it: the protocol
    /// receives `connection_lost(Some(err))`. For bindings that reported the
    /// failure themselves.
    pub fn abort_with_error(&self, err: Error) {
        dispatch!(self.abort_with_error(err))
    }

    /// Close the socket at once, without telling the protocol: for
    /// finalizers of transports that were never closed (asyncio's
    /// `__del__` does the same). Buffered data is dropped.
    pub fn close_socket(&self) {
        dispatch!(self.close_socket())
    }

    /// Write `data`: sent at once if nothing is queued, the rest buffered.
    ///
    /// Errors: [`Error::InvalidState`] after `write_eof`. Writes after the
    /// connection is lost are dropped (logged after 5 of them), as in asyncio.
    pub fn write(&self, data: &[u8]) -> Result<()> {
        dispatch!(self.write(data))
    }

    /// Write bytes lent for a moment ([`LentBytes`]): they are read inside
    /// `lend` only, and `data` is dropped before any callback (a
    /// dropped-write warning, `pause_writing`, a fatal write error) runs. A
    /// plain stream transport sends them at once from the lent memory and
    /// copies only what is left; a TLS transport encrypts them at once.
    pub fn write_lent<B: LentBytes>(&self, data: B) -> Result<()> {
        dispatch!(self.write_lent(data))
    }

    /// Write an owned buffer: what cannot be sent at once is queued without a copy.
    pub fn write_owned(&self, data: Vec<u8>) -> Result<()> {
        dispatch!(self.write_owned(data))
    }

    /// Write every buffer of `chunks` in order, with one vectored system call
    /// when nothing is queued.
    pub fn writelines<'a, I>(&self, chunks: I) -> Result<()>
    where
        I: IntoIterator<Item = &'a [u8]>,
    {
        dispatch!(self.writelines(chunks))
    }

    /// Shut down the write side once the buffer is flushed; data may still
    /// be received. A TLS transport cannot half-close: [`Error::InvalidState`].
    pub fn write_eof(&self) -> Result<()> {
        dispatch!(self.write_eof())
    }

    /// Stream sockets support half-close; a write pipe's `write_eof` closes
    /// it (true as in asyncio); a read pipe cannot write (false); TLS: false.
    pub fn can_write_eof(&self) -> bool {
        dispatch!(self.can_write_eof())
    }

    /// Stream socket, read pipe or write pipe (a TLS transport is a stream).
    pub fn kind(&self) -> TransportKind {
        dispatch!(self.kind())
    }

    /// Stop delivering data until [`Transport::resume_reading`]; effective at
    /// once, even inside `data_received`. No-op if closing or already paused.
    pub fn pause_reading(&self) {
        dispatch!(self.pause_reading())
    }

    /// Resume delivery; pending data arrives from the next loop iteration.
    pub fn resume_reading(&self) {
        dispatch!(self.resume_reading())
    }

    /// True unless reading is paused or the transport is closing (always
    /// false for a write pipe).
    pub fn is_reading(&self) -> bool {
        dispatch!(self.is_reading())
    }

    /// Bytes queued for sending (TLS: plaintext not yet encrypted plus
    /// ciphertext not yet sent).
    pub fn get_write_buffer_size(&self) -> usize {
        dispatch!(self.get_write_buffer_size())
    }

    /// `(low, high)` water marks.
    pub fn get_write_buffer_limits(&self) -> (usize, usize) {
        dispatch!(self.get_write_buffer_limits())
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
        dispatch!(self.set_write_buffer_limits_signed(high, low))
    }

    /// Whether `pause_writing` was called without a `resume_writing` yet.
    pub fn is_writing_paused(&self) -> bool {
        dispatch!(self.is_writing_paused())
    }

    /// Have `hook` told of `pause_writing` synchronously, from inside the
    /// `write` (or `set_write_buffer_limits`) that takes the buffer over the
    /// high-water mark, instead of the protocol after its current method
    /// returns (see [`PauseHook`]); `None` restores the default. Returns
    /// false, and changes nothing, on a TLS transport (whose protocol is
    /// told from the loop).
    ///
    pub fn set_pause_hook(&self, hook: Option<Rc<dyn PauseHook>>) -> bool {
        dispatch!(self.set_pause_hook(hook))
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
        dispatch!(self.get_extra_info(name))
    }

    /// The peer's address (captured when the transport was made).
    pub fn peername(&self) -> Option<Address> {
        dispatch!(self.peername())
    }

    /// The socket's own address.
    pub fn sockname(&self) -> Option<Address> {
        dispatch!(self.sockname())
    }

    /// The socket's file descriptor while the transport owns an open socket.
    pub fn socket_fd(&self) -> Option<RawFd> {
        dispatch!(self.socket_fd())
    }

    /// Run `f` once everything written so far has been handed to the kernel
    /// (at once if nothing is queued), or with an error if the connection is
    /// lost first. Replaces a previous callback. (asyncio's "empty waiter",
    /// used by `sendfile`.)
    pub fn on_drained<F: FnOnce(Result<()>) + 'static>(&self, f: F) {
        dispatch!(self.on_drained(f))
    }

    /// Switch the protocol; later events go to `protocol`. Allowed from
    /// within the current protocol's methods.
    pub fn set_protocol(&self, protocol: ProtocolRef) {
        dispatch!(self.set_protocol(protocol))
    }

    /// The current protocol (`None` after `connection_lost`).
    pub fn get_protocol(&self) -> Option<ProtocolRef> {
        dispatch!(self.get_protocol())
    }
}

/// A [`Transport`] that does not keep the connection alive.
#[derive(Clone, Default)]
pub(crate) enum WeakTransport {
    /// Nothing (an entry reserved before its transport exists).
    #[default]
    None,
    Stream(Weak<StreamInner>),
    Tls(Weak<TlsInner>),
}

impl WeakTransport {
    /// The transport, if it is alive and its connection not lost.
    pub(crate) fn live(&self) -> Option<Transport> {
        match self {
            WeakTransport::None => None,
            WeakTransport::Stream(w) => w.upgrade().filter(|t| !t.is_lost()).map(Transport::from_stream),
            WeakTransport::Tls(w) => w.upgrade().filter(|t| !t.is_lost()).map(Transport::from_tls),
        }
    }
}

impl Transport {
    /// A weak reference to this transport (a server's list of its connections).
    pub(crate) fn downgrade(&self) -> WeakTransport {
        match &self.repr {
            Repr::Stream(s) => WeakTransport::Stream(Rc::downgrade(s)),
            Repr::Tls(t) => WeakTransport::Tls(Rc::downgrade(t)),
        }
    }
}
