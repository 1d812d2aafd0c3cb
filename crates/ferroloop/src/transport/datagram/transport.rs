//! The datagram transport: [`DatagramTransport`] and its state.

use std::cell::{RefCell, RefMut};
use std::collections::VecDeque;
use std::fmt;
use std::io;
use std::net::SocketAddr;
use std::os::fd::RawFd;
use std::rc::Rc;

use mio::Interest;
use socket2::SockAddr;

use crate::error::{Error, Result};
use crate::event_loop::{EventLoop, IoSource, Readiness, Registration};
use crate::flow::WriteFlow;
use crate::sys;
use crate::transport::core::lifecycle::{Lifecycle, LifecycleHost, Teardown, SOCKET_SEND_WARNING};
use crate::transport::core::slot::{FlowHost, FlowNote, ProtocolSlot, SlotHost};
use crate::transport::{Address, ExtraInfo};

use super::sock::{put_batch_buf, take_batch_buf, DSock, BATCH_SLOT};
use super::{DatagramProtocol, DatagramProtocolRef, READS_PER_EVENT};

/// A notification that could not be delivered at once because the protocol
/// was busy in one of its own methods.
pub(crate) enum Note {
    PauseWriting,
    ResumeWriting,
    ErrorReceived(Error),
}

#[derive(Default)]
struct State {
    /// Closing and `connection_lost` (see `transport::core::lifecycle`); its
    /// `conn_lost` counts sends dropped after `connection_lost` is scheduled.
    life: Lifecycle,
    /// Datagrams waiting for writability, with their destination (`None`:
    /// the connected peer).
    queue: VecDeque<Queued>,
    /// Payload bytes in `queue`, plus `header` for each datagram there
    /// (asyncio's `_buffer_size`).
    queued: usize,
    /// Bytes counted per queued datagram besides its payload: 0, or 8 as
    /// Python 3.13's asyncio counts (see `set_queued_header_size`).
    header: usize,
    /// Datagrams received in a batch but not delivered because reading was
    /// paused meanwhile; delivered first when reading resumes.
    pending: VecDeque<(Vec<u8>, Address)>,
    flow: WriteFlow,
}

type Queued = (Vec<u8>, Option<Address>);

impl State {
    /// What one queued datagram counts in `queued`.
    fn size_of(&self, item: &Queued) -> usize {
        item.0.len() + self.header
    }

    /// Queue a datagram at the back (`front`: at the front, after a send
    /// that would block), counting it.
    fn enqueue(&mut self, item: Queued, front: bool) {
        self.queued += self.size_of(&item);
        if front {
            self.queue.push_front(item);
        } else {
            self.queue.push_back(item);
        }
    }

    /// Take the front datagram off the queue and its count.
    fn dequeue(&mut self) -> Option<Queued> {
        let item = self.queue.pop_front()?;
        self.queued -= self.size_of(&item);
        Some(item)
    }
}

/// Runs right after `connection_made` (completes `create_datagram_endpoint`).
type OnMade = Box<dyn FnOnce(DatagramTransport)>;

pub(crate) struct DatagramInner {
    lp: EventLoop,
    sock: RefCell<Option<DSock>>,
    fd: RawFd,
    /// The socket's place in the poll.
    reg: Registration,
    st: RefCell<State>,
    /// The protocol, and its notes (see `transport::core::slot`).
    slot: ProtocolSlot<dyn DatagramProtocol, Note>,
    peername: Option<Address>,
    sockname: Option<Address>,
    /// The default destination (asyncio's `address`): given on creation.
    remote: Option<Address>,
    on_made: RefCell<Option<OnMade>>,
}

/// A datagram transport (UDP or Unix datagram socket), asyncio's
/// `DatagramTransport`.
///
/// A cheap, clonable handle: the protocol receives one in `connection_made`.
/// All methods may be called from within protocol methods.
#[derive(Clone)]
pub struct DatagramTransport {
    inner: Rc<DatagramInner>,
}

impl fmt::Debug for DatagramTransport {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("DatagramTransport")
            .field("fd", &self.inner.fd)
            .field("sockname", &self.inner.sockname)
            .field("peername", &self.inner.peername)
            .field("closing", &self.is_closing())
            .finish()
    }
}

impl PartialEq for DatagramTransport {
    fn eq(&self, other: &Self) -> bool {
        Rc::ptr_eq(&self.inner, &other.inner)
    }
}

