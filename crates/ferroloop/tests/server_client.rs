//! Servers (create_server and friends, Server's methods) and clients
//! (create_connection, Happy Eyeballs, adopting sockets, extra info).

mod common;

use std::cell::RefCell;
use std::io::Write;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, Shutdown, SocketAddr, TcpListener, TcpStream, ToSocketAddrs};
use std::os::unix::net::UnixStream;
use std::rc::Rc;
use std::time::{Duration, Instant};

use common::*;
use ferroloop::{Address, ConnectOptions, Error, EventLoop, ExtraInfo, Host, Server, ServerOptions};

type Logs = Shared<Vec<Shared<Log>>>;

/// A factory of echoing recorders whose logs land in `logs`.
fn echo_factory(logs: &Logs) -> impl Fn() -> Recorder + 'static {
    let logs = logs.clone();
    move || {
        let r = Recorder::new().on_data(|t, d| t.write(d).unwrap());
        logs.borrow_mut().push(r.log.clone());
        r
    }
}

fn new_logs() -> Logs {
    Rc::new(RefCell::new(Vec::new()))
}

fn addrs(server: &Server) -> Vec<SocketAddr> {
    server
        .sockets()
        .iter()
        .map(|s| match &s.address {
            Some(Address::Inet(a)) => *a,
            other => panic!("not an inet address: {other:?}"),
        })
        .collect()
}

fn start_server(lp: &EventLoop, logs: &Logs, host: impl Into<Host>, port: u16, opts: ServerOptions) -> ferroloop::Result<Server> {
    complete(lp, &lp.create_server(echo_factory(logs), host, port, opts), 10.0)
}

/// Connect a std client to `addr`, send `msg` and read the echo while running the loop.
#[track_caller]
fn echo_roundtrip(lp: &EventLoop, addr: SocketAddr, msg: &[u8]) -> TcpStream {
    let mut c = TcpStream::connect_timeout(&addr, Duration::from_secs(5)).expect("connect");
    c.write_all(msg).unwrap();
    let back = pump_read_exact(lp, &c, msg.len());
    assert_eq!(back, msg);
    c
}

fn loopback(a: SocketAddr) -> SocketAddr {
    match a.ip() {
        IpAddr::V4(ip) if ip.is_unspecified() => SocketAddr::new(Ipv4Addr::LOCALHOST.into(), a.port()),
        IpAddr::V6(ip) if ip.is_unspecified() => SocketAddr::new(Ipv6Addr::LOCALHOST.into(), a.port()),
        _ => a,
    }
}

fn ipv6_available() -> bool {
    TcpListener::bind("[::1]:0").is_ok()
}

// ---------------------------------------------------------------------------
// servers

#[test]
fn create_server_on_127_0_0_1_port_0() {
    let lp = EventLoop::new().unwrap();
    let logs = new_logs();
    let server = start_server(&lp, &logs, "127.0.0.1", 0, ServerOptions::default()).unwrap();
    let a = addrs(&server);
    assert_eq!(a.len(), 1);
    assert_eq!(a[0].ip(), IpAddr::V4(Ipv4Addr::LOCALHOST));
    assert_ne!(a[0].port(), 0, "port 0 picks a free port");
    assert!(server.sockets()[0].fd >= 0);
    assert!(server.is_serving());
    assert!(!server.is_closed());
    let c = echo_roundtrip(&lp, a[0], b"hello server");
    let log = logs.borrow()[0].clone();
    let t = log.borrow().transport();
    assert_eq!(t.peername(), Some(Address::Inet(c.local_addr().unwrap())));
    assert_eq!(t.sockname(), Some(Address::Inet(a[0])));
    assert_eq!(server.active_connections(), 1);
    drop(c);
    must(&lp, 10.0, "server side lost", || log.borrow().is_lost());
    assert_eq!(server.active_connections(), 0);
    assert_contract(&log.borrow(), true, true);
    server.close();
    assert!(!server.is_serving());
    assert!(server.sockets().is_empty());
}

#[test]
fn host_any_binds_both_ipv4_and_ipv6() {
    if !ipv6_available() {
        println!("SKIPPED: no IPv6 loopback on this machine");
        return;
    }
    let lp = EventLoop::new().unwrap();
    let logs = new_logs();
    for host in [Host::Any, Host::from(""), Host::from(None)] {
        let server = start_server(&lp, &logs, host.clone(), 0, ServerOptions::default()).unwrap();
        let a = addrs(&server);
        assert_eq!(a.len(), 2, "{host:?}: {a:?}");
        assert!(a.iter().any(|x| x.ip() == IpAddr::V4(Ipv4Addr::UNSPECIFIED)), "{a:?}");
        assert!(a.iter().any(|x| x.ip() == IpAddr::V6(Ipv6Addr::UNSPECIFIED)), "{a:?}");
        for x in &a {
            echo_roundtrip(&lp, loopback(*x), b"any");
        }
        server.close();
    }
}

