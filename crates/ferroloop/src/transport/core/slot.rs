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
