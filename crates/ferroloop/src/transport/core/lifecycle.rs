//! The way to `connection_lost`: what the stream, datagram and TLS
//! transports share when they close.
//!
//! - [`Lifecycle`]: asyncio's `_closing` and `_conn_lost` of the stream and
//!   datagram transports, and their paused and scheduled reading, with the
//!   transitions of `close`, `abort`, `connection_lost`, a finalizer's close,
//!   a write after the connection was lost, `pause_reading` and
//!   `resume_reading`;
//! - [`count_dropped_write`]: when a dropped write is logged (asyncio's
//!   `LOG_THRESHOLD_FOR_CONNLOST_WRITES`), for the counters kept apart from
//!   `_conn_lost` (a closing write pipe, TLS);
//! - [`Teardown`]: on top of [`SlotHost`], asyncio's `_fatal_error` and the
//!   abort that follows a panicking protocol method (stream, datagram, TLS);
//! - [`LifecycleHost`]: `connection_lost` and a read from the ready queue
//!   (stream, datagram).
//!
//! As with the slot, everything is static dispatch: the transitions are
//! plain field updates inside the transport's own state borrow.

use std::cell::RefMut;
use std::rc::Rc;

use crate::error::Error;
use crate::event_loop::ExceptionContext;
use crate::transport::core::slot::SlotHost;

/// After this many writes dropped because the connection is lost (or
/// closing, for a write pipe and TLS), each further one is logged
/// (asyncio's `LOG_THRESHOLD_FOR_CONNLOST_WRITES`).
pub(crate) const CONNLOST_WRITE_LOG_THRESHOLD: u32 = 5;

/// The warning logged for a dropped write on a socket.
pub(crate) const SOCKET_SEND_WARNING: &str = "socket.send() raised exception.";

/// Count one more dropped write in `dropped` (the writes dropped so far);
/// true when it is to be logged: from the
/// [`CONNLOST_WRITE_LOG_THRESHOLD`]-th on.
#[inline]
pub(crate) fn count_dropped_write(dropped: &mut u32) -> bool {
    *dropped += 1;
    *dropped >= CONNLOST_WRITE_LOG_THRESHOLD
}

/// Where a stream or datagram transport is on its way to `connection_lost`.
#[derive(Default)]
pub(crate) struct Lifecycle {
    /// `connection_made` was delivered.
    pub(crate) started: bool,
    /// `close`/`abort` was called, or the connection was lost.
    pub(crate) closing: bool,
    /// asyncio's `_conn_lost`: >0 once `connection_lost` is scheduled;
    /// counts writes dropped after that.
    pub(crate) conn_lost: u32,
    /// `connection_lost` was delivered.
    pub(crate) lost: bool,
    /// `pause_reading` was called (and no `resume_reading` since).
    pub(crate) read_paused: bool,
    /// A read attempt is queued on the ready queue.
    pub(crate) read_scheduled: bool,
}

impl Lifecycle {
    /// `close()`, with `flushed` telling whether nothing is queued. False
    /// if already closing; else closing from now on, and true when
    /// `connection_lost` is due at once (it then counts as scheduled).
    #[inline]
    pub(crate) fn close(&mut self, flushed: bool) -> bool {
        if self.closing {
            return false;
        }
        self.closing = true;
        if flushed {
            self.conn_lost += 1;
        }
        flushed
    }

    /// `abort()`: false once `connection_lost` is scheduled; else closing,
    /// `connection_lost` counts as scheduled, and the caller drops its queue
    /// and schedules it.
    #[inline]
    pub(crate) fn abort(&mut self) -> bool {
        if self.conn_lost > 0 {
            return false;
        }
        self.closing = true;
        self.conn_lost += 1;
        true
    }

    /// `connection_lost` is being delivered: `None` if it already was; else
    /// lost (and closing) from now on, and whether `connection_made` was
    /// delivered (only then does the protocol hear of the loss).
    #[inline]
    pub(crate) fn lose(&mut self) -> Option<bool> {
        if self.lost {
            return None;
        }
        self.lost = true;
        self.closing = true;
        Some(self.started)
    }

