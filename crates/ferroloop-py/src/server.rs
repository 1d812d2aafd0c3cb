//! `AcceptorCore`: the engine's accept loop ([`ferroloop::Acceptor`]) for
//! the Python face's servers. The engine accepts; each connection goes to a
//! Python callable as `(fd, peername, sockname)`, the descriptor then owned
//! by Python (the server makes its transport on it); an out-of-resource
//! error goes to another callable, after the engine paused accepting (it
//! starts again by itself after asyncio's `ACCEPT_RETRY_DELAY`).

use std::os::fd::IntoRawFd;

use ferroloop::{Acceptor, Address};
use pyo3::prelude::*;

use crate::errors::io_to_pyerr;
use crate::event_loop::LoopCore;
use crate::sys::{borrow_listener, GilBound};
use crate::transport::udp::address_to_py;

/// An address as `socket.accept()` gives it (an unnamed Unix peer is `''`).
fn accepted_address(py: Python<'_>, a: Option<Address>) -> PyResult<Py<PyAny>> {
    match a {
        Some(Address::Unix(p)) if p.is_empty() => Ok(pyo3::types::PyString::new(py, "").into_any().unbind()),
        Some(a) => address_to_py(py, &a),
        None => Ok(py.None()),
    }
}

/// The accept loop on a Python server's listening socket (its descriptor
/// borrowed: the Python socket object keeps it, and closes it after
/// `close()` here).
#[pyclass(module = "ferroloop._ferroloop")]
pub struct AcceptorCore {
    acceptor: GilBound<Acceptor>,
}

#[pymethods]
impl AcceptorCore {
    /// Accept on `fd` (a listening stream socket, which must stay open until
    /// `close()` returned): `on_accept(fd, peername, sockname)` per
    /// connection, `on_error(exc)` for an out-of-resource error. Nothing is
    /// accepted before `start()`.
    #[new]
    fn new(
        core: PyRef<'_, LoopCore>,
        fd: i32,
        backlog: usize,
        on_accept: Py<PyAny>,
        on_error: Py<PyAny>,
    ) -> PyResult<Self> {
        let lp = core.engine()?.clone();
        let listener = borrow_listener(fd).map_err(|e| io_to_pyerr(&e))?;
        let acceptor = Acceptor::new(&lp, listener, backlog, move |event| {
            Python::attach(|py| {
                let r = match event {
                    Ok(conn) => (|| {
                        let peer = accepted_address(py, conn.peer_address())?;
                        let local = accepted_address(py, conn.local_address())?;
                        let fd = conn.into_owned_fd().into_raw_fd();
                        on_accept.call1(py, (fd, peer, local)).map(drop)
                    })(),
                    Err(e) => on_error.call1(py, (io_to_pyerr(&e),)).map(drop),
                };
                if let Err(e) = r {
                    e.write_unraisable(py, Some(on_accept.bind(py)));
                }
            })
        })
        .map_err(crate::errors::to_pyerr)?;
        Ok(AcceptorCore { acceptor: GilBound::new(acceptor) })
    }

    /// Start accepting (connections already waiting are accepted next).
    fn start(&self) -> PyResult<()> {
        self.acceptor.get().start().map_err(crate::errors::to_pyerr)
    }

    /// Stop accepting (connections wait in the backlog).
    fn stop(&self) {
        self.acceptor.get().stop()
    }

    /// Stop accepting and let go of the descriptor (which stays open).
    fn close(&self) {
        self.acceptor.get().close()
    }

    /// Whether the descriptor is in the loop's poll.
    fn is_accepting(&self) -> bool {
        self.acceptor.get().is_accepting()
    }
}

impl Drop for AcceptorCore {
    fn drop(&mut self) {
        self.acceptor.get().close();
    }
}
