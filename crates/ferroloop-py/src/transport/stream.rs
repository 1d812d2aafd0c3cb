//! Python protocols on the engine's stream transport.
//!
//! [`StreamCore`] is the Rust core of `ferroloop._transports.StreamTransport`
//! (a Python subclass of `asyncio.Transport`, whose methods forward to the
//! core's through [`core_method`] descriptors). [`PyProtocolAdapter`] implements the engine's
//! `Protocol` trait for a Python `Protocol`/`BufferedProtocol` object and
//! reproduces asyncio's error handling for each callback.

use std::cell::RefCell;
use std::rc::Rc;

use ferroloop::{Error, EventLoop, PauseHook, Protocol, ProtocolRef, Transport};
use pyo3::buffer::PyBuffer;
use pyo3::exceptions::{PyOSError, PyRuntimeError, PyTypeError};
use pyo3::intern;
use pyo3::prelude::*;
use pyo3::types::{PyByteArray, PyBytes, PyMemoryView, PyString};
use pyo3::{PyTraverseError, PyVisit};

use crate::errors::{external, io_to_pyerr, to_pyerr};
use crate::event_loop::LoopCore;
use crate::transport::callback::{call_method_in_context, clear_cells, if_sole_owner, is_exit, report_callback_error, report_to_loop, visit_cells};
use crate::sys::{BufferSlot, GilBound, HeldContext, LentBuffer, WritableBuffer};
use crate::tls::TlsContext;

/// The engine's handshake callback for a Python TLS transport: calls
/// `transport._tls_done(None)`, or `transport._tls_done(exc)`.
fn tls_done_callback(transport: Py<PyAny>) -> impl FnOnce(ferroloop::Result<Transport>) + 'static {
    move |r| {
        Python::attach(|py| {
            let exc: Py<PyAny> = match r {
                Ok(_) => py.None(),
                Err(e) => to_pyerr(e).into_value(py).into_any(),
            };
            if let Err(e) = transport.call_method1(py, intern!(py, "_tls_done"), (exc,)) {
                e.write_unraisable(py, Some(transport.bind(py)));
            }
        })
    }
}

/// Python objects shared by a transport's core and its protocol adapters.
struct Shared {
    lp: EventLoop,
    /// The Python loop.
    loop_obj: RefCell<Option<Py<PyAny>>>,
    /// The Python transport object (released after `connection_lost`).
    transport: RefCell<Option<Py<PyAny>>>,
    /// The current Python protocol.
    protocol: RefCell<Option<Py<PyAny>>>,
    /// The contextvars Context every protocol callback runs in.
    context: RefCell<Option<Py<PyAny>>>,
    engine: RefCell<Option<Transport>>,
    /// Set while `sendfile` owns the socket: `write()` is refused.
    write_blocked: std::cell::Cell<bool>,
    /// A read pipe: asyncio's read pipe transport calls `data_received` and
    /// `eof_received` without a guard, so an exception there is reported as
    /// a callback's and the pipe stays open (a socket transport closes).
    read_pipe: std::cell::Cell<bool>,
}

impl Shared {
    fn cells(&self) -> [&RefCell<Option<Py<PyAny>>>; 4] {
        [&self.loop_obj, &self.transport, &self.protocol, &self.context]
    }

    fn get(cell: &RefCell<Option<Py<PyAny>>>, py: Python<'_>) -> Option<Py<PyAny>> {
        cell.borrow().as_ref().map(|o| o.clone_ref(py))
    }

    /// `loop.call_exception_handler({...})` with transport and protocol.
    fn report(&self, py: Python<'_>, message: &str, exc: Option<&PyErr>, protocol: Option<&Py<PyAny>>) {
        let (lp, t) = (Self::get(&self.loop_obj, py), Self::get(&self.transport, py));
        report_to_loop(py, lp, message, exc, t, protocol.map(|p| p.clone_ref(py)));
    }

