//! The way to `connection_lost`: what the stream, datagram and TLS
//! transports share when they close.
//!
//! - [`Lifecycle`]: asyncio's `_closing` and `_conn_lost` of the stream and
//!   datagram transports, and their paused and scheduled reading, with the
//!   transitions of `close`, `abort`, `connection_lost`, a finalizer's close,
//!   a write after the connection was lost, `pause_reading` and
//!   `resume_reading`;
//! - [`count_dropped_write`]: when a dropped write is logged (asyncio's
//!   `LOG_THRESHOLD_FOR_CONNLOST_WRITES`), for the counters kept apart from
//!   `_conn_lost` (a closing write pipe, TLS);
//! - [`Teardown`]: on top of [`SlotHost`], asyncio's `_fatal_error` and the
//!   abort that follows a panicking protocol method (stream, datagram, TLS);
//! - [`LifecycleHost`]: `connection_lost` and a read from the ready queue
//!   (stream, datagram).
//!
//! As with the slot, everything is static dispatch: the transitions are
//! plain field updates inside the transport's own state borrow.

use std::cell::RefMut;
use std::rc::Rc;

use crate::error::Error;
use crate::event_loop::ExceptionContext;
use crate::transport::core::slot::SlotHost;

/// After this many writes dropped because the connection is lost (or
/// closing, for a write pipe and TLS), each further one is logged
/// (asyncio's `LOG_THRESHOLD_FOR_CONNLOST_WRITES`).
pub(crate) const CONNLOST_WRITE_LOG_THRESHOLD: u32 = 5;

/// The warning logged for a dropped write on a socket.
pub(crate) const SOCKET_SEND_WARNING: &str = "socket.send() raised exception.";

/// Count one more dropped write in `dropped` (the writes dropped so far);
/// true when it is to be logged: from the
/// [`CONNLOST_WRITE_LOG_THRESHOLD`]-th on.
#[inline]
pub(crate) fn count_dropped_write(dropped: &mut u32) -> bool {
    *dropped += 1;
    *dropped >= CONNLOST_WRITE_LOG_THRESHOLD
}

/// Where a stream or datagram transport is on its way to `connection_lost`.
#[derive(Default)]
pub(crate) struct Lifecycle {
    /// `connection_made` was delivered.
    pub(crate) started: bool,
    /// `close`/`abort` was called, or the connection was lost.
    pub(crate) closing: bool,
    /// asyncio's `_conn_lost`: >0 once `connection_lost` is scheduled;
    /// counts writes dropped after that.
    pub(crate) conn_lost: u32,
    /// `connection_lost` was delivered.
    pub(crate) lost: bool,
    /// `pause_reading` was called (and no `resume_reading` since).
    pub(crate) read_paused: bool,
    /// A read attempt is queued on the ready queue.
    pub(crate) read_scheduled: bool,
}

impl Lifecycle {
    /// `close()`, with `flushed` telling whether nothing is queued. False
    /// if already closing; else closing from now on, and true when
    /// `connection_lost` is due at once (it then counts as scheduled).
    #[inline]
    pub(crate) fn close(&mut self, flushed: bool) -> bool {
        if self.closing {
            return false;
        }
        self.closing = true;
        if flushed {
            self.conn_lost += 1;
        }
        flushed
    }

    /// `abort()`: false once `connection_lost` is scheduled; else closing,
    /// `connection_lost` counts as scheduled, and the caller drops its queue
    /// and schedules it.
    #[inline]
    pub(crate) fn abort(&mut self) -> bool {
        if self.conn_lost > 0 {
            return false;
        }
        self.closing = true;
        self.conn_lost += 1;
        true
    }

    /// `connection_lost` is being delivered: `None` if it already was; else
    /// lost (and closing) from now on, and whether `connection_made` was
    /// delivered (only then does the protocol hear of the loss).
    #[inline]
    pub(crate) fn lose(&mut self) -> Option<bool> {
        if self.lost {
            return None;
        }
        self.lost = true;
        self.closing = true;
        Some(self.started)
    }

    /// The socket closes without `connection_lost` (a finalizer's
    /// `close_socket`): closing, lost, and nothing scheduled any more.
    pub(crate) fn close_silently(&mut self) {
        self.closing = true;
        self.lost = true;
        self.conn_lost = self.conn_lost.max(1);
    }

