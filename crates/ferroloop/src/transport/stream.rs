//! The stream transport: one implementation for TCP and Unix stream sockets.
//!
//! Read path: on readiness, read into the loop's shared buffer (or the
//! protocol's, for a buffered protocol) until the socket is drained — a short
//! read counts as drained — and deliver each chunk at once, so that
//! `pause_reading` inside `data_received` stops delivery immediately. EOF is
//! sticky. Write path: write at once when nothing is queued, queue only the
//! remainder, drain the queue with `writev` on writability.

use std::cell::{Cell, RefCell, RefMut};
use std::io::{self, IoSlice};
use std::os::fd::RawFd;
use std::rc::Rc;

use crate::error::{Error, Result};
use crate::event_loop::{EventLoop, IoSource, Readiness, READ_BUFFER_SIZE};
use crate::flow::WriteFlow;
use crate::protocol::{Protocol, ProtocolRef};
use crate::transport::core::buffer::WriteBuffer;
use crate::transport::core::lifecycle::{count_dropped_write, Lifecycle, LifecycleHost, Teardown, SOCKET_SEND_WARNING};
use crate::transport::core::slot::{deliver_flow_note, FlowHost, FlowNote, PauseHook, ProtocolSlot, SlotHost};
use crate::transport::fd::{Held, Registration, Sock, SockWriter};
use crate::transport::registry::{Entry, WeakTransport};
use crate::transport::{Address, ExtraInfo, LentBytes, Transport, TransportKind, TransportOps};

/// Reads per readiness event before yielding to other sources.
const READS_PER_EVENT: usize = 32;
/// The warning logged for a dropped write on a pipe.
const PIPE_WRITE_WARNING: &str = "pipe closed by peer or os.write(pipe, data) raised exception.";

