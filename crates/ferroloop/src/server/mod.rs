//! Listening servers: [`EventLoop::create_server`] and [`Server`].
//!
//! A server owns its listening sockets and tracks the transports it accepted,
//! so that it can close or abort them (`close_clients`/`abort_clients`, new in
//! asyncio 3.13) and so that `wait_closed` completes once the server is
//! closed *and* its connections are gone (asyncio 3.12's semantics).

pub mod accept;
mod unix;

use std::cell::{Cell, RefCell};
use std::fmt;
use std::net::SocketAddr;
use std::os::fd::RawFd;
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::rc::{Rc, Weak};

use slab::Slab;
use socket2::{Domain, Socket, Type};

use crate::server::accept::{AcceptEvent, Acceptor, ListenKind, ListenSock, Listener};
use crate::error::{Error, Result};
use crate::event_loop::{panic_message, EventLoop, ExceptionContext};
use crate::future::LoopFuture;
use crate::protocol::{Protocol, ProtocolRef};
use crate::resolve::{resolve_all, Family};
use crate::transport::fd::{Held, Sock};
use crate::transport::stream::StreamInner;
use crate::transport::registry::{Entry, Registry, WeakTransport};
use crate::transport::{Address, Transport, TransportKind};

/// Where a server listens (asyncio's `host=` argument).
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Host {
    /// Every interface: `0.0.0.0` and `::` (asyncio's `host=None` or `''`).
    Any,
    /// One host name or address.
    Name(String),
    /// Several hosts; each resolved address gets a listening socket.
    Names(Vec<String>),
}

impl From<&str> for Host {
    fn from(s: &str) -> Self {
        Host::Name(s.to_string())
    }
}
impl From<String> for Host {
    fn from(s: String) -> Self {
        Host::Name(s)
    }
}
impl From<Option<&str>> for Host {
    fn from(s: Option<&str>) -> Self {
        s.map(Host::from).unwrap_or(Host::Any)
    }
}
impl From<Vec<&str>> for Host {
    fn from(v: Vec<&str>) -> Self {
        Host::Names(v.into_iter().map(String::from).collect())
    }
}

/// Options of [`EventLoop::create_server`], with asyncio's defaults.
#[derive(Clone, Debug)]
pub struct ServerOptions {
    /// `listen()` backlog; also the most connections accepted per readiness event. Default 100.
    pub backlog: i32,
    /// `SO_REUSEADDR`; default (`None`) is on, as asyncio on Unix.
    pub reuse_address: Option<bool>,
    /// `SO_REUSEPORT`, to share a port between loops. Default off.
    pub reuse_port: bool,
    /// Start accepting at once (default) or only after [`Server::start_serving`].
    pub start_serving: bool,
    /// Only bind addresses of this family.
    pub family: Option<Family>,
    /// Serve TLS: each accepted connection does the handshake first; the
    /// protocol is made, and sees `connection_made`, once it succeeds.
    pub tls: Option<crate::transport::TlsServerOptions>,
}

impl Default for ServerOptions {
    fn default() -> Self {
        ServerOptions { backlog: 100, reuse_address: None, reuse_port: false, start_serving: true, family: None, tls: None }
    }
}

type Factory = Rc<dyn Fn() -> ProtocolRef>;

pub(crate) struct ServerInner {
    lp: EventLoop,
    factory: Factory,
    listeners: RefCell<Vec<Acceptor>>,
    tls: Option<crate::transport::TlsServerOptions>,
    serving: Cell<bool>,
    closed: Cell<bool>,
    /// The accepted connections, as the applications see them (see
    /// `transport::registry`).
    clients: RefCell<Slab<WeakTransport>>,
    waiters: RefCell<Option<Vec<LoopFuture<()>>>>,
    serving_forever: Cell<bool>,
    /// Run once when the server closes (a Unix server removes its socket file).
    close_hooks: RefCell<Vec<Box<dyn FnOnce()>>>,
}