    /// asyncio's `_fatal_error`: report non-OSErrors, then close at once with
    /// the error. `SystemExit`/`KeyboardInterrupt` end the loop's run instead.
    fn fatal(&self, py: Python<'_>, exc: PyErr, message: &str, protocol: &Py<PyAny>) {
        if is_exit(py, &exc) {
            self.lp.interrupt(external(exc));
            return;
        }
        if !exc.is_instance_of::<PyOSError>(py) {
            self.report(py, message, Some(&exc), Some(protocol));
        }
        let engine = self.engine.borrow().clone();
        if let Some(t) = engine {
            t.abort_with_error(external(exc));
        }
    }

    /// An exception from a callback asyncio runs through a `Handle`.
    fn callback_error(&self, py: Python<'_>, exc: PyErr, what: &str, protocol: &Py<PyAny>) {
        if is_exit(py, &exc) {
            self.lp.interrupt(external(exc));
            return;
        }
        self.report(py, &format!("Exception in callback {what}"), Some(&exc), Some(protocol));
    }

    /// An exception from `protocol.name(*args)`, which asyncio calls
    /// through a `Handle` of its own: reported as that handle's, with it.
    fn method_error<'py>(&self, py: Python<'py>, exc: PyErr, protocol: &Py<PyAny>, name: &Bound<'py, PyString>, args: &[Bound<'py, PyAny>]) {
        if is_exit(py, &exc) {
            self.lp.interrupt(external(exc));
            return;
        }
        let (Some(lp), Ok(callback)) = (Self::get(&self.loop_obj, py), protocol.bind(py).getattr(name)) else {
            return self.report(py, &format!("Exception in callback {name}()"), Some(&exc), Some(protocol));
        };
        report_callback_error(py, &lp, callback, args, &exc, Self::get(&self.context, py));
    }

    /// Call `proto.name(*args)` inside the transport's context.
    fn call_in_context<'py>(
        &self,
        py: Python<'py>,
        proto: &Py<PyAny>,
        name: &Bound<'py, PyString>,
        args: &[Bound<'py, PyAny>],
    ) -> PyResult<Bound<'py, PyAny>> {
        let ctx = self.context.borrow();
        call_method_in_context(py, ctx.as_ref(), proto.bind(py), name, args)
    }
}


impl PauseHook for Shared {
    /// asyncio's `_maybe_pause_protocol`: the current protocol's
    /// `pause_writing()`, at once, in the caller's context (it runs inside
    /// `write()`); an exception goes to the loop's exception handler.
    fn pause_writing(&self) {
        Python::attach(|py| {
            let Some(proto) = Self::get(&self.protocol, py) else { return };
            if let Err(e) = proto.bind(py).call_method0(intern!(py, "pause_writing")) {
                if is_exit(py, &e) {
                    return self.lp.interrupt(external(e));
                }
                self.report(py, "protocol.pause_writing() failed", Some(&e), Some(&proto));
            }
        })
    }
}

/// Drives one Python protocol object for the engine.
pub(crate) struct PyProtocolAdapter {
    shared: Rc<Shared>,
    proto: Py<PyAny>,
    buffered: bool,
    buf: Option<WritableBuffer>,
    /// The context a buffered read entered in `get_buffer`, exited after
    /// `buffer_updated` or `buffer_unused` (asyncio runs the pair in one
    /// handle: one entry of the context).
    held: HeldContext,
}

impl PyProtocolAdapter {
    fn new(py: Python<'_>, shared: Rc<Shared>, proto: Py<PyAny>) -> PyResult<Self> {
        let asyncio = py.import(intern!(py, "asyncio"))?;
        let buffered = proto.bind(py).is_instance(&asyncio.getattr(intern!(py, "BufferedProtocol"))?)?;
        Ok(PyProtocolAdapter { shared, proto, buffered, buf: None, held: HeldContext::default() })
    }

