//! TLS transports: rustls over a stream transport, as asyncio's `SSLProtocol`
//! layers TLS over a socket transport.
//!
//! An internal protocol (`TlsProto`) sits on the raw stream [`Transport`] and
//! feeds a TLS session (see `session.rs`, the only file that drives rustls);
//! the application's [`Protocol`] gets a [`Transport`] whose methods act on
//! the plaintext side. Semantics follow asyncio's SSL transport:
//!
//! - `connection_made` only after the handshake; a failed handshake fails
//!   the future with [`Error::Tls`] (the protocol never hears of the
//!   connection) and closes the socket, after sending the alert;
//! - `data_received` with plaintext; `pause_reading`/`resume_reading` pass
//!   through (and stop delivery at once, also of plaintext already decrypted);
//! - the peer's close_notify: `eof_received` (its return value is ignored, TLS
//!   has no half-close here), then our close_notify and the socket closes;
//! - `close()`: flush, send close_notify, wait up to the shutdown timeout for
//!   the peer's, then close the socket; `connection_lost` follows;
//! - `can_write_eof()` is false and `write_eof()` fails;
//! - write flow control counts what is buffered below the application:
//!   ciphertext not yet sent (plaintext is encrypted as soon as it is
//!   written), against the water marks of [`crate::flow`].
//! - `get_extra_info`: `peercert` (DER), `cipher`, `compression` (always
//!   `None`, as with asyncio), `alpn_protocol`, `server_hostname`; asyncio's
//!   `sslcontext` and `ssl_object` are absent; [`Transport::tls_info`] gives
//!   the rest.

mod session;

use std::cell::{RefCell, RefMut};
use std::collections::VecDeque;
use std::fmt;
use std::os::fd::RawFd;
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::rc::Rc;
use std::sync::Arc;
use std::time::Duration;

use crate::error::{Error, Result, TlsError};
use crate::event_loop::{panic_message, EventLoop, ExceptionContext};
use crate::flow::WriteFlow;
use crate::future::LoopFuture;
use crate::handle::TimerHandle;
use crate::protocol::{Protocol, ProtocolRef};
use crate::transport::pipe::TransportKind;
use crate::transport::lifecycle::{count_dropped_write, Teardown, SOCKET_SEND_WARNING};
use crate::transport::slot::{deliver_flow_note, FlowHost, FlowNote, ProtocolSlot, SlotHost};
use crate::transport::stream::{Address, ExtraInfo, LentBytes};
use crate::transport::tcp::{ConnectOptions, Connection};
use crate::transport::Transport;

pub(crate) use session::TlsSession;

/// asyncio's `SSL_HANDSHAKE_TIMEOUT`.
pub const DEFAULT_HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(60);
/// asyncio's `SSL_SHUTDOWN_TIMEOUT`.
pub const DEFAULT_SHUTDOWN_TIMEOUT: Duration = Duration::from_secs(30);
/// Plaintext read out of the session at a time (a TLS record holds at most 16 KiB).
const PLAINTEXT_CHUNK: usize = 64 * 1024;

/// Client side of a TLS connection ([`EventLoop::create_connection_tls`],
/// [`EventLoop::start_tls`]).
#[derive(Clone, Debug)]
pub struct TlsClientOptions {
    /// The rustls configuration (root certificates, ALPN, client certificate...).
    pub config: Arc<rustls::ClientConfig>,
    /// The name the server's certificate must match (and the SNI sent);
    /// `None`: the host passed to `create_connection_tls` (required for `start_tls`).
    pub server_name: Option<String>,
    /// Fail the handshake after this long (`None`: 60 s, asyncio's default).
    pub handshake_timeout: Option<Duration>,
    /// After close_notify is sent, wait this long for the peer's before
    /// aborting (`None`: 30 s, asyncio's default).
    pub shutdown_timeout: Option<Duration>,
}

impl TlsClientOptions {
    /// Options with `config` and the defaults.
    pub fn new(config: Arc<rustls::ClientConfig>) -> Self {
        TlsClientOptions { config, server_name: None, handshake_timeout: None, shutdown_timeout: None }
    }
}

/// Server side of a TLS connection ([`crate::ServerOptions::tls`], [`EventLoop::start_tls`]).
#[derive(Clone, Debug)]
pub struct TlsServerOptions {
    /// The rustls configuration (certificate chain and key, ALPN, client auth...).
    pub config: Arc<rustls::ServerConfig>,
    /// Fail the handshake after this long (`None`: 60 s).
    pub handshake_timeout: Option<Duration>,
    /// After close_notify is sent, wait this long for the peer's (`None`: 30 s).
    pub shutdown_timeout: Option<Duration>,
}

impl TlsServerOptions {
    /// Options with `config` and the defaults.
    pub fn new(config: Arc<rustls::ServerConfig>) -> Self {
        TlsServerOptions { config, handshake_timeout: None, shutdown_timeout: None }
    }
}

/// Either side, for [`EventLoop::start_tls`].
#[derive(Clone, Debug)]
pub enum TlsOptions {
    /// Act as the TLS client.
    Client(TlsClientOptions),
    /// Act as the TLS server.
    Server(TlsServerOptions),
}

