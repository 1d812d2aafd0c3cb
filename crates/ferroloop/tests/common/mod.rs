//! Shared helpers of the integration tests: a recording protocol that checks
//! the protocol contract, loop drivers with timeouts, std-socket peers, an
//! echo server on its own thread, and deterministic payloads.
//!
//! Every wait has a timeout, so a broken engine fails a test instead of
//! hanging the suite.

#![allow(dead_code)]

use std::cell::{Cell, RefCell};
use std::io::{self, Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::rc::Rc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use ferroloop::{
    Error, EventLoop, ExceptionContext, LoopFuture, LoopRemote, Protocol, Server, ServerOptions, TimerHandle,
    Transport,
};

pub type Shared<T> = Rc<RefCell<T>>;

// ---------------------------------------------------------------------------
// payloads

/// `n` pseudo-random bytes (xorshift64*), different for each `seed`: a
/// reordered, duplicated or dropped chunk never compares equal.
pub fn pattern(n: usize, seed: u64) -> Vec<u8> {
    let mut x = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
    let mut out = Vec::with_capacity(n + 8);
    while out.len() < n {
        x ^= x >> 12;
        x ^= x << 25;
        x ^= x >> 27;
        out.extend_from_slice(&x.wrapping_mul(0x2545_F491_4F6C_DD1D).to_le_bytes());
    }
    out.truncate(n);
    out
}

/// Assert two byte strings are equal without printing megabytes on failure.
#[track_caller]
pub fn assert_bytes_eq(got: &[u8], want: &[u8], what: &str) {
    if got == want {
        return;
    }
    let first_diff = got.iter().zip(want).position(|(a, b)| a != b);
    panic!(
        "{what}: got {} bytes, want {} bytes; first difference at {:?}",
        got.len(),
        want.len(),
        first_diff
    );
}

// ---------------------------------------------------------------------------
// loop drivers

/// Run the loop until `cond()` holds or `timeout` passes; returns `cond()`.
/// A 10 ms heartbeat timer keeps the loop from blocking past the deadline.
pub fn run_until(lp: &EventLoop, timeout: Duration, mut cond: impl FnMut() -> bool) -> bool {
    let deadline = Instant::now() + timeout;
    let alive = Rc::new(Cell::new(true));
    let current: Shared<Option<TimerHandle>> = Rc::new(RefCell::new(None));
    heartbeat(lp, alive.clone(), current.clone());
    let r = lp.run_until(|| cond() || Instant::now() >= deadline);
    alive.set(false);
    if let Some(h) = current.borrow_mut().take() {
        h.cancel();
    }
    r.expect("run_until failed");
    cond()
}

fn heartbeat(lp: &EventLoop, alive: Rc<Cell<bool>>, current: Shared<Option<TimerHandle>>) {
    let lp2 = lp.clone();
    let cur2 = current.clone();
    let h = lp
        .call_later(0.01, move || {
            if alive.get() {
                heartbeat(&lp2, alive, cur2);
            }
        })
        .expect("call_later");
    *current.borrow_mut() = Some(h);
}

/// Like [`run_until`] but panics with `what` on timeout.
#[track_caller]
pub fn must(lp: &EventLoop, secs: f64, what: &str, cond: impl FnMut() -> bool) {
    assert!(run_until(lp, Duration::from_secs_f64(secs), cond), "timed out after {secs}s waiting for: {what}");
}

/// Run the loop for `secs` seconds.
pub fn run_for(lp: &EventLoop, secs: f64) {
    run_until(lp, Duration::from_secs_f64(secs), || false);
}

/// Run until `fut` completes (at most `secs`) and return its result.
#[track_caller]
pub fn complete<T: 'static>(lp: &EventLoop, fut: &LoopFuture<T>, secs: f64) -> ferroloop::Result<T> {
    must(lp, secs, "future to complete", || fut.done());
    fut.take_result().expect("future result")
}

// ---------------------------------------------------------------------------
// exception handler