    /// `proto.name(*args)` in the transport's context; the method is looked
    /// up at each call as asyncio does (code, CPython's tests among it,
    /// replaces protocol methods on the fly).
    fn call<'py>(&self, py: Python<'py>, name: &Bound<'py, PyString>, args: &[Bound<'py, PyAny>]) -> PyResult<Bound<'py, PyAny>> {
        self.shared.call_in_context(py, &self.proto, name, args)
    }
}

impl Protocol for PyProtocolAdapter {
    fn connection_made(&mut self, transport: Transport) {
        *self.shared.engine.borrow_mut() = Some(transport);
        Python::attach(|py| {
            let tr = Shared::get(&self.shared.transport, py);
            let tr = tr.map(|t| t.into_bound(py)).unwrap_or_else(|| py.None().into_bound(py));
            let r = self.call(py, intern!(py, "connection_made"), &[tr.clone()]);
            if let Err(e) = r {
                self.shared.method_error(py, e, &self.proto, intern!(py, "connection_made"), &[tr]);
            }
        })
    }

    fn data_received(&mut self, data: &[u8]) {
        Python::attach(|py| {
            let bytes = PyBytes::new(py, data);
            let r = self.call(py, intern!(py, "data_received"), &[bytes.into_any()]);
            if let Err(e) = r {
                if self.shared.read_pipe.get() {
                    self.shared.callback_error(py, e, "_UnixReadPipeTransport._read_ready()", &self.proto);
                } else {
                    self.shared.fatal(py, e, "Fatal error: protocol.data_received() call failed.", &self.proto);
                }
            }
        })
    }

    fn eof_received(&mut self) -> bool {
        Python::attach(|py| {
            let r = self.call(py, intern!(py, "eof_received"), &[]).and_then(|v| v.is_truthy());
            match r {
                Ok(keep) => keep,
                Err(e) if self.shared.read_pipe.get() => {
                    // A read pipe closes after EOF whatever eof_received does.
                    let what = format!("{}.eof_received()", self.proto.bind(py).get_type().name().map(|n| n.to_string()).unwrap_or_default());
                    self.shared.callback_error(py, e, &what, &self.proto);
                    false
                }
                Err(e) => {
                    self.shared.fatal(py, e, "Fatal error: protocol.eof_received() call failed.", &self.proto);
                    true
                }
            }
        })
    }

    fn connection_lost(&mut self, exc: Option<Error>) {
        Python::attach(|py| {
            let exc_obj: Py<PyAny> = match exc {
                None => py.None(),
                Some(e) => to_pyerr(e).into_value(py).into_any(),
            };
            let exc_obj = exc_obj.into_bound(py);
            let r = self.call(py, intern!(py, "connection_lost"), &[exc_obj.clone()]);
            if let Err(e) = r {
                self.shared.method_error(py, e, &self.proto, intern!(py, "connection_lost"), &[exc_obj]);
            }
            // As asyncio: after the protocol heard, close the socket and
            // detach from the server (the Python transport's `_finish`).
            self.shared.protocol.borrow_mut().take();
            let tr = self.shared.transport.borrow_mut().take();
            if let Some(tr) = tr {
                if let Err(e) = tr.call_method0(py, intern!(py, "_finish")) {
                    e.write_unraisable(py, Some(tr.bind(py)));
                }
            }
            self.shared.engine.borrow_mut().take();
            self.shared.context.borrow_mut().take();
        })
    }

    fn pause_writing(&mut self) {
        Python::attach(|py| {
            let r = self.call(py, intern!(py, "pause_writing"), &[]);
            if let Err(e) = r {
                if is_exit(py, &e) {
                    return self.shared.lp.interrupt(external(e));
                }
                self.shared.report(py, "protocol.pause_writing() failed", Some(&e), Some(&self.proto));
            }
        })
    }

    fn resume_writing(&mut self) {
        Python::attach(|py| {
            let r = self.call(py, intern!(py, "resume_writing"), &[]);
            if let Err(e) = r {
                if is_exit(py, &e) {
                    return self.shared.lp.interrupt(external(e));
                }
                self.shared.report(py, "protocol.resume_writing() failed", Some(&e), Some(&self.proto));
            }
        })
    }