/// What a write has to tell once its bytes are read (see `send_or_queue`).
enum AfterWrite {
    /// All sent, or nothing to do.
    Nothing,
    /// A write dropped after the connection was lost or the pipe closed: log this.
    Warn(&'static str),
    /// Bytes were queued: check the high-water mark.
    Queued,
    /// The send failed: a fatal error of the transport.
    Failed(io::Error),
}

#[derive(Default)]
struct State {
    /// Closing and `connection_lost` (see `transport::core::lifecycle`).
    life: Lifecycle,
    /// Writes dropped because a write pipe was closing (asyncio counts them
    /// with `_conn_lost`; here `life.conn_lost` keeps meaning "lost is scheduled").
    dropped_writes: u32,
    /// `write_eof` was called.
    eof: bool,
    /// The write side is shut down.
    shut_wr: bool,
    /// The peer's EOF was seen (sticky).
    read_eof: bool,
    /// The poll reported the read side closed (or an error). Sticky: from
    /// then on a short read does not mean drained, since mio is
    /// edge-triggered and no further edge announces the EOF that may sit
    /// behind the data (data and FIN arriving together).
    read_hup: bool,
    buf: WriteBuffer,
    flow: WriteFlow,
}

pub(crate) struct StreamInner {
    lp: EventLoop,
    /// Stream socket or pipe (see `transport::pipe`).
    kind: TransportKind,
    /// A write pipe on a FIFO or socket: readability means the reader left.
    watch_peer: bool,
    /// Owned, or borrowed (`StreamSocket::borrow_raw`: never closed here);
    /// `None` once let go of.
    sock: RefCell<Option<Held<Sock>>>,
    fd: RawFd,
    /// False for a borrowed descriptor.
    owns_fd: bool,
    /// The socket's place in the poll.
    reg: Registration,
    st: RefCell<State>,
    /// The protocol, and its notes (see `transport::core::slot`).
    slot: ProtocolSlot<dyn Protocol, FlowNote>,
    /// Whether the current protocol is a buffered one, as its first
    /// `get_buffer` answer said (`None`: not asked yet). A plain protocol's
    /// `get_buffer` is not called again until `set_protocol` replaces it.
    buffered: Cell<Option<bool>>,
    /// Bumped by `set_protocol`: an answer of a replaced protocol is not cached.
    protocol_epoch: Cell<u32>,
    /// The server's entry for this connection (see `transport::registry`).
    entry: RefCell<Option<Entry>>,
    /// The peer's and the socket's own address, captured when the transport
    /// was made, if it owns its descriptor; a borrowed descriptor's owner
    /// keeps its own (the Python face does), and they are read from the
    /// socket when asked (`StreamInner::addresses`).
    addrs: Option<Box<(Option<Address>, Option<Address>)>>,
    /// What few transports use, boxed once needed (see `Rare`).
    rare: RefCell<Option<Box<Rare>>>,
    /// Told of `pause_writing` at once instead of the protocol (see `PauseHook`).
    pause_hook: RefCell<Option<Rc<dyn PauseHook>>>,
}

/// The parts of a stream transport that few transports use: boxed when
/// first set, so that an idle connection does not carry them.
#[derive(Default)]
struct Rare {
    /// Called right after `connection_made` (a TLS transport's handshake).
    on_made: Option<Box<dyn FnOnce(Result<Transport>)>>,
    /// Called once the write buffer is empty (or the connection is lost).
    on_drained: Option<Box<dyn FnOnce(Result<()>)>>,
}

impl StreamInner {
    /// Wrap a connected socket or pipe: `connection_made` is delivered from
    /// the ready queue, then reading starts; `on_made` runs right after
    /// `connection_made`; `entry` is told when the transport lets go of its
    /// socket. A borrowed `sock` is never closed, on any path.
    pub(crate) fn spawn(
        lp: &EventLoop,
        mut sock: Held<Sock>,
        kind: TransportKind,
        protocol: ProtocolRef,
        entry: Option<Entry>,
        on_made: Option<Box<dyn FnOnce(Result<Transport>)>>,
    ) -> Result<Transport> {
        lp.check_closed()?;
        let interest = kind.interest(&sock);
        let watch_peer = kind.watches_peer(&sock);
        let fd = sock.fd();
        let owns_fd = sock.is_owned();
        let addrs = owns_fd.then(|| Box::new((sock.peer(), sock.local())));
        let inner = Rc::new(StreamInner {
            lp: lp.clone(),
            kind,
            watch_peer,
            sock: RefCell::new(None),
            fd,
            owns_fd,
            reg: Registration::new(),
            st: RefCell::new(State::default()),
            slot: ProtocolSlot::new(Some(protocol)),
            buffered: Cell::new(None),
            protocol_epoch: Cell::new(0),
            entry: RefCell::new(entry),
            addrs,
            rare: RefCell::new(on_made.map(|f| Box::new(Rare { on_made: Some(f), ..Rare::default() }))),
            pause_hook: RefCell::new(None),
        });
        // Both interests at once: mio is edge-triggered, so a writable edge
        // only arrives after the socket buffer was full.
        inner.reg.register(lp, sock.source(), interest, inner.clone())?;
        *inner.sock.borrow_mut() = Some(sock);
        let me = inner.clone();
        lp.schedule(Box::new(move || me.deliver_connection_made()));
        Ok(Transport::from_stream(inner))
    }

    /// The connection is now seen through `t` (a TLS layer over this one):
    /// the server's entry, if any, lists that instead.
    pub(crate) fn replace_entry(&self, t: WeakTransport) {
        if let Some(e) = self.entry.borrow().as_ref() {
            e.replace(t);
        }
    }
}

impl TransportOps for StreamInner {
    fn get_loop(&self) -> EventLoop {
        self.lp.clone()
    }

    fn close(self: &Rc<Self>) {
        LifecycleHost::close(self)
    }

    fn is_closing(&self) -> bool {
        self.st.borrow().life.closing
    }

    fn is_lost(&self) -> bool {
        self.st.borrow().life.lost
    }

    fn abort(self: &Rc<Self>) {
        self.force_close(None)
    }

    fn close_socket(self: &Rc<Self>) {
        self.st.borrow_mut().life.close_silently();
        self.release();
    }

    fn write(self: &Rc<Self>, data: &[u8]) -> Result<()> {
        self.write_bytes(data, None)
    }

