//! `ferroloop._ferroloop`: the Python binding of the ferroloop engine.
//!
//! A thin layer: `LoopCore` (the engine loop), `StreamCore` (the engine's
//! stream transport driving a Python protocol), errors as asyncio's
//! exceptions. The asyncio API itself is assembled in `python/ferroloop`.

use pyo3::prelude::*;

mod errors;
mod event_loop;
mod handle;
mod server;
mod sys;
mod tasks;
mod tls;
mod transport;

#[pymodule]
fn _ferroloop(m: &Bound<'_, PyModule>) -> PyResult<()> {
    m.add_class::<event_loop::LoopCore>()?;
    m.add_class::<event_loop::RemoteCore>()?;
    m.add_class::<event_loop::TimerRef>()?;
    m.add_class::<handle::FastHandle>()?;
    m.add_class::<server::AcceptorCore>()?;
    m.add_class::<transport::stream::StreamCore>()?;
    m.add_class::<transport::udp::DatagramCore>()?;
    m.add_class::<tls::TlsContext>()?;
    m.add_function(wrap_pyfunction!(transport::pipe::pipe_core, m)?)?;
    m.add_function(wrap_pyfunction!(transport::stream::core_method, m)?)?;
    Ok(())
}