#[test]
fn host_names_bind_each_resolved_address_once() {
    let lp = EventLoop::new().unwrap();
    let logs = new_logs();
    // Two hosts: two sockets.
    let server = start_server(&lp, &logs, vec!["127.0.0.1", "127.0.0.2"], 0, ServerOptions::default()).unwrap();
    let a = addrs(&server);
    assert_eq!(a.len(), 2, "{a:?}");
    let ips: Vec<IpAddr> = a.iter().map(|x| x.ip()).collect();
    assert!(ips.contains(&"127.0.0.1".parse().unwrap()) && ips.contains(&"127.0.0.2".parse().unwrap()));
    for x in &a {
        echo_roundtrip(&lp, *x, b"names");
    }
    server.close();
    // A name (resolved off the loop thread) and the literal it resolves to:
    // asyncio makes a set of the addresses, so one socket.
    let server = start_server(&lp, &logs, vec!["localhost", "127.0.0.1"], 0, ServerOptions::default()).unwrap();
    let a = addrs(&server);
    assert!(a.iter().filter(|x| x.ip() == IpAddr::V4(Ipv4Addr::LOCALHOST)).count() == 1, "{a:?}");
    server.close();
    if ipv6_available() {
        let server = start_server(&lp, &logs, vec!["127.0.0.1", "::1"], 0, ServerOptions::default()).unwrap();
        let a = addrs(&server);
        assert_eq!(a.len(), 2, "{a:?}");
        for x in &a {
            echo_roundtrip(&lp, *x, b"v4 and v6");
        }
        server.close();
    }
}

#[test]
fn reuse_port_lets_two_servers_share_a_port() {
    let lp = EventLoop::new().unwrap();
    let (l1, l2) = (new_logs(), new_logs());
    let opts = ServerOptions { reuse_port: true, ..Default::default() };
    let s1 = start_server(&lp, &l1, "127.0.0.1", 0, opts.clone()).unwrap();
    let port = addrs(&s1)[0].port();
    let s2 = start_server(&lp, &l2, "127.0.0.1", port, opts).unwrap();
    assert_eq!(addrs(&s2)[0].port(), port);
    // Without reuse_port the port is busy.
    let e = start_server(&lp, &new_logs(), "127.0.0.1", port, ServerOptions::default()).unwrap_err();
    assert_eq!(e.errno(), Some(libc::EADDRINUSE), "{e:?}");
    // The kernel spreads connections over both (by 4-tuple hash): with 32
    // connections, all on one server has probability 2^-31.
    let mut clients = Vec::new();
    for i in 0..32u8 {
        clients.push(echo_roundtrip(&lp, addrs(&s1)[0], &[i; 3]));
    }
    assert_eq!(l1.borrow().len() + l2.borrow().len(), 32);
    assert!(!l1.borrow().is_empty() && !l2.borrow().is_empty(), "{} / {}", l1.borrow().len(), l2.borrow().len());
}

#[test]
fn create_server_from_a_std_listener() {
    let lp = EventLoop::new().unwrap();
    let logs = new_logs();
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = listener.local_addr().unwrap();
    let server = lp.create_server_from_listener(echo_factory(&logs), listener, ServerOptions::default()).unwrap();
    assert_eq!(addrs(&server), vec![addr]);
    assert!(server.is_serving());
    echo_roundtrip(&lp, addr, b"from listener");
    server.close();
}

#[test]
fn unix_server_from_a_listener() {
    let lp = EventLoop::new().unwrap();
    let logs = new_logs();
    let path = std::env::temp_dir().join(format!("ferroloop-test-{}.sock", std::process::id()));
    let _ = std::fs::remove_file(&path);
    let listener = std::os::unix::net::UnixListener::bind(&path).unwrap();
    let server = lp.create_server_from_unix_listener(echo_factory(&logs), listener, ServerOptions::default()).unwrap();
    let spath = path.to_string_lossy().into_owned();
    assert_eq!(server.sockets()[0].address, Some(Address::Unix(spath.clone())));
    let mut c = UnixStream::connect(&path).unwrap();
    c.write_all(b"over unix").unwrap();
    c.set_nonblocking(true).unwrap();
    let mut back = Vec::new();
    pump_read(&lp, &mut c, &mut back, 10.0, |b, eof| b.len() >= 9 || eof);
    assert_eq!(back, b"over unix");
    let t = logs.borrow()[0].borrow().transport();
    assert_eq!(t.sockname(), Some(Address::Unix(spath)));
    assert_eq!(t.peername(), Some(Address::Unix(String::new())));
    drop(c);
    must(&lp, 10.0, "lost", || logs.borrow()[0].borrow().is_lost());
    server.close();
    let _ = std::fs::remove_file(&path);
}

