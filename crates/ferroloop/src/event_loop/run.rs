//! Running the loop: `run_forever`, `run_until`, `run_until_complete` and one
//! iteration, [`EventLoop::run_once`]; the due timers of an iteration; the
//! [`Blocker`] hook around the blocking poll.

use std::io;
use std::rc::Rc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use mio::{Events, Poll};

use super::{EventLoop, LoopInner, Ready, Readiness, WAKER_TOKEN};
use crate::error::{Error, Result};
use crate::future::LoopFuture;
use crate::handle::HandleInner;

/// Longest single poll, as asyncio's `MAXIMUM_SELECT_TIMEOUT` (24 hours).
const MAX_POLL_TIMEOUT: f64 = 24.0 * 3600.0;

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

/// Clears `running` (and `stopping`) however `run_*` exits.
struct RunGuard<'a>(&'a LoopInner);
impl Drop for RunGuard<'_> {
    fn drop(&mut self) {
        self.0.running.set(false);
        self.0.stopping.set(false);
    }
}

impl EventLoop {
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
            let Some(poll) = poll.as_mut() else { return Err(Error::LoopClosed) };
            let mut events = inner.events.borrow_mut();
            let step = PollStep { poll, events: &mut events, timeout };
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
}

#[cfg(test)]
mod tests {
    use std::cell::RefCell;

    use super::*;
    use crate::handle::TimerHandle;

    type Log = Rc<RefCell<Vec<&'static str>>>;

    fn push(log: &Log, s: &'static str) -> impl FnOnce() + 'static {
        let log = log.clone();
        move || log.borrow_mut().push(s)
    }

    fn same(h: &Rc<HandleInner>, t: &TimerHandle) -> bool {
        Rc::ptr_eq(h, &t.0)
    }

    #[test]
    fn collect_due_takes_due_timers_by_deadline_then_scheduling_order() {
        let lp = EventLoop::new().unwrap();
        let log = Log::default();
        let now = lp.time();
        let b1 = lp.call_at(now - 1.0, push(&log, "b1")).unwrap();
        let a = lp.call_at(now - 3.0, push(&log, "a")).unwrap();
        let gone = lp.call_at(now - 2.0, push(&log, "cancelled")).unwrap();
        let b2 = lp.call_at(now - 1.0, push(&log, "b2")).unwrap();
        let _later = lp.call_at(now + 3600.0, push(&log, "later")).unwrap();
        gone.cancel();

        let due = lp.collect_due();
        assert_eq!(due.len(), 3);
        assert!(same(&due[0], &a) && same(&due[1], &b1) && same(&due[2], &b2));
        // The cancelled timer was dropped on the way; the later one stays.
        assert_eq!(lp.scheduled_timers(), 1);

        lp.run_due(due).unwrap();
        assert_eq!(*log.borrow(), vec!["a", "b1", "b2"]);
        // The emptied vector is kept for the next iteration.
        let kept = lp.inner.due_timers.borrow();
        assert!(kept.is_empty() && kept.capacity() >= 3);
    }

    #[test]
    fn an_interrupt_in_a_due_timer_requeues_the_rest_first_and_in_order() {
        let lp = EventLoop::new().unwrap();
        let log = Log::default();
        let now = lp.time();
        let l2 = lp.clone();
        let lg = log.clone();
        lp.call_at(now - 2.0, move || {
            lg.borrow_mut().push("t1");
            l2.interrupt(Error::state("interrupted"));
        })
        .unwrap();
        lp.call_at(now - 1.0, push(&log, "t2")).unwrap();
        lp.call_at(now - 1.0, push(&log, "t3")).unwrap();

        let r = lp.run_once();
        assert!(matches!(r, Err(Error::InvalidState(ref m)) if m == "interrupted"));
        assert_eq!(*log.borrow(), vec!["t1"]);
        assert_eq!(lp.scheduled_timers(), 0);
        assert_eq!(lp.inner.ready.borrow().len(), 2);

        // Scheduled after the interrupt: runs after the requeued timers.
        lp.call_soon(push(&log, "soon")).unwrap();
        lp.run_once().unwrap();
        assert_eq!(*log.borrow(), vec!["t1", "t2", "t3", "soon"]);
    }

    /// Records the timeout of every poll and skips the wait.
    #[derive(Default)]
    struct Recorder(RefCell<Vec<Option<Duration>>>);

    impl Blocker for Recorder {
        fn block(&self, step: PollStep<'_>) -> Result<()> {
            self.0.borrow_mut().push(step.timeout());
            Ok(())
        }
    }

    #[test]
    fn the_poll_timeout_is_zero_with_work_waiting_else_until_the_earliest_timer() {
        let lp = EventLoop::new().unwrap();
        let rec = Rc::new(Recorder::default());
        lp.set_blocker(Some(rec.clone() as Rc<dyn Blocker>));
        let last = || *rec.0.borrow().last().unwrap();

        lp.run_once().unwrap();
        assert_eq!(last(), None, "nothing scheduled: wait for an event");

        let t = lp.call_later(10.0, || {}).unwrap();
        lp.run_once().unwrap();
        let d = last().unwrap();
        assert!(d > Duration::from_secs(9) && d <= Duration::from_secs(10), "{d:?}");
        t.cancel();

        lp.call_later(1e9, || {}).unwrap();
        lp.run_once().unwrap();
        assert_eq!(last(), Some(Duration::from_secs_f64(MAX_POLL_TIMEOUT)));

        lp.call_soon(|| {}).unwrap();
        lp.run_once().unwrap();
        assert_eq!(last(), Some(Duration::ZERO), "a ready callback");

        lp.remote().wake();
        lp.run_once().unwrap();
        assert_eq!(last(), Some(Duration::ZERO), "a wake-up from another thread");
        lp.run_once().unwrap();
        assert_ne!(last(), Some(Duration::ZERO), "the wake-up was consumed");

        lp.stop();
        lp.run_once().unwrap();
        assert_eq!(last(), Some(Duration::ZERO), "stopping");
        assert_eq!(rec.0.borrow().len(), 7);
    }

    struct Failing;

    impl Blocker for Failing {
        fn block(&self, _step: PollStep<'_>) -> Result<()> {
            Err(Error::state("signal handler raised"))
        }
    }

    #[test]
    fn a_failing_blocker_ends_the_run_and_leaves_the_ready_queue_alone() {
        let lp = EventLoop::new().unwrap();
        let log = Log::default();
        lp.call_soon(push(&log, "cb")).unwrap();
        lp.set_blocker(Some(Rc::new(Failing)));
        assert!(matches!(lp.run_forever(), Err(Error::InvalidState(ref m)) if m == "signal handler raised"));
        assert!(log.borrow().is_empty());
        assert!(!lp.is_running(), "the run guard cleared `running`");
        lp.set_blocker(None);
        lp.run_once().unwrap();
        assert_eq!(*log.borrow(), vec!["cb"]);
    }
}
