//! The event loop: a ready queue, a timer heap and a mio poll.
//!
//! One iteration ([`EventLoop::run_once`]) follows asyncio's `_run_once`:
//!
//! 1. compute the poll timeout: zero if callbacks are ready or the loop is
//!    stopping, else until the earliest timer, else forever;
//! 2. poll, and dispatch I/O readiness to the transports and fd watchers;
//! 3. move callbacks queued from other threads, then every due timer (by
//!    deadline, then by scheduling order) to the ready queue;
//! 4. run the callbacks that are ready *now*; callbacks they schedule wait
//!    for the next iteration.
//!
//! A panic in a callback is caught and reported to the exception handler;
//! the loop keeps running.
//!
//! This module holds the loop itself: its state, construction, scheduling
//! (`call_soon`, `call_later`, `call_at`) and closing. Its parts: `run` (the
//! iteration and the `run_*` methods), `remote` (the queue other threads
//! schedule on), `watch` (I/O registration and fd watchers) and `exception`
//! (error and warning reports).

mod exception;
mod registration;
mod remote;
mod run;
mod watch;

use std::cell::{Cell, RefCell};
use std::collections::{HashMap, VecDeque};
use std::fmt;
use std::io;
use std::os::fd::RawFd;
use std::rc::Rc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};

use mio::{Events, Poll, Registry, Token, Waker};
use slab::Slab;

use crate::error::{Error, Result};
use crate::future::LoopFuture;
use crate::handle::{Callback, Handle, HandleInner, TimerHandle};
use crate::sys;
use crate::timer::TimerQueue;

pub(crate) use exception::panic_message;
#[cfg(test)]
pub(crate) use exception::{recording_loop, Seen};
pub(crate) use registration::Registration;
pub use exception::{ExceptionContext, ExceptionHandler, WarningHandler};
pub use remote::LoopRemote;
use remote::RemoteShared;
pub use run::{Blocker, PollStep};
use watch::FdWatch;

/// The waker's token; source tokens never reach it (their key is < 2^32).
const WAKER_TOKEN: Token = Token(usize::MAX);
/// Size of the loop's shared read buffer: what a plain protocol's read takes at most
/// (asyncio reads up to 256 KiB at once, uvloop 256,000 bytes). The buffer starts at a
/// page boundary ([`ReadBuf`]); docs/benchmarks.md changes 11 and 21. Not a multiple
/// of the page size: chunks of exactly 64 pages made every copy a program makes of them
/// (asyncio's `StreamReader` makes three) start at the same offset within a page as
/// its source, and those copies ran several times slower (change 22).
pub(crate) const READ_BUFFER_SIZE: usize = 256_000;
/// Alignment of the shared read buffer's start.
const READ_BUFFER_ALIGN: usize = 4096;

/// The loop's shared read buffer: [`READ_BUFFER_SIZE`] bytes that start at a
/// page boundary.
///
/// Where the buffer starts within a page decides what the kernel's copy into
/// it costs: `vec![0u8; 256 KiB]` is a fresh mapping of its own, whose bytes
/// start 16 bytes into a page, and a `recv` into it cost 2-3× the CPU of the
/// same `recv` into a page-aligned buffer (the copy's loads falsely depend on
/// its stores 16 bytes before, which are 4 KiB apart; bulk 1 GiB through the
/// Python echo server, and 64 KiB ping-pong: docs/benchmarks.md change 17).
pub(crate) struct ReadBuf {
    mem: Box<[u8]>,
    start: usize,
}

impl ReadBuf {
    fn new() -> Self {
        let mem = vec![0u8; READ_BUFFER_SIZE + READ_BUFFER_ALIGN].into_boxed_slice();
        // `align_offset` may give up (usize::MAX); the buffer is then merely unaligned.
        let start = mem.as_ptr().align_offset(READ_BUFFER_ALIGN).min(READ_BUFFER_ALIGN);
        ReadBuf { mem, start }
    }

    /// The buffer's [`READ_BUFFER_SIZE`] bytes.
    pub(crate) fn bytes(&mut self) -> &mut [u8] {
        &mut self.mem[self.start..self.start + READ_BUFFER_SIZE]
    }
}