    /// The socket closes without `connection_lost` (a finalizer's
    /// `close_socket`): closing, lost, and nothing scheduled any more.
    pub(crate) fn close_silently(&mut self) {
        self.closing = true;
        self.lost = true;
        self.conn_lost = self.conn_lost.max(1);
    }

    /// `pause_reading()`: paused unless closing.
    pub(crate) fn pause_reading(&mut self) {
        if !self.closing {
            self.read_paused = true;
        }
    }

    /// `resume_reading()`: true if reading was paused (and not closing) and
    /// resumes now.
    pub(crate) fn resume_reading(&mut self) -> bool {
        if self.closing || !self.read_paused {
            return false;
        }
        self.read_paused = false;
        true
    }

    /// Neither paused nor closing.
    pub(crate) fn is_reading(&self) -> bool {
        !self.read_paused && !self.closing
    }

    /// A write: `None` if `connection_lost` is not scheduled (the write goes
    /// on). Else it is dropped and counted; `Some(true)` when it is to be
    /// logged: from the [`CONNLOST_WRITE_LOG_THRESHOLD`]-th dropped write on.
    #[inline(always)]
    pub(crate) fn drop_write(&mut self) -> Option<bool> {
        if self.conn_lost == 0 {
            return None;
        }
        // `conn_lost` is one more than the writes dropped so far.
        self.conn_lost += 1;
        Some(self.conn_lost > CONNLOST_WRITE_LOG_THRESHOLD)
    }
}

/// A connection transport's way out, on top of its [`SlotHost`] calls.
///
/// Implementors supply the abort with an error; the provided methods are
/// asyncio's `_fatal_error` and the reaction to a panicking protocol method.
pub(crate) trait Teardown: SlotHost + 'static {
    /// Close at once because of `err`, without reporting it: the protocol
    /// receives `connection_lost(Some(err))`.
    fn abort_with_error(self: &Rc<Self>, err: Error);

    /// Close at once because of `err`: the loop's exception handler hears
    /// of it with `message` (unless it is an OS error, which asyncio only
    /// logs in debug mode), then [`Teardown::abort_with_error`].
    fn fatal_error(self: &Rc<Self>, err: Error, message: &str) {
        if !matches!(err, Error::Io(_)) {
            self.event_loop()
                .call_exception_handler(ExceptionContext { message: message.to_string(), error: Some(err.clone()) });
        }
        self.abort_with_error(err);
    }

    /// Protocol method `what` panicked with `msg`: a fatal error, which
    /// aborts the connection (for [`SlotHost::protocol_panicked`]).
    fn abort_on_panic(self: &Rc<Self>, what: &str, msg: String) {
        self.fatal_error(Error::Panic(msg), &format!("Fatal error: protocol.{what}() call failed."));
    }
}

/// A transport whose state holds a [`Lifecycle`] and that reads its socket
/// and delivers `connection_lost` itself (stream, datagram).
pub(crate) trait LifecycleHost: Teardown {
    /// The transport's [`Lifecycle`] (borrowed from its state).
    fn life(&self) -> RefMut<'_, Lifecycle>;

    /// Nothing is queued for sending.
    fn is_flushed(&self) -> bool;

    /// Deliver `connection_lost(err)` now, unless it was, and let go of the
    /// socket and the protocol.
    fn call_connection_lost(self: &Rc<Self>, err: Option<Error>);

    /// Read and deliver what the socket has (up to the per-event budget).
    fn do_read(self: &Rc<Self>);

    /// `close()`: stop reading; `connection_lost(None)` follows once the
    /// queue is sent (from the ready queue if it is empty now).
    fn close(self: &Rc<Self>) {
        let flushed = self.is_flushed();
        let lost_now = self.life().close(flushed);
        if lost_now {
            self.schedule_connection_lost(None);
        }
    }

    /// [`LifecycleHost::call_connection_lost`] from the ready queue.
    fn schedule_connection_lost(self: &Rc<Self>, err: Option<Error>) {
        let me = self.clone();
        self.event_loop().schedule(Box::new(move || me.call_connection_lost(err)));
    }

