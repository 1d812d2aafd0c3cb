//! `LoopCore`: the engine's event loop as seen from Python.
//!
//! The Python `ferroloop.Loop` keeps one `LoopCore` and routes scheduling,
//! running, fd watching and transports through it. Callbacks are asyncio's
//! own `Handle`/`TimerHandle` objects; the engine runs `handle._run()`.

use std::cell::RefCell;
use std::rc::Rc;
use std::time::Duration;

use ferroloop::{Blocker, EventLoop, ExceptionContext, LoopRemote, PollStep, TimerHandle};
use pyo3::exceptions::{PyRuntimeError, PyTypeError};
use pyo3::intern;
use pyo3::prelude::*;
use pyo3::types::{PyDict, PyWeakrefReference};

use crate::errors::{external, to_pyerr};
use crate::sys::GilBound;

/// Releases the GIL around a blocking poll and runs Python signal handlers
/// afterwards (a `KeyboardInterrupt` ends `run_forever`).
struct GilBlocker;

impl Blocker for GilBlocker {
    fn block(&self, step: PollStep<'_>) -> ferroloop::Result<()> {
        Python::attach(|py| {
            if step.timeout() == Some(Duration::ZERO) {
                step.run()?;
            } else {
                py.detach(move || step.run())?;
            }
            py.check_signals().map_err(external)
        })
    }
}

/// Run an asyncio `Handle` unless it was cancelled. An exception escaping
/// `_run()` (only `SystemExit`/`KeyboardInterrupt` do) ends the loop's run.
pub(crate) fn run_handle(py: Python<'_>, lp: &EventLoop, handle: &Py<PyAny>) {
    let h = handle.bind(py);
    match h.getattr(intern!(py, "_cancelled")).and_then(|c| c.is_truthy()) {
        Ok(true) => return,
        Ok(false) => {}
        Err(e) => return lp.interrupt(external(e)),
    }
    let r = if lp.get_debug() {
        // Debug mode: the Python loop times the callback and logs slow ones.
        h.getattr(intern!(py, "_loop")).and_then(|l| l.call_method1(intern!(py, "_run_debug"), (h,)))
    } else {
        h.call_method0(intern!(py, "_run"))
    };
    if let Err(e) = r {
        lp.interrupt(external(e));
    }
}

static FUTURE: pyo3::sync::PyOnceLock<Py<pyo3::types::PyType>> = pyo3::sync::PyOnceLock::new();

