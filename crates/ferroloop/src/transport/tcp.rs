//! Client connections: [`EventLoop::create_connection`] with Happy Eyeballs
//! (RFC 8305, as asyncio's `happy_eyeballs_delay`/`interleave`), and adopting
//! already connected sockets (`sock=`, `connect_accepted_socket`).
//!
//! Without a delay, addresses are tried one after the other. With a delay,
//! the next attempt starts when the delay expires or the running attempt
//! fails, whichever comes first; the first connection wins and the others are
//! closed.

use std::cell::{Cell, RefCell};
use std::collections::VecDeque;
use std::io;
use std::net::SocketAddr;
use std::rc::Rc;

use mio::{Interest, Token};
use socket2::{Domain, Socket, Type};

use crate::error::{Error, Result};
use crate::event_loop::{EventLoop, IoSource, Readiness};
use crate::future::LoopFuture;
use crate::handle::TimerHandle;
use crate::protocol::{Protocol, ProtocolRef};
use crate::resolve::{interleave, resolve, Family};
use crate::transport::stream::Sock;
use crate::transport::Transport;

/// Options of [`EventLoop::create_connection`], with asyncio's defaults.
#[derive(Clone, Debug, Default)]
pub struct ConnectOptions {
    /// Bind the socket to this local address before connecting.
    pub local_addr: Option<SocketAddr>,
    /// Happy Eyeballs: start the next attempt after this many seconds
    /// (RFC 8305 recommends 0.25). `None`: one attempt at a time.
    pub happy_eyeballs_delay: Option<f64>,
    /// Reorder addresses by family; the first family gets this many first.
    /// Defaults to 1 when `happy_eyeballs_delay` is set.
    pub interleave: Option<usize>,
    /// Only connect to addresses of this family.
    pub family: Option<Family>,
}

/// An already connected stream socket handed to the loop.
#[derive(Debug)]
pub enum StreamSocket {
    /// A TCP socket.
    Tcp(std::net::TcpStream),
    /// A Unix stream socket (e.g. one end of `UnixStream::pair()`).
    Unix(std::os::unix::net::UnixStream),
    /// A socket on a descriptor that its owner keeps and closes (see
    /// [`StreamSocket::borrow_raw`]).
    Borrowed(BorrowedSocket),
}

/// A connected stream socket on a borrowed descriptor: the transport made on
/// it reads and writes the descriptor but never closes it. Made by
/// [`StreamSocket::borrow_raw`].
#[derive(Debug)]
pub struct BorrowedSocket {
    /// Never dropped: that would close the owner's descriptor.
    sock: std::mem::ManuallyDrop<Socket>,
}

impl From<std::net::TcpStream> for StreamSocket {
    fn from(s: std::net::TcpStream) -> Self {
        StreamSocket::Tcp(s)
    }
}

impl From<std::os::unix::net::UnixStream> for StreamSocket {
    fn from(s: std::os::unix::net::UnixStream) -> Self {
        StreamSocket::Unix(s)
    }
}

impl StreamSocket {
    /// Take a connected stream socket of either family from an owned descriptor.
    pub fn from_fd(fd: std::os::fd::OwnedFd) -> io::Result<StreamSocket> {
        let sock = Socket::from(fd);
        let family = sock.local_addr()?.family();
        if family == libc::AF_UNIX as libc::sa_family_t {
            Ok(StreamSocket::Unix(sock.into()))
        } else {
            Ok(StreamSocket::Tcp(sock.into()))
        }
    }

    /// Duplicate `fd` (the caller keeps the original) and take the copy.
    pub fn dup_raw(fd: std::os::fd::RawFd) -> io::Result<StreamSocket> {
        Self::from_fd(crate::sys::dup_cloexec(fd)?)
    }

    /// Use `fd` without owning it: no duplicate, so a connection costs one
    /// descriptor. The transport made on it switches it to non-blocking
    /// mode, stops all I/O on it and removes it from the poll when the
    /// connection is lost (before `connection_lost` runs), closed with
    /// `close_socket`, or aborted, and never closes it. The caller keeps
    /// `fd` open until then and closes it afterwards (the Python face: the
    /// `socket` object, in the transport's `_finish`). Such a transport
    /// does not capture its addresses: `peername`/`sockname` are read from
    /// the socket when asked while it has it, and are `None` after (the
    /// owner of the descriptor keeps its own copy if it needs one).
    ///
    /// Fails unless `fd` is an open socket.
    ///
    /// # Safety
    ///
    /// `fd` must stay open, and be this socket, until the transport made on
    /// it has let go of it (its `connection_lost` ran, or `close_socket`
    /// returned); closing it earlier would let the engine act on whatever
    /// descriptor reuses the number.
    pub unsafe fn borrow_raw(fd: std::os::fd::RawFd) -> io::Result<StreamSocket> {
        Ok(StreamSocket::Borrowed(BorrowedSocket { sock: crate::sys::borrow_socket(fd)? }))
    }

    /// Whether the transport made on this socket owns (and so closes) its descriptor.
    pub fn owns_fd(&self) -> bool {
        !matches!(self, StreamSocket::Borrowed(_))
    }

