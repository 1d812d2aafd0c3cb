//! WebSocket load generator: one thread, one mio loop, N client connections,
//! each keeping one binary message in flight (ping-pong against an echo server).
//!
//! ```text
//! wsload --tcp HOST:PORT [--conns 50] [--size 1024] [--path /]
//!        [--duration 2 | --messages M] [--warmup 0.5] [--server-pid PID] [--timeout 120]
//! ```
//!
//! Every connection performs the opening handshake of RFC 6455 (no extension
//! offered, so no compression: the cost measured is the server's framing and
//! its event loop), then sends masked binary frames of `size` bytes, each
//! with its own bytes from a deterministic pattern; every echoed frame must
//! be a final binary frame carrying exactly the bytes sent (else the run
//! ends with an error, exit status 1). Pings from the server are answered.
//!
//! Phases, as the echo load generator's: connect and handshake every
//! connection, warm-up, the measured window (the server's CPU time sampled at
//! its edges from `/proc/PID`), drain, close (a close frame, then shutdown).
//! Prints one JSON object with the same fields as `loadgen`'s ping-pong runs.

use std::io::{self, Read, Write};
use std::net::Shutdown;
use std::time::{Duration, Instant};

use ferroloop_bench::{
    cpu_fields, cpu_sample, die, num_or_null, pattern, percentile, raise_nofile, rusage_self_us, Args, CpuSample, Endpoint,
};
use mio::net::TcpStream;
use mio::{Events, Interest, Poll, Token};

const PERIOD: usize = 65_537;
const MAX_SIZE: usize = 65_536;
const MAX_CONNECTING: usize = 256;
/// Any 16 bytes in base64 (RFC 6455's example nonce): the server only checks the form.
const KEY: &str = "dGhlIHNhbXBsZSBub25jZQ==";

#[derive(Clone, Copy, PartialEq, Eq)]
enum State {
    Connecting,
    Handshake,
    Open,
}

#[derive(Clone, Copy, PartialEq, Eq)]
enum Phase {
    Handshake,
    Warmup,
    Measure,
    Drain,
}

struct Conn {
    s: TcpStream,
    state: State,
    /// Bytes to write, from `out_off`.
    out: Vec<u8>,
    out_off: usize,
    /// Bytes read and not yet parsed.
    inb: Vec<u8>,
    phase_off: usize,
    /// Messages issued on this connection.
    issued: u64,
    /// When the message in flight was issued.
    inflight: Option<Instant>,
}

struct Gen {
    size: usize,
    pattern: Vec<u8>,
    conns: Vec<Conn>,
    poll: Poll,
    phase: Phase,
    addr: std::net::SocketAddr,
    path: String,
    want: usize,
    connecting: usize,
    open: usize,
    messages: u64,
    latencies: Vec<u64>,
    rng: u32,
    buf: Vec<u8>,
}

fn fail(msg: &str) -> ! {
    let esc: String = msg.chars().filter(|c| *c != '"' && *c != '\\' && (*c as u32) >= 0x20).collect();
    println!("{{\"ok\": false, \"error\": \"{esc}\"}}");
    eprintln!("wsload: {msg}");
    std::process::exit(1)
}


impl Gen {
    fn payload(&self, phase_off: usize, msg: u64) -> &[u8] {
        let start = (phase_off + (msg % PERIOD as u64) as usize * self.size) % PERIOD;
        &self.pattern[start..start + self.size]
    }

    fn next_mask(&mut self) -> [u8; 4] {
        self.rng ^= self.rng << 13;
        self.rng ^= self.rng >> 17;
        self.rng ^= self.rng << 5;
        self.rng.to_le_bytes()
    }

    fn open_more(&mut self) {
        while self.conns.len() < self.want && self.connecting < MAX_CONNECTING {
            let id = self.conns.len();
            let mut s = TcpStream::connect(self.addr).unwrap_or_else(|e| fail(&format!("connect #{id}: {e}")));
            let _ = s.set_nodelay(true);
            self.poll
                .registry()
                .register(&mut s, Token(id), Interest::READABLE | Interest::WRITABLE)
                .unwrap_or_else(|e| fail(&format!("register: {e}")));
            self.connecting += 1;
            self.conns.push(Conn {
                s,
                state: State::Connecting,
                out: Vec::new(),
                out_off: 0,
                inb: Vec::new(),
                phase_off: (id * 7919) % PERIOD,
                issued: 0,
                inflight: None,
            });
        }
    }

    /// Append one masked client frame (`opcode`, final) to connection `id`'s output.
    fn frame(&mut self, id: usize, opcode: u8, payload: Option<&[u8]>) {
        let mask = self.next_mask();
        let body: Vec<u8> = match payload {
            Some(p) => p.to_vec(),
            None => {
                let c = &self.conns[id];
                self.payload(c.phase_off, c.issued).to_vec()
            }
        };
        let out = &mut self.conns[id].out;
        out.push(0x80 | opcode);
        match body.len() {
            n if n < 126 => out.push(0x80 | n as u8),
            n if n <= 0xFFFF => {
                out.push(0x80 | 126);
                out.extend_from_slice(&(n as u16).to_be_bytes());
            }
            n => {
                out.push(0x80 | 127);
                out.extend_from_slice(&(n as u64).to_be_bytes());
            }
        }
        out.extend_from_slice(&mask);
        out.extend(body.iter().enumerate().map(|(i, b)| b ^ mask[i & 3]));
    }

