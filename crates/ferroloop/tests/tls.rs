//! TLS transports on the Rust face: rustls over the stream transport, with
//! asyncio's SSL transport semantics. Certificates are made at test time
//! with rcgen; the interop tests run `openssl s_client`/`s_server`.

mod common;

use std::cell::{Cell, RefCell};
use std::io::{Read, Write};
use std::process::{Command, Stdio};
use std::rc::Rc;
use std::sync::Arc;
use std::time::Duration;

use common::{complete, must, pattern};
use ferroloop::rustls;
use ferroloop::rustls::pki_types::{CertificateDer, PrivateKeyDer, PrivatePkcs8KeyDer};
use ferroloop::{
    ConnectOptions, Error, EventLoop, ExtraInfo, Protocol, Server, ServerOptions, TlsClientOptions, TlsError,
    TlsConfig, TlsInfo, TlsServerOptions, Transport,
};

struct Pki {
    cert: CertificateDer<'static>,
    key_der: Vec<u8>,
    cert_pem: String,
    key_pem: String,
}

fn pki() -> Pki {
    let ck = rcgen::generate_simple_self_signed(vec!["localhost".to_string()]).unwrap();
    Pki {
        cert: ck.cert.der().clone(),
        key_der: ck.key_pair.serialize_der(),
        cert_pem: ck.cert.pem(),
        key_pem: ck.key_pair.serialize_pem(),
    }
}

fn server_config(p: &Pki, alpn: &[&[u8]]) -> Arc<rustls::ServerConfig> {
    let key = PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(p.key_der.clone()));
    let mut c = rustls::ServerConfig::builder().with_no_client_auth().with_single_cert(vec![p.cert.clone()], key).unwrap();
    c.alpn_protocols = alpn.iter().map(|a| a.to_vec()).collect();
    Arc::new(c)
}

fn client_config(trusted: &CertificateDer<'static>, alpn: &[&[u8]]) -> Arc<rustls::ClientConfig> {
    let mut roots = rustls::RootCertStore::empty();
    roots.add(trusted.clone()).unwrap();
    let mut c = rustls::ClientConfig::builder().with_root_certificates(roots).with_no_client_auth();
    c.alpn_protocols = alpn.iter().map(|a| a.to_vec()).collect();
    Arc::new(c)
}

fn client_opts(p: &Pki) -> TlsClientOptions {
    TlsClientOptions::new(client_config(&p.cert, &[]))
}

fn server_opts(p: &Pki) -> ServerOptions {
    ServerOptions { tls: Some(TlsServerOptions::new(server_config(p, &[]))), ..Default::default() }
}

fn port_of(s: &Server) -> u16 {
    match &s.sockets()[0].address {
        Some(ferroloop::Address::Inet(a)) => a.port(),
        _ => panic!("no port"),
    }
}

type Log = Rc<RefCell<Vec<String>>>;

/// Echo, logging every event; optionally closes after `close_after` bytes.
struct Echo {
    t: Option<Transport>,
    log: Log,
    got: usize,
    close_after: Option<usize>,
    pause_on_start: bool,
}

impl Echo {
    fn new(log: &Log) -> Echo {
        Echo { t: None, log: log.clone(), got: 0, close_after: None, pause_on_start: false }
    }
}

impl Protocol for Echo {
    fn connection_made(&mut self, t: Transport) {
        self.log.borrow_mut().push("made".into());
        if self.pause_on_start {
            t.pause_reading();
        }
        self.t = Some(t);
    }
    fn data_received(&mut self, data: &[u8]) {
        self.got += data.len();
        let t = self.t.as_ref().unwrap();
        t.write(data).unwrap();
        if Some(self.got) == self.close_after {
            t.close();
        }
    }
    fn eof_received(&mut self) -> bool {
        self.log.borrow_mut().push("eof".into());
        false
    }
    fn connection_lost(&mut self, exc: Option<Error>) {
        self.log.borrow_mut().push(format!("lost:{}", exc.map(|e| e.to_string()).unwrap_or_default()));
    }
}

/// A client that records what it receives and its events.
#[derive(Default)]
struct Sink {
    t: Option<Transport>,
    data: Rc<RefCell<Vec<u8>>>,
    log: Log,
    paused: Rc<Cell<u32>>,
    resumed: Rc<Cell<u32>>,
}

impl Protocol for Sink {
    fn connection_made(&mut self, t: Transport) {
        self.log.borrow_mut().push("made".into());
        self.t = Some(t);
    }
    fn data_received(&mut self, data: &[u8]) {
        self.data.borrow_mut().extend_from_slice(data);
    }
    fn eof_received(&mut self) -> bool {
        self.log.borrow_mut().push("eof".into());
        false
    }
    fn connection_lost(&mut self, exc: Option<Error>) {
        self.log.borrow_mut().push(format!("lost:{}", exc.map(|e| e.to_string()).unwrap_or_default()));
    }
    fn pause_writing(&mut self) {
        self.paused.set(self.paused.get() + 1);
    }
    fn resume_writing(&mut self) {
        self.resumed.set(self.resumed.get() + 1);
    }
}

fn echo_server(lp: &EventLoop, _p: &Pki, log: &Log, opts: ServerOptions) -> Server {
    let log = log.clone();
    complete(lp, &lp.create_server(move || Echo::new(&log), "127.0.0.1", 0, opts), 5.0).unwrap()
}

#[test]
fn echo_one_mib_byte_exact() {
    let lp = EventLoop::new().unwrap();
    let p = pki();
    let slog: Log = Default::default();
    let server = echo_server(&lp, &p, &slog, server_opts(&p));
    let mut opts = client_opts(&p);
    opts.server_name = Some("localhost".into());
    let client_config = opts.config.clone();
    let sink = Sink::default();
    let data = sink.data.clone();
    let clog = sink.log.clone();
    let fut = lp.create_connection_tls(move || sink, "127.0.0.1", port_of(&server), ConnectOptions::default(), opts);
    let (t, _proto) = complete(&lp, &fut, 5.0).unwrap();
    assert!(t.is_tls());
    assert!(!t.can_write_eof());
    assert!(t.write_eof().is_err());
    let payload = pattern(1 << 20, 7);
    for chunk in payload.chunks(100_000) {
        t.write(chunk).unwrap();
    }
    must(&lp, 5.0, "1 MiB echoed", || data.borrow().len() >= payload.len());
    assert!(*data.borrow() == payload, "echo is byte-exact");
    // Extra info and typed accessors.
    match t.get_extra_info("peercert") {
        Some(ExtraInfo::Bytes(der)) => assert_eq!(der, p.cert.as_ref()),
        other => panic!("peercert: {other:?}"),
    }
    match t.get_extra_info("cipher") {
        Some(ExtraInfo::Cipher { name, protocol, bits }) => {
            assert!(name.starts_with("TLS13_"), "{name}");
            assert_eq!(protocol, "TLSv1.3");
            assert!(bits == 128 || bits == 256);
        }
        other => panic!("cipher: {other:?}"),
    }
    assert!(matches!(t.get_extra_info("peername"), Some(ExtraInfo::Address(_))));
    let info = t.tls_info().unwrap();
    // The session object is what tls_info() reads; the context is the very
    // configuration the connection was made with.
    assert_eq!(t.get_extra_info("ssl_object"), Some(ExtraInfo::Tls(info.clone())));
    match t.get_extra_info("sslcontext") {
        Some(ExtraInfo::TlsConfig(TlsConfig::Client(c))) => assert!(Arc::ptr_eq(&c, &client_config)),
        other => panic!("sslcontext: {other:?}"),
    }
    assert_eq!(t.get_extra_info("compression"), None);
    assert_eq!(info.protocol_version.as_deref(), Some("TLSv1.3"));
    assert_eq!(info.server_name.as_deref(), Some("localhost"));
    assert_eq!(info.peer_certificates.len(), 1);
    assert_eq!(info.alpn_protocol, None);
    t.close();
    must(&lp, 5.0, "both sides lost", || clog.borrow().len() == 2 && slog.borrow().len() == 3);
    assert_eq!(*clog.borrow(), vec!["made", "lost:"]);
    // The server saw our close_notify as EOF, then closed cleanly.
    assert_eq!(*slog.borrow(), vec!["made", "eof", "lost:"]);
    server.close();
}

