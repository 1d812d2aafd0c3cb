//! Datagram transports: UDP and Unix datagram sockets (asyncio's
//! `DatagramTransport` and `DatagramProtocol`).
//!
//! Read path: on readiness, receive until the socket is drained (at most
//! [`READS_PER_EVENT`] datagrams per event, then the rest from the ready
//! queue), delivering each datagram to [`DatagramProtocol::datagram_received`]
//! at once with its sender's address. UDP sockets receive in batches
//! (`recvmmsg`, a short batch meaning drained); Unix datagram sockets use
//! `recvfrom` into the loop's shared buffer until `WouldBlock`.
//! A receive error (an ICMP "port unreachable" on a connected UDP socket comes
//! back as `ECONNREFUSED`) goes to [`DatagramProtocol::error_received`]: it
//! never closes the transport, as in asyncio.
//!
//! Write path: [`DatagramTransport::sendto`] sends at once when nothing is
//! queued, and queues `(datagram, address)` pairs only when the socket says
//! `WouldBlock`; the queue drains on writability, up to 16 datagrams per
//! system call (`sendmmsg`), in order. Flow control counts the
//! queued payload bytes against the water marks of [`crate::flow`], as
//! asyncio's `_SelectorDatagramTransport` does. A send error (`EMSGSIZE` for
//! an oversized datagram, `ECONNREFUSED`...) goes to `error_received`.
//!
//! Unix datagram addresses are [`Address::Unix`] strings: a path, an
//! abstract-namespace name written with its leading NUL (`"\0name"`, as
//! Python's `b"\x00name"`), or the empty string for an unnamed socket.

use std::cell::{Cell, RefCell, RefMut};
use std::collections::VecDeque;
use std::fmt;
use std::io;
use std::net::SocketAddr;
use std::os::fd::{AsRawFd, OwnedFd, RawFd};
use std::path::Path;
use std::rc::Rc;

use mio::Interest;
use socket2::{Domain, SockAddr, SockRef, Socket, Type};

use crate::error::{Error, Result};
use crate::event_loop::{EventLoop, IoSource, Readiness};
use crate::flow::WriteFlow;
use crate::future::LoopFuture;
use crate::resolve::{resolve, Family};
use crate::sys;
use crate::transport::addr::remove_stale_socket;
use crate::transport::core::lifecycle::{Lifecycle, LifecycleHost, Teardown, SOCKET_SEND_WARNING};
use crate::transport::core::slot::{FlowHost, FlowNote, ProtocolSlot, SlotHost};
use crate::transport::fd::Registration;
use crate::transport::{Address, ExtraInfo};

/// Datagrams read per readiness event before yielding to other sources.
pub const READS_PER_EVENT: usize = 64;

/// A datagram protocol (asyncio's `DatagramProtocol`).
///
/// Every method has an empty default, as in asyncio. The life of a datagram
/// protocol: `connection_made`, then any number of `datagram_received` and
/// `error_received` (and paired `pause_writing`/`resume_writing`), then
/// `connection_lost` exactly once.
///
/// Methods are never re-entered: an `error_received` or `pause_writing`
/// caused by a [`DatagramTransport::sendto`] made from inside a protocol
/// method is delivered right after that method returns. A panic in a method
/// is reported to the loop's exception handler and the transport goes on, as
/// asyncio reports an exception raised by `datagram_received`.
pub trait DatagramProtocol: 'static {
    /// The transport is ready; keep it to send and close.
    fn connection_made(&mut self, transport: DatagramTransport) {
        let _ = transport;
    }

    /// A datagram arrived from `addr` (it may be empty: UDP allows
    /// zero-length datagrams).
    fn datagram_received(&mut self, data: &[u8], addr: &Address) {
        let _ = (data, addr);
    }

    /// A send or receive failed, e.g. `ECONNREFUSED` after an ICMP "port
    /// unreachable" on a connected socket, or `EMSGSIZE`. The transport stays open.
    fn error_received(&mut self, exc: Error) {
        let _ = exc;
    }

    /// The transport is closed (`None` after `close`/`abort`). Called exactly once.
    fn connection_lost(&mut self, exc: Option<Error>) {
        let _ = exc;
    }

    /// The send queue went strictly over the high-water mark.
    fn pause_writing(&mut self) {}

    /// The send queue drained to the low-water mark or below.
    fn resume_writing(&mut self) {}
}