impl ServerInner {
    fn spawn_client(self: &Rc<Self>, sock: Held<Sock>) {
        if let Some(tls) = &self.tls {
            match crate::transport::tls::server_protocol(&self.lp, tls, self.factory.clone()) {
                Ok(p) => return self.spawn_transport(sock, p),
                Err(e) => {
                    self.lp.call_exception_handler(ExceptionContext {
                        message: "Error creating a TLS session for an accepted connection".into(),
                        error: Some(e),
                    });
                    return;
                }
            }
        }
        let proto = match catch_unwind(AssertUnwindSafe(|| (self.factory)())) {
            Ok(p) => p,
            Err(payload) => {
                self.lp.call_exception_handler(ExceptionContext {
                    message: "Error in protocol factory".into(),
                    error: Some(Error::Panic(panic_message(&*payload))),
                });
                return; // dropping `sock` closes it
            }
        };
        self.spawn_transport(sock, proto)
    }

    fn spawn_transport(self: &Rc<Self>, sock: Held<Sock>, proto: ProtocolRef) {
        let id = self.clients.borrow_mut().insert(WeakTransport::None);
        let registry: Weak<dyn Registry> = Rc::downgrade(self) as Weak<dyn Registry>;
        match StreamInner::spawn(&self.lp, sock, TransportKind::Stream, proto, Some(Entry::new(registry, id)), None) {
            Ok(t) => self.replace(id, t.downgrade()),
            Err(e) => {
                self.clients.borrow_mut().try_remove(id);
                self.lp.call_exception_handler(ExceptionContext {
                    message: "Error creating a transport for an accepted connection".into(),
                    error: Some(e),
                });
            }
        }
    }

    fn detach(&self, id: usize) {
        let empty = {
            let mut c = self.clients.borrow_mut();
            c.try_remove(id);
            c.is_empty()
        };
        if empty && self.closed.get() {
            self.wakeup();
        }
    }

    fn wakeup(&self) {
        let waiters = self.waiters.borrow_mut().take();
        for w in waiters.into_iter().flatten() {
            w.set(Ok(()));
        }
    }

    /// The live connections, as their applications see them: the TLS
    /// transport of a TLS connection (so that closing it sends close_notify).
    fn client_transports(&self) -> Vec<Transport> {
        self.clients.borrow().iter().filter_map(|(_, w)| w.live()).collect()
    }
}

impl Registry for ServerInner {
    fn release(&self, id: usize) {
        self.detach(id);
    }

    fn replace(&self, id: usize, t: WeakTransport) {
        let old = self.clients.borrow_mut().get_mut(id).map(|slot| std::mem::replace(slot, t));
        drop(old);
    }
}

/// One listening socket of a [`Server`].
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ServerSocket {
    /// Its file descriptor (owned by the server).
    pub fd: RawFd,
    /// The address it is bound to.
    pub address: Option<Address>,
}

/// A listening server (asyncio's `Server`). Cheap to clone.
#[derive(Clone)]
pub struct Server {
    inner: Rc<ServerInner>,
}

impl fmt::Debug for Server {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Server").field("sockets", &self.sockets()).field("serving", &self.is_serving()).finish()
    }
}

impl Server {
    /// The loop the server runs on.
    pub fn get_loop(&self) -> EventLoop {
        self.inner.lp.clone()
    }

    /// The listening sockets; empty once closed.
    pub fn sockets(&self) -> Vec<ServerSocket> {
        self.inner
            .listeners
            .borrow()
            .iter()
            .filter(|l| l.fd() >= 0)
            .map(|l| ServerSocket { fd: l.fd(), address: l.address() })
            .collect()
    }

    /// Whether the server accepts connections.
    pub fn is_serving(&self) -> bool {
        self.inner.serving.get()
    }

    /// Whether [`Server::close`] was called.
    pub fn is_closed(&self) -> bool {
        self.inner.closed.get()
    }

    /// Start accepting connections (no-op if already serving).
    pub fn start_serving(&self) -> Result<()> {
        if self.inner.closed.get() {
            return Err(Error::state(format!("server {:?} is closed", self.sockets())));
        }
        if self.inner.serving.replace(true) {
            return Ok(());
        }
        let listeners = self.inner.listeners.borrow().clone();
        for l in listeners {
            l.start()?;
        }
        Ok(())
    }