/// Bytes lent through `write_lent`: counts the calls, and what the
/// protocol had been told (`pause_writing`) when the loan ended.
struct Lent {
    data: Vec<u8>,
    paused: Rc<Cell<u32>>,
    calls: Cell<usize>,
    paused_while_lent: Cell<u32>,
}

impl ferroloop::LentBytes for Lent {
    fn lend<R>(&self, f: impl FnOnce(&[u8]) -> R) -> R {
        self.calls.set(self.calls.get() + 1);
        let r = f(&self.data);
        self.paused_while_lent.set(self.paused.get());
        r
    }
}

#[test]
fn write_lent_over_tls_encrypts_at_once_and_tells_the_protocol_afterwards() {
    let lp = EventLoop::new().unwrap();
    let p = pki();
    let slog: Log = Default::default();
    let server = echo_server(&lp, &p, &slog, server_opts(&p));
    let sink = Sink::default();
    let (data, paused) = (sink.data.clone(), sink.paused.clone());
    let fut = lp.create_connection_tls(move || sink, "localhost", port_of(&server), ConnectOptions::default(), client_opts(&p));
    let (t, _proto) = complete(&lp, &fut, 5.0).unwrap();
    // More than the sockets take at once and than the high-water mark:
    // one write pauses the writer.
    t.set_write_buffer_limits(Some(16 * 1024), None).unwrap();
    let lent = Lent { data: pattern(16 << 20, 9), paused: paused.clone(), calls: Cell::new(0), paused_while_lent: Cell::new(0) };
    t.write_lent(&lent).unwrap();
    assert_eq!(lent.calls.get(), 1, "the bytes are read once");
    assert_eq!(lent.paused_while_lent.get(), 0, "pause_writing ran while the bytes were lent");
    assert_eq!(paused.get(), 1, "pause_writing once the write returned");
    // Empty writes are no writes.
    let empty = Lent { data: Vec::new(), paused: paused.clone(), calls: Cell::new(0), paused_while_lent: Cell::new(0) };
    t.write_lent(&empty).unwrap();
    must(&lp, 20.0, "16 MiB echoed", || data.borrow().len() >= lent.data.len());
    assert!(*data.borrow() == lent.data, "echo is byte-exact");
    t.close();
    must(&lp, 5.0, "server lost", || slog.borrow().iter().any(|e| e.starts_with("lost")));
    // Writes after close are dropped (asyncio's warning after a few), not sent.
    t.write_lent(&empty).unwrap();
    server.close();
}

#[test]
fn server_close_sends_close_notify() {
    let lp = EventLoop::new().unwrap();
    let p = pki();
    let slog: Log = Default::default();
    let log2 = slog.clone();
    let server = complete(
        &lp,
        &lp.create_server(
            move || {
                let mut e = Echo::new(&log2);
                e.close_after = Some(5);
                e
            },
            "127.0.0.1",
            0,
            server_opts(&p),
        ),
        5.0,
    )
    .unwrap();
    let sink = Sink::default();
    let data = sink.data.clone();
    let clog = sink.log.clone();
    let fut = lp.create_connection_tls(move || sink, "localhost", port_of(&server), ConnectOptions::default(), client_opts(&p));
    let (t, _) = complete(&lp, &fut, 5.0).unwrap();
    t.write(b"hello").unwrap();
    must(&lp, 5.0, "client lost", || clog.borrow().len() == 3);
    assert_eq!(&*data.borrow(), b"hello");
    // The client's eof_received means it got close_notify, not a bare FIN.
    assert_eq!(*clog.borrow(), vec!["made", "eof", "lost:"]);
    must(&lp, 5.0, "server lost", || slog.borrow().len() == 2);
    assert_eq!(*slog.borrow(), vec!["made", "lost:"]);
}

fn expect_handshake_failure(opts: TlsClientOptions, host: &str) -> Error {
    let lp = EventLoop::new().unwrap();
    let p = pki();
    let slog: Log = Default::default();
    let server = echo_server(&lp, &p, &slog, server_opts(&p));
    let made = Rc::new(Cell::new(0));
    let made2 = made.clone();
    let sink = Sink::default();
    let clog = sink.log.clone();
    let fut = lp.create_connection_tls(
        move || {
            made2.set(1);
            sink
        },
        host,
        port_of(&server),
        ConnectOptions::default(),
        opts,
    );
    let err = complete(&lp, &fut, 5.0).map(|_| ()).unwrap_err();
    // The server's raw connection goes away too (the socket was closed).
    must(&lp, 5.0, "server connection gone", || server.active_connections() == 0);
    assert_eq!(made.get(), 0, "the factory is never called");
    assert!(clog.borrow().is_empty(), "no connection_made nor connection_lost: {:?}", clog.borrow());
    assert!(slog.borrow().is_empty(), "the server's protocol never started: {:?}", slog.borrow());
    err
}

#[test]
fn handshake_failure_untrusted_certificate() {
    let other = pki();
    let err = expect_handshake_failure(client_opts(&other), "localhost");
    match &err {
        Error::Tls(TlsError::Protocol(rustls::Error::InvalidCertificate(_))) => {}
        e => panic!("expected a certificate error, got {e:?}"),
    }
    assert!(std::error::Error::source(&err).is_some(), "the rustls error is kept");
}

#[test]
fn handshake_failure_wrong_server_name() {
    let p = pki();
    // The server makes its own certificate; trust none of it except by name.
    let lp = EventLoop::new().unwrap();
    let slog: Log = Default::default();
    let server = echo_server(&lp, &p, &slog, server_opts(&p));
    let mut opts = client_opts(&p);
    opts.server_name = Some("not-localhost.example".into());
    let fut = lp.create_connection_tls(Sink::default, "127.0.0.1", port_of(&server), ConnectOptions::default(), opts);
    match complete(&lp, &fut, 5.0) {
        Err(Error::Tls(TlsError::Protocol(rustls::Error::InvalidCertificate(rustls::CertificateError::NotValidForName))))
        | Err(Error::Tls(TlsError::Protocol(rustls::Error::InvalidCertificate(rustls::CertificateError::NotValidForNameContext { .. })))) => {}
        other => panic!("expected NotValidForName, got {:?}", other.map(|_| ())),
    }
    must(&lp, 5.0, "server connection gone", || server.active_connections() == 0);
    assert!(slog.borrow().is_empty());
}

#[test]
fn handshake_failure_is_typed_for_untrusted_via_helper() {
    // The helper also checks that a client cert error leaves the server clean.
    let p = pki();
    let mut opts = client_opts(&pki());
    opts.server_name = Some("localhost".into());
    let _ = p;
    assert!(matches!(expect_handshake_failure(opts, "127.0.0.1"), Error::Tls(_)));
}

