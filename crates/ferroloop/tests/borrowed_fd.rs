//! Transports on borrowed descriptors (`StreamSocket::borrow_raw`): one fd
//! per connection, never closed by the engine, out of the poll before
//! `connection_lost`, and no I/O after `abort`/`close_socket`.

mod common;

use std::cell::RefCell;
use std::io::{Read, Write};
use std::net::{Shutdown, TcpListener, TcpStream};
use std::os::fd::AsRawFd;
use std::os::unix::net::UnixStream;
use std::rc::Rc;
use std::time::Duration;

use common::*;
use ferroloop::{protocol_ref, EventLoop, StreamSocket, Transport};

/// The tests of this file count and reuse descriptors: one at a time.
static SERIAL: std::sync::Mutex<()> = std::sync::Mutex::new(());

/// `StreamSocket::borrow_raw` on a descriptor the test keeps open until the
/// transport has let go of it (each test closes it only after
/// `connection_lost`, or never).
fn borrow(fd: std::os::fd::RawFd) -> std::io::Result<StreamSocket> {
    // SAFETY: see above; the socket objects outlive the transports in every test.
    unsafe { StreamSocket::borrow_raw(fd) }
}

fn serial() -> std::sync::MutexGuard<'static, ()> {
    SERIAL.lock().unwrap_or_else(|p| p.into_inner())
}

fn open_fds() -> usize {
    std::fs::read_dir("/proc/self/fd").unwrap().count()
}

/// A transport with a `Recorder` on one end of a Unix pair, borrowed:
/// (transport, its log, our end, the peer end).
fn borrowed_unix_pair(lp: &EventLoop) -> (Transport, Shared<Log>, UnixStream, UnixStream) {
    let (ours, peer) = UnixStream::pair().unwrap();
    let rec = Recorder::new();
    let log = rec.log.clone();
    let t = lp.create_transport(borrow(ours.as_raw_fd()).unwrap(), protocol_ref(rec)).unwrap();
    (t, log, ours, peer)
}

/// A connected TCP pair: (ours, peer).
fn tcp_pair() -> (TcpStream, TcpStream) {
    let l = TcpListener::bind("127.0.0.1:0").unwrap();
    let a = TcpStream::connect(l.local_addr().unwrap()).unwrap();
    let (b, _) = l.accept().unwrap();
    b.set_read_timeout(Some(Duration::from_secs(30))).unwrap();
    (a, b)
}

#[test]
fn borrowed_tcp_socket_echoes_and_stays_open_after_connection_lost() {
    let _serial = serial();
    let lp = EventLoop::new().unwrap();
    let (ours, mut peer) = tcp_pair();
    let proto = Recorder::new().on_data(|t, d| t.write(d).unwrap());
    let log = proto.log.clone();
    let t = lp.create_transport(borrow(ours.as_raw_fd()).unwrap(), protocol_ref(proto)).unwrap();
    assert_eq!(t.socket_fd(), Some(ours.as_raw_fd()), "the transport works on the descriptor itself, not a copy");
    let payload = pattern(300_000, 7);
    let writer = {
        let mut w = peer.try_clone().unwrap();
        let p = payload.clone();
        std::thread::spawn(move || w.write_all(&p))
    };
    let mut got = vec![0u8; payload.len()];
    let reader = {
        let mut r = peer.try_clone().unwrap();
        std::thread::spawn(move || {
            r.read_exact(&mut got).map(|_| got)
        })
    };
    must(&lp, 20.0, "echo", || reader.is_finished());
    writer.join().unwrap().unwrap();
    assert_bytes_eq(&reader.join().unwrap().unwrap(), &payload, "echo over a borrowed fd");
    t.close();
    must(&lp, 10.0, "lost", || log.borrow().is_lost());
    assert_eq!(t.socket_fd(), None);
    // The descriptor is still ours and open: it still writes to the peer.
    (&ours).write_all(b"still open").unwrap();
    let mut buf = [0u8; 10];
    peer.read_exact(&mut buf).unwrap();
    assert_eq!(&buf, b"still open");
    drop(ours);
    let mut rest = Vec::new();
    peer.read_to_end(&mut rest).unwrap();
    assert!(rest.is_empty());
}

#[test]
fn a_connection_costs_one_descriptor() {
    let _serial = serial();
    let lp = EventLoop::new().unwrap();
    let mut keep = Vec::new();
    let before = open_fds();
    let n = 50;
    for _ in 0..n {
        let (a, b) = UnixStream::pair().unwrap();
        let t = lp.create_transport(borrow(a.as_raw_fd()).unwrap(), protocol_ref(Recorder::new())).unwrap();
        keep.push((a, b, t));
    }
    run_for(&lp, 0.02);
    // Two per pair (ours and the peer), none for the transports.
    assert_eq!(open_fds() - before, 2 * n);
    for (_, _, t) in &keep {
        t.abort();
    }
    run_for(&lp, 0.02);
    assert_eq!(open_fds() - before, 2 * n, "the engine closed a borrowed descriptor");
    keep.clear();
    assert_eq!(open_fds(), before);
}

#[test]
fn abort_stops_all_io_on_a_borrowed_descriptor() {
    let _serial = serial();
    let lp = EventLoop::new().unwrap();
    let (t, log, ours, mut peer) = borrowed_unix_pair(&lp);
    run_for(&lp, 0.02);
    t.abort();
    // Data sent after the abort is never read by the engine: it stays in the socket.
    peer.write_all(b"after abort").unwrap();
    must(&lp, 10.0, "lost", || log.borrow().is_lost());
    run_for(&lp, 0.05);
    assert!(log.borrow().data.is_empty());
    ours.set_nonblocking(false).unwrap();
    ours.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    let mut buf = [0u8; 11];
    (&ours).read_exact(&mut buf).unwrap();
    assert_eq!(&buf, b"after abort");
}