impl DatagramTransport {
    /// Wrap a socket; `connection_made` is delivered from the ready queue,
    /// then reading starts; `on_made` runs right after `connection_made`.
    pub(super) fn spawn(
        lp: &EventLoop,
        mut sock: DSock,
        protocol: DatagramProtocolRef,
        remote: Option<Address>,
        on_made: Option<OnMade>,
    ) -> Result<DatagramTransport> {
        lp.check_closed()?;
        let inner = Rc::new(DatagramInner {
            lp: lp.clone(),
            sock: RefCell::new(None),
            fd: sock.fd(),
            reg: Registration::new(),
            st: RefCell::new(State::default()),
            slot: ProtocolSlot::new(Some(protocol)),
            peername: sock.peer(),
            sockname: sock.local(),
            remote,
            on_made: RefCell::new(on_made),
        });
        // Both interests at once (edge-triggered): a writable edge then only
        // comes after a send was refused with WouldBlock.
        inner.reg.register(lp, sock.source(), Interest::READABLE | Interest::WRITABLE, inner.clone())?;
        *inner.sock.borrow_mut() = Some(sock);
        let me = inner.clone();
        lp.schedule(Box::new(move || me.deliver_connection_made()));
        Ok(DatagramTransport { inner })
    }

    /// The loop this transport runs on.
    pub fn get_loop(&self) -> EventLoop {
        self.inner.lp.clone()
    }

    /// Send `data` to `addr`, or to the transport's remote address when
    /// `addr` is `None`. Sent at once when nothing is queued; queued (and
    /// counted for flow control) when the socket would block.
    ///
    /// Errors: [`Error::InvalidArgument`] with asyncio's message when the
    /// transport has a remote address and `addr` is another one. A failed
    /// send is not an error of this call: it goes to `error_received`.
    /// Sends after the transport is closed are dropped (logged after 5).
    pub fn sendto(&self, data: &[u8], addr: Option<&Address>) -> Result<()> {
        let failed = self.inner.sendto(data, addr, None)?;
        if let Some(e) = failed {
            self.inner.notify(Note::ErrorReceived(Error::Io(e)));
        }
        Ok(())
    }

    /// As [`DatagramTransport::sendto`] with an owned buffer: queued without a copy.
    pub fn sendto_owned(&self, data: Vec<u8>, addr: Option<&Address>) -> Result<()> {
        let failed = self.inner.sendto(&[], addr, Some(data))?;
        if let Some(e) = failed {
            self.inner.notify(Note::ErrorReceived(Error::Io(e)));
        }
        Ok(())
    }

    /// As [`DatagramTransport::sendto`], but an immediate send failure is
    /// returned (`Ok(Some(error))`) instead of going to `error_received`:
    /// for bindings whose protocols expect asyncio's synchronous
    /// `error_received` call inside `sendto`. Failures of queued datagrams
    /// still go to `error_received`.
    pub fn sendto_or_error(&self, data: &[u8], addr: Option<&Address>) -> Result<Option<io::Error>> {
        self.inner.sendto(data, addr, None)
    }

    /// Close: stop receiving, send what is queued, then `connection_lost(None)`.
    pub fn close(&self) {
        self.inner.close()
    }

    /// Close at once, dropping queued datagrams; `connection_lost(None)` follows.
    pub fn abort(&self) {
        self.inner.force_close(None)
    }

    /// Close at once because of `err`, without reporting it: the protocol
    /// receives `connection_lost(Some(err))`. For bindings.
    pub fn abort_with_error(&self, err: Error) {
        self.inner.abort_with_error(err)
    }

    /// Close at once because of `err`: the exception handler hears of it
    /// (unless it is an OS error) and the protocol receives
    /// `connection_lost(Some(err))` (asyncio's `_fatal_error`).
    pub fn fatal_error(&self, err: Error, message: &str) {
        self.inner.fatal_error(err, message)
    }

    /// Close the socket now, without `connection_lost` (for a binding's
    /// finalizer: the transport was dropped unclosed).
    pub fn close_socket(&self) {
        self.inner.st.borrow_mut().life.close_silently();
        self.inner.release();
    }

    /// True once `close`/`abort` was called.
    pub fn is_closing(&self) -> bool {
        self.inner.st.borrow().life.closing
    }

    /// Stop delivering datagrams until [`DatagramTransport::resume_reading`];
    /// effective at once, even inside `datagram_received`. The kernel keeps
    /// (or drops) what arrives meanwhile.
    pub fn pause_reading(&self) {
        self.inner.life().pause_reading();
    }

