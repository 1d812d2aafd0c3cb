//! Unix stream connections: [`EventLoop::create_unix_connection`]
//! (asyncio's function of the same name). The connection is an ordinary
//! stream [`Transport`](crate::Transport), with the same protocol contract
//! as TCP. Paths: a filesystem path, or an abstract-namespace name written
//! with its leading NUL byte (`"\0name"`, Linux).

use std::io;
use std::os::fd::OwnedFd;
use std::path::Path;

use socket2::{Domain, SockAddr, Socket, Type};

use crate::connect::Connection;
use crate::error::{Error, Result};
use crate::event_loop::EventLoop;
use crate::future::LoopFuture;
use crate::protocol::Protocol;
use crate::transport::StreamSocket;

impl EventLoop {
    /// Connect to the Unix socket `path` (asyncio's `create_unix_connection`)
    /// and run a protocol made by `factory` on the connection. The future
    /// completes after `connection_made`.
    ///
    /// Errors keep their errno: `ENOENT` (no such path), `ECONNREFUSED` (a
    /// socket file nobody listens on), `EAGAIN` (the listener's backlog is
    /// full; Unix sockets do not wait in `connect`).
    pub fn create_unix_connection<P, F>(&self, factory: F, path: impl AsRef<Path>) -> LoopFuture<Connection<P>>
    where
        P: Protocol,
        F: FnOnce() -> P,
    {
        let path = path.as_ref();
        let r = (|| -> Result<std::os::unix::net::UnixStream> {
            self.check_closed()?;
            let addr = SockAddr::unix(path)?;
            let sock = Socket::new(Domain::UNIX, Type::STREAM.cloexec(), None)?;
            sock.set_nonblocking(true)?;
            match sock.connect(&addr) {
                Ok(()) => {}
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => return Err(Error::Io(e)),
            }
            Ok(OwnedFd::from(sock).into())
        })();
        match r {
            Ok(stream) => self.create_connection_from_socket(factory, StreamSocket::Unix(stream)),
            Err(e) => LoopFuture::ready(Err(e)),
        }
    }
}