    /// [`LifecycleHost::do_read`] from the ready queue (once, until it ran;
    /// never while closing).
    fn schedule_read(self: &Rc<Self>) {
        {
            let mut life = self.life();
            if life.read_scheduled || life.closing {
                return;
            }
            life.read_scheduled = true;
        }
        let me = self.clone();
        self.event_loop().schedule(Box::new(move || {
            me.life().read_scheduled = false;
            me.do_read();
        }));
    }
}

#[cfg(test)]
mod tests {
    use std::cell::{Cell, RefCell};

    use super::*;
    use crate::event_loop::{recording_loop, EventLoop, Seen};
    use crate::transport::core::slot::ProtocolSlot;

    #[test]
    fn a_close_with_a_flushed_buffer_schedules_connection_lost_at_once() {
        let mut l = Lifecycle::default();
        assert!(l.close(true));
        assert!(l.closing);
        assert_eq!(l.conn_lost, 1, "connection_lost counts as scheduled");
        assert!(!l.close(true), "a second close does nothing");
        assert!(!l.close(false));
        assert_eq!(l.conn_lost, 1);
        assert!(!l.abort(), "abort after that is a no-op");
        assert!(!l.lost, "scheduled, not delivered");
    }

    #[test]
    fn a_close_with_queued_data_waits_for_the_flush_and_abort_still_works() {
        let mut l = Lifecycle::default();
        assert!(!l.close(false));
        assert!(l.closing);
        assert_eq!(l.conn_lost, 0, "connection_lost waits for the queue");
        assert_eq!(l.drop_write(), None, "a write while closing with queued data is not dropped here");
        assert!(l.abort(), "abort overtakes the pending flush");
        assert_eq!(l.conn_lost, 1);
        assert!(!l.abort(), "once scheduled, abort is a no-op");
        assert_eq!(l.conn_lost, 1);
    }

    #[test]
    fn abort_on_a_fresh_lifecycle_closes_and_schedules() {
        let mut l = Lifecycle::default();
        assert!(l.abort());
        assert!(l.closing);
        assert_eq!(l.conn_lost, 1);
        assert!(!l.close(true), "close after abort: already closing");
        assert_eq!(l.conn_lost, 1);
    }

    #[test]
    fn lose_tells_whether_connection_made_ran_and_happens_once() {
        let mut l = Lifecycle::default();
        assert_eq!(l.lose(), Some(false), "never started: the protocol does not hear of it");
        assert!(l.lost && l.closing);
        assert_eq!(l.lose(), None);

        let mut l = Lifecycle { started: true, ..Default::default() };
        assert!(l.close(true));
        assert_eq!(l.lose(), Some(true));
        assert_eq!(l.lose(), None);
    }

    #[test]
    fn close_silently_leaves_nothing_to_schedule_or_deliver() {
        let mut l = Lifecycle { started: true, ..Default::default() };
        l.close_silently();
        assert!(l.closing && l.lost);
        assert_eq!(l.conn_lost, 1);
        assert!(!l.abort() && !l.close(true));
        assert_eq!(l.lose(), None, "no connection_lost after a silent close");
        assert_eq!(l.drop_write(), Some(false), "writes are dropped");

        // The count of dropped writes is kept, not reset to 1.
        let mut l = Lifecycle { conn_lost: 4, ..Default::default() };
        l.close_silently();
        assert_eq!(l.conn_lost, 4);
    }

    #[test]
    fn pause_and_resume_reading_follow_asyncio() {
        let mut l = Lifecycle::default();
        assert!(l.is_reading());
        assert!(!l.resume_reading(), "not paused: nothing to resume");
        l.pause_reading();
        assert!(l.read_paused && !l.is_reading());
        l.pause_reading();
        assert!(l.resume_reading());
        assert!(l.is_reading());
        assert!(!l.resume_reading(), "resumed once");
    }

    #[test]
    fn reading_is_neither_paused_nor_resumed_while_closing() {
        let mut l = Lifecycle::default();
        l.pause_reading();
        assert!(!l.close(false));
        assert!(!l.is_reading());
        assert!(!l.resume_reading(), "no resume while closing");
        assert!(l.read_paused, "the paused flag stays as it was");

        let mut l = Lifecycle::default();
        assert!(l.close(true));
        assert!(!l.is_reading(), "closing is not reading");
        l.pause_reading();
        assert!(!l.read_paused, "no pause while closing");
    }

