//! Datagram transports: UDP and Unix datagram sockets, against asyncio's
//! `_SelectorDatagramTransport` semantics (addresses, error_received, flow
//! control on the send queue, close/abort, the protocol life cycle).

mod common;

use std::cell::RefCell;
use std::collections::HashSet;
use std::net::{SocketAddr, UdpSocket};
use std::os::unix::net::UnixDatagram;
use std::rc::Rc;
use std::time::Duration;

use common::{complete, must, record_exceptions, run_for, run_until};
use ferroloop::{
    Address, DatagramOptions, DatagramProtocol, DatagramTransport, Error, EventLoop, ExtraInfo, Family,
};

/// One datagram-protocol event.
#[derive(Debug)]
enum Ev {
    Made,
    Dgram(Vec<u8>, Address),
    Err(Error),
    Lost(Option<Error>),
    Pause(usize),
    Resume(usize),
}

impl Ev {
    fn kind(&self) -> &'static str {
        match self {
            Ev::Made => "made",
            Ev::Dgram(..) => "dgram",
            Ev::Err(_) => "error",
            Ev::Lost(_) => "lost",
            Ev::Pause(_) => "pause",
            Ev::Resume(_) => "resume",
        }
    }
}

type Log = Rc<RefCell<Vec<Ev>>>;

/// Records every event; optionally echoes datagrams back to their sender,
/// and runs a hook on each datagram.
struct Rec {
    log: Log,
    t: Option<DatagramTransport>,
    echo: bool,
    in_method: bool,
    #[allow(clippy::type_complexity)]
    on_dgram: Option<Box<dyn FnMut(&DatagramTransport, &[u8], &Address)>>,
}

impl std::fmt::Debug for Rec {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Rec")
    }
}

impl Rec {
    fn new(log: &Log) -> Rec {
        Rec { log: log.clone(), t: None, echo: false, in_method: false, on_dgram: None }
    }
    fn echo(log: &Log) -> Rec {
        Rec { echo: true, ..Rec::new(log) }
    }
    fn enter(&mut self) {
        assert!(!self.in_method, "protocol method re-entered");
        self.in_method = true;
    }
}

impl DatagramProtocol for Rec {
    fn connection_made(&mut self, t: DatagramTransport) {
        self.enter();
        assert!(self.log.borrow().is_empty(), "connection_made first");
        self.t = Some(t);
        self.log.borrow_mut().push(Ev::Made);
        self.in_method = false;
    }
    fn datagram_received(&mut self, data: &[u8], addr: &Address) {
        self.enter();
        self.log.borrow_mut().push(Ev::Dgram(data.to_vec(), addr.clone()));
        let t = self.t.clone().expect("transport");
        if self.echo {
            t.sendto(data, Some(addr)).expect("echo sendto");
        }
        // The hook may panic (on purpose): leave the method's guard first.
        // (Re-entry is still impossible: the engine holds the protocol's borrow.)
        self.in_method = false;
        if let Some(f) = self.on_dgram.as_mut() {
            f(&t, data, addr);
        }
    }
    fn error_received(&mut self, exc: Error) {
        self.enter();
        self.log.borrow_mut().push(Ev::Err(exc));
        self.in_method = false;
    }
    fn connection_lost(&mut self, exc: Option<Error>) {
        self.enter();
        assert!(!self.log.borrow().iter().any(|e| e.kind() == "lost"), "connection_lost twice");
        self.log.borrow_mut().push(Ev::Lost(exc));
        self.t = None;
        self.in_method = false;
    }
    fn pause_writing(&mut self) {
        self.enter();
        let n = self.t.as_ref().map(|t| t.get_write_buffer_size()).unwrap_or(0);
        self.log.borrow_mut().push(Ev::Pause(n));
        self.in_method = false;
    }
    fn resume_writing(&mut self) {
        self.enter();
        let n = self.t.as_ref().map(|t| t.get_write_buffer_size()).unwrap_or(0);
        self.log.borrow_mut().push(Ev::Resume(n));
        self.in_method = false;
    }
}

fn log() -> Log {
    Rc::new(RefCell::new(Vec::new()))
}

fn count(log: &Log, kind: &str) -> usize {
    log.borrow().iter().filter(|e| e.kind() == kind).count()
}

fn kinds(log: &Log) -> Vec<&'static str> {
    log.borrow().iter().map(|e| e.kind()).collect()
}

fn dgrams(log: &Log) -> Vec<(Vec<u8>, Address)> {
    log.borrow()
        .iter()
        .filter_map(|e| match e {
            Ev::Dgram(d, a) => Some((d.clone(), a.clone())),
            _ => None,
        })
        .collect()
}

fn errors(log: &Log) -> Vec<Option<i32>> {
    log.borrow()
        .iter()
        .filter_map(|e| match e {
            Ev::Err(e) => Some(e.errno()),
            _ => None,
        })
        .collect()
}

fn local(host: &str) -> DatagramOptions {
    DatagramOptions { local_addr: Some((host.to_string(), 0)), ..Default::default() }
}

fn inet(t: &DatagramTransport) -> SocketAddr {
    match t.sockname() {
        Some(Address::Inet(a)) => a,
        other => panic!("not an inet socket: {other:?}"),
    }
}

/// A duplicate of the transport's socket, to inspect its options.
fn dup_of(t: &DatagramTransport) -> UdpSocket {
    match ferroloop::DatagramSocket::dup_raw(t.socket_fd().expect("open socket")).unwrap() {
        ferroloop::DatagramSocket::Udp(s) => s,
        other => panic!("not UDP: {other:?}"),
    }
}

