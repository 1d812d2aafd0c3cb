//! How every transport binding calls into Python protocol objects.

use pyo3::exceptions::{PyKeyboardInterrupt, PySystemExit};
use pyo3::prelude::*;
use pyo3::types::{PyString, PyTuple};

use crate::sys::EnteredContext;

/// `SystemExit`/`KeyboardInterrupt`: asyncio lets these end the loop's run
/// instead of reporting them.
pub(crate) fn is_exit(py: Python<'_>, e: &PyErr) -> bool {
    e.is_instance_of::<PyKeyboardInterrupt>(py) || e.is_instance_of::<PySystemExit>(py)
}

/// Call `method(*args)` inside `ctx` (the transport's contextvars Context),
/// or in the current context when there is none.
pub(crate) fn call_in_context<'py>(
    py: Python<'py>,
    ctx: Option<Py<PyAny>>,
    method: &Bound<'py, PyAny>,
    args: &[Bound<'py, PyAny>],
) -> PyResult<Bound<'py, PyAny>> {
    let _entered = match ctx {
        Some(ctx) => Some(EnteredContext::enter(ctx.into_bound(py))?),
        None => None,
    };
    match args {
        [] => method.call0(),
        [a] => method.call1((a,)),
        _ => method.call1(PyTuple::new(py, args)?),
    }
}

/// `obj.name(*args)` inside `ctx` (or the current context): the method is
/// looked up at each call, inside the context as asyncio's own transports
/// do (their read callback runs in the context), and called without making
/// a bound method.
pub(crate) fn call_method_in_context<'py>(
    py: Python<'py>,
    ctx: Option<&Py<PyAny>>,
    obj: &Bound<'py, PyAny>,
    name: &Bound<'py, PyString>,
    args: &[Bound<'py, PyAny>],
) -> PyResult<Bound<'py, PyAny>> {
    let _entered = match ctx {
        Some(ctx) => Some(EnteredContext::enter(ctx.bind(py).clone())?),
        None => None,
    };
    match args {
        [] => obj.call_method0(name),
        [a] => obj.call_method1(name, (a,)),
        _ => obj.call_method1(name, PyTuple::new(py, args)?),
    }
}

/// GC support of a transport core's shared Python references: visit the
/// cells not borrowed right now.
pub(crate) fn visit_cells(
    cells: &[&std::cell::RefCell<Option<Py<PyAny>>>],
    visit: &pyo3::PyVisit<'_>,
) -> Result<(), pyo3::PyTraverseError> {
    for cell in cells {
        if let Ok(b) = cell.try_borrow() {
            if let Some(o) = b.as_ref() {
                visit.call(o)?;
            }
        }
    }
    Ok(())
}

/// Empty the cells not borrowed right now (`__clear__`).
pub(crate) fn clear_cells(cells: &[&std::cell::RefCell<Option<Py<PyAny>>>]) {
    for cell in cells {
        if let Ok(mut b) = cell.try_borrow_mut() {
            b.take();
        }
    }
}

/// While the connection is live, the engine's protocol adapter co-owns a
/// core's shared references: they are then not the core's to report, or
/// the GC would take a live transport for garbage. Once the adapter is gone
/// (after `connection_lost`), they are, so cycles through a closed transport
/// are collected. `f` visits (or clears) them when the core is the sole
/// owner; `None` otherwise.
pub(crate) fn if_sole_owner<S, R>(shared: &std::rc::Rc<S>, f: impl FnOnce(&S) -> R) -> Option<R> {
    (std::rc::Rc::strong_count(shared) == 1).then(|| f(shared))
}

/// `loop.call_exception_handler({...})` with `message`, and `exception`,
/// `transport`, `protocol` where given, as asyncio's transports report
/// (the datagram and stream cores alike). A failure of the report itself
/// is unraisable.
pub(crate) fn report_to_loop(
    py: Python<'_>,
    loop_obj: Option<Py<PyAny>>,
    message: &str,
    exc: Option<&PyErr>,
    transport: Option<Py<PyAny>>,
    protocol: Option<Py<PyAny>>,
) {
    let Some(lp) = loop_obj else { return };
    let d = pyo3::types::PyDict::new(py);
    let _ = d.set_item("message", message);
    if let Some(e) = exc {
        let _ = d.set_item("exception", e.value(py));
    }
    if let Some(t) = transport {
        let _ = d.set_item("transport", t);
    }
    if let Some(p) = protocol {
        let _ = d.set_item("protocol", p);
    }
    if let Err(e) = lp.call_method1(py, pyo3::intern!(py, "call_exception_handler"), (d,)) {
        e.write_unraisable(py, None);
    }
}

/// asyncio's report of an exception in `callback(*args)` run through a
/// `Handle` (`message`, `exception`, `handle`): `ferroloop._transports.
/// report_callback_error`. A failure of the report itself is unraisable.
pub(crate) fn report_callback_error<'py>(
    py: Python<'py>,
    loop_obj: &Py<PyAny>,
    callback: Bound<'py, PyAny>,
    args: &[Bound<'py, PyAny>],
    exc: &PyErr,
    context: Option<Py<PyAny>>,
) {
    let r = py.import(pyo3::intern!(py, "ferroloop._transports")).and_then(|m| {
        let args = PyTuple::new(py, args)?;
        m.call_method1(pyo3::intern!(py, "report_callback_error"), (loop_obj, callback, args, exc.value(py), context))
    });
    if let Err(e) = r {
        e.write_unraisable(py, None);
    }
}
