//! Unix signal handlers on the loop (asyncio's `add_signal_handler`).
//!
//! The handler runs as an ordinary callback on the loop's thread, in the
//! iteration after the signal arrived. Signals are process-wide: one loop per
//! process should handle them (asyncio allows only the main thread's loop).

use std::cell::RefCell;
use std::collections::HashMap;
use std::io::Read;
use std::os::fd::AsRawFd;
use std::rc::Rc;

use mio::Interest;

use crate::error::{Error, Result};
use crate::event_loop::{EventLoop, IoSource, Readiness};
use crate::sys::signal as sys;

pub(crate) struct Signals {
    rx: RefCell<Option<mio::unix::pipe::Receiver>>,
    _tx: mio::unix::pipe::Sender,
    handlers: RefCell<HashMap<i32, Rc<dyn Fn()>>>,
    /// The engine's own handlers (the `SIGCHLD` child watcher), kept apart
    /// from the program's: each kind survives the other's removal.
    internal: RefCell<HashMap<i32, Rc<dyn Fn()>>>,
}

impl Signals {
    /// Loop close: give every handled signal its default disposition back.
    pub(crate) fn restore_all(&self) {
        sys::clear_wake_fd(self._tx.as_raw_fd());
        let internal: Vec<i32> = self.internal.borrow_mut().drain().map(|(k, _)| k).collect();
        let user: Vec<i32> = self.handlers.borrow_mut().drain().map(|(k, _)| k).collect();
        for sig in internal.into_iter().chain(user) {
            let _ = sys::restore_default(sig);
        }
    }
}

impl Drop for Signals {
    /// A loop dropped without `close()`: its pipe closes now, so signal
    /// bytes must stop going to that descriptor number (a later descriptor
    /// may reuse it) and the signals get their default disposition back.
    fn drop(&mut self) {
        self.restore_all();
    }
}

impl IoSource for Signals {
    fn on_ready(self: Rc<Self>, lp: &EventLoop, _ready: Readiness) {
        let mut buf = [0u8; 64];
        loop {
            let r = match self.rx.borrow_mut().as_mut() {
                Some(rx) => rx.read(&mut buf),
                None => return,
            };
            let n = match r {
                Ok(0) | Err(_) => return,
                Ok(n) => n,
            };
            for (i, &sig) in buf[..n].iter().enumerate() {
                let h = self.handlers.borrow().get(&(sig as i32)).cloned();
                if let Some(h) = h {
                    lp.schedule(Box::new(move || h()));
                }
                // Internal handlers run now, once per batch (signals coalesce anyway).
                if buf[..i].contains(&sig) {
                    continue;
                }
                let h = self.internal.borrow().get(&(sig as i32)).cloned();
                if let Some(h) = h {
                    lp.guarded("Exception in signal handler", || h());
                }
            }
        }
    }
}

impl EventLoop {
    /// Run `f` on the loop whenever signal `sig` arrives. Replaces a previous
    /// handler for `sig`. Errors: [`Error::InvalidArgument`] for a number out
    /// of range, [`Error::InvalidState`] for SIGKILL/SIGSTOP.
    pub fn add_signal_handler<F: Fn() + 'static>(&self, sig: i32, f: F) -> Result<()> {
        self.check_closed()?;
        match sys::check_catchable(sig) {
            Ok(()) => {}
            Err("out of range") => return Err(Error::invalid(format!("sig {sig} out of range(1, 65)"))),
            Err(_) => return Err(Error::state(format!("sig {sig} cannot be caught"))),
        }
        let signals = self.signals()?;
        signals.handlers.borrow_mut().insert(sig, Rc::new(f));
        if let Err(e) = sys::catch(sig) {
            signals.handlers.borrow_mut().remove(&sig);
            return Err(e.into());
        }
        Ok(())
    }

    /// Remove the handler of `sig` and restore the default disposition.
    /// Returns whether a handler was installed.
    pub fn remove_signal_handler(&self, sig: i32) -> Result<bool> {
        if sys::check_catchable(sig).is_err() {
            return Err(Error::invalid(format!("sig {sig} out of range(1, 65)")));
        }
        let removed = match self.inner_signals() {
            Some(s) => s.handlers.borrow_mut().remove(&sig).is_some(),
            None => false,
        };
        let internal = self.inner_signals().map(|s| s.internal.borrow().contains_key(&sig)).unwrap_or(false);
        if removed && !internal {
            sys::restore_default(sig)?;
        }
        Ok(removed)
    }

    /// Install an engine-internal handler for `sig`, run during the I/O
    /// phase of the iteration that sees the signal. It does not replace (and
    /// is not replaced by) the program's handler of the same signal.
    pub(crate) fn add_internal_signal_handler(&self, sig: i32, f: Rc<dyn Fn()>) -> Result<()> {
        self.check_closed()?;
        let signals = self.signals()?;
        signals.internal.borrow_mut().insert(sig, f);
        if let Err(e) = sys::catch(sig) {
            signals.internal.borrow_mut().remove(&sig);
            return Err(e.into());
        }
        Ok(())
    }

    fn signals(&self) -> Result<Rc<Signals>> {
        if let Some(s) = self.inner_signals() {
            return Ok(s);
        }
        let (tx, mut rx) = mio::unix::pipe::new()?;
        let fd = tx.as_raw_fd();
        let handlers = RefCell::new(HashMap::new());
        // Register first, then store the receiver: the source needs its own Rc.
        let s = Rc::new(Signals { rx: RefCell::new(None), _tx: tx, handlers, internal: RefCell::new(HashMap::new()) });
        self.register(&mut rx, Interest::READABLE, s.clone())?;
        *s.rx.borrow_mut() = Some(rx);
        sys::set_wake_fd(fd);
        self.set_inner_signals(s.clone());
        Ok(s)
    }
}
