//! Python datagram protocols on the engine's datagram transport.
//!
//! [`DatagramCore`] is the Rust core of `ferroloop._transports.DatagramTransport`
//! (a Python subclass of `asyncio.DatagramTransport` whose methods forward
//! to the core's: see [`core_method`](crate::transport::stream::core_method)). [`PyDatagramAdapter`] implements the
//! engine's `DatagramProtocol` for a Python `DatagramProtocol` object, with
//! asyncio's (`_SelectorDatagramTransport`'s) error handling:
//!
//! - an exception raised by `datagram_received` or `error_received` is
//!   reported as a callback error (asyncio's `_read_ready` lets it escape to
//!   its `Handle`); the transport stays open;
//! - a send that fails at once inside `sendto` calls `error_received`
//!   synchronously, from `sendto`, as asyncio does (an exception it raises
//!   propagates to the caller of `sendto`);
//! - a bad address (`TypeError`...) is a fatal write error: reported, and the
//!   transport closes with it; `socket.gaierror` goes to `error_received`.

use std::cell::RefCell;
use std::net::{IpAddr, SocketAddr, SocketAddrV6};
use std::rc::Rc;

use ferroloop::{Address, DatagramProtocol, DatagramProtocolRef, DatagramSocket, DatagramTransport, Error, EventLoop};
use pyo3::buffer::PyBuffer;
use pyo3::exceptions::{PyOSError, PyTypeError, PyValueError};
use pyo3::intern;
use pyo3::prelude::*;
use pyo3::types::{PyByteArray, PyBytes, PyMemoryView, PyString, PyTuple};
use pyo3::{PyTraverseError, PyVisit};

use crate::errors::{external, io_to_pyerr, to_pyerr};
use crate::event_loop::LoopCore;
use crate::transport::callback::{call_in_context, clear_cells, if_sole_owner, is_exit, report_callback_error, report_to_loop, visit_cells};
use crate::sys::GilBound;

const AF_UNIX: i32 = libc::AF_UNIX;
const AF_INET6: i32 = libc::AF_INET6;

/// Python objects shared by a transport's core and its protocol adapter.
struct Shared {
    lp: EventLoop,
    loop_obj: RefCell<Option<Py<PyAny>>>,
    /// The Python transport object (released after `connection_lost`).
    transport: RefCell<Option<Py<PyAny>>>,
    /// The current Python protocol.
    protocol: RefCell<Option<Py<PyAny>>>,
    /// The contextvars Context every protocol callback runs in.
    context: RefCell<Option<Py<PyAny>>>,
    /// Future completed after `connection_made`.
    waiter: RefCell<Option<Py<PyAny>>>,
    /// asyncio's `_address`: the `remote_addr` given on creation (Python object).
    address: RefCell<Option<Py<PyAny>>>,
    /// The socket family (`AF_INET`, `AF_INET6`, `AF_UNIX`).
    family: i32,
    /// The last sender address handed to `datagram_received` and its Python
    /// object: an echo's `sendto(data, addr)` with that very object skips
    /// the conversion.
    last_addr: RefCell<Option<(Address, Py<PyAny>)>>,
}

impl Shared {
    fn cells(&self) -> [&RefCell<Option<Py<PyAny>>>; 6] {
        [&self.loop_obj, &self.transport, &self.protocol, &self.context, &self.waiter, &self.address]
    }

    fn traverse(&self, visit: &PyVisit<'_>) -> Result<(), PyTraverseError> {
        visit_cells(&self.cells(), visit)?;
        if let Ok(b) = self.last_addr.try_borrow() {
            if let Some((_, o)) = b.as_ref() {
                visit.call(o)?;
            }
        }
        Ok(())
    }

    fn clear(&self) {
        clear_cells(&self.cells());
        if let Ok(mut b) = self.last_addr.try_borrow_mut() {
            b.take();
        }
    }

    fn get(cell: &RefCell<Option<Py<PyAny>>>, py: Python<'_>) -> Option<Py<PyAny>> {
        cell.borrow().as_ref().map(|o| o.clone_ref(py))
    }

    /// `loop.call_exception_handler({...})` with transport and protocol.
    fn report(&self, py: Python<'_>, message: &str, exc: Option<&PyErr>) {
        let (lp, t, p) = (Self::get(&self.loop_obj, py), Self::get(&self.transport, py), Self::get(&self.protocol, py));
        report_to_loop(py, lp, message, exc, t, p);
    }

