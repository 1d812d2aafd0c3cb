//! The accept loop: one listening socket in the loop's poll, and what happens
//! when it is ready. Both faces' servers serve through it ([`Server`] on the
//! Rust face; the Python face's `Server` through its binding), so accepting
//! has one set of rules:
//!
//! - at most `backlog` connections are accepted per readiness (mio is
//!   edge-triggered: when that budget is used, the acceptor continues from
//!   the ready queue, after what is already queued there);
//! - `ECONNABORTED` and `EINTR`: the next connection is tried;
//! - `EMFILE`, `ENFILE`, `ENOBUFS`, `ENOMEM` (asyncio's "out of system
//!   resource"): the acceptor leaves the poll, reports the error to its
//!   owner, and starts again after [`ACCEPT_RETRY_DELAY`] unless its owner
//!   stopped it meanwhile.
//!
//! [`Server`]: crate::Server

use std::cell::{Cell, RefCell};
use std::fmt;
use std::io;
use std::os::fd::{AsRawFd, OwnedFd, RawFd};
use std::rc::Rc;

use mio::Interest;

use crate::error::Result;
use crate::event_loop::{EventLoop, IoSource, Readiness, Registration};
use crate::transport::fd::{Held, Sock};
use crate::transport::Address;

/// After an out-of-resource error, accepting pauses this long, in seconds
/// (asyncio's `ACCEPT_RETRY_DELAY`).
pub const ACCEPT_RETRY_DELAY: f64 = 1.0;

/// A listening socket an [`Acceptor`] accepts on; a borrowed one is never
/// closed here (its owner closes it, after the acceptor let go of it).
pub(crate) type ListenSock = Held<ListenKind>;

/// The listening socket's family.
pub(crate) enum ListenKind {
    Tcp(mio::net::TcpListener),
    Unix(mio::net::UnixListener),
}

impl ListenKind {
    /// An owned TCP listener.
    pub(crate) fn tcp(l: mio::net::TcpListener) -> ListenSock {
        Held::new(ListenKind::Tcp(l), true)
    }

    fn source(&mut self) -> &mut dyn mio::event::Source {
        match self {
            ListenKind::Tcp(s) => s,
            ListenKind::Unix(s) => s,
        }
    }

    fn accept(&self) -> io::Result<Conn> {
        match self {
            ListenKind::Tcp(l) => {
                let (s, peer) = l.accept()?;
                let _ = s.set_nodelay(true);
                Ok(Conn::Tcp(s, peer))
            }
            ListenKind::Unix(l) => l.accept().map(|(s, peer)| Conn::Unix(s, peer)),
        }
    }

    pub(crate) fn fd(&self) -> RawFd {
        match self {
            ListenKind::Tcp(s) => s.as_raw_fd(),
            ListenKind::Unix(s) => s.as_raw_fd(),
        }
    }

    pub(crate) fn address(&self) -> Option<Address> {
        match self {
            ListenKind::Tcp(s) => s.local_addr().ok().map(Address::Inet),
            ListenKind::Unix(s) => s.local_addr().ok().map(|a| Address::of_unix(&a)),
        }
    }
}

/// A listening socket handed to an [`Acceptor`].
#[derive(Debug)]
pub enum Listener {
    /// A listening TCP socket.
    Tcp(std::net::TcpListener),
    /// A listening Unix stream socket.
    Unix(std::os::unix::net::UnixListener),
    /// A listening socket of either family on a descriptor its owner keeps
    /// and closes (see [`Listener::borrow_raw`]).
    Borrowed(BorrowedListener),
}

/// A listening socket on a borrowed descriptor, made by [`Listener::borrow_raw`].
#[derive(Debug)]
pub struct BorrowedListener {
    /// Never dropped: that would close the owner's descriptor.
    sock: std::mem::ManuallyDrop<socket2::Socket>,
}

impl Listener {
    /// A listener on descriptor `fd`, which stays its owner's: the acceptor
    /// made on it never closes it (asyncio's loops serve the application's
    /// socket object the same way, adding no descriptor of their own).
    ///
    /// # Safety
    ///
    /// `fd` must be a listening stream socket that stays open until the
    /// acceptor let go of it ([`Acceptor::close`] returned, or the acceptor
    /// was stopped and dropped); closing it earlier would let the acceptor
    /// accept on whatever descriptor reuses the number.
    pub unsafe fn borrow_raw(fd: RawFd) -> io::Result<Listener> {
        Ok(Listener::Borrowed(BorrowedListener { sock: crate::sys::borrow_socket(fd)? }))
    }

