//! Handles to scheduled callbacks.
//!
//! [`Handle`] is returned by [`EventLoop::call_soon`](crate::EventLoop::call_soon),
//! [`TimerHandle`] by `call_later`/`call_at`, [`RemoteHandle`] by
//! [`LoopRemote::call_soon_threadsafe`](crate::LoopRemote::call_soon_threadsafe).
//! Cancelling drops the callback (and whatever it captured) at once, as
//! asyncio does.

use std::cell::{Cell, RefCell};
use std::fmt;
use std::rc::{Rc, Weak};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use crate::event_loop::LoopInner;

pub(crate) type Callback = Box<dyn FnOnce()>;

/// Shared state of a scheduled callback.
pub(crate) struct HandleInner {
    pub(crate) cancelled: Cell<bool>,
    pub(crate) callback: RefCell<Option<Callback>>,
    /// Deadline for timers, `None` for `call_soon` handles.
    pub(crate) when: Option<f64>,
    /// Set on timers so that cancelling can be counted for heap compaction.
    pub(crate) lp: Option<Weak<LoopInner>>,
    /// True while the timer still sits in the loop's heap.
    pub(crate) scheduled: Cell<bool>,
}

impl HandleInner {
    pub(crate) fn new(callback: Callback, when: Option<f64>, lp: Option<Weak<LoopInner>>) -> Rc<Self> {
        Rc::new(HandleInner {
            cancelled: Cell::new(false),
            callback: RefCell::new(Some(callback)),
            when,
            lp,
            scheduled: Cell::new(when.is_some()),
        })
    }

    fn cancel(&self) {
        if self.cancelled.replace(true) {
            return;
        }
        // Drop the callback now; take it out first so that its destructor
        // cannot observe a borrowed cell.
        let cb = self.callback.borrow_mut().take();
        drop(cb);
        if self.scheduled.get() {
            if let Some(lp) = self.lp.as_ref().and_then(Weak::upgrade) {
                lp.timer_cancelled();
            }
        }
    }

    /// Run the callback unless cancelled. Returns false if nothing ran.
    pub(crate) fn run(&self) -> bool {
        if self.cancelled.get() {
            return false;
        }
        let cb = self.callback.borrow_mut().take();
        match cb {
            Some(cb) => {
                cb();
                true
            }
            None => false,
        }
    }
}

/// A callback scheduled with `call_soon`; cancel it before it runs with
/// [`Handle::cancel`].
#[derive(Clone)]
pub struct Handle(pub(crate) Rc<HandleInner>);

impl Handle {
    /// Cancel the callback. Cancelling twice, or after it ran, does nothing.
    pub fn cancel(&self) {
        self.0.cancel()
    }

    /// Whether [`Handle::cancel`] was called.
    pub fn cancelled(&self) -> bool {
        self.0.cancelled.get()
    }
}

impl fmt::Debug for Handle {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Handle").field("cancelled", &self.cancelled()).finish()
    }
}

/// A callback scheduled at a loop time with `call_later` or `call_at`.
#[derive(Clone)]
pub struct TimerHandle(pub(crate) Rc<HandleInner>);

impl TimerHandle {
    /// Cancel the timer. Cancelling twice, or after it ran, does nothing.
    pub fn cancel(&self) {
        self.0.cancel()
    }

    /// Whether [`TimerHandle::cancel`] was called.
    pub fn cancelled(&self) -> bool {
        self.0.cancelled.get()
    }

    /// The loop time (see [`EventLoop::time`](crate::EventLoop::time)) at which the callback is due.
    pub fn when(&self) -> f64 {
        self.0.when.unwrap_or(0.0)
    }
}

impl fmt::Debug for TimerHandle {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("TimerHandle")
            .field("when", &self.when())
            .field("cancelled", &self.cancelled())
            .finish()
    }
}

/// A callback scheduled from another thread; it may be cancelled from any thread.
#[derive(Clone, Debug)]
pub struct RemoteHandle(pub(crate) Arc<AtomicBool>);

impl RemoteHandle {
    /// Cancel the callback if it has not started yet.
    pub fn cancel(&self) {
        self.0.store(true, Ordering::Release)
    }

    /// Whether [`RemoteHandle::cancel`] was called.
    pub fn cancelled(&self) -> bool {
        self.0.load(Ordering::Acquire)
    }
}