    /// Stop listening and close the listening sockets. Connections already
    /// accepted stay open (see [`Server::close_clients`]).
    pub fn close(&self) {
        if self.inner.closed.replace(true) {
            return;
        }
        self.inner.serving.set(false);
        let listeners = std::mem::take(&mut *self.inner.listeners.borrow_mut());
        for l in listeners {
            l.close();
        }
        let hooks = std::mem::take(&mut *self.inner.close_hooks.borrow_mut());
        for hook in hooks {
            hook();
        }
        if self.inner.clients.borrow().is_empty() {
            self.inner.wakeup();
        }
    }

    /// Run `f` when the server closes (at once if it is closed already).
    pub(crate) fn on_close(&self, f: Box<dyn FnOnce()>) {
        if self.inner.closed.get() {
            f()
        } else {
            self.inner.close_hooks.borrow_mut().push(f)
        }
    }

    /// Close every connection the server accepted (asyncio 3.13): as their
    /// transports' `close()`, so a TLS connection flushes, sends close_notify
    /// and waits (up to its shutdown timeout) for the peer's.
    pub fn close_clients(&self) {
        for t in self.inner.client_transports() {
            t.close();
        }
    }

    /// Abort every connection the server accepted (asyncio 3.13).
    pub fn abort_clients(&self) {
        for t in self.inner.client_transports() {
            t.abort();
        }
    }

    /// Number of live connections accepted by this server.
    pub fn active_connections(&self) -> usize {
        self.inner.clients.borrow().len()
    }

    /// A future that completes once the server is closed and all its
    /// connections are lost (complete at once if that already happened).
    pub fn wait_closed(&self) -> LoopFuture<()> {
        let mut waiters = self.inner.waiters.borrow_mut();
        match waiters.as_mut() {
            None => LoopFuture::ready(Ok(())),
            Some(w) => {
                let f = LoopFuture::new();
                w.push(f.clone());
                f
            }
        }
    }

    /// Start serving and run the loop until the server is closed (from a
    /// callback, a protocol or another thread via `call_soon_threadsafe`).
    pub fn serve_forever(&self) -> Result<()> {
        if self.inner.serving_forever.get() {
            return Err(Error::state("server is already being awaited on serve_forever()"));
        }
        self.start_serving()?;
        self.inner.serving_forever.set(true);
        let me = self.clone();
        let r = self.inner.lp.run_until(move || me.is_closed());
        self.inner.serving_forever.set(false);
        r
    }
}

fn bind_tcp(addr: SocketAddr, opts: &ServerOptions) -> Result<mio::net::TcpListener> {
    let domain = if addr.is_ipv4() { Domain::IPV4 } else { Domain::IPV6 };
    let sock = Socket::new(domain, Type::STREAM.cloexec(), None)?;
    if opts.reuse_address.unwrap_or(true) {
        sock.set_reuse_address(true)?;
    }
    if opts.reuse_port {
        sock.set_reuse_port(true)?;
    }
    if addr.is_ipv6() {
        sock.set_only_v6(true)?;
    }
    if let Err(e) = sock.bind(&addr.into()) {
        return Err(Error::Bind { address: addr.to_string(), source: e });
    }
    sock.set_nonblocking(true)?;
    sock.listen(opts.backlog)?;
    Ok(mio::net::TcpListener::from_std(sock.into()))
}

fn make_factory<P: Protocol, F: Fn() -> P + 'static>(factory: F) -> Factory {
    Rc::new(move || Rc::new(RefCell::new(factory())) as ProtocolRef)
}

impl EventLoop {
    fn new_server(&self, factory: Factory, socks: Vec<ListenSock>, opts: &ServerOptions) -> Result<Server> {
        let backlog = usize::try_from(opts.backlog).unwrap_or(1);
        let inner = Rc::new_cyclic(|weak: &Weak<ServerInner>| ServerInner {
            lp: self.clone(),
            factory,
            listeners: RefCell::new(
                socks
                    .into_iter()
                    .map(|s| {
                        let server = weak.clone();
                        let lp = self.clone();
                        Acceptor::from_listen_sock(self, s, backlog, Rc::new(move |ev: AcceptEvent| match ev {
                            Ok(conn) => {
                                if let Some(server) = server.upgrade() {
                                    server.spawn_client(conn.into_sock());
                                }
                            }
                            Err(e) => lp.call_exception_handler(ExceptionContext {
                                message: "socket.accept() out of system resource".into(),
                                error: Some(Error::Io(e)),
                            }),
                        }))
                    })
                    .collect(),
            ),
            tls: opts.tls.clone(),
            serving: Cell::new(false),
            closed: Cell::new(false),
            clients: RefCell::new(Slab::new()),
            waiters: RefCell::new(Some(Vec::new())),
            serving_forever: Cell::new(false),
            close_hooks: RefCell::new(Vec::new()),
        });
        let server = Server { inner };
        if opts.start_serving {
            server.start_serving()?;
        }
        Ok(server)
    }

