//! TCP client connections: [`EventLoop::create_connection`] with Happy
//! Eyeballs (RFC 8305, as asyncio's `happy_eyeballs_delay`/`interleave`).
//!
//! Without a delay, addresses are tried one after the other. With a delay,
//! the next attempt starts when the delay expires or the running attempt
//! fails, whichever comes first; the first connection wins and the others are
//! closed.

use std::cell::RefCell;
use std::collections::VecDeque;
use std::io;
use std::net::SocketAddr;
use std::rc::Rc;

use mio::Interest;
use socket2::{Domain, Socket, Type};

use crate::error::{Error, Result};
use crate::event_loop::{EventLoop, IoSource, Readiness, Registration};
use crate::future::LoopFuture;
use crate::handle::TimerHandle;
use crate::protocol::Protocol;
use crate::resolve::{interleave, resolve};
use crate::connect::{start_transport, ConnectOptions, Connection};
use crate::transport::fd::{Held, Sock};

impl EventLoop {
    /// Connect to `host:port` and run a protocol made by `factory` on the
    /// connection (asyncio's `create_connection`). The name is resolved off
    /// the loop thread. The future completes after `connection_made`.
    pub fn create_connection<P, F>(&self, factory: F, host: &str, port: u16, opts: ConnectOptions) -> LoopFuture<Connection<P>>
    where
        P: Protocol,
        F: FnOnce() -> P + 'static,
    {
        let out = LoopFuture::new();
        if let Err(e) = self.check_closed() {
            out.set(Err(e));
            return out;
        }
        if let Some(d) = opts.happy_eyeballs_delay {
            if !(d >= 0.0) {
                out.set(Err(Error::invalid("happy_eyeballs_delay must be a non-negative number")));
                return out;
            }
        }
        let resolved = resolve(self, Some(host), port);
        let lp = self.clone();
        let out2 = out.clone();
        resolved.clone().add_done_callback(move || {
            let mut addrs = match resolved.take_result() {
                Some(Ok(a)) => a,
                Some(Err(e)) => return out2.set(Err(e)),
                None => return out2.set(Err(Error::Cancelled)),
            };
            if let Some(f) = opts.family {
                addrs.retain(|a| f.matches(a));
            }
            if addrs.is_empty() {
                return out2.set(Err(Error::Io(io::Error::new(io::ErrorKind::Other, "getaddrinfo() returned empty list"))));
            }
            let first = opts.interleave.or(opts.happy_eyeballs_delay.map(|_| 1));
            if let Some(n) = first.filter(|n| *n > 0) {
                addrs = interleave(addrs, n);
            }
            let lp2 = lp.clone();
            Connector::start(&lp, addrs, opts.local_addr, opts.happy_eyeballs_delay, move |r| match r {
                Ok(stream) => start_transport(&lp2, Held::new(Sock::Tcp(stream), true), factory(), out2),
                Err(e) => out2.set(Err(e)),
            });
        });
        out
    }
}

type Done = Box<dyn FnOnce(Result<mio::net::TcpStream>)>;

/// Races connection attempts (one at a time, or staggered by a delay).
struct Connector {
    lp: EventLoop,
    addrs: RefCell<VecDeque<SocketAddr>>,
    local: Option<SocketAddr>,
    delay: Option<f64>,
    attempts: RefCell<Vec<Rc<Attempt>>>,
    errors: RefCell<Vec<Error>>,
    timer: RefCell<Option<TimerHandle>>,
    done: RefCell<Option<Done>>,
}

struct Attempt {
    /// Strong: the registration keeps the race alive until it is decided.
    connector: Rc<Connector>,
    sock: RefCell<Option<mio::net::TcpStream>>,
    reg: Registration,
}

impl Connector {
    fn start(
        lp: &EventLoop,
        addrs: Vec<SocketAddr>,
        local: Option<SocketAddr>,
        delay: Option<f64>,
        done: impl FnOnce(Result<mio::net::TcpStream>) + 'static,
    ) {
        let c = Rc::new(Connector {
            lp: lp.clone(),
            addrs: RefCell::new(addrs.into()),
            local,
            delay,
            attempts: RefCell::new(Vec::new()),
            errors: RefCell::new(Vec::new()),
            timer: RefCell::new(None),
            done: RefCell::new(Some(Box::new(done))),
        });
        c.start_next();
    }