#[derive(Debug, Clone)]
pub struct Report {
    pub message: String,
    pub error: Option<Error>,
}

pub type Reports = Shared<Vec<Report>>;

/// Install an exception handler that records every report.
pub fn record_exceptions(lp: &EventLoop) -> Reports {
    let reports: Reports = Rc::new(RefCell::new(Vec::new()));
    let r2 = reports.clone();
    lp.set_exception_handler(Some(Rc::new(move |_lp: &EventLoop, ctx: &ExceptionContext| {
        r2.borrow_mut().push(Report { message: ctx.message.clone(), error: ctx.error.clone() });
    })));
    reports
}

// ---------------------------------------------------------------------------
// the recording protocol

/// One protocol event. `Data` holds the chunk length (bytes go to
/// `Log::data`); `Pause`/`Resume` hold the write buffer size at that moment.
#[derive(Debug)]
pub enum Ev {
    Made,
    Data(usize),
    Eof,
    Lost(Option<Error>),
    Pause(usize),
    Resume(usize),
    Note(String),
}

impl Ev {
    pub fn kind(&self) -> &'static str {
        match self {
            Ev::Made => "made",
            Ev::Data(_) => "data",
            Ev::Eof => "eof",
            Ev::Lost(_) => "lost",
            Ev::Pause(_) => "pause",
            Ev::Resume(_) => "resume",
            Ev::Note(_) => "note",
        }
    }
}

/// What a [`Recorder`] saw.
#[derive(Default)]
pub struct Log {
    pub events: Vec<Ev>,
    pub data: Vec<u8>,
    pub transport: Option<Transport>,
    /// Contract violations noticed while recording (re-entry, events after
    /// `connection_lost`, ...).
    pub violations: Vec<String>,
    in_method: Option<&'static str>,
}

impl Log {
    /// Event kinds in order, with consecutive `data` events merged into one
    /// (how the bytes are split into reads is up to the kernel).
    pub fn kinds(&self) -> Vec<String> {
        let mut out: Vec<String> = Vec::new();
        for e in &self.events {
            let k = match e {
                Ev::Note(s) => format!("note:{s}"),
                other => other.kind().to_string(),
            };
            if k == "data" && out.last().map(|l| l == "data").unwrap_or(false) {
                continue;
            }
            out.push(k);
        }
        out
    }

    pub fn count(&self, kind: &str) -> usize {
        self.events.iter().filter(|e| e.kind() == kind).count()
    }

    pub fn data_calls(&self) -> usize {
        self.count("data")
    }

    pub fn is_lost(&self) -> bool {
        self.count("lost") > 0
    }

    pub fn got_eof(&self) -> bool {
        self.count("eof") > 0
    }

    /// The error passed to `connection_lost`; panics if it was not called.
    pub fn lost_error(&self) -> Option<Error> {
        for e in &self.events {
            if let Ev::Lost(err) = e {
                return err.clone();
            }
        }
        panic!("connection_lost was not called; events: {:?}", self.kinds())
    }

    pub fn pauses(&self) -> Vec<usize> {
        self.events.iter().filter_map(|e| if let Ev::Pause(n) = e { Some(*n) } else { None }).collect()
    }

    pub fn resumes(&self) -> Vec<usize> {
        self.events.iter().filter_map(|e| if let Ev::Resume(n) = e { Some(*n) } else { None }).collect()
    }

    pub fn note(&mut self, s: &str) {
        self.events.push(Ev::Note(s.to_string()));
    }

    pub fn transport(&self) -> Transport {
        self.transport.clone().expect("connection_made was not called")
    }
}

