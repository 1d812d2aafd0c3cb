//! Unix stream servers: [`EventLoop::create_unix_server`] (asyncio's
//! function of the same name). As asyncio does, a server removes a stale
//! socket file at its path before binding (any other kind of file makes
//! the bind fail), and removes its own socket file again when it closes if
//! the file is still the one it created (Python 3.13's `cleanup_socket`).
//! An abstract-namespace name (leading NUL byte) has no file.

use std::os::fd::OwnedFd;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};

use socket2::{Domain, SockAddr, Socket, Type};

use crate::error::{Error, Result};
use crate::event_loop::EventLoop;
use crate::future::LoopFuture;
use crate::protocol::Protocol;
use crate::server::{Server, ServerOptions};
use crate::transport::addr::{is_abstract, remove_stale_socket};

/// `(device, inode)` of the file at `path`, to recognise our own socket file later.
fn file_id(path: &Path) -> Option<(u64, u64)> {
    std::fs::symlink_metadata(path).ok().map(|m| (m.dev(), m.ino()))
}

/// Bind and listen on a Unix stream socket at `path`.
fn bind_unix_listener(path: &Path, backlog: i32) -> Result<std::os::unix::net::UnixListener> {
    let addr = SockAddr::unix(path)?;
    remove_stale_socket(path);
    let sock = Socket::new(Domain::UNIX, Type::STREAM.cloexec(), None)?;
    if let Err(e) = sock.bind(&addr) {
        return Err(Error::Bind { address: format!("{path:?}"), source: e });
    }
    sock.set_nonblocking(true)?;
    sock.listen(backlog)?;
    Ok(OwnedFd::from(sock).into())
}

impl EventLoop {
    /// Listen on the Unix socket `path` (asyncio's `create_unix_server`);
    /// `factory` makes one protocol per accepted connection. `opts.backlog`
    /// and `opts.start_serving` apply; the address options do not.
    ///
    /// Errors: [`Error::Bind`] (with `EADDRINUSE` when a non-socket file or a
    /// live socket is in the way, `EACCES`...), [`Error::Io`] for the rest.
    pub fn create_unix_server<P, F>(&self, factory: F, path: impl AsRef<Path>, opts: ServerOptions) -> LoopFuture<Server>
    where
        P: Protocol,
        F: Fn() -> P + 'static,
    {
        let path = path.as_ref();
        let r = (|| -> Result<Server> {
            self.check_closed()?;
            let listener = bind_unix_listener(path, opts.backlog)?;
            let created = if is_abstract(path) { None } else { file_id(path) };
            let server = self.create_server_from_unix_listener(factory, listener, opts)?;
            if let Some(id) = created {
                let path: PathBuf = path.to_path_buf();
                server.on_close(Box::new(move || {
                    // Only our own file: another server may have replaced it.
                    if file_id(&path) == Some(id) {
                        let _ = std::fs::remove_file(&path);
                    }
                }));
            }
            Ok(server)
        })();
        LoopFuture::ready(r)
    }
}