    fn get_buffer(&mut self, _size_hint: usize) -> Option<&mut [u8]> {
        if !self.buffered {
            return None;
        }
        // asyncio: a failing get_buffer() or an empty buffer is "get_buffer()
        // call failed"; a buffer recv_into() cannot fill is a read error.
        let wb = self.buf.get_or_insert_with(WritableBuffer::new);
        let held = &mut self.held;
        let got: Result<(), (PyErr, &'static str)> = Python::attach(|py| {
            const CALL_FAILED: &str = "Fatal error: protocol.get_buffer() call failed.";
            wb.release_in(py);
            // The context stays entered until the read's buffer_updated or
            // buffer_unused (when there is one: a cleared transport has none).
            let entered = match self.shared.context.borrow().as_ref() {
                Some(ctx) => held.enter(ctx.bind(py).clone()),
                None => Ok(()),
            };
            // asyncio passes -1: "any size".
            let obj = entered
                .and_then(|()| self.proto.bind(py).call_method1(intern!(py, "get_buffer"), (-1i64,)))
                .map_err(|e| (e, CALL_FAILED))?;
            match obj.len() {
                Err(e) => return Err((e, CALL_FAILED)),
                Ok(0) => return Err((PyRuntimeError::new_err("get_buffer() returned an empty buffer"), CALL_FAILED)),
                Ok(_) => {}
            }
            let unusable = || {
                let tname = obj.get_type().name().map(|n| n.to_string()).unwrap_or_default();
                PyTypeError::new_err(format!(
                    "recv_into() argument 'buffer' must be read-write bytes-like object, not {tname}"
                ))
            };
            if wb.export(&obj) {
                Ok(())
            } else {
                Err((unusable(), "Fatal read error on socket transport"))
            }
        });
        match got {
            Ok(()) => self.buf.as_mut().map(|b| b.as_mut_slice()),
            Err((e, message)) => {
                // The transport is closed by `fatal`; the empty slice tells the
                // engine to stop reading quietly.
                Python::attach(|py| {
                    self.held.exit(py);
                    self.shared.fatal(py, e, message, &self.proto)
                });
                Some(&mut [])
            }
        }
    }

    fn buffer_unused(&mut self) {
        // As asyncio's `recv_into`, which lets go of the buffer when it
        // returns: the protocol may resize its bytearray from here on.
        Python::attach(|py| {
            if let Some(b) = self.buf.as_mut() {
                b.release_in(py);
            }
            self.held.exit(py);
        })
    }

    fn buffer_updated(&mut self, nbytes: usize) {
        Python::attach(|py| {
            if let Some(b) = self.buf.as_mut() {
                b.release_in(py);
            }
            // In the context get_buffer entered (else, as any callback, in
            // the transport's own).
            let r = if self.held.is_held() {
                self.proto.bind(py).call_method1(intern!(py, "buffer_updated"), (nbytes,))
            } else {
                nbytes
                    .into_pyobject(py)
                    .map_err(PyErr::from)
                    .and_then(|n| self.call(py, intern!(py, "buffer_updated"), &[n.into_any()]))
            };
            self.held.exit(py);
            if let Err(e) = r {
                self.shared.fatal(py, e, "Fatal error: protocol.buffer_updated() call failed.", &self.proto);
            }
        })
    }
}

/// The Rust core of a Python stream transport.
#[pyclass(module = "ferroloop._ferroloop")]
pub struct StreamCore {
    inner: GilBound<(Transport, Rc<Shared>)>,
}