/// Check the protocol contract on a log: `connection_made` once and first,
/// `data_received`*, at most one `eof_received` with no data after it,
/// `connection_lost` at most once (exactly once if `lost`) and last;
/// `pause_writing`/`resume_writing` alternate, starting with pause.
/// `made` is false for a protocol installed with `set_protocol`.
#[track_caller]
pub fn assert_contract(log: &Log, made: bool, lost: bool) {
    assert!(log.violations.is_empty(), "contract violations: {:?}", log.violations);
    let ev: Vec<&Ev> = log.events.iter().filter(|e| !matches!(e, Ev::Note(_))).collect();
    let kinds = log.kinds();
    if made {
        assert!(matches!(ev.first(), Some(Ev::Made)), "connection_made must come first: {kinds:?}");
    }
    assert_eq!(log.count("made"), usize::from(made), "connection_made count: {kinds:?}");
    assert!(log.count("eof") <= 1, "eof_received more than once: {kinds:?}");
    if let Some(i) = ev.iter().position(|e| matches!(e, Ev::Eof)) {
        assert!(
            !ev[i..].iter().any(|e| matches!(e, Ev::Data(_))),
            "data_received after eof_received: {kinds:?}"
        );
    }
    let nlost = log.count("lost");
    assert_eq!(nlost, usize::from(lost), "connection_lost count: {kinds:?}");
    if lost {
        assert!(matches!(ev.last(), Some(Ev::Lost(_))), "nothing may follow connection_lost: {kinds:?}");
    }
    let mut paused = false;
    for e in &ev {
        match e {
            Ev::Pause(_) => {
                assert!(!paused, "pause_writing twice without resume: {kinds:?}");
                paused = true;
            }
            Ev::Resume(_) => {
                assert!(paused, "resume_writing without pause: {kinds:?}");
                paused = false;
            }
            _ => {}
        }
    }
}

type MadeHook = Box<dyn FnMut(&Transport)>;
type DataHook = Box<dyn FnMut(&Transport, &[u8])>;
type EofHook = Box<dyn FnMut(&Transport) -> bool>;
type LostHook = Box<dyn FnMut(Option<&Error>)>;
type FlowHook = Box<dyn FnMut(&Transport)>;

/// A protocol that logs every call into a shared [`Log`] and runs optional hooks.
pub struct Recorder {
    pub log: Shared<Log>,
    on_made: Option<MadeHook>,
    on_data: Option<DataHook>,
    on_eof: Option<EofHook>,
    on_lost: Option<LostHook>,
    on_pause: Option<FlowHook>,
    on_resume: Option<FlowHook>,
}

impl std::fmt::Debug for Recorder {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Recorder").field("events", &self.log.borrow().kinds()).finish()
    }
}

impl Default for Recorder {
    fn default() -> Self {
        Self::new()
    }
}

impl Recorder {
    pub fn new() -> Self {
        Self::with_log(Rc::new(RefCell::new(Log::default())))
    }

    pub fn with_log(log: Shared<Log>) -> Self {
        Recorder { log, on_made: None, on_data: None, on_eof: None, on_lost: None, on_pause: None, on_resume: None }
    }

    pub fn on_made(mut self, f: impl FnMut(&Transport) + 'static) -> Self {
        self.on_made = Some(Box::new(f));
        self
    }
    pub fn on_data(mut self, f: impl FnMut(&Transport, &[u8]) + 'static) -> Self {
        self.on_data = Some(Box::new(f));
        self
    }
    /// The hook's return value is what `eof_received` returns.
    pub fn on_eof(mut self, f: impl FnMut(&Transport) -> bool + 'static) -> Self {
        self.on_eof = Some(Box::new(f));
        self
    }
    pub fn on_lost(mut self, f: impl FnMut(Option<&Error>) + 'static) -> Self {
        self.on_lost = Some(Box::new(f));
        self
    }
    pub fn on_pause(mut self, f: impl FnMut(&Transport) + 'static) -> Self {
        self.on_pause = Some(Box::new(f));
        self
    }
    pub fn on_resume(mut self, f: impl FnMut(&Transport) + 'static) -> Self {
        self.on_resume = Some(Box::new(f));
        self
    }

