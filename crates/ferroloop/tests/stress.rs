//! Load: 1,000 concurrent connections, each echoing 1 MiB byte-exact through
//! the Rust echo server (its own thread and loop), with the clients on a
//! second ferroloop loop in the test thread; both sides use flow control.

mod common;

use std::cell::{Cell, RefCell};
use std::rc::Rc;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use common::*;
use ferroloop::{ConnectOptions, Error, EventLoop, Protocol, Transport};

const CONNECTIONS: usize = 1000;
const PER_CONNECTION: usize = 1 << 20;
const CHUNK: usize = 256 * 1024;

#[derive(Default)]
struct Totals {
    done: Cell<usize>,
    made: Cell<usize>,
    errors: RefCell<Vec<String>>,
}

struct Client {
    t: Option<Transport>,
    payload: Rc<Vec<u8>>,
    sent: usize,
    recv: usize,
    totals: Rc<Totals>,
    failed: bool,
}

impl Client {
    fn send_more(&mut self) {
        let t = self.t.as_ref().unwrap();
        // is_writing_paused() changes at once; pause_writing itself is
        // delivered after the current protocol method returns.
        while self.sent < PER_CONNECTION && !t.is_writing_paused() {
            let end = (self.sent + CHUNK).min(PER_CONNECTION);
            t.write(&self.payload[self.sent..end]).unwrap();
            self.sent = end;
        }
    }

    fn fail(&mut self, why: String) {
        if !self.failed {
            self.failed = true;
            self.totals.errors.borrow_mut().push(why);
        }
        if let Some(t) = &self.t {
            t.abort();
        }
    }
}

impl Protocol for Client {
    fn connection_made(&mut self, t: Transport) {
        self.totals.made.set(self.totals.made.get() + 1);
        self.t = Some(t);
        self.send_more();
    }

    fn data_received(&mut self, data: &[u8]) {
        let end = self.recv + data.len();
        if end > PER_CONNECTION {
            return self.fail(format!("received {end} bytes, more than sent"));
        }
        if data != &self.payload[self.recv..end] {
            return self.fail(format!("mismatch in bytes {}..{end}", self.recv));
        }
        self.recv = end;
        if self.recv == PER_CONNECTION {
            self.t.as_ref().unwrap().close();
        }
    }

    fn resume_writing(&mut self) {
        self.send_more();
    }

    fn eof_received(&mut self) -> bool {
        if self.recv != PER_CONNECTION {
            self.fail(format!("EOF after {} of {PER_CONNECTION} bytes", self.recv));
        }
        false
    }

    fn connection_lost(&mut self, exc: Option<Error>) {
        match exc {
            Some(e) => self.fail(format!("connection_lost({e})")),
            None if self.recv != PER_CONNECTION => self.fail(format!("lost after {} bytes", self.recv)),
            None if !self.failed => self.totals.done.set(self.totals.done.get() + 1),
            None => {}
        }
        self.t = None;
    }
}

#[test]
fn thousand_concurrent_connections_echo_1mib_each() {
    let limit = raise_nofile(8192);
    assert!(limit >= 2 * CONNECTIONS as u64 + 100, "RLIMIT_NOFILE {limit} is too low for {CONNECTIONS} connections");
    let mut server = EchoServerThread::start(1024);
    let port = server.port();

    let lp = EventLoop::new().unwrap();
    let reports = record_exceptions(&lp);
    let totals = Rc::new(Totals::default());
    let payloads: Vec<Rc<Vec<u8>>> = (0..8).map(|i| Rc::new(pattern(PER_CONNECTION, 1000 + i))).collect();
    let start = Instant::now();
    let mut futures = Vec::with_capacity(CONNECTIONS);
    for i in 0..CONNECTIONS {
        let client = Client {
            t: None,
            payload: payloads[i % payloads.len()].clone(),
            sent: 0,
            recv: 0,
            totals: totals.clone(),
            failed: false,
        };
        futures.push(lp.create_connection(move || client, "127.0.0.1", port, ConnectOptions::default()));
    }
    let ok = run_until(&lp, Duration::from_secs(90), || {
        totals.done.get() + totals.errors.borrow().len() == CONNECTIONS
            || futures.iter().any(|f| f.done() && f.take_result().map(|r| r.is_err()).unwrap_or(false))
    });
    let elapsed = start.elapsed();
    println!(
        "{CONNECTIONS} connections x {PER_CONNECTION} bytes echoed in {elapsed:.2?} ({} made, {} done, {} errors)",
        totals.made.get(),
        totals.done.get(),
        totals.errors.borrow().len()
    );
    assert!(ok, "timed out: {} of {CONNECTIONS} done", totals.done.get());
    let errors = totals.errors.borrow();
    assert!(errors.is_empty(), "{} failed connections, first: {:?}", errors.len(), &errors[..errors.len().min(5)]);
    assert_eq!(totals.done.get(), CONNECTIONS);
    assert!(reports.borrow().is_empty(), "{:?}", reports.borrow());

    // The server saw every byte and every connection ended cleanly.
    let stats = server.stats.clone();
    let deadline = Instant::now() + Duration::from_secs(10);
    while stats.lost_ok.load(Ordering::Relaxed) < CONNECTIONS && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(10));
    }
    assert_eq!(stats.connections.load(Ordering::Relaxed), CONNECTIONS);
    assert_eq!(stats.bytes.load(Ordering::Relaxed), CONNECTIONS * PER_CONNECTION);
    assert_eq!(stats.lost_ok.load(Ordering::Relaxed), CONNECTIONS);
    assert!(stats.errors.lock().unwrap().is_empty(), "{:?}", stats.errors.lock().unwrap());
    server.stop();
    // Everything is deregistered on the client loop.
    run_for(&lp, 0.05);
    assert_eq!(lp.registered_sources(), 0);
}

