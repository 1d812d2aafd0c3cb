//! Child watching: learn, on the loop, that a child process exited, and reap it.
//!
//! Two mechanisms, as the design brief asks:
//!
//! - **pidfd** (Linux 5.3+, the default): `pidfd_open(pid)` gives a
//!   descriptor that becomes readable when the child exits; it is registered
//!   in the loop's own poll like any socket. No signal, no thread: it works
//!   on any thread and with any number of loops per process.
//! - **`SIGCHLD`** (the fallback when `pidfd_open` is refused, or on request
//!   with [`ChildWatcher::Sigchld`]): the loop catches `SIGCHLD` through its
//!   signal support and, on each one, polls its own children with
//!   `waitpid(pid, WNOHANG)` (never `waitpid(-1)`, which would steal other
//!   code's children). Signals are process-wide: only one loop per process
//!   can use this mechanism.
//!
//! Either way the watcher reaps the child itself (no zombie is left) and
//! calls the callback with its return code, in Python's convention: the exit
//! status, or `-signal` when a signal killed it. The callback gets `None`
//! when someone else reaped the child first (another `waitpid` in the
//! process); asyncio then reports 255.

use std::cell::{Cell, RefCell};
use std::os::fd::{AsRawFd, OwnedFd};
use std::panic::{catch_unwind, resume_unwind, AssertUnwindSafe};
use std::rc::Rc;

use mio::unix::SourceFd;
use mio::Interest;

use crate::error::Result;
use crate::event_loop::{EventLoop, IoSource, Readiness, Registration};
use crate::sys::process as sys;

/// What a child watch callback receives: the return code (exit status, or
/// `-signal`), or `None` if the child was reaped by someone else.
pub type ChildCallback = Box<dyn FnOnce(Option<i32>)>;

/// How a loop watches its children (see the module documentation).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum ChildWatcher {
    /// A pidfd in the poll when the kernel allows it, else `SIGCHLD`.
    #[default]
    Auto,
    /// Always `SIGCHLD` (the fallback path; for systems whose seccomp policy
    /// breaks pidfds in odd ways, and for testing the fallback).
    Sigchld,
}

/// A loop's child-watching state (a field of the loop).
#[derive(Default)]
pub(crate) struct ChildState {
    mode: Cell<ChildWatcher>,
    sigchld: RefCell<Option<Rc<SigchldWatcher>>>,
}

impl ChildState {
    /// Loop close: drop the callbacks (they may hold transports that hold the
    /// loop); children still running are reaped in the background.
    pub(crate) fn clear(&self) {
        let w = self.sigchld.borrow_mut().take();
        if let Some(w) = w {
            let children = std::mem::take(&mut *w.children.borrow_mut());
            for (pid, cb) in children {
                drop(cb);
                reap_in_background(pid);
            }
        }
    }
}

/// A watched child outlives its loop: a thread waits for it and reaps it,
/// so that it does not stay a zombie for the life of the process (what
/// asyncio's threaded child watcher does for every child).
fn reap_in_background(pid: u32) {
    if let Ok(Some(_)) | Err(_) = sys::try_reap(pid) {
        return; // exited (now reaped) or not ours to wait for
    }
    let _ = std::thread::Builder::new()
        .name(format!("ferroloop-reap-{pid}"))
        .spawn(move || {
            let _ = sys::reap_blocking(pid);
        });
}

/// One child watched through its pidfd.
struct PidfdWatch {
    pid: u32,
    fd: OwnedFd,
    reg: Registration,
    callback: RefCell<Option<ChildCallback>>,
}

impl PidfdWatch {
    fn check(self: &Rc<Self>, lp: &EventLoop) {
        let rc = match sys::try_reap(self.pid) {
            // Readable but not yet waitable: look again very soon (not seen
            // in practice; the kernel marks the zombie before waking pidfd pollers).
            Ok(None) => {
                let me = self.clone();
                let lp2 = lp.clone();
                let _ = lp.call_later(0.001, move || me.check(&lp2));
                return;
            }
            Ok(Some(rc)) => Some(rc),
            Err(_) => None,
        };
        let cb = self.callback.borrow_mut().take();
        if cb.is_none() {
            return;
        }
        self.reg.deregister(lp, Some(&mut SourceFd(&self.fd.as_raw_fd())));
        if let Some(cb) = cb {
            lp.guarded("Exception in child watcher callback", || cb(rc));
        }
    }
}

impl Drop for PidfdWatch {
    /// Dropped with its callback still pending: the loop closed before the
    /// child exited.
    fn drop(&mut self) {
        if self.callback.get_mut().is_some() {
            reap_in_background(self.pid);
        }
    }
}