    /// Resume delivery.
    pub fn resume_reading(&self) {
        if !self.inner.life().resume_reading() {
            return;
        }
        self.inner.rearm();
        if !self.inner.st.borrow().pending.is_empty() {
            self.inner.schedule_read();
        }
    }

    /// True unless reading is paused or the transport is closing.
    pub fn is_reading(&self) -> bool {
        self.inner.st.borrow().life.is_reading()
    }

    /// Count `n` bytes more than its payload for each queued datagram in
    /// [`DatagramTransport::get_write_buffer_size`] and flow control (0 by
    /// default; Python 3.13's asyncio counts 8, a UDP header). Set before
    /// anything is queued.
    pub fn set_queued_header_size(&self, n: usize) {
        let mut st = self.inner.st.borrow_mut();
        debug_assert!(st.queue.is_empty());
        st.header = n;
    }

    /// Bytes queued for sending: the payloads, plus the header size (see
    /// [`DatagramTransport::set_queued_header_size`]) per datagram.
    pub fn get_write_buffer_size(&self) -> usize {
        self.inner.st.borrow().queued
    }

    /// Datagrams queued for sending.
    pub fn queued_datagrams(&self) -> usize {
        self.inner.st.borrow().queue.len()
    }

    /// `(low, high)` water marks.
    pub fn get_write_buffer_limits(&self) -> (usize, usize) {
        self.inner.st.borrow().flow.limits()
    }

    /// Set the water marks (see [`crate::flow`]); `pause_writing` is called at
    /// once if the queue is now over the new high mark.
    pub fn set_write_buffer_limits(&self, high: Option<usize>, low: Option<usize>) -> Result<()> {
        let conv = |v: Option<usize>| v.map(|x| i64::try_from(x).unwrap_or(i64::MAX));
        self.set_write_buffer_limits_signed(conv(high), conv(low))
    }

    /// As [`DatagramTransport::set_write_buffer_limits`], with signed
    /// arguments so that negative values get asyncio's error (bindings).
    pub fn set_write_buffer_limits_signed(&self, high: Option<i64>, low: Option<i64>) -> Result<()> {
        self.inner.set_write_limits(high, low)
    }

    /// Whether `pause_writing` was called without a `resume_writing` yet.
    pub fn is_writing_paused(&self) -> bool {
        self.inner.st.borrow().flow.is_paused()
    }

    /// Look up extra information by asyncio's key: `peername`, `sockname`, `socket`.
    pub fn get_extra_info(&self, name: &str) -> Option<ExtraInfo> {
        ExtraInfo::of_socket(name, self.inner.peername.as_ref(), self.inner.sockname.as_ref(), || self.socket_fd())
    }

    /// The connected peer's address (`None` for an unconnected socket).
    pub fn peername(&self) -> Option<Address> {
        self.inner.peername.clone()
    }

    /// The socket's own address.
    pub fn sockname(&self) -> Option<Address> {
        self.inner.sockname.clone()
    }

    /// The default destination given on creation (`remote_addr`), if any.
    pub fn remote_address(&self) -> Option<Address> {
        self.inner.remote.clone()
    }

    /// The socket's file descriptor while the transport owns an open socket.
    pub fn socket_fd(&self) -> Option<RawFd> {
        self.inner.sock.borrow().as_ref().map(|s| s.fd())
    }

    /// Switch the protocol; later events go to `protocol`.
    pub fn set_protocol(&self, protocol: DatagramProtocolRef) {
        let old = self.inner.slot.replace(Some(protocol));
        drop(old);
    }

    /// The current protocol (`None` after `connection_lost`).
    pub fn get_protocol(&self) -> Option<DatagramProtocolRef> {
        self.inner.slot.get()
    }
}

impl DatagramInner {
    fn transport(self: &Rc<Self>) -> DatagramTransport {
        DatagramTransport { inner: self.clone() }
    }

    fn deliver_connection_made(self: &Rc<Self>) {
        if self.st.borrow().life.lost {
            return;
        }
        self.st.borrow_mut().life.started = true;
        let t = self.transport();
        self.with_protocol("connection_made", move |p| p.connection_made(t));
        let on_made = self.on_made.borrow_mut().take();
        if let Some(cb) = on_made {
            cb(self.transport());
        }
        // Readiness seen before connection_made was ignored: re-arm so that
        // the next poll reports what is waiting.
        self.rearm();
    }

    fn rearm(self: &Rc<Self>) {
        let mut sock = self.sock.borrow_mut();
        if let Some(s) = sock.as_mut() {
            let _ = self.reg.rearm(&self.lp, s.source(), Interest::READABLE | Interest::WRITABLE);
        }
    }

