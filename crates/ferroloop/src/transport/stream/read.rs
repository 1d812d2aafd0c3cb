//! The stream transport's read path: on readiness, read into the loop's
//! shared buffer (or the protocol's, for a buffered protocol) until the
//! socket is drained (a short read counts as drained) and deliver each
//! chunk at once, so that `pause_reading` inside `data_received` stops
//! delivery immediately. EOF is sticky.

use std::io;
use std::rc::Rc;

use crate::error::Error;
use crate::event_loop::READ_BUFFER_SIZE;
use crate::transport::core::lifecycle::{LifecycleHost, Teardown};
use crate::transport::core::slot::SlotHost;
use crate::transport::stream::StreamInner;
use crate::transport::TransportKind;

/// Reads per readiness event before yielding to other sources.
const READS_PER_EVENT: usize = 32;

impl StreamInner {
    fn can_read(&self) -> bool {
        let st = self.st.borrow();
        st.life.started && !st.life.closing && !st.life.read_paused && !st.read_eof
    }
    fn read_once(self: &Rc<Self>) -> ReadOutcome {
        if self.buffered.get() == Some(false) {
            return self.read_plain();
        }
        // A buffered protocol reads into its own buffer.
        let epoch = self.protocol_epoch.get();
        let buffered = self.with_protocol("get_buffer", |p| -> Option<ReadOutcome> {
            let buf = p.get_buffer(READ_BUFFER_SIZE)?;
            if buf.is_empty() {
                return Some(ReadOutcome::EmptyBuffer);
            }
            let cap = buf.len();
            let r = self.sock_read(buf);
            Some(match r {
                Ok(0) => {
                    p.buffer_unused();
                    ReadOutcome::Eof
                }
                Ok(n) => {
                    p.buffer_updated(n);
                    ReadOutcome::Data { drained: n < cap }
                }
                Err(e) => {
                    p.buffer_unused();
                    ReadOutcome::from_err(e)
                }
            })
        });
        match buffered {
            None => ReadOutcome::Failed,
            Some(Some(ReadOutcome::EmptyBuffer)) => {
                if self.st.borrow().life.closing {
                    // The protocol failed in get_buffer and closed the transport itself.
                    return ReadOutcome::Failed;
                }
                self.fatal_error(
                    Error::state("get_buffer() returned an empty buffer"),
                    "Fatal error: protocol.get_buffer() call failed.",
                );
                ReadOutcome::Failed
            }
            Some(Some(outcome)) => outcome,
            Some(None) => {
                // A plain protocol: remembered until `set_protocol` (unless
                // the protocol was replaced inside `get_buffer`).
                if self.protocol_epoch.get() == epoch {
                    self.buffered.set(Some(false));
                }
                self.read_plain()
            }
        }
    }
    /// A plain protocol's read: into the loop's buffer, then `data_received`,
    /// in one guarded call of the protocol (nothing is read while the
    /// protocol is busy or gone, so no bytes can be lost).
    fn read_plain(self: &Rc<Self>) -> ReadOutcome {
        let mut rb = self.lp.take_read_buf();
        let buf = rb.bytes();
        let outcome = self.with_protocol("data_received", |p| match self.sock_read(buf) {
            Ok(0) => ReadOutcome::Eof,
            Ok(n) => {
                p.data_received(&buf[..n]);
                ReadOutcome::Data { drained: n < buf.len() }
            }
            Err(e) => ReadOutcome::from_err(e),
        });
        self.lp.put_read_buf(rb);
        outcome.unwrap_or(ReadOutcome::Failed)
    }
    fn sock_read(&self, buf: &mut [u8]) -> io::Result<usize> {
        loop {
            let sock = self.sock.borrow();
            let Some(s) = sock.as_ref() else { return Err(io::ErrorKind::WouldBlock.into()) };
            match s.read(buf) {
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                r => return r,
            }
        }
    }
    fn on_eof(self: &Rc<Self>) {
        if self.kind == TransportKind::ReadPipe {
            // asyncio's read pipe: eof_received (whatever it returns), then close.
            {
                let mut st = self.st.borrow_mut();
                st.read_eof = true;
                if !st.life.abort() {
                    return;
                }
            }
            self.with_protocol("eof_received", |p| {
                p.eof_received();
            });
            self.schedule_connection_lost(None);
            return;
        }
        self.st.borrow_mut().read_eof = true;
        match self.with_protocol("eof_received", |p| p.eof_received()) {
            Some(true) => {}
            Some(false) => LifecycleHost::close(self),
            None => {}
        }
    }
    /// Read and deliver until drained (or the per-event budget is used).
    pub(super) fn read_ready(self: &Rc<Self>) {
        for _ in 0..READS_PER_EVENT {
            if !self.can_read() {
                return;
            }
            match self.read_once() {
                ReadOutcome::Data { drained } => {
                    if drained {
                        if self.st.borrow().read_hup {
                            // The peer's EOF sits behind this data. As in asyncio
                            // (one recv per readiness callback), it is read in the
                            // next iteration: re-arm, since no new edge will come.
                            self.rearm();
                        }
                        return;
                    }
                }
                ReadOutcome::Eof => {
                    self.on_eof();
                    return;
                }
                ReadOutcome::WouldBlock | ReadOutcome::Failed | ReadOutcome::EmptyBuffer => return,
                ReadOutcome::Error(e) => {
                    let msg = format!("Fatal read error on {} transport", self.kind.noun());
                    self.fatal_error(Error::Io(e), &msg);
                    return;
                }
            }
        }
        // Budget used up with data still coming: continue next iteration.
        self.schedule_read();
    }
}

enum ReadOutcome {
    Data { drained: bool },
    Eof,
    WouldBlock,
    /// The protocol failed (the transport is already closing).
    Failed,
    EmptyBuffer,
    Error(io::Error),
}

impl ReadOutcome {
    fn from_err(e: io::Error) -> Self {
        if e.kind() == io::ErrorKind::WouldBlock {
            ReadOutcome::WouldBlock
        } else {
            ReadOutcome::Error(e)
        }
    }
}