#[test]
fn start_serving_false_then_start_serving() {
    let lp = EventLoop::new().unwrap();
    let logs = new_logs();
    let opts = ServerOptions { start_serving: false, ..Default::default() };
    let server = start_server(&lp, &logs, "127.0.0.1", 0, opts).unwrap();
    assert!(!server.is_serving());
    let addr = addrs(&server)[0];
    // The kernel completes the handshake (backlog); the loop does not accept.
    let mut c = TcpStream::connect(addr).unwrap();
    c.write_all(b"waiting").unwrap();
    run_for(&lp, 0.1);
    assert!(logs.borrow().is_empty(), "accepted before start_serving");
    server.start_serving().unwrap();
    server.start_serving().unwrap(); // twice: nothing
    assert!(server.is_serving());
    let back = pump_read_exact(&lp, &c, 7);
    assert_eq!(back, b"waiting");
    assert_eq!(logs.borrow().len(), 1);
    server.close();
    assert!(!server.is_serving());
    match server.start_serving() {
        Err(Error::InvalidState(m)) => assert!(m.contains("is closed"), "{m}"),
        other => panic!("start_serving after close: {other:?}"),
    }
}

#[test]
fn wait_closed_completes_only_after_the_connections_are_lost() {
    let lp = EventLoop::new().unwrap();
    let logs = new_logs();
    let server = start_server(&lp, &logs, "127.0.0.1", 0, ServerOptions::default()).unwrap();
    let addr = addrs(&server)[0];
    let c1 = echo_roundtrip(&lp, addr, b"one");
    let c2 = echo_roundtrip(&lp, addr, b"two");
    server.close();
    assert!(!server.is_serving());
    assert!(server.is_closed());
    assert!(server.sockets().is_empty());
    // The listening socket is closed: new connections are refused.
    let e = TcpStream::connect(addr).unwrap_err();
    assert_eq!(e.raw_os_error(), Some(libc::ECONNREFUSED));
    // Accepted connections stay open and working.
    let mut c1 = c1;
    c1.set_nonblocking(false).unwrap();
    c1.write_all(b"still").unwrap();
    assert_eq!(pump_read_exact(&lp, &c1, 5), b"still");
    let waiter = server.wait_closed();
    run_for(&lp, 0.1);
    assert!(!waiter.done(), "wait_closed completed while connections are open");
    drop(c1);
    run_for(&lp, 0.1);
    assert!(!waiter.done(), "wait_closed completed with one connection left");
    c2.shutdown(Shutdown::Both).unwrap();
    complete(&lp, &waiter, 10.0).unwrap();
    assert!(logs.borrow().iter().all(|l| l.borrow().is_lost()));
    assert_eq!(server.active_connections(), 0);
    // Afterwards wait_closed is ready at once.
    assert!(server.wait_closed().done());
}

#[test]
fn close_clients_and_abort_clients() {
    let lp = EventLoop::new().unwrap();
    let logs = new_logs();
    let server = start_server(&lp, &logs, "127.0.0.1", 0, ServerOptions::default()).unwrap();
    let addr = addrs(&server)[0];
    let clients: Vec<TcpStream> = (0..3).map(|i| echo_roundtrip(&lp, addr, &[b'a' + i; 4])).collect();
    server.close();
    let waiter = server.wait_closed();
    server.close_clients();
    complete(&lp, &waiter, 10.0).unwrap();
    for l in logs.borrow().iter() {
        assert!(l.borrow().lost_error().is_none());
        assert_contract(&l.borrow(), true, true);
    }
    for c in &clients {
        assert!(pump_read_to_eof(&lp, c).is_empty(), "client sees EOF");
    }

    // With data still buffered on the server side: close_clients flushes it
    // first, abort_clients drops it. Both end in connection_lost(None).
    let big = pattern(16 << 20, 21);
    for abort in [false, true] {
        let logs = new_logs();
        let (b2, l2) = (big.clone(), logs.clone());
        let factory = move || {
            let b3 = b2.clone();
            let r = Recorder::new().on_made(move |t| t.write(&b3).unwrap());
            l2.borrow_mut().push(r.log.clone());
            r
        };
        let server = complete(&lp, &lp.create_server(factory, "127.0.0.1", 0, ServerOptions::default()), 10.0).unwrap();
        let client = TcpStream::connect(addrs(&server)[0]).unwrap();
        must(&lp, 10.0, "paused", || logs.borrow().len() == 1 && logs.borrow()[0].borrow().count("pause") == 1);
        let log = logs.borrow()[0].clone();
        let t = log.borrow().transport();
        assert!(t.get_write_buffer_size() > 0);
        if abort {
            server.abort_clients();
            assert_eq!(t.get_write_buffer_size(), 0, "abort_clients drops the buffer");
        } else {
            server.close_clients();
            assert!(t.is_closing());
            run_for(&lp, 0.05);
            assert!(!log.borrow().is_lost(), "close_clients must flush before connection_lost");
        }
        let reader = spawn_reader(client);
        must(&lp, 20.0, "lost", || log.borrow().is_lost());
        assert!(log.borrow().lost_error().is_none());
        must(&lp, 20.0, "client EOF", || reader.is_finished());
        let (got, _) = reader.join().unwrap();
        if abort {
            assert!(got.len() < big.len(), "abort_clients flushed everything");
            assert_bytes_eq(&got, &big[..got.len()], "prefix");
        } else {
            assert_bytes_eq(&got, &big, "close_clients flushes");
        }
        server.close();
    }
}

