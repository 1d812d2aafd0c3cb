//! `loop.create_task` without Python frames: asyncio's
//! `BaseEventLoop.create_task` is two (`create_task`, `_check_closed`)
//! around the C `Task(coro, loop=loop, ...)`, and a server makes a task per
//! request (uvicorn's `run_asgi`, aiohttp's handler). Outside debug mode,
//! with no task factory and only the keywords every version takes (`name`,
//! `context`), the task is made here; anything else goes to asyncio's own
//! method, so each version's rules (3.13's `**kwargs`, 3.14's
//! `eager_start`, factories) stay asyncio's.

use pyo3::intern;
use pyo3::prelude::*;
use pyo3::sync::PyOnceLock;
use pyo3::types::{PyDict, PyType};

static TASK: PyOnceLock<Py<PyType>> = PyOnceLock::new();
static BASE_CREATE_TASK: PyOnceLock<Py<PyAny>> = PyOnceLock::new();

/// `asyncio.tasks.Task` (the C task where the interpreter has it), as first imported.
fn task_type(py: Python<'_>) -> PyResult<&Bound<'_, PyType>> {
    TASK.import(py, "asyncio.tasks", "Task")
}

/// `asyncio.base_events.BaseEventLoop.create_task`, the plain function.
fn base_create_task(py: Python<'_>) -> PyResult<&Bound<'_, PyAny>> {
    BASE_CREATE_TASK
        .get_or_try_init(py, || -> PyResult<Py<PyAny>> {
            let cls = py.import("asyncio.base_events")?.getattr("BaseEventLoop")?;
            Ok(cls.getattr("create_task")?.unbind())
        })
        .map(|f| f.bind(py))
}

/// Whether every keyword is one that `create_task` takes on every version.
fn plain_keywords(kwargs: Option<&Bound<'_, PyDict>>) -> PyResult<bool> {
    let Some(kw) = kwargs else { return Ok(true) };
    let py = kw.py();
    for key in kw.keys() {
        if !(key.eq(intern!(py, "name"))? || key.eq(intern!(py, "context"))?) {
            return Ok(false);
        }
    }
    Ok(true)
}

/// `create_task(coro, **kwargs)` on the loop `loop_obj`; `running` is the
/// core's `{"loop": loop}` while it runs (`None` otherwise), `debug` its flag.
pub(crate) fn create_task<'py>(
    loop_obj: &Bound<'py, PyAny>,
    running: Option<Bound<'py, PyDict>>,
    debug: bool,
    coro: Bound<'py, PyAny>,
    kwargs: Option<&Bound<'py, PyDict>>,
) -> PyResult<Bound<'py, PyAny>> {
    let py = loop_obj.py();
    if let Some(base) = running {
        let fast = !debug
            && plain_keywords(kwargs)?
            && loop_obj.getattr(intern!(py, "_task_factory"))?.is_none()
            && !loop_obj.getattr(intern!(py, "_closed"))?.is_truthy()?;
        if fast {
            let kw = match kwargs {
                Some(k) => {
                    let kw = base.copy()?;
                    kw.update(k.as_mapping())?;
                    kw
                }
                None => base,
            };
            return task_type(py)?.call((coro,), Some(&kw));
        }
    }
    base_create_task(py)?.call((loop_obj, coro), kwargs)
}