/// Readiness reported for one registered source.
#[derive(Clone, Copy, Debug, Default)]
pub(crate) struct Readiness {
    pub readable: bool,
    pub writable: bool,
    pub error: bool,
    pub read_closed: bool,
    pub write_closed: bool,
}

/// Something registered in the poll that reacts to readiness.
pub(crate) trait IoSource {
    fn on_ready(self: Rc<Self>, lp: &EventLoop, ready: Readiness);

    /// The loop is closing: drop references that would keep user objects
    /// alive (a transport its protocol). Sockets stay open; their owners
    /// close them.
    fn on_loop_close(&self) {}
}

enum Ready {
    Handle(Rc<HandleInner>),
    Task(Callback),
}

pub(crate) struct LoopInner {
    /// The epoll instance, and a second handle on it for registrations
    /// made while the poll is borrowed; both closed by `close()`.
    poll: RefCell<Option<Poll>>,
    events: RefCell<Events>,
    registry: RefCell<Option<Registry>>,
    ready: RefCell<VecDeque<Ready>>,
    timers: RefCell<TimerQueue>,
    sources: RefCell<Slab<(u32, Rc<dyn IoSource>)>>,
    generation: Cell<u32>,
    pending_events: RefCell<Vec<(Token, Readiness)>>,
    remote: Arc<RemoteShared>,
    running: Cell<bool>,
    stopping: Cell<bool>,
    closed: Cell<bool>,
    debug: Cell<bool>,
    clock_resolution: f64,
    exception_handler: RefCell<Option<ExceptionHandler>>,
    blocker: RefCell<Option<Rc<dyn Blocker>>>,
    watches: RefCell<HashMap<RawFd, Rc<FdWatch>>>,
    read_buf: Cell<Option<ReadBuf>>,
    resolutions: RefCell<Slab<LoopFuture<Vec<std::net::SocketAddr>>>>,
    signals: RefCell<Option<Rc<crate::signal::Signals>>>,
    interrupt: RefCell<Option<Error>>,
    pub(crate) children: crate::child::ChildState,
    warning_handler: RefCell<Option<WarningHandler>>,
    /// Timers due in the current iteration (kept to reuse its allocation).
    due_timers: RefCell<Vec<Rc<HandleInner>>>,
}

impl LoopInner {
    /// Call `f` with the poll's registry; fails once the loop is closed.
    fn with_registry<R>(&self, f: impl FnOnce(&Registry) -> io::Result<R>) -> io::Result<R> {
        match self.registry.borrow().as_ref() {
            Some(r) => f(r),
            None => Err(io::Error::other("the event loop is closed")),
        }
    }

    pub(crate) fn timer_cancelled(&self) {
        if let Ok(mut t) = self.timers.try_borrow_mut() {
            t.note_cancelled();
        }
    }
}

/// A single-threaded event loop with asyncio's semantics.
///
/// `EventLoop` is a cheap, clonable handle (`Rc`): protocols and callbacks keep
/// clones. It is neither `Send` nor `Sync`; other threads use a [`LoopRemote`].
///
/// ```
/// use ferroloop::EventLoop;
/// let lp = EventLoop::new().unwrap();
/// let l2 = lp.clone();
/// lp.call_later(0.01, move || l2.stop());
/// lp.run_forever().unwrap();
/// lp.close().unwrap();
/// ```
#[derive(Clone)]
pub struct EventLoop {
    pub(crate) inner: Rc<LoopInner>,
}

impl fmt::Debug for EventLoop {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("EventLoop")
            .field("running", &self.is_running())
            .field("closed", &self.is_closed())
            .finish()
    }
}