impl IoSource for PidfdWatch {
    fn on_ready(self: Rc<Self>, lp: &EventLoop, _ready: Readiness) {
        self.check(lp);
    }
}

/// The children a loop watches through `SIGCHLD`.
#[derive(Default)]
struct SigchldWatcher {
    children: RefCell<Vec<(u32, ChildCallback)>>,
}

impl SigchldWatcher {
    /// Reap every watched child that exited and run its callback.
    fn scan(&self) {
        let mut done = Vec::new();
        {
            let mut children = self.children.borrow_mut();
            let mut i = 0;
            while i < children.len() {
                match sys::try_reap(children[i].0) {
                    Ok(None) => i += 1,
                    Ok(Some(rc)) => done.push((children.swap_remove(i).1, Some(rc))),
                    Err(_) => done.push((children.swap_remove(i).1, None)),
                }
            }
        }
        // Callbacks run outside the borrow: they may watch new children. A
        // panic in one does not keep the others from running; the first is
        // passed on to the caller's guard (the loop reports it).
        let mut panicked = None;
        for (cb, rc) in done {
            if let Err(p) = catch_unwind(AssertUnwindSafe(|| cb(rc))) {
                panicked.get_or_insert(p);
            }
        }
        if let Some(p) = panicked {
            resume_unwind(p);
        }
    }
}

impl EventLoop {
    /// Choose how this loop watches children started after the call (see
    /// [`ChildWatcher`]; the default is [`ChildWatcher::Auto`]).
    pub fn set_child_watcher(&self, watcher: ChildWatcher) {
        self.inner.children.mode.set(watcher);
    }

    /// The mechanism chosen with [`EventLoop::set_child_watcher`].
    pub fn child_watcher(&self) -> ChildWatcher {
        self.inner.children.mode.get()
    }

    /// Call `f` on the loop once child process `pid` exits, after reaping it.
    ///
    /// `f` receives the return code (exit status, or `-signal`), or `None` if
    /// the child was reaped elsewhere first. `pid` must be a child of this
    /// process that nothing else waits for. The watch ends with the loop: a
    /// child still running when the loop closes is reaped by a thread once
    /// it exits (its callback is not called).
    ///
    /// Errors: the loop is closed; no mechanism is available (`SIGCHLD`
    /// could not be caught).
    pub fn watch_child<F: FnOnce(Option<i32>) + 'static>(&self, pid: u32, f: F) -> Result<()> {
        self.check_closed()?;
        if self.child_watcher() == ChildWatcher::Auto {
            match sys::pidfd_open(pid) {
                Ok(fd) => {
                    let raw = fd.as_raw_fd();
                    let watch = Rc::new(PidfdWatch {
                        pid,
                        fd,
                        reg: Registration::new(),
                        callback: RefCell::new(Some(Box::new(f))),
                    });
                    if let Err(e) = watch.reg.register(self, &mut SourceFd(&raw), Interest::READABLE, watch.clone()) {
                        // The caller keeps the child: no reaping on drop.
                        watch.callback.borrow_mut().take();
                        return Err(e);
                    }
                    return Ok(());
                }
                Err(e) if e.raw_os_error() == Some(libc::ESRCH) => {
                    // No such process, not even a zombie: reaped already.
                    // Report it from the ready queue, as any exit.
                    let f = Box::new(f);
                    self.schedule(Box::new(move || f(sys::try_reap(pid).ok().flatten())));
                    return Ok(());
                }
                // ENOSYS, EPERM...: the kernel or a seccomp filter refuses
                // pidfds; SIGCHLD does the job.
                Err(_) => {}
            }
        }
        self.watch_child_sigchld(pid, Box::new(f))
    }

    fn watch_child_sigchld(&self, pid: u32, f: ChildCallback) -> Result<()> {
        let existing = self.inner.children.sigchld.borrow().clone();
        let watcher = match existing {
            Some(w) => w,
            None => {
                let w = Rc::new(SigchldWatcher::default());
                let w2 = w.clone();
                self.add_internal_signal_handler(libc::SIGCHLD, Rc::new(move || w2.scan()))?;
                *self.inner.children.sigchld.borrow_mut() = Some(w.clone());
                w
            }
        };
        watcher.children.borrow_mut().push((pid, f));
        // The child may have exited before SIGCHLD was caught: look once now.
        let w = watcher.clone();
        self.schedule(Box::new(move || w.scan()));
        Ok(())
    }
}
