//! Creating datagram endpoints: [`EventLoop::create_datagram_endpoint`]
//! and its Unix and `sock=` forms, as asyncio resolves, binds and
//! connects them.

use std::cell::RefCell;
use std::net::SocketAddr;
use std::os::fd::OwnedFd;
use std::path::Path;
use std::rc::Rc;

use socket2::{Domain, SockAddr, Socket, Type};

use crate::error::{Error, Result};
use crate::event_loop::EventLoop;
use crate::future::LoopFuture;
use crate::resolve::{resolve, Family};
use crate::transport::addr::remove_stale_socket;
use crate::transport::Address;

use super::sock::DatagramSocket;
use super::transport::DatagramTransport;
use super::{DatagramEndpoint, DatagramProtocol, DatagramProtocolRef};

/// Options of [`EventLoop::create_datagram_endpoint`], with asyncio's defaults.
#[derive(Clone, Debug, Default)]
pub struct DatagramOptions {
    /// Bind to this `(host, port)` (resolved off the loop thread).
    pub local_addr: Option<(String, u16)>,
    /// Connect to this `(host, port)`: `sendto` then takes no address (or
    /// this one), and only this peer's datagrams arrive. With
    /// `allow_broadcast` the socket is not connected; the address is then only
    /// the default destination.
    pub remote_addr: Option<(String, u16)>,
    /// Only use addresses of this family; required when neither address is given.
    pub family: Option<Family>,
    /// `SO_REUSEPORT`: several sockets may bind the same address and port.
    pub reuse_port: bool,
    /// `SO_BROADCAST`: allow sending to broadcast addresses.
    pub allow_broadcast: bool,
}

fn family_of(a: &SocketAddr) -> Family {
    if a.is_ipv4() {
        Family::V4
    } else {
        Family::V6
    }
}

/// Make, configure, bind and connect one UDP socket (asyncio's loop body).
fn open_udp(
    family: Family,
    local: Option<SocketAddr>,
    remote: Option<SocketAddr>,
    opts: &DatagramOptions,
) -> Result<std::net::UdpSocket> {
    let domain = match family {
        Family::V4 => Domain::IPV4,
        Family::V6 => Domain::IPV6,
    };
    let sock = Socket::new(domain, Type::DGRAM.cloexec(), Some(socket2::Protocol::UDP))?;
    if opts.reuse_port {
        sock.set_reuse_port(true)?;
    }
    if opts.allow_broadcast {
        sock.set_broadcast(true)?;
    }
    sock.set_nonblocking(true)?;
    if let Some(l) = local {
        if let Err(e) = sock.bind(&l.into()) {
            return Err(Error::Bind { address: l.to_string(), source: e });
        }
    }
    if let Some(r) = remote {
        if !opts.allow_broadcast {
            sock.connect(&r.into())?;
        }
    }
    Ok(sock.into())
}

/// Resolve an optional `(host, port)`, then call `k` (from the loop).
fn resolve_opt(
    lp: &EventLoop,
    addr: Option<(String, u16)>,
    k: impl FnOnce(Result<Option<Vec<SocketAddr>>>) + 'static,
) {
    let Some((host, port)) = addr else { return k(Ok(None)) };
    let fut = resolve(lp, Some(&host), port);
    fut.clone().add_done_callback(move || match fut.take_result() {
        Some(Ok(v)) => k(Ok(Some(v))),
        Some(Err(e)) => k(Err(e)),
        None => k(Err(Error::Cancelled)),
    });
}

/// asyncio's choice of socket for `create_datagram_endpoint`: pair the
/// resolved local and remote addresses by family, try each pair in turn.
fn udp_socket_for(
    local: Option<Vec<SocketAddr>>,
    remote: Option<Vec<SocketAddr>>,
    opts: &DatagramOptions,
) -> Result<(std::net::UdpSocket, Option<SocketAddr>)> {
    let keep = |v: Option<Vec<SocketAddr>>| -> Option<Vec<SocketAddr>> {
        v.map(|v| v.into_iter().filter(|a| opts.family.map(|f| f.matches(a)).unwrap_or(true)).collect())
    };
    let (local, remote) = (keep(local), keep(remote));
    if local.is_none() && remote.is_none() {
        let Some(family) = opts.family else {
            return Err(Error::invalid("unexpected address family"));
        };
        return Ok((open_udp(family, None, None, opts)?, None));
    }
    // Families in the order the addresses came, each with its first local
    // and first remote address.
    let mut families: Vec<Family> = Vec::new();
    for a in local.iter().flatten().chain(remote.iter().flatten()) {
        let f = family_of(a);
        if !families.contains(&f) {
            families.push(f);
        }
    }
    let first_of = |v: &Option<Vec<SocketAddr>>, f: Family| v.as_ref().and_then(|v| v.iter().find(|a| f.matches(a)).copied());
    let pairs: Vec<(Family, Option<SocketAddr>, Option<SocketAddr>)> = families
        .into_iter()
        .map(|f| (f, first_of(&local, f), first_of(&remote, f)))
        .filter(|(_, l, r)| (local.is_none() || l.is_some()) && (remote.is_none() || r.is_some()))
        .collect();
    if pairs.is_empty() {
        return Err(Error::invalid("can not get address information"));
    }
    let mut errors = Vec::new();
    for (family, l, r) in pairs {
        match open_udp(family, l, r, opts) {
            Ok(s) => return Ok((s, r)),
            Err(e) => errors.push(e),
        }
    }
    Err(errors.swap_remove(0))
}