#[test]
fn serve_forever_returns_after_close_from_a_callback() {
    let lp = EventLoop::new().unwrap();
    let logs = new_logs();
    let server = start_server(&lp, &logs, "127.0.0.1", 0, ServerOptions { start_serving: false, ..Default::default() }).unwrap();
    let addr = addrs(&server)[0];
    let nested: Shared<Option<ferroloop::Result<()>>> = Rc::new(RefCell::new(None));
    let (s2, n2) = (server.clone(), nested.clone());
    lp.call_later(0.02, move || {
        *n2.borrow_mut() = Some(s2.serve_forever());
    })
    .unwrap();
    // A client served while serve_forever runs.
    let th = std::thread::spawn(move || {
        let mut c = TcpStream::connect(addr).unwrap();
        c.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
        c.write_all(b"ping").unwrap();
        let mut buf = [0u8; 4];
        std::io::Read::read_exact(&mut c, &mut buf).unwrap();
        buf
    });
    let s3 = server.clone();
    let lp2 = lp.clone();
    lp.call_later(0.3, move || {
        s3.close();
        // A watchdog in case serve_forever does not return.
        lp2.call_later(10.0, || panic!("serve_forever did not return")).unwrap();
    })
    .unwrap();
    let start = Instant::now();
    server.serve_forever().unwrap();
    assert!(start.elapsed() >= Duration::from_millis(250));
    assert!(start.elapsed() < Duration::from_secs(5));
    assert_eq!(&th.join().unwrap(), b"ping");
    match nested.borrow_mut().take() {
        Some(Err(Error::InvalidState(m))) => assert!(m.contains("already being awaited on serve_forever()"), "{m}"),
        other => panic!("nested serve_forever: {other:?}"),
    }
    assert!(!lp.is_running());
}

#[test]
fn bind_to_a_busy_port_is_a_bind_error_with_eaddrinuse() {
    let lp = EventLoop::new().unwrap();
    let taken = TcpListener::bind("127.0.0.1:0").unwrap();
    let port = taken.local_addr().unwrap().port();
    for reuse in [Some(false), None] {
        let opts = ServerOptions { reuse_address: reuse, ..Default::default() };
        let e = start_server(&lp, &new_logs(), "127.0.0.1", port, opts).unwrap_err();
        match &e {
            Error::Bind { source, .. } => assert_eq!(source.raw_os_error(), Some(libc::EADDRINUSE)),
            other => panic!("expected Error::Bind, got {other:?}"),
        }
        assert_eq!(e.errno(), Some(libc::EADDRINUSE));
        // asyncio: "[Errno 98] error while attempting to bind on address
        // ('127.0.0.1', PORT): address already in use"
        let msg = e.to_string();
        assert!(msg.starts_with("[Errno 98] error while attempting to bind on address"), "{msg}");
        assert!(msg.ends_with(": address already in use"), "{msg}");
        assert!(msg.contains(&port.to_string()), "{msg}");
    }
}

#[test]
fn reuse_address_allows_rebinding_over_time_wait() {
    // The server side closes first, so its end of the connection sits in
    // TIME_WAIT: rebinding the port needs SO_REUSEADDR (asyncio's default on
    // Unix, ferroloop's reuse_address: None).
    let lp = EventLoop::new().unwrap();
    let logs = new_logs();
    let server = start_server(&lp, &logs, "127.0.0.1", 0, ServerOptions::default()).unwrap();
    let port = addrs(&server)[0].port();
    let c = echo_roundtrip(&lp, addrs(&server)[0], b"x");
    server.close();
    server.close_clients();
    assert!(pump_read_to_eof(&lp, &c).is_empty());
    drop(c);
    complete(&lp, &server.wait_closed(), 10.0).unwrap();
    let e = start_server(&lp, &logs, "127.0.0.1", port, ServerOptions { reuse_address: Some(false), ..Default::default() })
        .unwrap_err();
    assert_eq!(e.errno(), Some(libc::EADDRINUSE), "{e:?}");
    let again = start_server(&lp, &logs, "127.0.0.1", port, ServerOptions::default()).unwrap();
    assert_eq!(addrs(&again)[0].port(), port);
    echo_roundtrip(&lp, addrs(&again)[0], b"rebound");
    again.close();
}

