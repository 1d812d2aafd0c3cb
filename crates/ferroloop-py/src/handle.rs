//! `call_soon` without Python frames: a `Handle` in Rust.
//!
//! In asyncio, every `loop.call_soon()` builds an `asyncio.Handle` (Python
//! `__init__`, a `get_debug()` call) and the loop later calls its Python
//! `_run()`. Futures and tasks schedule all their wake-ups that way, so in
//! streams code it is a large part of each message's cost. Outside debug
//! mode the Python loop's `call_soon` is the core's (a built-in function
//! bound in its instance dict, sys/call_soon.rs), which makes a
//! [`FastHandle`] and runs it from the engine: the callback inside its
//! context, an exception to the loop's exception handler with asyncio's
//! message. In debug mode the loop keeps
//! asyncio's own `Handle` (source tracebacks, slow-callback logging).

use ferroloop::EventLoop;
use pyo3::exceptions::PyRuntimeError;
use pyo3::intern;
use pyo3::prelude::*;
use pyo3::types::{PyDict, PyTuple};
use pyo3::{PyTraverseError, PyVisit};

use crate::errors::{external, to_pyerr};
use crate::event_loop::LoopCore;
use crate::sys::{copy_context, is_context, EnteredContext};
use crate::transport::callback::is_exit;

/// The handle `call_soon()` returns outside debug mode: the interface of
/// `asyncio.Handle` (`cancel()`, `cancelled()`, `get_context()`, `_run()`,
/// and the attributes asyncio's own code reads). Its `__class__` is
/// `asyncio.Handle`, so `isinstance(h, asyncio.Handle)` holds, as with
/// stock asyncio (Python's isinstance consults `__class__`).
#[pyclass(module = "ferroloop._ferroloop", name = "Handle", weakref, freelist = 64)]
pub struct FastHandle {
    callback: Option<Py<PyAny>>,
    args: Option<Py<PyTuple>>,
    context: Option<Py<PyAny>>,
    /// A weak reference to the Python loop.
    loop_ref: Option<Py<PyAny>>,
    cancelled: bool,
}

impl FastHandle {
    fn the_loop<'py>(&self, py: Python<'py>) -> Option<Bound<'py, PyAny>> {
        let l = self.loop_ref.as_ref()?.bind(py).call0().ok()?;
        (!l.is_none()).then_some(l)
    }
}

static ASYNCIO_HANDLE: pyo3::sync::PyOnceLock<Py<pyo3::types::PyType>> = pyo3::sync::PyOnceLock::new();

/// Run the handle (from the engine's ready queue, or `_run()`): nothing if
/// it was cancelled; else `callback(*args)` inside its context (as asyncio,
/// `context.run(callback, *args)` if the context given is no
/// `contextvars.Context`), an exception to the loop's exception handler as
/// asyncio's `Handle._run` reports it.
/// `SystemExit`/`KeyboardInterrupt` end the loop's run (or, from `_run()`,
/// propagate).
fn run(py: Python<'_>, lp: Option<&EventLoop>, handle: &Bound<'_, FastHandle>) -> PyResult<()> {
    let (callback, args, context) = {
        let h = handle.borrow();
        if h.cancelled {
            return Ok(());
        }
        let (Some(cb), Some(args)) = (h.callback.as_ref(), h.args.as_ref()) else { return Ok(()) };
        (cb.clone_ref(py), args.clone_ref(py), h.context.as_ref().map(|c| c.clone_ref(py)))
    };
    let r = (|| match context.map(|c| c.into_bound(py)) {
        Some(c) if is_context(&c) => {
            let _entered = EnteredContext::enter(c)?;
            callback.bind(py).call1(args.bind(py))
        }
        // asyncio's `Handle._run` calls `context.run(callback, *args)`
        // whatever the context is (`call_soon(cb, context=1)` is no error
        // until then): an object that is not a Context is called the same.
        Some(other) => {
            let mut all = vec![callback.bind(py).clone()];
            all.extend(args.bind(py).iter());
            other.call_method1(intern!(py, "run"), PyTuple::new(py, all)?)
        }
        None => callback.bind(py).call1(args.bind(py)),
    })();
    let Err(e) = r else { return Ok(()) };
    let exit = |e: PyErr| match lp {
        Some(lp) => {
            lp.interrupt(external(e));
            Ok(())
        }
        None => Err(e),
    };
    if is_exit(py, &e) {
        return exit(e);
    }
    let Some(owner) = handle.borrow().the_loop(py) else { return Ok(()) };
    let report = || -> PyResult<()> {
        let source: String = py
            .import(intern!(py, "asyncio.format_helpers"))?
            .call_method1(intern!(py, "_format_callback_source"), (&callback, &args))?
            .extract()?;
        let d = PyDict::new(py);
        d.set_item("message", format!("Exception in callback {source}"))?;
        d.set_item("exception", e.value(py))?;
        d.set_item("handle", handle)?;
        owner.call_method1(intern!(py, "call_exception_handler"), (d,))?;
        Ok(())
    };
    if let Err(e2) = report() {
        if is_exit(py, &e2) {
            return exit(e2);
        }
        e2.write_unraisable(py, None);
    }
    Ok(())
}