/// A short-lived client: sends `msg`, closes once the echo is complete,
/// reports to `on_end` from connection_lost.
struct Short {
    t: Option<Transport>,
    msg: Vec<u8>,
    got: Vec<u8>,
    on_end: Option<OnEnd>,
}

type OnEnd = Box<dyn FnOnce(Result<(), String>)>;

impl Protocol for Short {
    fn connection_made(&mut self, t: Transport) {
        t.write(&self.msg).unwrap();
        self.t = Some(t);
    }
    fn data_received(&mut self, data: &[u8]) {
        self.got.extend_from_slice(data);
        if self.got.len() >= self.msg.len() {
            self.t.as_ref().unwrap().close();
        }
    }
    fn connection_lost(&mut self, exc: Option<Error>) {
        let r = match exc {
            Some(e) => Err(format!("connection_lost({e})")),
            None if self.got != self.msg => Err(format!("echo mismatch: {} of {} bytes", self.got.len(), self.msg.len())),
            None => Ok(()),
        };
        if let Some(f) = self.on_end.take() {
            f(r);
        }
    }
}

const CHURN_TOTAL: usize = 2000;

struct Churn {
    lp: EventLoop,
    port: u16,
    started: Cell<usize>,
    done: Cell<usize>,
    failed: RefCell<Vec<String>>,
}

impl Churn {
    fn launch(self: &Rc<Self>) {
        let n = self.started.get();
        if n >= CHURN_TOTAL {
            return;
        }
        self.started.set(n + 1);
        let me = self.clone();
        let client = Short {
            t: None,
            msg: pattern(1 + n * 7 % 5000, n as u64),
            got: Vec::new(),
            on_end: Some(Box::new(move |r| {
                match r {
                    Ok(()) => me.done.set(me.done.get() + 1),
                    Err(e) => me.failed.borrow_mut().push(e),
                }
                // Start the next one from the ready queue.
                let me2 = me.clone();
                me.lp.call_soon(move || me2.launch()).unwrap();
            })),
        };
        let fut = self.lp.create_connection(move || client, "127.0.0.1", self.port, ConnectOptions::default());
        let me = self.clone();
        fut.clone().add_done_callback(move || {
            if let Some(Err(e)) = fut.take_result() {
                me.failed.borrow_mut().push(format!("connect: {e}"));
                me.launch();
            }
        });
    }
}

#[test]
fn connection_churn_2000_short_connections() {
    // 2,000 short connections, 50 at a time, each a small echo.
    raise_nofile(4096);
    let mut server = EchoServerThread::start(256);
    let lp = EventLoop::new().unwrap();
    let churn = Rc::new(Churn {
        lp: lp.clone(),
        port: server.port(),
        started: Cell::new(0),
        done: Cell::new(0),
        failed: RefCell::new(Vec::new()),
    });
    let start = Instant::now();
    for _ in 0..50 {
        churn.launch();
    }
    must(&lp, 60.0, "all short connections", || churn.done.get() + churn.failed.borrow().len() >= CHURN_TOTAL);
    println!("{CHURN_TOTAL} short connections in {:.2?}", start.elapsed());
    let failed = churn.failed.borrow();
    assert!(failed.is_empty(), "{} failed, first: {:?}", failed.len(), &failed[..failed.len().min(5)]);
    assert_eq!(churn.done.get(), CHURN_TOTAL);
    must(&lp, 10.0, "all deregistered", || lp.registered_sources() == 0);
    let stats = server.stats.clone();
    let deadline = Instant::now() + Duration::from_secs(10);
    while stats.lost_ok.load(Ordering::Relaxed) < CHURN_TOTAL && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(10));
    }
    server.stop();
    assert_eq!(stats.connections.load(Ordering::Relaxed), CHURN_TOTAL);
    assert_eq!(stats.lost_ok.load(Ordering::Relaxed), CHURN_TOTAL);
}
