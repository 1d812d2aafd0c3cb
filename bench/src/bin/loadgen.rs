//! Load generator for echo servers: one thread, one mio loop, N connections.
//!
//! ```text
//! loadgen (--tcp HOST:PORT | --unix PATH)
//!         [--conns 1] [--size 100] [--depth 1] [--mode pingpong|stream]
//!         [--duration 2 | --messages M] [--warmup 0.5] [--window 1048576]
//!         [--bulk BYTES] [--idle] [--hold 0.5] [--server-pid PID] [--timeout 120]
//!         [--tls] [--reconnect] [--commands]
//! ```
//!
//! * `pingpong`: each connection keeps `depth` messages of `size` bytes in
//!   flight; a message is done when its `size` bytes have come back, and its
//!   round-trip latency is recorded.
//! * `stream`: each connection keeps up to `window` bytes in flight, written
//!   as fast as the socket takes them while the echo is read back; "messages"
//!   are then `size`-byte units of the echoed stream (no latency).
//! * `--bulk BYTES`: stream exactly BYTES per connection, no warm-up; the
//!   measured window is the whole transfer (MB/s).
//! * `--idle`: open the connections, echo one message on each, then hold them
//!   idle for `hold` seconds and report the server's RSS growth per connection.
//! * `--tls`: every connection is a TLS client (rustls; the server's
//!   certificate is not verified: the cost measured is the server's).
//! * `--reconnect`: each connection echoes one message, closes and is opened
//!   again: a "message" is then a whole connection (with `--tls`, a handshake).
//! * `--commands` (ping-pong): connect and prime, print `{"ready": true, ...}`,
//!   then measure one window (warm-up, window, drain) for each `run` line read
//!   on stdin, printing its JSON line, with the connections idle in between;
//!   EOF or `quit` closes. A harness can so interleave short windows of
//!   several servers, each load generator keeping its connections.
//!
//! Every connection sends a deterministic byte pattern (period 65,537, a
//! prime, with a per-connection phase), and every byte that comes back is
//! compared with what was sent at that offset: a lost, repeated, reordered or
//! corrupted byte ends the run with an error (exit status 1).
//!
//! Phases: connect (at most 256 handshakes at a time) and prime (one message
//! per connection, so that the server has accepted every connection), warm-up,
//! the measured window, then drain (in-flight messages complete; no new ones),
//! and close. With `--server-pid`, the server's CPU time (utime+stime from
//! `/proc/PID/stat`, and the schedstat sum as a finer cross-check) is sampled
//! at the edges of the measured window. Prints one JSON object on stdout.

use std::collections::VecDeque;
use std::io::{self, Read, Write};
use std::net::Shutdown;
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use ferroloop::rustls;
use ferroloop_bench::{
    cpu_fields, cpu_sample, die, fd_count, num_or_null, pattern, percentile, raise_nofile, rss_kib, rusage_self_us, Args,
    CpuSample, Endpoint,
};
use mio::event::Source;
use mio::net::{TcpStream, UnixStream};
use mio::{Events, Interest, Poll, Token};

const PERIOD: usize = 65_537;
const MAX_IO: usize = 256 * 1024;
const MAX_CONNECTING: usize = 256;

enum Stream {
    Tcp(TcpStream),
    Unix(UnixStream),
    /// TLS over TCP: the socket and the client session.
    Tls(TcpStream, Box<rustls::ClientConnection>),
}