    pub(crate) fn into_listen_sock(self) -> io::Result<ListenSock> {
        Ok(match self {
            Listener::Tcp(l) => {
                l.set_nonblocking(true)?;
                ListenKind::tcp(mio::net::TcpListener::from_std(l))
            }
            Listener::Unix(l) => {
                l.set_nonblocking(true)?;
                Held::new(ListenKind::Unix(mio::net::UnixListener::from_std(l)), true)
            }
            Listener::Borrowed(b) => {
                // Everything that can fail happens on the ManuallyDrop; once
                // unwrapped, it goes straight into a borrowed `Held`.
                let unix = b.sock.local_addr()?.family() == libc::AF_UNIX as libc::sa_family_t;
                b.sock.set_nonblocking(true)?;
                let sock = std::mem::ManuallyDrop::into_inner(b.sock);
                let kind = if unix {
                    ListenKind::Unix(mio::net::UnixListener::from_std(sock.into()))
                } else {
                    ListenKind::Tcp(mio::net::TcpListener::from_std(sock.into()))
                };
                Held::new(kind, false)
            }
        })
    }
}

/// A connection an [`Acceptor`] accepted: a non-blocking, close-on-exec
/// stream socket (`TCP_NODELAY` set on TCP).
pub struct Accepted {
    conn: Conn,
}

/// The stream and the peer's address `accept()` returned (kept as the
/// kernel gave it: converted only if asked for, no second `getpeername`).
enum Conn {
    Tcp(mio::net::TcpStream, std::net::SocketAddr),
    Unix(mio::net::UnixStream, std::os::unix::net::SocketAddr),
}

impl fmt::Debug for Accepted {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Accepted").field("fd", &self.fd()).finish()
    }
}

impl Accepted {
    /// Its descriptor (still owned by this value).
    pub fn fd(&self) -> RawFd {
        match &self.conn {
            Conn::Tcp(s, _) => s.as_raw_fd(),
            Conn::Unix(s, _) => s.as_raw_fd(),
        }
    }

    /// The peer's address, as `accept()` returned it.
    pub fn peer_address(&self) -> Option<Address> {
        match &self.conn {
            Conn::Tcp(_, peer) => Some(Address::Inet(*peer)),
            Conn::Unix(_, peer) => Some(Address::of_unix(peer)),
        }
    }

    /// The local address (`None` where the socket cannot tell).
    pub fn local_address(&self) -> Option<Address> {
        match &self.conn {
            Conn::Tcp(s, _) => s.local_addr().ok().map(Address::Inet),
            Conn::Unix(s, _) => s.local_addr().ok().map(|a| Address::of_unix(&a)),
        }
    }

    /// The socket's descriptor, now the caller's to close.
    pub fn into_owned_fd(self) -> OwnedFd {
        match self.conn {
            Conn::Tcp(s, _) => s.into(),
            Conn::Unix(s, _) => s.into(),
        }
    }

    /// The engine's stream socket, for a transport the engine owns.
    pub(crate) fn into_sock(self) -> Held<Sock> {
        let sock = match self.conn {
            Conn::Tcp(s, _) => Sock::Tcp(s),
            Conn::Unix(s, _) => Sock::Unix(s),
        };
        Held::new(sock, true)
    }
}

/// What an acceptor hands its owner: a connection, or an out-of-resource
/// error after which the acceptor has paused itself (see the module docs).
pub type AcceptEvent = io::Result<Accepted>;

type Sink = Rc<dyn Fn(AcceptEvent)>;

struct Inner {
    lp: EventLoop,
    sock: RefCell<Option<ListenSock>>,
    reg: Registration,
    /// `start` was called and neither `stop` nor `close` since: an
    /// out-of-resource pause ends only while this holds.
    wanted: Cell<bool>,
    backlog: usize,
    sink: RefCell<Option<Sink>>,
}

/// The accept loop on one listening socket (see the module docs). Cheap to
/// clone. While it accepts, the loop holds it: [`Acceptor::stop`] or
/// [`Acceptor::close`] ends that (the socket closes on `close`, or when the
/// last clone is dropped after `stop`).
#[derive(Clone)]
pub struct Acceptor {
    inner: Rc<Inner>,
}

impl fmt::Debug for Acceptor {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Acceptor").field("fd", &self.fd()).field("accepting", &self.is_accepting()).finish()
    }
}