impl From<TlsClientOptions> for TlsOptions {
    fn from(o: TlsClientOptions) -> Self {
        TlsOptions::Client(o)
    }
}

impl From<TlsServerOptions> for TlsOptions {
    fn from(o: TlsServerOptions) -> Self {
        TlsOptions::Server(o)
    }
}

/// The rustls configuration of a TLS transport: its `sslcontext` extra
/// info. Two values are equal when they share the same configuration
/// (`Arc::ptr_eq`).
#[derive(Clone, Debug)]
pub enum TlsConfig {
    /// A client's configuration.
    Client(Arc<rustls::ClientConfig>),
    /// A server's configuration.
    Server(Arc<rustls::ServerConfig>),
}

impl PartialEq for TlsConfig {
    fn eq(&self, other: &Self) -> bool {
        match (self, other) {
            (TlsConfig::Client(a), TlsConfig::Client(b)) => Arc::ptr_eq(a, b),
            (TlsConfig::Server(a), TlsConfig::Server(b)) => Arc::ptr_eq(a, b),
            _ => false,
        }
    }
}

impl Eq for TlsConfig {}

/// What a TLS transport negotiated ([`Transport::tls_info`]).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct TlsInfo {
    /// `"TLSv1.3"` or `"TLSv1.2"` (`None` before the handshake completes).
    pub protocol_version: Option<String>,
    /// The cipher suite's IANA name, e.g. `"TLS13_AES_256_GCM_SHA384"`.
    pub cipher_suite: Option<String>,
    /// The bulk cipher's key size in bits.
    pub cipher_bits: Option<u32>,
    /// The protocol agreed by ALPN, if any.
    pub alpn_protocol: Option<Vec<u8>>,
    /// The peer's certificate chain (DER), end certificate first; empty if the peer sent none.
    pub peer_certificates: Vec<Vec<u8>>,
    /// Client: the name the server was verified against. Server: the SNI the client sent.
    pub server_name: Option<String>,
    /// The handshake resumed an earlier session (a TLS 1.3 ticket or PSK, a
    /// TLS 1.2 session ID or ticket) instead of a full handshake. Resumption
    /// is on by default with rustls: a client resumes when it connects again
    /// with the same `ClientConfig` (its session cache) to a server whose
    /// `ServerConfig` remembers the session. `false` before the handshake completes.
    pub resumed: bool,
}

type OnHandshake = Box<dyn FnOnce(Result<Transport>)>;

#[derive(Default)]
struct State {
    handshaken: bool,
    /// The application protocol was given the transport (`connection_made`
    /// or, for `start_tls`, the future's result).
    app_started: bool,
    /// `close()`/`abort()` was called, or the TLS session is ending.
    closing: bool,
    /// Our close_notify is queued.
    shutdown_sent: bool,
    /// The peer's close_notify arrived.
    peer_closed: bool,
    /// `eof_received` was delivered.
    eof_delivered: bool,
    /// `connection_lost` was delivered (or will never be: no protocol).
    lost: bool,
    app_paused: bool,
    pump_scheduled: bool,
    conn_lost_writes: u32,
    flow: WriteFlow,
}

pub(crate) struct TlsInner {
    lp: EventLoop,
    raw: RefCell<Option<Transport>>,
    session: RefCell<TlsSession>,
    /// The application protocol, and its notes (see `transport::slot`).
    slot: ProtocolSlot<dyn Protocol, FlowNote>,
    st: RefCell<State>,
    /// Decrypted plaintext not yet delivered (reading paused).
    pending: RefCell<VecDeque<Vec<u8>>>,
    /// Reused plaintext buffer.
    rbuf: RefCell<Vec<u8>>,
    on_handshake: RefCell<Option<OnHandshake>>,
    /// Report a failed handshake only once the raw transport is lost (the
    /// socket closed, out of the poll): for callers that close a descriptor
    /// of their own then (`create_tls_transport`, `start_tls_transport`).
    defer_failure: std::cell::Cell<bool>,
    deferred_failure: RefCell<Option<(OnHandshake, Error)>>,
    handshake_timeout: Duration,
    shutdown_timeout: Duration,
    timer: RefCell<Option<TimerHandle>>,
}

/// The protocol on the raw stream transport.
struct TlsProto(Rc<TlsInner>);

impl Protocol for TlsProto {
    fn connection_made(&mut self, transport: Transport) {
        self.0.raw_made(transport);
    }
    fn data_received(&mut self, data: &[u8]) {
        self.0.raw_data(data);
    }
    fn eof_received(&mut self) -> bool {
        self.0.raw_eof()
    }
    fn connection_lost(&mut self, exc: Option<Error>) {
        self.0.raw_lost(exc);
    }
    fn resume_writing(&mut self) {
        self.0.maybe_resume();
    }
}

