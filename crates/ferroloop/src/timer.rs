//! The timer queue: a min-heap keyed by `(deadline, sequence)`.
//!
//! Timers due at the same time run in the order they were scheduled.
//! Cancelled timers stay in the heap until they reach the top, unless they
//! become the majority of a large heap, in which case the heap is rebuilt
//! without them (asyncio's policy).

use std::cmp::Ordering;
use std::collections::BinaryHeap;
use std::rc::Rc;

use crate::handle::HandleInner;

/// Below this many timers the heap is never compacted.
const MIN_SCHEDULED_FOR_COMPACTION: usize = 100;

struct Entry {
    when: f64,
    seq: u64,
    handle: Rc<HandleInner>,
}

impl PartialEq for Entry {
    fn eq(&self, other: &Self) -> bool {
        self.cmp(other) == Ordering::Equal
    }
}
impl Eq for Entry {}
impl PartialOrd for Entry {
    fn partial_cmp(&self, other: &Self) -> Option<Ordering> {
        Some(self.cmp(other))
    }
}
impl Ord for Entry {
    // Reversed so that `BinaryHeap` (a max-heap) pops the earliest entry.
    fn cmp(&self, other: &Self) -> Ordering {
        other.when.total_cmp(&self.when).then_with(|| other.seq.cmp(&self.seq))
    }
}

/// Timers waiting for their deadline.
#[derive(Default)]
pub(crate) struct TimerQueue {
    heap: BinaryHeap<Entry>,
    seq: u64,
    cancelled: usize,
}

impl TimerQueue {
    pub(crate) fn push(&mut self, handle: Rc<HandleInner>) {
        let when = handle.when.expect("timer handle without deadline");
        self.seq += 1;
        self.heap.push(Entry { when, seq: self.seq, handle });
    }

    /// Count one more cancelled timer; compact when they dominate.
    pub(crate) fn note_cancelled(&mut self) {
        self.cancelled += 1;
        if self.heap.len() > MIN_SCHEDULED_FOR_COMPACTION && self.cancelled * 2 > self.heap.len() {
            let entries = std::mem::take(&mut self.heap).into_vec();
            self.heap = entries
                .into_iter()
                .filter(|e| {
                    let keep = !e.handle.cancelled.get();
                    if !keep {
                        e.handle.scheduled.set(false);
                    }
                    keep
                })
                .collect();
            self.cancelled = 0;
        }
    }

    /// Drop cancelled timers from the top, then return the earliest deadline.
    #[inline]
    pub(crate) fn next_deadline(&mut self) -> Option<f64> {
        if self.heap.is_empty() {
            return None;
        }
        self.next_deadline_slow()
    }

    fn next_deadline_slow(&mut self) -> Option<f64> {
        while let Some(top) = self.heap.peek() {
            if top.handle.cancelled.get() {
                let e = self.heap.pop().expect("peeked");
                e.handle.scheduled.set(false);
                self.cancelled = self.cancelled.saturating_sub(1);
            } else {
                return Some(top.when);
            }
        }
        None
    }

    /// Pop the earliest live timer if it is due before `end`.
    pub(crate) fn pop_due(&mut self, end: f64) -> Option<Rc<HandleInner>> {
        loop {
            let top = self.heap.peek()?;
            if top.handle.cancelled.get() {
                let e = self.heap.pop().expect("peeked");
                e.handle.scheduled.set(false);
                self.cancelled = self.cancelled.saturating_sub(1);
                continue;
            }
            if top.when >= end {
                return None;
            }
            let e = self.heap.pop().expect("peeked");
            e.handle.scheduled.set(false);
            return Some(e.handle);
        }
    }

    /// Number of timers in the heap, cancelled ones included.
    pub(crate) fn len(&self) -> usize {
        self.heap.len()
    }

    /// True when no timer (live or cancelled) is in the heap.
    #[inline]
    pub(crate) fn is_empty(&self) -> bool {
        self.heap.is_empty()
    }

    /// Drop every timer (loop close).
    pub(crate) fn clear(&mut self) -> Vec<Rc<HandleInner>> {
        self.cancelled = 0;
        std::mem::take(&mut self.heap).into_vec().into_iter().map(|e| e.handle).collect()
    }
}
