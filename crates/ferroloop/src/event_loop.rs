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

use std::cell::{Cell, RefCell};
use std::collections::{HashMap, VecDeque};
use std::fmt;
use std::io;
use std::os::fd::RawFd;
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::rc::Rc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use mio::unix::SourceFd;
use mio::{Events, Interest, Poll, Registry, Token, Waker};
use slab::Slab;

use crate::error::{Error, Result};
use crate::future::LoopFuture;
use crate::handle::{Callback, Handle, HandleInner, RemoteHandle, TimerHandle};
use crate::sys;
use crate::timer::TimerQueue;

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
/// Longest single poll, as asyncio's `MAXIMUM_SELECT_TIMEOUT` (24 hours).
const MAX_POLL_TIMEOUT: f64 = 24.0 * 3600.0;

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

/// Signature of a warning handler (see [`EventLoop::set_warning_handler`]).
pub type WarningHandler = Rc<dyn Fn(&str)>;

/// What an exception handler receives.
#[derive(Debug)]
pub struct ExceptionContext {
    /// asyncio's `message` key: what failed.
    pub message: String,
    /// asyncio's `exception` key, when an error is attached.
    pub error: Option<Error>,
}

/// Signature of an exception handler.
pub type ExceptionHandler = Rc<dyn Fn(&EventLoop, &ExceptionContext)>;

/// One blocking poll, handed to a [`Blocker`]. It is `Send`, so a binding can
/// run it with its interpreter lock released.
pub struct PollStep<'a> {
    poll: &'a mut Poll,
    events: &'a mut Events,
    timeout: Option<Duration>,
}

impl PollStep<'_> {
    /// The timeout the loop computed (`None`: wait until an event).
    pub fn timeout(&self) -> Option<Duration> {
        self.timeout
    }

    /// Block in the poll. An interrupted wait (`EINTR`) counts as no events.
    pub fn run(self) -> io::Result<()> {
        match self.poll.poll(self.events, self.timeout) {
            Ok(()) => Ok(()),
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {
                self.events.clear();
                Ok(())
            }
            Err(e) => Err(e),
        }
    }
}

/// Wraps the loop's blocking poll, for bindings: a Python binding releases the
/// GIL around [`PollStep::run`] and checks for signals afterwards. An error
/// returned here ends `run_forever` with that error.
pub trait Blocker {
    /// Run `step` (or not, if the wait must be skipped) and report.
    fn block(&self, step: PollStep<'_>) -> Result<()>;
}

type RemoteTask = Box<dyn FnOnce(&EventLoop) + Send>;

struct RemoteShared {
    queue: Mutex<Vec<(Option<Arc<AtomicBool>>, RemoteTask)>>,
    waker: Waker,
    notified: AtomicBool,
    closed: AtomicBool,
}

/// A thread-safe handle on a loop: schedule callbacks from any thread.
///
/// Obtained from [`EventLoop::remote`]. Cloning is cheap.
#[derive(Clone)]
pub struct LoopRemote {
    shared: Arc<RemoteShared>,
}

impl LoopRemote {
    /// Schedule `f` on the loop's thread, in the loop's next iteration, and
    /// wake the loop if it is blocked in its poll.
    pub fn call_soon_threadsafe<F: FnOnce() + Send + 'static>(&self, f: F) -> Result<RemoteHandle> {
        let flag = Arc::new(AtomicBool::new(false));
        self.push(Some(flag.clone()), Box::new(move |_| f()))?;
        Ok(RemoteHandle(flag))
    }

    /// Like `call_soon_threadsafe`, but the callback receives the loop.
    pub fn call_soon_threadsafe_with_loop<F: FnOnce(&EventLoop) + Send + 'static>(&self, f: F) -> Result<()> {
        self.push(None, Box::new(f))
    }

    fn push(&self, flag: Option<Arc<AtomicBool>>, f: RemoteTask) -> Result<()> {
        if self.shared.closed.load(Ordering::Acquire) {
            return Err(Error::LoopClosed);
        }
        self.shared.queue.lock().unwrap_or_else(|p| p.into_inner()).push((flag, f));
        self.wake();
        Ok(())
    }

    /// Wake the loop from its poll (a no-op if a wake-up is already pending).
    pub fn wake(&self) {
        if !self.shared.notified.swap(true, Ordering::AcqRel) {
            let _ = self.shared.waker.wake();
        }
    }
}