/// Send the session's pending ciphertext: `Ok(true)` once all of it is out.
fn tls_flush(s: &mut TcpStream, c: &mut rustls::ClientConnection) -> io::Result<bool> {
    while c.wants_write() {
        match c.write_tls(s) {
            Ok(_) => {}
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => return Ok(false),
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
    Ok(true)
}

impl Stream {
    /// Plaintext bytes (TLS: decrypted), `Ok(0)` at EOF, `WouldBlock` when
    /// the socket has nothing more.
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        match self {
            Stream::Tcp(s) => s.read(buf),
            Stream::Unix(s) => s.read(buf),
            Stream::Tls(s, c) => loop {
                match c.reader().read(buf) {
                    Ok(n) => return Ok(n),
                    Err(e) if e.kind() == io::ErrorKind::WouldBlock => {}
                    Err(e) => return Err(e),
                }
                match c.read_tls(s) {
                    Ok(0) => return Ok(0),
                    Ok(_) => {}
                    Err(e) => return Err(e),
                }
                c.process_new_packets().map_err(|e| io::Error::new(io::ErrorKind::InvalidData, e))?;
                // Handshake messages, key updates: answer at once.
                tls_flush(s, c)?;
            },
        }
    }
    /// TLS: plaintext is taken only when the previous ciphertext is out,
    /// so at most one write's worth is buffered.
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        match self {
            Stream::Tcp(s) => s.write(buf),
            Stream::Unix(s) => s.write(buf),
            Stream::Tls(s, c) => {
                if !tls_flush(s, c)? {
                    return Err(io::ErrorKind::WouldBlock.into());
                }
                let n = c.writer().write(buf)?;
                tls_flush(s, c)?;
                Ok(n)
            }
        }
    }
    /// Send what TLS still holds (after a writable event).
    fn flush(&mut self) -> io::Result<()> {
        if let Stream::Tls(s, c) = self {
            tls_flush(s, c)?;
        }
        Ok(())
    }
    fn is_tls(&self) -> bool {
        matches!(self, Stream::Tls(..))
    }
    fn source(&mut self) -> &mut dyn Source {
        match self {
            Stream::Tcp(s) => s,
            Stream::Unix(s) => s,
            Stream::Tls(s, _) => s,
        }
    }
    fn shutdown_write(&mut self) {
        let _ = match self {
            Stream::Tcp(s) => s.shutdown(Shutdown::Write),
            Stream::Unix(s) => s.shutdown(Shutdown::Write),
            Stream::Tls(s, c) => {
                c.send_close_notify();
                let _ = tls_flush(s, c);
                s.shutdown(Shutdown::Write)
            }
        };
    }
    /// After a writable event on a connecting socket: `Ok(true)` once connected.
    fn finish_connect(&self) -> io::Result<bool> {
        match self {
            Stream::Tcp(s) | Stream::Tls(s, _) => {
                if let Some(e) = s.take_error()? {
                    return Err(e);
                }
                match s.peer_addr() {
                    Ok(_) => Ok(true),
                    Err(e) if e.kind() == io::ErrorKind::NotConnected => Ok(false),
                    Err(e) => Err(e),
                }
            }
            Stream::Unix(s) => {
                if let Some(e) = s.take_error()? {
                    return Err(e);
                }
                Ok(true)
            }
        }
    }
}

#[derive(Clone, Copy, PartialEq, Eq, Debug)]
enum Phase {
    /// Opening connections; each sends one message once connected.
    Prime,
    Warmup,
    Measure,
    /// No new messages; waiting for in-flight ones.
    Drain,
}

struct Conn {
    s: Stream,
    phase_off: usize,
    connected: bool,
    /// Bytes written so far.
    sent: u64,
    /// Bytes we want written (messages issued, or the stream window).
    target: u64,
    /// Bytes received and verified.
    recvd: u64,
    /// Ping-pong: when each in-flight message was issued.
    inflight: VecDeque<Instant>,
    primed: bool,
    /// `--reconnect`: this slot's connection was primed once already.
    reopened: bool,
    /// `--reconnect`: how many connections this slot has had before this one.
    generation: u64,
}

struct Config {
    ep: Endpoint,
    conns: usize,
    size: u64,
    depth: usize,
    stream: bool,
    window: u64,
    duration: Option<f64>,
    messages: Option<u64>,
    warmup: f64,
    bulk: Option<u64>,
    idle: bool,
    hold: f64,
    server_pid: Option<u32>,
    timeout: f64,
    tls: Option<Arc<rustls::ClientConfig>>,
    reconnect: bool,
    commands: bool,
}

