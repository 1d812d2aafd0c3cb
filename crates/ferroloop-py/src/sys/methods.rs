//! Methods of the Python transport classes that forward to the instance's
//! `_core`: C-level method descriptors (`PyDescr_NewMethod`), so that a call
//! such as `transport.write(data)` costs no Python frame and no bound-method
//! object, and a transport holds nothing per method (bound methods in each
//! instance dict cost 72 bytes per method and transport).

use std::ffi::CStr;
use std::ptr;

use pyo3::exceptions::PyValueError;
use pyo3::ffi;
use pyo3::prelude::*;
use pyo3::types::{PyString, PyType};

/// Arguments forwarded without a heap allocation (the core's methods take at
/// most two).
const INLINE_ARGS: usize = 8;

/// `getattr(slf, "_core").<name>(*args, **kwargs)`, the arguments as CPython
/// passes them to a `METH_FASTCALL | METH_KEYWORDS` function.
///
/// # Safety
///
/// Called only by CPython through a method descriptor: the GIL is held,
/// `slf` is a live object, `args` points to `nargs` positional arguments
/// followed by one value per name of the tuple `kwnames` (or `kwnames` is
/// NULL), all live for the duration of the call.
unsafe fn forward(
    slf: *mut ffi::PyObject,
    args: *const *mut ffi::PyObject,
    nargs: ffi::Py_ssize_t,
    kwnames: *mut ffi::PyObject,
    core_name: &Bound<'_, PyString>,
    name: &Bound<'_, PyString>,
) -> *mut ffi::PyObject {
    // SAFETY: `slf` is live and the GIL is held (the caller's contract); the
    // result is a new reference or NULL with an exception set.
    let core = unsafe { ffi::PyObject_GetAttr(slf, core_name.as_ptr()) };
    if core.is_null() {
        return ptr::null_mut();
    }
    let nkw = if kwnames.is_null() {
        0
    } else {
        // SAFETY: a non-NULL `kwnames` is a tuple (the caller's contract).
        unsafe { ffi::PyTuple_GET_SIZE(kwnames) }
    };
    let total = (nargs + nkw) as usize;
    // The core first, then the arguments as they came.
    let mut inline = [ptr::null_mut::<ffi::PyObject>(); INLINE_ARGS + 1];
    let mut heap = Vec::new();
    let buf: &mut [*mut ffi::PyObject] = if total < INLINE_ARGS {
        &mut inline[..total + 1]
    } else {
        heap.resize(total + 1, ptr::null_mut());
        &mut heap[..]
    };
    buf[0] = core;
    if total > 0 {
        // SAFETY: `args` holds `nargs + nkw` valid pointers (the caller's
        // contract) and `buf[1..]` has room for exactly that many.
        unsafe { ptr::copy_nonoverlapping(args, buf[1..].as_mut_ptr(), total) };
    }
    // SAFETY: `buf` holds the core (a new reference owned here) and the
    // borrowed arguments, alive until the call returns; `kwnames` is passed
    // on unchanged, so the keyword values follow the positional ones as
    // vectorcall requires. The core is released after the call.
    unsafe {
        let r = ffi::PyObject_VectorcallMethod(name.as_ptr(), buf.as_ptr(), (nargs + 1) as usize, kwnames);
        ffi::Py_DECREF(core);
        r
    }
}

/// A `PyMethodDef` kept in a static.
struct Def {
    name: &'static str,
    def: ffi::PyMethodDef,
}

// SAFETY: a `Def` is never mutated (CPython only reads a method definition)
// and its pointers lead to static data (the name) and functions.
unsafe impl Sync for Def {}

macro_rules! forwarders {
    ($($attr:ident => $target:ident),* $(,)?) => {
        $(
            /// Forwards to the core's method of the same (or the mapped) name.
            ///
            /// # Safety
            ///
            /// A `METH_FASTCALL | METH_KEYWORDS` function: called only by
            /// CPython, with the GIL held (see `forward`).
            #[allow(non_snake_case)]
            unsafe extern "C" fn $attr(
                slf: *mut ffi::PyObject,
                args: *const *mut ffi::PyObject,
                nargs: ffi::Py_ssize_t,
                kwnames: *mut ffi::PyObject,
            ) -> *mut ffi::PyObject {
                // SAFETY: CPython calls this with the GIL held.
                let py = unsafe { Python::assume_attached() };
                let core_name = pyo3::intern!(py, "_core");
                let name = pyo3::intern!(py, stringify!($target));
                // SAFETY: the arguments are CPython's (see `forward`).
                unsafe { forward(slf, args, nargs, kwnames, core_name, name) }
            }
        )*

        /// One definition per forwarding method.
        static DEFS: &[Def] = &[
            $(
                Def {
                    name: stringify!($attr),
                    def: ffi::PyMethodDef {
                        ml_name: {
                            const NAME: &CStr = match CStr::from_bytes_with_nul(concat!(stringify!($attr), "\0").as_bytes()) {
                                Ok(n) => n,
                                Err(_) => panic!("method name with a NUL byte"),
                            };
                            NAME.as_ptr()
                        },
                        ml_meth: ffi::PyMethodDefPointer { PyCFunctionFastWithKeywords: $attr },
                        ml_flags: ffi::METH_FASTCALL | ffi::METH_KEYWORDS,
                        ml_doc: ptr::null(),
                    },
                },
            )*
        ];
    };
}

forwarders! {
    write => write,
    writelines => writelines,
    write_eof => write_eof,
    can_write_eof => can_write_eof,
    sendto => sendto,
    close => close,
    abort => abort,
    is_closing => is_closing,
    is_reading => is_reading,
    pause_reading => pause_reading,
    resume_reading => resume_reading,
    get_write_buffer_size => get_write_buffer_size,
    get_write_buffer_limits => get_write_buffer_limits,
    set_write_buffer_limits => set_write_buffer_limits,
    get_protocol => get_protocol,
    set_protocol => set_protocol,
    _force_close => force_close,
}

/// A method descriptor of `cls` named `name` that calls the same-named
/// method of the instance's `_core` (`_force_close` calls `force_close`).
/// Only the names of the transports' core methods are known.
pub fn core_method<'py>(cls: &Bound<'py, PyType>, name: &str) -> PyResult<Bound<'py, PyAny>> {
    let Some(d) = DEFS.iter().find(|d| d.name == name) else {
        return Err(PyValueError::new_err(format!("no core method named {name:?}")));
    };
    // SAFETY: the GIL is held (`cls` is a `Bound`), `cls` is a live type and
    // `d.def` is a static definition that outlives the descriptor; CPython
    // never writes through the pointer. The result is a new reference or
    // NULL with an exception set.
    unsafe {
        let p = ffi::PyDescr_NewMethod(cls.as_type_ptr(), &d.def as *const ffi::PyMethodDef as *mut ffi::PyMethodDef);
        Bound::from_owned_ptr_or_err(cls.py(), p)
    }
}