/// How a datagram transport holds its protocol (see [`crate::ProtocolRef`]).
pub type DatagramProtocolRef = Rc<RefCell<dyn DatagramProtocol>>;

/// What `create_datagram_endpoint` and friends complete with: the transport
/// and the protocol the factory made, typed.
pub type DatagramEndpoint<P> = (DatagramTransport, Rc<RefCell<P>>);

/// A datagram socket handed to the loop (asyncio's `sock=` argument).
#[derive(Debug)]
pub enum DatagramSocket {
    /// A UDP socket, bound or connected or neither.
    Udp(std::net::UdpSocket),
    /// A Unix datagram socket.
    Unix(std::os::unix::net::UnixDatagram),
}

impl From<std::net::UdpSocket> for DatagramSocket {
    fn from(s: std::net::UdpSocket) -> Self {
        DatagramSocket::Udp(s)
    }
}

impl From<std::os::unix::net::UnixDatagram> for DatagramSocket {
    fn from(s: std::os::unix::net::UnixDatagram) -> Self {
        DatagramSocket::Unix(s)
    }
}

impl DatagramSocket {
    /// Take a datagram socket of either family from an owned descriptor: a
    /// `SOCK_DGRAM` one, or a Unix `SOCK_SEQPACKET` one (message boundaries
    /// kept; asyncio 3.13 takes any socket but a stream one). Fails with
    /// `EPROTOTYPE` otherwise.
    pub fn from_fd(fd: OwnedFd) -> io::Result<DatagramSocket> {
        let sock = Socket::from(fd);
        let unix = sock.domain()? == Domain::UNIX;
        let ty = sock.r#type()?;
        if !(ty == Type::DGRAM || (unix && ty == Type::SEQPACKET)) {
            return Err(io::Error::from_raw_os_error(libc::EPROTOTYPE));
        }
        if unix {
            Ok(DatagramSocket::Unix(OwnedFd::from(sock).into()))
        } else {
            Ok(DatagramSocket::Udp(OwnedFd::from(sock).into()))
        }
    }

    /// Duplicate `fd` (the caller keeps the original) and take the copy.
    pub fn dup_raw(fd: RawFd) -> io::Result<DatagramSocket> {
        Self::from_fd(crate::sys::dup_cloexec(fd)?)
    }

    fn into_sock(self) -> io::Result<DSock> {
        Ok(match self {
            DatagramSocket::Udp(s) => {
                s.set_nonblocking(true)?;
                DSock::Udp(mio::net::UdpSocket::from_std(s))
            }
            DatagramSocket::Unix(s) => {
                s.set_nonblocking(true)?;
                DSock::Unix(mio::net::UnixDatagram::from_std(s))
            }
        })
    }
}

/// Bytes per datagram slot of a receive batch: more than any UDP payload
/// (65,507 bytes over IPv4, 65,527 over IPv6 without jumbograms).
const BATCH_SLOT: usize = 64 * 1024;

thread_local! {
    /// The receive-batch buffer (`MAX_BATCH` slots), one per thread: loops
    /// are per thread and a batch is delivered before the next is read.
    static BATCH_BUF: Cell<Option<Box<[u8]>>> = const { Cell::new(None) };
}

fn take_batch_buf() -> Box<[u8]> {
    BATCH_BUF
        .with(|b| b.take())
        .unwrap_or_else(|| vec![0u8; BATCH_SLOT * sys::dgram::MAX_BATCH].into_boxed_slice())
}

fn put_batch_buf(buf: Box<[u8]>) {
    BATCH_BUF.with(|b| b.set(Some(buf)));
}

enum DSock {
    Udp(mio::net::UdpSocket),
    Unix(mio::net::UnixDatagram),
}

impl DSock {
    fn source(&mut self) -> &mut dyn mio::event::Source {
        match self {
            DSock::Udp(s) => s,
            DSock::Unix(s) => s,
        }
    }