struct Gen {
    cfg: Config,
    pattern: Vec<u8>,
    conns: Vec<Conn>,
    poll: Poll,
    phase: Phase,
    /// Connections opened so far / connected and primed.
    opened: usize,
    primed: usize,
    connecting: usize,
    /// Counters for the measured window.
    messages: u64,
    bytes: u64,
    latencies: Vec<u64>,
    /// Connections still expected to finish their bulk transfer.
    bulk_left: usize,
    buf: Vec<u8>,
}

/// The server's pid (0: not given), for [`fail`] to report its open fds.
static SERVER_PID: AtomicU32 = AtomicU32::new(0);

fn fail(msg: &str) -> ! {
    let pid = SERVER_PID.load(Ordering::Relaxed);
    let fds = if pid != 0 { fd_count(pid).ok() } else { None };
    match fds {
        // Sampled before our own sockets close: an fd limit is a usual cause with many connections.
        Some(n) => println!("{{\"ok\": false, \"error\": {}, \"server_fds_at_failure\": {n}}}", json_str(msg)),
        None => println!("{{\"ok\": false, \"error\": {}}}", json_str(msg)),
    }
    eprintln!("loadgen: {msg}");
    std::process::exit(1)
}

fn json_str(s: &str) -> String {
    let mut out = String::from("\"");
    for c in s.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            c if (c as u32) < 0x20 => out.push_str(&format!("\\u{:04x}", c as u32)),
            c => out.push(c),
        }
    }
    out.push('"');
    out
}

fn make_pattern() -> Vec<u8> {
    pattern(PERIOD, MAX_IO)
}

impl Gen {
    fn expected(&self, phase_off: usize, off: u64, len: usize) -> &[u8] {
        let start = (phase_off + (off % PERIOD as u64) as usize) % PERIOD;
        &self.pattern[start..start + len]
    }

    fn connect(&mut self, id: usize) -> io::Result<Conn> {
        let mut s = match &self.cfg.ep {
            Endpoint::Tcp(a) => {
                let s = TcpStream::connect(*a)?;
                let _ = s.set_nodelay(true);
                match &self.cfg.tls {
                    Some(config) => {
                        let name = rustls::pki_types::ServerName::try_from("localhost").expect("a valid name");
                        let c = rustls::ClientConnection::new(config.clone(), name)
                            .map_err(|e| io::Error::new(io::ErrorKind::InvalidInput, e))?;
                        Stream::Tls(s, Box::new(c))
                    }
                    None => Stream::Tcp(s),
                }
            }
            Endpoint::Unix(p) => Stream::Unix(UnixStream::connect(p)?),
        };
        self.poll.registry().register(s.source(), Token(id), Interest::READABLE | Interest::WRITABLE)?;
        self.connecting += 1;
        Ok(Conn {
            s,
            phase_off: (id * 7919) % PERIOD,
            connected: false,
            sent: 0,
            target: 0,
            recvd: 0,
            inflight: VecDeque::new(),
            primed: false,
            reopened: false,
            generation: 0,
        })
    }

    fn open_one(&mut self) -> io::Result<()> {
        let c = self.connect(self.opened)?;
        self.conns.push(c);
        self.opened += 1;
        Ok(())
    }

    /// `--reconnect`: close connection `id` (TLS: with close_notify) and,
    /// while the run goes on, open a new one in its place.
    fn reconnect(&mut self, id: usize) {
        let _ = self.poll.registry().deregister(self.conns[id].s.source());
        self.conns[id].s.shutdown_write();
        // Whatever follows, this connection is done: readers must stop.
        let generation = self.conns[id].generation + 1;
        self.conns[id].generation = generation;
        if !matches!(self.phase, Phase::Warmup | Phase::Measure) {
            return;
        }
        match self.connect(id) {
            Ok(mut c) => {
                c.reopened = true;
                c.generation = generation;
                self.conns[id] = c;
            }
            Err(e) => fail(&format!("reconnect #{id}: {e}")),
        }
    }