/// The raw transport lets go of its protocol after `connection_lost`, and
/// when the loop closes with the connection still open (the stream's
/// `on_loop_close`): nothing can drive this TLS connection any more, so it
/// lets go of what it holds (application protocol, raw transport, timer,
/// handshake callback). Else the cycles through them (the application's
/// protocol holds the TLS transport; the timer's callback holds this state)
/// would keep the connection and its socket alive for ever.
impl Drop for TlsProto {
    fn drop(&mut self) {
        if let Ok(mut st) = self.0.st.try_borrow_mut() {
            st.closing = true;
            st.lost = true;
        }
        self.0.release();
    }
}

impl TlsInner {
    fn new(
        lp: &EventLoop,
        session: TlsSession,
        handshake_timeout: Option<Duration>,
        shutdown_timeout: Option<Duration>,
        on_handshake: OnHandshake,
    ) -> Rc<TlsInner> {
        Rc::new(TlsInner {
            lp: lp.clone(),
            raw: RefCell::new(None),
            session: RefCell::new(session),
            slot: ProtocolSlot::new(None),
            st: RefCell::new(State::default()),
            pending: RefCell::new(VecDeque::new()),
            rbuf: RefCell::new(Vec::new()),
            on_handshake: RefCell::new(Some(on_handshake)),
            defer_failure: std::cell::Cell::new(false),
            deferred_failure: RefCell::new(None),
            handshake_timeout: handshake_timeout.unwrap_or(DEFAULT_HANDSHAKE_TIMEOUT),
            shutdown_timeout: shutdown_timeout.unwrap_or(DEFAULT_SHUTDOWN_TIMEOUT),
            timer: RefCell::new(None),
        })
    }

    fn transport(self: &Rc<Self>) -> Transport {
        Transport::from_tls(self.clone())
    }

    fn raw(&self) -> Option<Transport> {
        self.raw.borrow().clone()
    }

    fn set_timer(self: &Rc<Self>, delay: Duration, f: impl FnOnce(Rc<TlsInner>) + 'static) {
        self.cancel_timer();
        let me = self.clone();
        if let Ok(t) = self.lp.call_later(delay.as_secs_f64(), move || f(me)) {
            *self.timer.borrow_mut() = Some(t);
        }
    }

    fn cancel_timer(&self) {
        if let Some(t) = self.timer.borrow_mut().take() {
            t.cancel();
        }
    }

    // ------------------------------------------------------------ raw side

    fn raw_made(self: &Rc<Self>, raw: Transport) {
        let (low, high) = self.st.borrow().flow.limits();
        let _ = raw.set_write_buffer_limits(Some(high), Some(low));
        if let Some(stream) = raw.stream_inner() {
            stream.set_tls_layer(Rc::downgrade(self));
        }
        *self.raw.borrow_mut() = Some(raw.clone());
        if self.st.borrow().closing {
            // close()/abort() came before the socket was ours: no handshake.
            raw.abort();
            return;
        }
        let timeout = self.handshake_timeout;
        self.set_timer(timeout, move |me| {
            if !me.st.borrow().handshaken {
                me.fail_handshake(Error::Tls(TlsError::HandshakeTimeout(timeout)), true);
            }
        });
        self.flush();
    }

    fn raw_data(self: &Rc<Self>, data: &[u8]) {
        let mut off = 0;
        while off < data.len() {
            let fed = self.session.borrow_mut().feed(&data[off..]);
            let n = match fed {
                Ok(n) => n,
                // Only "received plaintext buffer full": the plaintext is taken below.
                Err(_) => 0,
            };
            off += n;
            let processed = self.session.borrow_mut().process();
            match processed {
                Ok(p) => {
                    if p.peer_closed {
                        self.st.borrow_mut().peer_closed = true;
                    }
                }
                Err(e) => {
                    self.flush(); // the alert
                    self.fail(e);
                    return;
                }
            }
            if !self.after_process() {
                return;
            }
            if n == 0 && self.st.borrow().peer_closed {
                break; // nothing is read after close_notify
            }
            if n == 0 && fed.is_ok() {
                break;
            }
        }
        self.flush();
    }

    /// After records were processed: complete the handshake, deliver
    /// plaintext, handle the peer's close_notify. False if the connection failed.
    fn after_process(self: &Rc<Self>) -> bool {
        let done = {
            let st = self.st.borrow();
            !st.handshaken && !self.session.borrow().is_handshaking()
        };
        if done {
            self.st.borrow_mut().handshaken = true;
            self.cancel_timer();
            self.flush();
            let cb = self.on_handshake.borrow_mut().take();
            if let Some(cb) = cb {
                cb(Ok(self.transport()));
            }
        }
        self.take_plaintext();
        self.pump();
        true
    }

    /// Move decrypted plaintext out of the session: straight to the protocol
    /// when it reads and nothing waits, else to `pending`.
    fn take_plaintext(self: &Rc<Self>) {
        loop {
            let mut buf = std::mem::take(&mut *self.rbuf.borrow_mut());
            if buf.len() < PLAINTEXT_CHUNK {
                buf.resize(PLAINTEXT_CHUNK, 0);
            }
            let n = self.session.borrow_mut().read_plaintext(&mut buf);
            let Some(n) = n else {
                *self.rbuf.borrow_mut() = buf;
                return;
            };
            let direct = {
                let st = self.st.borrow();
                st.app_started && !st.app_paused && !st.closing && !st.lost && self.pending.borrow().is_empty()
            };
            let discard = {
                let st = self.st.borrow();
                st.closing || st.lost
            };
            if discard {
                // asyncio discards application data once shutting down.
            } else if direct {
                self.deliver(&buf[..n]);
            } else {
                self.pending.borrow_mut().push_back(buf[..n].to_vec());
            }
            *self.rbuf.borrow_mut() = buf;
        }
    }