#[test]
fn handshake_timeout() {
    let lp = EventLoop::new().unwrap();
    // A plain TCP listener that never answers the ClientHello.
    let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = l.local_addr().unwrap().port();
    let p = pki();
    let mut opts = client_opts(&p);
    opts.handshake_timeout = Some(Duration::from_millis(200));
    let fut = lp.create_connection_tls(Sink::default, "localhost", port, ConnectOptions::default(), opts);
    let started = std::time::Instant::now();
    match complete(&lp, &fut, 5.0) {
        Err(Error::Tls(TlsError::HandshakeTimeout(d))) => assert_eq!(d, Duration::from_millis(200)),
        other => panic!("expected a timeout, got {:?}", other.map(|_| ())),
    }
    assert!(started.elapsed() < Duration::from_secs(3));
    // The socket was closed: the peer sees EOF after the ClientHello.
    let (mut s, _) = l.accept().unwrap();
    s.set_read_timeout(Some(Duration::from_secs(3))).unwrap();
    let mut buf = Vec::new();
    let _ = s.read_to_end(&mut buf);
    assert_eq!(buf.first(), Some(&0x16), "a TLS handshake record was sent");
}

#[test]
fn flow_control_with_a_non_reading_peer() {
    let lp = EventLoop::new().unwrap();
    let p = pki();
    let slog: Log = Default::default();
    let servers: Rc<RefCell<Vec<Transport>>> = Default::default();
    let (log2, servers2) = (slog.clone(), servers.clone());
    struct Keep(Echo, Rc<RefCell<Vec<Transport>>>);
    impl Protocol for Keep {
        fn connection_made(&mut self, t: Transport) {
            self.1.borrow_mut().push(t.clone());
            self.0.connection_made(t)
        }
        fn data_received(&mut self, d: &[u8]) {
            self.0.got += d.len();
        }
        fn connection_lost(&mut self, e: Option<Error>) {
            self.0.connection_lost(e)
        }
    }
    let server = complete(
        &lp,
        &lp.create_server(
            move || {
                let mut e = Echo::new(&log2);
                e.pause_on_start = true;
                Keep(e, servers2.clone())
            },
            "127.0.0.1",
            0,
            server_opts(&p),
        ),
        5.0,
    )
    .unwrap();
    let sink = Sink::default();
    let (paused, resumed) = (sink.paused.clone(), sink.resumed.clone());
    let fut = lp.create_connection_tls(move || sink, "localhost", port_of(&server), ConnectOptions::default(), client_opts(&p));
    let (t, _) = complete(&lp, &fut, 5.0).unwrap();
    t.set_write_buffer_limits(Some(64 * 1024), None).unwrap();
    assert_eq!(t.get_write_buffer_limits(), (16 * 1024, 64 * 1024));
    must(&lp, 5.0, "server connection made", || !servers.borrow().is_empty());
    let st = servers.borrow()[0].clone();
    assert!(!st.is_reading());
    let chunk = vec![b'x'; 256 * 1024];
    let mut sent = 0usize;
    while paused.get() == 0 && sent < (64 << 20) {
        t.write(&chunk).unwrap();
        sent += chunk.len();
        common::run_for(&lp, 0.001);
    }
    assert_eq!(paused.get(), 1, "pause_writing once the peer stops reading");
    assert!(t.is_writing_paused());
    assert!(t.get_write_buffer_size() > 64 * 1024);
    assert_eq!(resumed.get(), 0);
    st.resume_reading();
    must(&lp, 10.0, "resume_writing after the peer reads", || resumed.get() == 1);
    assert!(t.get_write_buffer_size() <= 16 * 1024);
    t.close();
    must(&lp, 10.0, "server lost", || slog.borrow().iter().any(|e| e.starts_with("lost")));
    server.close();
}

/// STARTTLS: a line protocol upgrades in the middle of the stream.
#[test]
fn start_tls_upgrade_mid_stream() {
    let lp = EventLoop::new().unwrap();
    let p = pki();
    let sopts = TlsServerOptions::new(server_config(&p, &[]));

    struct PlainServer {
        t: Option<Transport>,
        tls: TlsServerOptions,
        upgraded: Rc<RefCell<Option<Transport>>>,
        seen: Rc<RefCell<Vec<u8>>>,
    }
    impl Protocol for PlainServer {
        fn connection_made(&mut self, t: Transport) {
            self.t = Some(t);
        }
        fn data_received(&mut self, d: &[u8]) {
            if let Some(t) = self.upgraded.borrow().as_ref() {
                // Echo over TLS, upper-cased.
                self.seen.borrow_mut().extend_from_slice(d);
                t.write(&d.to_ascii_uppercase()).unwrap();
                return;
            }
            assert_eq!(d, b"STARTTLS\n");
            let t = self.t.as_ref().unwrap();
            t.write(b"OK\n").unwrap();
            let fut = t.get_loop().start_tls(t, self.tls.clone());
            let up = self.upgraded.clone();
            let f2 = fut.clone();
            fut.add_done_callback(move || *up.borrow_mut() = Some(f2.take_result().unwrap().unwrap()));
        }
    }
    let upgraded: Rc<RefCell<Option<Transport>>> = Default::default();
    let seen: Rc<RefCell<Vec<u8>>> = Default::default();
    let (u2, s2) = (upgraded.clone(), seen.clone());
    let server = complete(
        &lp,
        &lp.create_server(
            move || PlainServer { t: None, tls: sopts.clone(), upgraded: u2.clone(), seen: s2.clone() },
            "127.0.0.1",
            0,
            ServerOptions::default(),
        ),
        5.0,
    )
    .unwrap();
    let sink = Sink::default();
    let data = sink.data.clone();
    let fut = lp.create_connection(move || sink, "127.0.0.1", port_of(&server), ConnectOptions::default());
    let (plain, proto) = complete(&lp, &fut, 5.0).unwrap();
    plain.write(b"STARTTLS\n").unwrap();
    must(&lp, 5.0, "OK", || data.borrow().as_slice() == b"OK\n");
    data.borrow_mut().clear();
    let mut copts = client_opts(&p);
    copts.server_name = Some("localhost".into());
    let tls = complete(&lp, &lp.start_tls(&plain, copts), 5.0).unwrap();
    assert!(tls.is_tls());
    assert_eq!(proto.borrow().log.borrow().as_slice(), ["made"], "no second connection_made");
    must(&lp, 5.0, "server upgraded", || upgraded.borrow().is_some());
    tls.write(b"secret words").unwrap();
    must(&lp, 5.0, "echo over TLS", || data.borrow().len() == 12);
    assert_eq!(&*data.borrow(), b"SECRET WORDS");
    assert_eq!(&*seen.borrow(), b"secret words");
    assert_eq!(tls.tls_info().unwrap().protocol_version.as_deref(), Some("TLSv1.3"));
    tls.close();
    must(&lp, 5.0, "client lost", || proto.borrow().log.borrow().len() == 2);
}

