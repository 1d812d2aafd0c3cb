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