    /// An exception from a protocol callback asyncio runs through a `Handle`:
    /// reported; `SystemExit`/`KeyboardInterrupt` end the loop's run.
    fn callback_error(&self, py: Python<'_>, exc: PyErr, what: &str) {
        if is_exit(py, &exc) {
            self.lp.interrupt(external(exc));
            return;
        }
        self.report(py, &format!("Exception in callback {what}"), Some(&exc));
    }

    /// An exception from `protocol.name(*args)`: reported as asyncio's
    /// `Handle` reports it, with a handle of that call.
    fn method_error<'py>(&self, py: Python<'py>, exc: PyErr, name: &Bound<'py, PyString>, args: &[Bound<'py, PyAny>]) {
        if is_exit(py, &exc) {
            self.lp.interrupt(external(exc));
            return;
        }
        let callback = Self::get(&self.protocol, py).and_then(|p| p.bind(py).getattr(name).ok());
        let (Some(lp), Some(callback)) = (Self::get(&self.loop_obj, py), callback) else {
            return self.report(py, &format!("Exception in callback {name}()"), Some(&exc));
        };
        report_callback_error(py, &lp, callback, args, &exc, Self::get(&self.context, py));
    }

    /// Call `protocol.<name>(*args)` inside the transport's context.
    fn call_protocol<'py>(
        &self,
        py: Python<'py>,
        name: &Bound<'py, PyString>,
        args: &[Bound<'py, PyAny>],
    ) -> PyResult<Bound<'py, PyAny>> {
        let Some(proto) = Self::get(&self.protocol, py) else { return Ok(py.None().into_bound(py)) };
        let method = proto.bind(py).getattr(name)?;
        call_in_context(py, Self::get(&self.context, py), &method, args)
    }
}


/// An engine address as Python's `recvfrom` returns it: `(host, port)`,
/// `(host, port, flowinfo, scope_id)`, a path `str`, an abstract name as
/// `bytes` (leading NUL), `None` for an unnamed Unix socket.
pub(crate) fn address_to_py(py: Python<'_>, a: &Address) -> PyResult<Py<PyAny>> {
    Ok(match a {
        Address::Inet(SocketAddr::V4(v4)) => {
            let mut buf = [0u8; 15];
            (PyString::new(py, ipv4_text(*v4.ip(), &mut buf)), v4.port()).into_pyobject(py)?.into_any().unbind()
        }
        Address::Inet(SocketAddr::V6(v6)) => {
            (v6.ip().to_string(), v6.port(), v6.flowinfo(), v6.scope_id()).into_pyobject(py)?.into_any().unbind()
        }
        Address::Unix(p) if p.is_empty() => py.None(),
        Address::Unix(p) if p.starts_with('\0') => PyBytes::new(py, p.as_bytes()).into_any().unbind(),
        Address::Unix(p) => PyString::new(py, p).into_any().unbind(),
    })
}

/// `ip` in dotted-quad form, written into `buf`: what `Ipv4Addr`'s
/// `Display` writes, without the formatting machinery (an accepted
/// connection's peer and own address are converted for every connection).
fn ipv4_text(ip: std::net::Ipv4Addr, buf: &mut [u8; 15]) -> &str {
    let mut n = 0;
    for (i, octet) in ip.octets().into_iter().enumerate() {
        if i > 0 {
            buf[n] = b'.';
            n += 1;
        }
        if octet >= 100 {
            buf[n] = b'0' + octet / 100;
            n += 1;
        }
        if octet >= 10 {
            buf[n] = b'0' + octet / 10 % 10;
            n += 1;
        }
        buf[n] = b'0' + octet % 10;
        n += 1;
    }
    // Only ASCII digits and dots were written.
    std::str::from_utf8(&buf[..n]).unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use super::ipv4_text;
    use std::net::Ipv4Addr;

    #[test]
    fn ipv4_text_is_what_display_writes() {
        let mut buf = [0u8; 15];
        for ip in [[0, 0, 0, 0], [127, 0, 0, 1], [255, 255, 255, 255], [10, 9, 100, 99], [1, 20, 200, 255], [192, 168, 0, 10]] {
            let ip = Ipv4Addr::from(ip);
            assert_eq!(ipv4_text(ip, &mut buf), ip.to_string());
        }
        for x in 0..=255u8 {
            let ip = Ipv4Addr::new(x, 255 - x, x / 3, x.wrapping_mul(7));
            assert_eq!(ipv4_text(ip, &mut buf), ip.to_string());
        }
    }
}