    fn can_deliver(&self) -> bool {
        let st = self.st.borrow();
        st.app_started && !st.app_paused && !st.closing && !st.lost
    }

    /// Give `data` to the protocol (data_received, or get_buffer/buffer_updated);
    /// what is left when it pauses reading goes to the front of `pending`.
    fn deliver(self: &Rc<Self>, data: &[u8]) {
        let mut off = 0;
        while off < data.len() {
            if !self.can_deliver() {
                if !self.st.borrow().closing {
                    self.pending.borrow_mut().push_front(data[off..].to_vec());
                }
                return;
            }
            let rest = &data[off..];
            let r = self.with_protocol("data_received", |p| match p.get_buffer(rest.len()) {
                Some(b) if !b.is_empty() => {
                    let n = b.len().min(rest.len());
                    b[..n].copy_from_slice(&rest[..n]);
                    p.buffer_updated(n);
                    n
                }
                Some(_) => 0,
                None => {
                    p.data_received(rest);
                    rest.len()
                }
            });
            match r {
                Some(0) => {
                    self.fatal_error(Error::state("get_buffer() returned an empty buffer"), "Fatal error: protocol.get_buffer() call failed.");
                    return;
                }
                Some(n) => off += n,
                None => return,
            }
        }
    }

    /// Deliver pending plaintext, then the peer's EOF once all is delivered.
    fn pump(self: &Rc<Self>) {
        while self.can_deliver() {
            let chunk = self.pending.borrow_mut().pop_front();
            match chunk {
                Some(c) => self.deliver(&c),
                None => break,
            }
        }
        let eof = {
            let st = self.st.borrow();
            st.peer_closed && st.app_started && !st.eof_delivered && !st.app_paused && !st.lost
                && self.pending.borrow().is_empty()
        };
        if eof {
            let closing = {
                let mut st = self.st.borrow_mut();
                st.eof_delivered = true;
                st.closing
            };
            if !closing {
                // The return value has no effect with TLS (asyncio warns).
                self.with_protocol("eof_received", |p| {
                    p.eof_received();
                });
            }
            self.st.borrow_mut().closing = true;
            self.start_shutdown();
        }
    }

    fn raw_eof(self: &Rc<Self>) -> bool {
        self.session.borrow_mut().feed_eof();
        if !self.st.borrow().handshaken {
            self.fail_handshake(
                Error::Tls(TlsError::HandshakeInterrupted("the peer closed the connection".into())),
                false,
            );
        }
        // Without close_notify asyncio just closes: connection_lost(None) follows.
        false
    }

    fn raw_lost(self: &Rc<Self>, exc: Option<Error>) {
        self.cancel_timer();
        if !self.st.borrow().handshaken {
            let msg = exc.as_ref().map(|e| e.to_string()).unwrap_or_else(|| "connection lost".into());
            self.fail_handshake(Error::Tls(TlsError::HandshakeInterrupted(msg)), false);
        }
        let deliver = {
            let mut st = self.st.borrow_mut();
            let d = st.app_started && !st.lost;
            st.lost = true;
            st.closing = true;
            d
        };
        if deliver {
            self.deliver_lost(self.slot.get(), |p| p.connection_lost(exc));
        }
        let deferred = self.deferred_failure.borrow_mut().take();
        self.release();
        if let Some((cb, err)) = deferred {
            cb(Err(err));
        }
    }

    /// Let go of the application protocol, the raw transport, the timer and
    /// the handshake callback (idempotent; a cell in use is left alone).
    fn release(&self) {
        self.cancel_timer();
        let app = self.slot.try_take();
        drop(app);
        let raw = self.raw.try_borrow_mut().ok().and_then(|mut r| r.take());
        drop(raw);
        self.slot.clear_notes();
        if let Ok(mut pending) = self.pending.try_borrow_mut() {
            pending.clear();
        }
        let cb = self.on_handshake.try_borrow_mut().ok().and_then(|mut c| c.take());
        drop(cb);
        let deferred = self.deferred_failure.try_borrow_mut().ok().and_then(|mut c| c.take());
        drop(deferred);
    }

    /// The handshake failed: fail the future; close the socket (after the
    /// alert), or abort it.
    fn fail_handshake(self: &Rc<Self>, err: Error, abort: bool) {
        self.cancel_timer();
        {
            let mut st = self.st.borrow_mut();
            st.closing = true;
        }
        let cb = self.on_handshake.borrow_mut().take();
        if let Some(cb) = cb {
            if self.defer_failure.get() && self.raw().is_some() {
                *self.deferred_failure.borrow_mut() = Some((cb, err));
            } else {
                cb(Err(err));
            }
        }
        if let Some(raw) = self.raw() {
            if abort {
                raw.abort();
            } else {
                // The alert goes out first, but a peer that does not read
                // must not hold the socket: abort after the shutdown timeout.
                raw.close();
                self.set_timer(self.shutdown_timeout, |me| {
                    if let Some(raw) = me.raw() {
                        raw.abort();
                    }
                });
            }
        }
    }

