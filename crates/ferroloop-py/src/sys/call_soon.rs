//! `loop.call_soon` as a C-level function bound to the loop's core: asyncio's
//! C futures and tasks call it for every wake-up, and a C function with the
//! vectorcall convention takes `callback, *args, context=None` without the
//! argument parsing of a generic method.

use std::ffi::CStr;
use std::ptr;

use pyo3::exceptions::PyTypeError;
use pyo3::ffi;
use pyo3::prelude::*;

use crate::event_loop::LoopCore;

/// `call_soon(callback, *args, context=None)` with `slf` the `LoopCore`.
///
/// # Safety
///
/// Called only by CPython through the function made by `bound_call_soon`:
/// the GIL is held, `slf` is that function's `LoopCore`, `args` points to
/// `nargs` positional arguments followed by one value per name of the tuple
/// `kwnames` (or `kwnames` is NULL), all live for the call.
unsafe extern "C" fn call_soon(
    slf: *mut ffi::PyObject,
    args: *const *mut ffi::PyObject,
    nargs: ffi::Py_ssize_t,
    kwnames: *mut ffi::PyObject,
) -> *mut ffi::PyObject {
    // SAFETY: CPython calls this with the GIL held.
    let py = unsafe { Python::assume_attached() };
    let r = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| -> PyResult<*mut ffi::PyObject> {
        let (mut context, mut keyword_callback) = (None, None);
        if !kwnames.is_null() {
            let (context_name, callback_name) = (pyo3::intern!(py, "context"), pyo3::intern!(py, "callback"));
            // SAFETY: `kwnames` is a tuple of strings, one per keyword value
            // after the positional arguments (the caller's contract); the
            // names CPython's own callers pass are interned, so identity
            // decides first.
            unsafe {
                for i in 0..ffi::PyTuple_GET_SIZE(kwnames) {
                    let name = ffi::PyTuple_GET_ITEM(kwnames, i);
                    let value = *args.offset(nargs + i);
                    let is = |n: &Bound<'_, pyo3::types::PyString>| {
                        name == n.as_ptr() || ffi::PyUnicode_Compare(name, n.as_ptr()) == 0
                    };
                    if is(context_name) {
                        context = Some(Bound::from_borrowed_ptr(py, value).unbind());
                    } else if is(callback_name) {
                        if nargs > 0 {
                            return Err(PyTypeError::new_err("call_soon() got multiple values for argument 'callback'"));
                        }
                        keyword_callback = Some(Bound::from_borrowed_ptr(py, value).unbind());
                    } else {
                        let name = Bound::from_borrowed_ptr(py, name);
                        return Err(PyTypeError::new_err(format!(
                            "call_soon() got an unexpected keyword argument '{}'",
                            name.str()?
                        )));
                    }
                }
            }
        }
        // SAFETY: `args` holds `nargs` live positional arguments; PyTuple_New
        // returns a new tuple (or NULL with an exception set), whose items
        // are filled here, each with a new reference, before anything else
        // sees it.
        let (callback, rest) = unsafe {
            let callback = match keyword_callback {
                Some(c) => c,
                None if nargs >= 1 => Bound::from_borrowed_ptr(py, *args).unbind(),
                None => {
                    return Err(PyTypeError::new_err("call_soon() missing 1 required positional argument: 'callback'"));
                }
            };
            let n = (nargs - 1).max(0);
            let t = ffi::PyTuple_New(n);
            if t.is_null() {
                return Err(PyErr::fetch(py));
            }
            for i in 0..n {
                let a = *args.offset(1 + i);
                ffi::Py_INCREF(a);
                ffi::PyTuple_SET_ITEM(t, i, a);
            }
            (callback, Bound::from_owned_ptr(py, t).cast_into_unchecked::<pyo3::types::PyTuple>().unbind())
        };
        // SAFETY: `slf` is the function's `LoopCore` (the caller's contract;
        // `bound_call_soon` takes only a `LoopCore`).
        let core = unsafe { Bound::from_borrowed_ptr(py, slf).cast_into_unchecked::<LoopCore>() };
        let handle = core.try_borrow()?.call_soon_fast_impl(py, callback, rest, context)?;
        Ok(handle.into_ptr())
    }));
    super::ffi_return(py, r, "call_soon()")
}

/// The `PyMethodDef` of `call_soon`, in a static.
struct Def(ffi::PyMethodDef);

// SAFETY: never mutated (CPython only reads a method definition); its
// pointers lead to static data and a function.
unsafe impl Sync for Def {}

static CALL_SOON: Def = Def(ffi::PyMethodDef {
    ml_name: c"call_soon".as_ptr(),
    ml_meth: ffi::PyMethodDefPointer { PyCFunctionFastWithKeywords: call_soon },
    ml_flags: ffi::METH_FASTCALL | ffi::METH_KEYWORDS,
    ml_doc: {
        const DOC: &CStr = c"call_soon($self, callback, *args, context=None)\n--\n\n";
        DOC.as_ptr()
    },
});

/// `core`'s `call_soon`, a built-in function bound to it (for the Python
/// loop's instance dict).
pub fn bound_call_soon<'py>(core: &Bound<'py, LoopCore>) -> PyResult<Bound<'py, PyAny>> {
    // SAFETY: the GIL is held (`core` is a `Bound`); the definition is
    // static and outlives the function, which holds a strong reference to
    // `core` (its `self`). The result is a new reference or NULL with an
    // exception set.
    unsafe {
        let f = ffi::PyCFunction_NewEx(
            &CALL_SOON.0 as *const ffi::PyMethodDef as *mut ffi::PyMethodDef,
            core.as_ptr(),
            ptr::null_mut(),
        );
        Bound::from_owned_ptr_or_err(core.py(), f)
    }
}
