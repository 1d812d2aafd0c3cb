//! Addresses and extra information: [`Address`] as `get_extra_info`
//! reports a `peername` or `sockname`, the one conversion of a Unix socket
//! address into it, and [`ExtraInfo`], the values of `get_extra_info`.
//!
//! A Unix address is a string: a path, an abstract-namespace name written
//! with its leading NUL (`"\0name"`, as Python's `b"\x00name"`), or the
//! empty string for an unnamed socket. Every transport, listener and
//! datagram endpoint converts through [`Address::of_unix`], so that a
//! connection accepted on a listener reports the listener's own name.

use std::fmt;
use std::io;
use std::net::SocketAddr;
use std::os::fd::RawFd;
use std::os::linux::net::SocketAddrExt;
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::FileTypeExt;
use std::os::unix::net::SocketAddr as UnixSocketAddr;
use std::path::Path;

use socket2::SockAddr;

use crate::transport::tls::config::{TlsConfig, TlsInfo};

/// A socket address as reported by `get_extra_info("peername"/"sockname")`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Address {
    /// An IPv4 or IPv6 address.
    Inet(SocketAddr),
    /// A Unix socket: a path, `"\0name"` for an abstract name, `""` when unnamed.
    Unix(String),
}

impl fmt::Display for Address {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Address::Inet(a) => write!(f, "{a}"),
            Address::Unix(p) => f.write_str(p),
        }
    }
}

impl Address {
    /// The address of a Unix socket: its path, `"\0name"` for an abstract
    /// name, `""` when unnamed.
    pub fn of_unix(a: &UnixSocketAddr) -> Address {
        if let Some(p) = a.as_pathname() {
            return Address::Unix(p.to_string_lossy().into_owned());
        }
        if let Some(name) = a.as_abstract_name() {
            let mut s = String::from("\0");
            s.push_str(&String::from_utf8_lossy(name));
            return Address::Unix(s);
        }
        Address::Unix(String::new())
    }

    /// A Unix address naming `path` (a leading NUL byte: an abstract name).
    pub(crate) fn of_path(path: &Path) -> Address {
        Address::Unix(String::from_utf8_lossy(path.as_os_str().as_bytes()).into_owned())
    }

    /// The socket2 address (a leading NUL makes a Unix name abstract).
    pub(crate) fn to_sockaddr(&self) -> io::Result<SockAddr> {
        match self {
            Address::Inet(sa) => Ok(SockAddr::from(*sa)),
            Address::Unix(p) => SockAddr::unix(Path::new(std::ffi::OsStr::from_bytes(p.as_bytes()))),
        }
    }
}

/// Whether `path` names an abstract-namespace socket (leading NUL byte).
pub(crate) fn is_abstract(path: &Path) -> bool {
    path.as_os_str().as_bytes().first() == Some(&0)
}

/// Remove a socket file left at `path` by an earlier process, as asyncio
/// does before binding a Unix socket; anything else at `path` is kept (the
/// bind then fails with `EADDRINUSE`).
pub(crate) fn remove_stale_socket(path: &Path) {
    if is_abstract(path) {
        return;
    }
    if let Ok(md) = std::fs::metadata(path) {
        if md.file_type().is_socket() {
            let _ = std::fs::remove_file(path);
        }
    }
}

/// A value returned by [`Transport::get_extra_info`](crate::Transport::get_extra_info).
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum ExtraInfo {
    /// `peername` or `sockname`.
    Address(Address),
    /// `socket`: the transport's file descriptor (owned by the transport).
    Fd(RawFd),
    /// `peercert` on a TLS transport: the DER encoding of the peer's end
    /// certificate (asyncio returns the decoded dict; the DER is what
    /// `getpeercert(binary_form=True)` gives).
    Bytes(Vec<u8>),
    /// `cipher` on a TLS transport: asyncio's `(name, protocol version, secret bits)`.
    Cipher {
        /// The cipher suite's IANA name, e.g. `TLS13_AES_256_GCM_SHA384`.
        name: String,
        /// The protocol version, e.g. `TLSv1.3`.
        protocol: String,
        /// The bulk cipher's key length in bits.
        bits: u32,
    },
    /// `server_hostname` on a TLS transport: the name a client verified the
    /// server against, or the SNI a server received.
    Text(String),
    /// `ssl_object` on a TLS transport: what the session negotiated, read
    /// when asked (the properties asyncio's `ssl.SSLObject` answers:
    /// version, cipher, ALPN protocol, peer certificates, server name,
    /// whether the session was resumed).
    Tls(TlsInfo),
    /// `sslcontext` on a TLS transport: the rustls configuration it was
    /// made with.
    TlsConfig(TlsConfig),
}

impl ExtraInfo {
    /// asyncio's keys of a socket transport: `peername`, `sockname`, `socket`
    /// (`socket_fd` is asked only for that one).
    pub(crate) fn of_socket(
        name: &str,
        peername: Option<&Address>,
        sockname: Option<&Address>,
        socket_fd: impl FnOnce() -> Option<RawFd>,
    ) -> Option<ExtraInfo> {
        match name {
            "peername" => peername.cloned().map(ExtraInfo::Address),
            "sockname" => sockname.cloned().map(ExtraInfo::Address),
            "socket" => socket_fd().map(ExtraInfo::Fd),
            _ => None,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn unix_addresses_convert_one_way_for_path_abstract_and_unnamed() {
        let p = UnixSocketAddr::from_pathname("/tmp/x.sock").unwrap();
        assert_eq!(Address::of_unix(&p), Address::Unix("/tmp/x.sock".into()));
        let a = UnixSocketAddr::from_abstract_name(b"ferro-abs").unwrap();
        assert_eq!(Address::of_unix(&a), Address::Unix("\0ferro-abs".into()));
        let (s, _) = std::os::unix::net::UnixStream::pair().unwrap();
        assert_eq!(Address::of_unix(&s.local_addr().unwrap()), Address::Unix(String::new()));
    }

    #[test]
    fn an_abstract_name_round_trips_through_socket2() {
        let a = Address::of_path(Path::new("\0round-trip"));
        let sa = a.to_sockaddr().unwrap();
        assert_eq!(sa.as_abstract_namespace(), Some(&b"round-trip"[..]));
        assert!(is_abstract(Path::new("\0x")));
        assert!(!is_abstract(Path::new("/x")));
    }

    #[test]
    fn a_stale_socket_file_is_removed_and_other_files_kept() {
        let dir = std::env::temp_dir().join(format!("ferroloop-addr-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let sock = dir.join("s.sock");
        let file = dir.join("f.txt");
        let _ = std::fs::remove_file(&sock);
        drop(std::os::unix::net::UnixListener::bind(&sock).unwrap());
        std::fs::write(&file, b"keep").unwrap();
        remove_stale_socket(&sock);
        remove_stale_socket(&file);
        assert!(!sock.exists());
        assert!(file.exists());
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