#[test]
fn a_panicking_protocol_factory_is_reported_and_the_server_keeps_serving() {
    let lp = EventLoop::new().unwrap();
    let reports = record_exceptions(&lp);
    let n = Rc::new(std::cell::Cell::new(0));
    let logs = new_logs();
    let inner = echo_factory(&logs);
    let n2 = n.clone();
    let factory = move || {
        n2.set(n2.get() + 1);
        if n2.get() == 1 {
            panic!("factory boom");
        }
        inner()
    };
    let server = complete(&lp, &lp.create_server(factory, "127.0.0.1", 0, ServerOptions::default()), 10.0).unwrap();
    let addr = addrs(&server)[0];
    let first = TcpStream::connect(addr).unwrap();
    assert!(pump_read_to_eof(&lp, &first).is_empty(), "the refused connection is closed");
    let reps = reports.borrow().clone();
    assert_eq!(reps.len(), 1);
    assert_eq!(reps[0].message, "Error in protocol factory");
    assert!(matches!(&reps[0].error, Some(Error::Panic(m)) if m == "factory boom"));
    echo_roundtrip(&lp, addr, b"second works");
    server.close();
}

// ---------------------------------------------------------------------------
// clients

#[test]
fn connect_to_a_refused_port_is_econnrefused() {
    let lp = EventLoop::new().unwrap();
    let port = {
        let l = TcpListener::bind("127.0.0.1:0").unwrap();
        l.local_addr().unwrap().port()
    };
    let f = lp.create_connection(Recorder::new, "127.0.0.1", port, ConnectOptions::default());
    let e = complete(&lp, &f, 10.0).unwrap_err();
    assert!(matches!(e, Error::Io(_)), "{e:?}");
    assert_eq!(e.errno(), Some(libc::ECONNREFUSED), "{e}");
    assert!(e.to_string().starts_with("[Errno 111]"), "{e}");
    assert_eq!(lp.registered_sources(), 0, "the failed attempt's socket is deregistered");
}

#[test]
fn connect_to_localhost_resolves_off_the_loop_thread() {
    let lp = EventLoop::new().unwrap();
    let logs = new_logs();
    let server = start_server(&lp, &logs, "127.0.0.1", 0, ServerOptions::default()).unwrap();
    let port = addrs(&server)[0].port();
    let f = lp.create_connection(Recorder::new, "localhost", port, ConnectOptions::default());
    // A name is never resolved inline: the future is pending on return.
    assert!(!f.done());
    let (t, p) = complete(&lp, &f, 10.0).unwrap();
    assert_eq!(t.peername(), Some(Address::Inet(SocketAddr::from(([127, 0, 0, 1], port)))));
    t.write(b"via localhost").unwrap();
    let log = p.borrow().log.clone();
    must(&lp, 10.0, "echo", || log.borrow().data == b"via localhost");
    // getaddrinfo, the loop's resolver on its own.
    let g = lp.getaddrinfo(Some("localhost"), 80).unwrap();
    let addrs = complete(&lp, &g, 10.0).unwrap();
    assert!(addrs.contains(&SocketAddr::from(([127, 0, 0, 1], 80))), "{addrs:?}");
    server.close();
}

#[test]
fn connect_to_an_unresolvable_name_is_a_resolve_error() {
    // asyncio: socket.gaierror from getaddrinfo.
    let lp = EventLoop::new().unwrap();
    let f = lp.create_connection(Recorder::new, "nonexistent.invalid", 80, ConnectOptions::default());
    match complete(&lp, &f, 30.0) {
        Err(Error::Resolve { host, .. }) => assert_eq!(host, "nonexistent.invalid"),
        other => panic!("expected Error::Resolve, got {other:?}"),
    }
}

#[test]
fn connect_with_local_addr() {
    let lp = EventLoop::new().unwrap();
    let logs = new_logs();
    let server = start_server(&lp, &logs, "127.0.0.1", 0, ServerOptions::default()).unwrap();
    let port = addrs(&server)[0].port();
    let opts = ConnectOptions { local_addr: Some("127.0.0.2:0".parse().unwrap()), ..Default::default() };
    let f = lp.create_connection(Recorder::new, "127.0.0.1", port, opts);
    let (t, _p) = complete(&lp, &f, 10.0).unwrap();
    let Some(Address::Inet(local)) = t.sockname() else { panic!("{:?}", t.sockname()) };
    assert_eq!(local.ip(), IpAddr::V4(Ipv4Addr::new(127, 0, 0, 2)));
    must(&lp, 10.0, "accepted", || logs.borrow().len() == 1);
    let srv_t = logs.borrow()[0].borrow().transport();
    assert_eq!(srv_t.peername(), Some(Address::Inet(local)));
    server.close();
}

#[test]
fn connect_with_a_busy_local_addr_fails_with_eaddrinuse() {
    // asyncio: OSError(errno, 'error while attempting to bind on address
    // (...): address already in use') - the errno is kept.
    let lp = EventLoop::new().unwrap();
    let logs = new_logs();
    let server = start_server(&lp, &logs, "127.0.0.1", 0, ServerOptions::default()).unwrap();
    let port = addrs(&server)[0].port();
    let taken = TcpListener::bind("127.0.0.1:0").unwrap();
    let opts = ConnectOptions { local_addr: Some(taken.local_addr().unwrap()), ..Default::default() };
    let f = lp.create_connection(Recorder::new, "127.0.0.1", port, opts);
    let e = complete(&lp, &f, 10.0).unwrap_err();
    assert!(e.to_string().contains("error while attempting to bind on address"), "{e}");
    assert!(e.to_string().contains("address already in use"), "{e}");
    assert_eq!(e.errno(), Some(libc::EADDRINUSE), "the errno is lost: {e:?}");
    server.close();
}