#[test]
fn udp_echo_round_trip_with_addresses_and_extra_info() {
    let lp = EventLoop::new().unwrap();
    let slog = log();
    let s2 = slog.clone();
    let (st, _) = complete(&lp, &lp.create_datagram_endpoint(move || Rec::echo(&s2), local("127.0.0.1")), 5.0).unwrap();
    let saddr = inet(&st);
    assert!(saddr.port() != 0);
    assert_eq!(st.peername(), None, "an unconnected socket has no peer");
    assert!(matches!(st.get_extra_info("socket"), Some(ExtraInfo::Fd(_))));
    assert_eq!(st.get_extra_info("nonexistent"), None);

    let clog = log();
    let c2 = clog.clone();
    let opts = DatagramOptions { remote_addr: Some(("127.0.0.1".into(), saddr.port())), ..Default::default() };
    let (ct, _) = complete(&lp, &lp.create_datagram_endpoint(move || Rec::new(&c2), opts), 5.0).unwrap();
    assert_eq!(ct.peername(), Some(Address::Inet(saddr)));
    assert_eq!(ct.remote_address(), Some(Address::Inet(saddr)));
    let caddr = inet(&ct);
    // After the future: connection_made was delivered.
    assert_eq!(kinds(&clog), ["made"]);

    ct.sendto(b"hello", None).unwrap();
    ct.sendto(b"", None).unwrap(); // zero-length datagrams are datagrams
    ct.sendto(b"world", Some(&Address::Inet(saddr))).unwrap(); // the remote address itself is allowed
    must(&lp, 5.0, "three echoes", || count(&clog, "dgram") == 3);
    let got = dgrams(&clog);
    assert_eq!(got.iter().map(|d| d.0.clone()).collect::<Vec<_>>(), [b"hello".to_vec(), vec![], b"world".to_vec()]);
    assert!(got.iter().all(|d| d.1 == Address::Inet(saddr)), "the sender is the server: {got:?}");
    assert!(dgrams(&slog).iter().all(|d| d.1 == Address::Inet(caddr)), "the server saw the client's address");

    ct.close();
    assert!(ct.is_closing());
    must(&lp, 5.0, "client lost", || count(&clog, "lost") == 1);
    assert!(matches!(clog.borrow().last(), Some(Ev::Lost(None))));
    assert_eq!(ct.socket_fd(), None, "the socket is closed after connection_lost");
    st.abort();
    must(&lp, 5.0, "server lost", || count(&slog, "lost") == 1);
    assert_eq!(kinds(&slog), ["made", "dgram", "dgram", "dgram", "lost"]);
    assert_eq!(lp.registered_sources(), 0);
}

#[test]
fn connected_sendto_rejects_another_address_with_asyncios_message() {
    let lp = EventLoop::new().unwrap();
    let peer = UdpSocket::bind("127.0.0.1:0").unwrap();
    let paddr = peer.local_addr().unwrap();
    let l = log();
    let l2 = l.clone();
    let opts = DatagramOptions { remote_addr: Some(("127.0.0.1".into(), paddr.port())), ..Default::default() };
    let (t, _) = complete(&lp, &lp.create_datagram_endpoint(move || Rec::new(&l2), opts), 5.0).unwrap();
    let other: SocketAddr = "127.0.0.1:9".parse().unwrap();
    let err = t.sendto(b"x", Some(&Address::Inet(other))).unwrap_err();
    assert!(matches!(err, Error::InvalidArgument(_)));
    assert_eq!(err.to_string(), format!("Invalid address: must be None or {paddr}"));
    t.sendto(b"ok", Some(&Address::Inet(paddr))).unwrap();
    let mut buf = [0u8; 16];
    peer.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    let (n, from) = peer.recv_from(&mut buf).unwrap();
    assert_eq!(&buf[..n], b"ok");
    assert_eq!(from, inet(&t));
    // Only the connected peer's datagrams arrive.
    let stranger = UdpSocket::bind("127.0.0.1:0").unwrap();
    stranger.send_to(b"spam", inet(&t)).unwrap();
    peer.send_to(b"from-peer", inet(&t)).unwrap();
    must(&lp, 5.0, "peer's datagram", || count(&l, "dgram") == 1);
    run_for(&lp, 0.05);
    assert_eq!(dgrams(&l), [(b"from-peer".to_vec(), Address::Inet(paddr))]);
    t.close();
    must(&lp, 5.0, "lost", || count(&l, "lost") == 1);
}

#[test]
fn icmp_port_unreachable_goes_to_error_received_not_connection_lost() {
    let lp = EventLoop::new().unwrap();
    // A port nobody listens on: bind, note the port, close.
    let port = UdpSocket::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
    let l = log();
    let l2 = l.clone();
    let opts = DatagramOptions { remote_addr: Some(("127.0.0.1".into(), port)), ..Default::default() };
    let (t, _) = complete(&lp, &lp.create_datagram_endpoint(move || Rec::new(&l2), opts), 5.0).unwrap();
    t.sendto(b"anyone?", None).unwrap();
    must(&lp, 5.0, "error_received", || count(&l, "error") >= 1);
    assert_eq!(errors(&l)[0], Some(libc::ECONNREFUSED));
    assert!(!t.is_closing(), "an ICMP error does not close the transport");
    assert_eq!(count(&l, "lost"), 0);
    // Still usable: the next send reports again (or is dropped), never closes.
    t.sendto(b"again", None).unwrap();
    run_for(&lp, 0.05);
    assert_eq!(count(&l, "lost"), 0);
    t.close();
    must(&lp, 5.0, "lost", || count(&l, "lost") == 1);
    assert!(matches!(l.borrow().last(), Some(Ev::Lost(None))));
}