    fn start_next(self: &Rc<Self>) {
        if let Some(t) = self.timer.borrow_mut().take() {
            t.cancel();
        }
        loop {
            let next = self.addrs.borrow_mut().pop_front();
            let Some(addr) = next else {
                if self.attempts.borrow().is_empty() {
                    let errors = std::mem::take(&mut *self.errors.borrow_mut());
                    self.finish(Err(Error::from_attempts(errors)));
                }
                return;
            };
            match self.open(addr) {
                Ok(a) => {
                    self.attempts.borrow_mut().push(a);
                    if let Some(d) = self.delay {
                        if !self.addrs.borrow().is_empty() {
                            let me = self.clone();
                            if let Ok(t) = self.lp.call_later(d, move || me.start_next()) {
                                *self.timer.borrow_mut() = Some(t);
                            }
                        }
                    }
                    return;
                }
                Err(e) => self.errors.borrow_mut().push(e),
            }
        }
    }

    fn open(self: &Rc<Self>, addr: SocketAddr) -> Result<Rc<Attempt>> {
        let domain = if addr.is_ipv4() { Domain::IPV4 } else { Domain::IPV6 };
        let sock = Socket::new(domain, Type::STREAM.cloexec(), None)?;
        sock.set_nonblocking(true)?;
        if let Some(local) = self.local {
            if let Err(e) = sock.bind(&local.into()) {
                return Err(Error::Bind { address: local.to_string(), source: e });
            }
        }
        match sock.connect(&addr.into()) {
            Ok(()) => {}
            Err(e) if e.raw_os_error() == Some(libc::EINPROGRESS) => {}
            Err(e) => return Err(Error::Io(e)),
        }
        let mut stream = mio::net::TcpStream::from_std(sock.into());
        let attempt = Rc::new(Attempt { connector: self.clone(), sock: RefCell::new(None), reg: Registration::new() });
        attempt.reg.register(&self.lp, &mut stream, Interest::WRITABLE, attempt.clone())?;
        *attempt.sock.borrow_mut() = Some(stream);
        Ok(attempt)
    }

    fn attempt_done(self: &Rc<Self>, attempt: &Rc<Attempt>, result: io::Result<()>) {
        self.attempts.borrow_mut().retain(|a| !Rc::ptr_eq(a, attempt));
        let mut stream = attempt.sock.borrow_mut().take();
        attempt.reg.deregister(&self.lp, stream.as_mut());
        match (result, stream) {
            (Ok(()), Some(s)) => {
                if let Some(t) = self.timer.borrow_mut().take() {
                    t.cancel();
                }
                // The first connection wins; close the others.
                let losers = std::mem::take(&mut *self.attempts.borrow_mut());
                for a in losers {
                    let mut s = a.sock.borrow_mut().take();
                    a.reg.deregister(&self.lp, s.as_mut());
                    drop(s);
                }
                self.addrs.borrow_mut().clear();
                self.finish(Ok(s));
            }
            (Err(e), _) => {
                self.errors.borrow_mut().push(Error::Io(e));
                // RFC 8305: a failure starts the next attempt at once.
                self.start_next();
            }
            (Ok(()), None) => {}
        }
    }

    fn finish(&self, r: Result<mio::net::TcpStream>) {
        let done = self.done.borrow_mut().take();
        if let Some(done) = done {
            let lp = self.lp.clone();
            // Complete from the ready queue, never from inside a registration callback.
            lp.schedule(Box::new(move || done(r)));
        }
    }
}

impl IoSource for Attempt {
    fn on_ready(self: Rc<Self>, _lp: &EventLoop, ready: Readiness) {
        let c = self.connector.clone();
        let result = {
            let sock = self.sock.borrow();
            let Some(s) = sock.as_ref() else { return };
            match s.take_error() {
                Ok(Some(e)) | Err(e) => Err(e),
                Ok(None) => match s.peer_addr() {
                    Ok(_) => Ok(()),
                    Err(e) if e.kind() == io::ErrorKind::NotConnected && !ready.error && !ready.write_closed => return,
                    Err(e) => Err(e),
                },
            }
        };
        c.attempt_done(&self, result);
    }
}