    /// Open connections up to the limit of concurrent handshakes.
    fn open_more(&mut self) {
        while self.opened < self.cfg.conns && self.connecting < MAX_CONNECTING {
            if let Err(e) = self.open_one() {
                if e.kind() == io::ErrorKind::WouldBlock && self.connecting > 0 {
                    // A Unix listener's backlog is full: retry when one completes.
                    return;
                }
                fail(&format!("connect #{}: {e}", self.opened));
            }
        }
    }

    /// Queue one more ping-pong message on `id`.
    fn issue(&mut self, id: usize, now: Instant) {
        let c = &mut self.conns[id];
        c.target += self.cfg.size;
        c.inflight.push_back(now);
    }

    /// Write towards the target until the socket stops taking bytes.
    fn pump(&mut self, id: usize) {
        let pattern = &self.pattern;
        let c = &mut self.conns[id];
        if c.connected {
            if let Err(e) = c.s.flush() {
                fail(&format!("write on connection {id}: {e}"));
            }
        }
        while c.connected && c.sent < c.target {
            let len = ((c.target - c.sent) as usize).min(MAX_IO);
            let start = (c.phase_off + (c.sent % PERIOD as u64) as usize) % PERIOD;
            match c.s.write(&pattern[start..start + len]) {
                Ok(n) => c.sent += n as u64,
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => return,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => fail(&format!("write on connection {id}: {e}")),
            }
        }
    }

    /// Stream mode: keep `window` bytes in flight (bounded by a bulk total).
    fn refill_stream(&mut self, id: usize) {
        let running = matches!(self.phase, Phase::Warmup | Phase::Measure);
        let c = &mut self.conns[id];
        if !c.primed || !running {
            return;
        }
        let mut t = c.recvd + self.cfg.window;
        if let Some(total) = self.cfg.bulk {
            // The prime message counts as part of the transfer.
            t = t.min(total.max(self.cfg.size));
        }
        if t > c.target {
            c.target = t;
        }
    }

    fn on_readable(&mut self, id: usize, now: Instant) {
        loop {
            let n = {
                let c = &mut self.conns[id];
                match c.s.read(&mut self.buf) {
                    Ok(0) => fail(&format!("connection {id}: server closed the connection (EOF) after {} bytes", c.recvd)),
                    Ok(n) => n,
                    Err(e) if e.kind() == io::ErrorKind::WouldBlock => return,
                    Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                    Err(e) => fail(&format!("read on connection {id}: {e}")),
                }
            };
            let (phase_off, recvd, sent) = {
                let c = &self.conns[id];
                (c.phase_off, c.recvd, c.sent)
            };
            if recvd + n as u64 > sent {
                fail(&format!("connection {id}: received {} bytes but sent only {sent}", recvd + n as u64));
            }
            if self.buf[..n] != *self.expected(phase_off, recvd, n) {
                let exp = self.expected(phase_off, recvd, n).to_vec();
                let k = (0..n).find(|&k| self.buf[k] != exp[k]).unwrap_or(0);
                fail(&format!("connection {id}: echo differs at byte {}", recvd + k as u64));
            }
            let tls = self.conns[id].s.is_tls();
            let generation = self.conns[id].generation;
            self.on_bytes(id, n as u64, now);
            if self.conns[id].generation != generation {
                return; // the slot holds a new connection now
            }
            // A short TLS read says nothing about the socket: read on.
            if n < self.buf.len() && !tls {
                return;
            }
        }
    }

