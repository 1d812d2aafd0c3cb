//! The TLS transport's state, apart from the session and the sockets: what
//! the application was told, whether it reads, and how the connection is
//! ending. Every decision the transport takes on these flags is a method
//! here, unit-tested in memory.

use crate::flow::WriteFlow;
use crate::transport::core::lifecycle::count_dropped_write;

/// What happened to a TLS connection so far.
#[derive(Default)]
pub(crate) struct State {
    /// The handshake completed.
    pub(crate) handshaken: bool,
    /// The application protocol was given the transport (`connection_made`
    /// or, for `start_tls`, the future's result).
    pub(crate) app_started: bool,
    /// `close()`/`abort()` was called, or the TLS session is ending.
    pub(crate) closing: bool,
    /// Our close_notify is queued.
    shutdown_sent: bool,
    /// The peer's close_notify arrived.
    pub(crate) peer_closed: bool,
    /// `eof_received` was delivered.
    eof_delivered: bool,
    /// `connection_lost` was delivered (or will never be: no protocol).
    pub(crate) lost: bool,
    /// The application paused reading.
    app_paused: bool,
    /// A pump of pending plaintext is in the ready queue.
    pump_scheduled: bool,
    /// Writes dropped after closing (asyncio's `_conn_lost` count).
    conn_lost_writes: u32,
    /// The application's water marks.
    pub(crate) flow: WriteFlow,
}

impl State {
    /// `close()` or `abort()` was called, or the connection is lost.
    pub(crate) fn is_closing(&self) -> bool {
        self.closing || self.lost
    }

    /// `close()`: true if this call starts closing (not closing nor lost yet).
    pub(crate) fn begin_close(&mut self) -> bool {
        if self.is_closing() {
            return false;
        }
        self.closing = true;
        true
    }

    /// Nothing more reaches the application; true if it must be told
    /// `connection_lost` (it was started and not told yet).
    pub(crate) fn lose(&mut self) -> bool {
        let tell = self.app_started && !self.lost;
        self.lost = true;
        self.closing = true;
        tell
    }

    /// The application reads now: started, not paused, not closing.
    pub(crate) fn app_reads(&self) -> bool {
        self.app_started && !self.app_paused && !self.is_closing()
    }

    /// `is_reading()` as the application sees it.
    pub(crate) fn is_reading(&self) -> bool {
        !self.app_paused && !self.is_closing()
    }

    /// `pause_reading()`: true if it paused (no-op while closing or paused).
    pub(crate) fn pause_app(&mut self) -> bool {
        if self.is_closing() || self.app_paused {
            return false;
        }
        self.app_paused = true;
        true
    }

    /// `resume_reading()`: true if it resumed (no-op while closing or reading).
    pub(crate) fn resume_app(&mut self) -> bool {
        if self.is_closing() || !self.app_paused {
            return false;
        }
        self.app_paused = false;
        true
    }

    /// Whether `eof_received` is due (the peer's close_notify came, the
    /// application reads, nothing is pending, not told yet); `pending_empty`
    /// says whether plaintext still waits.
    pub(crate) fn eof_due(&self, pending_empty: bool) -> bool {
        self.peer_closed && self.app_started && !self.eof_delivered && !self.app_paused && !self.lost && pending_empty
    }

    /// Record `eof_received` as delivered; true if the application is to be
    /// called (not when the transport is closing already).
    pub(crate) fn deliver_eof(&mut self) -> bool {
        self.eof_delivered = true;
        !self.closing
    }

    /// Our close_notify: true the first time.
    pub(crate) fn send_shutdown(&mut self) -> bool {
        !std::mem::replace(&mut self.shutdown_sent, true)
    }

    /// A pump is to be scheduled: true unless one already is.
    pub(crate) fn schedule_pump(&mut self) -> bool {
        !std::mem::replace(&mut self.pump_scheduled, true)
    }

    /// The scheduled pump runs.
    pub(crate) fn pump_ran(&mut self) {
        self.pump_scheduled = false;
    }

    /// A write: `None` if it goes through; after closing `Some(log)`, the
    /// write dropped and `log` true when asyncio's warning is due.
    pub(crate) fn refuse_write(&mut self) -> Option<bool> {
        if !self.is_closing() {
            return None;
        }
        Some(count_dropped_write(&mut self.conn_lost_writes))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn started() -> State {
        State { app_started: true, ..State::default() }
    }

    #[test]
    fn close_starts_once_and_lose_tells_a_started_application_once() {
        let mut st = started();
        assert!(!st.is_closing());
        assert!(st.begin_close());
        assert!(!st.begin_close());
        assert!(st.is_closing());
        assert!(st.lose(), "started and not told: connection_lost is due");
        assert!(!st.lose(), "once");
        let mut never = State::default();
        assert!(!never.lose(), "an application never started is never told");
        assert!(!never.begin_close(), "lost counts as closing");
    }

    #[test]
    fn reading_pauses_and_resumes_only_while_open() {
        let mut st = started();
        assert!(st.app_reads() && st.is_reading());
        assert!(st.pause_app());
        assert!(!st.pause_app());
        assert!(!st.app_reads() && !st.is_reading());
        assert!(st.resume_app());
        assert!(!st.resume_app());
        assert!(st.pause_app());
        st.begin_close();
        assert!(!st.resume_app(), "no resume while closing");
        assert!(!st.is_reading());
        let fresh = State::default();
        assert!(!fresh.app_reads(), "not before the application is started");
        assert!(fresh.is_reading(), "is_reading() is true before the handshake, as asyncio's");
    }

    #[test]
    fn eof_is_due_once_after_the_peers_close_notify_and_pending_data() {
        let mut st = started();
        assert!(!st.eof_due(true));
        st.peer_closed = true;
        assert!(!st.eof_due(false), "plaintext still pending");
        st.pause_app();
        assert!(!st.eof_due(true), "paused");
        st.resume_app();
        assert!(st.eof_due(true));
        assert!(st.deliver_eof(), "told while open");
        assert!(!st.eof_due(true), "once");
        let mut closing = started();
        closing.peer_closed = true;
        closing.begin_close();
        assert!(closing.eof_due(true));
        assert!(!closing.deliver_eof(), "not told while closing");
        closing.lose();
        assert!(!closing.eof_due(true));
    }

    #[test]
    fn shutdown_and_pump_are_scheduled_once() {
        let mut st = State::default();
        assert!(st.send_shutdown());
        assert!(!st.send_shutdown());
        assert!(st.schedule_pump());
        assert!(!st.schedule_pump());
        st.pump_ran();
        assert!(st.schedule_pump());
    }

    #[test]
    fn writes_after_close_are_dropped_and_logged_from_the_fifth() {
        let mut st = started();
        assert_eq!(st.refuse_write(), None);
        st.begin_close();
        let logs: Vec<bool> = (0..7).map(|_| st.refuse_write().expect("refused")).collect();
        assert_eq!(logs, [false, false, false, false, true, true, true]);
    }
}