    fn can_read(&self) -> bool {
        let st = self.st.borrow();
        st.life.started && !st.life.closing && !st.life.read_paused
    }

    /// Deliver what a batch left undelivered; false if reading stopped again.
    fn deliver_pending(self: &Rc<Self>) -> bool {
        loop {
            if !self.can_read() {
                return false;
            }
            let next = self.st.borrow_mut().pending.pop_front();
            match next {
                Some((data, addr)) => {
                    self.with_protocol("datagram_received", |p| p.datagram_received(&data, &addr));
                }
                None => return true,
            }
        }
    }

    /// UDP: receive with `recvmmsg`, up to [`sys::dgram::MAX_BATCH`]
    /// datagrams per call, still delivered one per `datagram_received`. A
    /// short batch means drained: no final `EAGAIN` call.
    fn do_read_batched(self: &Rc<Self>) {
        let mut out = Vec::with_capacity(sys::dgram::MAX_BATCH);
        for _ in 0..READS_PER_EVENT.div_ceil(sys::dgram::MAX_BATCH) {
            if !self.can_read() {
                return;
            }
            let mut buf = take_batch_buf();
            let r = {
                let sock = self.sock.borrow();
                match sock.as_ref() {
                    Some(s) => sys::dgram::recv_batch(s.fd(), &mut buf, BATCH_SLOT, &mut out),
                    None => Err(io::ErrorKind::WouldBlock.into()),
                }
            };
            match r {
                Ok(()) => {
                    let drained = out.len() < sys::dgram::MAX_BATCH;
                    for (i, got) in out.iter().enumerate() {
                        let slot = &buf[i * BATCH_SLOT..i * BATCH_SLOT + got.len];
                        let addr = Address::Inet(got.addr.unwrap_or(SocketAddr::from(([0, 0, 0, 0], 0))));
                        if !self.can_read() {
                            // Paused inside datagram_received: keep the rest
                            // for resume_reading (dropped if closing).
                            if !self.st.borrow().life.closing && !got.truncated {
                                self.st.borrow_mut().pending.push_back((slot.to_vec(), addr));
                            }
                            continue;
                        }
                        if got.truncated {
                            // Longer than any UDP payload over IPv4 or plain IPv6.
                            self.notify(Note::ErrorReceived(Error::Io(io::Error::from_raw_os_error(libc::EMSGSIZE))));
                            continue;
                        }
                        self.with_protocol("datagram_received", |p| p.datagram_received(slot, &addr));
                    }
                    put_batch_buf(buf);
                    if drained {
                        return;
                    }
                }
                Err(e) => {
                    put_batch_buf(buf);
                    if e.kind() == io::ErrorKind::WouldBlock {
                        return;
                    }
                    // ECONNREFUSED and friends: reported, and reading goes on.
                    self.notify(Note::ErrorReceived(Error::Io(e)));
                }
            }
        }
        // Budget used with datagrams still waiting: go on next iteration.
        self.schedule_read();
    }

    fn send_one(&self, data: &[u8], to: Option<&Address>) -> io::Result<usize> {
        let sock = self.sock.borrow();
        let Some(s) = sock.as_ref() else { return Err(io::ErrorKind::NotConnected.into()) };
        loop {
            let r = match to {
                Some(a) if self.peername.is_none() => s.send_to(data, a),
                _ => s.send(data),
            };
            match r {
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                r => return r,
            }
        }
    }

    /// Send the front of the queue with one `sendmmsg` and drop what the
    /// kernel took: `Some(Ok(count))`, or `Some(Err(e))` with the first
    /// datagram's error (not dropped: the caller sends it alone, and reports
    /// it); `None` when fewer than two datagrams are queued or one of their
    /// addresses does not suit the socket (the caller goes one by one).
    fn send_queued_batch(&self) -> Option<io::Result<usize>> {
        let sock = self.sock.borrow();
        let s = sock.as_ref()?;
        let sent = {
            let st = self.st.borrow();
            if st.queue.len() < 2 {
                return None;
            }
            let connected = self.peername.is_some();
            let items: Vec<&Queued> = st.queue.iter().take(crate::sys::dgram::MAX_BATCH).collect();
            let mut addrs = Vec::with_capacity(items.len());
            for (_, to) in &items {
                match to {
                    Some(a) if !connected => addrs.push(Some(a.to_sockaddr().ok().filter(|_| s.fits(a))?)),
                    _ => addrs.push(None),
                }
            }
            let msgs: Vec<(&[u8], Option<&SockAddr>)> =
                items.iter().zip(&addrs).map(|((d, _), a)| (d.as_slice(), a.as_ref())).collect();
            match crate::sys::dgram::send_batch(s.fd(), &msgs) {
                Ok(n) => n,
                Err(e) => return Some(Err(e)),
            }
        };
        let mut st = self.st.borrow_mut();
        for _ in 0..sent {
            st.dequeue();
        }
        Some(Ok(sent))
    }