#[test]
fn oversized_datagram_reports_emsgsize() {
    let lp = EventLoop::new().unwrap();
    let l = log();
    let l2 = l.clone();
    let (t, _) = complete(&lp, &lp.create_datagram_endpoint(move || Rec::new(&l2), local("127.0.0.1")), 5.0).unwrap();
    let me = Address::Inet(inet(&t));
    t.sendto(&vec![0u8; 70_000], Some(&me)).unwrap();
    // Outside a protocol method, error_received is delivered at once (as asyncio calls it from sendto).
    assert_eq!(errors(&l), [Some(libc::EMSGSIZE)]);
    assert_eq!(t.get_write_buffer_size(), 0, "a failed datagram is not queued");
    // The largest UDP payload over IPv4 goes through, to ourselves.
    t.sendto(&vec![7u8; 65_507], Some(&me)).unwrap();
    must(&lp, 5.0, "big datagram", || count(&l, "dgram") == 1);
    assert_eq!(dgrams(&l)[0].0.len(), 65_507);
    t.close();
    must(&lp, 5.0, "lost", || count(&l, "lost") == 1);
}

#[test]
fn errors_from_sendto_inside_a_protocol_method_wait_until_it_returns() {
    let lp = EventLoop::new().unwrap();
    let l = log();
    let l2 = l.clone();
    let factory = move || {
        let mut r = Rec::new(&l2);
        let log = l2.clone();
        r.on_dgram = Some(Box::new(move |t: &DatagramTransport, _d: &[u8], a: &Address| {
            t.sendto(&vec![1u8; 70_000], Some(a)).unwrap();
            // Not re-entered: the error comes after this method returns.
            assert_eq!(log.borrow().iter().filter(|e| e.kind() == "error").count(), 0);
        }));
        r
    };
    let (t, _) = complete(&lp, &lp.create_datagram_endpoint(factory, local("127.0.0.1")), 5.0).unwrap();
    let peer = UdpSocket::bind("127.0.0.1:0").unwrap();
    peer.send_to(b"trigger", inet(&t)).unwrap();
    must(&lp, 5.0, "error after datagram", || count(&l, "error") == 1);
    assert_eq!(kinds(&l), ["made", "dgram", "error"]);
    assert_eq!(errors(&l), [Some(libc::EMSGSIZE)]);
    t.abort();
    must(&lp, 5.0, "lost", || count(&l, "lost") == 1);
}

#[test]
fn panic_in_datagram_received_is_reported_and_reading_goes_on() {
    let lp = EventLoop::new().unwrap();
    let reports = record_exceptions(&lp);
    let l = log();
    let l2 = l.clone();
    let factory = move || {
        let mut r = Rec::new(&l2);
        r.on_dgram = Some(Box::new(|_t: &DatagramTransport, d: &[u8], _a: &Address| {
            if d == b"boom" {
                panic!("protocol bug");
            }
        }));
        r
    };
    let (t, _) = complete(&lp, &lp.create_datagram_endpoint(factory, local("127.0.0.1")), 5.0).unwrap();
    let peer = UdpSocket::bind("127.0.0.1:0").unwrap();
    peer.send_to(b"boom", inet(&t)).unwrap();
    peer.send_to(b"after", inet(&t)).unwrap();
    must(&lp, 5.0, "both datagrams", || count(&l, "dgram") == 2);
    assert_eq!(reports.borrow().len(), 1);
    assert!(reports.borrow()[0].message.contains("datagram_received"), "{:?}", reports.borrow());
    assert!(matches!(&reports.borrow()[0].error, Some(Error::Panic(m)) if m == "protocol bug"));
    assert!(!t.is_closing());
    t.close();
    must(&lp, 5.0, "lost", || count(&l, "lost") == 1);
}

/// A Unix datagram socket pair whose receiving end is not read: the sender's
/// queue fills (the kernel refuses with EAGAIN), exercising the send queue.
fn unix_pair_transport(lp: &EventLoop, l: &Log) -> (DatagramTransport, UnixDatagram) {
    let (a, b) = UnixDatagram::pair().unwrap();
    let l2 = l.clone();
    let (t, _) = complete(lp, &lp.create_datagram_endpoint_from_socket(move || Rec::new(&l2), a), 5.0).unwrap();
    (t, b)
}

/// Send datagrams of `size` until the transport queues `n` bytes or more.
fn fill_queue(t: &DatagramTransport, size: usize, n: usize) -> usize {
    let mut sent = 0;
    while t.get_write_buffer_size() < n {
        let mut d = vec![0u8; size];
        d[..8].copy_from_slice(&(sent as u64).to_le_bytes());
        t.sendto(&d, None).unwrap();
        sent += 1;
        assert!(sent < 1_000_000, "the queue never filled");
    }
    sent
}

/// Read every datagram waiting on `peer` (non-blocking); returns their sequence numbers.
fn drain_peer(peer: &UnixDatagram, out: &mut Vec<u64>) {
    peer.set_nonblocking(true).unwrap();
    let mut buf = vec![0u8; 65536];
    while let Ok(n) = peer.recv(&mut buf) {
        assert!(n >= 8);
        out.push(u64::from_le_bytes(buf[..8].try_into().unwrap()));
    }
}