#[pymethods]
impl FastHandle {
    fn cancel(&mut self) {
        if !self.cancelled {
            self.cancelled = true;
            // As asyncio outside debug mode: drop the references at once.
            self.callback = None;
            self.args = None;
        }
    }

    fn cancelled(&self) -> bool {
        self.cancelled
    }

    fn get_context(&self, py: Python<'_>) -> Option<Py<PyAny>> {
        self.context.as_ref().map(|c| c.clone_ref(py))
    }

    /// Run the callback now (asyncio's `Handle._run`).
    fn _run(slf: &Bound<'_, Self>) -> PyResult<()> {
        run(slf.py(), None, slf)
    }

    /// `asyncio.Handle`, for `isinstance` and `__class__.__name__`.
    #[getter]
    fn __class__<'py>(&self, py: Python<'py>) -> PyResult<Bound<'py, pyo3::types::PyType>> {
        Ok(ASYNCIO_HANDLE.import(py, "asyncio.events", "Handle")?.clone())
    }

    #[getter]
    fn _callback(&self, py: Python<'_>) -> Option<Py<PyAny>> {
        self.callback.as_ref().map(|c| c.clone_ref(py))
    }

    #[getter]
    fn _args(&self, py: Python<'_>) -> Option<Py<PyTuple>> {
        self.args.as_ref().map(|c| c.clone_ref(py))
    }

    #[getter]
    fn _cancelled(&self) -> bool {
        self.cancelled
    }

    #[getter]
    fn _context(&self, py: Python<'_>) -> Option<Py<PyAny>> {
        self.get_context(py)
    }

    #[getter]
    fn _loop<'py>(&self, py: Python<'py>) -> Option<Bound<'py, PyAny>> {
        self.the_loop(py)
    }

    /// Only debug-mode handles record where they were made.
    #[getter]
    fn _source_traceback(&self) -> Option<bool> {
        None
    }

    #[getter]
    fn _repr(&self) -> Option<bool> {
        None
    }

    /// asyncio's `Handle._repr_info()`: the parts of the repr, which
    /// libraries extend for their own (the class name, "cancelled" once
    /// cancelled, then the callback with its arguments while it has them).
    fn _repr_info(&self, py: Python<'_>) -> PyResult<Vec<String>> {
        let mut info = vec!["Handle".to_string()];
        if self.cancelled {
            info.push("cancelled".into());
        }
        if let (Some(cb), Some(args)) = (&self.callback, &self.args) {
            let s: String = py
                .import(intern!(py, "asyncio.format_helpers"))?
                .call_method1(intern!(py, "_format_callback_source"), (cb, args))?
                .extract()?;
            info.push(s);
        }
        Ok(info)
    }

    fn __repr__(&self, py: Python<'_>) -> PyResult<String> {
        Ok(format!("<{}>", self._repr_info(py)?.join(" ")))
    }

    fn __traverse__(&self, visit: PyVisit<'_>) -> Result<(), PyTraverseError> {
        if let Some(c) = &self.callback {
            visit.call(c)?;
        }
        if let Some(a) = &self.args {
            visit.call(a)?;
        }
        if let Some(c) = &self.context {
            visit.call(c)?;
        }
        Ok(())
    }

    fn __clear__(&mut self) {
        self.callback = None;
        self.args = None;
        self.context = None;
    }
}

impl LoopCore {
    /// `loop.call_soon(callback, *args, context=None)` outside debug mode.
    pub(crate) fn call_soon_fast_impl(
        &self,
        py: Python<'_>,
        callback: Py<PyAny>,
        args: Py<PyTuple>,
        context: Option<Py<PyAny>>,
    ) -> PyResult<Py<FastHandle>> {
        let lp = self.engine()?;
        if lp.is_closed() {
            return Err(PyRuntimeError::new_err("Event loop is closed"));
        }
        let context = match context {
            Some(c) if !c.is_none(py) => c,
            _ => copy_context(py)?,
        };
        let handle = Py::new(
            py,
            FastHandle {
                callback: Some(callback),
                args: Some(args),
                context: Some(context),
                loop_ref: Some(self.owner_ref(py)),
                cancelled: false,
            },
        )?;
        let h = handle.clone_ref(py);
        let lp2 = lp.clone();
        lp.call_soon(move || {
            Python::attach(|py| {
                if let Err(e) = run(py, Some(&lp2), h.bind(py)) {
                    lp2.interrupt(external(e));
                }
            })
        })
        .map_err(to_pyerr)?;
        Ok(handle)
    }
}