    /// Send or queue; `Ok(Some(e))` when the immediate send failed with `e`.
    fn sendto(self: &Rc<Self>, data: &[u8], addr: Option<&Address>, owned: Option<Vec<u8>>) -> Result<Option<io::Error>> {
        let dest: Option<Address> = match (&self.remote, addr) {
            (Some(r), Some(a)) if a != r => {
                return Err(Error::invalid(format!("Invalid address: must be None or {r}")));
            }
            (Some(r), _) => Some(r.clone()),
            (None, a) => a.cloned(),
        };
        let queue_it = |owned: Option<Vec<u8>>, dest: Option<Address>| {
            self.st.borrow_mut().enqueue((owned.unwrap_or_else(|| data.to_vec()), dest), false);
            self.maybe_pause();
        };
        // Once `connection_lost` is scheduled, asyncio drops (and counts) the
        // writes of a transport with a remote address only; one without still
        // sends while its socket is open, a failure reaching `error_received`
        // (an `error_received` that closes the transport does not silence
        // the next send's error).
        let late = self.st.borrow().life.conn_lost > 0;
        {
            let mut st = self.st.borrow_mut();
            if late && (self.remote.is_some() || self.sock.borrow().is_none()) {
                if let Some(log) = st.life.drop_write() {
                    if log {
                        drop(st);
                        self.lp.warn(SOCKET_SEND_WARNING);
                    }
                    return Ok(None);
                }
            }
            if !st.queue.is_empty() {
                drop(st);
                queue_it(owned, dest);
                return Ok(None);
            }
        }
        // Nothing queued: send at once.
        let sent = self.send_one(owned.as_deref().unwrap_or(data), dest.as_ref());
        match sent {
            Ok(_) => Ok(None),
            // Nothing more is sent once `connection_lost` is scheduled.
            Err(e) if e.kind() == io::ErrorKind::WouldBlock && late => Ok(None),
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                queue_it(owned, dest);
                Ok(None)
            }
            Err(e) => Ok(Some(e)),
        }
    }

    /// Send queued datagrams as long as the socket takes them.
    fn do_write(self: &Rc<Self>) {
        let mut progressed = false;
        loop {
            // Several queued datagrams in one system call; what it does not
            // take (a full socket, an error on the first) goes one by one.
            match self.send_queued_batch() {
                Some(Ok(_)) => {
                    progressed = true;
                    continue;
                }
                Some(Err(e)) if e.kind() == io::ErrorKind::WouldBlock => break,
                Some(Err(_)) | None => {}
            }
            let Some(front) = self.st.borrow_mut().dequeue() else { break };
            match self.send_one(&front.0, front.1.as_ref()) {
                Ok(_) => progressed = true,
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                    self.st.borrow_mut().enqueue(front, true);
                    break;
                }
                Err(e) => {
                    // The datagram is dropped and the error reported, as in
                    // asyncio; the rest of the queue is still sent (no other
                    // writable edge would come for it).
                    progressed = true;
                    self.notify(Note::ErrorReceived(Error::Io(e)));
                }
            }
        }
        if !progressed {
            return;
        }
        self.maybe_resume();
        let (empty, closing, conn_lost) = {
            let st = self.st.borrow();
            (st.queue.is_empty(), st.life.closing, st.life.conn_lost)
        };
        if empty && closing && conn_lost == 0 {
            self.st.borrow_mut().life.conn_lost = 1;
            self.call_connection_lost(None);
        }
    }

    /// Close at once (dropping the queue); `connection_lost(err)` follows.
    fn force_close(self: &Rc<Self>, err: Option<Error>) {
        let dropped = {
            let mut st = self.st.borrow_mut();
            if !st.life.abort() {
                return;
            }
            st.queued = 0;
            std::mem::take(&mut st.queue)
        };
        drop(dropped);
        self.schedule_connection_lost(err);
    }

    /// Close the socket and break the transport<->protocol cycle.
    fn release(self: &Rc<Self>) {
        let sock = self.sock.borrow_mut().take();
        if let Some(mut s) = sock {
            self.reg.deregister(&self.lp, Some(s.source()));
            drop(s);
        }
        self.slot.release();
        let (queue, pending) = {
            let mut st = self.st.borrow_mut();
            st.queued = 0;
            (std::mem::take(&mut st.queue), std::mem::take(&mut st.pending))
        };
        drop((queue, pending));
        let on_made = self.on_made.borrow_mut().take();
        drop(on_made);
    }
}