    fn write_lent<B: LentBytes>(self: &Rc<Self>, data: B) -> Result<()> {
        let after = data.lend(|b| self.send_or_queue(b, None));
        drop(data);
        self.after_write(after?);
        Ok(())
    }

    fn write_owned(self: &Rc<Self>, data: Vec<u8>) -> Result<()> {
        self.write_bytes(&[], Some(data))
    }

    fn writelines<'a, I: IntoIterator<Item = &'a [u8]>>(self: &Rc<Self>, chunks: I) -> Result<()> {
        self.write_chunks(chunks)
    }

    fn write_eof(self: &Rc<Self>) -> Result<()> {
        self.start_write_eof()
    }

    fn can_write_eof(&self) -> bool {
        self.kind != TransportKind::ReadPipe
    }

    fn kind(&self) -> TransportKind {
        self.kind
    }

    fn pause_reading(&self) {
        if self.kind != TransportKind::WritePipe {
            self.life().pause_reading();
        }
    }

    fn resume_reading(self: &Rc<Self>) {
        if self.life().resume_reading() {
            self.rearm();
        }
    }

    fn is_reading(&self) -> bool {
        self.st.borrow().life.is_reading() && self.kind != TransportKind::WritePipe
    }

    fn get_write_buffer_size(&self) -> usize {
        self.st.borrow().buf.len()
    }

    fn get_write_buffer_limits(&self) -> (usize, usize) {
        self.st.borrow().flow.limits()
    }

    fn set_write_buffer_limits_signed(self: &Rc<Self>, high: Option<i64>, low: Option<i64>) -> Result<()> {
        self.set_write_limits(high, low)
    }

    fn is_writing_paused(&self) -> bool {
        self.st.borrow().flow.is_paused()
    }

    fn set_pause_hook(&self, hook: Option<Rc<dyn PauseHook>>) -> bool {
        *self.pause_hook.borrow_mut() = hook;
        true
    }

    fn get_extra_info(&self, name: &str) -> Option<ExtraInfo> {
        if self.kind.is_pipe() {
            return (name == "pipe").then_some(ExtraInfo::Fd(self.fd));
        }
        let (peername, sockname) = self.addresses();
        ExtraInfo::of_socket(name, peername.as_ref(), sockname.as_ref(), || self.socket_fd())
    }

    /// Captured when the transport was made; for a borrowed descriptor,
    /// read from the socket while the transport has it (`None` if the peer
    /// is gone), and `None` once it let go of it, before `connection_lost`.
    fn peername(&self) -> Option<Address> {
        self.addresses().0
    }

    fn sockname(&self) -> Option<Address> {
        self.addresses().1
    }

    fn socket_fd(&self) -> Option<RawFd> {
        self.sock.borrow().as_ref().map(|s| s.fd())
    }

    fn on_drained<F: FnOnce(Result<()>) + 'static>(&self, f: F) {
        if self.st.borrow().buf.is_empty() && !self.is_lost() {
            f(Ok(()));
            return;
        }
        if self.is_lost() {
            f(Err(Error::state("Connection is closed by peer")));
            return;
        }
        // A replaced callback is dropped after the borrow ends: dropping it
        // may run code that uses the transport.
        let old = self.rare_mut().on_drained.replace(Box::new(f));
        drop(old);
    }

    fn set_protocol(&self, protocol: ProtocolRef) {
        let old = self.slot.replace(Some(protocol));
        self.buffered.set(None);
        self.protocol_epoch.set(self.protocol_epoch.get().wrapping_add(1));
        drop(old);
    }

    fn get_protocol(&self) -> Option<ProtocolRef> {
        self.slot.get()
    }
}

impl StreamInner {
    /// The peer's and the socket's own address (see `addrs`).
    fn addresses(&self) -> (Option<Address>, Option<Address>) {
        match &self.addrs {
            Some(a) => (a.0.clone(), a.1.clone()),
            None => match self.sock.borrow().as_ref() {
                Some(s) => (s.peer(), s.local()),
                None => (None, None),
            },
        }
    }

    fn transport(self: &Rc<Self>) -> Transport {
        Transport::from_stream(self.clone())
    }

