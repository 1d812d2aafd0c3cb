//! Scheduling from other threads: [`LoopRemote`], the queue it shares with
//! the loop, and the loop's side of it (`call_soon_threadsafe`, the drain of
//! the queue at each iteration).

use std::fmt;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};

use mio::Waker;

use super::EventLoop;
use crate::error::{Error, Result};
use crate::handle::RemoteHandle;

type RemoteTask = Box<dyn FnOnce(&EventLoop) + Send>;

pub(super) struct RemoteShared {
    pub(super) queue: Mutex<Vec<(Option<Arc<AtomicBool>>, RemoteTask)>>,
    /// `None` once the loop is closed.
    pub(super) waker: Mutex<Option<Waker>>,
    pub(super) notified: AtomicBool,
    pub(super) closed: AtomicBool,
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
            if let Some(w) = self.shared.waker.lock().unwrap_or_else(|p| p.into_inner()).as_ref() {
                let _ = w.wake();
            }
        }
    }
}

impl fmt::Debug for LoopRemote {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("LoopRemote").finish_non_exhaustive()
    }
}

impl EventLoop {
    /// A thread-safe handle for [`LoopRemote::call_soon_threadsafe`].
    pub fn remote(&self) -> LoopRemote {
        LoopRemote { shared: self.inner.remote.clone() }
    }

    /// Shorthand for `self.remote().call_soon_threadsafe(f)`.
    pub fn call_soon_threadsafe<F: FnOnce() + Send + 'static>(&self, f: F) -> Result<RemoteHandle> {
        self.remote().call_soon_threadsafe(f)
    }

    pub(super) fn drain_remote(&self) {
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
}

#[cfg(test)]
mod tests {
    use super::*;

    fn queued(lp: &EventLoop) -> usize {
        lp.inner.remote.queue.lock().unwrap().len()
    }

    fn notified(lp: &EventLoop) -> bool {
        lp.inner.remote.notified.load(Ordering::Acquire)
    }

    #[test]
    fn wake_sets_the_flag_once_and_the_drain_clears_it() {
        let lp = EventLoop::new().unwrap();
        assert!(!notified(&lp));
        let remote = lp.remote();
        remote.wake();
        assert!(notified(&lp));
        remote.clone().wake();
        assert!(notified(&lp), "a second wake-up leaves the pending one");
        lp.drain_remote();
        assert!(!notified(&lp));
        assert!(lp.inner.ready.borrow().is_empty(), "a bare wake-up schedules nothing");
    }

    #[test]
    fn tasks_sent_from_other_threads_wait_for_the_drain_and_keep_their_order() {
        let lp = EventLoop::new().unwrap();
        let log = Arc::new(Mutex::new(Vec::new()));
        let remote = lp.remote();
        let l = log.clone();
        std::thread::spawn(move || {
            for i in 0..3 {
                let l = l.clone();
                remote.call_soon_threadsafe(move || l.lock().unwrap().push(i)).unwrap();
            }
            let l = l.clone();
            remote
                .call_soon_threadsafe_with_loop(move |lp| l.lock().unwrap().push(if lp.is_closed() { -1 } else { 3 }))
                .unwrap();
        })
        .join()
        .unwrap();

        assert!(notified(&lp));
        assert_eq!(queued(&lp), 4);
        assert!(lp.inner.ready.borrow().is_empty());
        lp.drain_remote();
        assert_eq!(queued(&lp), 0);
        assert_eq!(lp.inner.ready.borrow().len(), 4);
        assert!(log.lock().unwrap().is_empty(), "the drain only schedules");
        lp.run_once().unwrap();
        assert_eq!(*log.lock().unwrap(), vec![0, 1, 2, 3]);
    }

    #[test]
    fn a_remote_handle_cancelled_before_the_callback_runs_stops_it() {
        let lp = EventLoop::new().unwrap();
        let ran = Arc::new(AtomicBool::new(false));
        let r = ran.clone();
        let before_drain = lp.call_soon_threadsafe(move || r.store(true, Ordering::Release)).unwrap();
        before_drain.cancel();
        lp.run_once().unwrap();
        let r = ran.clone();
        let after_drain = lp.call_soon_threadsafe(move || r.store(true, Ordering::Release)).unwrap();
        lp.drain_remote();
        after_drain.cancel();
        lp.run_once().unwrap();
        assert!(!ran.load(Ordering::Acquire));
        assert!(lp.inner.ready.borrow().is_empty());
    }

    #[test]
    fn a_closed_loop_refuses_remote_work() {
        let lp = EventLoop::new().unwrap();
        let remote = lp.remote();
        lp.close().unwrap();
        assert!(matches!(remote.call_soon_threadsafe(|| {}), Err(Error::LoopClosed)));
        assert!(matches!(remote.call_soon_threadsafe_with_loop(|_| {}), Err(Error::LoopClosed)));
        assert_eq!(queued(&lp), 0);
        assert!(!notified(&lp));
    }
}