#[test]
fn alpn_negotiated() {
    let lp = EventLoop::new().unwrap();
    let p = pki();
    let slog: Log = Default::default();
    let opts = ServerOptions {
        tls: Some(TlsServerOptions::new(server_config(&p, &[b"h2", b"http/1.1"]))),
        ..Default::default()
    };
    let server = echo_server(&lp, &p, &slog, opts);
    let copts = TlsClientOptions::new(client_config(&p.cert, &[b"http/1.1", b"spdy/1"]));
    let fut = lp.create_connection_tls(Sink::default, "localhost", port_of(&server), ConnectOptions::default(), copts);
    let (t, _) = complete(&lp, &fut, 5.0).unwrap();
    assert_eq!(t.tls_info().unwrap().alpn_protocol.as_deref(), Some(&b"http/1.1"[..]));
    t.close();
    must(&lp, 5.0, "server done", || slog.borrow().len() == 3);
}

// ---------------------------------------------------------------------------- interop

fn openssl() -> bool {
    let ok = Command::new("openssl").arg("version").stdout(Stdio::null()).stderr(Stdio::null()).status().is_ok();
    if !ok {
        println!("SKIPPED: openssl not installed");
    }
    ok
}

fn tmpdir(tag: &str) -> std::path::PathBuf {
    let d = std::env::temp_dir().join(format!("ferroloop-tls-{tag}-{}", std::process::id()));
    std::fs::create_dir_all(&d).unwrap();
    d
}

#[test]
fn interop_openssl_s_client_against_rust_server() {
    s_client_echo("sclient", &[], "TLSv1.3");
}

#[test]
fn interop_openssl_s_client_tls12_against_rust_server() {
    s_client_echo("sclient12", &["-tls1_2"], "TLSv1.2");
}

/// `openssl s_client` (with `args`) sends 200 KB to the Rust echo server,
/// which closes after echoing them; the connection must have used `version`.
fn s_client_echo(tag: &str, args: &[&str], version: &str) {
    if !openssl() {
        return;
    }
    let lp = EventLoop::new().unwrap();
    let p = pki();
    let dir = tmpdir(tag);
    std::fs::write(dir.join("ca.pem"), &p.cert_pem).unwrap();
    let payload: Vec<u8> = pattern(200_000, 3).iter().map(|b| b'a' + b % 26).collect();
    let slog: Log = Default::default();
    let infos: Infos = Default::default();
    let (log2, infos2) = (slog.clone(), infos.clone());
    let n = payload.len();
    let server = complete(
        &lp,
        &lp.create_server(
            move || {
                let mut e = Echo::new(&log2);
                e.close_after = Some(n);
                Tap { inner: e, infos: infos2.clone() }
            },
            "127.0.0.1",
            0,
            server_opts(&p),
        ),
        5.0,
    )
    .unwrap();
    let mut child = Command::new("openssl")
        .args(["s_client", "-connect", &format!("127.0.0.1:{}", port_of(&server))])
        .args(["-CAfile", dir.join("ca.pem").to_str().unwrap(), "-verify_return_error", "-servername", "localhost"])
        .args(["-verify_hostname", "localhost", "-quiet", "-ign_eof"])
        .args(args)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut stdin = child.stdin.take().unwrap();
    let mut stdout = child.stdout.take().unwrap();
    let p2 = payload.clone();
    let writer = std::thread::spawn(move || {
        stdin.write_all(&p2).unwrap();
    });
    let reader = std::thread::spawn(move || {
        let mut out = Vec::new();
        stdout.read_to_end(&mut out).unwrap();
        out
    });
    must(&lp, 10.0, "server closed after echoing", || slog.borrow().iter().any(|e| e.starts_with("lost")));
    let out = reader.join().unwrap();
    writer.join().unwrap();
    let status = child.wait().unwrap();
    let mut err = String::new();
    child.stderr.take().unwrap().read_to_string(&mut err).unwrap();
    assert!(out == payload, "s_client received the exact bytes ({} of {}); stderr: {err}", out.len(), payload.len());
    assert!(status.success(), "s_client: {status} {err}");
    assert_eq!(infos.borrow()[0].protocol_version.as_deref(), Some(version));
    assert_eq!(infos.borrow()[0].server_name.as_deref(), Some("localhost"), "the SNI s_client sent");
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn interop_rust_client_against_openssl_s_server() {
    if !openssl() {
        return;
    }
    let lp = EventLoop::new().unwrap();
    let p = pki();
    let dir = tmpdir("sserver");
    std::fs::write(dir.join("cert.pem"), &p.cert_pem).unwrap();
    std::fs::write(dir.join("key.pem"), &p.key_pem).unwrap();
    let port = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
    let mut child = Command::new("openssl")
        .args(["s_server", "-accept", &format!("127.0.0.1:{port}"), "-naccept", "1", "-quiet"])
        .args(["-cert", dir.join("cert.pem").to_str().unwrap(), "-key", dir.join("key.pem").to_str().unwrap()])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let stdin = child.stdin.take().unwrap(); // kept open: s_server quits on stdin EOF
    let mut stdout = child.stdout.take().unwrap();
    let reader = std::thread::spawn(move || {
        let mut out = Vec::new();
        let _ = stdout.read_to_end(&mut out);
        out
    });
    // Wait for s_server to listen.
    let mut result = None;
    for _ in 0..100 {
        let fut = lp.create_connection_tls(Sink::default, "localhost", port, ConnectOptions::default(), client_opts(&p));
        match complete(&lp, &fut, 5.0) {
            Ok(c) => {
                result = Some(c);
                break;
            }
            Err(Error::Io(_)) => std::thread::sleep(Duration::from_millis(50)),
            Err(e) => panic!("connect: {e}"),
        }
    }
    let (t, proto) = result.expect("s_server never listened");
    let payload: Vec<u8> = pattern(100_000, 9).iter().map(|b| b'a' + b % 26).collect();
    t.write(&payload).unwrap();
    t.close();
    // s_server answers our close_notify with its own, then exits (-naccept 1).
    must(&lp, 10.0, "client lost", || proto.borrow().log.borrow().iter().any(|e| e.starts_with("lost")));
    let status = child.wait().unwrap();
    drop(stdin);
    let out = reader.join().unwrap();
    let mut err = String::new();
    child.stderr.take().unwrap().read_to_string(&mut err).unwrap();
    assert!(out == payload, "s_server printed the exact bytes ({} of {}); stderr: {err}", out.len(), payload.len());
    assert!(status.success(), "s_server: {status} {err}");
    assert_eq!(proto.borrow().log.borrow().last().unwrap(), "lost:");
    let _ = std::fs::remove_dir_all(&dir);
}

// ---------------------------------------------------------------------------- client auth, versions, resumption

/// Wraps a protocol and records the TLS transport's [`TlsInfo`] at `connection_made`.
struct Tap<P> {
    inner: P,
    infos: Rc<RefCell<Vec<TlsInfo>>>,
}

impl<P: Protocol> Protocol for Tap<P> {
    fn connection_made(&mut self, t: Transport) {
        self.infos.borrow_mut().push(t.tls_info().expect("a TLS transport"));
        self.inner.connection_made(t)
    }
    fn data_received(&mut self, d: &[u8]) {
        self.inner.data_received(d)
    }
    fn eof_received(&mut self) -> bool {
        self.inner.eof_received()
    }
    fn connection_lost(&mut self, e: Option<Error>) {
        self.inner.connection_lost(e)
    }
    fn pause_writing(&mut self) {
        self.inner.pause_writing()
    }
    fn resume_writing(&mut self) {
        self.inner.resume_writing()
    }
}

type Infos = Rc<RefCell<Vec<TlsInfo>>>;

/// An echo server whose connections record their [`TlsInfo`].
fn tapped_echo_server(lp: &EventLoop, log: &Log, infos: &Infos, config: Arc<rustls::ServerConfig>) -> Server {
    let (log, infos) = (log.clone(), infos.clone());
    let opts = ServerOptions { tls: Some(TlsServerOptions::new(config)), ..Default::default() };
    complete(lp, &lp.create_server(move || Tap { inner: Echo::new(&log), infos: infos.clone() }, "127.0.0.1", 0, opts), 5.0)
        .unwrap()
}

/// A certificate authority that issues client certificates.
struct Ca {
    cert: rcgen::Certificate,
    key: rcgen::KeyPair,
}

fn ca() -> Ca {
    let mut params = rcgen::CertificateParams::new(Vec::<String>::new()).unwrap();
    params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
    params.distinguished_name.push(rcgen::DnType::CommonName, "ferroloop test CA");
    let key = rcgen::KeyPair::generate().unwrap();
    let cert = params.self_signed(&key).unwrap();
    Ca { cert, key }
}

/// A client certificate issued by `ca` (certificate DER, PKCS#8 key DER).
fn client_cert(ca: &Ca, name: &str) -> (CertificateDer<'static>, Vec<u8>) {
    let mut params = rcgen::CertificateParams::new(Vec::<String>::new()).unwrap();
    params.distinguished_name.push(rcgen::DnType::CommonName, name);
    params.extended_key_usages = vec![rcgen::ExtendedKeyUsagePurpose::ClientAuth];
    let key = rcgen::KeyPair::generate().unwrap();
    let cert = params.signed_by(&key, &ca.cert, &ca.key).unwrap();
    (cert.der().clone(), key.serialize_der())
}

/// A server that requires a client certificate issued by `ca`.
fn server_config_client_auth(p: &Pki, ca: &Ca) -> Arc<rustls::ServerConfig> {
    let mut roots = rustls::RootCertStore::empty();
    roots.add(ca.cert.der().clone()).unwrap();
    let verifier = rustls::server::WebPkiClientVerifier::builder(Arc::new(roots)).build().unwrap();
    let key = PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(p.key_der.clone()));
    Arc::new(
        rustls::ServerConfig::builder()
            .with_client_cert_verifier(verifier)
            .with_single_cert(vec![p.cert.clone()], key)
            .unwrap(),
    )
}