    /// A TLS error on the connection.
    fn fail(self: &Rc<Self>, err: Error) {
        if !self.st.borrow().handshaken {
            self.fail_handshake(err, false);
            return;
        }
        self.st.borrow_mut().closing = true;
        if let Some(raw) = self.raw() {
            raw.abort_with_error(err);
        }
    }

    /// Hand every ciphertext byte the session has to the raw transport.
    fn flush(&self) {
        let mut out = Vec::new();
        self.session.borrow_mut().take_ciphertext(&mut out);
        if out.is_empty() {
            return;
        }
        if let Some(raw) = self.raw() {
            let _ = raw.write_owned(out);
        }
    }

    fn start_shutdown(self: &Rc<Self>) {
        let first = {
            let mut st = self.st.borrow_mut();
            let first = !st.shutdown_sent;
            st.shutdown_sent = true;
            first
        };
        if first && self.st.borrow().handshaken {
            self.session.borrow_mut().send_close_notify();
            self.flush();
        }
        let Some(raw) = self.raw() else { return };
        if self.st.borrow().peer_closed || !self.st.borrow().handshaken {
            self.cancel_timer();
            raw.close();
        } else if first {
            // Wait for the peer's close_notify (reading must go on for it).
            raw.resume_reading();
            let timeout = self.shutdown_timeout;
            self.set_timer(timeout, move |me| {
                if let Some(raw) = me.raw() {
                    raw.abort_with_error(Error::Tls(TlsError::ShutdownTimeout(timeout)));
                }
            });
        }
    }

    // ------------------------------------------------------------ protocol side

    /// Give the application protocol the transport: `connection_made`.
    fn start_app(self: &Rc<Self>, protocol: ProtocolRef) -> bool {
        let old = self.slot.replace(Some(protocol));
        drop(old);
        self.st.borrow_mut().app_started = true;
        let t = self.transport();
        self.with_protocol("connection_made", move |p| p.connection_made(t)).is_some()
    }

    /// `start_tls`: the protocol already knows the connection; no `connection_made`.
    fn adopt_app(self: &Rc<Self>, protocol: Option<ProtocolRef>) {
        let old = self.slot.replace(protocol);
        drop(old);
        self.st.borrow_mut().app_started = true;
        self.schedule_pump();
    }

    fn schedule_pump(self: &Rc<Self>) {
        {
            let mut st = self.st.borrow_mut();
            if st.pump_scheduled {
                return;
            }
            st.pump_scheduled = true;
        }
        let me = self.clone();
        self.lp.schedule(Box::new(move || {
            me.st.borrow_mut().pump_scheduled = false;
            me.pump();
        }));
    }

    /// Writes after close: dropped, logged after a few (asyncio).
    fn refuse_write(&self) -> bool {
        let mut st = self.st.borrow_mut();
        if !(st.closing || st.lost) {
            return false;
        }
        if count_dropped_write(&mut st.conn_lost_writes) {
            drop(st);
            self.lp.warn(SOCKET_SEND_WARNING);
        }
        true
    }

    // ------------------------------------------------------------ the Transport methods

    pub(crate) fn get_loop(&self) -> EventLoop {
        self.lp.clone()
    }

    pub(crate) fn close(self: &Rc<Self>) {
        {
            let mut st = self.st.borrow_mut();
            if st.closing || st.lost {
                return;
            }
            st.closing = true;
        }
        self.pending.borrow_mut().clear();
        self.start_shutdown();
    }

    pub(crate) fn is_closing(&self) -> bool {
        let st = self.st.borrow();
        st.closing || st.lost
    }

    pub(crate) fn abort(self: &Rc<Self>) {
        self.st.borrow_mut().closing = true;
        self.cancel_timer();
        if let Some(raw) = self.raw() {
            raw.abort();
        }
    }

    pub(crate) fn close_socket(self: &Rc<Self>) {
        {
            let mut st = self.st.borrow_mut();
            st.closing = true;
            st.lost = true;
        }
        self.cancel_timer();
        if let Some(raw) = self.raw() {
            raw.close_socket();
        }
        self.release();
    }

    pub(crate) fn write(self: &Rc<Self>, data: &[u8]) -> Result<()> {
        if data.is_empty() || self.refuse_write() {
            return Ok(());
        }
        let mut off = 0;
        while off < data.len() {
            let n = self.session.borrow_mut().write_plaintext(&data[off..]);
            off += n;
            self.flush();
            if n == 0 {
                break;
            }
        }
        self.maybe_pause();
        Ok(())
    }

