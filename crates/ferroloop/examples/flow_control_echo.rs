//! Write flow control, end to end: an echo server that stops reading from its
//! client while its own write buffer is over the high-water mark.
//!
//! Run: `cargo run --release --example flow_control_echo` (no other process
//! needed; it listens on a free port of 127.0.0.1 and exits by itself, 0 on
//! success, in about a second).
//!
//! The server is an asyncio-style echo protocol on ferroloop. When the
//! transport calls `pause_writing` (its buffer went over 64 KiB, asyncio's
//! default high-water mark), the protocol calls `pause_reading`: no more data
//! is taken from the client, so the buffer cannot grow without bound. When
//! `resume_writing` comes (the buffer drained to 16 KiB or below), it calls
//! `resume_reading`. This is how asyncio's own streams apply back-pressure.
//!
//! The client is a plain `std::net::TcpStream` on a std thread with a small
//! `SO_RCVBUF`: one thread writes 8 MiB while another reads the echo back
//! slowly, so the server is forced over its high-water mark again and again.
//! At the end the client checks that the echo is byte-exact and hands its
//! report to the loop thread with `LoopRemote::call_soon_threadsafe`, which
//! wakes the loop and ends the run. Prints something like:
//!
//! ```text
//! Serving on ('127.0.0.1', 41235)
//! Connection from ('127.0.0.1', 52110)
//! pause_writing: write buffer 327680 bytes > high-water mark 65536 -> pause_reading
//! resume_writing: write buffer 0 bytes <= low-water mark 16384 -> resume_reading
//! ...
//! Client sent 8388608 bytes, received 8388608 bytes: echo is byte-exact
//! Server echoed 8388608 bytes; 25 pauses, 25 resumes; peak write buffer 589824 bytes
//! ```

mod common;

use std::cell::{Cell, RefCell};
use std::io::{self, Read, Write};
use std::net::{Shutdown, SocketAddr, TcpStream};
use std::process::ExitCode;
use std::rc::Rc;
use std::sync::{Arc, Mutex};
use std::thread;
use std::time::{Duration, Instant};

use ferroloop::{Address, Error, EventLoop, LoopRemote, Protocol, ServerOptions, Transport};
use socket2::{Domain, Socket, Type};

/// How much the client sends.
const TOTAL: usize = 8 * 1024 * 1024;
/// The client's requested receive buffer (the kernel doubles it).
const CLIENT_RCVBUF: usize = 16 * 1024;
/// The client's reader sleeps this long after each read.
const READ_PAUSE: Duration = Duration::from_micros(1500);
/// The whole run's time limit, in seconds.
const WATCHDOG: f64 = 20.0;
/// Pause/resume events printed in full; later ones are only counted.
const PRINT_EVENTS: usize = 10;

/// The byte at offset `i` of the stream (period 251, a prime, so that a lost,
/// repeated or reordered chunk of any power-of-two size shows up).
fn pattern(i: usize) -> u8 {
    (i % 251) as u8
}

/// What the server side observed.
#[derive(Default)]
struct ServerStats {
    echoed: Cell<usize>,
    pauses: Cell<usize>,
    resumes: Cell<usize>,
    peak_buffer: Cell<usize>,
    lost: Cell<bool>,
}

struct FlowEcho {
    transport: Option<Transport>,
    stats: Rc<ServerStats>,
}

impl FlowEcho {
    fn transport(&self) -> &Transport {
        self.transport.as_ref().expect("connected")
    }
}

impl Protocol for FlowEcho {
    fn connection_made(&mut self, transport: Transport) {
        let peer = transport.peername().expect("peername");
        println!("Connection from {}", common::addr_repr(&peer));
        self.transport = Some(transport);
    }

    fn data_received(&mut self, data: &[u8]) {
        let t = self.transport();
        t.write(data).expect("write");
        let s = &self.stats;
        s.echoed.set(s.echoed.get() + data.len());
        s.peak_buffer.set(s.peak_buffer.get().max(t.get_write_buffer_size()));
    }

    fn pause_writing(&mut self) {
        let t = self.transport();
        t.pause_reading();
        let n = self.stats.pauses.get() + 1;
        self.stats.pauses.set(n);
        if n <= PRINT_EVENTS {
            let (_, high) = t.get_write_buffer_limits();
            println!(
                "pause_writing: write buffer {} bytes > high-water mark {high} -> pause_reading",
                t.get_write_buffer_size()
            );
        } else if n == PRINT_EVENTS + 1 {
            println!("... (further pause_writing/resume_writing pairs are counted, not printed)");
        }
    }

    fn resume_writing(&mut self) {
        let t = self.transport();
        t.resume_reading();
        let n = self.stats.resumes.get() + 1;
        self.stats.resumes.set(n);
        if n <= PRINT_EVENTS {
            let (low, _) = t.get_write_buffer_limits();
            println!(
                "resume_writing: write buffer {} bytes <= low-water mark {low} -> resume_reading",
                t.get_write_buffer_size()
            );
        }
    }

    fn connection_lost(&mut self, exc: Option<Error>) {
        if let Some(e) = exc {
            println!("Connection lost with an error: {e}");
        }
        self.stats.lost.set(true);
    }
}

/// What the client thread found.
struct ClientReport {
    sent: usize,
    received: usize,
    /// `None` when the echo was byte-exact and complete.
    problem: Option<String>,
    elapsed: Duration,
}