    fn fd(&self) -> RawFd {
        match self {
            DSock::Udp(s) => s.as_raw_fd(),
            DSock::Unix(s) => s.as_raw_fd(),
        }
    }

    fn recv_from(&self, buf: &mut [u8]) -> io::Result<(usize, Address)> {
        match self {
            DSock::Udp(s) => s.recv_from(buf).map(|(n, a)| (n, Address::Inet(a))),
            DSock::Unix(s) => s.recv_from(buf).map(|(n, a)| (n, Address::of_unix(&a))),
        }
    }

    fn send(&self, buf: &[u8]) -> io::Result<usize> {
        match self {
            DSock::Udp(s) => s.send(buf),
            DSock::Unix(s) => s.send(buf),
        }
    }

    /// `to` is of this socket's family.
    fn fits(&self, to: &Address) -> bool {
        matches!((self, to), (DSock::Udp(_), Address::Inet(_)) | (DSock::Unix(_), Address::Unix(_)))
    }

    fn send_to(&self, buf: &[u8], to: &Address) -> io::Result<usize> {
        if !self.fits(to) {
            // The kernel's answer for an address of the wrong family.
            return Err(io::Error::from_raw_os_error(libc::EAFNOSUPPORT));
        }
        match (self, to) {
            (DSock::Udp(s), Address::Inet(a)) => s.send_to(buf, *a),
            // (A UDP socket with a Unix address does not pass `fits`.)
            (DSock::Udp(s), _) => SockRef::from(s).send_to(buf, &to.to_sockaddr()?),
            (DSock::Unix(s), _) => SockRef::from(s).send_to(buf, &to.to_sockaddr()?),
        }
    }

    fn peer(&self) -> Option<Address> {
        match self {
            DSock::Udp(s) => s.peer_addr().ok().map(Address::Inet),
            DSock::Unix(s) => s.peer_addr().ok().map(|a| Address::of_unix(&a)),
        }
    }