    #[test]
    fn dropped_writes_are_logged_from_the_fifth_on() {
        let mut l = Lifecycle::default();
        assert_eq!(l.drop_write(), None, "connection_lost not scheduled: the write goes on");
        assert_eq!(l.conn_lost, 0);
        assert!(l.abort());
        // asyncio: `if self._conn_lost >= LOG_THRESHOLD: log; self._conn_lost += 1`
        // with `_conn_lost` 1 at the first dropped write: the 5th is the first logged.
        let logged: Vec<bool> = (0..8).map(|_| l.drop_write().unwrap()).collect();
        assert_eq!(logged, [false, false, false, false, true, true, true, true]);
        assert_eq!(l.conn_lost, 9, "one for connection_lost plus eight dropped writes");
    }

    #[test]
    fn the_separate_counter_logs_at_the_same_write() {
        assert_eq!(CONNLOST_WRITE_LOG_THRESHOLD, 5);
        let mut dropped = 0;
        let logged: Vec<bool> = (0..7).map(|_| count_dropped_write(&mut dropped)).collect();
        assert_eq!(logged, [false, false, false, false, true, true, true]);
        assert_eq!(dropped, 7);

        let mut l = Lifecycle::default();
        l.abort();
        let mut dropped = 0;
        for i in 1..=10 {
            assert_eq!(l.drop_write(), Some(count_dropped_write(&mut dropped)), "write {i}");
        }
        assert_eq!(SOCKET_SEND_WARNING, "socket.send() raised exception.");
    }

    /// A transport stand-in: its "protocol" records the calls it receives.
    struct Host {
        lp: EventLoop,
        slot: ProtocolSlot<Vec<String>, ()>,
        life: RefCell<Lifecycle>,
        flushed: Cell<bool>,
        reads: Cell<u32>,
    }

    impl Host {
        fn new(lp: &EventLoop, started: bool) -> Rc<Host> {
            Rc::new(Host {
                lp: lp.clone(),
                slot: ProtocolSlot::new(Some(Rc::new(RefCell::new(Vec::new())))),
                life: RefCell::new(Lifecycle { started, ..Default::default() }),
                flushed: Cell::new(true),
                reads: Cell::new(0),
            })
        }
    }

    impl SlotHost for Host {
        type Proto = Vec<String>;
        type Note = ();

        fn slot(&self) -> &ProtocolSlot<Vec<String>, ()> {
            &self.slot
        }

        fn event_loop(&self) -> &EventLoop {
            &self.lp
        }

        fn protocol_panicked(self: &Rc<Self>, what: &str, msg: String) {
            self.abort_on_panic(what, msg);
        }

        fn deliver_note(self: &Rc<Self>, _note: ()) {}
    }

    impl Teardown for Host {
        fn abort_with_error(self: &Rc<Self>, err: Error) {
            if self.life().abort() {
                self.schedule_connection_lost(Some(err));
            }
        }
    }

    impl LifecycleHost for Host {
        fn life(&self) -> RefMut<'_, Lifecycle> {
            self.life.borrow_mut()
        }

        fn is_flushed(&self) -> bool {
            self.flushed.get()
        }

        fn call_connection_lost(self: &Rc<Self>, err: Option<Error>) {
            let Some(started) = self.life().lose() else { return };
            if started {
                let text = err.map(|e| e.to_string());
                self.deliver_lost(self.slot.get(), |p| p.push(format!("connection_lost({text:?})")));
            }
            self.slot.release();
        }