/// Drives one Python datagram protocol object for the engine.
struct PyDatagramAdapter {
    shared: Rc<Shared>,
}

impl DatagramProtocol for PyDatagramAdapter {
    fn connection_made(&mut self, _transport: DatagramTransport) {
        Python::attach(|py| {
            let tr = Shared::get(&self.shared.transport, py).map(|t| t.into_bound(py)).unwrap_or_else(|| py.None().into_bound(py));
            if let Err(e) = self.shared.call_protocol(py, intern!(py, "connection_made"), &[tr.clone()]) {
                self.shared.method_error(py, e, intern!(py, "connection_made"), &[tr]);
            }
            let waiter = self.shared.waiter.borrow_mut().take();
            if let Some(w) = waiter {
                let w = w.bind(py);
                if !w.call_method0(intern!(py, "cancelled")).and_then(|c| c.is_truthy()).unwrap_or(true) {
                    let _ = w.call_method1(intern!(py, "set_result"), (py.None(),));
                }
            }
        })
    }

    fn datagram_received(&mut self, data: &[u8], addr: &Address) {
        Python::attach(|py| {
            let cached = match self.shared.last_addr.borrow().as_ref() {
                Some((a, o)) if a == addr => Some(o.clone_ref(py)),
                _ => None,
            };
            let addr_obj = match cached {
                Some(o) => o,
                None => match address_to_py(py, addr) {
                    Ok(o) => {
                        *self.shared.last_addr.borrow_mut() = Some((addr.clone(), o.clone_ref(py)));
                        o
                    }
                    Err(e) => return self.shared.callback_error(py, e, "datagram_received()"),
                },
            };
            let bytes = PyBytes::new(py, data).into_any();
            let addr_obj = addr_obj.into_bound(py);
            if let Err(e) = self.shared.call_protocol(py, intern!(py, "datagram_received"), &[bytes.clone(), addr_obj.clone()]) {
                self.shared.method_error(py, e, intern!(py, "datagram_received"), &[bytes, addr_obj]);
            }
        })
    }

