//! Python protocols on the engine's pipe transports.
//!
//! A pipe transport is the engine's stream transport in one of its pipe
//! kinds (`ferroloop::TransportKind`), so its Python core is a
//! [`StreamCore`]: the same protocol adapter, error handling and GC rules.
//! The Python classes `ferroloop._transports.ReadPipeTransport` and
//! `WritePipeTransport` bind the methods each direction has.

use pyo3::prelude::*;

use crate::errors::io_to_pyerr;
use crate::event_loop::LoopCore;
use crate::transport::stream::StreamCore;

/// The core of a pipe transport on a duplicate of `fd` (the Python
/// transport keeps the pipe object and closes it after `connection_lost`).
/// `write` picks the write side (asyncio's `connect_write_pipe`), else the
/// read side. The descriptor must be a pipe, FIFO, character device or
/// socket (`ValueError` otherwise); it is made non-blocking.
#[pyfunction]
#[allow(clippy::too_many_arguments)]
#[pyo3(signature = (core, loop_obj, transport, fd, protocol, waiter=None, *, write))]
pub fn pipe_core(
    py: Python<'_>,
    core: PyRef<'_, LoopCore>,
    loop_obj: Py<PyAny>,
    transport: Py<PyAny>,
    fd: i32,
    protocol: Py<PyAny>,
    waiter: Option<Py<PyAny>>,
    write: bool,
) -> PyResult<StreamCore> {
    let lp = core.engine()?.clone();
    let pipe = crate::sys::dup_fd(fd).map_err(|e| io_to_pyerr(&e))?;
    let core = StreamCore::build(py, &lp, loop_obj, transport, protocol, waiter, None, move |lp, proto| {
        if write {
            lp.create_write_pipe_transport(pipe, proto)
        } else {
            lp.create_read_pipe_transport(pipe, proto)
        }
    })?;
    if !write {
        core.set_read_pipe();
    }
    Ok(core)
}