        fn do_read(self: &Rc<Self>) {
            self.reads.set(self.reads.get() + 1);
        }
    }

    /// Run the callbacks ready now (the poll does not wait: one more is ready).
    fn run_ready(lp: &EventLoop) {
        lp.call_soon(|| ()).unwrap();
        lp.run_once().unwrap();
    }

    /// A loop recording its exception handler's reports, a host on it
    /// (`started`: connection_made was delivered) and the host's protocol.
    fn setup(started: bool) -> (EventLoop, Seen, Rc<Host>, Rc<RefCell<Vec<String>>>) {
        let (lp, seen) = recording_loop();
        let host = Host::new(&lp, started);
        let proto = host.slot.get().unwrap();
        (lp, seen, host, proto)
    }

    #[test]
    fn close_on_a_flushed_host_delivers_connection_lost_once_from_the_loop() {
        let (lp, _, host, proto) = setup(true);
        host.close();
        host.close();
        assert!(proto.borrow().is_empty(), "not synchronously");
        run_ready(&lp);
        assert_eq!(*proto.borrow(), ["connection_lost(None)"]);
        assert!(host.slot.get().is_none(), "the protocol is let go of");
        run_ready(&lp);
        assert_eq!(proto.borrow().len(), 1, "exactly once");
    }

    #[test]
    fn close_on_an_unflushed_host_schedules_nothing() {
        let (lp, _, host, proto) = setup(true);
        host.flushed.set(false);
        host.close();
        run_ready(&lp);
        assert!(proto.borrow().is_empty());
        assert!(host.life().closing && !host.life().lost);
    }

    #[test]
    fn connection_lost_is_not_delivered_before_connection_made() {
        let (lp, _, host, proto) = setup(false);
        host.close();
        run_ready(&lp);
        assert!(proto.borrow().is_empty());
        assert!(host.life().lost);
        assert!(host.slot.get().is_none());
    }

    #[test]
    fn a_read_is_scheduled_once_and_never_while_closing() {
        let (lp, _, host, _) = setup(true);
        host.schedule_read();
        host.schedule_read();
        assert!(host.life().read_scheduled);
        run_ready(&lp);
        assert_eq!(host.reads.get(), 1);
        assert!(!host.life().read_scheduled);
        host.schedule_read();
        run_ready(&lp);
        assert_eq!(host.reads.get(), 2, "scheduled again once it ran");

        host.flushed.set(false);
        host.close();
        host.schedule_read();
        assert!(!host.life().read_scheduled);
        run_ready(&lp);
        assert_eq!(host.reads.get(), 2);
    }

    #[test]
    fn a_fatal_error_is_reported_then_aborts() {
        let (lp, seen, host, proto) = setup(true);
        host.fatal_error(Error::state("bad state"), "Fatal error on transport");
        assert_eq!(*seen.borrow(), [("Fatal error on transport".to_string(), Some("bad state".to_string()))]);
        assert!(host.life().closing);
        run_ready(&lp);
        assert_eq!(*proto.borrow(), [r#"connection_lost(Some("bad state"))"#]);
    }

    #[test]
    fn an_os_error_aborts_without_a_report() {
        let (lp, seen, host, proto) = setup(true);
        let err = Error::Io(std::io::Error::from_raw_os_error(libc::ECONNRESET));
        let text = err.to_string();
        host.fatal_error(err, "Fatal read error on socket transport");
        assert!(seen.borrow().is_empty(), "asyncio only logs OS errors in debug mode");
        run_ready(&lp);
        assert_eq!(*proto.borrow(), [format!("connection_lost({:?})", Some(text))]);
    }

    #[test]
    fn a_second_fatal_error_is_reported_but_connection_lost_comes_once() {
        let (lp, seen, host, proto) = setup(true);
        host.fatal_error(Error::state("first"), "one");
        host.fatal_error(Error::state("second"), "two");
        assert_eq!(seen.borrow().len(), 2);
        run_ready(&lp);
        assert_eq!(*proto.borrow(), [r#"connection_lost(Some("first"))"#]);
    }

    #[test]
    fn a_panicking_protocol_method_aborts_the_connection() {
        let (lp, seen, host, proto) = setup(true);
        let r = host.with_protocol("data_received", |_| -> u8 { panic!("boom") });
        assert_eq!(r, None);
        assert_eq!(
            *seen.borrow(),
            [("Fatal error: protocol.data_received() call failed.".to_string(), Some("panic: boom".to_string()))]
        );
        assert_eq!(host.life().conn_lost, 1);
        run_ready(&lp);
        assert_eq!(*proto.borrow(), [r#"connection_lost(Some("panic: boom"))"#]);
    }
}
