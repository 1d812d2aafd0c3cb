//! Unix stream sockets on the Rust face: create_unix_server /
//! create_unix_connection, stale socket files, abstract names, the socket file
//! removed when the server closes, a server restarting on the same path.

mod common;

use std::cell::RefCell;
use std::io::{Read, Write};
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::PathBuf;
use std::rc::Rc;

use common::{complete, must, run_for};
use ferroloop::{Address, Error, EventLoop, Protocol, ServerOptions, Transport};

#[derive(Default)]
struct Seen {
    made: usize,
    data: Vec<u8>,
    eof: bool,
    lost: Option<Option<Error>>,
    /// The transport's `sockname` and `peername` in `connection_made`.
    names: Option<(Option<Address>, Option<Address>)>,
}

/// Echoes everything back; records what happened.
struct EchoRec {
    seen: Rc<RefCell<Seen>>,
    t: Option<Transport>,
    echo: bool,
}

impl std::fmt::Debug for EchoRec {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("EchoRec")
    }
}

impl Protocol for EchoRec {
    fn connection_made(&mut self, t: Transport) {
        let mut seen = self.seen.borrow_mut();
        seen.made += 1;
        seen.names = Some((t.sockname(), t.peername()));
        drop(seen);
        self.t = Some(t);
    }
    fn data_received(&mut self, data: &[u8]) {
        self.seen.borrow_mut().data.extend_from_slice(data);
        if self.echo {
            self.t.as_ref().unwrap().write(data).unwrap();
        }
    }
    fn eof_received(&mut self) -> bool {
        self.seen.borrow_mut().eof = true;
        false
    }
    fn connection_lost(&mut self, exc: Option<Error>) {
        self.seen.borrow_mut().lost = Some(exc);
        self.t = None;
    }
}

fn seen() -> Rc<RefCell<Seen>> {
    Rc::new(RefCell::new(Seen::default()))
}

