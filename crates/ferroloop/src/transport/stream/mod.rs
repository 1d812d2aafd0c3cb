//! The stream transport: one implementation for TCP and Unix stream sockets.
//!
//! Read path: on readiness, read into the loop's shared buffer (or the
//! protocol's, for a buffered protocol) until the socket is drained — a short
//! read counts as drained — and deliver each chunk at once, so that
//! `pause_reading` inside `data_received` stops delivery immediately. EOF is
//! sticky. Write path: write at once when nothing is queued, queue only the
//! remainder, drain the queue with `writev` on writability (see `read.rs`
//! and `write.rs`).

mod read;
mod write;

use std::cell::{Cell, RefCell, RefMut};
use std::io;
use std::os::fd::RawFd;
use std::rc::Rc;

use crate::error::{Error, Result};
use crate::event_loop::{EventLoop, IoSource, Readiness, Registration};
use crate::flow::WriteFlow;
use crate::protocol::{Protocol, ProtocolRef};
use crate::transport::core::buffer::WriteBuffer;
use crate::transport::core::lifecycle::{Lifecycle, LifecycleHost, Teardown};
use crate::transport::core::slot::{deliver_flow_note, FlowHost, FlowNote, PauseHook, ProtocolSlot, SlotHost};
use crate::transport::fd::{Held, Sock};
use crate::transport::registry::{Entry, WeakTransport};
use crate::transport::{Address, ExtraInfo, LentBytes, Transport, TransportKind, TransportOps};


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

    #[inline]
    fn do_read(self: &Rc<Self>) {
        self.read_ready()
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
