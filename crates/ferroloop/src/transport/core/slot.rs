//! The protocol slot: how a transport holds its protocol and calls it.
//!
//! Every transport (stream, datagram, TLS, subprocess) follows the same
//! rules when it calls its protocol:
//!
//! - the protocol is called only when it is not already busy in one of its
//!   own methods (`try_borrow_mut`): a transport never re-enters it;
//! - a panic in a protocol method is caught (`catch_unwind`) and handed to
//!   the transport ([`SlotHost::protocol_panicked`]), which reports it and,
//!   for a connection, aborts it;
//! - a notification raised while the protocol is busy (`pause_writing` from
//!   a write inside `data_received`, say) is queued as a *note* and delivered
//!   right after the busy method returns, in the order raised;
//! - `connection_lost` is called once, with no notes after it, and a panic
//!   in it is only reported.
//!
//! [`ProtocolSlot`] holds the protocol and the queued notes; [`SlotHost`],
//! implemented by each transport's state, supplies what differs (the
//! protocol trait, the kinds of note, the reaction to a panic) and provides
//! the calls. Everything is static dispatch: a transport's calls compile to
//! what it wrote by hand before.

use std::cell::{Cell, RefCell, RefMut};
use std::collections::VecDeque;
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::rc::Rc;

use crate::error::Error;
use crate::event_loop::{panic_message, EventLoop, ExceptionContext};
use crate::flow::WriteFlow;
use crate::protocol::Protocol;

/// A transport's protocol (`None` once it was let go of) and the notes
/// waiting for it to be free.
pub(crate) struct ProtocolSlot<P: ?Sized, N> {
    protocol: RefCell<Option<Rc<RefCell<P>>>>,
    notes: RefCell<VecDeque<N>>,
    /// Notes are being delivered (a nested flush leaves them to that loop).
    flushing: Cell<bool>,
}

impl<P: ?Sized, N> ProtocolSlot<P, N> {
    /// A slot holding `protocol`.
    pub(crate) fn new(protocol: Option<Rc<RefCell<P>>>) -> Self {
        ProtocolSlot { protocol: RefCell::new(protocol), notes: RefCell::new(VecDeque::new()), flushing: Cell::new(false) }
    }

    /// The current protocol.
    #[inline]
    pub(crate) fn get(&self) -> Option<Rc<RefCell<P>>> {
        self.protocol.borrow().clone()
    }

    /// Install `protocol`; returns the previous one, for the caller to drop
    /// (outside of any borrow: its `Drop` may call back into the transport).
    pub(crate) fn replace(&self, protocol: Option<Rc<RefCell<P>>>) -> Option<Rc<RefCell<P>>> {
        std::mem::replace(&mut *self.protocol.borrow_mut(), protocol)
    }

    /// Take the protocol out of the slot.
    pub(crate) fn take(&self) -> Option<Rc<RefCell<P>>> {
        self.protocol.borrow_mut().take()
    }

    /// Whether there is a protocol and it is busy in one of its methods.
    #[inline]
    pub(crate) fn is_busy(&self) -> bool {
        match self.protocol.borrow().as_ref() {
            Some(p) => p.try_borrow_mut().is_err(),
            None => false,
        }
    }

    /// Whether a notification raised now must wait: the protocol is busy,
    /// or earlier notes still wait (they go first).
    #[inline]
    pub(crate) fn must_queue(&self) -> bool {
        self.is_busy() || !self.notes.borrow().is_empty()
    }

    /// Queue a note for delivery once the protocol is free.
    pub(crate) fn queue(&self, note: N) {
        self.notes.borrow_mut().push_back(note);
    }

    /// Take the protocol out of the slot unless its cell is in use.
    pub(crate) fn try_take(&self) -> Option<Rc<RefCell<P>>> {
        self.protocol.try_borrow_mut().ok().and_then(|mut p| p.take())
    }