fn version_of(v: &str) -> &'static rustls::SupportedProtocolVersion {
    match v {
        "TLSv1.2" => &rustls::version::TLS12,
        "TLSv1.3" => &rustls::version::TLS13,
        _ => panic!("unknown version {v}"),
    }
}

/// A client config trusting `trusted`, limited to `version`, with an optional client certificate.
fn client_config_for(
    trusted: &CertificateDer<'static>,
    version: &str,
    cert: Option<&(CertificateDer<'static>, Vec<u8>)>,
) -> Arc<rustls::ClientConfig> {
    let mut roots = rustls::RootCertStore::empty();
    roots.add(trusted.clone()).unwrap();
    let b = rustls::ClientConfig::builder_with_protocol_versions(&[version_of(version)]).with_root_certificates(roots);
    Arc::new(match cert {
        Some((c, k)) => {
            b.with_client_auth_cert(vec![c.clone()], PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(k.clone()))).unwrap()
        }
        None => b.with_no_client_auth(),
    })
}

/// Connect a [`Sink`] client; returns its transport, received data and log.
fn connect_sink(lp: &EventLoop, port: u16, config: Arc<rustls::ClientConfig>) -> (Transport, Rc<RefCell<Vec<u8>>>, Log) {
    let sink = Sink::default();
    let (data, log) = (sink.data.clone(), sink.log.clone());
    let opts = TlsClientOptions::new(config);
    let fut = lp.create_connection_tls(move || sink, "localhost", port, ConnectOptions::default(), opts);
    let (t, _) = complete(lp, &fut, 5.0).expect("TLS connection");
    (t, data, log)
}

/// Write `msg` and wait for its echo.
fn roundtrip(lp: &EventLoop, t: &Transport, data: &Rc<RefCell<Vec<u8>>>, msg: &[u8]) {
    data.borrow_mut().clear();
    t.write(msg).unwrap();
    must(lp, 5.0, "echo", || data.borrow().len() >= msg.len());
    assert_eq!(&*data.borrow(), msg);
}

#[test]
fn client_certificate_authentication_through_create_server() {
    for version in ["TLSv1.3", "TLSv1.2"] {
        let lp = EventLoop::new().unwrap();
        let p = pki();
        let ca = ca();
        let alice = client_cert(&ca, "alice");
        let (slog, infos): (Log, Infos) = Default::default();
        let server = tapped_echo_server(&lp, &slog, &infos, server_config_client_auth(&p, &ca));
        let port = port_of(&server);

        // With a certificate: the server sees it.
        let (a, adata, alog) = connect_sink(&lp, port, client_config_for(&p.cert, version, Some(&alice)));
        roundtrip(&lp, &a, &adata, b"hello from alice");
        assert_eq!(infos.borrow().len(), 1);
        assert_eq!(infos.borrow()[0].peer_certificates, vec![alice.0.as_ref().to_vec()], "{version}");
        assert_eq!(infos.borrow()[0].protocol_version.as_deref(), Some(version));
        assert_eq!(a.tls_info().unwrap().peer_certificates, vec![p.cert.as_ref().to_vec()]);

        // Without one: a typed TLS error on the client. With TLS 1.2 the
        // server refuses before its Finished, so the handshake fails; with
        // TLS 1.3 the client has finished its handshake when the server's
        // alert arrives, so the connection is lost with the error (as with
        // OpenSSL).
        let sink = Sink::default();
        let blog = sink.log.clone();
        let made = Rc::new(Cell::new(false));
        let made2 = made.clone();
        let opts = TlsClientOptions::new(client_config_for(&p.cert, version, None));
        let fut = lp.create_connection_tls(
            move || {
                made2.set(true);
                sink
            },
            "localhost",
            port,
            ConnectOptions::default(),
            opts,
        );
        let r = complete(&lp, &fut, 5.0);
        if version == "TLSv1.2" {
            match r.map(|_| ()) {
                Err(Error::Tls(TlsError::Protocol(rustls::Error::AlertReceived(_)))) => {}
                other => panic!("{version}: expected a handshake alert, got {other:?}"),
            }
            assert!(!made.get(), "the factory is never called");
        } else {
            let _conn = r.expect("TLS 1.3: the client's side of the handshake completes");
            must(&lp, 5.0, "client B lost", || blog.borrow().len() == 2);
            assert_eq!(blog.borrow()[0], "made");
            lost_with_certificate_required(&blog);
        }
        must(&lp, 5.0, "the refused connection is gone", || server.active_connections() == 1);
        assert_eq!(infos.borrow().len(), 1, "the server's protocol factory ran for alice only");

        // The server keeps serving: alice's connection and a new one.
        roundtrip(&lp, &a, &adata, b"still here");
        let (c, cdata, _) = connect_sink(&lp, port, client_config_for(&p.cert, version, Some(&alice)));
        roundtrip(&lp, &c, &cdata, b"again");
        assert_eq!(infos.borrow().len(), 2);
        a.close();
        c.close();
        must(&lp, 5.0, "clients closed", || server.active_connections() == 0 && alog.borrow().len() == 2);
        assert_eq!(*alog.borrow(), vec!["made", "lost:"]);
        assert_eq!(slog.borrow().iter().filter(|e| *e == "lost:").count(), 2, "{:?}", slog.borrow());
        server.close();
    }
}