    /// Mark the protocol busy in `what` until the guard drops (also when a
    /// hook panics and the engine catches it).
    fn enter(&self, what: &'static str) -> Busy {
        let mut l = self.log.borrow_mut();
        if let Some(prev) = l.in_method {
            l.violations.push(format!("{what} called while inside {prev}"));
        }
        if l.is_lost() {
            l.violations.push(format!("{what} called after connection_lost"));
        }
        l.in_method = Some(what);
        Busy(self.log.clone())
    }

    fn transport(&self) -> Transport {
        self.log.borrow().transport.clone().expect("transport")
    }
}

struct Busy(Shared<Log>);

impl Drop for Busy {
    fn drop(&mut self) {
        if let Ok(mut l) = self.0.try_borrow_mut() {
            l.in_method = None;
        }
    }
}

impl Protocol for Recorder {
    fn connection_made(&mut self, t: Transport) {
        let _busy = self.enter("connection_made");
        {
            let mut l = self.log.borrow_mut();
            if l.count("made") > 0 {
                l.violations.push("connection_made called twice".into());
            }
            l.events.push(Ev::Made);
            l.transport = Some(t.clone());
        }
        if let Some(h) = self.on_made.as_mut() {
            h(&t);
        }
    }

    fn data_received(&mut self, data: &[u8]) {
        let _busy = self.enter("data_received");
        {
            let mut l = self.log.borrow_mut();
            if data.is_empty() {
                l.violations.push("data_received with empty data".into());
            }
            if l.got_eof() {
                l.violations.push("data_received after eof_received".into());
            }
            l.events.push(Ev::Data(data.len()));
            l.data.extend_from_slice(data);
        }
        if let Some(h) = self.on_data.as_mut() {
            let t = self.log.borrow().transport.clone();
            // A protocol switched in by set_protocol has no transport in its log.
            let t = t.unwrap_or_else(|| panic!("data_received before connection_made"));
            h(&t, data);
        }
    }

    fn eof_received(&mut self) -> bool {
        let _busy = self.enter("eof_received");
        self.log.borrow_mut().events.push(Ev::Eof);
        let t = self.log.borrow().transport.clone();
        let keep = match (self.on_eof.as_mut(), t) {
            (Some(h), Some(t)) => h(&t),
            _ => false,
        };
        keep
    }

    fn connection_lost(&mut self, exc: Option<Error>) {
        let _busy = self.enter("connection_lost");
        if let Some(h) = self.on_lost.as_mut() {
            h(exc.as_ref());
        }
        self.log.borrow_mut().events.push(Ev::Lost(exc));
    }

    fn pause_writing(&mut self) {
        let _busy = self.enter("pause_writing");
        let t = self.transport();
        self.log.borrow_mut().events.push(Ev::Pause(t.get_write_buffer_size()));
        if let Some(h) = self.on_pause.as_mut() {
            h(&t);
        }
    }

    fn resume_writing(&mut self) {
        let _busy = self.enter("resume_writing");
        let t = self.transport();
        self.log.borrow_mut().events.push(Ev::Resume(t.get_write_buffer_size()));
        if let Some(h) = self.on_resume.as_mut() {
            h(&t);
        }
    }
}

/// A recorder that also hands its transport to a "set_protocol" successor:
/// gives the successor's log the same transport so hooks can use it.
pub fn adopt_transport(log: &Shared<Log>, t: &Transport) {
    log.borrow_mut().transport = Some(t.clone());
}

// ---------------------------------------------------------------------------
// connections with std peers

/// Connect a ferroloop client running `proto` to a std listener and return
/// the transport, the log and the accepted std peer socket (blocking).
pub fn connect_std_peer(lp: &EventLoop, proto: Recorder) -> (Transport, Shared<Log>, TcpStream) {
    let listener = TcpListener::bind("127.0.0.1:0").expect("bind");
    let port = listener.local_addr().unwrap().port();
    let log = proto.log.clone();
    let fut = lp.create_connection(move || proto, "127.0.0.1", port, Default::default());
    let (t, _p) = complete(lp, &fut, 10.0).expect("create_connection");
    let (peer, _) = listener.accept().expect("accept");
    peer.set_read_timeout(Some(Duration::from_secs(30))).unwrap();
    peer.set_write_timeout(Some(Duration::from_secs(30))).unwrap();
    (t, log, peer)
}

