//! The TLS transport's state and its raw side: an internal protocol
//! (`TlsProto`) on the raw stream transport feeds the TLS session (see
//! `session.rs`) and delivers plaintext to the application's protocol.

use std::cell::{RefCell, RefMut};
use std::collections::VecDeque;
use std::fmt;
use std::rc::Rc;
use std::time::Duration;

use crate::error::{Error, Result, TlsError};
use crate::event_loop::EventLoop;
use crate::flow::WriteFlow;
use crate::handle::TimerHandle;
use crate::protocol::{Protocol, ProtocolRef};
use crate::transport::core::lifecycle::{Teardown, SOCKET_SEND_WARNING};
use crate::transport::core::slot::{deliver_flow_note, FlowHost, FlowNote, ProtocolSlot, SlotHost};
use crate::transport::registry::WeakTransport;
use crate::transport::tls::state::State;
use crate::transport::tls::{TlsSession, DEFAULT_HANDSHAKE_TIMEOUT, DEFAULT_SHUTDOWN_TIMEOUT};
use crate::transport::{Transport, TransportOps};

/// Plaintext read out of the session at a time (a TLS record holds at most 16 KiB).
const PLAINTEXT_CHUNK: usize = 64 * 1024;


pub(crate) type OnHandshake = Box<dyn FnOnce(Result<Transport>)>;

pub(crate) struct TlsInner {
    pub(super) lp: EventLoop,
    pub(super) raw: RefCell<Option<Transport>>,
    pub(super) session: RefCell<TlsSession>,
    /// The application protocol, and its notes (see `transport::core::slot`).
    pub(super) slot: ProtocolSlot<dyn Protocol, FlowNote>,
    pub(super) st: RefCell<State>,
    /// Decrypted plaintext not yet delivered (reading paused).
    pub(super) pending: RefCell<VecDeque<Vec<u8>>>,
    /// Reused plaintext buffer.
    pub(super) rbuf: RefCell<Vec<u8>>,
    pub(super) on_handshake: RefCell<Option<OnHandshake>>,
    /// Report a failed handshake only once the raw transport is lost (the
    /// socket closed, out of the poll): for callers that close a descriptor
    /// of their own then (`create_tls_transport`, `start_tls_transport`).
    pub(super) defer_failure: std::cell::Cell<bool>,
    pub(super) deferred_failure: RefCell<Option<(OnHandshake, Error)>>,
    pub(super) handshake_timeout: Duration,
    pub(super) shutdown_timeout: Duration,
    pub(super) timer: RefCell<Option<TimerHandle>>,
}

/// The protocol on the raw stream transport.
pub(crate) struct TlsProto(pub(crate) Rc<TlsInner>);

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
            st.lose();
        }
        self.0.release();
    }
}