impl StreamCore {
    /// The core of a Python transport on the engine transport that `make`
    /// builds around the protocol adapter (stream sockets, pipes).
    pub(crate) fn build(
        py: Python<'_>,
        lp: &EventLoop,
        loop_obj: Py<PyAny>,
        transport: Py<PyAny>,
        protocol: Py<PyAny>,
        waiter: Option<Py<PyAny>>,
        context: Option<Py<PyAny>>,
        make: impl FnOnce(&EventLoop, ProtocolRef) -> ferroloop::Result<Transport>,
    ) -> PyResult<Self> {
        // The protocol's callbacks run in `context` (asyncio 3.15 passes the
        // transport one), else in a copy of the current one.
        let context = match context {
            Some(c) if !c.is_none(py) => c,
            _ => py.import(intern!(py, "contextvars"))?.call_method0(intern!(py, "copy_context"))?.unbind(),
        };
        let shared = Rc::new(Shared {
            lp: lp.clone(),
            loop_obj: RefCell::new(Some(loop_obj)),
            transport: RefCell::new(Some(transport)),
            protocol: RefCell::new(Some(protocol.clone_ref(py))),
            context: RefCell::new(Some(context)),
            engine: RefCell::new(None),
            write_blocked: std::cell::Cell::new(false),
            read_pipe: std::cell::Cell::new(false),
        });
        let adapter = PyProtocolAdapter::new(py, shared.clone(), protocol)?;
        let proto: ProtocolRef = Rc::new(RefCell::new(adapter));
        let t = make(lp, proto).map_err(to_pyerr)?;
        // pause_writing() from inside write(), as asyncio calls it.
        t.set_pause_hook(Some(shared.clone()));
        *shared.engine.borrow_mut() = Some(t.clone());
        // As asyncio: the waiter completes from the ready queue right after
        // connection_made (both are queued now, in this order).
        if let Some(w) = waiter {
            let set = py.import(intern!(py, "asyncio.futures"))?.getattr(intern!(py, "_set_result_unless_cancelled"))?;
            let lp_obj = Shared::get(&shared.loop_obj, py).expect("set above");
            lp_obj.call_method1(py, intern!(py, "call_soon"), (set, w, py.None()))?;
        }
        Ok(StreamCore { inner: GilBound::new((t, shared)) })
    }

    /// Mark the core as a read pipe's (see `Shared::read_pipe`).
    pub(crate) fn set_read_pipe(&self) {
        self.inner.get().1.read_pipe.set(true);
    }

    fn check_writable(&self) -> PyResult<()> {
        if self.inner.get().1.write_blocked.get() {
            return Err(PyRuntimeError::new_err("unable to write; sendfile is in progress"));
        }
        Ok(())
    }

    fn t(&self) -> PyResult<&Transport> {
        Ok(&self.inner.get().0)
    }

    fn shared(&self) -> PyResult<&Rc<Shared>> {
        Ok(&self.inner.get().1)
    }
}

/// Bytes of a `bytes`/`bytearray`/`memoryview`, or asyncio's `TypeError`.
fn with_data<R>(data: &Bound<'_, PyAny>, f: impl FnOnce(&[u8]) -> R) -> PyResult<R> {
    if let Ok(b) = data.cast::<PyBytes>() {
        return Ok(f(b.as_bytes()));
    }
    if data.is_instance_of::<PyByteArray>() || data.is_instance_of::<PyMemoryView>() {
        // Any buffer format is accepted, as asyncio does: byte views are read
        // directly, others through `bytes(...)`.
        if let Ok(buf) = PyBuffer::<u8>::get(data) {
            let v = buf.to_vec(data.py())?;
            return Ok(f(&v));
        }
        let b = data.py().get_type::<PyBytes>().call1((data,))?;
        return Ok(f(b.cast::<PyBytes>()?.as_bytes()));
    }
    let what = if bytes_types_named(data.py()) { "a bytes, bytearray, or memoryview object" } else { "a bytes-like object" };
    Err(PyTypeError::new_err(format!(
        "data argument must be {what}, not {:?}",
        data.get_type().name()?.to_string()
    )
    .replace('"', "'")))
}

/// Whether this Python's asyncio names the three accepted types in a stream
/// transport's write() TypeError (reworded in 3.13.9 and 3.14.1, gh-138703).
fn bytes_types_named(py: Python<'_>) -> bool {
    let v = py.version_info();
    v >= (3, 14, 1) || (v >= (3, 13, 9) && v < (3, 14))
}