/// Read from a (nonblocking) peer into `buf` while running the loop, until
/// `done(buf, eof)` holds. Returns whether EOF was seen.
#[track_caller]
pub fn pump_read(
    lp: &EventLoop,
    peer: &mut impl Read,
    buf: &mut Vec<u8>,
    secs: f64,
    mut done: impl FnMut(&[u8], bool) -> bool,
) -> bool {
    let mut eof = false;
    let mut tmp = vec![0u8; 256 * 1024];
    let mut err: Option<io::Error> = None;
    let ok = run_until(lp, Duration::from_secs_f64(secs), || {
        while !eof && err.is_none() {
            match peer.read(&mut tmp) {
                Ok(0) => eof = true,
                Ok(n) => buf.extend_from_slice(&tmp[..n]),
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => break,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => err = Some(e),
            }
        }
        if let Some(e) = &err {
            panic!("peer read failed: {e}");
        }
        done(buf, eof)
    });
    assert!(ok, "timed out after {secs}s reading from the peer ({} bytes, eof={eof})", buf.len());
    eof
}

/// Read `n` bytes from a peer while running the loop (sets it nonblocking).
#[track_caller]
pub fn pump_read_exact(lp: &EventLoop, peer: &TcpStream, n: usize) -> Vec<u8> {
    peer.set_nonblocking(true).unwrap();
    let mut buf = Vec::new();
    let mut p = peer;
    pump_read(lp, &mut p, &mut buf, 10.0, |b, eof| b.len() >= n || eof);
    assert_eq!(buf.len(), n, "peer got {} bytes, expected {n}", buf.len());
    buf
}

/// Read until EOF from a peer while running the loop.
#[track_caller]
pub fn pump_read_to_eof(lp: &EventLoop, peer: &TcpStream) -> Vec<u8> {
    peer.set_nonblocking(true).unwrap();
    let mut buf = Vec::new();
    let mut p = peer;
    pump_read(lp, &mut p, &mut buf, 20.0, |_, eof| eof);
    buf
}

/// Read everything until EOF on a thread (blocking, 30 s timeout). Returns
/// the bytes and the error that ended the read, if any.
pub fn spawn_reader<R: Read + Send + 'static>(mut r: R) -> JoinHandle<(Vec<u8>, Option<io::Error>)> {
    std::thread::spawn(move || {
        let mut out = Vec::new();
        let mut buf = vec![0u8; 256 * 1024];
        loop {
            match r.read(&mut buf) {
                Ok(0) => return (out, None),
                Ok(n) => out.extend_from_slice(&buf[..n]),
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => return (out, Some(e)),
            }
        }
    })
}

/// Write `data` then half-close, on a thread.
pub fn spawn_writer(mut s: TcpStream, data: Vec<u8>) -> JoinHandle<io::Result<()>> {
    std::thread::spawn(move || {
        s.write_all(&data)?;
        s.shutdown(std::net::Shutdown::Write)
    })
}

/// Raise RLIMIT_NOFILE's soft limit to at least `want` (up to the hard limit).
pub fn raise_nofile(want: u64) -> u64 {
    // SAFETY: getrlimit/setrlimit with a valid pointer to a local struct.
    unsafe {
        let mut rl = libc::rlimit { rlim_cur: 0, rlim_max: 0 };
        if libc::getrlimit(libc::RLIMIT_NOFILE, &mut rl) != 0 {
            return 0;
        }
        if rl.rlim_cur < want as libc::rlim_t {
            let target = std::cmp::min(want as libc::rlim_t, rl.rlim_max);
            let new = libc::rlimit { rlim_cur: target, rlim_max: rl.rlim_max };
            if libc::setrlimit(libc::RLIMIT_NOFILE, &new) == 0 {
                rl.rlim_cur = target;
            }
        }
        rl.rlim_cur
    }
}