    fn error_received(&mut self, exc: Error) {
        Python::attach(|py| {
            let exc_obj = to_pyerr(exc).into_value(py).into_any().into_bound(py);
            if let Err(e) = self.shared.call_protocol(py, intern!(py, "error_received"), &[exc_obj.clone()]) {
                self.shared.method_error(py, e, intern!(py, "error_received"), &[exc_obj]);
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
            if let Err(e) = self.shared.call_protocol(py, intern!(py, "connection_lost"), &[exc_obj.clone()]) {
                self.shared.method_error(py, e, intern!(py, "connection_lost"), &[exc_obj]);
            }
            // As asyncio: after the protocol heard, close the socket (the
            // Python transport's `_finish`) and drop the references.
            self.shared.protocol.borrow_mut().take();
            let tr = self.shared.transport.borrow_mut().take();
            if let Some(tr) = tr {
                if let Err(e) = tr.call_method0(py, intern!(py, "_finish")) {
                    e.write_unraisable(py, Some(tr.bind(py)));
                }
            }
            self.shared.context.borrow_mut().take();
            self.shared.waiter.borrow_mut().take();
            self.shared.last_addr.borrow_mut().take();
        })
    }

    fn pause_writing(&mut self) {
        Python::attach(|py| {
            if let Err(e) = self.shared.call_protocol(py, intern!(py, "pause_writing"), &[]) {
                if is_exit(py, &e) {
                    return self.shared.lp.interrupt(external(e));
                }
                self.shared.report(py, "protocol.pause_writing() failed", Some(&e));
            }
        })
    }

    fn resume_writing(&mut self) {
        Python::attach(|py| {
            if let Err(e) = self.shared.call_protocol(py, intern!(py, "resume_writing"), &[]) {
                if is_exit(py, &e) {
                    return self.shared.lp.interrupt(external(e));
                }
                self.shared.report(py, "protocol.resume_writing() failed", Some(&e));
            }
        })
    }
}

/// Why a Python address could not be used.
enum AddrError {
    /// asyncio's `sock.sendto` would raise this non-OSError: a fatal write error.
    Fatal(PyErr),
    /// An `OSError` (e.g. `socket.gaierror`): goes to `error_received`.
    Os(PyErr),
}

/// A Python `str` IP literal (IPv6 with an optional `%scope`).
fn parse_host(host: &str) -> Option<(IpAddr, Option<u32>)> {
    if let Ok(ip) = host.parse::<IpAddr>() {
        return Some((ip, None));
    }
    let (h, scope) = host.split_once('%')?;
    let ip: std::net::Ipv6Addr = h.parse().ok()?;
    Some((IpAddr::V6(ip), scope.parse().ok()))
}

/// Convert a Python address for a socket of `family`, as `socket.sendto`
/// would: IP literals here, anything else (names, `''`, `'<broadcast>'`,
/// interface scopes) through `ferroloop._datagram._sendto_address`.
fn address_from_py(py: Python<'_>, family: i32, addr: &Bound<'_, PyAny>) -> Result<Address, AddrError> {
    if family == AF_UNIX {
        return unix_address_from_py(py, addr);
    }
    if let Ok(t) = addr.cast::<PyTuple>() {
        if let Some(a) = inet_fast(family, t) {
            return Ok(Address::Inet(a));
        }
    }
    // The slow path: Python normalises (and resolves, as socket.sendto does).
    let normal = py
        .import(intern!(py, "ferroloop._datagram"))
        .and_then(|m| m.getattr(intern!(py, "_sendto_address")))
        .and_then(|f| f.call1((family, addr)))
        .map_err(|e| if e.is_instance_of::<PyOSError>(py) { AddrError::Os(e) } else { AddrError::Fatal(e) })?;
    let t = normal.cast::<PyTuple>().map_err(|e| AddrError::Fatal(PyErr::from(e)))?;
    inet_fast(family, t).map(Address::Inet).ok_or_else(|| {
        AddrError::Fatal(PyValueError::new_err(format!("unusable address {:?}", normal.to_string())))
    })
}

/// `(ip_literal, port[, flowinfo[, scope_id]])` for the family, or `None`.
fn inet_fast(family: i32, t: &Bound<'_, PyTuple>) -> Option<SocketAddr> {
    let n = t.len();
    let want = if family == AF_INET6 { 2..=4 } else { 2..=2 };
    if !want.contains(&n) {
        return None;
    }
    let host = t.get_item(0).ok()?;
    let host = host.cast::<PyString>().ok()?.to_str().ok()?.to_owned();
    let port: u16 = t.get_item(1).ok()?.extract().ok()?;
    let (ip, scope) = parse_host(&host)?;
    match (family == AF_INET6, ip) {
        (false, IpAddr::V4(v4)) => Some(SocketAddr::new(IpAddr::V4(v4), port)),
        (true, IpAddr::V6(v6)) => {
            let flow: u32 = if n > 2 { t.get_item(2).ok()?.extract().ok()? } else { 0 };
            let scope_id: u32 = if n > 3 { t.get_item(3).ok()?.extract().ok()? } else { scope.unwrap_or(0) };
            Some(SocketAddr::V6(SocketAddrV6::new(v6, port, flow, scope_id)))
        }
        _ => None,
    }
}

fn unix_address_from_py(py: Python<'_>, addr: &Bound<'_, PyAny>) -> Result<Address, AddrError> {
    let raw: Vec<u8> = py
        .import(intern!(py, "os"))
        .and_then(|os| os.getattr(intern!(py, "fsencode")))
        .and_then(|f| f.call1((addr,)))
        .and_then(|b| b.extract::<Vec<u8>>())
        .map_err(|_| {
            AddrError::Fatal(PyTypeError::new_err(format!(
                "a bytes-like object is required, not '{}'",
                addr.get_type().name().map(|n| n.to_string()).unwrap_or_default()
            )))
        })?;
    Ok(Address::Unix(String::from_utf8_lossy(&raw).into_owned()))
}

/// The Rust core of a Python datagram transport.
#[pyclass(module = "ferroloop._ferroloop")]
pub struct DatagramCore {
    inner: GilBound<(DatagramTransport, Rc<Shared>)>,
}

impl DatagramCore {
    fn t(&self) -> &DatagramTransport {
        &self.inner.get().0
    }