    fn local(&self) -> Option<Address> {
        match self {
            DSock::Udp(s) => s.local_addr().ok().map(Address::Inet),
            DSock::Unix(s) => s.local_addr().ok().map(|a| Address::of_unix(&a)),
        }
    }
}

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
    fn spawn(
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

// ---------------------------------------------------------------------------
// creating endpoints

/// Options of [`EventLoop::create_datagram_endpoint`], with asyncio's defaults.
#[derive(Clone, Debug, Default)]
pub struct DatagramOptions {
    /// Bind to this `(host, port)` (resolved off the loop thread).
    pub local_addr: Option<(String, u16)>,
    /// Connect to this `(host, port)`: `sendto` then takes no address (or
    /// this one), and only this peer's datagrams arrive. With
    /// `allow_broadcast` the socket is not connected; the address is then only
    /// the default destination.
    pub remote_addr: Option<(String, u16)>,
    /// Only use addresses of this family; required when neither address is given.
    pub family: Option<Family>,
    /// `SO_REUSEPORT`: several sockets may bind the same address and port.
    pub reuse_port: bool,
    /// `SO_BROADCAST`: allow sending to broadcast addresses.
    pub allow_broadcast: bool,
}

fn family_of(a: &SocketAddr) -> Family {
    if a.is_ipv4() {
        Family::V4
    } else {
        Family::V6
    }
}

/// Make, configure, bind and connect one UDP socket (asyncio's loop body).
fn open_udp(
    family: Family,
    local: Option<SocketAddr>,
    remote: Option<SocketAddr>,
    opts: &DatagramOptions,
) -> Result<std::net::UdpSocket> {
    let domain = match family {
        Family::V4 => Domain::IPV4,
        Family::V6 => Domain::IPV6,
    };
    let sock = Socket::new(domain, Type::DGRAM.cloexec(), Some(socket2::Protocol::UDP))?;
    if opts.reuse_port {
        sock.set_reuse_port(true)?;
    }
    if opts.allow_broadcast {
        sock.set_broadcast(true)?;
    }
    sock.set_nonblocking(true)?;
    if let Some(l) = local {
        if let Err(e) = sock.bind(&l.into()) {
            return Err(Error::Bind { address: l.to_string(), source: e });
        }
    }
    if let Some(r) = remote {
        if !opts.allow_broadcast {
            sock.connect(&r.into())?;
        }
    }
    Ok(sock.into())
}

/// Resolve an optional `(host, port)`, then call `k` (from the loop).
fn resolve_opt(
    lp: &EventLoop,
    addr: Option<(String, u16)>,
    k: impl FnOnce(Result<Option<Vec<SocketAddr>>>) + 'static,
) {
    let Some((host, port)) = addr else { return k(Ok(None)) };
    let fut = resolve(lp, Some(&host), port);
    fut.clone().add_done_callback(move || match fut.take_result() {
        Some(Ok(v)) => k(Ok(Some(v))),
        Some(Err(e)) => k(Err(e)),
        None => k(Err(Error::Cancelled)),
    });
}

/// asyncio's choice of socket for `create_datagram_endpoint`: pair the
/// resolved local and remote addresses by family, try each pair in turn.
fn udp_socket_for(
    local: Option<Vec<SocketAddr>>,
    remote: Option<Vec<SocketAddr>>,
    opts: &DatagramOptions,
) -> Result<(std::net::UdpSocket, Option<SocketAddr>)> {
    let keep = |v: Option<Vec<SocketAddr>>| -> Option<Vec<SocketAddr>> {
        v.map(|v| v.into_iter().filter(|a| opts.family.map(|f| f.matches(a)).unwrap_or(true)).collect())
    };
    let (local, remote) = (keep(local), keep(remote));
    if local.is_none() && remote.is_none() {
        let Some(family) = opts.family else {
            return Err(Error::invalid("unexpected address family"));
        };
        return Ok((open_udp(family, None, None, opts)?, None));
    }
    // Families in the order the addresses came, each with its first local
    // and first remote address.
    let mut families: Vec<Family> = Vec::new();
    for a in local.iter().flatten().chain(remote.iter().flatten()) {
        let f = family_of(a);
        if !families.contains(&f) {
            families.push(f);
        }
    }
    let first_of = |v: &Option<Vec<SocketAddr>>, f: Family| v.as_ref().and_then(|v| v.iter().find(|a| f.matches(a)).copied());
    let pairs: Vec<(Family, Option<SocketAddr>, Option<SocketAddr>)> = families
        .into_iter()
        .map(|f| (f, first_of(&local, f), first_of(&remote, f)))
        .filter(|(_, l, r)| (local.is_none() || l.is_some()) && (remote.is_none() || r.is_some()))
        .collect();
    if pairs.is_empty() {
        return Err(Error::invalid("can not get address information"));
    }
    let mut errors = Vec::new();
    for (family, l, r) in pairs {
        match open_udp(family, l, r, opts) {
            Ok(s) => return Ok((s, r)),
            Err(e) => errors.push(e),
        }
    }
    Err(errors.swap_remove(0))
}

impl EventLoop {
    /// Create a UDP endpoint (asyncio's `create_datagram_endpoint`) and run a
    /// protocol made by `factory` on it. Names are resolved off the loop
    /// thread; the future completes after `connection_made`.
    ///
    /// As asyncio: with both addresses, each family that both resolve to is
    /// tried in turn; with neither, `family` must be given and the socket is
    /// left unbound (the kernel binds it on the first send). Errors:
    /// [`Error::InvalidArgument`] ("unexpected address family", "can not get
    /// address information"), [`Error::Bind`] when `local_addr` cannot be
    /// bound, [`Error::Io`] for the rest.
    pub fn create_datagram_endpoint<P, F>(&self, factory: F, opts: DatagramOptions) -> LoopFuture<DatagramEndpoint<P>>
    where
        P: DatagramProtocol,
        F: FnOnce() -> P + 'static,
    {
        let out = LoopFuture::new();
        if let Err(e) = self.check_closed() {
            out.set(Err(e));
            return out;
        }
        let lp = self.clone();
        let out2 = out.clone();
        let (local, remote) = (opts.local_addr.clone(), opts.remote_addr.clone());
        resolve_opt(self, local, move |local| {
            let lp2 = lp.clone();
            resolve_opt(&lp, remote, move |remote| {
                let opened = local.and_then(|l| remote.map(|r| (l, r))).and_then(|(l, r)| udp_socket_for(l, r, &opts));
                match opened {
                    Ok((sock, remote)) => {
                        start_datagram(&lp2, DatagramSocket::Udp(sock), factory(), remote.map(Address::Inet), out2)
                    }
                    Err(e) => out2.set(Err(e)),
                }
            });
        });
        out
    }

    /// Create a Unix datagram endpoint: bind to `local_path` (a stale socket
    /// file there is removed first, as asyncio does; a path starting with a
    /// NUL byte is an abstract name) and/or connect to `remote_path`.
    /// With neither, the socket is unnamed.
    pub fn create_unix_datagram_endpoint<P, F>(
        &self,
        factory: F,
        local_path: Option<&Path>,
        remote_path: Option<&Path>,
    ) -> LoopFuture<DatagramEndpoint<P>>
    where
        P: DatagramProtocol,
        F: FnOnce() -> P,
    {
        let out = LoopFuture::new();
        let opened = (|| -> Result<std::os::unix::net::UnixDatagram> {
            self.check_closed()?;
            let sock = Socket::new(Domain::UNIX, Type::DGRAM.cloexec(), None)?;
            sock.set_nonblocking(true)?;
            if let Some(l) = local_path {
                remove_stale_socket(l);
                if let Err(e) = sock.bind(&SockAddr::unix(l)?) {
                    return Err(Error::Bind { address: format!("{l:?}"), source: e });
                }
            }
            if let Some(r) = remote_path {
                sock.connect(&SockAddr::unix(r)?)?;
            }
            Ok(OwnedFd::from(sock).into())
        })();
        match opened {
            Ok(s) => start_datagram(self, DatagramSocket::Unix(s), factory(), remote_path.map(|p| Address::of_path(&p)), out.clone()),
            Err(e) => out.set(Err(e)),
        }
        out
    }

    /// Run a datagram protocol on an existing socket (asyncio's
    /// `create_datagram_endpoint(sock=...)`). A connected socket sends to its
    /// peer; an unconnected one needs an address for every `sendto`.
    pub fn create_datagram_endpoint_from_socket<P, F>(
        &self,
        factory: F,
        sock: impl Into<DatagramSocket>,
    ) -> LoopFuture<DatagramEndpoint<P>>
    where
        P: DatagramProtocol,
        F: FnOnce() -> P,
    {
        let out = LoopFuture::new();
        match self.check_closed() {
            Ok(()) => start_datagram(self, sock.into(), factory(), None, out.clone()),
            Err(e) => out.set(Err(e)),
        }
        out
    }

    /// Make a datagram transport for `protocol` on `sock`, synchronously
    /// (bindings: the protocol object is built by the caller). `remote` is
    /// the default destination (checked by `sendto`). `connection_made`
    /// follows from the ready queue.
    pub fn create_datagram_transport(
        &self,
        sock: DatagramSocket,
        protocol: DatagramProtocolRef,
        remote: Option<Address>,
    ) -> Result<DatagramTransport> {
        let sock = sock.into_sock()?;
        DatagramTransport::spawn(self, sock, protocol, remote, None)
    }
}

/// Start a transport on `sock` and complete `out` after `connection_made`.
fn start_datagram<P: DatagramProtocol>(
    lp: &EventLoop,
    sock: DatagramSocket,
    protocol: P,
    remote: Option<Address>,
    out: LoopFuture<DatagramEndpoint<P>>,
) {
    let sock = match sock.into_sock() {
        Ok(s) => s,
        Err(e) => return out.set(Err(Error::Io(e))),
    };
    let proto = Rc::new(RefCell::new(protocol));
    let dyn_proto: DatagramProtocolRef = proto.clone();
    let out2 = out.clone();
    let on_made = Box::new(move |t: DatagramTransport| out2.set(Ok((t, proto))));
    if let Err(e) = DatagramTransport::spawn(lp, sock, dyn_proto, remote, Some(on_made)) {
        out.set(Err(e));
    }
}