#[test]
fn create_connection_from_a_unix_socketpair() {
    let lp = EventLoop::new().unwrap();
    let (ours, theirs) = UnixStream::pair().unwrap();
    let f = lp.create_connection_from_socket(|| Recorder::new().on_data(|t, d| t.write(d).unwrap()), ours);
    let (t, p) = complete(&lp, &f, 10.0).unwrap();
    let log = p.borrow().log.clone();
    // Unnamed Unix sockets: asyncio reports '' for both names.
    assert_eq!(t.peername(), Some(Address::Unix(String::new())));
    assert_eq!(t.sockname(), Some(Address::Unix(String::new())));
    assert!(matches!(t.get_extra_info("socket"), Some(ExtraInfo::Fd(fd)) if fd >= 0));
    let payload = pattern(1 << 20, 22);
    let reader = spawn_reader(theirs.try_clone().unwrap());
    let writer = {
        let mut w = theirs;
        let p2 = payload.clone();
        std::thread::spawn(move || {
            w.write_all(&p2).unwrap();
            w.shutdown(Shutdown::Write).unwrap();
        })
    };
    must(&lp, 20.0, "echo read to EOF", || reader.is_finished());
    writer.join().unwrap();
    let (back, err) = reader.join().unwrap();
    assert!(err.is_none(), "{err:?}");
    assert_bytes_eq(&back, &payload, "echo over a socketpair");
    must(&lp, 10.0, "lost", || log.borrow().is_lost());
    // (A socketpair's small buffers make the echo pause/resume on the way.)
    let mut kinds: Vec<String> = log.borrow().kinds().into_iter().filter(|k| k != "pause" && k != "resume").collect();
    kinds.dedup();
    assert_eq!(kinds, ["made", "data", "eof", "lost"]);
    assert_contract(&log.borrow(), true, true);
}

#[test]
fn connect_accepted_socket_and_extra_info() {
    let lp = EventLoop::new().unwrap();
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let client = TcpStream::connect(listener.local_addr().unwrap()).unwrap();
    let (accepted, _) = listener.accept().unwrap();
    let fd_before = std::os::fd::AsRawFd::as_raw_fd(&accepted);
    let f = lp.connect_accepted_socket(|| Recorder::new().on_data(|t, d| t.write(d).unwrap()), accepted);
    let (t, p) = complete(&lp, &f, 10.0).unwrap();
    let log = p.borrow().log.clone();

    let peer = Address::Inet(client.local_addr().unwrap());
    let me = Address::Inet(client.peer_addr().unwrap());
    assert_eq!(t.get_extra_info("peername"), Some(ExtraInfo::Address(peer.clone())));
    assert_eq!(t.get_extra_info("sockname"), Some(ExtraInfo::Address(me.clone())));
    assert_eq!(t.peername(), Some(peer));
    let Some(ExtraInfo::Fd(fd)) = t.get_extra_info("socket") else { panic!("no socket") };
    assert_eq!(fd, fd_before, "the transport owns the socket it was given");
    // SAFETY: `fd` is the transport's open socket for the duration of this borrow.
    let borrowed = unsafe { std::os::fd::BorrowedFd::borrow_raw(fd) };
    let sref = socket2::SockRef::from(&borrowed);
    assert_eq!(sref.local_addr().unwrap().as_socket(), Some(client.peer_addr().unwrap()));
    assert!(sref.nonblocking().unwrap(), "the transport's socket is non-blocking");
    assert_eq!(t.get_extra_info("no such key"), None);
    assert_eq!(t.get_extra_info("sslcontext"), None);

    let mut client = client;
    client.write_all(b"adopted").unwrap();
    assert_eq!(pump_read_exact(&lp, &client, 7), b"adopted");
    drop(client);
    must(&lp, 10.0, "lost", || log.borrow().is_lost());
    assert_eq!(t.get_extra_info("socket"), None, "no socket after connection_lost");
    // Names were captured at creation and stay available, as in asyncio.
    assert!(t.get_extra_info("peername").is_some());
}

// ---------------------------------------------------------------------------
// Happy Eyeballs with several addresses.
//
// No name on this machine resolves to several addresses, and create_connection
// takes a host name. The outer test re-runs the inner one in a private mount
// namespace (unshare -m, root) where /etc/hosts maps `he.test` to ::1 and
// 127.0.0.1.

const HE_ENV: &str = "FERROLOOP_HE_INNER";