    /// Let go of the protocol, then of the waiting notes. Either is left
    /// alone while its cell is in use; both are dropped outside of the
    /// cells (a `Drop` may call back into the transport).
    pub(crate) fn release(&self) {
        let protocol = self.try_take();
        drop(protocol);
        self.clear_notes();
    }

    /// Drop the waiting notes (unless their cell is in use), keeping the protocol.
    pub(crate) fn clear_notes(&self) {
        let notes = self.notes.try_borrow_mut().ok().map(|mut n| std::mem::take(&mut *n));
        drop(notes);
    }
}

/// A transport's state that calls a protocol through a [`ProtocolSlot`].
///
/// Implementors supply the slot, the loop, the delivery of one note and,
/// unless a report is enough, the reaction to a panic; the provided methods
/// are the guarded calls.
pub(crate) trait SlotHost: Sized {
    /// The protocol trait object (`dyn Protocol`, `dyn DatagramProtocol`, ...).
    type Proto: ?Sized;
    /// What is queued while the protocol is busy.
    type Note;

    /// Appended to the messages of reported panics (`"Exception in
    /// protocol.connection_lost()"` + this).
    const REPORT_SUFFIX: &'static str = "";

    /// The transport's slot.
    fn slot(&self) -> &ProtocolSlot<Self::Proto, Self::Note>;

    /// The transport's loop (its exception handler receives reports).
    fn event_loop(&self) -> &EventLoop;

    /// A protocol method `what` panicked with message `msg` (not
    /// `connection_lost`). Called before the queued notes are delivered.
    /// By default the panic is reported ([`SlotHost::report_panic`]) and the
    /// transport goes on.
    fn protocol_panicked(self: &Rc<Self>, what: &str, msg: String) {
        self.report_panic(what, msg);
    }

    /// Deliver one note, now (the protocol was free when it was taken from
    /// the queue); usually through [`SlotHost::with_protocol`].
    fn deliver_note(self: &Rc<Self>, note: Self::Note);

    /// Report a panic of protocol method `what` to the loop's exception
    /// handler: `"Exception in protocol.{what}()"` + [`Self::REPORT_SUFFIX`].
    fn report_panic(&self, what: &str, msg: String) {
        self.event_loop().call_exception_handler(ExceptionContext {
            message: format!("Exception in protocol.{what}(){}", Self::REPORT_SUFFIX),
            error: Some(Error::Panic(msg)),
        });
    }

    /// Call the current protocol's method `what` through `f`, unless there
    /// is no protocol or it is busy; a panic goes to
    /// [`SlotHost::protocol_panicked`]. Then deliver the notes raised
    /// meanwhile. `None`: not called, or it panicked.
    #[inline(always)]
    fn with_protocol<R>(self: &Rc<Self>, what: &str, f: impl FnOnce(&mut Self::Proto) -> R) -> Option<R> {
        let p = self.slot().get()?;
        let r = {
            let mut guard = p.try_borrow_mut().ok()?;
            catch_unwind(AssertUnwindSafe(|| f(&mut *guard)))
        };
        let out = match r {
            Ok(v) => Some(v),
            Err(payload) => {
                self.protocol_panicked(what, panic_message(&*payload));
                None
            }
        };
        self.flush_notes();
        out
    }

    /// Deliver `note` now, or queue it if the protocol is busy or earlier
    /// notes still wait.
    fn notify(self: &Rc<Self>, note: Self::Note) {
        if self.slot().must_queue() {
            self.slot().queue(note);
        } else {
            self.deliver_note(note);
        }
    }

    /// Deliver the queued notes, in order, while the protocol is free. A
    /// nested call (from a note's delivery) leaves them to the outer loop.
    #[inline(always)]
    fn flush_notes(self: &Rc<Self>) {
        // The usual case, on every protocol call: nothing queued.
        if !self.slot().notes.borrow().is_empty() {
            self.flush_queued_notes();
        }
    }