    /// Give the session as much of `data` as it takes (with its unlimited
    /// buffer, see session.rs, all of it); the bytes taken.
    fn encrypt_plaintext(&self, data: &[u8]) -> usize {
        let mut off = 0;
        while off < data.len() {
            let n = self.session.borrow_mut().write_plaintext(&data[off..]);
            if n == 0 {
                break;
            }
            off += n;
        }
        off
    }

    /// `write` of bytes lent for this call (see [`Transport::write_lent`]):
    /// they are encrypted while lent (the session takes all plaintext at
    /// once; nothing else runs meanwhile), and the ciphertext is sent and
    /// the protocol told (`pause_writing`, a dropped-write warning) only
    /// once `data` is dropped.
    ///
    /// [`Transport::write_lent`]: crate::Transport::write_lent
    pub(crate) fn write_lent<B: LentBytes>(self: &Rc<Self>, data: B) -> Result<()> {
        let open = {
            let st = self.st.borrow();
            !(st.closing || st.lost)
        };
        let (len, rest) = data.lend(|b| {
            if !open || b.is_empty() {
                return (b.len(), None);
            }
            let off = self.encrypt_plaintext(b);
            (b.len(), (off < b.len()).then(|| b[off..].to_vec()))
        });
        drop(data);
        if len == 0 || self.refuse_write() {
            return Ok(());
        }
        self.flush();
        match rest {
            // What the session did not take: the copying path.
            Some(rest) => self.write(&rest),
            None => {
                self.maybe_pause();
                Ok(())
            }
        }
    }

    pub(crate) fn writelines<'a, I: IntoIterator<Item = &'a [u8]>>(self: &Rc<Self>, chunks: I) -> Result<()> {
        for c in chunks {
            if c.is_empty() || self.refuse_write() {
                continue;
            }
            self.encrypt_plaintext(c);
        }
        self.flush();
        self.maybe_pause();
        Ok(())
    }

    pub(crate) fn write_eof(&self) -> Result<()> {
        Err(Error::state("SSL doesn't support half-closes"))
    }

    pub(crate) fn can_write_eof(&self) -> bool {
        false
    }

    pub(crate) fn kind(&self) -> TransportKind {
        TransportKind::Stream
    }

    pub(crate) fn pause_reading(&self) {
        {
            let mut st = self.st.borrow_mut();
            if st.closing || st.lost || st.app_paused {
                return;
            }
            st.app_paused = true;
        }
        if let Some(raw) = self.raw() {
            raw.pause_reading();
        }
    }

    pub(crate) fn resume_reading(self: &Rc<Self>) {
        {
            let mut st = self.st.borrow_mut();
            if st.closing || st.lost || !st.app_paused {
                return;
            }
            st.app_paused = false;
        }
        if let Some(raw) = self.raw() {
            raw.resume_reading();
        }
        self.schedule_pump();
    }

    pub(crate) fn is_reading(&self) -> bool {
        let st = self.st.borrow();
        !st.app_paused && !st.closing && !st.lost
    }

    pub(crate) fn get_write_buffer_size(&self) -> usize {
        self.raw().map(|r| r.get_write_buffer_size()).unwrap_or(0)
    }

    pub(crate) fn get_write_buffer_limits(&self) -> (usize, usize) {
        self.st.borrow().flow.limits()
    }

    pub(crate) fn set_write_buffer_limits_signed(self: &Rc<Self>, high: Option<i64>, low: Option<i64>) -> Result<()> {
        self.st.borrow_mut().flow.set_limits(high, low)?;
        let (low, high) = self.st.borrow().flow.limits();
        if let Some(raw) = self.raw() {
            raw.set_write_buffer_limits(Some(high), Some(low))?;
        }
        self.maybe_pause();
        Ok(())
    }

    pub(crate) fn is_writing_paused(&self) -> bool {
        self.st.borrow().flow.is_paused()
    }

    pub(crate) fn get_extra_info(&self, name: &str) -> Option<ExtraInfo> {
        match name {
            "peercert" => self.session.borrow().peer_cert().map(ExtraInfo::Bytes),
            "cipher" => self
                .session
                .borrow()
                .cipher()
                .map(|(name, protocol, bits)| ExtraInfo::Cipher { name, protocol, bits }),
            "alpn_protocol" => self.info().alpn_protocol.map(ExtraInfo::Bytes),
            "server_hostname" => self.info().server_name.map(ExtraInfo::Text),
            "sslcontext" => Some(ExtraInfo::TlsConfig(self.session.borrow().config())),
            "ssl_object" => Some(ExtraInfo::Tls(self.info())),
            "compression" => None,
            _ => self.raw().and_then(|r| r.get_extra_info(name)),
        }
    }

    pub(crate) fn info(&self) -> TlsInfo {
        self.session.borrow().info()
    }

    pub(crate) fn peername(&self) -> Option<Address> {
        self.raw().and_then(|r| r.peername())
    }

    pub(crate) fn sockname(&self) -> Option<Address> {
        self.raw().and_then(|r| r.sockname())
    }

    pub(crate) fn socket_fd(&self) -> Option<RawFd> {
        self.raw().and_then(|r| r.socket_fd())
    }