#[test]
fn happy_eyeballs_with_several_addresses() {
    if !ipv6_available() {
        println!("SKIPPED: no IPv6 loopback on this machine");
        return;
    }
    let hosts = std::env::temp_dir().join(format!("ferroloop-he-hosts-{}", std::process::id()));
    std::fs::write(&hosts, "127.0.0.1 localhost\n::1 he.test\n127.0.0.1 he.test\n").unwrap();
    let exe = std::env::current_exe().unwrap();
    let script = "mount --bind \"$0\" /etc/hosts || exit 97; echo NAMESPACE-READY; \
                  exec \"$1\" happy_eyeballs_inner --exact --ignored --nocapture --test-threads=1";
    let out = std::process::Command::new("unshare")
        .args(["-m", "sh", "-c", script])
        .arg(&hosts)
        .arg(&exe)
        .env(HE_ENV, "1")
        .output();
    let _ = std::fs::remove_file(&hosts);
    let out = match out {
        Ok(o) => o,
        Err(e) => {
            println!("SKIPPED: cannot run unshare: {e}");
            return;
        }
    };
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    if !stdout.contains("NAMESPACE-READY") {
        println!("SKIPPED: cannot make a private mount namespace (needs root): {stderr}");
        return;
    }
    assert!(
        out.status.success() && stdout.contains("test result: ok. 1 passed"),
        "inner Happy Eyeballs test failed:\n{stdout}\n{stderr}"
    );
    print!("{stdout}");
}

#[test]
#[ignore = "helper: run by happy_eyeballs_with_several_addresses in a private mount namespace"]
fn happy_eyeballs_inner() {
    assert_eq!(std::env::var(HE_ENV).as_deref(), Ok("1"), "run through happy_eyeballs_with_several_addresses");
    let resolved: Vec<SocketAddr> = ("he.test", 1).to_socket_addrs().unwrap().collect();
    assert_eq!(resolved.len(), 2, "{resolved:?}");
    let (first, second) = (resolved[0].ip(), resolved[1].ip());
    println!("he.test resolves to {first}, then {second}");
    let lp = EventLoop::new().unwrap();
    let logs = new_logs();

    // 1. The first address refuses: the next attempt starts at once.
    let server = start_server(&lp, &logs, second.to_string().as_str(), 0, ServerOptions::default()).unwrap();
    let port = addrs(&server)[0].port();
    drop(TcpListener::bind(SocketAddr::new(first, port)).expect("first address's port must be free"));
    for delay in [Some(0.25), None] {
        let opts = ConnectOptions { happy_eyeballs_delay: delay, ..Default::default() };
        let start = Instant::now();
        let f = lp.create_connection(Recorder::new, "he.test", port, opts);
        let (t, _p) = complete(&lp, &f, 10.0).unwrap();
        let took = start.elapsed();
        assert_eq!(t.peername(), Some(Address::Inet(SocketAddr::new(second, port))));
        assert!(took < Duration::from_millis(200), "delay {delay:?}: a refusal must start the next attempt at once ({took:?})");
        t.close();
    }
    // The family filter keeps only the matching addresses.
    let v4 = ConnectOptions { family: Some(ferroloop::Family::V4), ..Default::default() };
    let v6 = ConnectOptions { family: Some(ferroloop::Family::V6), ..Default::default() };
    let (good, bad) = if second.is_ipv4() { (v4, v6) } else { (v6, v4) };
    let (t, _p) = complete(&lp, &lp.create_connection(Recorder::new, "he.test", port, good), 10.0).unwrap();
    t.close();
    let e = complete(&lp, &lp.create_connection(Recorder::new, "he.test", port, bad), 10.0).unwrap_err();
    assert_eq!(e.errno(), Some(libc::ECONNREFUSED), "{e:?}");
    server.close();

    // Both refuse: the error of the attempts, with its errno. (asyncio's
    // messages name each address, so it raises 'Multiple exceptions'; the
    // Rust face's io errors read the same, so they collapse to the first.)
    let refused = {
        let l = TcpListener::bind(SocketAddr::new(second, 0)).unwrap();
        l.local_addr().unwrap().port()
    };
    let opts = ConnectOptions { happy_eyeballs_delay: Some(0.25), ..Default::default() };
    let f = lp.create_connection(Recorder::new, "he.test", refused, opts);
    let e = complete(&lp, &f, 10.0).unwrap_err();
    assert_eq!(e.errno(), Some(libc::ECONNREFUSED), "{e:?}");

    // 2. The first address does not answer (its accept queue is full, so the
    // kernel drops the SYN): the second attempt starts after the delay.
    let hung = socket2::Socket::new(socket2::Domain::for_address(SocketAddr::new(first, 0)), socket2::Type::STREAM, None).unwrap();
    hung.bind(&SocketAddr::new(first, 0).into()).unwrap();
    hung.listen(0).unwrap();
    let hung_addr = hung.local_addr().unwrap().as_socket().unwrap();
    let mut fillers = Vec::new();
    loop {
        match TcpStream::connect_timeout(&hung_addr, Duration::from_millis(300)) {
            Ok(s) => fillers.push(s),
            Err(_) => break, // the queue is full: SYNs go unanswered
        }
        assert!(fillers.len() < 16, "the accept queue never filled");
    }
    let server = start_server(&lp, &logs, second.to_string().as_str(), hung_addr.port(), ServerOptions::default()).unwrap();
    let opts = ConnectOptions { happy_eyeballs_delay: Some(0.1), ..Default::default() };
    let start = Instant::now();
    let f = lp.create_connection(Recorder::new, "he.test", hung_addr.port(), opts);
    let (t, _p) = complete(&lp, &f, 10.0).unwrap();
    let took = start.elapsed();
    assert_eq!(t.peername(), Some(Address::Inet(SocketAddr::new(second, hung_addr.port()))));
    assert!(took >= Duration::from_millis(95) && took < Duration::from_millis(900), "took {took:?}");
    // The losing attempt was closed: only the winner stays registered.
    run_for(&lp, 0.05);
    t.close();
    server.close();
    must(&lp, 5.0, "everything closed", || lp.registered_sources() == 0);
    drop(fillers);
}