    /// Account for `n` verified bytes on `id`.
    fn on_bytes(&mut self, id: usize, n: u64, now: Instant) {
        let size = self.cfg.size;
        let measuring = self.phase == Phase::Measure;
        let old = self.conns[id].recvd;
        let new = old + n;
        self.conns[id].recvd = new;
        if measuring {
            self.bytes += n;
        }
        let done_msgs = new / size - old / size;
        if !self.conns[id].primed {
            if new >= size {
                self.conns[id].primed = true;
                let t0 = self.conns[id].inflight.pop_front();
                if self.conns[id].reopened {
                    // --reconnect: a whole connection was one message.
                    if measuring {
                        self.messages += 1;
                        if let Some(t0) = t0 {
                            self.latencies.push(now.duration_since(t0).as_nanos() as u64);
                        }
                    }
                    self.reconnect(id);
                    return;
                }
                self.primed += 1;
                if !self.cfg.idle {
                    self.start_conn(id, now);
                }
            }
            return;
        }
        if self.cfg.stream {
            if measuring {
                self.messages += done_msgs;
            }
            if let Some(total) = self.cfg.bulk {
                if new >= total.max(size) && old < total.max(size) {
                    self.bulk_left -= 1;
                }
            }
            self.refill_stream(id);
        } else {
            for _ in 0..done_msgs {
                let t0 = self.conns[id].inflight.pop_front().expect("a message was in flight");
                if measuring {
                    self.messages += 1;
                    self.latencies.push(now.duration_since(t0).as_nanos() as u64);
                }
                if matches!(self.phase, Phase::Warmup | Phase::Measure) {
                    self.issue(id, now);
                }
            }
        }
        self.pump(id);
    }

    /// Begin the load on a primed connection (only once the run has started).
    fn start_conn(&mut self, id: usize, now: Instant) {
        if !matches!(self.phase, Phase::Warmup | Phase::Measure) {
            return;
        }
        if self.cfg.reconnect {
            self.reconnect(id);
            return;
        }
        if self.cfg.stream {
            self.refill_stream(id);
        } else {
            for _ in 0..self.cfg.depth {
                self.issue(id, now);
            }
        }
        self.pump(id);
    }

    fn in_flight(&self) -> bool {
        self.conns.iter().any(|c| c.recvd < c.sent || c.sent < c.target)
    }

    fn handle_events(&mut self, events: &Events, now: Instant) {
        for ev in events.iter() {
            let id = ev.token().0;
            if !self.conns[id].connected {
                if !(ev.is_writable() || ev.is_error() || ev.is_write_closed()) {
                    continue;
                }
                match self.conns[id].s.finish_connect() {
                    Ok(true) => {}
                    Ok(false) => continue,
                    Err(e) => fail(&format!("connect #{id}: {e}")),
                }
                self.conns[id].connected = true;
                self.connecting -= 1;
                // Prime: one message, so that we know the server accepted it.
                self.issue(id, now);
                self.pump(id);
            }
            if ev.is_readable() || ev.is_read_closed() || ev.is_error() {
                self.on_readable(id, now);
            }
            if ev.is_writable() {
                self.pump(id);
            }
        }
    }

    fn poll_once(&mut self, events: &mut Events, timeout: Option<Duration>) {
        match self.poll.poll(events, timeout) {
            Ok(()) => {}
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => fail(&format!("poll: {e}")),
        }
        let now = Instant::now();
        self.handle_events(events, now);
        self.open_more();
    }
}

/// The load generator does not verify the server's certificate (the
/// signatures of the handshake are still checked).
#[derive(Debug)]
struct AnyServerCert(Arc<rustls::crypto::CryptoProvider>);

impl rustls::client::danger::ServerCertVerifier for AnyServerCert {
    fn verify_server_cert(
        &self,
        _: &rustls::pki_types::CertificateDer<'_>,
        _: &[rustls::pki_types::CertificateDer<'_>],
        _: &rustls::pki_types::ServerName<'_>,
        _: &[u8],
        _: rustls::pki_types::UnixTime,
    ) -> Result<rustls::client::danger::ServerCertVerified, rustls::Error> {
        Ok(rustls::client::danger::ServerCertVerified::assertion())
    }
    fn verify_tls12_signature(
        &self,
        m: &[u8],
        c: &rustls::pki_types::CertificateDer<'_>,
        d: &rustls::DigitallySignedStruct,
    ) -> Result<rustls::client::danger::HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(m, c, d, &self.0.signature_verification_algorithms)
    }
    fn verify_tls13_signature(
        &self,
        m: &[u8],
        c: &rustls::pki_types::CertificateDer<'_>,
        d: &rustls::DigitallySignedStruct,
    ) -> Result<rustls::client::danger::HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(m, c, d, &self.0.signature_verification_algorithms)
    }
    fn supported_verify_schemes(&self) -> Vec<rustls::SignatureScheme> {
        self.0.signature_verification_algorithms.supported_schemes()
    }
}