#[test]
fn flow_control_counts_queued_bytes_and_pairs_pause_resume() {
    let lp = EventLoop::new().unwrap();
    let l = log();
    let (t, peer) = unix_pair_transport(&lp, &l);
    assert_eq!(t.get_write_buffer_limits(), (16 * 1024, 64 * 1024));
    t.set_write_buffer_limits(Some(4000), Some(1000)).unwrap();
    assert_eq!(t.get_write_buffer_limits(), (1000, 4000));
    let sent = fill_queue(&t, 1000, 4001);
    // Queued bytes are payload bytes: a multiple of the datagram size.
    assert_eq!(t.get_write_buffer_size() % 1000, 0);
    assert_eq!(t.get_write_buffer_size(), t.queued_datagrams() * 1000);
    assert_eq!(count(&l, "pause"), 1, "paused once, strictly over high");
    assert!(matches!(l.borrow().last(), Some(Ev::Pause(5000))));
    assert!(t.is_writing_paused());
    // More sends while paused: queued, no second pause.
    t.sendto(&[0u8; 1000], None).unwrap();
    assert_eq!(count(&l, "pause"), 1);
    let total = sent + 1;
    // Drain the peer until everything arrived; resume comes once, at <= low.
    let mut seqs = Vec::new();
    must(&lp, 10.0, "all datagrams", || {
        drain_peer(&peer, &mut seqs);
        seqs.len() == total
    });
    assert_eq!(count(&l, "resume"), 1);
    let resumed_at = l.borrow().iter().find_map(|e| if let Ev::Resume(n) = e { Some(*n) } else { None }).unwrap();
    assert!(resumed_at <= 1000, "resumed at {resumed_at}");
    assert_eq!(t.get_write_buffer_size(), 0);
    // Order kept (the last one is the extra unnumbered 0).
    assert_eq!(&seqs[..sent], &(0..sent as u64).collect::<Vec<_>>()[..]);
    // Setting a limit below the current size pauses at once.
    fill_queue(&t, 1000, 1);
    t.set_write_buffer_limits(Some(0), None).unwrap();
    assert_eq!(count(&l, "pause"), 2);
    t.abort();
    must(&lp, 5.0, "lost", || count(&l, "lost") == 1);
    assert!(t.set_write_buffer_limits(Some(1), Some(2)).is_err());
}