#[test]
fn close_socket_stops_io_and_leaves_the_descriptor_open() {
    let _serial = serial();
    let lp = EventLoop::new().unwrap();
    let (t, log, ours, peer) = borrowed_unix_pair(&lp);
    run_for(&lp, 0.02);
    t.close_socket();
    assert_eq!(t.socket_fd(), None);
    assert_eq!(lp.registered_sources(), 0);
    (&peer).write_all(b"xyz").unwrap();
    run_for(&lp, 0.05);
    assert!(log.borrow().data.is_empty());
    assert!(!log.borrow().is_lost(), "close_socket does not tell the protocol");
    ours.set_nonblocking(false).unwrap();
    let mut buf = [0u8; 3];
    (&ours).read_exact(&mut buf).unwrap();
    assert_eq!(&buf, b"xyz");
}

#[test]
fn the_poll_forgets_the_descriptor_before_connection_lost() {
    // The owner closes the descriptor in connection_lost and, there, opens a
    // new connection that may get the same number: the old transport must not
    // remove the new one's registration afterwards.
    let _serial = serial();
    let lp = EventLoop::new().unwrap();
    let (ours, peer) = UnixStream::pair().unwrap();
    let old_fd = ours.as_raw_fd();
    let ours = Rc::new(RefCell::new(Some(ours)));
    let second: Rc<RefCell<Option<(UnixStream, UnixStream, Transport, Shared<Log>)>>> = Rc::new(RefCell::new(None));
    let (o2, s2, lp2) = (ours.clone(), second.clone(), lp.clone());
    let proto = Recorder::new().on_lost(move |_| {
        drop(o2.borrow_mut().take()); // the owner closes its descriptor
        let (t, log, a, b) = borrowed_unix_pair(&lp2);
        *s2.borrow_mut() = Some((a, b, t, log));
    });
    let log = proto.log.clone();
    let _t = lp.create_transport(borrow(old_fd).unwrap(), protocol_ref(proto)).unwrap();
    run_for(&lp, 0.02);
    peer.shutdown(Shutdown::Write).unwrap();
    must(&lp, 10.0, "lost", || log.borrow().is_lost());
    let (a, mut b, _t2, log2) = second.borrow_mut().take().unwrap();
    // The new pair took the lowest free numbers: the old descriptor's among them.
    assert!(a.as_raw_fd() == old_fd || b.as_raw_fd() == old_fd, "descriptor number not reused");
    b.write_all(b"second").unwrap();
    must(&lp, 10.0, "data on the second connection", || log2.borrow().data == b"second");
    drop(a);
}

#[test]
fn borrow_raw_refuses_what_is_not_a_socket() {
    let _serial = serial();
    assert!(borrow(-1).is_err());
    let f = std::fs::File::open("/proc/self/stat").unwrap();
    assert!(borrow(f.as_raw_fd()).is_err());
}

#[test]
fn add_writer_on_the_descriptor_of_a_borrowed_transport() {
    // asyncio's native sendfile watches the transport's own socket with
    // add_writer while the transport is paused.
    let _serial = serial();
    let lp = EventLoop::new().unwrap();
    let (t, log, ours, mut peer) = borrowed_unix_pair(&lp);
    run_for(&lp, 0.02);
    let fired = Rc::new(std::cell::Cell::new(0));
    let f2 = fired.clone();
    lp.add_writer(ours.as_raw_fd(), Rc::new(move || f2.set(f2.get() + 1))).unwrap();
    must(&lp, 10.0, "writer callback", || fired.get() > 0);
    assert!(lp.remove_writer(ours.as_raw_fd()));
    // The transport still reads and writes its descriptor.
    peer.write_all(b"after the watch").unwrap();
    must(&lp, 10.0, "data", || log.borrow().data == b"after the watch");
    t.write(b"back").unwrap();
    let mut buf = [0u8; 4];
    peer.read_exact(&mut buf).unwrap();
    assert_eq!(&buf, b"back");
}

#[test]
fn addresses_of_a_borrowed_socket_are_read_while_the_transport_has_it() {
    let _serial = serial();
    let lp = EventLoop::new().unwrap();
    let (ours, peer) = tcp_pair();
    let t = lp.create_transport(borrow(ours.as_raw_fd()).unwrap(), protocol_ref(Recorder::new())).unwrap();
    let inet = |a: std::net::SocketAddr| Some(ferroloop::Address::Inet(a));
    assert_eq!(t.peername(), inet(peer.local_addr().unwrap()));
    assert_eq!(t.sockname(), inet(ours.local_addr().unwrap()));
    assert_eq!(
        t.get_extra_info("peername"),
        Some(ferroloop::ExtraInfo::Address(ferroloop::Address::Inet(peer.local_addr().unwrap())))
    );
    t.close_socket();
    // Let go of: the descriptor may be the owner's to close or reuse now.
    assert_eq!(t.peername(), None);
    assert_eq!(t.sockname(), None);
    // A transport that owns its socket keeps what it captured after closing.
    let (mine, peer2) = tcp_pair();
    let owned = lp.create_transport(StreamSocket::from(mine), protocol_ref(Recorder::new())).unwrap();
    owned.close();
    run_for(&lp, 0.02);
    assert_eq!(owned.peername(), inet(peer2.local_addr().unwrap()));
}