/// TLS 1.3 client; no session resumption (every `--reconnect` handshake is a full one).
fn tls_client_config() -> Arc<rustls::ClientConfig> {
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut c = rustls::ClientConfig::builder_with_provider(provider.clone())
        .with_safe_default_protocol_versions()
        .expect("ring supports the default versions")
        .dangerous()
        .with_custom_certificate_verifier(Arc::new(AnyServerCert(provider)))
        .with_no_client_auth();
    c.resumption = rustls::client::Resumption::disabled();
    Arc::new(c)
}

fn main() {
    let args = Args::parse(&["idle", "tls", "reconnect", "commands"]);
    if args.get("tcp").is_none() && args.get("unix").is_none() {
        die("give --tcp HOST:PORT or --unix PATH");
    }
    let mode = args.get("mode").unwrap_or("pingpong").to_string();
    let bulk: Option<u64> = args.get("bulk").map(|_| args.num("bulk", 0u64));
    let stream = match mode.as_str() {
        "pingpong" => bulk.is_some(),
        "stream" => true,
        m => die(&format!("--mode: expected pingpong or stream, got {m:?}")),
    };
    let cfg = Config {
        ep: Endpoint::from_args(&args, "127.0.0.1:0"),
        conns: args.num("conns", 1usize).max(1),
        size: args.num("size", 100u64).max(1),
        depth: args.num("depth", 1usize).max(1),
        stream,
        window: args.num("window", 1u64 << 20).max(1),
        duration: args.get("duration").map(|_| args.num("duration", 2.0f64)),
        messages: args.get("messages").map(|_| args.num("messages", 0u64)),
        warmup: if bulk.is_some() { 0.0 } else { args.num("warmup", 0.5f64) },
        bulk,
        idle: args.flag("idle"),
        hold: args.num("hold", 0.5f64),
        server_pid: args.get("server-pid").map(|_| args.num("server-pid", 0u32)),
        timeout: args.num("timeout", 120.0f64),
        tls: args.flag("tls").then(tls_client_config),
        reconnect: args.flag("reconnect"),
        commands: args.flag("commands"),
    };
    if cfg.commands && (cfg.stream || cfg.idle || cfg.reconnect || cfg.messages.is_some()) {
        die("--commands is for ping-pong runs of a --duration");
    }
    if cfg.reconnect && (cfg.stream || cfg.idle) {
        die("--reconnect is for ping-pong runs");
    }
    if cfg.tls.is_some() && !matches!(cfg.ep, Endpoint::Tcp(_)) {
        die("--tls is for TCP (--tcp HOST:PORT)");
    }
    if cfg.size as usize > MAX_IO && !cfg.stream {
        die(&format!("--size is at most {MAX_IO}"));
    }
    let duration = match (cfg.duration, cfg.messages, cfg.bulk, cfg.idle) {
        (_, _, Some(_), _) | (_, _, _, true) => None,
        (None, None, None, false) => Some(2.0),
        (d, _, _, _) => d,
    };
    raise_nofile();
    SERVER_PID.store(cfg.server_pid.unwrap_or(0), Ordering::Relaxed);

    let started = Instant::now();
    let deadline = started + Duration::from_secs_f64(cfg.timeout);
    let rss_before = cfg.server_pid.and_then(|p| rss_kib(p).ok());
    let fds_before = cfg.server_pid.and_then(|p| fd_count(p).ok());
    let conns_wanted = cfg.conns;
    let mut g = Gen {
        cfg,
        pattern: make_pattern(),
        conns: Vec::with_capacity(conns_wanted),
        poll: Poll::new().unwrap_or_else(|e| fail(&format!("poll: {e}"))),
        phase: Phase::Prime,
        opened: 0,
        primed: 0,
        connecting: 0,
        messages: 0,
        bytes: 0,
        latencies: Vec::new(),
        bulk_left: conns_wanted,
        buf: vec![0u8; MAX_IO],
    };
    let mut events = Events::with_capacity(1024);

    // Connect and prime every connection.
    g.open_more();
    while g.primed < g.cfg.conns {
        if Instant::now() > deadline {
            fail(&format!("timed out connecting: {} of {} connections primed", g.primed, g.cfg.conns));
        }
        g.poll_once(&mut events, Some(Duration::from_millis(100)));
    }
    let connect_s = started.elapsed().as_secs_f64();

    let pid = g.cfg.server_pid;

    if g.cfg.idle {
        // Hold the connections idle, then read the server's RSS.
        let cpu0 = g.server_cpu();
        let hold_until = Instant::now() + Duration::from_secs_f64(g.cfg.hold);
        while Instant::now() < hold_until {
            g.poll_once(&mut events, Some(hold_until.saturating_duration_since(Instant::now())));
        }
        let rss_after = pid.and_then(|p| rss_kib(p).ok());
        let fds_after = pid.and_then(|p| fd_count(p).ok());
        let fds_per_conn = match (fds_before, fds_after) {
            (Some(a), Some(b)) => (b as f64 - a as f64) / g.cfg.conns as f64,
            _ => f64::NAN,
        };
        let cpu1 = g.server_cpu();
        let per_conn = match (rss_before, rss_after) {
            (Some(a), Some(b)) => (b as f64 - a as f64) * 1024.0 / g.cfg.conns as f64,
            _ => f64::NAN,
        };
        let idle_cpu = match (cpu0, cpu1) {
            (Some(a), Some(b)) => b.stat_us - a.stat_us,
            _ => f64::NAN,
        };
        for c in &mut g.conns {
            c.s.shutdown_write();
        }
        println!(
            "{{\"ok\": true, \"kind\": \"idle\", \"conns\": {}, \"size\": {}, \"connect_s\": {:.3}, \"rss_before_kib\": {}, \"rss_after_kib\": {}, \"rss_per_conn_bytes\": {}, \"server_fds_per_conn\": {}, \"server_cpu_idle_us\": {}}}",
            g.cfg.conns,
            g.cfg.size,
            connect_s,
            rss_before.map(|v| v.to_string()).unwrap_or("null".into()),
            rss_after.map(|v| v.to_string()).unwrap_or("null".into()),
            num_or_null(per_conn),
            num_or_null(fds_per_conn),
            num_or_null(idle_cpu),
        );
        return;
    }

    if g.cfg.commands {
        println!("{{\"ready\": true, \"conns\": {}, \"connect_s\": {:.3}}}", g.cfg.conns, connect_s);
        flush_stdout();
        for line in io::stdin().lines() {
            let line = line.unwrap_or_else(|e| fail(&format!("stdin: {e}")));
            match line.trim() {
                "run" => {
                    println!("{}", g.window(&mut events, duration, connect_s));
                    flush_stdout();
                }
                "quit" => break,
                other => fail(&format!("unknown command {other:?} (expected run or quit)")),
            }
        }
    } else {
        println!("{}", g.window(&mut events, duration, connect_s));
    }
    for c in &mut g.conns {
        c.s.shutdown_write();
    }
}