// ---------------------------------------------------------------------------
// the Rust echo server

/// Counters shared between an echo server thread and the test.
#[derive(Default)]
pub struct EchoStats {
    pub connections: AtomicUsize,
    pub bytes: AtomicUsize,
    pub lost_ok: AtomicUsize,
    pub errors: Mutex<Vec<String>>,
}

/// Echo protocol with backpressure: stops reading while its own writes are
/// paused; closes after the peer's EOF once everything is flushed.
pub struct Echo {
    t: Option<Transport>,
    stats: Arc<EchoStats>,
}

impl Echo {
    pub fn new(stats: Arc<EchoStats>) -> Self {
        Echo { t: None, stats }
    }
}

impl Protocol for Echo {
    fn connection_made(&mut self, t: Transport) {
        self.stats.connections.fetch_add(1, Ordering::Relaxed);
        self.t = Some(t);
    }
    fn data_received(&mut self, data: &[u8]) {
        self.stats.bytes.fetch_add(data.len(), Ordering::Relaxed);
        self.t.as_ref().unwrap().write(data).expect("echo write");
    }
    fn eof_received(&mut self) -> bool {
        false
    }
    fn pause_writing(&mut self) {
        self.t.as_ref().unwrap().pause_reading();
    }
    fn resume_writing(&mut self) {
        self.t.as_ref().unwrap().resume_reading();
    }
    fn connection_lost(&mut self, exc: Option<Error>) {
        match exc {
            None => {
                self.stats.lost_ok.fetch_add(1, Ordering::Relaxed);
            }
            Some(e) => self.stats.errors.lock().unwrap().push(e.to_string()),
        }
        self.t = None;
    }
}

/// A ferroloop echo server on its own thread and loop.
pub struct EchoServerThread {
    pub addr: SocketAddr,
    pub stats: Arc<EchoStats>,
    stop: Arc<AtomicBool>,
    remote: LoopRemote,
    join: Option<JoinHandle<()>>,
}

impl EchoServerThread {
    pub fn start(backlog: i32) -> EchoServerThread {
        let stats = Arc::new(EchoStats::default());
        let stop = Arc::new(AtomicBool::new(false));
        let (tx, rx) = std::sync::mpsc::channel();
        let (stats2, stop2) = (stats.clone(), stop.clone());
        let join = std::thread::Builder::new()
            .name("echo-server".into())
            .spawn(move || {
                let lp = EventLoop::new().unwrap();
                let opts = ServerOptions { backlog, ..Default::default() };
                let s3 = stats2.clone();
                let fut = lp.create_server(move || Echo::new(s3.clone()), "127.0.0.1", 0, opts);
                let server: Server = lp.run_until_complete(&fut).expect("create_server");
                let addr = match &server.sockets()[0].address {
                    Some(ferroloop::Address::Inet(a)) => *a,
                    other => panic!("unexpected address {other:?}"),
                };
                tx.send((addr, lp.remote())).unwrap();
                lp.run_until(|| stop2.load(Ordering::Acquire)).unwrap();
                server.close();
                server.abort_clients();
                lp.close().unwrap();
            })
            .unwrap();
        let (addr, remote) = rx.recv_timeout(Duration::from_secs(10)).expect("echo server did not start");
        EchoServerThread { addr, stats, stop, remote, join: Some(join) }
    }

    pub fn port(&self) -> u16 {
        self.addr.port()
    }

    pub fn stop(&mut self) {
        if let Some(j) = self.join.take() {
            self.stop.store(true, Ordering::Release);
            let _ = self.remote.call_soon_threadsafe(|| {});
            j.join().expect("echo server thread panicked");
        }
    }
}

impl Drop for EchoServerThread {
    fn drop(&mut self) {
        self.stop();
    }
}

/// The errno of an error, for assertions.
pub fn errno_of(e: &Error) -> Option<i32> {
    e.errno()
}