impl fmt::Debug for LoopRemote {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("LoopRemote").finish_non_exhaustive()
    }
}

enum Ready {
    Handle(Rc<HandleInner>),
    Task(Callback),
}

/// A file descriptor watched with `add_reader`/`add_writer`.
struct FdWatch {
    fd: RawFd,
    /// A duplicate of `fd` registered in its place when `fd` itself is
    /// already in the poll (a transport on a borrowed descriptor, watched
    /// during asyncio's native `sendfile`). Closed with the watch.
    alias: RefCell<Option<std::os::fd::OwnedFd>>,
    token: Cell<Token>,
    reader: RefCell<Option<Rc<dyn Fn()>>>,
    writer: RefCell<Option<Rc<dyn Fn()>>>,
}

impl FdWatch {
    /// The descriptor registered in the poll: `fd`, or its alias.
    fn poll_fd(&self) -> RawFd {
        use std::os::fd::AsRawFd;
        self.alias.borrow().as_ref().map(|a| a.as_raw_fd()).unwrap_or(self.fd)
    }

    fn interest(&self) -> Option<Interest> {
        match (self.reader.borrow().is_some(), self.writer.borrow().is_some()) {
            (true, true) => Some(Interest::READABLE | Interest::WRITABLE),
            (true, false) => Some(Interest::READABLE),
            (false, true) => Some(Interest::WRITABLE),
            (false, false) => None,
        }
    }
}

impl IoSource for FdWatch {
    fn on_ready(self: Rc<Self>, lp: &EventLoop, ready: Readiness) {
        let hup = ready.error || ready.read_closed || ready.write_closed;
        if ready.readable || hup {
            let cb = self.reader.borrow().clone();
            if let Some(cb) = cb {
                lp.guarded("Exception in reader callback", || cb());
            }
        }
        if ready.writable || hup {
            let cb = self.writer.borrow().clone();
            if let Some(cb) = cb {
                lp.guarded("Exception in writer callback", || cb());
            }
        }
        // mio is edge-triggered; asyncio's readers are level-triggered. Re-arm:
        // EPOLL_CTL_MOD reports the descriptor again if it is still ready.
        let still = lp.inner.watches.borrow().get(&self.fd).map(|w| Rc::ptr_eq(w, &self)).unwrap_or(false);
        if still {
            if let Some(interest) = self.interest() {
                let registry = lp.inner.registry();
                if registry.reregister(&mut SourceFd(&self.poll_fd()), self.token.get(), interest).is_err() {
                    // The descriptor was closed behind our back: forget it.
                    lp.drop_watch(self.fd);
                }
            }
        }
    }
}