/// The server side's typed error, seen through `start_tls(server options)`
/// on a plain server.
#[test]
fn client_without_certificate_fails_with_typed_errors_on_both_sides() {
    for version in ["TLSv1.3", "TLSv1.2"] {
        let lp = EventLoop::new().unwrap();
        let p = pki();
        let ca = ca();
        let sopts = TlsServerOptions::new(server_config_client_auth(&p, &ca));
        type Results = Rc<RefCell<Vec<ferroloop::Result<TlsInfo>>>>;
        let results: Results = Default::default();
        struct Upgrader(TlsServerOptions, Results);
        impl Protocol for Upgrader {
            fn connection_made(&mut self, t: Transport) {
                let fut = t.get_loop().start_tls(&t, self.0.clone());
                let (f2, results) = (fut.clone(), self.1.clone());
                fut.add_done_callback(move || {
                    let r = f2.take_result().unwrap();
                    results.borrow_mut().push(r.map(|t| t.tls_info().unwrap()));
                });
            }
        }
        let r2 = results.clone();
        let server = complete(
            &lp,
            &lp.create_server(move || Upgrader(sopts.clone(), r2.clone()), "127.0.0.1", 0, ServerOptions::default()),
            5.0,
        )
        .unwrap();
        let port = port_of(&server);
        let opts = TlsClientOptions::new(client_config_for(&p.cert, version, None));
        let sink = Sink::default();
        let clog = sink.log.clone();
        let fut = lp.create_connection_tls(move || sink, "localhost", port, ConnectOptions::default(), opts);
        must(&lp, 5.0, "server handshake done", || !results.borrow().is_empty());
        match &results.borrow()[0] {
            Err(Error::Tls(TlsError::Protocol(rustls::Error::NoCertificatesPresented))) => {}
            other => panic!("{version}: server: expected NoCertificatesPresented, got {other:?}"),
        }
        let client_err = match complete(&lp, &fut, 5.0) {
            Err(e) => e,
            Ok(_) => {
                must(&lp, 5.0, "client lost", || clog.borrow().len() == 2);
                assert_eq!(version, "TLSv1.3", "only TLS 1.3 completes the client's handshake");
                lost_with_certificate_required(&clog)
            }
        };
        assert!(
            matches!(client_err, Error::Tls(TlsError::Protocol(rustls::Error::AlertReceived(_)))),
            "{version}: client: {client_err:?}"
        );
        // A client with a certificate is then served by the same server.
        let alice = client_cert(&ca, "alice");
        let (t, _, _) = connect_sink(&lp, port, client_config_for(&p.cert, version, Some(&alice)));
        must(&lp, 5.0, "second server handshake", || results.borrow().len() == 2);
        let info = results.borrow()[1].as_ref().unwrap().clone();
        assert_eq!(info.peer_certificates, vec![alice.0.as_ref().to_vec()]);
        assert_eq!(info.protocol_version.as_deref(), Some(version));
        t.close();
        server.close();
    }
}

/// Check that a [`Sink`]'s `connection_lost` got the certificate_required
/// alert as an [`Error::Tls`]; returns that error.
fn lost_with_certificate_required(log: &Log) -> Error {
    let l = log.borrow();
    let want = Error::Tls(TlsError::Protocol(rustls::Error::AlertReceived(rustls::AlertDescription::CertificateRequired)));
    assert_eq!(l.last().unwrap(), &format!("lost:{want}"));
    want
}

#[test]
fn explicit_tls12_and_tls13() {
    for (version, prefix) in [("TLSv1.2", "TLS_ECDHE_"), ("TLSv1.3", "TLS13_")] {
        let lp = EventLoop::new().unwrap();
        let p = pki();
        let (slog, infos): (Log, Infos) = Default::default();
        let server = tapped_echo_server(&lp, &slog, &infos, server_config(&p, &[]));
        let (t, data, log) = connect_sink(&lp, port_of(&server), client_config_for(&p.cert, version, None));
        roundtrip(&lp, &t, &data, &pattern(100_000, 5));
        let info = t.tls_info().unwrap();
        assert_eq!(info.protocol_version.as_deref(), Some(version));
        assert!(info.cipher_suite.as_deref().unwrap().starts_with(prefix), "{info:?}");
        assert_eq!(infos.borrow()[0].protocol_version.as_deref(), Some(version), "the server agrees");
        assert_eq!(infos.borrow()[0].cipher_suite, info.cipher_suite);
        match t.get_extra_info("cipher") {
            Some(ExtraInfo::Cipher { name, protocol, .. }) => {
                assert_eq!(protocol, version);
                assert_eq!(Some(name), info.cipher_suite);
            }
            other => panic!("cipher: {other:?}"),
        }
        t.close();
        must(&lp, 5.0, "closed", || log.borrow().len() == 2 && slog.borrow().len() == 3);
        assert_eq!(*log.borrow(), vec!["made", "lost:"]);
        assert_eq!(*slog.borrow(), vec!["made", "eof", "lost:"], "close_notify in {version}");
        server.close();
    }
}

#[test]
fn session_resumption_with_the_same_client_config() {
    for version in ["TLSv1.3", "TLSv1.2"] {
        let lp = EventLoop::new().unwrap();
        let p = pki();
        let (slog, infos): (Log, Infos) = Default::default();
        let server = tapped_echo_server(&lp, &slog, &infos, server_config(&p, &[]));
        let port = port_of(&server);
        let config = client_config_for(&p.cert, version, None);
        let mut resumed = Vec::new();
        // The same config twice, then a new config (an empty session cache).
        for cfg in [config.clone(), config.clone(), client_config_for(&p.cert, version, None)] {
            let (t, data, log) = connect_sink(&lp, port, cfg);
            // The round trip also makes sure a TLS 1.3 ticket, sent after
            // the handshake, was received.
            roundtrip(&lp, &t, &data, b"ticket?");
            let info = t.tls_info().unwrap();
            assert_eq!(info.protocol_version.as_deref(), Some(version));
            resumed.push(info.resumed);
            t.close();
            must(&lp, 5.0, "closed", || log.borrow().len() == 2);
        }
        assert_eq!(resumed, [false, true, false], "{version}: client side");
        let server_side: Vec<bool> = infos.borrow().iter().map(|i| i.resumed).collect();
        assert_eq!(server_side, [false, true, false], "{version}: server side");
        // A resumed session still authenticates the server.
        assert!(infos.borrow().iter().all(|i| i.protocol_version.as_deref() == Some(version)));
        server.close();
    }
}

/// A one-request HTTP/1.1 server: reads the request head, answers it and
/// closes (close_notify). Records the request head.
struct Http {
    t: Option<Transport>,
    request: Rc<RefCell<Vec<u8>>>,
}

impl Protocol for Http {
    fn connection_made(&mut self, t: Transport) {
        self.t = Some(t);
    }
    fn data_received(&mut self, d: &[u8]) {
        let mut req = self.request.borrow_mut();
        let complete_before = req.windows(4).any(|w| w == b"\r\n\r\n");
        req.extend_from_slice(d);
        if complete_before || !req.windows(4).any(|w| w == b"\r\n\r\n") {
            return;
        }
        let t = self.t.as_ref().unwrap();
        let info = t.tls_info().unwrap();
        let body = format!("hello over {}\n", info.protocol_version.unwrap());
        let head = format!(
            "HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
            body.len()
        );
        t.write(head.as_bytes()).unwrap();
        t.write(body.as_bytes()).unwrap();
        t.close();
    }
}