impl Acceptor {
    /// An acceptor on `listener` (which must already listen), handing each
    /// event to `sink`. It accepts nothing until [`Acceptor::start`].
    /// `backlog` bounds the connections accepted per readiness (at least 1).
    pub fn new(lp: &EventLoop, listener: Listener, backlog: usize, sink: impl Fn(AcceptEvent) + 'static) -> Result<Self> {
        lp.check_closed()?;
        let sock = listener.into_listen_sock()?;
        Ok(Self::from_listen_sock(lp, sock, backlog, Rc::new(sink)))
    }

    pub(crate) fn from_listen_sock(lp: &EventLoop, sock: ListenSock, backlog: usize, sink: Sink) -> Self {
        Acceptor {
            inner: Rc::new(Inner {
                lp: lp.clone(),
                sock: RefCell::new(Some(sock)),
                reg: Registration::new(),
                wanted: Cell::new(false),
                backlog: backlog.max(1),
                sink: RefCell::new(Some(sink)),
            }),
        }
    }

    /// Start accepting (no-op if accepting). Connections already waiting in
    /// the backlog are accepted from the ready queue.
    pub fn start(&self) -> Result<()> {
        self.inner.wanted.set(true);
        self.inner.register()
    }

    /// Stop accepting; the socket stays open (connections wait in its backlog).
    pub fn stop(&self) {
        self.inner.wanted.set(false);
        self.inner.deregister();
    }

    /// Stop accepting and close the listening socket. The sink is dropped.
    pub fn close(&self) {
        self.stop();
        let sock = self.inner.sock.borrow_mut().take();
        drop(sock);
        let sink = self.inner.sink.borrow_mut().take();
        drop(sink);
    }

    /// Whether the socket is in the poll (started, not paused, not closed).
    pub fn is_accepting(&self) -> bool {
        self.inner.reg.is_registered()
    }

    /// The listening socket's descriptor, or -1 once closed.
    pub fn fd(&self) -> RawFd {
        self.inner.sock.borrow().as_ref().map(|s| s.fd()).unwrap_or(-1)
    }

    /// The address the socket is bound to (`None` once closed).
    pub fn address(&self) -> Option<Address> {
        self.inner.sock.borrow().as_ref().and_then(|s| s.address())
    }
}

impl Inner {
    fn register(self: &Rc<Self>) -> Result<()> {
        if self.reg.is_registered() {
            return Ok(());
        }
        let mut sock = self.sock.borrow_mut();
        let Some(s) = sock.as_mut() else { return Ok(()) };
        self.reg.register(&self.lp, s.source(), Interest::READABLE, self.clone())?;
        drop(sock);
        self.continue_later();
        Ok(())
    }

    fn deregister(&self) {
        let mut sock = self.sock.borrow_mut();
        self.reg.deregister(&self.lp, sock.as_mut().map(|s| s.source()));
    }

    /// Accept again from the ready queue.
    fn continue_later(self: &Rc<Self>) {
        let me = self.clone();
        self.lp.schedule(Box::new(move || me.accept_ready()));
    }

    fn accept_ready(self: &Rc<Self>) {
        for _ in 0..self.backlog {
            if !self.reg.is_registered() {
                return;
            }
            let accepted = match self.sock.borrow().as_ref() {
                Some(s) => s.accept(),
                None => return,
            };
            let Some(sink) = self.sink.borrow().clone() else { return };
            match accepted {
                Ok(conn) => sink(Ok(Accepted { conn })),
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => return,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => {
                    let code = e.raw_os_error().unwrap_or(0);
                    if [libc::EMFILE, libc::ENFILE, libc::ENOBUFS, libc::ENOMEM].contains(&code) {
                        self.pause_after(e, sink);
                        return;
                    }
                    // ECONNABORTED and the like: the peer gave up; try the next one.
                }
            }
        }
        // The budget is used: continue after what is queued (edge-triggered poll).
        self.continue_later();
    }

    /// Out of a resource: leave the poll, tell the owner, retry later.
    fn pause_after(self: &Rc<Self>, e: io::Error, sink: Sink) {
        self.deregister();
        let me = self.clone();
        let _ = self.lp.call_later(ACCEPT_RETRY_DELAY, move || {
            if me.wanted.get() {
                let _ = me.register();
            }
        });
        sink(Err(e));
    }
}

impl IoSource for Inner {
    fn on_ready(self: Rc<Self>, _lp: &EventLoop, _ready: Readiness) {
        self.accept_ready();
    }

    fn on_loop_close(&self) {
        // The sink may hold user objects (a server's protocol factory).
        self.sink.borrow_mut().take();
    }
}