pub(crate) struct LoopInner {
    poll: RefCell<Poll>,
    events: RefCell<Events>,
    registry: Registry,
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
    fn registry(&self) -> &Registry {
        &self.registry
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

/// Clears `running` (and `stopping`) however `run_*` exits.
struct RunGuard<'a>(&'a LoopInner);
impl Drop for RunGuard<'_> {
    fn drop(&mut self) {
        self.0.running.set(false);
        self.0.stopping.set(false);
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
                poll: RefCell::new(poll),
                events: RefCell::new(Events::with_capacity(1024)),
                registry,
                ready: RefCell::new(VecDeque::with_capacity(64)),
                timers: RefCell::new(TimerQueue::default()),
                sources: RefCell::new(Slab::with_capacity(64)),
                generation: Cell::new(0),
                pending_events: RefCell::new(Vec::with_capacity(1024)),
                remote: Arc::new(RemoteShared {
                    queue: Mutex::new(Vec::new()),
                    waker,
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

    /// A thread-safe handle for [`LoopRemote::call_soon_threadsafe`].
    pub fn remote(&self) -> LoopRemote {
        LoopRemote { shared: self.inner.remote.clone() }
    }

    /// Shorthand for `self.remote().call_soon_threadsafe(f)`.
    pub fn call_soon_threadsafe<F: FnOnce() + Send + 'static>(&self, f: F) -> Result<RemoteHandle> {
        self.remote().call_soon_threadsafe(f)
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

    /// Install (or with `None`, remove) the exception handler.
    pub fn set_exception_handler(&self, handler: Option<ExceptionHandler>) {
        *self.inner.exception_handler.borrow_mut() = handler;
    }

    /// The installed exception handler, if any.
    pub fn get_exception_handler(&self) -> Option<ExceptionHandler> {
        self.inner.exception_handler.borrow().clone()
    }

    /// Report an error to the exception handler (or print it to stderr when
    /// none is installed, as asyncio's default handler logs it).
    pub fn call_exception_handler(&self, ctx: ExceptionContext) {
        let handler = self.inner.exception_handler.borrow().clone();
        match handler {
            Some(h) => {
                let r = catch_unwind(AssertUnwindSafe(|| h(self, &ctx)));
                if let Err(p) = r {
                    eprintln!("ferroloop: unhandled error in exception handler: {}", panic_message(&*p));
                    Self::default_exception_handler(&ctx);
                }
            }
            None => Self::default_exception_handler(&ctx),
        }
    }

    /// The default handler: print the message and error to stderr.
    pub fn default_exception_handler(ctx: &ExceptionContext) {
        match &ctx.error {
            Some(e) => eprintln!("ferroloop: {}: {}", ctx.message, e),
            None => eprintln!("ferroloop: {}", ctx.message),
        }
    }

    /// Install (or with `None`, remove) the handler of warnings: conditions
    /// asyncio logs at WARNING level without an exception (for example
    /// repeated writes to a lost connection). The default prints to stderr.
    pub fn set_warning_handler(&self, handler: Option<WarningHandler>) {
        *self.inner.warning_handler.borrow_mut() = handler;
    }

    /// Report a warning to the warning handler.
    pub fn warn(&self, message: &str) {
        let handler = self.inner.warning_handler.borrow().clone();
        match handler {
            Some(h) => {
                if catch_unwind(AssertUnwindSafe(|| h(message))).is_err() {
                    eprintln!("ferroloop: {message}");
                }
            }
            None => eprintln!("ferroloop: {message}"),
        }
    }

    /// Run `f`, turning a panic into a report to the exception handler.
    /// Returns `None` if `f` panicked.
    pub(crate) fn guarded<R>(&self, message: &str, f: impl FnOnce() -> R) -> Option<R> {
        match catch_unwind(AssertUnwindSafe(f)) {
            Ok(r) => Some(r),
            Err(p) => {
                self.call_exception_handler(ExceptionContext {
                    message: message.to_string(),
                    error: Some(Error::Panic(panic_message(&*p))),
                });
                None
            }
        }
    }

    /// Install a [`Blocker`] around the blocking poll (bindings only).
    pub fn set_blocker(&self, blocker: Option<Rc<dyn Blocker>>) {
        *self.inner.blocker.borrow_mut() = blocker;
    }

    // ----- running -------------------------------------------------------

    fn begin_run(&self) -> Result<RunGuard<'_>> {
        self.check_closed()?;
        if self.inner.running.get() {
            return Err(Error::state("This event loop is already running"));
        }
        self.inner.running.set(true);
        Ok(RunGuard(&self.inner))
    }

    /// Run until [`EventLoop::stop`] is called.
    pub fn run_forever(&self) -> Result<()> {
        let _guard = self.begin_run()?;
        loop {
            self.run_once()?;
            if self.inner.stopping.get() {
                return Ok(());
            }
        }
    }

    /// Run until `done()` returns true (checked before every iteration).
    /// If the loop is stopped first, returns [`Error::LoopStopped`].
    pub fn run_until(&self, mut done: impl FnMut() -> bool) -> Result<()> {
        let _guard = self.begin_run()?;
        loop {
            if done() {
                return Ok(());
            }
            self.run_once()?;
            if self.inner.stopping.get() {
                return if done() { Ok(()) } else { Err(Error::LoopStopped) };
            }
        }
    }

    /// Run until `fut` completes and return its result.
    pub fn run_until_complete<T: 'static>(&self, fut: &LoopFuture<T>) -> Result<T> {
        self.run_until(|| fut.done())?;
        fut.take_result().unwrap_or(Err(Error::state("future result already taken")))
    }

    /// Run one iteration of the loop (see the module documentation). The loop
    /// need not be "running"; `run_forever` is this in a loop.
    pub fn run_once(&self) -> Result<()> {
        self.check_closed()?;
        let inner = &*self.inner;
        // Events left over by an interrupted iteration come first: readiness
        // is edge-triggered, so none may be dropped.
        let mut pending = std::mem::take(&mut *inner.pending_events.borrow_mut());
        let timeout = if inner.stopping.get()
            || !inner.ready.borrow().is_empty()
            || !pending.is_empty()
            || inner.remote.notified.load(Ordering::Acquire)
        {
            Some(Duration::ZERO)
        } else {
            match inner.timers.borrow_mut().next_deadline() {
                Some(when) => {
                    let secs = (when - self.time()).clamp(0.0, MAX_POLL_TIMEOUT);
                    Some(Duration::from_secs_f64(secs))
                }
                None => None,
            }
        };

        // A clone: the blocker may run code (signal handlers) that replaces it.
        let blocker = inner.blocker.borrow().clone();
        let polled = {
            let mut poll = inner.poll.borrow_mut();
            let mut events = inner.events.borrow_mut();
            let step = PollStep { poll: &mut poll, events: &mut events, timeout };
            match &blocker {
                Some(b) => b.block(step),
                None => step.run().map_err(Error::from),
            }
        };

        // Copy the events out so that handlers may register and deregister
        // freely (and so that an interrupted iteration keeps them).
        {
            let mut events = inner.events.borrow_mut();
            for ev in events.iter() {
                if ev.token() == WAKER_TOKEN {
                    continue;
                }
                pending.push((
                    ev.token(),
                    Readiness {
                        readable: ev.is_readable(),
                        writable: ev.is_writable(),
                        error: ev.is_error(),
                        read_closed: ev.is_read_closed(),
                        write_closed: ev.is_write_closed(),
                    },
                ));
            }
            events.clear();
        }
        if let Err(e) = polled {
            // The blocker failed after the poll (a signal handler raised):
            // keep what the poll reported for the next run.
            *inner.pending_events.borrow_mut() = pending;
            return Err(e);
        }

        // Callbacks queued from other threads join the ready queue now.
        self.drain_remote();

        // asyncio's order within an iteration: first the callbacks that were
        // ready before the poll, then the I/O callbacks, then the timers due
        // now, judged against one reading of the clock taken here. What any
        // of them schedules (a timer due at once included) waits for the
        // next iteration. Without timers there is nothing to judge: no clock.
        let due = if inner.timers.borrow().is_empty() { None } else { Some(self.collect_due()) };
        let ntodo = inner.ready.borrow().len();
        for _ in 0..ntodo {
            if let Some(err) = inner.interrupt.borrow_mut().take() {
                if let Some(due) = due {
                    self.requeue_timers(due, 0);
                }
                *inner.pending_events.borrow_mut() = pending;
                return Err(err);
            }
            let item = inner.ready.borrow_mut().pop_front();
            match item {
                Some(Ready::Handle(h)) => {
                    self.guarded("Exception in callback", || h.run());
                }
                Some(Ready::Task(f)) => {
                    self.guarded("Exception in callback", f);
                }
                None => break,
            }
        }

        let mut dispatched = 0;
        while dispatched < pending.len() {
            if inner.interrupt.borrow().is_some() {
                break;
            }
            let (token, ready) = pending[dispatched];
            dispatched += 1;
            let source = {
                let key = token.0 & 0xffff_ffff;
                let gen = (token.0 >> 32) as u32;
                match inner.sources.borrow().get(key) {
                    Some((g, s)) if *g == gen => Some(s.clone()),
                    _ => None,
                }
            };
            if let Some(source) = source {
                source.on_ready(self, ready);
            }
        }
        if dispatched == pending.len() {
            pending.clear();
        } else {
            pending.drain(..dispatched);
        }
        *inner.pending_events.borrow_mut() = pending;

        if let Some(due) = due {
            self.run_due(due)?;
        }
        match inner.interrupt.borrow_mut().take() {
            Some(err) => Err(err),
            None => Ok(()),
        }
    }

    /// Take the timers due now off the heap, in order (`run_once`).
    fn collect_due(&self) -> Vec<Rc<HandleInner>> {
        let inner = &*self.inner;
        let end = self.time() + inner.clock_resolution;
        let mut due = std::mem::take(&mut *inner.due_timers.borrow_mut());
        let mut timers = inner.timers.borrow_mut();
        while let Some(h) = timers.pop_due(end) {
            due.push(h);
        }
        due
    }

    /// Run the due timers of this iteration; an interrupt requeues the rest.
    fn run_due(&self, mut due: Vec<Rc<HandleInner>>) -> Result<()> {
        for i in 0..due.len() {
            if let Some(err) = self.inner.interrupt.borrow_mut().take() {
                self.requeue_timers(due, i);
                return Err(err);
            }
            let h = &due[i];
            self.guarded("Exception in callback", || h.run());
        }
        due.clear();
        *self.inner.due_timers.borrow_mut() = due;
        Ok(())
    }

    /// After an interrupted iteration, the due timers not run yet go to the
    /// front of the ready queue, in order: they run first next time.
    fn requeue_timers(&self, mut due: Vec<Rc<HandleInner>>, from: usize) {
        let mut ready = self.inner.ready.borrow_mut();
        for h in due.drain(from..).rev() {
            ready.push_front(Ready::Handle(h));
        }
    }

    /// Make the current `run_once` (and so `run_forever`/`run_until*`) return
    /// `err` as soon as the running callback returns; callbacks still queued
    /// stay queued for the next run. For bindings whose callbacks raise
    /// exceptions that must end the loop (Python's `KeyboardInterrupt`).
    pub fn interrupt(&self, err: Error) {
        *self.inner.interrupt.borrow_mut() = Some(err);
    }

    fn drain_remote(&self) {
        let shared = &self.inner.remote;
        // A plain load first: the swap is a locked instruction, and nearly
        // every iteration finds nothing sent from other threads.
        if !shared.notified.load(Ordering::Acquire) || !shared.notified.swap(false, Ordering::AcqRel) {
            return;
        }
        let tasks = std::mem::take(&mut *shared.queue.lock().unwrap_or_else(|p| p.into_inner()));
        for (flag, task) in tasks {
            let lp = self.clone();
            self.schedule(Box::new(move || {
                if !flag.map(|f| f.load(Ordering::Acquire)).unwrap_or(false) {
                    task(&lp)
                }
            }));
        }
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
        *self.inner.exception_handler.borrow_mut() = None;
        *self.inner.blocker.borrow_mut() = None;
        *self.inner.warning_handler.borrow_mut() = None;
        Ok(())
    }

    // ----- registration (crate-internal) ---------------------------------

    pub(crate) fn register<S: mio::event::Source + ?Sized>(
        &self,
        io: &mut S,
        interest: Interest,
        owner: Rc<dyn IoSource>,
    ) -> Result<Token> {
        self.check_closed()?;
        let gen = self.inner.generation.get().wrapping_add(1);
        self.inner.generation.set(gen);
        let key = self.inner.sources.borrow_mut().insert((gen, owner));
        let token = Token(key | ((gen as usize) << 32));
        if let Err(e) = self.inner.registry.register(io, token, interest) {
            self.inner.sources.borrow_mut().remove(key);
            return Err(e.into());
        }
        Ok(token)
    }

    pub(crate) fn reregister<S: mio::event::Source + ?Sized>(
        &self,
        io: &mut S,
        token: Token,
        interest: Interest,
    ) -> io::Result<()> {
        self.inner.registry.reregister(io, token, interest)
    }

    /// Remove a source. The slab entry is dropped after the borrow ends.
    pub(crate) fn deregister<S: mio::event::Source + ?Sized>(&self, io: &mut S, token: Token) {
        let _ = self.inner.registry.deregister(io);
        self.forget_token(token);
    }

    /// Drop the slab entry of `token` (when the socket is already closed).
    pub(crate) fn forget_token(&self, token: Token) {
        let key = token.0 & 0xffff_ffff;
        let gen = (token.0 >> 32) as u32;
        let removed = {
            let mut sources = self.inner.sources.borrow_mut();
            match sources.get(key) {
                Some((g, _)) if *g == gen => Some(sources.remove(key)),
                _ => None,
            }
        };
        drop(removed);
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

    // ----- fd watchers ---------------------------------------------------

    /// Call `f` whenever `fd` is readable (level-triggered, as asyncio's
    /// `add_reader`). Replaces a previous reader of `fd`.
    pub fn add_reader(&self, fd: RawFd, f: Rc<dyn Fn()>) -> Result<()> {
        self.set_watch(fd, Some(Some(f)), None)
    }

    /// Call `f` whenever `fd` is writable (asyncio's `add_writer`).
    pub fn add_writer(&self, fd: RawFd, f: Rc<dyn Fn()>) -> Result<()> {
        self.set_watch(fd, None, Some(Some(f)))
    }

    /// Stop watching `fd` for reading; true if it was watched.
    pub fn remove_reader(&self, fd: RawFd) -> bool {
        let had = self.inner.watches.borrow().get(&fd).map(|w| w.reader.borrow().is_some()).unwrap_or(false);
        if had {
            let _ = self.set_watch(fd, Some(None), None);
        }
        had
    }

    /// Stop watching `fd` for writing; true if it was watched.
    pub fn remove_writer(&self, fd: RawFd) -> bool {
        let had = self.inner.watches.borrow().get(&fd).map(|w| w.writer.borrow().is_some()).unwrap_or(false);
        if had {
            let _ = self.set_watch(fd, None, Some(None));
        }
        had
    }

    /// Whether `fd` has a reader (`true`) or writer (`false`) installed.
    pub fn has_watch(&self, fd: RawFd, reader: bool) -> bool {
        self.inner
            .watches
            .borrow()
            .get(&fd)
            .map(|w| if reader { w.reader.borrow().is_some() } else { w.writer.borrow().is_some() })
            .unwrap_or(false)
    }

    fn set_watch(
        &self,
        fd: RawFd,
        reader: Option<Option<Rc<dyn Fn()>>>,
        writer: Option<Option<Rc<dyn Fn()>>>,
    ) -> Result<()> {
        self.check_closed()?;
        let existing = self.inner.watches.borrow().get(&fd).cloned();
        let (watch, is_new) = match existing {
            Some(w) => (w, false),
            None => (
                Rc::new(FdWatch {
                    fd,
                    alias: RefCell::new(None),
                    token: Cell::new(Token(0)),
                    reader: RefCell::new(None),
                    writer: RefCell::new(None),
                }),
                true,
            ),
        };
        let old_r = reader.map(|r| std::mem::replace(&mut *watch.reader.borrow_mut(), r));
        let old_w = writer.map(|w| std::mem::replace(&mut *watch.writer.borrow_mut(), w));
        let result = match (watch.interest(), is_new) {
            (None, true) => Ok(()),
            (None, false) => {
                self.drop_watch(fd);
                Ok(())
            }
            (Some(interest), true) => {
                let mut r = self.register(&mut SourceFd(&fd), interest, watch.clone());
                if matches!(&r, Err(Error::Io(e)) if e.kind() == io::ErrorKind::AlreadyExists) {
                    // `fd` is in the poll already (a transport drives it):
                    // watch a duplicate of it instead.
                    match sys::dup_cloexec(fd) {
                        Ok(dup) => {
                            *watch.alias.borrow_mut() = Some(dup);
                            r = self.register(&mut SourceFd(&watch.poll_fd()), interest, watch.clone());
                        }
                        Err(e) => r = Err(e.into()),
                    }
                }
                match r {
                    Ok(token) => {
                        watch.token.set(token);
                        self.inner.watches.borrow_mut().insert(fd, watch.clone());
                        Ok(())
                    }
                    Err(e) => Err(e),
                }
            }
            (Some(interest), false) => self
                .reregister(&mut SourceFd(&watch.poll_fd()), watch.token.get(), interest)
                .map_err(Error::from),
        };
        drop((old_r, old_w));
        result
    }

    fn drop_watch(&self, fd: RawFd) {
        let w = self.inner.watches.borrow_mut().remove(&fd);
        if let Some(w) = w {
            self.deregister(&mut SourceFd(&w.poll_fd()), w.token.get());
        }
    }
}

/// The message of a panic payload.
pub(crate) fn panic_message(p: &(dyn std::any::Any + Send)) -> String {
    if let Some(s) = p.downcast_ref::<&str>() {
        (*s).to_string()
    } else if let Some(s) = p.downcast_ref::<String>() {
        s.clone()
    } else {
        "non-string panic payload".to_string()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

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
