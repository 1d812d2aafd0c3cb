//! [`LoopFuture`]: the result of an operation that completes on the loop
//! (connecting, resolving, a server closing), awaited with
//! [`EventLoop::run_until_complete`](crate::EventLoop::run_until_complete).

use std::cell::RefCell;
use std::fmt;
use std::rc::Rc;

use crate::error::{Error, Result};

enum State<T> {
    Pending,
    Done(Result<T>),
    Taken,
}

struct Inner<T> {
    state: RefCell<State<T>>,
    callbacks: RefCell<Vec<Box<dyn FnOnce()>>>,
}

/// A single-threaded, callback-based future owned by the loop's thread.
///
/// Completion callbacks run synchronously, in the order they were added,
/// when the result is set.
pub struct LoopFuture<T> {
    inner: Rc<Inner<T>>,
}

impl<T> Clone for LoopFuture<T> {
    fn clone(&self) -> Self {
        LoopFuture { inner: self.inner.clone() }
    }
}

impl<T: 'static> fmt::Debug for LoopFuture<T> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("LoopFuture").field("done", &self.done()).finish()
    }
}

impl<T: 'static> Default for LoopFuture<T> {
    fn default() -> Self {
        Self::new()
    }
}

impl<T: 'static> LoopFuture<T> {
    /// A pending future.
    pub fn new() -> Self {
        LoopFuture { inner: Rc::new(Inner { state: RefCell::new(State::Pending), callbacks: RefCell::new(Vec::new()) }) }
    }

    /// A future that is already complete.
    pub fn ready(result: Result<T>) -> Self {
        let f = Self::new();
        f.set(result);
        f
    }

    /// Whether the result is set (or was taken).
    pub fn done(&self) -> bool {
        !matches!(*self.inner.state.borrow(), State::Pending)
    }

    /// Set the result and run the completion callbacks. Ignored if already done.
    pub fn set(&self, result: Result<T>) {
        {
            let mut st = self.inner.state.borrow_mut();
            if !matches!(*st, State::Pending) {
                return;
            }
            *st = State::Done(result);
        }
        let callbacks = std::mem::take(&mut *self.inner.callbacks.borrow_mut());
        for cb in callbacks {
            cb();
        }
    }

    /// Complete with [`Error::Cancelled`] unless already done; true if it was pending.
    pub fn cancel(&self) -> bool {
        let pending = !self.done();
        self.set(Err(Error::Cancelled));
        pending
    }

    /// Whether the future completed with [`Error::Cancelled`].
    pub fn cancelled(&self) -> bool {
        matches!(*self.inner.state.borrow(), State::Done(Err(Error::Cancelled)))
    }

    /// Take the result out, once. `None` while pending or after it was taken.
    pub fn take_result(&self) -> Option<Result<T>> {
        let mut st = self.inner.state.borrow_mut();
        match std::mem::replace(&mut *st, State::Taken) {
            State::Done(r) => Some(r),
            other => {
                *st = other;
                None
            }
        }
    }

    /// Run `f` when the future completes (at once if it already has).
    pub fn add_done_callback<F: FnOnce() + 'static>(&self, f: F) {
        if self.done() {
            f();
        } else {
            self.inner.callbacks.borrow_mut().push(Box::new(f));
        }
    }
}
