//! The descriptor under a datagram transport: the [`DatagramSocket`] a
//! program hands in, and the engine's non-blocking `DSock`, with UDP's
//! batched receive buffer.

use std::cell::Cell;
use std::io;
use std::os::fd::{AsRawFd, OwnedFd, RawFd};

use socket2::{Domain, SockRef, Socket, Type};

use crate::sys;
use crate::transport::Address;

/// A datagram socket handed to the loop (asyncio's `sock=` argument).
#[derive(Debug)]
pub enum DatagramSocket {
    /// A UDP socket, bound or connected or neither.
    Udp(std::net::UdpSocket),
    /// A Unix datagram socket.
    Unix(std::os::unix::net::UnixDatagram),
}

impl From<std::net::UdpSocket> for DatagramSocket {
    fn from(s: std::net::UdpSocket) -> Self {
        DatagramSocket::Udp(s)
    }
}

impl From<std::os::unix::net::UnixDatagram> for DatagramSocket {
    fn from(s: std::os::unix::net::UnixDatagram) -> Self {
        DatagramSocket::Unix(s)
    }
}

impl DatagramSocket {
    /// Take a datagram socket of either family from an owned descriptor: a
    /// `SOCK_DGRAM` one, or a Unix `SOCK_SEQPACKET` one (message boundaries
    /// kept; asyncio 3.13 takes any socket but a stream one). Fails with
    /// `EPROTOTYPE` otherwise.
    pub fn from_fd(fd: OwnedFd) -> io::Result<DatagramSocket> {
        let sock = Socket::from(fd);
        let unix = sock.domain()? == Domain::UNIX;
        let ty = sock.r#type()?;
        if !(ty == Type::DGRAM || (unix && ty == Type::SEQPACKET)) {
            return Err(io::Error::from_raw_os_error(libc::EPROTOTYPE));
        }
        if unix {
            Ok(DatagramSocket::Unix(OwnedFd::from(sock).into()))
        } else {
            Ok(DatagramSocket::Udp(OwnedFd::from(sock).into()))
        }
    }

    /// Duplicate `fd` (the caller keeps the original) and take the copy.
    pub fn dup_raw(fd: RawFd) -> io::Result<DatagramSocket> {
        Self::from_fd(crate::sys::dup_cloexec(fd)?)
    }

    pub(super) fn into_sock(self) -> io::Result<DSock> {
        Ok(match self {
            DatagramSocket::Udp(s) => {
                s.set_nonblocking(true)?;
                DSock::Udp(mio::net::UdpSocket::from_std(s))
            }
            DatagramSocket::Unix(s) => {
                s.set_nonblocking(true)?;
                DSock::Unix(mio::net::UnixDatagram::from_std(s))
            }
        })
    }
}

/// Bytes per datagram slot of a receive batch: more than any UDP payload
/// (65,507 bytes over IPv4, 65,527 over IPv6 without jumbograms).
pub(super) const BATCH_SLOT: usize = 64 * 1024;

thread_local! {
    /// The receive-batch buffer (`MAX_BATCH` slots), one per thread: loops
    /// are per thread and a batch is delivered before the next is read.
    static BATCH_BUF: Cell<Option<Box<[u8]>>> = const { Cell::new(None) };
}

pub(super) fn take_batch_buf() -> Box<[u8]> {
    BATCH_BUF
        .with(|b| b.take())
        .unwrap_or_else(|| vec![0u8; BATCH_SLOT * sys::dgram::MAX_BATCH].into_boxed_slice())
}

pub(super) fn put_batch_buf(buf: Box<[u8]>) {
    BATCH_BUF.with(|b| b.set(Some(buf)));
}

pub(super) enum DSock {
    Udp(mio::net::UdpSocket),
    Unix(mio::net::UnixDatagram),
}

impl DSock {
    pub(super) fn source(&mut self) -> &mut dyn mio::event::Source {
        match self {
            DSock::Udp(s) => s,
            DSock::Unix(s) => s,
        }
    }

    pub(super) fn fd(&self) -> RawFd {
        match self {
            DSock::Udp(s) => s.as_raw_fd(),
            DSock::Unix(s) => s.as_raw_fd(),
        }
    }

    pub(super) fn recv_from(&self, buf: &mut [u8]) -> io::Result<(usize, Address)> {
        match self {
            DSock::Udp(s) => s.recv_from(buf).map(|(n, a)| (n, Address::Inet(a))),
            DSock::Unix(s) => s.recv_from(buf).map(|(n, a)| (n, Address::of_unix(&a))),
        }
    }

    pub(super) fn send(&self, buf: &[u8]) -> io::Result<usize> {
        match self {
            DSock::Udp(s) => s.send(buf),
            DSock::Unix(s) => s.send(buf),
        }
    }

    /// `to` is of this socket's family.
    pub(super) fn fits(&self, to: &Address) -> bool {
        matches!((self, to), (DSock::Udp(_), Address::Inet(_)) | (DSock::Unix(_), Address::Unix(_)))
    }

    pub(super) fn send_to(&self, buf: &[u8], to: &Address) -> io::Result<usize> {
        if !self.fits(to) {
            // The kernel's answer for an address of the wrong family.
            return Err(io::Error::from_raw_os_error(libc::EAFNOSUPPORT));
        }
        match (self, to) {
            (DSock::Udp(s), Address::Inet(a)) => s.send_to(buf, *a),
            // (A UDP socket with a Unix address does not pass `fits`.)
            (DSock::Udp(s), _) => SockRef::from(s).send_to(buf, &to.to_sockaddr()?),
            (DSock::Unix(s), _) => SockRef::from(s).send_to(buf, &to.to_sockaddr()?),
        }
    }

    pub(super) fn peer(&self) -> Option<Address> {
        match self {
            DSock::Udp(s) => s.peer_addr().ok().map(Address::Inet),
            DSock::Unix(s) => s.peer_addr().ok().map(|a| Address::of_unix(&a)),
        }
    }

    pub(super) fn local(&self) -> Option<Address> {
        match self {
            DSock::Udp(s) => s.local_addr().ok().map(Address::Inet),
            DSock::Unix(s) => s.local_addr().ok().map(|a| Address::of_unix(&a)),
        }
    }
}