impl EventLoop {
    /// Create a loop with its own poll (epoll) instance and waker.
    pub fn new() -> Result<EventLoop> {
        let poll = Poll::new()?;
        let registry = poll.registry().try_clone()?;
        let waker = Waker::new(poll.registry(), WAKER_TOKEN)?;
        Ok(EventLoop {
            inner: Rc::new(LoopInner {
                poll: RefCell::new(Some(poll)),
                events: RefCell::new(Events::with_capacity(1024)),
                registry: RefCell::new(Some(registry)),
                ready: RefCell::new(VecDeque::with_capacity(64)),
                timers: RefCell::new(TimerQueue::default()),
                sources: RefCell::new(Slab::with_capacity(64)),
                generation: Cell::new(0),
                pending_events: RefCell::new(Vec::with_capacity(1024)),
                remote: Arc::new(RemoteShared {
                    queue: Mutex::new(Vec::new()),
                    waker: Mutex::new(Some(waker)),
                    notified: AtomicBool::new(false),
                    closed: AtomicBool::new(false),
                }),
                running: Cell::new(false),
                stopping: Cell::new(false),
                closed: Cell::new(false),
                debug: Cell::new(false),
                clock_resolution: sys::monotonic_resolution(),
                exception_handler: RefCell::new(None),
                blocker: RefCell::new(None),
                watches: RefCell::new(HashMap::new()),
                read_buf: Cell::new(None),
                resolutions: RefCell::new(Slab::new()),
                signals: RefCell::new(None),
                interrupt: RefCell::new(None),
                children: Default::default(),
                warning_handler: RefCell::new(None),
                due_timers: RefCell::new(Vec::new()),
            }),
        })
    }

    /// The loop's clock: seconds on the monotonic clock (Python's `time.monotonic()`).
    pub fn time(&self) -> f64 {
        sys::monotonic()
    }

    /// Whether `run_forever`/`run_until*` is executing.
    pub fn is_running(&self) -> bool {
        self.inner.running.get()
    }

    /// Whether [`EventLoop::close`] was called.
    pub fn is_closed(&self) -> bool {
        self.inner.closed.get()
    }

    /// Debug mode flag (kept for bindings; the engine itself does not change behaviour).
    pub fn get_debug(&self) -> bool {
        self.inner.debug.get()
    }

    /// Set the debug mode flag.
    pub fn set_debug(&self, on: bool) {
        self.inner.debug.set(on)
    }

    pub(crate) fn check_closed(&self) -> Result<()> {
        if self.is_closed() {
            Err(Error::LoopClosed)
        } else {
            Ok(())
        }
    }