impl EventLoop {
    /// Create a UDP endpoint (asyncio's `create_datagram_endpoint`) and run a
    /// protocol made by `factory` on it. Names are resolved off the loop
    /// thread; the future completes after `connection_made`.
    ///
    /// As asyncio: with both addresses, each family that both resolve to is
    /// tried in turn; with neither, `family` must be given and the socket is
    /// left unbound (the kernel binds it on the first send). Errors:
    /// [`Error::InvalidArgument`] ("unexpected address family", "can not get
    /// address information"), [`Error::Bind`] when `local_addr` cannot be
    /// bound, [`Error::Io`] for the rest.
    pub fn create_datagram_endpoint<P, F>(&self, factory: F, opts: DatagramOptions) -> LoopFuture<DatagramEndpoint<P>>
    where
        P: DatagramProtocol,
        F: FnOnce() -> P + 'static,
    {
        let out = LoopFuture::new();
        if let Err(e) = self.check_closed() {
            out.set(Err(e));
            return out;
        }
        let lp = self.clone();
        let out2 = out.clone();
        let (local, remote) = (opts.local_addr.clone(), opts.remote_addr.clone());
        resolve_opt(self, local, move |local| {
            let lp2 = lp.clone();
            resolve_opt(&lp, remote, move |remote| {
                let opened = local.and_then(|l| remote.map(|r| (l, r))).and_then(|(l, r)| udp_socket_for(l, r, &opts));
                match opened {
                    Ok((sock, remote)) => {
                        start_datagram(&lp2, DatagramSocket::Udp(sock), factory(), remote.map(Address::Inet), out2)
                    }
                    Err(e) => out2.set(Err(e)),
                }
            });
        });
        out
    }

    /// Create a Unix datagram endpoint: bind to `local_path` (a stale socket
    /// file there is removed first, as asyncio does; a path starting with a
    /// NUL byte is an abstract name) and/or connect to `remote_path`.
    /// With neither, the socket is unnamed.
    pub fn create_unix_datagram_endpoint<P, F>(
        &self,
        factory: F,
        local_path: Option<&Path>,
        remote_path: Option<&Path>,
    ) -> LoopFuture<DatagramEndpoint<P>>
    where
        P: DatagramProtocol,
        F: FnOnce() -> P,
    {
        let out = LoopFuture::new();
        let opened = (|| -> Result<std::os::unix::net::UnixDatagram> {
            self.check_closed()?;
            let sock = Socket::new(Domain::UNIX, Type::DGRAM.cloexec(), None)?;
            sock.set_nonblocking(true)?;
            if let Some(l) = local_path {
                remove_stale_socket(l);
                if let Err(e) = sock.bind(&SockAddr::unix(l)?) {
                    return Err(Error::Bind { address: format!("{l:?}"), source: e });
                }
            }
            if let Some(r) = remote_path {
                sock.connect(&SockAddr::unix(r)?)?;
            }
            Ok(OwnedFd::from(sock).into())
        })();
        match opened {
            Ok(s) => start_datagram(self, DatagramSocket::Unix(s), factory(), remote_path.map(|p| Address::of_path(&p)), out.clone()),
            Err(e) => out.set(Err(e)),
        }
        out
    }

    /// Run a datagram protocol on an existing socket (asyncio's
    /// `create_datagram_endpoint(sock=...)`). A connected socket sends to its
    /// peer; an unconnected one needs an address for every `sendto`.
    pub fn create_datagram_endpoint_from_socket<P, F>(
        &self,
        factory: F,
        sock: impl Into<DatagramSocket>,
    ) -> LoopFuture<DatagramEndpoint<P>>
    where
        P: DatagramProtocol,
        F: FnOnce() -> P,
    {
        let out = LoopFuture::new();
        match self.check_closed() {
            Ok(()) => start_datagram(self, sock.into(), factory(), None, out.clone()),
            Err(e) => out.set(Err(e)),
        }
        out
    }

    /// Make a datagram transport for `protocol` on `sock`, synchronously
    /// (bindings: the protocol object is built by the caller). `remote` is
    /// the default destination (checked by `sendto`). `connection_made`
    /// follows from the ready queue.
    pub fn create_datagram_transport(
        &self,
        sock: DatagramSocket,
        protocol: DatagramProtocolRef,
        remote: Option<Address>,
    ) -> Result<DatagramTransport> {
        let sock = sock.into_sock()?;
        DatagramTransport::spawn(self, sock, protocol, remote, None)
    }
}

/// Start a transport on `sock` and complete `out` after `connection_made`.
fn start_datagram<P: DatagramProtocol>(
    lp: &EventLoop,
    sock: DatagramSocket,
    protocol: P,
    remote: Option<Address>,
    out: LoopFuture<DatagramEndpoint<P>>,
) {
    let sock = match sock.into_sock() {
        Ok(s) => s,
        Err(e) => return out.set(Err(Error::Io(e))),
    };
    let proto = Rc::new(RefCell::new(protocol));
    let dyn_proto: DatagramProtocolRef = proto.clone();
    let out2 = out.clone();
    let on_made = Box::new(move |t: DatagramTransport| out2.set(Ok((t, proto))));
    if let Err(e) = DatagramTransport::spawn(lp, sock, dyn_proto, remote, Some(on_made)) {
        out.set(Err(e));
    }
}