    /// [`SlotHost::flush_notes`] with notes queued.
    #[inline(never)]
    fn flush_queued_notes(self: &Rc<Self>) {
        let slot = self.slot();
        if slot.flushing.replace(true) {
            return;
        }
        loop {
            if slot.is_busy() {
                break;
            }
            let Some(note) = slot.notes.borrow_mut().pop_front() else { break };
            self.deliver_note(note);
        }
        slot.flushing.set(false);
    }

    /// Call `connection_lost` through `f` on `protocol` (the caller makes
    /// sure it happens once, and picks the protocol: the slot's, taken out
    /// or not). Skipped if the protocol is busy; no notes follow; a panic is
    /// reported to the loop's exception handler.
    fn deliver_lost(&self, protocol: Option<Rc<RefCell<Self::Proto>>>, f: impl FnOnce(&mut Self::Proto)) {
        let Some(p) = protocol else { return };
        let r = match p.try_borrow_mut() {
            Ok(mut g) => catch_unwind(AssertUnwindSafe(|| f(&mut *g))),
            Err(_) => Ok(()),
        };
        if let Err(payload) = r {
            self.report_panic("connection_lost", panic_message(&*payload));
        }
    }
}

/// The note of a transport whose protocol is a [`Protocol`] (stream, TLS):
/// write flow control.
#[derive(Clone, Copy)]
pub(crate) enum FlowNote {
    PauseWriting,
    ResumeWriting,
}

/// Told, synchronously, when a write (or new water marks) takes a
/// transport's buffer over its high-water mark: asyncio calls the protocol's
/// `pause_writing()` from inside `write()`, so that a producer that writes
/// "while not paused" stops at once. A Rust protocol cannot be re-entered
/// while it writes (it is borrowed), so the engine queues `pause_writing`
/// for it until it returns (it can poll [`crate::Transport::is_writing_paused`]
/// instead); a binding whose protocol objects can be re-entered installs a
/// hook with [`crate::Transport::set_pause_hook`] and calls them itself.
/// `resume_writing` still comes from the loop, as in asyncio.
pub trait PauseHook {
    /// The buffer went over the high-water mark: tell the protocol now.
    fn pause_writing(&self);
}