    fn deliver_connection_made(self: &Rc<Self>) {
        self.st.borrow_mut().life.started = true;
        let t = self.transport();
        let ok = self.with_protocol("connection_made", move |p| p.connection_made(t)).is_some();
        let on_made = self.take_rare(|r| r.on_made.take());
        if let Some(cb) = on_made {
            cb(if ok { Ok(self.transport()) } else { Err(Error::state("connection_made() failed")) });
        }
        // Start reading: readiness seen before connection_made was ignored,
        // so re-arm the registration; the next poll reports what is waiting
        // (asyncio adds its reader right after connection_made, too).
        self.rearm();
    }

    fn can_read(&self) -> bool {
        let st = self.st.borrow();
        st.life.started && !st.life.closing && !st.life.read_paused && !st.read_eof
    }

    /// Ask the poll to report the socket's current readiness again
    /// (`EPOLL_CTL_MOD` re-arms an edge-triggered registration).
    fn rearm(self: &Rc<Self>) {
        let mut sock = self.sock.borrow_mut();
        if let Some(s) = sock.as_mut() {
            // Fails only once the socket is being closed; nothing to re-arm then.
            let interest = self.kind.interest(s);
            let _ = self.reg.rearm(&self.lp, s.source(), interest);
        }
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

    fn write_bytes(self: &Rc<Self>, data: &[u8], owned: Option<Vec<u8>>) -> Result<()> {
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
    fn send_or_queue(&self, data: &[u8], owned: Option<Vec<u8>>) -> Result<AfterWrite> {
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
    fn after_write(self: &Rc<Self>, after: AfterWrite) {
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

    fn write_chunks<'a, I: IntoIterator<Item = &'a [u8]>>(self: &Rc<Self>, chunks: I) -> Result<()> {
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
    fn do_write(self: &Rc<Self>) {
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

    fn start_write_eof(self: &Rc<Self>) -> Result<()> {
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

    /// Close at once (dropping the buffer); `connection_lost(err)` follows.
    pub(crate) fn force_close(self: &Rc<Self>, err: Option<Error>) {
        let dropped = {
            let mut st = self.st.borrow_mut();
            if !st.life.abort() {
                return;
            }
            std::mem::take(&mut st.buf)
        };
        drop(dropped);
        self.schedule_connection_lost(err);
    }

    /// Remove the socket from the poll (once; no I/O follows).
    fn unregister(&self) {
        let mut sock = self.sock.borrow_mut();
        self.reg.deregister(&self.lp, sock.as_mut().map(|s| s.source()));
    }

    /// Close the socket (a borrowed descriptor: only let go of it) and break
    /// the transport<->protocol cycle.
    fn release(self: &Rc<Self>) {
        self.unregister();
        let sock = self.sock.borrow_mut().take();
        drop(sock);
        self.slot.release();
        let hook = self.pause_hook.borrow_mut().take();
        drop(hook);
        self.st.borrow_mut().buf.clear();
        let on_made = self.take_rare(|r| r.on_made.take());
        drop(on_made);
        let drained = self.take_rare(|r| r.on_drained.take());
        if let Some(f) = drained {
            f(Err(Error::state("Connection is closed by peer")));
        }
        let entry = self.entry.borrow_mut().take();
        if let Some(e) = entry {
            e.release();
        }
    }

    /// A write pipe's reader went away (asyncio's `_read_ready` on the
    /// write end): close, with `EPIPE` if data was still queued.
    fn pipe_peer_closed(self: &Rc<Self>) {
        let (started, queued) = {
            let st = self.st.borrow();
            (st.life.started, !st.buf.is_empty())
        };
        if !started {
            // Seen again after connection_made, which re-arms the registration.
            return;
        }
        let err = queued.then(|| Error::Io(io::Error::from_raw_os_error(libc::EPIPE)));
        self.force_close(err);
    }

    /// The rare parts, boxed now if they were not yet.
    fn rare_mut(&self) -> RefMut<'_, Rare> {
        RefMut::map(self.rare.borrow_mut(), |r| &mut **r.get_or_insert_with(Box::default))
    }

    /// Take something out of the rare parts (the borrow ends before the
    /// caller runs what it took).
    fn take_rare<T>(&self, f: impl FnOnce(&mut Rare) -> Option<T>) -> Option<T> {
        self.rare.borrow_mut().as_mut().and_then(|r| f(r))
    }
}

impl SlotHost for StreamInner {
    type Proto = dyn Protocol;
    type Note = FlowNote;

    fn slot(&self) -> &ProtocolSlot<dyn Protocol, FlowNote> {
        &self.slot
    }

    fn event_loop(&self) -> &EventLoop {
        &self.lp
    }

    /// A panicking protocol aborts the connection.
    fn protocol_panicked(self: &Rc<Self>, what: &str, msg: String) {
        self.abort_on_panic(what, msg);
    }

    fn deliver_note(self: &Rc<Self>, note: FlowNote) {
        if !self.st.borrow().life.lost {
            deliver_flow_note(self, note);
        }
    }
}

impl Teardown for StreamInner {
    fn abort_with_error(self: &Rc<Self>, err: Error) {
        self.force_close(Some(err));
    }
}

impl FlowHost for StreamInner {
    fn write_flow(&self) -> (RefMut<'_, WriteFlow>, usize) {
        let st = self.st.borrow_mut();
        let size = st.buf.len();
        (RefMut::map(st, |st| &mut st.flow), size)
    }

    fn pause_hook(&self) -> Option<Rc<dyn PauseHook>> {
        self.pause_hook.borrow().clone()
    }
}

impl LifecycleHost for StreamInner {
    fn is_flushed(&self) -> bool {
        self.st.borrow().buf.is_empty()
    }

    fn life(&self) -> RefMut<'_, Lifecycle> {
        RefMut::map(self.st.borrow_mut(), |st| &mut st.life)
    }

    /// Read and deliver until drained (or the per-event budget is used).
    fn do_read(self: &Rc<Self>) {
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

    fn call_connection_lost(self: &Rc<Self>, err: Option<Error>) {
        let Some(started) = self.life().lose() else { return };
        if !self.owns_fd {
            // The owner may close the descriptor in connection_lost (the
            // Python face's `_finish`), and a descriptor of the same number
            // may be opened and registered there: leave the poll first.
            self.unregister();
        }
        if started {
            // Not `with_protocol`: a panic here must not start another close.
            self.deliver_lost(self.slot.get(), |p| p.connection_lost(err));
        }
        self.release();
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

impl IoSource for StreamInner {
    fn on_loop_close(&self) {
        // Break the transport -> protocol link (a protocol usually holds its
        // transport): the pair can then be freed, and the socket closes when
        // the last handle goes.
        self.slot.release();
        let hook = self.pause_hook.try_borrow_mut().ok().and_then(|mut h| h.take());
        drop(hook);
        let on_made = self.take_rare(|r| r.on_made.take());
        drop(on_made);
        let drained = self.take_rare(|r| r.on_drained.take());
        drop(drained);
    }

    fn on_ready(self: Rc<Self>, _lp: &EventLoop, ready: Readiness) {
        match self.kind {
            TransportKind::Stream => {}
            TransportKind::ReadPipe => {
                if ready.read_closed || ready.error {
                    self.st.borrow_mut().read_hup = true;
                }
                if ready.readable || ready.read_closed || ready.error {
                    self.do_read();
                }
                return;
            }
            TransportKind::WritePipe => {
                if self.watch_peer && (ready.readable || ready.read_closed || ready.error) {
                    self.pipe_peer_closed();
                }
                if ready.writable || ready.write_closed || ready.error {
                    self.do_write();
                }
                return;
            }
        }
        if ready.read_closed || ready.error {
            self.st.borrow_mut().read_hup = true;
        }
        if ready.readable || ready.read_closed || ready.error {
            self.do_read();
        }
        // Nothing queued (the usual case: writes go out at once): nothing to do.
        if (ready.writable || ready.write_closed || ready.error) && !self.st.borrow().buf.is_empty() {
            self.do_write();
        }
    }
}