#[test]
fn a_queue_of_addressed_datagrams_drains_in_order_to_each_address() {
    // An unconnected sender with datagrams for two receivers queued in turn
    // (the first receiver is not read, so the kernel refuses with EAGAIN):
    // the queue drains in batches once both are read, each datagram reaching
    // its own address, in order, none lost or doubled.
    let lp = EventLoop::new().unwrap();
    let l = log();
    let dir = std::env::temp_dir().join(format!("fl-udp-batch-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    let (pa, pb) = (dir.join("a"), dir.join("b"));
    let (ra, rb) = (UnixDatagram::bind(&pa).unwrap(), UnixDatagram::bind(&pb).unwrap());
    let l2 = l.clone();
    let sender = UnixDatagram::unbound().unwrap();
    let (t, _) = complete(&lp, &lp.create_datagram_endpoint_from_socket(move || Rec::new(&l2), sender), 5.0).unwrap();
    let to_a = Address::Unix(pa.to_str().unwrap().to_string());
    let to_b = Address::Unix(pb.to_str().unwrap().to_string());
    let mut sent = 0u64;
    while t.queued_datagrams() < 200 {
        let d = sent.to_le_bytes();
        t.sendto(&d, Some(if sent % 2 == 0 { &to_a } else { &to_b })).unwrap();
        sent += 1;
        assert!(sent < 1_000_000, "the queue never filled");
    }
    let (mut got_a, mut got_b) = (Vec::new(), Vec::new());
    must(&lp, 10.0, "every datagram", || {
        drain_peer(&ra, &mut got_a);
        drain_peer(&rb, &mut got_b);
        got_a.len() + got_b.len() == sent as usize
    });
    assert_eq!(got_a, (0..sent).filter(|n| n % 2 == 0).collect::<Vec<_>>());
    assert_eq!(got_b, (0..sent).filter(|n| n % 2 == 1).collect::<Vec<_>>());
    assert_eq!(t.get_write_buffer_size(), 0);
    assert_eq!(count(&l, "error"), 0);
    t.close();
    must(&lp, 5.0, "lost", || count(&l, "lost") == 1);
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn close_sends_the_queue_first_then_connection_lost() {
    let lp = EventLoop::new().unwrap();
    let l = log();
    let (t, peer) = unix_pair_transport(&lp, &l);
    let sent = fill_queue(&t, 2000, 100_000);
    t.close();
    assert!(t.is_closing());
    run_for(&lp, 0.05);
    assert_eq!(count(&l, "lost"), 0, "connection_lost waits for the queue");
    t.sendto(b"ignored after close? no: still queued while flushing", None).unwrap();
    let mut seqs = Vec::new();
    must(&lp, 10.0, "lost after flush", || {
        drain_peer(&peer, &mut seqs);
        count(&l, "lost") == 1
    });
    drain_peer(&peer, &mut seqs);
    assert_eq!(seqs.len(), sent + 1, "every queued datagram was sent before connection_lost");
    assert!(matches!(l.borrow().last(), Some(Ev::Lost(None))));
    // After connection_lost, sends are dropped without error.
    for _ in 0..10 {
        t.sendto(b"late", None).unwrap();
    }
    assert_eq!(t.get_write_buffer_size(), 0);
}

#[test]
fn abort_drops_the_queue() {
    let lp = EventLoop::new().unwrap();
    let l = log();
    let (t, peer) = unix_pair_transport(&lp, &l);
    fill_queue(&t, 2000, 100_000);
    let mut before = Vec::new();
    drain_peer(&peer, &mut before); // what the kernel took before the queue formed
    t.abort();
    assert_eq!(t.get_write_buffer_size(), 0);
    must(&lp, 5.0, "lost", || count(&l, "lost") == 1);
    assert!(matches!(l.borrow().last(), Some(Ev::Lost(None))));
    let mut after = Vec::new();
    drain_peer(&peer, &mut after);
    assert!(after.is_empty(), "nothing queued was sent after abort: {} datagrams", after.len());
    // Closing an aborted transport changes nothing.
    t.close();
    run_for(&lp, 0.02);
    assert_eq!(count(&l, "lost"), 1);
}

#[test]
fn pause_reading_stops_delivery_until_resumed() {
    let lp = EventLoop::new().unwrap();
    let l = log();
    let l2 = l.clone();
    let factory = move || {
        let mut r = Rec::new(&l2);
        r.on_dgram = Some(Box::new(|t: &DatagramTransport, _d: &[u8], _a: &Address| t.pause_reading()));
        r
    };
    let (t, _) = complete(&lp, &lp.create_datagram_endpoint(factory, local("127.0.0.1")), 5.0).unwrap();
    let peer = UdpSocket::bind("127.0.0.1:0").unwrap();
    for i in 0..5u8 {
        peer.send_to(&[i], inet(&t)).unwrap();
    }
    must(&lp, 5.0, "first", || count(&l, "dgram") == 1);
    run_for(&lp, 0.05);
    assert_eq!(count(&l, "dgram"), 1, "paused inside datagram_received: no more deliveries");
    assert!(!t.is_reading());
    for expect in 2..=5 {
        t.resume_reading();
        must(&lp, 5.0, "one more", || count(&l, "dgram") == expect);
    }
    assert_eq!(dgrams(&l).iter().map(|d| d.0[0]).collect::<Vec<_>>(), [0, 1, 2, 3, 4]);
    t.close();
    must(&lp, 5.0, "lost", || count(&l, "lost") == 1);
}

#[test]
fn unix_datagram_endpoints_with_paths_and_abstract_names() {
    let lp = EventLoop::new().unwrap();
    let dir = std::env::temp_dir().join(format!("ferroloop-udp-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    let spath = dir.join("server.sock");
    // A stale socket file is replaced, as asyncio does.
    drop(UnixDatagram::bind(&spath).unwrap());
    let slog = log();
    let s2 = slog.clone();
    let (st, _) =
        complete(&lp, &lp.create_unix_datagram_endpoint(move || Rec::echo(&s2), Some(&spath), None), 5.0).unwrap();
    let sname = spath.to_str().unwrap().to_string();
    assert_eq!(st.sockname(), Some(Address::Unix(sname.clone())));

    let cpath = dir.join("client.sock");
    let clog = log();
    let c2 = clog.clone();
    let (ct, _) =
        complete(&lp, &lp.create_unix_datagram_endpoint(move || Rec::new(&c2), Some(&cpath), Some(&spath)), 5.0)
            .unwrap();
    assert_eq!(ct.peername(), Some(Address::Unix(sname.clone())));
    ct.sendto(b"over unix", None).unwrap();
    must(&lp, 5.0, "echo", || count(&clog, "dgram") == 1);
    assert_eq!(dgrams(&slog)[0], (b"over unix".to_vec(), Address::Unix(cpath.to_str().unwrap().to_string())));
    assert_eq!(dgrams(&clog)[0], (b"over unix".to_vec(), Address::Unix(sname.clone())));

    // An unnamed sender: the server sees "" (and cannot answer it).
    let anon = UnixDatagram::unbound().unwrap();
    anon.send_to(b"anon", &spath).unwrap();
    must(&lp, 5.0, "anon", || count(&slog, "dgram") == 2);
    assert_eq!(dgrams(&slog)[1].1, Address::Unix(String::new()));
    must(&lp, 5.0, "echo to nobody fails", || count(&slog, "error") == 1);

    // Abstract names, written with their leading NUL.
    let aname = format!("\0ferroloop-udp-test-{}", std::process::id());
    let alog = log();
    let a2 = alog.clone();
    let apath = std::path::PathBuf::from(std::ffi::OsString::from(aname.clone()));
    let (at, _) =
        complete(&lp, &lp.create_unix_datagram_endpoint(move || Rec::new(&a2), Some(&apath), None), 5.0).unwrap();
    assert_eq!(at.sockname(), Some(Address::Unix(aname.clone())));
    at.sendto(b"abstract", Some(&Address::Unix(sname.clone()))).unwrap();
    must(&lp, 5.0, "abstract echo", || count(&alog, "dgram") == 1);
    assert_eq!(dgrams(&slog)[2].1, Address::Unix(aname.clone()));
    ct.sendto(b"to abstract", None).unwrap();
    st.sendto(b"server to abstract", Some(&Address::Unix(aname))).unwrap();
    must(&lp, 5.0, "second", || count(&alog, "dgram") == 2);

    for t in [&st, &ct, &at] {
        t.close();
    }
    must(&lp, 5.0, "all lost", || [&slog, &clog, &alog].iter().all(|l| count(l, "lost") == 1));
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn existing_socket_and_unbound_family_endpoint() {
    let lp = EventLoop::new().unwrap();
    // sock=: an already bound std socket.
    let std_sock = UdpSocket::bind("127.0.0.1:0").unwrap();
    let addr = std_sock.local_addr().unwrap();
    let l = log();
    let l2 = l.clone();
    let (t, _) = complete(&lp, &lp.create_datagram_endpoint_from_socket(move || Rec::echo(&l2), std_sock), 5.0).unwrap();
    assert_eq!(inet(&t), addr);

    // No address: the family is required (asyncio's ValueError).
    let err = complete(&lp, &lp.create_datagram_endpoint(|| Rec::new(&log()), DatagramOptions::default()), 5.0)
        .unwrap_err();
    assert!(matches!(err, Error::InvalidArgument(_)));
    assert_eq!(err.to_string(), "unexpected address family");

    // With a family: unbound until the first send; it must give an address.
    let ul = log();
    let u2 = ul.clone();
    let opts = DatagramOptions { family: Some(Family::V4), ..Default::default() };
    let (ut, _) = complete(&lp, &lp.create_datagram_endpoint(move || Rec::new(&u2), opts), 5.0).unwrap();
    assert_eq!(ut.peername(), None);
    ut.sendto(b"ping", Some(&Address::Inet(addr))).unwrap();
    must(&lp, 5.0, "echo", || count(&ul, "dgram") == 1);
    assert_eq!(dgrams(&ul)[0], (b"ping".to_vec(), Address::Inet(addr)));
    // Without an address and no peer, the kernel says EDESTADDRREQ, reported.
    ut.sendto(b"where?", None).unwrap();
    assert_eq!(errors(&ul), [Some(libc::EDESTADDRREQ)]);

    // Families that do not match: asyncio's "can not get address information".
    let opts = DatagramOptions {
        local_addr: Some(("127.0.0.1".into(), 0)),
        remote_addr: Some(("::1".into(), 9)),
        ..Default::default()
    };
    let err = complete(&lp, &lp.create_datagram_endpoint(|| Rec::new(&log()), opts), 5.0).unwrap_err();
    assert_eq!(err.to_string(), "can not get address information");

    // A family filter that excludes the address.
    let opts = DatagramOptions { family: Some(Family::V6), ..local("127.0.0.1") };
    let err = complete(&lp, &lp.create_datagram_endpoint(|| Rec::new(&log()), opts), 5.0).unwrap_err();
    assert_eq!(err.to_string(), "can not get address information");

    // A stream socket is refused.
    let tcp = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let e = ferroloop::DatagramSocket::from_fd(tcp.into()).unwrap_err();
    assert_eq!(e.raw_os_error(), Some(libc::EPROTOTYPE));

    t.close();
    ut.close();
    must(&lp, 5.0, "lost", || count(&l, "lost") == 1 && count(&ul, "lost") == 1);
}

#[test]
fn socket_options_only_when_asked_and_bind_errors_keep_errno() {
    let lp = EventLoop::new().unwrap();
    let (t, _) = complete(&lp, &lp.create_datagram_endpoint(|| Rec::new(&log()), local("127.0.0.1")), 5.0).unwrap();
    let d = dup_of(&t);
    let s = socket2::SockRef::from(&d);
    assert!(!s.reuse_port().unwrap());
    assert!(!s.broadcast().unwrap());
    assert!(!s.reuse_address().unwrap());
    let port = inet(&t).port();

    let opts = DatagramOptions { reuse_port: true, allow_broadcast: true, ..local("127.0.0.1") };
    let (t2, _) = complete(&lp, &lp.create_datagram_endpoint(|| Rec::new(&log()), opts), 5.0).unwrap();
    let d2 = dup_of(&t2);
    let s2 = socket2::SockRef::from(&d2);
    assert!(s2.reuse_port().unwrap());
    assert!(s2.broadcast().unwrap());

    // The port of `t` is taken (no SO_REUSEPORT there): EADDRINUSE, as a bind error.
    let opts = DatagramOptions { local_addr: Some(("127.0.0.1".into(), port)), ..Default::default() };
    let err = complete(&lp, &lp.create_datagram_endpoint(|| Rec::new(&log()), opts), 5.0).unwrap_err();
    assert_eq!(err.errno(), Some(libc::EADDRINUSE));
    assert!(err.to_string().contains("error while attempting to bind on address"), "{err}");

    // Two reuse_port sockets share one port.
    let opts = DatagramOptions { reuse_port: true, ..local("127.0.0.1") };
    let (a, _) = complete(&lp, &lp.create_datagram_endpoint(|| Rec::new(&log()), opts), 5.0).unwrap();
    let shared_port = inet(&a).port();
    let opts = DatagramOptions { reuse_port: true, local_addr: Some(("127.0.0.1".into(), shared_port)), ..Default::default() };
    let (b, _) = complete(&lp, &lp.create_datagram_endpoint(|| Rec::new(&log()), opts), 5.0).unwrap();
    assert_eq!(inet(&b).port(), shared_port);

    // allow_broadcast with remote_addr: not connected, the address is the default destination.
    let peer = UdpSocket::bind("127.0.0.1:0").unwrap();
    let opts = DatagramOptions {
        remote_addr: Some(("127.0.0.1".into(), peer.local_addr().unwrap().port())),
        allow_broadcast: true,
        ..Default::default()
    };
    let (bt, _) = complete(&lp, &lp.create_datagram_endpoint(|| Rec::new(&log()), opts), 5.0).unwrap();
    assert_eq!(bt.peername(), None);
    bt.sendto(b"default destination", None).unwrap();
    let mut buf = [0u8; 64];
    peer.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    let n = peer.recv(&mut buf).unwrap();
    assert_eq!(&buf[..n], b"default destination");

    for x in [t, t2, a, b, bt] {
        x.abort();
    }
    run_for(&lp, 0.02);
    assert_eq!(lp.registered_sources(), 0);
}

#[test]
fn ipv6_endpoints_when_available() {
    if UdpSocket::bind("[::1]:0").is_err() {
        eprintln!("no IPv6 loopback: skipped");
        return;
    }
    let lp = EventLoop::new().unwrap();
    let slog = log();
    let s2 = slog.clone();
    let (st, _) = complete(&lp, &lp.create_datagram_endpoint(move || Rec::echo(&s2), local("::1")), 5.0).unwrap();
    let saddr = inet(&st);
    assert!(saddr.is_ipv6());
    let clog = log();
    let c2 = clog.clone();
    let opts = DatagramOptions { remote_addr: Some(("::1".into(), saddr.port())), ..Default::default() };
    let (ct, _) = complete(&lp, &lp.create_datagram_endpoint(move || Rec::new(&c2), opts), 5.0).unwrap();
    ct.sendto(b"six", None).unwrap();
    must(&lp, 5.0, "echo", || count(&clog, "dgram") == 1);
    assert_eq!(dgrams(&clog)[0], (b"six".to_vec(), Address::Inet(saddr)));
    st.close();
    ct.close();
    must(&lp, 5.0, "lost", || count(&slog, "lost") == 1 && count(&clog, "lost") == 1);
}

#[test]
fn resolves_names_off_the_loop() {
    let lp = EventLoop::new().unwrap();
    let opts = DatagramOptions { local_addr: Some(("localhost".into(), 0)), family: Some(Family::V4), ..Default::default() };
    let (t, _) = complete(&lp, &lp.create_datagram_endpoint(|| Rec::new(&log()), opts), 10.0).unwrap();
    assert!(inet(&t).ip().is_loopback());
    t.close();
    run_for(&lp, 0.02);
}

/// Echo server with a client keeping a window of datagrams in flight:
/// 100,000 sequence-numbered datagrams; each one is answered exactly once,
/// unless the kernel dropped it (counted when a window stalls).
#[test]
fn hundred_thousand_datagrams_counted() {
    const TOTAL: u64 = 100_000;
    const WINDOW: usize = 64;
    let lp = EventLoop::new().unwrap();
    let (st, _) = complete(
        &lp,
        &lp.create_datagram_endpoint(
            || Rec { echo: true, ..Rec::new(&Rc::new(RefCell::new(Vec::new()))) },
            local("127.0.0.1"),
        ),
        5.0,
    )
    .unwrap();

    struct Client {
        t: Option<DatagramTransport>,
        next: u64,
        in_flight: HashSet<u64>,
        seen: HashSet<u64>,
        duplicates: u64,
        wrong: u64,
    }
    impl Client {
        fn refill(&mut self) {
            let t = self.t.clone().unwrap();
            while self.in_flight.len() < WINDOW && self.next < TOTAL {
                let mut d = [0u8; 32];
                d[..8].copy_from_slice(&self.next.to_le_bytes());
                d[8..16].copy_from_slice(&(!self.next).to_le_bytes());
                t.sendto(&d, None).unwrap();
                self.in_flight.insert(self.next);
                self.next += 1;
            }
        }
    }
    impl DatagramProtocol for Client {
        fn connection_made(&mut self, t: DatagramTransport) {
            self.t = Some(t);
            self.refill();
        }
        fn datagram_received(&mut self, data: &[u8], _addr: &Address) {
            let seq = u64::from_le_bytes(data[..8].try_into().unwrap());
            if data.len() != 32 || u64::from_le_bytes(data[8..16].try_into().unwrap()) != !seq {
                self.wrong += 1;
            }
            if !self.seen.insert(seq) {
                self.duplicates += 1;
            }
            self.in_flight.remove(&seq);
            self.refill();
        }
        fn error_received(&mut self, exc: Error) {
            panic!("unexpected error_received: {exc}");
        }
    }
    let opts = DatagramOptions { remote_addr: Some(("127.0.0.1".into(), inet(&st).port())), ..Default::default() };
    let fut = lp.create_datagram_endpoint(
        || Client { t: None, next: 0, in_flight: HashSet::new(), seen: HashSet::new(), duplicates: 0, wrong: 0 },
        opts,
    );
    let (_ct, client) = complete(&lp, &fut, 5.0).unwrap();
    let mut lost = 0u64;
    loop {
        let before = client.borrow().seen.len();
        let done = run_until(&lp, Duration::from_millis(500), || {
            let c = client.borrow();
            c.next == TOTAL && c.in_flight.is_empty()
        });
        if done {
            break;
        }
        let mut c = client.borrow_mut();
        if c.seen.len() == before {
            // Stalled for 500 ms: what is in flight was dropped by the kernel.
            lost += c.in_flight.len() as u64;
            c.in_flight.clear();
            c.refill();
        }
    }
    let c = client.borrow();
    assert_eq!(c.duplicates, 0);
    assert_eq!(c.wrong, 0);
    assert_eq!(c.seen.len() as u64 + lost, TOTAL, "every datagram answered or counted as lost");
    assert!(lost < TOTAL / 100, "loopback lost {lost} of {TOTAL}");
    eprintln!("100000 datagrams: {} answered, {lost} dropped by the kernel", c.seen.len());
}

fn have_socat() -> bool {
    std::process::Command::new("socat")
        .arg("-V")
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .status()
        .map(|s| s.success())
        .unwrap_or(false)
}

/// Run the loop until `child` exits (at most `secs`); its stdout.
fn run_child(lp: &EventLoop, mut child: std::process::Child, secs: f64) -> String {
    let mut status = None;
    let ok = run_until(lp, Duration::from_secs_f64(secs), || {
        status = status.or_else(|| child.try_wait().unwrap());
        status.is_some()
    });
    if !ok {
        let _ = child.kill();
    }
    let out = child.wait_with_output().unwrap();
    assert!(ok, "socat did not finish: {}", String::from_utf8_lossy(&out.stderr));
    assert!(out.status.success(), "socat failed: {}", String::from_utf8_lossy(&out.stderr));
    String::from_utf8_lossy(&out.stdout).into_owned()
}

#[test]
fn socat_interop_udp_and_unix_datagrams() {
    use std::io::Write as _;
    use std::process::{Command, Stdio};
    if !have_socat() {
        println!("SKIPPED: socat not installed");
        return;
    }
    let lp = EventLoop::new().unwrap();
    // socat as a UDP client of our echo server.
    let l = log();
    let l2 = l.clone();
    let (t, _) = complete(&lp, &lp.create_datagram_endpoint(move || Rec::echo(&l2), local("127.0.0.1")), 5.0).unwrap();
    let port = inet(&t).port();
    let mut child = Command::new("socat")
        .args(["-t", "2", "-", &format!("UDP:127.0.0.1:{port}")])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    child.stdin.take().unwrap().write_all(b"hello from socat\n").unwrap();
    assert_eq!(run_child(&lp, child, 10.0), "hello from socat\n");
    assert_eq!(dgrams(&l)[0].0, b"hello from socat\n");
    t.close();

    // socat on a Unix datagram socket, bound so that our echo can answer.
    let dir = std::env::temp_dir().join(format!("ferroloop-udp-socat-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    let spath = dir.join("server.sock");
    let cpath = dir.join("socat.sock");
    let ul = log();
    let u2 = ul.clone();
    let (ut, _) =
        complete(&lp, &lp.create_unix_datagram_endpoint(move || Rec::echo(&u2), Some(&spath), None), 5.0).unwrap();
    let mut child = Command::new("socat")
        .args([
            "-t",
            "2",
            "-",
            &format!("UNIX-SENDTO:{},bind={}", spath.display(), cpath.display()),
        ])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    child.stdin.take().unwrap().write_all(b"unix datagram\n").unwrap();
    assert_eq!(run_child(&lp, child, 10.0), "unix datagram\n");
    assert_eq!(dgrams(&ul)[0], (b"unix datagram\n".to_vec(), Address::Unix(cpath.to_str().unwrap().to_string())));
    ut.close();
    must(&lp, 5.0, "lost", || count(&l, "lost") == 1 && count(&ul, "lost") == 1);
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn many_waiting_datagrams_arrive_in_order_across_batches() {
    let lp = EventLoop::new().unwrap();
    let l = log();
    let l2 = l.clone();
    let (t, _) = complete(&lp, &lp.create_datagram_endpoint(move || Rec::new(&l2), local("127.0.0.1")), 5.0).unwrap();
    let peer = UdpSocket::bind("127.0.0.1:0").unwrap();
    // More than one batch and more than one readiness event's budget, all
    // waiting before the loop looks (within the default receive buffer);
    // sizes vary, one is the largest payload.
    let sizes: Vec<usize> = (0..100).map(|i| if i == 37 { 65_507 } else { 1 + i * 13 % 200 }).collect();
    for (i, n) in sizes.iter().enumerate() {
        let mut d = vec![(i % 251) as u8; *n];
        d[0] = (i % 256) as u8;
        peer.send_to(&d, inet(&t)).unwrap();
    }
    must(&lp, 10.0, "all datagrams", || count(&l, "dgram") == sizes.len());
    let got = dgrams(&l);
    for (i, (d, a)) in got.iter().enumerate() {
        assert_eq!(d.len(), sizes[i], "datagram {i}");
        assert_eq!(d[0], (i % 256) as u8, "order kept");
        assert_eq!(*a, Address::Inet(peer.local_addr().unwrap()));
    }

    // Paused inside datagram_received with the rest of a batch already read,
    // then closed: the rest is never delivered.
    let l3 = log();
    let l4 = l3.clone();
    let factory = move || {
        let mut r = Rec::new(&l4);
        r.on_dgram = Some(Box::new(|t: &DatagramTransport, _d: &[u8], _a: &Address| t.pause_reading()));
        r
    };
    let (pt, _) = complete(&lp, &lp.create_datagram_endpoint(factory, local("127.0.0.1")), 5.0).unwrap();
    for i in 0..10u8 {
        peer.send_to(&[i], inet(&pt)).unwrap();
    }
    must(&lp, 5.0, "first", || count(&l3, "dgram") == 1);
    pt.close();
    must(&lp, 5.0, "lost", || count(&l3, "lost") == 1);
    assert_eq!(count(&l3, "dgram"), 1);
    t.close();
    must(&lp, 5.0, "lost", || count(&l, "lost") == 1);
}