fn tmp_path(name: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("ferroloop-unix-{}-{name}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    dir.join("s.sock")
}

/// A server whose connections echo, recording into `log` (one `Seen` per connection).
fn echo_server(lp: &EventLoop, path: &std::path::Path, log: &Rc<RefCell<Vec<Rc<RefCell<Seen>>>>>) -> ferroloop::Server {
    let log = log.clone();
    let fut = lp.create_unix_server(
        move || {
            let s = seen();
            log.borrow_mut().push(s.clone());
            EchoRec { seen: s, t: None, echo: true }
        },
        path,
        ServerOptions::default(),
    );
    complete(lp, &fut, 5.0).expect("create_unix_server")
}

#[test]
fn server_and_connection_echo_with_addresses_and_cleanup() {
    let lp = EventLoop::new().unwrap();
    let path = tmp_path("echo");
    let spath = path.to_str().unwrap().to_string();
    let conns = Rc::new(RefCell::new(Vec::new()));
    let server = echo_server(&lp, &path, &conns);
    assert_eq!(server.sockets().len(), 1);
    assert_eq!(server.sockets()[0].address, Some(Address::Unix(spath.clone())));
    assert!(server.is_serving());

    let cs = seen();
    let c2 = cs.clone();
    let (t, _) = complete(&lp, &lp.create_unix_connection(move || EchoRec { seen: c2, t: None, echo: false }, &path), 5.0)
        .unwrap();
    assert_eq!(t.peername(), Some(Address::Unix(spath.clone())));
    assert_eq!(t.sockname(), Some(Address::Unix(String::new())), "an unbound client is unnamed");
    assert!(t.socket_fd().is_some());
    assert_eq!(cs.borrow().made, 1);
    t.write(b"hello over unix").unwrap();
    must(&lp, 5.0, "echo", || cs.borrow().data == b"hello over unix");
    assert_eq!(conns.borrow().len(), 1);
    let server_side = conns.borrow()[0].clone();
    // Half-close: the server sees EOF, closes, the client sees EOF then connection_lost.
    t.write_eof().unwrap();
    must(&lp, 5.0, "client lost", || cs.borrow().lost.is_some());
    assert!(cs.borrow().eof);
    assert!(matches!(cs.borrow().lost, Some(None)));
    must(&lp, 5.0, "server side lost", || server_side.borrow().lost.is_some());
    assert!(server_side.borrow().eof);

    assert!(path.exists());
    server.close();
    assert!(!path.exists(), "the server removes its socket file when it closes");
    complete(&lp, &server.wait_closed(), 5.0).unwrap();
    assert_eq!(lp.registered_sources(), 0);
}

#[test]
fn stale_socket_file_is_replaced_other_files_are_not() {
    let lp = EventLoop::new().unwrap();
    let path = tmp_path("stale");
    drop(UnixListener::bind(&path).unwrap()); // leaves a socket file nobody listens on
    assert!(path.exists());
    // Nobody listens: a connection is refused, with its errno.
    let err = complete(&lp, &lp.create_unix_connection(|| EchoRec { seen: seen(), t: None, echo: false }, &path), 5.0)
        .unwrap_err();
    assert_eq!(err.errno(), Some(libc::ECONNREFUSED));

    let conns = Rc::new(RefCell::new(Vec::new()));
    let server = echo_server(&lp, &path, &conns);
    let mut c = UnixStream::connect(&path).unwrap();
    c.write_all(b"x").unwrap();
    c.set_read_timeout(Some(std::time::Duration::from_millis(10))).unwrap();
    let mut b = [0u8; 1];
    let mut got = false;
    must(&lp, 5.0, "echo", || {
        got = got || c.read(&mut b).map(|n| n == 1).unwrap_or(false);
        got
    });
    server.close();

    // A regular file at the path is left alone: EADDRINUSE.
    std::fs::write(&path, b"not a socket").unwrap();
    let fut = lp.create_unix_server(|| EchoRec { seen: seen(), t: None, echo: false }, &path, ServerOptions::default());
    let err = complete(&lp, &fut, 5.0).unwrap_err();
    assert_eq!(err.errno(), Some(libc::EADDRINUSE), "{err}");
    assert!(matches!(err, Error::Bind { .. }));
    assert_eq!(std::fs::read(&path).unwrap(), b"not a socket");

    // No such path.
    let missing = path.with_file_name("missing.sock");
    let err = complete(&lp, &lp.create_unix_connection(|| EchoRec { seen: seen(), t: None, echo: false }, &missing), 5.0)
        .unwrap_err();
    assert_eq!(err.errno(), Some(libc::ENOENT));
}

#[test]
fn server_restarts_on_the_same_path() {
    let lp = EventLoop::new().unwrap();
    let path = tmp_path("restart");
    for round in 0..5u8 {
        let conns = Rc::new(RefCell::new(Vec::new()));
        let server = echo_server(&lp, &path, &conns);
        let cs = seen();
        let c2 = cs.clone();
        let (t, _) =
            complete(&lp, &lp.create_unix_connection(move || EchoRec { seen: c2, t: None, echo: false }, &path), 5.0)
                .unwrap();
        t.write(&[round; 3]).unwrap();
        must(&lp, 5.0, "echo", || cs.borrow().data == [round; 3]);
        // Close the server while a connection is still open: the connection
        // lives on, wait_closed waits for it.
        server.close();
        let closed = server.wait_closed();
        run_for(&lp, 0.02);
        assert!(!closed.done(), "wait_closed waits for the open connection");
        t.write(b"!").unwrap();
        must(&lp, 5.0, "still echoing", || cs.borrow().data.ends_with(b"!"));
        t.close();
        complete(&lp, &closed, 5.0).unwrap();
        assert!(!path.exists());
    }
}

#[test]
fn socket_file_replaced_by_someone_else_is_kept() {
    let lp = EventLoop::new().unwrap();
    let path = tmp_path("replaced");
    let conns = Rc::new(RefCell::new(Vec::new()));
    let server = echo_server(&lp, &path, &conns);
    std::fs::remove_file(&path).unwrap();
    let other = UnixListener::bind(&path).unwrap();
    server.close();
    assert!(path.exists(), "not our file any more: kept");
    drop(other);
}

#[test]
fn abstract_namespace_names() {
    let lp = EventLoop::new().unwrap();
    let name = format!("\0ferroloop-unix-test-{}", std::process::id());
    let path = PathBuf::from(std::ffi::OsString::from(name.clone()));
    let conns = Rc::new(RefCell::new(Vec::new()));
    let server = echo_server(&lp, &path, &conns);
    assert_eq!(server.sockets()[0].address, Some(Address::Unix(name.clone())));
    let cs = seen();
    let c2 = cs.clone();
    let (t, _) = complete(&lp, &lp.create_unix_connection(move || EchoRec { seen: c2, t: None, echo: false }, &path), 5.0)
        .unwrap();
    t.write(b"abstract").unwrap();
    must(&lp, 5.0, "echo", || cs.borrow().data == b"abstract");
    // The accepted connection names its socket as the listener does
    // (`"\0name"`, as Python's `b"\x00name"`); the client sees it as its peer.
    let accepted = conns.borrow()[0].borrow().names.clone().unwrap();
    assert_eq!(accepted.0, server.sockets()[0].address);
    assert_eq!(t.peername(), Some(Address::Unix(name.clone())));
    assert_eq!(t.get_extra_info("peername"), Some(ferroloop::ExtraInfo::Address(Address::Unix(name.clone()))));
    t.close();
    must(&lp, 5.0, "lost", || cs.borrow().lost.is_some());
    server.close();
    // The name is free again at once (no file to remove).
    let again = echo_server(&lp, &path, &conns);
    again.close();
}

#[test]
fn start_serving_false_and_backlog() {
    let lp = EventLoop::new().unwrap();
    let path = tmp_path("noserve");
    let opts = ServerOptions { start_serving: false, backlog: 5, ..Default::default() };
    let s2 = seen();
    let fut = lp.create_unix_server(move || EchoRec { seen: s2.clone(), t: None, echo: true }, &path, opts);
    let server = complete(&lp, &fut, 5.0).unwrap();
    assert!(!server.is_serving());
    // The socket listens (connect succeeds into the backlog) but nothing is accepted yet.
    let mut c = UnixStream::connect(&path).unwrap();
    run_for(&lp, 0.05);
    assert_eq!(server.active_connections(), 0);
    server.start_serving().unwrap();
    c.write_all(b"late").unwrap();
    c.set_read_timeout(Some(std::time::Duration::from_millis(10))).unwrap();
    let mut b = [0u8; 4];
    let mut got = false;
    must(&lp, 5.0, "echo after start_serving", || {
        got = got || c.read(&mut b).map(|n| n > 0).unwrap_or(false);
        got
    });
    assert_eq!(server.active_connections(), 1);
    server.close();
}

#[test]
fn socat_interop_unix_stream_client_and_server() {
    use std::process::{Command, Stdio};
    let have = Command::new("socat").arg("-V").stdout(Stdio::null()).stderr(Stdio::null()).status();
    if !have.map(|s| s.success()).unwrap_or(false) {
        println!("SKIPPED: socat not installed");
        return;
    }
    let lp = EventLoop::new().unwrap();
    // socat as a client of our server.
    let path = tmp_path("socat");
    let conns = Rc::new(RefCell::new(Vec::new()));
    let server = echo_server(&lp, &path, &conns);
    let mut child = Command::new("socat")
        .args(["-t", "5", "-", &format!("UNIX-CONNECT:{}", path.display())])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let payload: Vec<u8> = (0..200_000u32).map(|i| (i % 251) as u8).collect();
    let mut stdin = child.stdin.take().unwrap();
    let p2 = payload.clone();
    // Closing stdin half-closes the connection: our echo closes after the EOF.
    let writer = std::thread::spawn(move || stdin.write_all(&p2));
    let mut stdout = child.stdout.take().unwrap();
    let reader = std::thread::spawn(move || {
        let mut back = Vec::new();
        stdout.read_to_end(&mut back).map(|_| back)
    });
    let mut status = None;
    must(&lp, 20.0, "socat client done", || {
        status = status.or_else(|| child.try_wait().unwrap());
        status.is_some()
    });
    writer.join().unwrap().unwrap();
    let back = reader.join().unwrap().unwrap();
    assert!(status.unwrap().success(), "socat failed");
    assert!(back == payload, "echo through socat: {} bytes back of {}", back.len(), payload.len());
    server.close();

    // socat as a server (echo through PIPE); our connection.
    let spath = tmp_path("socat-server");
    let mut srv = Command::new("socat")
        .args([&format!("UNIX-LISTEN:{}", spath.display()), "PIPE"])
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    while !spath.exists() {
        assert!(std::time::Instant::now() < deadline, "socat did not listen");
        std::thread::sleep(std::time::Duration::from_millis(10));
    }
    let cs = seen();
    let c2 = cs.clone();
    let (t, _) = complete(&lp, &lp.create_unix_connection(move || EchoRec { seen: c2, t: None, echo: false }, &spath), 5.0)
        .unwrap();
    t.write(b"through socat's pipe").unwrap();
    must(&lp, 5.0, "echo from socat", || cs.borrow().data == b"through socat's pipe");
    t.close();
    must(&lp, 5.0, "lost", || cs.borrow().lost.is_some());
    let _ = srv.kill();
    let _ = srv.wait();
}