    /// Send the next message on `id`.
    fn issue(&mut self, id: usize, now: Instant) {
        self.frame(id, 0x2, None);
        let c = &mut self.conns[id];
        c.inflight = Some(now);
        self.pump(id);
    }

    fn pump(&mut self, id: usize) {
        let c = &mut self.conns[id];
        while c.out_off < c.out.len() {
            match c.s.write(&c.out[c.out_off..]) {
                Ok(n) => c.out_off += n,
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => return,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => fail(&format!("write on connection {id}: {e}")),
            }
        }
        c.out.clear();
        c.out_off = 0;
    }

    fn on_readable(&mut self, id: usize, now: Instant) {
        loop {
            match self.conns[id].s.read(&mut self.buf) {
                Ok(0) => fail(&format!("connection {id}: the server closed the connection")),
                Ok(n) => {
                    let Gen { conns, buf, .. } = self;
                    conns[id].inb.extend_from_slice(&buf[..n]);
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => break,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => fail(&format!("read on connection {id}: {e}")),
            }
        }
        self.parse(id, now);
    }

    fn parse(&mut self, id: usize, now: Instant) {
        if self.conns[id].state == State::Handshake {
            let inb = &self.conns[id].inb;
            let Some(end) = inb.windows(4).position(|w| w == b"\r\n\r\n") else { return };
            let head = String::from_utf8_lossy(&inb[..end]).to_ascii_lowercase();
            if !head.starts_with("http/1.1 101") || !head.contains("upgrade: websocket") {
                fail(&format!("connection {id}: handshake refused: {:?}", head.lines().next().unwrap_or("")));
            }
            self.conns[id].inb.drain(..end + 4);
            self.conns[id].state = State::Open;
            self.open += 1;
            if matches!(self.phase, Phase::Warmup | Phase::Measure) {
                self.issue(id, now);
            }
        }
        let mut at = 0;
        loop {
            let inb = &self.conns[id].inb[at..];
            if inb.len() < 2 {
                break;
            }
            let (b0, b1) = (inb[0], inb[1]);
            if b1 & 0x80 != 0 {
                fail(&format!("connection {id}: the server masked a frame"));
            }
            let (len, hdr) = match b1 & 0x7F {
                126 if inb.len() >= 4 => (u16::from_be_bytes([inb[2], inb[3]]) as usize, 4),
                127 if inb.len() >= 10 => (u64::from_be_bytes(inb[2..10].try_into().unwrap()) as usize, 10),
                126 | 127 => break,
                n => (n as usize, 2),
            };
            if inb.len() < hdr + len {
                break;
            }
            let payload = inb[hdr..hdr + len].to_vec();
            at += hdr + len;
            match b0 {
                0x82 => self.on_message(id, &payload, now),
                0x89 => {
                    self.frame(id, 0xA, Some(&payload));
                    self.pump(id);
                }
                0x8A => {}
                0x88 => fail(&format!("connection {id}: the server sent a close frame")),
                b => fail(&format!("connection {id}: unexpected frame header 0x{b:02x}")),
            }
        }
        self.conns[id].inb.drain(..at);
    }

    fn on_message(&mut self, id: usize, payload: &[u8], now: Instant) {
        let c = &self.conns[id];
        let Some(t0) = c.inflight else { fail(&format!("connection {id}: a message came back unasked")) };
        if payload != self.payload(c.phase_off, c.issued) {
            fail(&format!("connection {id}: echo of message {} differs ({} bytes back)", c.issued, payload.len()));
        }
        let c = &mut self.conns[id];
        c.issued += 1;
        c.inflight = None;
        if self.phase == Phase::Measure {
            self.messages += 1;
            self.latencies.push(now.duration_since(t0).as_nanos() as u64);
        }
        if matches!(self.phase, Phase::Warmup | Phase::Measure) {
            self.issue(id, now);
        }
    }

    fn handle(&mut self, events: &Events) {
        let now = Instant::now();
        for ev in events.iter() {
            let id = ev.token().0;
            if self.conns[id].state == State::Connecting {
                if !(ev.is_writable() || ev.is_error() || ev.is_write_closed()) {
                    continue;
                }
                let s = &self.conns[id].s;
                if let Ok(Some(e)) | Err(e) = s.take_error() {
                    fail(&format!("connect #{id}: {e}"));
                }
                match s.peer_addr() {
                    Ok(_) => {}
                    Err(e) if e.kind() == io::ErrorKind::NotConnected => continue,
                    Err(e) => fail(&format!("connect #{id}: {e}")),
                }
                self.connecting -= 1;
                self.conns[id].state = State::Handshake;
                let req = format!(
                    "GET {} HTTP/1.1\r\nHost: {}\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\
                     Sec-WebSocket-Key: {KEY}\r\nSec-WebSocket-Version: 13\r\n\r\n",
                    self.path, self.addr
                );
                self.conns[id].out.extend_from_slice(req.as_bytes());
            }
            if ev.is_readable() || ev.is_read_closed() || ev.is_error() {
                self.on_readable(id, now);
            }
            if ev.is_writable() || !self.conns[id].out.is_empty() {
                self.pump(id);
            }
        }
    }

    fn poll_once(&mut self, events: &mut Events, timeout: Duration) {
        match self.poll.poll(events, Some(timeout)) {
            Ok(()) => {}
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => fail(&format!("poll: {e}")),
        }
        self.handle(events);
        self.open_more();
    }

    fn run_until(&mut self, events: &mut Events, until: Instant, deadline: Instant) {
        while Instant::now() < until {
            if Instant::now() > deadline {
                fail("timed out");
            }
            self.poll_once(events, until.saturating_duration_since(Instant::now()));
        }
    }
}

fn main() {
    let args = Args::parse(&[]);
    let Endpoint::Tcp(addr) = Endpoint::from_args(&args, "127.0.0.1:8765") else {
        die("wsload connects over TCP (--tcp HOST:PORT)")
    };
    let size: usize = args.num("size", 1024usize).clamp(1, MAX_SIZE);
    let messages: Option<u64> = args.get("messages").map(|_| args.num("messages", 0u64));
    let duration: f64 = args.num("duration", 2.0f64);
    let warmup: f64 = args.num("warmup", 0.5f64);
    let server_pid: Option<u32> = args.get("server-pid").map(|_| args.num("server-pid", 0u32));
    let timeout = Duration::from_secs_f64(args.num("timeout", 120.0f64));
    raise_nofile();
    let started = Instant::now();
    let deadline = started + timeout;
    let mut g = Gen {
        size,
        pattern: pattern(PERIOD, MAX_SIZE),
        conns: Vec::new(),
        poll: Poll::new().unwrap_or_else(|e| fail(&format!("poll: {e}"))),
        phase: Phase::Handshake,
        addr,
        path: args.get("path").unwrap_or("/").to_string(),
        want: args.num("conns", 50usize).max(1),
        connecting: 0,
        open: 0,
        messages: 0,
        latencies: Vec::new(),
        rng: 0x9E37_79B9,
        buf: vec![0u8; 256 * 1024],
    };
    let mut events = Events::with_capacity(1024);
    g.open_more();
    while g.open < g.want {
        if Instant::now() > deadline {
            fail(&format!("timed out in the handshakes: {} of {} open", g.open, g.want));
        }
        g.poll_once(&mut events, Duration::from_millis(100));
    }
    let connect_s = started.elapsed().as_secs_f64();

    g.phase = Phase::Warmup;
    let now = Instant::now();
    for id in 0..g.conns.len() {
        g.issue(id, now);
    }
    if messages.is_none() {
        g.run_until(&mut events, Instant::now() + Duration::from_secs_f64(warmup), deadline);
    }
    let server_cpu = || -> Option<CpuSample> {
        server_pid.map(|p| cpu_sample(p).unwrap_or_else(|e| fail(&format!("/proc/{p}: {e}"))))
    };
    let cpu0 = server_cpu();
    let ru0 = rusage_self_us();
    let t0 = Instant::now();
    g.phase = Phase::Measure;
    match messages {
        Some(m) => {
            while g.messages < m {
                if Instant::now() > deadline {
                    fail(&format!("timed out after {} of {m} messages", g.messages));
                }
                g.poll_once(&mut events, Duration::from_millis(100));
            }
        }
        None => g.run_until(&mut events, t0 + Duration::from_secs_f64(duration), deadline),
    }
    let elapsed = t0.elapsed().as_secs_f64();
    let (cpu1, ru1) = (server_cpu(), rusage_self_us());
    g.phase = Phase::Drain;
    let drain_until = Instant::now() + Duration::from_secs(10);
    while g.conns.iter().any(|c| c.inflight.is_some()) {
        if Instant::now() > drain_until {
            fail("in-flight messages did not come back within 10 s after the window");
        }
        g.poll_once(&mut events, Duration::from_millis(100));
    }
    for id in 0..g.conns.len() {
        g.frame(id, 0x8, Some(&1000u16.to_be_bytes()));
        g.pump(id);
        let _ = g.conns[id].s.shutdown(Shutdown::Write);
    }
    g.latencies.sort_unstable();
    let msgs = g.messages as f64;
    println!(
        concat!(
            "{{\"ok\": true, \"kind\": \"ws\", \"conns\": {}, \"size\": {}, \"connect_s\": {:.3}, \"elapsed_s\": {:.4}, ",
            "\"messages\": {}, \"msgs_per_s\": {:.1}, \"lat_p50_us\": {}, \"lat_p99_us\": {}, {}}}"
        ),
        g.want,
        size,
        connect_s,
        elapsed,
        g.messages,
        msgs / elapsed,
        num_or_null(percentile(&g.latencies, 0.50)),
        num_or_null(percentile(&g.latencies, 0.99)),
        cpu_fields(cpu0, cpu1, msgs, elapsed, ru1 - ru0),
    );
}