/// The slow client: a writer thread pushes `TOTAL` bytes and half-closes;
/// this thread reads the echo with a pause after every read, until EOF.
fn run_client(addr: SocketAddr) -> io::Result<(usize, usize, Option<String>)> {
    let sock = Socket::new(Domain::for_address(addr), Type::STREAM, None)?;
    // Before connect, so that the advertised window is small from the start.
    sock.set_recv_buffer_size(CLIENT_RCVBUF)?;
    sock.connect(&addr.into())?;
    let stream: TcpStream = sock.into();
    stream.set_read_timeout(Some(Duration::from_secs(10)))?;
    stream.set_write_timeout(Some(Duration::from_secs(10)))?;

    let mut writer = stream.try_clone()?;
    let write_thread = thread::spawn(move || -> io::Result<usize> {
        let data: Vec<u8> = (0..TOTAL).map(pattern).collect();
        for chunk in data.chunks(64 * 1024) {
            writer.write_all(chunk)?;
        }
        writer.shutdown(Shutdown::Write)?;
        Ok(data.len())
    });

    let mut reader = stream;
    let mut buf = vec![0u8; 64 * 1024];
    let mut received = 0usize;
    let mut problem = None;
    loop {
        let n = match reader.read(&mut buf) {
            Ok(0) => break,
            Ok(n) => n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            Err(e) => {
                problem = Some(format!("read failed after {received} bytes: {e}"));
                break;
            }
        };
        if problem.is_none() {
            if let Some(off) = (0..n).find(|&k| buf[k] != pattern(received + k)) {
                problem = Some(format!("echo differs at byte {}", received + off));
            }
        }
        received += n;
        thread::sleep(READ_PAUSE);
    }
    let sent = match write_thread.join() {
        Ok(Ok(n)) => n,
        Ok(Err(e)) => return Err(e),
        Err(_) => return Err(io::Error::other("writer thread panicked")),
    };
    if problem.is_none() && received != sent {
        problem = Some(format!("received {received} bytes, expected {sent}"));
    }
    Ok((sent, received, problem))
}

fn spawn_client(addr: SocketAddr, remote: LoopRemote, slot: Arc<Mutex<Option<ClientReport>>>) {
    thread::spawn(move || {
        let start = Instant::now();
        let report = match run_client(addr) {
            Ok((sent, received, problem)) => ClientReport { sent, received, problem, elapsed: start.elapsed() },
            Err(e) => ClientReport { sent: 0, received: 0, problem: Some(format!("client failed: {e}")), elapsed: start.elapsed() },
        };
        // Hand the report to the loop thread; this also wakes the loop.
        remote
            .call_soon_threadsafe(move || *slot.lock().unwrap() = Some(report))
            .expect("loop is open");
    });
}

fn main() -> ExitCode {
    match run() {
        Ok(true) => ExitCode::SUCCESS,
        Ok(false) => ExitCode::FAILURE,
        Err(e) => {
            eprintln!("error: {e}");
            ExitCode::FAILURE
        }
    }
}

fn run() -> ferroloop::Result<bool> {
    let lp = EventLoop::new()?;
    let stats = Rc::new(ServerStats::default());
    let s2 = stats.clone();
    let factory = move || FlowEcho { transport: None, stats: s2.clone() };
    let server = lp.run_until_complete(&lp.create_server(factory, "127.0.0.1", 0, ServerOptions::default()))?;
    let address = server.sockets()[0].address.clone().expect("bound");
    println!("Serving on {}", common::addr_repr(&address));
    let Address::Inet(addr) = address else { unreachable!("a TCP server") };

    let slot: Arc<Mutex<Option<ClientReport>>> = Arc::new(Mutex::new(None));
    spawn_client(addr, lp.remote(), slot.clone());

    // Watchdog: never hang, whatever happens (the client gives up after 10 s).
    let l2 = lp.clone();
    lp.call_later(WATCHDOG, move || l2.stop())?;
    // Run until the client's report arrives and the server saw the connection end.
    let done = Rc::new(RefCell::new(None::<ClientReport>));
    let d2 = done.clone();
    let st = stats.clone();
    let ran = lp.run_until(move || {
        if d2.borrow().is_none() {
            *d2.borrow_mut() = slot.lock().unwrap().take();
        }
        d2.borrow().is_some() && st.lost.get()
    });

    server.close();
    server.abort_clients(); // nothing left to abort, unless the run timed out
    lp.run_until_complete(&server.wait_closed())?;
    lp.close()?;

    if let Err(Error::LoopStopped) = ran {
        eprintln!("FAILED: timed out after {WATCHDOG} s");
        return Ok(false);
    }
    ran?;
    let report = done.borrow_mut().take().expect("report");
    let ok = report.problem.is_none();
    match &report.problem {
        None => println!(
            "Client sent {} bytes, received {} bytes: echo is byte-exact ({:.2} s)",
            report.sent,
            report.received,
            report.elapsed.as_secs_f64()
        ),
        Some(p) => println!("FAILED: {p} (sent {}, received {})", report.sent, report.received),
    }
    println!(
        "Server echoed {} bytes; {} pauses, {} resumes; peak write buffer {} bytes",
        stats.echoed.get(),
        stats.pauses.get(),
        stats.resumes.get(),
        stats.peak_buffer.get()
    );
    if stats.pauses.get() == 0 {
        println!("FAILED: the server never went over its high-water mark");
        return Ok(false);
    }
    if stats.pauses.get() != stats.resumes.get() && stats.pauses.get() != stats.resumes.get() + 1 {
        println!("FAILED: pause_writing/resume_writing calls do not pair up");
        return Ok(false);
    }
    Ok(ok)
}
