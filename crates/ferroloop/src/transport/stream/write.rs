//! The stream transport's write path: write at once when nothing is
//! queued, queue only the remainder, drain the queue with `writev` on
//! writability; `write_eof` shuts the write side down once flushed.

use std::io::{self, IoSlice};
use std::rc::Rc;

use crate::error::{Error, Result};
use crate::transport::core::lifecycle::{count_dropped_write, LifecycleHost, Teardown, SOCKET_SEND_WARNING};
use crate::transport::core::slot::FlowHost;
use crate::transport::fd::SockWriter;
use crate::transport::stream::StreamInner;
use crate::transport::TransportKind;

/// The warning logged for a dropped write on a pipe.
const PIPE_WRITE_WARNING: &str = "pipe closed by peer or os.write(pipe, data) raised exception.";

/// What a write has to tell once its bytes are read (see `send_or_queue`).
pub(super) enum AfterWrite {
    /// All sent, or nothing to do.
    Nothing,
    /// A write dropped after the connection was lost or the pipe closed: log this.
    Warn(&'static str),
    /// Bytes were queued: check the high-water mark.
    Queued,
    /// The send failed: a fatal error of the transport.
    Failed(io::Error),
}

impl StreamInner {
    pub(super) fn write_bytes(self: &Rc<Self>, data: &[u8], owned: Option<Vec<u8>>) -> Result<()> {
        let after = self.send_or_queue(data, owned)?;
        self.after_write(after);
        Ok(())
    }
    /// The part of `write` that reads `data`: send it at once when nothing is
    /// queued, queue (a copy of) what is left. Runs no callback and calls no
    /// protocol method, so that bytes lent for a moment (see
    /// [`Transport::write_lent`]) are read only here; what has to be told
    /// afterwards is returned.
    #[inline]
    pub(super) fn send_or_queue(&self, data: &[u8], owned: Option<Vec<u8>>) -> Result<AfterWrite> {
        let data: &[u8] = match &owned {
            Some(v) => v,
            None => data,
        };
        {
            let mut st = self.st.borrow_mut();
            if st.eof {
                return Err(Error::state("Cannot call write() after write_eof()"));
            }
            if self.kind == TransportKind::ReadPipe {
                return Err(Error::state("write() is not supported on a read pipe transport"));
            }
            if data.is_empty() {
                return Ok(AfterWrite::Nothing);
            }
            if self.kind.is_pipe() && st.life.closing && st.life.conn_lost == 0 {
                // asyncio's write pipe drops writes once closing (close/write_eof).
                return Ok(if count_dropped_write(&mut st.dropped_writes) {
                    AfterWrite::Warn(PIPE_WRITE_WARNING)
                } else {
                    AfterWrite::Nothing
                });
            }
            if let Some(log) = st.life.drop_write() {
                return Ok(match log {
                    true if self.kind.is_pipe() => AfterWrite::Warn(PIPE_WRITE_WARNING),
                    true => AfterWrite::Warn(SOCKET_SEND_WARNING),
                    false => AfterWrite::Nothing,
                });
            }
            if !st.buf.is_empty() {
                match owned {
                    Some(v) => st.buf.push_owned(v),
                    None => st.buf.push(data),
                }
                return Ok(AfterWrite::Queued);
            }
        }
        // Nothing queued: try to send at once.
        let sent = {
            let sock = self.sock.borrow();
            match sock.as_ref() {
                Some(s) => write_retrying(|| s.write(data)),
                None => Ok(0),
            }
        };
        match sent {
            Ok(n) if n == data.len() => return Ok(AfterWrite::Nothing),
            Ok(n) => self.st.borrow_mut().buf.push(&data[n..]),
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                let mut st = self.st.borrow_mut();
                match owned {
                    Some(v) => st.buf.push_owned(v),
                    None => st.buf.push(data),
                }
            }
            Err(e) => return Ok(AfterWrite::Failed(e)),
        }
        Ok(AfterWrite::Queued)
    }
    /// What `send_or_queue` left to tell: a dropped-write warning, the
    /// protocol's `pause_writing`, or a fatal write error.
    #[inline]
    pub(super) fn after_write(self: &Rc<Self>, after: AfterWrite) {
        match after {
            AfterWrite::Nothing => {}
            AfterWrite::Warn(message) => self.lp.warn(message),
            AfterWrite::Queued => self.maybe_pause(),
            AfterWrite::Failed(e) => {
                let msg = format!("Fatal write error on {} transport", self.kind.noun());
                self.fatal_error(Error::Io(e), &msg);
            }
        }
    }
    pub(super) fn write_chunks<'a, I: IntoIterator<Item = &'a [u8]>>(self: &Rc<Self>, chunks: I) -> Result<()> {
        let chunks: Vec<&[u8]> = chunks.into_iter().filter(|c| !c.is_empty()).collect();
        {
            let st = self.st.borrow();
            if st.eof {
                return Err(Error::state("Cannot call write() after write_eof()"));
            }
            if self.kind == TransportKind::ReadPipe {
                return Err(Error::state("write() is not supported on a read pipe transport"));
            }
            if chunks.is_empty() {
                return Ok(());
            }
            if st.life.conn_lost > 0 || st.life.closing || !st.buf.is_empty() || chunks.len() == 1 {
                drop(st);
                for c in chunks {
                    self.write_bytes(c, None)?;
                }
                return Ok(());
            }
        }
        // Nothing queued: vectored writes of at most 1024 buffers (IOV_MAX)
        // each until one is short, then queue what is left. Stopping after a
        // full first group would strand the rest: no writable edge follows
        // a write that was not short.
        let sent = {
            let sock = self.sock.borrow();
            match sock.as_ref() {
                Some(s) => {
                    let mut total = 0usize;
                    let mut failed = None;
                    for group in chunks.chunks(1024) {
                        let iov: Vec<IoSlice<'_>> = group.iter().map(|c| IoSlice::new(c)).collect();
                        let offered: usize = group.iter().map(|c| c.len()).sum();
                        match write_retrying(|| s.write_vectored(&iov)) {
                            Ok(n) => {
                                total += n;
                                if n < offered {
                                    break;
                                }
                            }
                            Err(e) if e.kind() == io::ErrorKind::WouldBlock => break,
                            Err(e) => {
                                failed = Some(e);
                                break;
                            }
                        }
                    }
                    match failed {
                        Some(e) => Err(e),
                        None => Ok(total),
                    }
                }
                None => Ok(0),
            }
        };
        let mut skip = match sent {
            Ok(n) => n,
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => 0,
            Err(e) => {
                let msg = format!("Fatal write error on {} transport", self.kind.noun());
                self.fatal_error(Error::Io(e), &msg);
                return Ok(());
            }
        };
        {
            let mut st = self.st.borrow_mut();
            for c in chunks {
                if skip >= c.len() {
                    skip -= c.len();
                } else {
                    st.buf.push(&c[skip..]);
                    skip = 0;
                }
            }
        }
        self.maybe_pause();
        Ok(())
    }
    /// Drain the write buffer as far as the socket takes it.
    pub(super) fn do_write(self: &Rc<Self>) {
        let mut progressed = false;
        loop {
            let r = {
                let mut st = self.st.borrow_mut();
                if st.buf.is_empty() {
                    break;
                }
                let sock = self.sock.borrow();
                let Some(s) = sock.as_ref() else { break };
                st.buf.write_to(SockWriter(s))
            };
            match r {
                Ok((written, offered)) => {
                    progressed = true;
                    if written < offered {
                        // Short write: the socket buffer is full; wait for the next edge.
                        break;
                    }
                }
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => break,
                Err(e) => {
                    let msg = format!("Fatal write error on {} transport", self.kind.noun());
                    self.fatal_error(Error::Io(e), &msg);
                    return;
                }
            }
        }
        if !progressed {
            return;
        }
        self.maybe_resume();
        let (empty, closing, eof, shut_wr, conn_lost) = {
            let st = self.st.borrow();
            (st.buf.is_empty(), st.life.closing, st.eof, st.shut_wr, st.life.conn_lost)
        };
        if !empty {
            return;
        }
        let drained = self.take_rare(|r| r.on_drained.take());
        if let Some(f) = drained {
            f(Ok(()));
        }
        if closing {
            if conn_lost == 0 {
                self.st.borrow_mut().life.conn_lost = 1;
                self.call_connection_lost(None);
            }
        } else if eof && !shut_wr {
            self.shutdown_write();
        }
    }
    fn shutdown_write(self: &Rc<Self>) {
        self.st.borrow_mut().shut_wr = true;
        let r = self.sock.borrow().as_ref().map(|s| s.shutdown_write());
        if let Some(Err(e)) = r {
            if e.kind() != io::ErrorKind::NotConnected {
                self.fatal_error(Error::Io(e), "Fatal error on shutdown of the write side");
            }
        }
    }
    pub(super) fn start_write_eof(self: &Rc<Self>) -> Result<()> {
        match self.kind {
            TransportKind::Stream => {}
            // A pipe has no half-close: its write_eof closes it (asyncio).
            TransportKind::WritePipe => {
                LifecycleHost::close(self);
                return Ok(());
            }
            TransportKind::ReadPipe => return Err(Error::state("write_eof() is not supported on a read pipe transport")),
        }
        let now = {
            let mut st = self.st.borrow_mut();
            if st.life.closing || st.eof {
                return Ok(());
            }
            st.eof = true;
            st.buf.is_empty()
        };
        if now {
            self.shutdown_write();
        }
        Ok(())
    }
}

#[inline(always)]
fn write_retrying(mut f: impl FnMut() -> io::Result<usize>) -> io::Result<usize> {
    loop {
        match f() {
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            r => return r,
        }
    }
}