fn curl() -> bool {
    let ok = Command::new("curl").arg("--version").stdout(Stdio::null()).stderr(Stdio::null()).status().is_ok();
    if !ok {
        println!("SKIPPED: curl not installed (`make deps` installs it)");
    }
    ok
}

/// `curl --cacert` fetches a page from a Rust TLS server on the loop.
#[test]
fn interop_curl_against_rust_server() {
    if !curl() {
        return;
    }
    for (version, flags) in [("TLSv1.3", &["--tlsv1.3"][..]), ("TLSv1.2", &["--tlsv1.2", "--tls-max", "1.2"][..])] {
        let lp = EventLoop::new().unwrap();
        let p = pki();
        let dir = tmpdir("curl");
        std::fs::write(dir.join("ca.pem"), &p.cert_pem).unwrap();
        let request: Rc<RefCell<Vec<u8>>> = Default::default();
        let infos: Infos = Default::default();
        let (r2, i2) = (request.clone(), infos.clone());
        let opts = ServerOptions {
            tls: Some(TlsServerOptions::new(server_config(&p, &[b"http/1.1"]))),
            ..Default::default()
        };
        let server = complete(
            &lp,
            &lp.create_server(
                move || Tap { inner: Http { t: None, request: r2.clone() }, infos: i2.clone() },
                "127.0.0.1",
                0,
                opts,
            ),
            5.0,
        )
        .unwrap();
        let port = port_of(&server);
        let child = Command::new("curl")
            .args(["-sS", "--fail", "--max-time", "20", "--cacert", dir.join("ca.pem").to_str().unwrap()])
            .args(["--resolve", &format!("localhost:{port}:127.0.0.1")])
            .args(flags)
            .args(["-w", "%{http_code} %{http_version}"])
            .arg(format!("https://localhost:{port}/hello"))
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        let child = RefCell::new(child);
        must(&lp, 20.0, "curl exits", || child.borrow_mut().try_wait().unwrap().is_some());
        let out = child.into_inner().wait_with_output().unwrap();
        let stdout = String::from_utf8_lossy(&out.stdout);
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(out.status.success(), "curl {version}: {} {stderr}", out.status);
        assert_eq!(stdout, format!("hello over {version}\n200 1.1"), "curl {version}; stderr: {stderr}");
        let req = String::from_utf8(request.borrow().clone()).unwrap();
        assert!(req.starts_with("GET /hello HTTP/1.1\r\n"), "{req}");
        assert!(req.contains(&format!("Host: localhost:{port}\r\n")), "{req}");
        let info = infos.borrow()[0].clone();
        assert_eq!(info.protocol_version.as_deref(), Some(version));
        assert_eq!(info.alpn_protocol.as_deref(), Some(&b"http/1.1"[..]), "curl offers h2 and http/1.1");
        assert_eq!(info.server_name.as_deref(), Some("localhost"), "the SNI curl sent");
        must(&lp, 5.0, "server connection closed", || server.active_connections() == 0);
        server.close();
        let _ = std::fs::remove_dir_all(&dir);
    }
}

// ---------------------------------------------------------------------------- server close, loop close

#[test]
fn server_close_clients_sends_close_notify() {
    let lp = EventLoop::new().unwrap();
    let p = pki();
    let slog: Log = Default::default();
    let server = echo_server(&lp, &p, &slog, server_opts(&p));
    let (t, data, clog) = connect_sink(&lp, port_of(&server), client_opts(&p).config);
    roundtrip(&lp, &t, &data, b"before close_clients");
    server.close();
    server.close_clients();
    // The client's eof_received means it got close_notify, not a bare FIN.
    must(&lp, 5.0, "client lost", || clog.borrow().len() == 3);
    assert_eq!(*clog.borrow(), vec!["made", "eof", "lost:"]);
    must(&lp, 5.0, "server side lost", || slog.borrow().len() == 2);
    assert_eq!(*slog.borrow(), vec!["made", "lost:"]);
    complete(&lp, &server.wait_closed(), 5.0).unwrap();
    assert_eq!(server.active_connections(), 0);
}

#[test]
fn server_abort_clients_sends_no_close_notify() {
    let lp = EventLoop::new().unwrap();
    let p = pki();
    let slog: Log = Default::default();
    let server = echo_server(&lp, &p, &slog, server_opts(&p));
    let (t, data, clog) = connect_sink(&lp, port_of(&server), client_opts(&p).config);
    roundtrip(&lp, &t, &data, b"before abort_clients");
    server.close();
    server.abort_clients();
    must(&lp, 5.0, "client lost", || clog.borrow().len() == 2);
    assert_eq!(clog.borrow()[0], "made");
    assert!(clog.borrow()[1].starts_with("lost"), "no eof_received: {:?}", clog.borrow());
    must(&lp, 5.0, "server side lost", || slog.borrow().len() == 2);
    assert_eq!(*slog.borrow(), vec!["made", "lost:"]);
    complete(&lp, &server.wait_closed(), 5.0).unwrap();
}

/// Holds its transport (the usual cycle through the transport) and counts its drops.
struct Dropper {
    t: Option<Transport>,
    made: Rc<Cell<usize>>,
    dropped: Rc<Cell<usize>>,
}

impl Protocol for Dropper {
    fn connection_made(&mut self, t: Transport) {
        self.made.set(self.made.get() + 1);
        // A peer that does not read: a close() waits for its close_notify.
        t.pause_reading();
        self.t = Some(t);
    }
}

impl Drop for Dropper {
    fn drop(&mut self) {
        self.dropped.set(self.dropped.get() + 1);
    }
}

/// Closing the loop with TLS connections still open (established, in the
/// handshake, closing) frees them: their protocols are dropped and their
/// sockets closed.
#[test]
fn loop_close_releases_open_tls_connections() {
    let lp = EventLoop::new().unwrap();
    let p = pki();
    let (made, dropped) = (Rc::new(Cell::new(0)), Rc::new(Cell::new(0)));
    let (m2, d2) = (made.clone(), dropped.clone());
    let server = complete(
        &lp,
        &lp.create_server(move || Dropper { t: None, made: m2.clone(), dropped: d2.clone() }, "127.0.0.1", 0, server_opts(&p)),
        5.0,
    )
    .unwrap();
    let port = port_of(&server);
    // Two established connections (four protocols).
    let mut conns = Vec::new();
    for _ in 0..2 {
        let (m, d) = (made.clone(), dropped.clone());
        let fut = lp.create_connection_tls(
            move || Dropper { t: None, made: m, dropped: d },
            "localhost",
            port,
            ConnectOptions::default(),
            client_opts(&p),
        );
        conns.push(complete(&lp, &fut, 5.0).unwrap());
    }
    must(&lp, 5.0, "server protocols made", || made.get() == 4);
    // One of them closing: close_notify sent, waiting for the peer's (which
    // does not read) under the shutdown timer.
    conns[1].0.close();
    // A server connection in the handshake: a peer that sends nothing.
    let silent = std::net::TcpStream::connect(("127.0.0.1", port)).unwrap();
    // A client connection in the handshake: a server that never answers.
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    listener.set_nonblocking(true).unwrap();
    let hs_port = listener.local_addr().unwrap().port();
    let (m, d) = (made.clone(), dropped.clone());
    let mut copts = client_opts(&p);
    copts.server_name = Some("localhost".into());
    let pending = lp.create_connection_tls(
        move || Dropper { t: None, made: m, dropped: d },
        "127.0.0.1",
        hs_port,
        ConnectOptions::default(),
        copts,
    );
    let mut mute = None;
    must(&lp, 5.0, "the mute server accepted", || {
        mute = mute.take().or_else(|| listener.accept().ok().map(|(s, _)| s));
        mute.is_some()
    });
    let mute = mute.unwrap();
    mute.set_nonblocking(false).unwrap();
    must(&lp, 5.0, "the server accepted the silent peer", || server.active_connections() == 3);
    common::run_for(&lp, 0.05);
    assert!(conns[1].0.is_closing());
    assert_eq!(dropped.get(), 0);

    drop(conns);
    drop(pending);
    drop(server);
    lp.close().unwrap();
    assert_eq!(made.get(), 4, "the handshakes in progress never made a protocol");
    assert_eq!(dropped.get(), 4, "every protocol is dropped once the loop is closed");
    // The sockets were closed: both silent peers read EOF (the mute
    // server after the ClientHello).
    for (mut s, what) in [(silent, "server side"), (mute, "client side")] {
        s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
        let mut buf = Vec::new();
        let r = s.read_to_end(&mut buf);
        assert!(r.is_ok(), "{what}: the TLS connection's socket must be closed: {r:?}");
    }
}