fn flush_stdout() {
    if let Err(e) = io::stdout().flush() {
        fail(&format!("stdout: {e}"));
    }
}

impl Gen {
    /// The server's CPU time now (with `--server-pid`).
    fn server_cpu(&self) -> Option<CpuSample> {
        self.cfg.server_pid.map(|p| cpu_sample(p).unwrap_or_else(|e| fail(&format!("/proc/{p}: {e}"))))
    }

    /// One measured window on the primed connections: warm-up, the window
    /// (`duration`, or until the message count or the bulk transfer is
    /// done), then drain. Returns the window's JSON report.
    fn window(&mut self, events: &mut Events, duration: Option<f64>, connect_s: f64) -> String {
        let deadline = Instant::now() + Duration::from_secs_f64(self.cfg.timeout);
        self.messages = 0;
        self.bytes = 0;
        self.latencies.clear();
        // Start the load on every connection.
        self.phase = Phase::Warmup;
        let now = Instant::now();
        for id in 0..self.conns.len() {
            self.start_conn(id, now);
        }
        let warm_until = Instant::now() + Duration::from_secs_f64(self.cfg.warmup);
        while Instant::now() < warm_until {
            self.poll_once(events, Some(warm_until.saturating_duration_since(Instant::now())));
        }

        // The measured window.
        let cpu0 = self.server_cpu();
        let ru0 = rusage_self_us();
        let t0 = Instant::now();
        self.phase = Phase::Measure;
        if self.cfg.bulk.is_some() {
            // Bulk: the window is the whole transfer, warm-up included (it is zero).
            for id in 0..self.conns.len() {
                self.refill_stream(id);
                self.pump(id);
            }
        }
        let measure_until = duration.map(|d| t0 + Duration::from_secs_f64(d));
        loop {
            let now = Instant::now();
            if now > deadline {
                fail(&format!("timed out in the measured window after {} messages", self.messages));
            }
            if let Some(u) = measure_until {
                if now >= u {
                    break;
                }
            }
            if let Some(m) = self.cfg.messages {
                if self.messages >= m {
                    break;
                }
            }
            if self.cfg.bulk.is_some() && self.bulk_left == 0 {
                break;
            }
            let timeout = measure_until.map(|u| u.saturating_duration_since(now)).unwrap_or(Duration::from_millis(100));
            self.poll_once(events, Some(timeout));
        }
        let elapsed = t0.elapsed().as_secs_f64();
        let cpu1 = self.server_cpu();
        let ru1 = rusage_self_us();
        self.phase = Phase::Drain;

        // Drain: let in-flight messages complete.
        let drain_deadline = Instant::now() + Duration::from_secs(10);
        while self.in_flight() {
            if Instant::now() > drain_deadline {
                fail("in-flight messages did not come back within 10 s after the window");
            }
            self.poll_once(events, Some(Duration::from_millis(100)));
        }

        self.latencies.sort_unstable();
        let (p50, p99) = (percentile(&self.latencies, 0.50), percentile(&self.latencies, 0.99));
        let msgs = self.messages as f64;
        let verified: u64 = self.conns.iter().map(|c| c.recvd).sum();
        format!(
            concat!(
                "{{\"ok\": true, \"kind\": \"{}\", \"conns\": {}, \"size\": {}, \"depth\": {}, \"connect_s\": {:.3}, ",
                "\"elapsed_s\": {:.4}, \"messages\": {}, \"bytes\": {}, \"verified_bytes\": {}, \"msgs_per_s\": {:.1}, \"mb_per_s\": {:.2}, ",
                "\"lat_p50_us\": {}, \"lat_p99_us\": {}, {}}}"
            ),
            if self.cfg.bulk.is_some() { "bulk" } else if self.cfg.stream { "stream" } else { "pingpong" },
            self.cfg.conns,
            self.cfg.size,
            self.cfg.depth,
            connect_s,
            elapsed,
            self.messages,
            self.bytes,
            verified,
            msgs / elapsed,
            self.bytes as f64 / elapsed / 1e6,
            num_or_null(p50),
            num_or_null(p99),
            cpu_fields(cpu0, cpu1, msgs, elapsed, ru1 - ru0),
        )
    }
}