    pub(crate) fn on_drained<F: FnOnce(Result<()>) + 'static>(&self, f: F) {
        match self.raw() {
            Some(r) => r.on_drained(f),
            None => f(Err(Error::state("Connection is closed by peer"))),
        }
    }

    pub(crate) fn set_protocol(&self, protocol: ProtocolRef) {
        let old = self.slot.replace(Some(protocol));
        drop(old);
    }

    pub(crate) fn get_protocol(&self) -> Option<ProtocolRef> {
        self.slot.get()
    }
}

impl SlotHost for TlsInner {
    type Proto = dyn Protocol;
    type Note = FlowNote;

    fn slot(&self) -> &ProtocolSlot<dyn Protocol, FlowNote> {
        &self.slot
    }

    fn event_loop(&self) -> &EventLoop {
        &self.lp
    }

    /// A panicking protocol aborts the connection.
    fn protocol_panicked(self: &Rc<Self>, what: &str, msg: String) {
        self.abort_on_panic(what, msg);
    }

    fn deliver_note(self: &Rc<Self>, note: FlowNote) {
        if !self.st.borrow().lost {
            deliver_flow_note(self, note);
        }
    }
}

impl FlowHost for TlsInner {
    /// The raw transport's buffer counts (plaintext is encrypted at once).
    fn write_flow(&self) -> (RefMut<'_, WriteFlow>, usize) {
        let size = self.get_write_buffer_size();
        (RefMut::map(self.st.borrow_mut(), |st| &mut st.flow), size)
    }
}

impl Teardown for TlsInner {
    /// The raw transport is aborted with `err` (its `connection_lost`
    /// brings the application protocol's).
    fn abort_with_error(self: &Rc<Self>, err: Error) {
        self.st.borrow_mut().closing = true;
        self.cancel_timer();
        if let Some(raw) = self.raw() {
            raw.abort_with_error(err);
        }
    }
}

impl fmt::Debug for TlsInner {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("TlsInner").field("handshaken", &self.st.borrow().handshaken).finish()
    }
}

/// The internal protocol of an accepted TLS connection (see `server.rs`):
/// `factory` makes the application's protocol once the handshake is done.
pub(crate) fn server_protocol(
    lp: &EventLoop,
    opts: &TlsServerOptions,
    factory: Rc<dyn Fn() -> ProtocolRef>,
) -> Result<ProtocolRef> {
    let session = TlsSession::server(opts.config.clone())?;
    let lp2 = lp.clone();
    let on_hs: OnHandshake = Box::new(move |r| {
        // A failed handshake is only logged by asyncio in debug mode: nothing to report.
        let Ok(t) = r else { return };
        match catch_unwind(AssertUnwindSafe(|| factory())) {
            Ok(p) => {
                if let Some(inner) = t.tls_inner() {
                    inner.start_app(p);
                }
            }
            Err(payload) => {
                lp2.call_exception_handler(ExceptionContext {
                    message: "Error in protocol factory".into(),
                    error: Some(Error::Panic(panic_message(&*payload))),
                });
                t.abort();
            }
        }
    });
    let inner = TlsInner::new(lp, session, opts.handshake_timeout, opts.shutdown_timeout, on_hs);
    Ok(Rc::new(RefCell::new(TlsProto(inner))))
}

impl EventLoop {
    /// Connect to `host:port` over TLS (asyncio's `create_connection(ssl=...)`):
    /// the future completes with the TLS transport after the handshake and the
    /// protocol's `connection_made`. The certificate is verified against
    /// `tls.server_name`, or `host` when it is `None`. A failed handshake
    /// completes it with [`Error::Tls`] (the factory is never called) and the
    /// socket is closed.
    pub fn create_connection_tls<P, F>(
        &self,
        factory: F,
        host: &str,
        port: u16,
        opts: ConnectOptions,
        tls: TlsClientOptions,
    ) -> LoopFuture<Connection<P>>
    where
        P: Protocol,
        F: FnOnce() -> P + 'static,
    {
        let out = LoopFuture::new();
        let name = tls.server_name.clone().unwrap_or_else(|| host.to_string());
        let session = match TlsSession::client(tls.config.clone(), &name) {
            Ok(s) => s,
            Err(e) => {
                out.set(Err(e));
                return out;
            }
        };
        let out2 = out.clone();
        let on_hs: OnHandshake = Box::new(move |r| match r {
            Ok(t) => match catch_unwind(AssertUnwindSafe(factory)) {
                Ok(p) => {
                    let p = Rc::new(RefCell::new(p));
                    let ok = t.tls_inner().map(|i| i.start_app(p.clone())).unwrap_or(false);
                    out2.set(if ok { Ok((t, p)) } else { Err(Error::state("connection_made() failed")) });
                }
                Err(payload) => {
                    t.abort();
                    out2.set(Err(Error::Panic(panic_message(&*payload))));
                }
            },
            Err(e) => out2.set(Err(e)),
        });
        let inner = TlsInner::new(self, session, tls.handshake_timeout, tls.shutdown_timeout, on_hs);
        let raw = self.create_connection(move || TlsProto(inner), host, port, opts);
        let out3 = out.clone();
        let raw2 = raw.clone();
        raw.add_done_callback(move || {
            if let Some(Err(e)) = raw2.take_result() {
                out3.set(Err(e));
            }
        });
        out
    }