/// `asyncio.futures.Future` (as imported first).
fn future_type(py: Python<'_>) -> PyResult<&Bound<'_, pyo3::types::PyType>> {
    FUTURE.import(py, "asyncio.futures", "Future")
}

/// The engine loop behind a Python `ferroloop.Loop`.
#[pyclass(module = "ferroloop._ferroloop")]
pub struct LoopCore {
    lp: GilBound<EventLoop>,
    /// A weak reference to the Python loop.
    owner: Py<PyAny>,
    /// `{"loop": <the Python loop>}` while `run_forever` runs: the keyword
    /// arguments of `create_future`'s `Future(loop=loop)`, made once per run
    /// instead of once per future. Dropped when the run ends, so that the
    /// core holds its Python loop only while the loop runs.
    future_kwargs: GilBound<RefCell<Option<Py<PyDict>>>>,
}

impl LoopCore {
    pub(crate) fn engine(&self) -> PyResult<&EventLoop> {
        Ok(self.lp.get())
    }

    /// The weak reference to the Python loop.
    pub(crate) fn owner_ref(&self, py: Python<'_>) -> Py<PyAny> {
        self.owner.clone_ref(py)
    }
}

#[pymethods]
impl LoopCore {
    /// `owner` is the Python loop; it receives engine-level error reports
    /// through its `call_exception_handler` (held weakly).
    #[new]
    fn new(owner: &Bound<'_, PyAny>) -> PyResult<Self> {
        let lp = EventLoop::new().map_err(to_pyerr)?;
        lp.set_blocker(Some(Rc::new(GilBlocker)));
        let weak: Py<PyAny> = PyWeakrefReference::new(owner)?.into_any().unbind();
        lp.set_exception_handler(Some(Rc::new(move |_lp: &EventLoop, ctx: &ExceptionContext| {
            Python::attach(|py| {
                let Ok(owner) = weak.bind(py).call0() else { return };
                if owner.is_none() {
                    return;
                }
                let d = PyDict::new(py);
                let _ = d.set_item("message", &ctx.message);
                if let Some(e) = &ctx.error {
                    let exc = to_pyerr(e.clone());
                    let _ = d.set_item("exception", exc.value(py));
                }
                if let Err(e) = owner.call_method1("call_exception_handler", (d,)) {
                    e.write_unraisable(py, None);
                }
            })
        })));
        // Warnings go to asyncio's logger, as asyncio logs them.
        lp.set_warning_handler(Some(Rc::new(|msg: &str| {
            Python::attach(|py| {
                let r = py
                    .import(intern!(py, "asyncio.log"))
                    .and_then(|m| m.getattr(intern!(py, "logger")))
                    .and_then(|l| l.call_method1(intern!(py, "warning"), (msg,)));
                if let Err(e) = r {
                    e.write_unraisable(py, None);
                }
            })
        })));
        let owner = PyWeakrefReference::new(owner)?.into_any().unbind();
        Ok(LoopCore { lp: GilBound::new(lp), owner, future_kwargs: GilBound::new(RefCell::new(None)) })
    }

    /// Seconds on the monotonic clock.
    fn time(&self) -> PyResult<f64> {
        Ok(self.engine()?.time())
    }

    /// `loop.call_soon()` outside debug mode, as a built-in function bound
    /// to this core (C-level argument handling; see sys/call_soon.rs).
    fn bound_call_soon<'py>(slf: &Bound<'py, Self>) -> PyResult<Bound<'py, PyAny>> {
        crate::sys::call_soon::bound_call_soon(slf)
    }

    /// Schedule `handle._run()` for the next iteration.
    fn call_soon(&self, handle: Py<PyAny>) -> PyResult<()> {
        let lp = self.engine()?.clone();
        self.engine()?
            .call_soon(move || Python::attach(|py| run_handle(py, &lp, &handle)))
            .map(|_| ())
            .map_err(to_pyerr)
    }

    /// Schedule a `TimerHandle` at loop time `when`, a real number (a
    /// `float`, an `int`, anything with `__float__`: no `str`); returns the
    /// engine timer.
    fn call_at(&self, when: &Bound<'_, PyAny>, handle: Py<PyAny>) -> PyResult<TimerRef> {
        let when: f64 = match when.extract() {
            Ok(t) => t,
            Err(e) if e.is_instance_of::<PyTypeError>(when.py()) => {
                let kind = when.get_type().name()?;
                return Err(PyTypeError::new_err(format!("when must be a real number, not {kind}")));
            }
            Err(e) => return Err(e),
        };
        let lp = self.engine()?.clone();
        let t = self
            .engine()?
            .call_at(when, move || {
                Python::attach(|py| {
                    let _ = handle.bind(py).setattr(intern!(py, "_scheduled"), false);
                    run_handle(py, &lp, &handle)
                })
            })
            .map_err(to_pyerr)?;
        Ok(TimerRef { timer: GilBound::new(t) })
    }

    /// The thread-safe side of the loop.
    fn remote(&self) -> PyResult<RemoteCore> {
        Ok(RemoteCore { remote: self.engine()?.remote() })
    }

    /// Run until `stop()`.
    fn run_forever(&self, py: Python<'_>) -> PyResult<()> {
        // asyncio's C Future only reads its keyword arguments: one dict
        // serves every future of the run (a Python replacement of
        // `asyncio.futures.Future` gets a fresh one each time).
        let kwargs = match self.owner.bind(py).call0()? {
            owner if owner.is_none() => None,
            owner => {
                let c_future = py.import(intern!(py, "_asyncio"))?.getattr(intern!(py, "Future"))?;
                if future_type(py)?.is(&c_future) {
                    let d = PyDict::new(py);
                    d.set_item(intern!(py, "loop"), owner)?;
                    Some(d.unbind())
                } else {
                    None
                }
            }
        };
        let outer = self.future_kwargs.get().replace(kwargs);
        let r = self.engine()?.run_forever().map_err(to_pyerr);
        // A run inside a run is refused by the engine; the outer run's
        // arguments stay.
        drop(self.future_kwargs.get().replace(outer));
        r
    }

    /// Run one iteration.
    fn run_once(&self) -> PyResult<()> {
        self.engine()?.run_once().map_err(to_pyerr)
    }

    /// `loop.get_debug()`: the flag `set_debug` last gave the core (the
    /// Python loop's `set_debug` keeps it equal to `loop._debug`). Bound in
    /// the loop's instance dict: asyncio's C `Future` asks at each creation.
    fn get_debug(&self) -> PyResult<bool> {
        Ok(self.engine()?.get_debug())
    }

    /// `loop.create_future()`: `asyncio.Future(loop=loop)`, as
    /// `BaseEventLoop.create_future`, without its Python frame.
    fn create_future<'py>(&self, py: Python<'py>) -> PyResult<Bound<'py, PyAny>> {
        let running = self.future_kwargs.get().borrow().as_ref().map(|d| d.clone_ref(py));
        if let Some(kwargs) = running {
            return future_type(py)?.call((), Some(kwargs.bind(py)));
        }
        let owner = self.owner.bind(py).call0()?;
        if owner.is_none() {
            return Err(PyRuntimeError::new_err("the event loop is gone"));
        }
        let kwargs = PyDict::new(py);
        kwargs.set_item(intern!(py, "loop"), owner)?;
        future_type(py)?.call((), Some(&kwargs))
    }

    /// `loop.create_task(coro, **kwargs)`, as `BaseEventLoop.create_task`
    /// (see `tasks.rs`). Bound in the loop's instance dict.
    #[pyo3(signature = (coro, **kwargs))]
    fn create_task<'py>(
        &self,
        py: Python<'py>,
        coro: Bound<'py, PyAny>,
        kwargs: Option<&Bound<'py, PyDict>>,
    ) -> PyResult<Bound<'py, PyAny>> {
        let running = self.future_kwargs.get().borrow().as_ref().map(|d| d.clone_ref(py).into_bound(py));
        let loop_obj = match &running {
            Some(d) => d.get_item(intern!(py, "loop"))?.ok_or_else(|| PyRuntimeError::new_err("the event loop is gone"))?,
            None => self.owner.bind(py).call0()?,
        };
        if loop_obj.is_none() {
            return Err(PyRuntimeError::new_err("the event loop is gone"));
        }
        crate::tasks::create_task(&loop_obj, running, self.engine()?.get_debug(), coro, kwargs)
    }

    fn set_debug(&self, enabled: bool) -> PyResult<()> {
        self.engine()?.set_debug(enabled);
        Ok(())
    }

    fn stop(&self) -> PyResult<()> {
        self.engine()?.stop();
        Ok(())
    }

    fn is_running(&self) -> PyResult<bool> {
        Ok(self.engine()?.is_running())
    }

    fn close(&self) -> PyResult<()> {
        self.engine()?.close().map_err(to_pyerr)
    }

    /// Watch `fd` for reading; `handle._run()` runs while it is readable.
    fn add_reader(&self, fd: i32, handle: Py<PyAny>) -> PyResult<()> {
        let lp = self.engine()?.clone();
        self.engine()?
            .add_reader(fd, Rc::new(move || Python::attach(|py| run_handle(py, &lp, &handle))))
            .map_err(to_pyerr)
    }

    /// Watch `fd` for writing.
    fn add_writer(&self, fd: i32, handle: Py<PyAny>) -> PyResult<()> {
        let lp = self.engine()?.clone();
        self.engine()?
            .add_writer(fd, Rc::new(move || Python::attach(|py| run_handle(py, &lp, &handle))))
            .map_err(to_pyerr)
    }

    fn remove_reader(&self, fd: i32) -> PyResult<bool> {
        Ok(self.engine()?.remove_reader(fd))
    }

    fn remove_writer(&self, fd: i32) -> PyResult<bool> {
        Ok(self.engine()?.remove_writer(fd))
    }

    /// Whether `fd` has a reader (or writer, with `reader=False`).
    fn has_watch(&self, fd: i32, reader: bool) -> PyResult<bool> {
        Ok(self.engine()?.has_watch(fd, reader))
    }

    /// Call `callback(returncode)` on the loop once child `pid` exits, after
    /// the engine reaped it (a pidfd in the poll; `SIGCHLD` where pidfds are
    /// unavailable). `returncode` is the exit status or `-signal`, or `None`
    /// if someone else reaped the child first (a `Popen.poll()`...).
    fn watch_child(&self, pid: u32, callback: Py<PyAny>) -> PyResult<()> {
        let lp = self.engine()?.clone();
        self.engine()?
            .watch_child(pid, move |rc| {
                Python::attach(|py| {
                    if let Err(e) = callback.call1(py, (rc,)) {
                        if e.is_instance_of::<pyo3::exceptions::PyKeyboardInterrupt>(py)
                            || e.is_instance_of::<pyo3::exceptions::PySystemExit>(py)
                        {
                            lp.interrupt(external(e));
                        } else {
                            e.write_unraisable(py, None);
                        }
                    }
                })
            })
            .map_err(to_pyerr)
    }

    /// Number of registered engine sources (diagnostics, tests).
    fn registered_sources(&self) -> PyResult<usize> {
        Ok(self.engine()?.registered_sources())
    }
}

/// An engine timer behind an asyncio `TimerHandle`.
#[pyclass(module = "ferroloop._ferroloop")]
pub struct TimerRef {
    timer: GilBound<TimerHandle>,
}

#[pymethods]
impl TimerRef {
    /// Drop the timer from the engine.
    fn cancel(&self) -> PyResult<()> {
        self.timer.get().cancel();
        Ok(())
    }
}

/// The thread-safe half of a loop: `call_soon_threadsafe` and wake-ups.
#[pyclass(frozen, module = "ferroloop._ferroloop")]
pub struct RemoteCore {
    remote: LoopRemote,
}

#[pymethods]
impl RemoteCore {
    /// Run `handle._run()` on the loop's thread in its next iteration.
    fn call_soon_threadsafe(&self, handle: Py<PyAny>) -> PyResult<()> {
        self.remote
            .call_soon_threadsafe_with_loop(move |lp: &EventLoop| Python::attach(|py| run_handle(py, lp, &handle)))
            .map_err(|e| match e {
                ferroloop::Error::LoopClosed => PyRuntimeError::new_err("Event loop is closed"),
                other => to_pyerr(other),
            })
    }

    /// Wake the loop from its poll.
    fn wake(&self) {
        self.remote.wake()
    }
}