    fn into_sock(self) -> io::Result<Sock> {
        Ok(match self {
            StreamSocket::Borrowed(b) => {
                // Everything that can fail happens on the ManuallyDrop, which
                // never closes the descriptor; once unwrapped, the stream
                // transport forgets the socket instead of dropping it
                // (`StreamInner::owns_fd`).
                let unix = b.sock.local_addr()?.family() == libc::AF_UNIX as libc::sa_family_t;
                b.sock.set_nonblocking(true)?;
                if !unix {
                    let _ = b.sock.set_tcp_nodelay(true);
                }
                let sock = std::mem::ManuallyDrop::into_inner(b.sock);
                if unix {
                    Sock::Unix(mio::net::UnixStream::from_std(sock.into()))
                } else {
                    Sock::Tcp(mio::net::TcpStream::from_std(sock.into()))
                }
            }
            StreamSocket::Tcp(s) => {
                s.set_nonblocking(true)?;
                let _ = s.set_nodelay(true);
                Sock::Tcp(mio::net::TcpStream::from_std(s))
            }
            StreamSocket::Unix(s) => {
                s.set_nonblocking(true)?;
                Sock::Unix(mio::net::UnixStream::from_std(s))
            }
        })
    }
}

/// What `create_connection` and friends complete with: the transport and the
/// protocol the factory made, typed.
pub type Connection<P> = (Transport, Rc<RefCell<P>>);

/// Start a transport on `sock` and complete `out` after `connection_made`.
fn start_transport<P: Protocol>(lp: &EventLoop, sock: Sock, owns_fd: bool, protocol: P, out: LoopFuture<Connection<P>>) {
    let proto = Rc::new(RefCell::new(protocol));
    let dyn_proto: ProtocolRef = proto.clone();
    let out2 = out.clone();
    let on_made = Box::new(move |r: Result<Transport>| out2.set(r.map(|t| (t, proto))));
    if let Err(e) = Transport::spawn_adopted(lp, sock, owns_fd, dyn_proto, Some(on_made)) {
        out.set(Err(e));
    }
}

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
                Ok(stream) => start_transport(&lp2, Sock::Tcp(stream), true, factory(), out2),
                Err(e) => out2.set(Err(e)),
            });
        });
        out
    }

    /// Run a protocol on an already connected socket (asyncio's
    /// `create_connection(sock=...)`, the spec's "register an open socket").
    pub fn create_connection_from_socket<P, F>(&self, factory: F, sock: impl Into<StreamSocket>) -> LoopFuture<Connection<P>>
    where
        P: Protocol,
        F: FnOnce() -> P,
    {
        let out = LoopFuture::new();
        if let Err(e) = self.check_closed() {
            out.set(Err(e));
            return out;
        }
        let sock = sock.into();
        let owns_fd = sock.owns_fd();
        match sock.into_sock() {
            Ok(s) => start_transport(self, s, owns_fd, factory(), out.clone()),
            Err(e) => out.set(Err(Error::Io(e))),
        }
        out
    }

    /// Make a transport for `protocol` on a connected socket, synchronously
    /// (bindings: the protocol object is built by the caller).
    /// `connection_made` follows from the ready queue.
    pub fn create_transport(&self, sock: StreamSocket, protocol: ProtocolRef) -> Result<Transport> {
        let owns_fd = sock.owns_fd();
        let sock = sock.into_sock()?;
        Transport::spawn_adopted(self, sock, owns_fd, protocol, None)
    }

    /// Run a protocol on a socket accepted outside the loop (asyncio's
    /// `connect_accepted_socket`).
    pub fn connect_accepted_socket<P, F>(&self, factory: F, sock: impl Into<StreamSocket>) -> LoopFuture<Connection<P>>
    where
        P: Protocol,
        F: FnOnce() -> P,
    {
        self.create_connection_from_socket(factory, sock)
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
    token: Cell<Token>,
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
        let attempt = Rc::new(Attempt { connector: self.clone(), sock: RefCell::new(None), token: Cell::new(Token(0)) });
        let token = self
            .lp
            .register(&mut stream, Interest::WRITABLE, attempt.clone())?;
        attempt.token.set(token);
        *attempt.sock.borrow_mut() = Some(stream);
        Ok(attempt)
    }

    fn attempt_done(self: &Rc<Self>, attempt: &Rc<Attempt>, result: io::Result<()>) {
        self.attempts.borrow_mut().retain(|a| !Rc::ptr_eq(a, attempt));
        let mut stream = attempt.sock.borrow_mut().take();
        if let Some(s) = stream.as_mut() {
            self.lp.deregister(s, attempt.token.get());
        }
        match (result, stream) {
            (Ok(()), Some(s)) => {
                if let Some(t) = self.timer.borrow_mut().take() {
                    t.cancel();
                }
                // The first connection wins; close the others.
                let losers = std::mem::take(&mut *self.attempts.borrow_mut());
                for a in losers {
                    if let Some(mut s) = a.sock.borrow_mut().take() {
                        self.lp.deregister(&mut s, a.token.get());
                    }
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