/// A transport with write flow control: its [`WriteFlow`] decides when the
/// protocol is told to pause and resume writing ([`FlowNote`]s, delivered
/// through [`SlotHost::notify`]).
pub(crate) trait FlowHost: SlotHost
where
    Self::Note: From<FlowNote>,
{
    /// The flow control state (borrowed from the transport's state) and the
    /// bytes it counts now (what is queued below the protocol).
    fn write_flow(&self) -> (RefMut<'_, WriteFlow>, usize);

    /// Set the water marks (see [`WriteFlow::set_limits`]), then pause
    /// writing if the queue is over the new high mark.
    fn set_write_limits(self: &Rc<Self>, high: Option<i64>, low: Option<i64>) -> crate::error::Result<()> {
        self.write_flow().0.set_limits(high, low)?;
        self.maybe_pause();
        Ok(())
    }

    /// Tell the protocol to pause writing if the queue went over the high mark.
    fn maybe_pause(self: &Rc<Self>) {
        let pause = {
            let (mut flow, size) = self.write_flow();
            flow.should_pause(size)
        };
        if pause {
            match self.pause_hook() {
                // Synchronously, within the write that crossed the mark.
                Some(hook) => hook.pause_writing(),
                None => self.notify(FlowNote::PauseWriting.into()),
            }
        }
    }

    /// The hook told of `pause_writing` at once instead of the protocol
    /// (see [`PauseHook`]); none by default.
    fn pause_hook(&self) -> Option<Rc<dyn PauseHook>> {
        None
    }

    /// Tell the protocol to resume writing if the queue drained to the low mark.
    fn maybe_resume(self: &Rc<Self>) {
        let resume = {
            let (mut flow, size) = self.write_flow();
            flow.should_resume(size)
        };
        if resume {
            self.notify(FlowNote::ResumeWriting.into());
        }
    }
}

/// Deliver `note` to `host`'s [`Protocol`] (for [`SlotHost::deliver_note`]).
pub(crate) fn deliver_flow_note<H>(host: &Rc<H>, note: FlowNote)
where
    H: SlotHost<Proto = dyn Protocol, Note = FlowNote>,
{
    match note {
        FlowNote::PauseWriting => host.with_protocol("pause_writing", |p| p.pause_writing()),
        FlowNote::ResumeWriting => host.with_protocol("resume_writing", |p| p.resume_writing()),
    };
}

#[cfg(test)]
mod tests {
    use std::rc::Weak;

    use super::*;

    /// One log for everything a test watches, in the order it happens.
    type Log = Rc<RefCell<Vec<String>>>;

    fn push(log: &Log, s: impl Into<String>) {
        log.borrow_mut().push(s.into());
    }

    /// A loop whose exception handler writes `report: message: error` to `log`.
    fn reporting_loop(log: &Log) -> EventLoop {
        let lp = EventLoop::new().unwrap();
        let log = log.clone();
        lp.set_exception_handler(Some(Rc::new(move |_: &EventLoop, ctx: &ExceptionContext| {
            let err = ctx.error.as_ref().map(|e| e.to_string()).unwrap_or_default();
            push(&log, format!("report: {}: {err}", ctx.message));
        })));
        lp
    }

    /// The fake protocol: it logs what it is told; its drop calls back into
    /// the host's slot, as a real protocol holding its transport may.
    struct Proto {
        log: Log,
        host: Weak<Host>,
    }

    impl Drop for Proto {
        fn drop(&mut self) {
            if let Some(h) = self.host.upgrade() {
                // Panics if dropped inside the slot's cell.
                let _ = h.slot.get();
                push(&self.log, format!("dropped (busy: {})", h.slot.is_busy()));
            } else {
                push(&self.log, "dropped");
            }
        }
    }

    struct Host {
        lp: EventLoop,
        slot: ProtocolSlot<Proto, &'static str>,
        /// Notes being delivered (more than one: a nested delivery).
        depth: Cell<u32>,
    }

    impl SlotHost for Host {
        type Proto = Proto;
        type Note = &'static str;
        const REPORT_SUFFIX: &'static str = " (fake)";

        fn slot(&self) -> &ProtocolSlot<Proto, &'static str> {
            &self.slot
        }

        fn event_loop(&self) -> &EventLoop {
            &self.lp
        }

        /// Note "a" raises "c" while the protocol is busy with it.
        fn deliver_note(self: &Rc<Self>, note: &'static str) {
            self.depth.set(self.depth.get() + 1);
            let me = self.clone();
            self.with_protocol(note, |p| {
                push(&p.log, format!("note {note} (depth {})", me.depth.get()));
                if note == "a" {
                    me.notify("c");
                }
            });
            self.depth.set(self.depth.get() - 1);
        }
    }

    /// A host holding a fresh protocol, and that protocol.
    fn host() -> (Rc<Host>, Rc<RefCell<Proto>>, Log) {
        let log: Log = Rc::default();
        let lp = reporting_loop(&log);
        let host = Rc::new(Host { lp, slot: ProtocolSlot::new(None), depth: Cell::new(0) });
        let proto = Rc::new(RefCell::new(Proto { log: log.clone(), host: Rc::downgrade(&host) }));
        host.slot.replace(Some(proto.clone()));
        (host, proto, log)
    }

    fn taken(log: &Log) -> Vec<String> {
        std::mem::take(&mut *log.borrow_mut())
    }

    #[test]
    fn a_call_returns_the_methods_result() {
        let (h, _p, log) = host();
        assert_eq!(h.with_protocol("data_received", |p| { push(&p.log, "data"); 7 }), Some(7));
        assert_eq!(taken(&log), ["data"]);
    }

    #[test]
    fn a_protocol_busy_in_its_own_method_is_not_reentered() {
        let (h, _p, log) = host();
        let h2 = h.clone();
        h.with_protocol("data_received", |p| {
            push(&p.log, "data");
            assert!(h2.slot.is_busy());
            let inner = h2.with_protocol("eof_received", |p| push(&p.log, "eof"));
            assert_eq!(inner, None, "not called");
        });
        assert!(!h.slot.is_busy());
        assert_eq!(taken(&log), ["data"]);
    }

    #[test]
    fn a_note_on_a_free_protocol_is_delivered_at_once() {
        let (h, _p, log) = host();
        assert!(!h.slot.must_queue());
        h.notify("pause_writing");
        assert_eq!(taken(&log), ["note pause_writing (depth 1)"]);
    }

    #[test]
    fn notes_raised_while_busy_follow_the_method_in_order() {
        let (h, _p, log) = host();
        let h2 = h.clone();
        h.with_protocol("data_received", |p| {
            h2.notify("pause_writing");
            h2.notify("resume_writing");
            push(&p.log, "data done");
            assert!(h2.slot.must_queue());
        });
        assert_eq!(taken(&log), ["data done", "note pause_writing (depth 1)", "note resume_writing (depth 1)"]);
        assert!(!h.slot.must_queue());
    }

    #[test]
    fn a_note_waits_behind_earlier_notes_even_when_the_protocol_is_free() {
        let (h, _p, log) = host();
        h.slot.queue("first");
        assert!(!h.slot.is_busy() && h.slot.must_queue());
        h.notify("second");
        assert!(log.borrow().is_empty(), "queued behind the first");
        h.flush_notes();
        assert_eq!(taken(&log), ["note first (depth 1)", "note second (depth 1)"]);
    }

    #[test]
    fn a_note_raised_while_a_note_is_delivered_is_left_to_the_outer_flush() {
        let (h, _p, log) = host();
        h.slot.queue("a"); // its delivery raises "c"
        h.slot.queue("b");
        h.flush_notes();
        assert_eq!(taken(&log), ["note a (depth 1)", "note b (depth 1)", "note c (depth 1)"]);
        assert!(!h.slot.flushing.get());
    }

    #[test]
    fn a_flush_delivers_nothing_while_the_protocol_is_busy() {
        let (h, _p, log) = host();
        let h2 = h.clone();
        h.with_protocol("data_received", |p| {
            h2.slot.queue("x");
            h2.flush_notes();
            push(&p.log, "after flush");
        });
        assert_eq!(taken(&log), ["after flush", "note x (depth 1)"]);
    }

    #[test]
    fn a_panic_is_given_to_protocol_panicked_before_the_notes() {
        let (h, _p, log) = host();
        let h2 = h.clone();
        let r = h.with_protocol("data_received", |_| -> u8 {
            h2.notify("pause_writing");
            panic!("boom")
        });
        assert_eq!(r, None);
        assert_eq!(
            taken(&log),
            ["report: Exception in protocol.data_received() (fake): panic: boom", "note pause_writing (depth 1)"]
        );
        assert!(!h.slot.is_busy(), "the borrow ended with the unwind");
        assert_eq!(h.with_protocol("data_received", |_| 1), Some(1), "the protocol can be called again");
    }

    #[test]
    fn connection_lost_is_delivered_without_notes_and_its_panic_only_reported() {
        let (h, p, log) = host();
        h.slot.queue("pause_writing");
        h.deliver_lost(h.slot.get(), |p| push(&p.log, "lost"));
        assert_eq!(taken(&log), ["lost"]);
        assert!(h.slot.must_queue(), "no notes after connection_lost");

        h.deliver_lost(Some(p.clone()), |_| panic!("late"));
        assert_eq!(taken(&log), ["report: Exception in protocol.connection_lost() (fake): panic: late"]);

        h.deliver_lost(None, |_| unreachable!());
        let h2 = h.clone();
        let p2 = p.clone();
        h.with_protocol("data_received", move |_| h2.deliver_lost(Some(p2), |_| unreachable!("busy")));
        assert!(log.borrow().iter().all(|l| l.starts_with("note")), "skipped while busy: {log:?}");
    }

    #[test]
    fn replace_take_and_try_take_hand_the_protocol_back() {
        let (h, p, log) = host();
        let other = Rc::new(RefCell::new(Proto { log: log.clone(), host: Weak::new() }));
        let old = h.slot.replace(Some(other.clone())).unwrap();
        assert!(Rc::ptr_eq(&old, &p));
        assert!(Rc::ptr_eq(&h.slot.get().unwrap(), &other));
        drop(old);
        assert!(log.borrow().is_empty(), "the test still holds the old one");

        assert!(Rc::ptr_eq(&h.slot.take().unwrap(), &other));
        assert!(h.slot.get().is_none() && h.slot.take().is_none() && h.slot.try_take().is_none());
        assert!(!h.slot.is_busy(), "no protocol is not busy");
        assert_eq!(h.with_protocol("data_received", |_| 1), None, "nothing to call");
        h.notify("pause_writing");
        assert!(log.borrow().is_empty());

        h.slot.replace(Some(p.clone()));
        let borrowed = h.slot.protocol.borrow();
        assert!(h.slot.try_take().is_none(), "the cell is in use");
        drop(borrowed);
        assert!(Rc::ptr_eq(&h.slot.try_take().unwrap(), &p));
    }

    #[test]
    fn release_drops_the_protocol_outside_the_slot_then_the_notes() {
        let (h, p, log) = host();
        h.slot.queue("pause_writing");
        drop(p);
        h.slot.release();
        assert_eq!(taken(&log), ["dropped (busy: false)"]);
        assert!(h.slot.get().is_none());
        assert!(!h.slot.must_queue(), "the notes are gone");
        h.slot.release();
        assert!(log.borrow().is_empty(), "a second release is harmless");
    }

    #[test]
    fn release_from_inside_a_method_keeps_the_running_protocol_alive() {
        let (h, p, log) = host();
        drop(p);
        let h2 = h.clone();
        h.with_protocol("connection_lost", |p| {
            h2.slot.release();
            push(&p.log, "still here");
        });
        assert_eq!(taken(&log), ["still here", "dropped (busy: false)"]);
    }

    #[test]
    fn clear_notes_keeps_the_protocol() {
        let (h, _p, log) = host();
        h.slot.queue("a");
        h.slot.clear_notes();
        assert!(!h.slot.must_queue());
        h.flush_notes();
        assert!(log.borrow().is_empty());
        assert!(h.slot.get().is_some());
    }

    // Write flow control, with a `dyn Protocol` and `FlowNote`s.

    struct FlowProto {
        log: Log,
        panic_on_pause: bool,
    }

    impl Protocol for FlowProto {
        fn pause_writing(&mut self) {
            if self.panic_on_pause {
                panic!("no pause");
            }
            push(&self.log, "pause_writing");
        }

        fn resume_writing(&mut self) {
            push(&self.log, "resume_writing");
        }
    }

    struct Hook(Log);

    impl PauseHook for Hook {
        fn pause_writing(&self) {
            push(&self.0, "hook pause_writing");
        }
    }

    struct FlowTransport {
        lp: EventLoop,
        slot: ProtocolSlot<dyn Protocol, FlowNote>,
        flow: RefCell<WriteFlow>,
        queued: Cell<usize>,
        hook: Option<Rc<dyn PauseHook>>,
    }

    impl SlotHost for FlowTransport {
        type Proto = dyn Protocol;
        type Note = FlowNote;

        fn slot(&self) -> &ProtocolSlot<dyn Protocol, FlowNote> {
            &self.slot
        }

        fn event_loop(&self) -> &EventLoop {
            &self.lp
        }

        fn deliver_note(self: &Rc<Self>, note: FlowNote) {
            deliver_flow_note(self, note);
        }
    }

    impl FlowHost for FlowTransport {
        fn write_flow(&self) -> (RefMut<'_, WriteFlow>, usize) {
            (self.flow.borrow_mut(), self.queued.get())
        }

        fn pause_hook(&self) -> Option<Rc<dyn PauseHook>> {
            self.hook.clone()
        }
    }

    fn flow_transport(hooked: bool, panic_on_pause: bool) -> (Rc<FlowTransport>, Log) {
        let log: Log = Rc::default();
        let proto: Rc<RefCell<dyn Protocol>> = Rc::new(RefCell::new(FlowProto { log: log.clone(), panic_on_pause }));
        let mut flow = WriteFlow::default();
        flow.set_limits(Some(100), Some(10)).unwrap();
        let t = FlowTransport {
            lp: reporting_loop(&log),
            slot: ProtocolSlot::new(Some(proto)),
            flow: RefCell::new(flow),
            queued: Cell::new(0),
            hook: hooked.then(|| Rc::new(Hook(log.clone())) as Rc<dyn PauseHook>),
        };
        (Rc::new(t), log)
    }

    #[test]
    fn pause_and_resume_writing_are_told_once_each_at_the_marks() {
        let (t, log) = flow_transport(false, false);
        t.queued.set(100);
        t.maybe_pause();
        assert!(log.borrow().is_empty(), "at the high mark: not over it");
        t.queued.set(101);
        t.maybe_pause();
        t.queued.set(5000);
        t.maybe_pause();
        t.queued.set(11);
        t.maybe_resume();
        t.queued.set(10);
        t.maybe_resume();
        t.maybe_resume();
        assert_eq!(taken(&log), ["pause_writing", "resume_writing"]);
    }

    /// Inside `data_received`, a write takes the queue over the high mark.
    fn write_over_high_inside_a_method(t: &Rc<FlowTransport>, log: &Log) {
        t.with_protocol("data_received", |_| {
            t.queued.set(1000);
            t.maybe_pause();
            push(log, "write returned");
        });
    }

    #[test]
    fn a_pause_raised_inside_a_protocol_method_follows_it() {
        let (t, log) = flow_transport(false, false);
        write_over_high_inside_a_method(&t, &log);
        assert_eq!(taken(&log), ["write returned", "pause_writing"]);
    }

    #[test]
    fn a_pause_hook_is_told_at_once_and_resume_still_goes_to_the_protocol() {
        let (t, log) = flow_transport(true, false);
        write_over_high_inside_a_method(&t, &log);
        assert_eq!(taken(&log), ["hook pause_writing", "write returned"]);
        t.queued.set(0);
        t.maybe_resume();
        assert_eq!(taken(&log), ["resume_writing"]);
    }

    #[test]
    fn new_water_marks_pause_at_once_and_bad_ones_change_nothing() {
        let (t, log) = flow_transport(false, false);
        t.queued.set(50);
        assert!(t.set_write_limits(Some(10), Some(20)).is_err());
        assert_eq!(t.flow.borrow().limits(), (10, 100));
        assert!(log.borrow().is_empty());
        t.set_write_limits(Some(40), None).unwrap();
        assert_eq!(t.flow.borrow().limits(), (10, 40));
        assert_eq!(taken(&log), ["pause_writing"]);
        assert!(t.flow.borrow().is_paused());
    }

    #[test]
    fn a_panicking_pause_writing_is_reported() {
        let (t, log) = flow_transport(false, true);
        t.queued.set(1000);
        t.maybe_pause();
        assert_eq!(taken(&log), ["report: Exception in protocol.pause_writing(): panic: no pause"]);
        t.queued.set(0);
        t.maybe_resume();
        assert_eq!(taken(&log), ["resume_writing"], "still paused in the books: resume follows");
    }
}