    /// Listen on `host:port` (asyncio's `create_server`). `factory` makes one
    /// protocol per accepted connection. Port 0 picks a free port (per socket).
    /// Names are resolved off the loop thread; the future completes once the
    /// sockets listen.
    pub fn create_server<P, F>(&self, factory: F, host: impl Into<Host>, port: u16, opts: ServerOptions) -> LoopFuture<Server>
    where
        P: Protocol,
        F: Fn() -> P + 'static,
    {
        let out = LoopFuture::new();
        if let Err(e) = self.check_closed() {
            out.set(Err(e));
            return out;
        }
        let hosts: Vec<Option<String>> = match host.into() {
            Host::Any => vec![None],
            Host::Name(h) if h.is_empty() => vec![None],
            Host::Name(h) => vec![Some(h)],
            Host::Names(v) => v.into_iter().map(|h| if h.is_empty() { None } else { Some(h) }).collect(),
        };
        let resolved = resolve_all(self, hosts, port);
        let lp = self.clone();
        let factory = make_factory(factory);
        let out2 = out.clone();
        resolved.clone().add_done_callback(move || {
            let addrs = match resolved.take_result() {
                Some(Ok(a)) => a,
                Some(Err(e)) => return out2.set(Err(e)),
                None => return out2.set(Err(Error::Cancelled)),
            };
            let addrs: Vec<SocketAddr> = addrs.into_iter().filter(|a| opts.family.map(|f| f.matches(a)).unwrap_or(true)).collect();
            let mut socks = Vec::new();
            for a in &addrs {
                match bind_tcp(*a, &opts) {
                    Ok(l) => socks.push(ListenKind::tcp(l)),
                    // `::` can be missing on hosts without IPv6; asyncio skips it too.
                    Err(Error::Io(e)) | Err(Error::Bind { source: e, .. })
                        if a.is_ipv6() && e.raw_os_error() == Some(libc::EAFNOSUPPORT) => {}
                    Err(e) => return out2.set(Err(e)),
                }
            }
            if socks.is_empty() {
                return out2.set(Err(Error::invalid("Neither host/port nor sock were specified")));
            }
            out2.set(lp.new_server(factory, socks, &opts));
        });
        out
    }

    /// Serve on an already listening socket (asyncio's `create_server(sock=...)`).
    pub fn create_server_from_listener<P, F>(
        &self,
        factory: F,
        listener: std::net::TcpListener,
        opts: ServerOptions,
    ) -> Result<Server>
    where
        P: Protocol,
        F: Fn() -> P + 'static,
    {
        self.serve_listener(factory, &opts, Listener::Tcp(listener))
    }

    /// Serve on a listening Unix socket.
    pub fn create_server_from_unix_listener<P, F>(
        &self,
        factory: F,
        listener: std::os::unix::net::UnixListener,
        opts: ServerOptions,
    ) -> Result<Server>
    where
        P: Protocol,
        F: Fn() -> P + 'static,
    {
        self.serve_listener(factory, &opts, Listener::Unix(listener))
    }

    /// Serve on the listening socket `listen` makes, unless the loop is closed.
    fn serve_listener<P, F>(
        &self,
        factory: F,
        opts: &ServerOptions,
        listener: Listener,
    ) -> Result<Server>
    where
        P: Protocol,
        F: Fn() -> P + 'static,
    {
        self.check_closed()?;
        let sock = listener.into_listen_sock()?;
        self.new_server(make_factory(factory), vec![sock], opts)
    }
}