impl SlotHost for DatagramInner {
    type Proto = dyn DatagramProtocol;
    type Note = Note;

    fn slot(&self) -> &ProtocolSlot<dyn DatagramProtocol, Note> {
        &self.slot
    }

    fn event_loop(&self) -> &EventLoop {
        &self.lp
    }

    fn deliver_note(self: &Rc<Self>, note: Note) {
        if self.st.borrow().life.lost {
            return;
        }
        match note {
            Note::PauseWriting => self.with_protocol("pause_writing", |p| p.pause_writing()),
            Note::ResumeWriting => self.with_protocol("resume_writing", |p| p.resume_writing()),
            Note::ErrorReceived(e) => self.with_protocol("error_received", |p| p.error_received(e)),
        };
    }
}

impl Teardown for DatagramInner {
    fn abort_with_error(self: &Rc<Self>, err: Error) {
        self.force_close(Some(err));
    }
}

impl From<FlowNote> for Note {
    fn from(n: FlowNote) -> Note {
        match n {
            FlowNote::PauseWriting => Note::PauseWriting,
            FlowNote::ResumeWriting => Note::ResumeWriting,
        }
    }
}

impl FlowHost for DatagramInner {
    fn write_flow(&self) -> (RefMut<'_, WriteFlow>, usize) {
        let st = self.st.borrow_mut();
        let size = st.queued;
        (RefMut::map(st, |st| &mut st.flow), size)
    }
}

impl LifecycleHost for DatagramInner {
    fn is_flushed(&self) -> bool {
        self.st.borrow().queue.is_empty()
    }

    fn life(&self) -> RefMut<'_, Lifecycle> {
        RefMut::map(self.st.borrow_mut(), |st| &mut st.life)
    }

    /// Receive and deliver until the socket is drained (or the budget is used).
    fn do_read(self: &Rc<Self>) {
        if !self.deliver_pending() {
            return;
        }
        let udp = matches!(self.sock.borrow().as_ref(), Some(DSock::Udp(_)));
        if udp {
            return self.do_read_batched();
        }
        for _ in 0..READS_PER_EVENT {
            if !self.can_read() {
                return;
            }
            let mut rb = self.lp.take_read_buf();
            let buf = rb.bytes();
            let r = {
                let sock = self.sock.borrow();
                match sock.as_ref() {
                    Some(s) => s.recv_from(buf),
                    None => Err(io::ErrorKind::WouldBlock.into()),
                }
            };
            match r {
                Ok((n, addr)) => {
                    self.with_protocol("datagram_received", |p| p.datagram_received(&buf[..n], &addr));
                    self.lp.put_read_buf(rb);
                }
                Err(e) => {
                    self.lp.put_read_buf(rb);
                    match e.kind() {
                        io::ErrorKind::WouldBlock => return,
                        io::ErrorKind::Interrupted => {}
                        // ECONNREFUSED and friends: reported, and reading goes on.
                        _ => self.notify(Note::ErrorReceived(Error::Io(e))),
                    }
                }
            }
        }
        // Budget used with datagrams still waiting: go on next iteration.
        self.schedule_read();
    }

    fn call_connection_lost(self: &Rc<Self>, err: Option<Error>) {
        let Some(started) = self.life().lose() else { return };
        if started {
            self.deliver_lost(self.slot.get(), |p| p.connection_lost(err));
        }
        self.release();
    }
}

impl IoSource for DatagramInner {
    fn on_loop_close(&self) {
        // Break the transport -> protocol link (a protocol usually holds its
        // transport): the pair can then be freed, and the socket closes when
        // the last handle goes.
        self.slot.release();
        let on_made = self.on_made.borrow_mut().take();
        drop(on_made);
    }

    fn on_ready(self: Rc<Self>, _lp: &EventLoop, ready: Readiness) {
        if ready.readable || ready.error || ready.read_closed {
            self.do_read();
        }
        if ready.writable || ready.error || ready.write_closed {
            self.do_write();
        }
    }
}