    fn shared(&self) -> &Rc<Shared> {
        &self.inner.get().1
    }
}

#[pymethods]
impl DatagramCore {
    /// Make the transport on a duplicate of `fd` (a datagram socket of
    /// `family`); the Python transport keeps its socket object and closes it
    /// in `_finish()` after `connection_lost`. `address` is asyncio's
    /// `remote_addr` (the default destination).
    #[new]
    #[pyo3(signature = (core, loop_obj, transport, fd, family, protocol, address=None, waiter=None))]
    #[allow(clippy::too_many_arguments)]
    fn new(
        py: Python<'_>,
        core: PyRef<'_, LoopCore>,
        loop_obj: Py<PyAny>,
        transport: Py<PyAny>,
        fd: i32,
        family: i32,
        protocol: Py<PyAny>,
        address: Option<Py<PyAny>>,
        waiter: Option<Py<PyAny>>,
    ) -> PyResult<Self> {
        let lp = core.engine()?.clone();
        let sock = DatagramSocket::dup_raw(fd).map_err(|e| io_to_pyerr(&e))?;
        let context = py.import(intern!(py, "contextvars"))?.call_method0(intern!(py, "copy_context"))?.unbind();
        let shared = Rc::new(Shared {
            lp: lp.clone(),
            loop_obj: RefCell::new(Some(loop_obj)),
            transport: RefCell::new(Some(transport)),
            protocol: RefCell::new(Some(protocol)),
            context: RefCell::new(Some(context)),
            waiter: RefCell::new(waiter),
            address: RefCell::new(address),
            family,
            last_addr: RefCell::new(None),
        });
        let adapter: DatagramProtocolRef = Rc::new(RefCell::new(PyDatagramAdapter { shared: shared.clone() }));
        // The default destination is checked here (Python's equality), not by the engine.
        let t = lp.create_datagram_transport(sock, adapter, None).map_err(to_pyerr)?;
        // Python 3.13's asyncio counts 8 header bytes per queued datagram in
        // the write buffer size (CPython gh-113812).
        if py.version_info() >= (3, 13) {
            t.set_queued_header_size(8);
        }
        Ok(DatagramCore { inner: GilBound::new((t, shared)) })
    }

    /// asyncio's `DatagramTransport.sendto(data, addr=None)`.
    #[pyo3(signature = (data, addr=None))]
    fn sendto(&self, py: Python<'_>, data: &Bound<'_, PyAny>, addr: Option<Bound<'_, PyAny>>) -> PyResult<()> {
        let owned;
        let bytes: &[u8] = if let Ok(b) = data.cast::<PyBytes>() {
            b.as_bytes()
        } else if data.is_instance_of::<PyByteArray>() || data.is_instance_of::<PyMemoryView>() {
            owned = PyBuffer::<u8>::get(data)?.to_vec(py)?;
            &owned
        } else {
            return Err(PyTypeError::new_err(format!(
                "data argument must be a bytes-like object, not '{}'",
                data.get_type().name()?
            )));
        };
        // asyncio before 3.13 drops empty datagrams; 3.13's sends them
        // (CPython gh-113812), with the checks any datagram gets.
        if bytes.is_empty() && py.version_info() < (3, 13) {
            return Ok(());
        }
        let shared = self.shared();
        let t = self.t();
        let mut addr = addr.filter(|a| !a.is_none());
        let address = Shared::get(&shared.address, py).map(|a| a.into_bound(py)).filter(|a| a.is_truthy().unwrap_or(false));
        if let Some(address) = address {
            if let Some(a) = &addr {
                if !a.eq(&address)? {
                    return Err(PyValueError::new_err(format!("Invalid address: must be None or {}", address.str()?)));
                }
            }
            addr = Some(address);
        }
        // asyncio tests `if self._extra['peername']`: the peer of a Unix
        // socketpair is '' (falsy), so such a socket sends with an address.
        let connected = matches!(t.peername(), Some(p) if p != Address::Unix(String::new()));
        let dest = if connected || t.socket_fd().is_none() {
            // Connected (send() ignores the address, as asyncio's), or closed
            // (the engine drops and counts the send).
            None
        } else {
            match addr {
                // A connected socket with an unnamed peer (one end of a Unix
                // socketpair): asyncio can only fail here (it calls
                // sendto(data, None)); the datagram goes to the peer, as
                // uvloop sends it.
                None if t.peername().is_some() => None,
                None => {
                    // asyncio: sock.sendto(data, None) raises TypeError: a fatal write error.
                    let err = PyTypeError::new_err("sendto() takes an address: the socket is not connected");
                    return self.fatal(py, err);
                }
                Some(a) => {
                    let cached = match shared.last_addr.borrow().as_ref() {
                        Some((addr, obj)) if obj.is(&a) => Some(addr.clone()),
                        _ => None,
                    };
                    match cached.map(Ok).unwrap_or_else(|| address_from_py(py, shared.family, &a)) {
                        Ok(d) => Some(d),
                        Err(AddrError::Os(e)) => return self.error_received_now(py, e),
                        Err(AddrError::Fatal(e)) => return self.fatal(py, e),
                    }
                }
            }
        };
        match t.sendto_or_error(bytes, dest.as_ref()) {
            Ok(None) => Ok(()),
            Ok(Some(e)) => self.error_received_now(py, io_to_pyerr(&e)),
            Err(e) => Err(to_pyerr(e)),
        }
    }