    /// Upgrade a live plain transport to TLS (STARTTLS; asyncio's
    /// `start_tls`): the transport's protocol is kept and sees the
    /// plaintext side, through the TLS transport the future completes with
    /// once the handshake is done (no second `connection_made`). The old
    /// transport must no longer be used. Client options need a `server_name`.
    pub fn start_tls(&self, transport: &Transport, tls: impl Into<TlsOptions>) -> LoopFuture<Transport> {
        let out = LoopFuture::new();
        let out2 = out.clone();
        if let Err(e) = self.start_tls_transport(transport, tls, None, move |r| out2.set(r)) {
            out.set(Err(e));
        }
        out
    }

    /// [`EventLoop::start_tls`] with a callback instead of a future, and the
    /// TLS transport returned at once (until the handshake completes it only
    /// accepts `close`/`abort`). `protocol`, when `Some`, takes the place of
    /// the transport's protocol on the plaintext side (asyncio's
    /// `start_tls(transport, protocol, ...)`); it hears nothing before the
    /// handshake completes, and no `connection_made`. `on_handshake` gets
    /// the TLS transport, or the error ([`Error::Tls`]) once the socket is
    /// closed and out of the poll (its descriptor may then be closed).
    pub fn start_tls_transport(
        &self,
        transport: &Transport,
        tls: impl Into<TlsOptions>,
        protocol: Option<ProtocolRef>,
        on_handshake: impl FnOnce(Result<Transport>) + 'static,
    ) -> Result<Transport> {
        if transport.is_tls() {
            return Err(Error::invalid("the transport already uses TLS"));
        }
        if transport.is_closing() {
            return Err(Error::state("the transport is closing"));
        }
        let (session, hs, sd) = session_for(tls.into(), "start_tls")?;
        let app = protocol.or_else(|| transport.get_protocol());
        let on_hs: OnHandshake = Box::new(move |r| match r {
            Ok(t) => {
                if let Some(inner) = t.tls_inner() {
                    inner.adopt_app(app);
                }
                on_handshake(Ok(t));
            }
            Err(e) => on_handshake(Err(e)),
        });
        let inner = TlsInner::new(self, session, hs, sd, on_hs);
        inner.defer_failure.set(true);
        transport.set_protocol(Rc::new(RefCell::new(TlsProto(inner.clone()))));
        // As asyncio's start_tls: the handshake needs the socket read, even
        // if the plain protocol had paused reading.
        transport.resume_reading();
        inner.raw_made(transport.clone());
        Ok(inner.transport())
    }
}

/// The session and timeouts `opts` ask for; `what` names the caller in the
/// error when client options lack a `server_name`.
fn session_for(opts: TlsOptions, what: &str) -> Result<(TlsSession, Option<Duration>, Option<Duration>)> {
    Ok(match opts {
        TlsOptions::Client(o) => {
            let Some(name) = o.server_name.clone() else {
                return Err(Error::invalid(format!("{what}: TlsClientOptions::server_name is required")));
            };
            (TlsSession::client(o.config.clone(), &name)?, o.handshake_timeout, o.shutdown_timeout)
        }
        TlsOptions::Server(o) => (TlsSession::server(o.config.clone())?, o.handshake_timeout, o.shutdown_timeout),
    })
}

impl EventLoop {
    /// Make a TLS transport on a connected stream socket (an accepted or
    /// connected socket handed over by other code, as asyncio's
    /// `_make_ssl_transport`). `protocol` gets `connection_made` once the
    /// handshake is done, then `on_handshake(Ok(transport))` runs; a failed
    /// handshake closes the socket, then runs `on_handshake(Err(..))` once
    /// it is out of the poll (the protocol never hears of the connection).
    /// Client options need a `server_name`. The TLS transport is returned at
    /// once; until the handshake completes it only accepts `close`/`abort`.
    pub fn create_tls_transport(
        &self,
        stream: crate::transport::tcp::StreamSocket,
        protocol: ProtocolRef,
        tls: impl Into<TlsOptions>,
        on_handshake: impl FnOnce(Result<Transport>) + 'static,
    ) -> Result<Transport> {
        let (session, hs, sd) = session_for(tls.into(), "create_tls_transport")?;
        let on_hs: OnHandshake = Box::new(move |r| match r {
            Ok(t) => {
                // A connection_made that fails has already been reported and
                // the connection aborted: connection_lost follows, so the
                // handshake itself is still reported as done.
                if let Some(i) = t.tls_inner() {
                    i.start_app(protocol);
                }
                on_handshake(Ok(t));
            }
            Err(e) => on_handshake(Err(e)),
        });
        let inner = TlsInner::new(self, session, hs, sd, on_hs);
        inner.defer_failure.set(true);
        let tls_transport = inner.transport();
        self.create_transport(stream, Rc::new(RefCell::new(TlsProto(inner))))?;
        Ok(tls_transport)
    }
}