// ---------------------------------------------------------------------------- extra info

/// Keeps its transport where the test can reach it.
struct Hold(Rc<RefCell<Vec<Transport>>>);

impl Protocol for Hold {
    fn connection_made(&mut self, t: Transport) {
        self.0.borrow_mut().push(t);
    }
}

#[test]
fn extra_info_keys_on_both_sides() {
    let lp = EventLoop::new().unwrap();
    let p = pki();
    let ca = ca();
    let alice = client_cert(&ca, "alice");
    // With client authentication and ALPN.
    let mut sconfig = (*server_config_client_auth(&p, &ca)).clone();
    sconfig.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
    let held: Rc<RefCell<Vec<Transport>>> = Default::default();
    let h2 = held.clone();
    let opts = ServerOptions { tls: Some(TlsServerOptions::new(Arc::new(sconfig))), ..Default::default() };
    let server = complete(&lp, &lp.create_server(move || Hold(h2.clone()), "127.0.0.1", 0, opts), 5.0).unwrap();
    let mut cconfig = (*client_config_for(&p.cert, "TLSv1.3", Some(&alice))).clone();
    cconfig.alpn_protocols = vec![b"http/1.1".to_vec()];
    let (c, _, _) = connect_sink(&lp, port_of(&server), Arc::new(cconfig));
    must(&lp, 5.0, "server side made", || held.borrow().len() == 1);
    let s = held.borrow()[0].clone();
    for (t, side, peer) in [(&c, "client", p.cert.as_ref()), (&s, "server", alice.0.as_ref())] {
        assert_eq!(t.get_extra_info("peercert"), Some(ExtraInfo::Bytes(peer.to_vec())), "{side}");
        match t.get_extra_info("cipher") {
            Some(ExtraInfo::Cipher { name, protocol, bits }) => {
                assert_eq!(protocol, "TLSv1.3", "{side}");
                assert_eq!(Some(name), t.tls_info().unwrap().cipher_suite, "{side}");
                assert_eq!(Some(bits), t.tls_info().unwrap().cipher_bits, "{side}");
            }
            other => panic!("{side}: cipher: {other:?}"),
        }
        assert_eq!(t.get_extra_info("compression"), None, "{side}");
        assert_eq!(t.get_extra_info("alpn_protocol"), Some(ExtraInfo::Bytes(b"http/1.1".to_vec())), "{side}");
        // Client: the name verified; server: the SNI received.
        assert_eq!(t.get_extra_info("server_hostname"), Some(ExtraInfo::Text("localhost".into())), "{side}");
        assert!(matches!(t.get_extra_info("peername"), Some(ExtraInfo::Address(_))), "{side}");
        assert!(matches!(t.get_extra_info("socket"), Some(ExtraInfo::Fd(_))), "{side}");
        assert_eq!(t.get_extra_info("no_such_key"), None, "{side}");
    }
    c.close();
    s.close();

    // Without client authentication nor ALPN: the server has no peercert, nobody an ALPN protocol.
    let server = complete(
        &lp,
        &lp.create_server(
            {
                let h = held.clone();
                move || Hold(h.clone())
            },
            "127.0.0.1",
            0,
            server_opts(&p),
        ),
        5.0,
    )
    .unwrap();
    let (c, _, _) = connect_sink(&lp, port_of(&server), client_opts(&p).config);
    must(&lp, 5.0, "server side made", || held.borrow().len() == 2);
    let s = held.borrow()[1].clone();
    assert_eq!(s.get_extra_info("peercert"), None);
    assert!(matches!(c.get_extra_info("peercert"), Some(ExtraInfo::Bytes(_))));
    assert_eq!(c.get_extra_info("alpn_protocol"), None);
    assert_eq!(s.get_extra_info("alpn_protocol"), None);
    assert_eq!(s.get_extra_info("server_hostname"), Some(ExtraInfo::Text("localhost".into())));
    c.close();
    s.close();
}

#[test]
fn tls_over_unix_sockets_server_and_client() {
    // A TLS server on a Unix socket (create_unix_server with ServerOptions::tls),
    // and a client made with create_tls_transport on a connected Unix socket.
    let lp = EventLoop::new().unwrap();
    let p = pki();
    let dir = tmpdir("tls-unix");
    let path = dir.join("tls.sock");
    let slog: Log = Default::default();
    let slog2 = slog.clone();
    let server =
        complete(&lp, &lp.create_unix_server(move || Echo::new(&slog2), &path, server_opts(&p)), 5.0).unwrap();
    let sock = std::os::unix::net::UnixStream::connect(&path).unwrap();
    let sink = Sink::default();
    let (data, clog) = (sink.data.clone(), sink.log.clone());
    let mut opts = client_opts(&p);
    opts.server_name = Some("localhost".into());
    let done: Rc<RefCell<Option<Result<(), String>>>> = Default::default();
    let done2 = done.clone();
    let t = lp
        .create_tls_transport(sock.into(), ferroloop::protocol_ref(sink), opts, move |r| {
            *done2.borrow_mut() = Some(r.map(|_| ()).map_err(|e| e.to_string()));
        })
        .unwrap();
    must(&lp, 5.0, "handshake", || done.borrow().is_some());
    assert_eq!(*done.borrow(), Some(Ok(())));
    assert_eq!(clog.borrow().first().map(String::as_str), Some("made"));
    assert_eq!(t.tls_info().unwrap().protocol_version.as_deref(), Some("TLSv1.3"));
    let payload = pattern(300_000, 3);
    t.write(&payload).unwrap();
    must(&lp, 5.0, "echo over Unix TLS", || data.borrow().len() >= payload.len());
    assert!(*data.borrow() == payload);
    t.close();
    must(&lp, 5.0, "both sides lost", || clog.borrow().len() == 2 && slog.borrow().len() == 3);
    assert_eq!(*slog.borrow(), vec!["made", "eof", "lost:"]);
    server.close();
    let _ = std::fs::remove_dir_all(&dir);
}