    /// `pause_reading()`: paused unless closing.
    pub(crate) fn pause_reading(&mut self) {
        if !self.closing {
            self.read_paused = true;
        }
    }

    /// `resume_reading()`: true if reading was paused (and not closing) and
    /// resumes now.
    pub(crate) fn resume_reading(&mut self) -> bool {
        if self.closing || !self.read_paused {
            return false;
        }
        self.read_paused = false;
        true
    }

    /// Neither paused nor closing.
    pub(crate) fn is_reading(&self) -> bool {
        !self.read_paused && !self.closing
    }

    /// A write: `None` if `connection_lost` is not scheduled (the write goes
    /// on). Else it is dropped and counted; `Some(true)` when it is to be
    /// logged: from the [`CONNLOST_WRITE_LOG_THRESHOLD`]-th dropped write on.
    #[inline(always)]
    pub(crate) fn drop_write(&mut self) -> Option<bool> {
        if self.conn_lost == 0 {
            return None;
        }
        // `conn_lost` is one more than the writes dropped so far.
        self.conn_lost += 1;
        Some(self.conn_lost > CONNLOST_WRITE_LOG_THRESHOLD)
    }
}

/// A connection transport's way out, on top of its [`SlotHost`] calls.
///
/// Implementors supply the abort with an error; the provided methods are
/// asyncio's `_fatal_error` and the reaction to a panicking protocol method.
pub(crate) trait Teardown: SlotHost + 'static {
    /// Close at once because of `err`, without reporting it: the protocol
    /// receives `connection_lost(Some(err))`.
    fn abort_with_error(self: &Rc<Self>, err: Error);

    /// Close at once because of `err`: the loop's exception handler hears
    /// of it with `message` (unless it is an OS error, which asyncio only
    /// logs in debug mode), then [`Teardown::abort_with_error`].
    fn fatal_error(self: &Rc<Self>, err: Error, message: &str) {
        if !matches!(err, Error::Io(_)) {
            self.event_loop()
                .call_exception_handler(ExceptionContext { message: message.to_string(), error: Some(err.clone()) });
        }
        self.abort_with_error(err);
    }

    /// Protocol method `what` panicked with `msg`: a fatal error, which
    /// aborts the connection (for [`SlotHost::protocol_panicked`]).
    fn abort_on_panic(self: &Rc<Self>, what: &str, msg: String) {
        self.fatal_error(Error::Panic(msg), &format!("Fatal error: protocol.{what}() call failed."));
    }
}

/// A transport whose state holds a [`Lifecycle`] and that reads its socket
/// and delivers `connection_lost` itself (stream, datagram).
pub(crate) trait LifecycleHost: Teardown {
    /// The transport's [`Lifecycle`] (borrowed from its state).
    fn life(&self) -> RefMut<'_, Lifecycle>;

    /// Nothing is queued for sending.
    fn is_flushed(&self) -> bool;

    /// Deliver `connection_lost(err)` now, unless it was, and let go of the
    /// socket and the protocol.
    fn call_connection_lost(self: &Rc<Self>, err: Option<Error>);

    /// Read and deliver what the socket has (up to the per-event budget).
    fn do_read(self: &Rc<Self>);

    /// `close()`: stop reading; `connection_lost(None)` follows once the
    /// queue is sent (from the ready queue if it is empty now).
    fn close(self: &Rc<Self>) {
        let flushed = self.is_flushed();
        let lost_now = self.life().close(flushed);
        if lost_now {
            self.schedule_connection_lost(None);
        }
    }

    /// [`LifecycleHost::call_connection_lost`] from the ready queue.
    fn schedule_connection_lost(self: &Rc<Self>, err: Option<Error>) {
        let me = self.clone();
        self.event_loop().schedule(Box::new(move || me.call_connection_lost(err)));
    }

    /// [`LifecycleHost::do_read`] from the ready queue (once, until it ran;
    /// never while closing).
    fn schedule_read(self: &Rc<Self>) {
        {
            let mut life = self.life();
            if life.read_scheduled || life.closing {
                return;
            }
            life.read_scheduled = true;
        }
        let me = self.clone();
        self.event_loop().schedule(Box::new(move || {
            me.life().read_scheduled = false;
            me.do_read();
        }));
    }
}