#[pymethods]
impl StreamCore {
    /// Make the transport on `fd` itself, borrowed (one fd per connection);
    /// the Python transport owns the descriptor (through its socket object,
    /// or bare) and closes it in `_finish()` after `connection_lost` (the
    /// engine leaves the poll first).
    ///
    /// With `tls` (a `TLSContext`) the transport is the engine's TLS
    /// transport: `protocol.connection_made` follows the handshake, then
    /// `transport._tls_done(None)`; a failed handshake calls
    /// `transport._tls_done(exc)` instead, once the engine left the poll
    /// (the protocol hears nothing). The protocol's callbacks run in
    /// `context` (a `contextvars.Context`; default: a copy of the current).
    #[new]
    #[pyo3(signature = (core, loop_obj, transport, fd, protocol, waiter=None, tls=None, server_hostname=None,
                        ssl_handshake_timeout=None, ssl_shutdown_timeout=None, context=None))]
    #[allow(clippy::too_many_arguments)]
    fn new(
        py: Python<'_>,
        core: PyRef<'_, LoopCore>,
        loop_obj: Py<PyAny>,
        transport: Py<PyAny>,
        fd: i32,
        protocol: Py<PyAny>,
        waiter: Option<Py<PyAny>>,
        tls: Option<PyRef<'_, TlsContext>>,
        server_hostname: Option<String>,
        ssl_handshake_timeout: Option<f64>,
        ssl_shutdown_timeout: Option<f64>,
        context: Option<Py<PyAny>>,
    ) -> PyResult<Self> {
        let lp = core.engine()?.clone();
        let Some(tls) = tls else {
            let stream = crate::sys::borrow_stream_socket(fd).map_err(|e| io_to_pyerr(&e))?;
            return Self::build(py, &lp, loop_obj, transport, protocol, waiter, context, move |lp, proto| {
                lp.create_transport(stream, proto)
            });
        };
        let opts = tls.options(server_hostname, ssl_handshake_timeout, ssl_shutdown_timeout)?;
        let stream = crate::sys::borrow_stream_socket(fd).map_err(|e| io_to_pyerr(&e))?;
        let done = tls_done_callback(transport.clone_ref(py));
        Self::build(py, &lp, loop_obj, transport, protocol, None, context, move |lp, proto| {
            lp.create_tls_transport(stream, proto, opts, done)
        })
    }

    /// asyncio's `start_tls` on the fast path: upgrade this transport to TLS.
    /// Returns the core of `transport` (the new Python transport), whose
    /// protocol is `protocol`; `transport._tls_done(exc or None)` follows the
    /// handshake. This transport must no longer be used.
    #[pyo3(signature = (transport, protocol, tls, server_hostname=None, ssl_handshake_timeout=None,
                        ssl_shutdown_timeout=None))]
    fn start_tls(
        &self,
        py: Python<'_>,
        transport: Py<PyAny>,
        protocol: Py<PyAny>,
        tls: PyRef<'_, TlsContext>,
        server_hostname: Option<String>,
        ssl_handshake_timeout: Option<f64>,
        ssl_shutdown_timeout: Option<f64>,
    ) -> PyResult<StreamCore> {
        let opts = tls.options(server_hostname, ssl_handshake_timeout, ssl_shutdown_timeout)?;
        let (raw, old) = self.inner.get();
        let loop_obj = Shared::get(&old.loop_obj, py).ok_or_else(|| PyRuntimeError::new_err("transport is closed"))?;
        // The TLS layer writes into the plain transport now: the old Python
        // transport's protocol is told nothing more (nor held by the hook).
        raw.set_pause_hook(None);
        let done = tls_done_callback(transport.clone_ref(py));
        let shared = Rc::new(Shared {
            lp: old.lp.clone(),
            loop_obj: RefCell::new(Some(loop_obj)),
            transport: RefCell::new(Some(transport)),
            protocol: RefCell::new(Some(protocol.clone_ref(py))),
            context: RefCell::new(Shared::get(&old.context, py)),
            engine: RefCell::new(None),
            write_blocked: std::cell::Cell::new(false),
            read_pipe: std::cell::Cell::new(false),
        });
        let adapter = PyProtocolAdapter::new(py, shared.clone(), protocol)?;
        let t = old.lp.start_tls_transport(raw, opts, Some(Rc::new(RefCell::new(adapter))), done).map_err(to_pyerr)?;
        *shared.engine.borrow_mut() = Some(t.clone());
        // The old Python transport no longer hears of the connection.
        old.protocol.borrow_mut().take();
        Ok(StreamCore { inner: GilBound::new((t, shared)) })
    }

    /// What the TLS handshake negotiated: `(version, cipher, secret_bits,
    /// alpn, peer_certificates_der, server_name, resumed)`, or `None` without TLS.
    #[allow(clippy::type_complexity)]
    fn tls_info(
        &self,
        py: Python<'_>,
    ) -> PyResult<
        Option<(Option<String>, Option<String>, Option<u32>, Option<String>, Vec<Py<PyBytes>>, Option<String>, bool)>,
    > {
        let Some(i) = self.t()?.tls_info() else { return Ok(None) };
        Ok(Some((
            i.protocol_version,
            i.cipher_suite,
            i.cipher_bits,
            i.alpn_protocol.map(|p| String::from_utf8_lossy(&p).into_owned()),
            i.peer_certificates.iter().map(|c| PyBytes::new(py, c).unbind()).collect(),
            i.server_name,
            i.resumed,
        )))
    }

    pub(crate) fn write(&self, data: &Bound<'_, PyAny>) -> PyResult<()> {
        self.check_writable()?;
        let t = self.t()?;
        if let Ok(b) = data.cast::<PyBytes>() {
            return t.write(b.as_bytes()).map_err(to_pyerr);
        }
        // A contiguous bytearray/memoryview is sent from its own memory;
        // only what cannot be sent at once is copied.
        if data.is_instance_of::<PyByteArray>() || data.is_instance_of::<PyMemoryView>() {
            let mut slot = BufferSlot::new();
            let lent = LentBuffer::export(data, &mut slot);
            if let Some(lent) = lent {
                return t.write_lent(lent).map_err(to_pyerr);
            }
        }
        with_data(data, |b| t.write(b))?.map_err(to_pyerr)
    }

    pub(crate) fn writelines(&self, py: Python<'_>, list_of_data: &Bound<'_, PyAny>) -> PyResult<()> {
        self.check_writable()?;
        let mut owned: Vec<Vec<u8>> = Vec::new();
        for item in list_of_data.try_iter()? {
            let item = item?;
            owned.push(with_data(&item, |b| b.to_vec())?);
        }
        let _ = py;
        self.t()?.writelines(owned.iter().map(|v| v.as_slice())).map_err(to_pyerr)
    }

    fn write_eof(&self) -> PyResult<()> {
        self.t()?.write_eof().map_err(to_pyerr)
    }

    fn can_write_eof(&self) -> PyResult<bool> {
        Ok(self.t()?.can_write_eof())
    }

    fn close(&self) -> PyResult<()> {
        self.t()?.close();
        Ok(())
    }

    fn abort(&self) -> PyResult<()> {
        self.t()?.abort();
        Ok(())
    }

    pub(crate) fn is_closing(&self) -> PyResult<bool> {
        Ok(self.t()?.is_closing())
    }

    pub(crate) fn pause_reading(&self) -> PyResult<()> {
        self.t()?.pause_reading();
        Ok(())
    }

    pub(crate) fn resume_reading(&self) -> PyResult<()> {
        self.t()?.resume_reading();
        Ok(())
    }

    pub(crate) fn is_reading(&self) -> PyResult<bool> {
        Ok(self.t()?.is_reading())
    }

    /// Refuse (`True`) or allow `write()`: sendfile owns the socket meanwhile.
    fn set_write_blocked(&self, blocked: bool) -> PyResult<()> {
        self.shared()?.write_blocked.set(blocked);
        Ok(())
    }

    /// Call `callback(None)` once the write buffer is empty, or
    /// `callback(ConnectionError)` if the connection is lost first.
    fn wait_drained(&self, callback: Py<PyAny>) -> PyResult<()> {
        self.t()?.on_drained(move |r| {
            Python::attach(|py| {
                let arg: Py<PyAny> = match r {
                    Ok(()) => py.None(),
                    Err(e) => pyo3::exceptions::PyConnectionError::new_err(e.to_string()).into_value(py).into_any(),
                };
                if let Err(e) = callback.call1(py, (arg,)) {
                    e.write_unraisable(py, None);
                }
            })
        });
        Ok(())
    }

    /// Close the socket now, without `connection_lost` (finalizer).
    fn close_socket(&self) -> PyResult<()> {
        self.t()?.close_socket();
        Ok(())
    }

    /// asyncio's `_force_close(exc)`: close at once; the protocol receives
    /// `connection_lost(exc)` (used by asyncio's own SSLProtocol).
    fn force_close(&self, py: Python<'_>, exc: Option<Py<PyAny>>) -> PyResult<()> {
        let t = self.t()?;
        match exc {
            Some(e) if !e.is_none(py) => t.abort_with_error(external(PyErr::from_value(e.into_bound(py)))),
            _ => t.abort(),
        }
        Ok(())
    }

    pub(crate) fn get_write_buffer_size(&self) -> PyResult<usize> {
        Ok(self.t()?.get_write_buffer_size())
    }

    fn get_write_buffer_limits(&self) -> PyResult<(usize, usize)> {
        Ok(self.t()?.get_write_buffer_limits())
    }

    #[pyo3(signature = (high=None, low=None))]
    fn set_write_buffer_limits(&self, high: Option<i64>, low: Option<i64>) -> PyResult<()> {
        self.t()?.set_write_buffer_limits_signed(high, low).map_err(to_pyerr)
    }

    /// Whether `pause_writing` was called without `resume_writing` yet.
    fn is_writing_paused(&self) -> PyResult<bool> {
        Ok(self.t()?.is_writing_paused())
    }

    fn set_protocol(&self, py: Python<'_>, protocol: Py<PyAny>) -> PyResult<()> {
        let shared = self.shared()?;
        *shared.protocol.borrow_mut() = Some(protocol.clone_ref(py));
        let adapter = PyProtocolAdapter::new(py, shared.clone(), protocol)?;
        self.t()?.set_protocol(Rc::new(RefCell::new(adapter)));
        Ok(())
    }

    fn get_protocol(&self, py: Python<'_>) -> PyResult<Option<Py<PyAny>>> {
        Ok(Shared::get(&self.shared()?.protocol, py))
    }

    /// The engine's (duplicated) descriptor, or -1 once closed.
    fn fileno(&self) -> PyResult<i32> {
        Ok(self.t()?.socket_fd().unwrap_or(-1))
    }

    /// Only once the connection is lost (see `callback::if_sole_owner`).
    fn __traverse__(&self, visit: PyVisit<'_>) -> Result<(), PyTraverseError> {
        if_sole_owner(&self.inner.get().1, |s| visit_cells(&s.cells(), &visit)).unwrap_or(Ok(()))
    }

    fn __clear__(&mut self) {
        if_sole_owner(&self.inner.get().1, |s| clear_cells(&s.cells()));
    }
}

/// A method descriptor of the Python transport class `cls` named `name`,
/// calling the same-named method of the instance's `_core` (a `StreamCore`
/// or `DatagramCore`; `_force_close` calls `force_close`): the class holds
/// one descriptor per method, the transports nothing.
#[pyfunction]
pub fn core_method<'py>(cls: &Bound<'py, pyo3::types::PyType>, name: &str) -> PyResult<Bound<'py, PyAny>> {
    crate::sys::methods::core_method(cls, name)
}