// ---------------------------------------------------------------------------
// Accepting with no file descriptor left (EMFILE): asyncio reports
// "socket.accept() out of system resource", stops accepting for 1 s
// (ACCEPT_RETRY_DELAY), then accepts what waited in the backlog.
// RLIMIT_NOFILE is process-wide, so the inner test runs in its own process.

const EMFILE_ENV: &str = "FERROLOOP_EMFILE_INNER";

#[test]
fn accept_out_of_file_descriptors_pauses_then_recovers() {
    let exe = std::env::current_exe().unwrap();
    let out = std::process::Command::new(exe)
        .args(["accept_emfile_inner", "--exact", "--ignored", "--nocapture", "--test-threads=1"])
        .env(EMFILE_ENV, "1")
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success() && stdout.contains("test result: ok. 1 passed"),
        "inner EMFILE test failed:\n{stdout}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
}

#[test]
#[ignore = "helper: run by accept_out_of_file_descriptors_pauses_then_recovers in its own process"]
fn accept_emfile_inner() {
    assert_eq!(std::env::var(EMFILE_ENV).as_deref(), Ok("1"));
    let lp = EventLoop::new().unwrap();
    let reports = record_exceptions(&lp);
    let logs = new_logs();
    let opts = ServerOptions { start_serving: false, ..Default::default() };
    let server = start_server(&lp, &logs, "127.0.0.1", 0, opts).unwrap();
    let addr = addrs(&server)[0];
    let mut clients: Vec<TcpStream> = (0..5).map(|_| TcpStream::connect(addr).unwrap()).collect();

    // Use up every descriptor number below the new soft limit.
    let mut rl = libc::rlimit { rlim_cur: 0, rlim_max: 0 };
    // SAFETY: valid pointer to a local struct.
    assert_eq!(unsafe { libc::getrlimit(libc::RLIMIT_NOFILE, &mut rl) }, 0);
    let saved = rl;
    let mut fillers = Vec::new();
    let limit = loop {
        let f = std::fs::File::open("/dev/null").unwrap();
        let fd = std::os::fd::AsRawFd::as_raw_fd(&f);
        fillers.push(f);
        let max_in_use = std::fs::read_dir("/proc/self/fd").unwrap().filter_map(|e| e.ok()?.file_name().to_str()?.parse::<i32>().ok()).max().unwrap();
        // `open` returns the lowest free number: at the top, no gap is left
        // below it. The highest number listed is read_dir's own descriptor
        // (fd + 1), closed again by now.
        if fd >= max_in_use - 1 {
            break max_in_use as libc::rlim_t;
        }
    };
    let tight = libc::rlimit { rlim_cur: limit, rlim_max: saved.rlim_max };
    // SAFETY: valid pointer to a local struct.
    assert_eq!(unsafe { libc::setrlimit(libc::RLIMIT_NOFILE, &tight) }, 0);
    // Every descriptor number below the limit is taken now.
    server.start_serving().unwrap();
    must(&lp, 5.0, "the accept failure report", || !reports.borrow().is_empty());
    let start = Instant::now();
    // SAFETY: valid pointer to a local struct.
    assert_eq!(unsafe { libc::setrlimit(libc::RLIMIT_NOFILE, &saved) }, 0);
    {
        let reps = reports.borrow();
        assert_eq!(reps[0].message, "socket.accept() out of system resource");
        let errno = reps[0].error.as_ref().and_then(|e| e.errno());
        assert!(errno == Some(libc::EMFILE), "{:?}", reps[0]);
    }
    assert_eq!(logs.borrow().len(), 0);
    run_for(&lp, 0.5);
    assert_eq!(logs.borrow().len(), 0, "accepted again before the retry delay");
    must(&lp, 5.0, "all five accepted after the retry", || logs.borrow().len() == 5);
    assert!(start.elapsed() >= Duration::from_millis(400), "{:?}", start.elapsed());
    for (i, c) in clients.iter_mut().enumerate() {
        c.write_all(&[i as u8; 3]).unwrap();
        assert_eq!(pump_read_exact(&lp, c, 3), [i as u8; 3]);
    }
    drop(fillers);
    assert!(server.is_serving());
    server.close();
}