    fn close(&self) {
        self.t().close();
    }

    fn abort(&self) {
        self.t().abort();
    }

    fn is_closing(&self) -> bool {
        self.t().is_closing()
    }

    fn pause_reading(&self) {
        self.t().pause_reading();
    }

    fn resume_reading(&self) {
        self.t().resume_reading();
    }

    fn is_reading(&self) -> bool {
        self.t().is_reading()
    }

    /// Close the socket now, without `connection_lost` (finalizer).
    fn close_socket(&self) {
        self.t().close_socket();
    }

    /// asyncio's `_force_close(exc)`: close at once with `exc` (`None`: no error).
    fn force_close(&self, py: Python<'_>, exc: Option<Py<PyAny>>) {
        match exc {
            Some(e) if !e.is_none(py) => self.t().abort_with_error(external(PyErr::from_value(e.into_bound(py)))),
            _ => self.t().abort(),
        }
    }

    fn get_write_buffer_size(&self) -> usize {
        self.t().get_write_buffer_size()
    }

    fn get_write_buffer_limits(&self) -> (usize, usize) {
        self.t().get_write_buffer_limits()
    }

    #[pyo3(signature = (high=None, low=None))]
    fn set_write_buffer_limits(&self, high: Option<i64>, low: Option<i64>) -> PyResult<()> {
        self.t().set_write_buffer_limits_signed(high, low).map_err(to_pyerr)
    }

    /// Whether `pause_writing` was called without `resume_writing` yet.
    fn is_writing_paused(&self) -> bool {
        self.t().is_writing_paused()
    }

    fn set_protocol(&self, protocol: Py<PyAny>) {
        *self.shared().protocol.borrow_mut() = Some(protocol);
    }

    fn get_protocol(&self, py: Python<'_>) -> Option<Py<PyAny>> {
        Shared::get(&self.shared().protocol, py)
    }

    /// The engine's (duplicated) descriptor, or -1 once closed.
    fn fileno(&self) -> i32 {
        self.t().socket_fd().unwrap_or(-1)
    }

    /// Only once the connection is lost (see `callback::if_sole_owner`).
    fn __traverse__(&self, visit: PyVisit<'_>) -> Result<(), PyTraverseError> {
        if_sole_owner(&self.inner.get().1, |s| s.traverse(&visit)).unwrap_or(Ok(()))
    }

    fn __clear__(&mut self) {
        if_sole_owner(&self.inner.get().1, |s| s.clear());
    }
}

impl DatagramCore {
    /// asyncio calls `protocol.error_received(exc)` from inside `sendto`,
    /// in the caller's context; what it raises propagates to the caller.
    fn error_received_now(&self, py: Python<'_>, exc: PyErr) -> PyResult<()> {
        let Some(proto) = Shared::get(&self.shared().protocol, py) else { return Ok(()) };
        proto.call_method1(py, intern!(py, "error_received"), (exc.into_value(py),))?;
        Ok(())
    }

    /// asyncio's `_fatal_error(exc, 'Fatal write error on datagram transport')`.
    fn fatal(&self, py: Python<'_>, exc: PyErr) -> PyResult<()> {
        if is_exit(py, &exc) {
            return Err(exc);
        }
        if !exc.is_instance_of::<PyOSError>(py) {
            self.shared().report(py, "Fatal write error on datagram transport", Some(&exc));
        }
        self.t().abort_with_error(external(exc));
        Ok(())
    }
}