    /// Schedule `f` to run in the next iteration, after the callbacks already
    /// scheduled (FIFO).
    pub fn call_soon<F: FnOnce() + 'static>(&self, f: F) -> Result<Handle> {
        self.check_closed()?;
        let h = HandleInner::new(Box::new(f), None, None);
        self.inner.ready.borrow_mut().push_back(Ready::Handle(h.clone()));
        Ok(Handle(h))
    }

    /// Engine-internal `call_soon` without a handle (one allocation less).
    /// Silently dropped on a closed loop.
    pub(crate) fn schedule(&self, f: Callback) {
        if !self.is_closed() {
            self.inner.ready.borrow_mut().push_back(Ready::Task(f));
        }
    }

    /// Schedule `f` to run `delay` seconds from now. A negative or NaN delay
    /// is an [`Error::InvalidArgument`] only when NaN; negative means "now".
    pub fn call_later<F: FnOnce() + 'static>(&self, delay: f64, f: F) -> Result<TimerHandle> {
        if delay.is_nan() {
            return Err(Error::invalid("delay must not be NaN"));
        }
        self.call_at(self.time() + delay, f)
    }

    /// Schedule `f` to run at loop time `when` (see [`EventLoop::time`]).
    pub fn call_at<F: FnOnce() + 'static>(&self, when: f64, f: F) -> Result<TimerHandle> {
        self.check_closed()?;
        if when.is_nan() {
            return Err(Error::invalid("when must not be NaN"));
        }
        let h = HandleInner::new(Box::new(f), Some(when), Some(Rc::downgrade(&self.inner)));
        self.inner.timers.borrow_mut().push(h.clone());
        Ok(TimerHandle(h))
    }

    /// Number of timers in the heap (cancelled ones not yet dropped included).
    pub fn scheduled_timers(&self) -> usize {
        self.inner.timers.borrow().len()
    }

    /// Ask the loop to stop: `run_forever` returns after the current iteration.
    /// Called while the loop is not running, the next `run_forever` runs one
    /// iteration and returns, as in asyncio.
    pub fn stop(&self) {
        self.inner.stopping.set(true);
    }

    /// Close the loop: drop pending callbacks, timers and registrations.
    /// Fails with [`Error::InvalidState`] while the loop is running; closing
    /// twice does nothing.
    pub fn close(&self) -> Result<()> {
        if self.is_running() {
            return Err(Error::state("Cannot close a running event loop"));
        }
        if self.inner.closed.replace(true) {
            return Ok(());
        }
        self.inner.remote.closed.store(true, Ordering::Release);
        // Take everything out first, drop it after the borrows end: destructors
        // of captured values may call back into the loop.
        let ready = std::mem::take(&mut *self.inner.ready.borrow_mut());
        let timers = self.inner.timers.borrow_mut().clear();
        let sources = std::mem::take(&mut *self.inner.sources.borrow_mut());
        for (_, (_, source)) in sources.iter() {
            source.on_loop_close();
        }
        let watches = std::mem::take(&mut *self.inner.watches.borrow_mut());
        let remote = std::mem::take(&mut *self.inner.remote.queue.lock().unwrap_or_else(|p| p.into_inner()));
        let resolutions = std::mem::take(&mut *self.inner.resolutions.borrow_mut());
        self.inner.children.clear();
        if let Some(signals) = self.inner.signals.borrow_mut().take() {
            signals.restore_all();
        }
        drop((ready, timers, sources, watches, remote, resolutions));
        // The loop's own descriptors (epoll, its second handle, the waker's
        // eventfd) close now, as asyncio's close() closes its selector and
        // self-pipe, not when the last handle on the loop goes.
        let poll = self.inner.poll.borrow_mut().take();
        let registry = self.inner.registry.borrow_mut().take();
        let waker = self.inner.remote.waker.lock().unwrap_or_else(|p| p.into_inner()).take();
        drop((poll, registry, waker));
        *self.inner.exception_handler.borrow_mut() = None;
        *self.inner.blocker.borrow_mut() = None;
        *self.inner.warning_handler.borrow_mut() = None;
        Ok(())
    }

    /// Number of registered I/O sources (transports, listeners, watchers).
    pub fn registered_sources(&self) -> usize {
        self.inner.sources.borrow().len()
    }

    pub(crate) fn inner_signals(&self) -> Option<Rc<crate::signal::Signals>> {
        self.inner.signals.borrow().clone()
    }

    pub(crate) fn set_inner_signals(&self, s: Rc<crate::signal::Signals>) {
        *self.inner.signals.borrow_mut() = Some(s);
    }

    pub(crate) fn inner_resolutions_insert(&self, f: LoopFuture<Vec<std::net::SocketAddr>>) -> usize {
        self.inner.resolutions.borrow_mut().insert(f)
    }

    pub(crate) fn inner_resolutions_remove(&self, key: usize) -> Option<LoopFuture<Vec<std::net::SocketAddr>>> {
        self.inner.resolutions.borrow_mut().try_remove(key)
    }

    /// Borrow the shared read buffer (allocated on first use).
    pub(crate) fn take_read_buf(&self) -> ReadBuf {
        self.inner.read_buf.take().unwrap_or_else(ReadBuf::new)
    }

    /// Give the shared read buffer back.
    pub(crate) fn put_read_buf(&self, buf: ReadBuf) {
        self.inner.read_buf.set(Some(buf));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn close_releases_the_loops_own_descriptors_at_once() {
        let lp = EventLoop::new().unwrap();
        lp.call_soon(|| {}).unwrap();
        lp.run_once().unwrap();
        lp.close().unwrap();
        // Still referenced, the loop has let go of the epoll instance, its
        // second handle and the waker's eventfd (dropping them closes them;
        // counting /proc/self/fd would race with the tests running beside).
        assert!(lp.inner.poll.borrow().is_none());
        assert!(lp.inner.registry.borrow().is_none());
        assert!(lp.inner.remote.waker.lock().unwrap().is_none());
        // A wake-up from a remote handle is then a no-op, never an error.
        lp.remote().wake();
        assert!(matches!(lp.run_once(), Err(Error::LoopClosed)));
    }

    #[test]
    fn the_shared_read_buffer_starts_at_a_page_boundary() {
        for _ in 0..4 {
            let mut rb = ReadBuf::new();
            let b = rb.bytes();
            assert_eq!(b.len(), READ_BUFFER_SIZE);
            assert_eq!(b.as_ptr() as usize % READ_BUFFER_ALIGN, 0);
            b[READ_BUFFER_SIZE - 1] = 1;
        }
    }
}