impl TlsInner {
    pub(crate) fn new(
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

    pub(crate) fn transport(self: &Rc<Self>) -> Transport {
        Transport::from_tls(self.clone())
    }

    pub(crate) fn raw(&self) -> Option<Transport> {
        self.raw.borrow().clone()
    }

    pub(crate) fn set_timer(self: &Rc<Self>, delay: Duration, f: impl FnOnce(Rc<TlsInner>) + 'static) {
        self.cancel_timer();
        let me = self.clone();
        if let Ok(t) = self.lp.call_later(delay.as_secs_f64(), move || f(me)) {
            *self.timer.borrow_mut() = Some(t);
        }
    }

    pub(crate) fn cancel_timer(&self) {
        if let Some(t) = self.timer.borrow_mut().take() {
            t.cancel();
        }
    }

    // ------------------------------------------------------------ raw side

    pub(crate) fn raw_made(self: &Rc<Self>, raw: Transport) {
        let (low, high) = self.st.borrow().flow.limits();
        let _ = raw.set_write_buffer_limits(Some(high), Some(low));
        if let Some(stream) = raw.stream_inner() {
            stream.replace_entry(WeakTransport::Tls(Rc::downgrade(self)));
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

    pub(crate) fn raw_data(self: &Rc<Self>, data: &[u8]) {
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
    pub(crate) fn after_process(self: &Rc<Self>) -> bool {
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
    pub(crate) fn take_plaintext(self: &Rc<Self>) {
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
            let (direct, discard) = {
                let st = self.st.borrow();
                (st.app_reads() && self.pending.borrow().is_empty(), st.is_closing())
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

    pub(crate) fn can_deliver(&self) -> bool {
        self.st.borrow().app_reads()
    }

    /// Give `data` to the protocol (data_received, or get_buffer/buffer_updated);
    /// what is left when it pauses reading goes to the front of `pending`.
    pub(crate) fn deliver(self: &Rc<Self>, data: &[u8]) {
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
    pub(crate) fn pump(self: &Rc<Self>) {
        while self.can_deliver() {
            let chunk = self.pending.borrow_mut().pop_front();
            match chunk {
                Some(c) => self.deliver(&c),
                None => break,
            }
        }
        let eof = self.st.borrow().eof_due(self.pending.borrow().is_empty());
        if eof {
            let tell = self.st.borrow_mut().deliver_eof();
            if tell {
                // The return value has no effect with TLS (asyncio warns).
                self.with_protocol("eof_received", |p| {
                    p.eof_received();
                });
            }
            self.st.borrow_mut().closing = true;
            self.start_shutdown();
        }
    }

    pub(crate) fn raw_eof(self: &Rc<Self>) -> bool {
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

    pub(crate) fn raw_lost(self: &Rc<Self>, exc: Option<Error>) {
        self.cancel_timer();
        if !self.st.borrow().handshaken {
            let msg = exc.as_ref().map(|e| e.to_string()).unwrap_or_else(|| "connection lost".into());
            self.fail_handshake(Error::Tls(TlsError::HandshakeInterrupted(msg)), false);
        }
        let deliver = self.st.borrow_mut().lose();
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
    pub(crate) fn release(&self) {
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
    pub(crate) fn fail_handshake(self: &Rc<Self>, err: Error, abort: bool) {
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
    pub(crate) fn fail(self: &Rc<Self>, err: Error) {
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
    pub(crate) fn flush(&self) {
        let mut out = Vec::new();
        self.session.borrow_mut().take_ciphertext(&mut out);
        if out.is_empty() {
            return;
        }
        if let Some(raw) = self.raw() {
            let _ = raw.write_owned(out);
        }
    }

    pub(crate) fn start_shutdown(self: &Rc<Self>) {
        let first = self.st.borrow_mut().send_shutdown();
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
    pub(crate) fn start_app(self: &Rc<Self>, protocol: ProtocolRef) -> bool {
        let old = self.slot.replace(Some(protocol));
        drop(old);
        self.st.borrow_mut().app_started = true;
        let t = self.transport();
        self.with_protocol("connection_made", move |p| p.connection_made(t)).is_some()
    }

    /// `start_tls`: the protocol already knows the connection; no `connection_made`.
    pub(crate) fn adopt_app(self: &Rc<Self>, protocol: Option<ProtocolRef>) {
        let old = self.slot.replace(protocol);
        drop(old);
        self.st.borrow_mut().app_started = true;
        self.schedule_pump();
    }

    pub(crate) fn schedule_pump(self: &Rc<Self>) {
        if !self.st.borrow_mut().schedule_pump() {
            return;
        }
        let me = self.clone();
        self.lp.schedule(Box::new(move || {
            me.st.borrow_mut().pump_ran();
            me.pump();
        }));
    }

    /// Writes after close: dropped, logged after a few (asyncio).
    pub(crate) fn refuse_write(&self) -> bool {
        let refused = self.st.borrow_mut().refuse_write();
        match refused {
            None => false,
            Some(log) => {
                if log {
                    self.lp.warn(SOCKET_SEND_WARNING);
                }
                true
            }
        }
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

