//! Methods of the Python transport classes that forward to the instance's
//! `_core`: C-level method descriptors (`PyDescr_NewMethod`), so that a call
//! such as `transport.write(data)` costs no Python frame and no bound-method
//! object, and a transport holds nothing per method (bound methods in each
//! instance dict cost 72 bytes per method and transport).

use std::ffi::CStr;
use std::ptr;
use std::sync::atomic::{AtomicIsize, AtomicUsize, Ordering};

use pyo3::exceptions::{PyTypeError, PyValueError};
use pyo3::ffi;
use pyo3::prelude::*;
use pyo3::types::{PyBool, PyString, PyType};
use pyo3::IntoPyObjectExt;
use pyo3::PyTypeInfo;

use crate::transport::stream::StreamCore;

/// Arguments forwarded without a heap allocation (the core's methods take at
/// most two).
const INLINE_ARGS: usize = 8;

/// `getattr(slf, "_core")`: a new reference, or NULL with an exception set.
///
/// # Safety
///
/// The GIL is held and `slf` is a live object.
unsafe fn core_of(slf: *mut ffi::PyObject, core_name: &Bound<'_, PyString>) -> *mut ffi::PyObject {
    // SAFETY: `slf` is live and the GIL is held (the caller's contract).
    let tp = unsafe { ffi::Py_TYPE(slf) };
    let slot = core_slot_offset(tp);
    // Noting a new type runs a lookup (Python code); the type must still be
    // `slf`'s after it.
    // SAFETY: as above.
    if let (Some(offset), true) = (slot, unsafe { ffi::Py_TYPE(slf) } == tp) {
        // SAFETY: `offset` was recorded for exactly `slf`'s type, after
        // checking that `_core` on that type resolves to a member descriptor
        // of one of its bases (`note_core_slot`): every instance of the type
        // has that slot at `offset`, and instance attribute lookup would
        // find that very descriptor. A slot holds a strong reference or NULL
        // (unset). The GIL is held.
        unsafe {
            let core = *(slf as *mut u8).offset(offset).cast::<*mut ffi::PyObject>();
            if !core.is_null() {
                ffi::Py_INCREF(core);
                return core;
            }
        }
    }
    // No slot, or not set: the generic lookup (and its AttributeError).
    // SAFETY: `slf` is live and the GIL is held (the caller's contract);
    // the result is a new reference or NULL with an exception set.
    unsafe { ffi::PyObject_GetAttr(slf, core_name.as_ptr()) }
}

/// A transport method as Python sees it: its name and its parameters after
/// `self`, as in its text signature (`"data, addr=None"`).
struct Signature {
    name: &'static str,
    params: &'static str,
}

/// `getattr(slf, "_core").<name>(*args, **kwargs)`, the arguments as CPython
/// passes them to a `METH_FASTCALL | METH_KEYWORDS` function. Arguments that
/// do not fit `sig` raise the `TypeError` of a Python method (the core's
/// own names the core's class and counts without `self`).
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
    sig: &Signature,
) -> *mut ffi::PyObject {
    // SAFETY: the caller's contract.
    let core = unsafe { core_of(slf, core_name) };
    if core.is_null() {
        return ptr::null_mut();
    }
    // SAFETY: `core` is a new reference, the rest the caller's contract.
    let r = unsafe { call_core(core, args, nargs, kwnames, name) };
    if r.is_null() {
        let py = name.py();
        // The core's methods take the same parameters (a few with more
        // defaults), so a call that does not fit `sig` failed in the core's
        // argument parsing, before doing anything: only the text changes.
        let e = PyErr::fetch(py);
        if e.is_instance_of::<PyTypeError>(py) {
            // SAFETY: `slf` is live and `kwnames` a tuple or NULL (the
            // caller's contract); new references are taken for the `Bound`s.
            let (slf, kwnames) = unsafe {
                (Bound::from_borrowed_ptr(py, slf), Bound::from_borrowed_ptr_or_opt(py, kwnames))
            };
            if let Some(fitted) = argument_error(&slf, sig, nargs as usize, kwnames.as_ref()) {
                fitted.restore(py);
                return ptr::null_mut();
            }
        }
        e.restore(py);
    }
    r
}

/// `core.<name>(*args, **kwargs)`, then release `core`.
///
/// # Safety
///
/// As `forward`; `core` is a new reference (owned, released here).
unsafe fn call_core(
    core: *mut ffi::PyObject,
    args: *const *mut ffi::PyObject,
    nargs: ffi::Py_ssize_t,
    kwnames: *mut ffi::PyObject,
    name: &Bound<'_, PyString>,
) -> *mut ffi::PyObject {
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

/// A transport method called with `arity` positional arguments (0 or 1)
/// and no keywords on an instance whose `_core` is exactly a `StreamCore`:
/// `direct` calls the core's Rust method (no method lookup, no argument
/// parsing); any other call goes the generic way (`forward`), to the core's
/// method `name`. `direct` gets the argument (`None` for none) and returns
/// a new reference.
///
/// # Safety
///
/// As `forward`.
unsafe fn forward_direct(
    slf: *mut ffi::PyObject,
    args: *const *mut ffi::PyObject,
    nargs: ffi::Py_ssize_t,
    kwnames: *mut ffi::PyObject,
    name: &Bound<'_, PyString>,
    arity: ffi::Py_ssize_t,
    sig: &Signature,
    direct: impl for<'py> FnOnce(&StreamCore, &Bound<'py, PyAny>) -> PyResult<Bound<'py, PyAny>>,
) -> *mut ffi::PyObject {
    let py = name.py();
    let core_name = pyo3::intern!(py, "_core");
    if nargs != arity || !kwnames.is_null() {
        // SAFETY: the arguments are CPython's (see `forward`).
        return unsafe { forward(slf, args, nargs, kwnames, core_name, name, sig) };
    }
    // SAFETY: as above.
    let core = unsafe { core_of(slf, core_name) };
    if core.is_null() {
        return ptr::null_mut();
    }
    // SAFETY: `core` is a live object whose reference this function owns
    // (the type check reads only its type).
    if unsafe { ffi::Py_TYPE(core) } != StreamCore::type_object_raw(py) {
        // SAFETY: `core` is a new reference, the rest CPython's arguments.
        return unsafe { call_core(core, args, nargs, kwnames, name) };
    }
    // SAFETY: `core` is a new reference (owned by the `Bound` from here),
    // of exactly the type `StreamCore` (checked above); with `arity` 1,
    // `args[0]` is a live argument borrowed for the call (a new reference
    // is taken for the `Bound`).
    let (core, arg) = unsafe {
        let core = Bound::from_owned_ptr(py, core);
        let arg = if arity == 1 { Bound::from_borrowed_ptr(py, *args) } else { py.None().into_bound(py) };
        (core.cast_into_unchecked::<StreamCore>(), arg)
    };
    let r = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
        core.try_borrow().map_err(PyErr::from).and_then(|c| direct(&c, &arg)).map(Bound::into_ptr)
    }));
    super::ffi_return(py, r, "a transport method")
}

/// The `TypeError` a Python method `def <sig.name>(self, <sig.params>)` of
/// `slf`'s class raises when called with `nargs` positional arguments and
/// the keywords named in `kwnames`, or `None` if they fit. As CPython, it
/// names the class that defines the method (the first in the MRO).
fn argument_error(
    slf: &Bound<'_, PyAny>,
    sig: &Signature,
    nargs: usize,
    kwnames: Option<&Bound<'_, PyAny>>,
) -> Option<PyErr> {
    let keywords: Vec<String> = match kwnames {
        Some(names) => names.try_iter().ok()?.map(|n| Ok(n?.to_string())).collect::<PyResult<_>>().ok()?,
        None => Vec::new(),
    };
    let message = mismatch(sig.params, nargs, &keywords)?;
    let tp = slf.get_type();
    let dict = pyo3::intern!(slf.py(), "__dict__");
    let owner = tp.mro().iter().find(|c| c.getattr(dict).and_then(|d| d.contains(sig.name)).unwrap_or(false));
    let class = match owner.as_ref().map(|c| c.cast::<PyType>()) {
        Some(Ok(c)) => c.qualname(),
        _ => tp.qualname(),
    };
    let class = class.map(|c| c.to_string()).unwrap_or_default();
    Some(PyTypeError::new_err(format!("{class}.{}() {message}", sig.name)))
}

/// What CPython says of a call of a Python function whose parameters are
/// `self` then `params` (its text signature: names, `=None` on those with a
/// default, which come last) with `nargs` positional arguments besides
/// `self` and the keyword arguments `keywords`; `None` if they fit. As
/// CPython, keywords are checked first, then the number of positional
/// arguments, then what is missing; counts include `self`.
fn mismatch(params: &str, nargs: usize, keywords: &[String]) -> Option<String> {
    let params: Vec<(&str, bool)> = params
        .split(", ")
        .filter(|p| !p.is_empty())
        .map(|p| p.split_once('=').map_or((p, false), |(name, _)| (name, true)))
        .collect();
    let mut given: Vec<bool> = (0..params.len()).map(|i| i < nargs).collect();
    for kw in keywords {
        match params.iter().position(|(name, _)| name == kw) {
            None => return Some(format!("got an unexpected keyword argument '{kw}'")),
            Some(i) if given[i] => return Some(format!("got multiple values for argument '{kw}'")),
            Some(i) => given[i] = true,
        }
    }
    let (most, defaults) = (params.len() + 1, params.iter().filter(|(_, default)| *default).count());
    if nargs + 1 > most {
        let takes = match defaults {
            0 if most == 1 => "1 positional argument".to_string(),
            0 => format!("{most} positional arguments"),
            _ => format!("from {} to {most} positional arguments", most - defaults),
        };
        return Some(format!("takes {takes} but {} were given", nargs + 1));
    }
    let missing: Vec<String> = params
        .iter()
        .zip(&given)
        .filter(|((_, default), given)| !default && !**given)
        .map(|((name, _), _)| format!("'{name}'"))
        .collect();
    let names = match missing.as_slice() {
        [] => return None,
        [one] => one.clone(),
        [first, second] => format!("{first} and {second}"),
        [rest @ .., last] => format!("{}, and {last}", rest.join(", ")),
    };
    let plural = if missing.len() == 1 { "" } else { "s" };
    Some(format!("missing {} required positional argument{plural}: {names}", missing.len()))
}

/// `None`, for the direct calls of methods that return nothing.
fn none<'py>(arg: &Bound<'py, PyAny>) -> Bound<'py, PyAny> {
    arg.py().None().into_bound(arg.py())
}

/// A `METH_FASTCALL | METH_KEYWORDS` function named `$attr` whose body
/// `$call` gets CPython's arguments and the `Python` token.
macro_rules! method_fn {
    ($attr:ident, |$py:ident, $slf:ident, $args:ident, $nargs:ident, $kwnames:ident| $call:expr) => {
        /// Forwards to the instance's core (see `forward` and `forward_direct`).
        ///
        /// # Safety
        ///
        /// A `METH_FASTCALL | METH_KEYWORDS` function: called only by
        /// CPython, with the GIL held (see `forward`).
        #[allow(non_snake_case)]
        unsafe extern "C" fn $attr(
            $slf: *mut ffi::PyObject,
            $args: *const *mut ffi::PyObject,
            $nargs: ffi::Py_ssize_t,
            $kwnames: *mut ffi::PyObject,
        ) -> *mut ffi::PyObject {
            // SAFETY: CPython calls this with the GIL held.
            let $py = unsafe { Python::assume_attached() };
            // SAFETY: the arguments are CPython's (see `forward`).
            unsafe { $call }
        }
    };
}

macro_rules! direct_forwarders {
    ($($attr:ident ($arity:literal $(, $param:literal)?) => |$core:ident, $arg:ident| $body:expr),* $(,)?) => {
        $(
            method_fn!($attr, |py, slf, args, nargs, kwnames| {
                let name = pyo3::intern!(py, stringify!($attr));
                let sig = Signature { name: stringify!($attr), params: concat!("" $(, $param)?) };
                forward_direct(slf, args, nargs, kwnames, name, $arity, &sig, |$core: &StreamCore, $arg: &Bound<'_, PyAny>| $body)
            });
        )*
    };
}

// The methods that protocols and streams call per message or per read.
direct_forwarders! {
    write(1, "data") => |c, data| c.write(data).map(|()| none(data)),
    writelines(1, "list_of_data") => |c, list| c.writelines(list.py(), list).map(|()| none(list)),
    is_closing(0) => |c, a| c.is_closing().map(|b| PyBool::new(a.py(), b).to_owned().into_any()),
    is_reading(0) => |c, a| c.is_reading().map(|b| PyBool::new(a.py(), b).to_owned().into_any()),
    pause_reading(0) => |c, a| c.pause_reading().map(|()| none(a)),
    resume_reading(0) => |c, a| c.resume_reading().map(|()| none(a)),
    get_write_buffer_size(0) => |c, a| c.get_write_buffer_size().and_then(|n| n.into_bound_py_any(a.py())),
}

/// Types of transports, with the offset of their instances' `_core` slot
/// (`NO_SLOT`: checked, no usable slot): the forwarders read the core
/// without a lookup. A handful of entries (one per transport class, made on
/// its first forwarded call), written with the GIL held; each holds a strong
/// reference to its type, so an address is never reused for another.
const MAX_SLOT_CLASSES: usize = 8;
const NO_SLOT: ffi::Py_ssize_t = -1;
static CORE_SLOT_CLASSES: [AtomicUsize; MAX_SLOT_CLASSES] = [const { AtomicUsize::new(0) }; MAX_SLOT_CLASSES];
static CORE_SLOT_OFFSETS: [AtomicIsize; MAX_SLOT_CLASSES] = [const { AtomicIsize::new(0) }; MAX_SLOT_CLASSES];

/// The offset of the `_core` slot of instances of exactly `tp`, noting the
/// type first if it is new.
#[inline]
fn core_slot_offset(tp: *mut ffi::PyTypeObject) -> Option<ffi::Py_ssize_t> {
    for (i, c) in CORE_SLOT_CLASSES.iter().enumerate() {
        match c.load(Ordering::Acquire) {
            0 => break,
            k if k == tp as usize => {
                let off = CORE_SLOT_OFFSETS[i].load(Ordering::Relaxed);
                return (off != NO_SLOT).then_some(off);
            }
            _ => {}
        }
    }
    note_core_slot(tp)
}

/// Check where `_core` of instances of `tp` lives and note it (if the table
/// has room): a `__slots__` member of `tp` or of a base of `tp`, found by
/// the same lookup as an instance attribute's (a data descriptor wins over
/// the instance dict), or `NO_SLOT`.
#[cold]
fn note_core_slot(tp: *mut ffi::PyTypeObject) -> Option<ffi::Py_ssize_t> {
    // SAFETY: called from a forwarder, with the GIL held.
    let py = unsafe { Python::assume_attached() };
    // SAFETY: `tp` is the live type of a live object (the forwarder's `slf`).
    let cls = unsafe { Bound::from_borrowed_ptr(py, tp.cast::<ffi::PyObject>()) };
    let offset = match cls.getattr(pyo3::intern!(py, "_core")) {
        Ok(member) => member_slot_offset(&member, tp).unwrap_or(NO_SLOT),
        Err(_) => NO_SLOT,
    };
    // Entries are written with the GIL held, so never concurrently; readers
    // see the offset before the type (Release).
    for (i, c) in CORE_SLOT_CLASSES.iter().enumerate() {
        if c.load(Ordering::Acquire) == 0 {
            // The type stays alive for good: its address stays its own.
            std::mem::forget(cls.clone().unbind());
            CORE_SLOT_OFFSETS[i].store(offset, Ordering::Relaxed);
            c.store(tp as usize, Ordering::Release);
            break;
        }
    }
    (offset != NO_SLOT).then_some(offset)
}

/// The instance offset of `member` if it is an object slot (`__slots__`
/// member) of `tp` or of one of its bases.
fn member_slot_offset(member: &Bound<'_, PyAny>, tp: *mut ffi::PyTypeObject) -> Option<ffi::Py_ssize_t> {
    // SAFETY: the GIL is held; PyObject_TypeCheck only reads types.
    let is_member = unsafe { ffi::PyObject_TypeCheck(member.as_ptr(), std::ptr::addr_of_mut!(ffi::PyMemberDescr_Type)) } != 0;
    if !is_member {
        return None;
    }
    // SAFETY: `member` is a member descriptor (checked), so it is a
    // `PyMemberDescrObject`: `d_type` is the type that defines the slot and
    // `d_member` its definition, both alive as long as the descriptor.
    let (owner, type_code, offset) = unsafe {
        let d = &*(member.as_ptr() as *const ffi::PyMemberDescrObject);
        (d.d_common.d_type, (*d.d_member).type_code, (*d.d_member).offset)
    };
    // SAFETY: both are live types; PyType_IsSubtype only reads them.
    let inherits = unsafe { ffi::PyType_IsSubtype(tp, owner) } != 0;
    (inherits && type_code == ffi::Py_T_OBJECT_EX && offset > 0).then_some(offset)
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
    (direct { $($dattr:ident ($($dparams:literal)?)),* $(,)? }
     $($attr:ident => $target:ident ($($params:literal)?)),* $(,)?) => {
        $(
            method_fn!($attr, |py, slf, args, nargs, kwnames| {
                let core_name = pyo3::intern!(py, "_core");
                let sig = Signature { name: stringify!($attr), params: concat!("" $(, $params)?) };
                forward(slf, args, nargs, kwnames, core_name, pyo3::intern!(py, stringify!($target)), &sig)
            });
        )*

        /// One definition per forwarding method.
        static DEFS: &[Def] = &[
            $(forwarders!(@def $dattr ($($dparams)?)),)*
            $(forwarders!(@def $attr ($($params)?)),)*
        ];
    };
    (@def $attr:ident ($($params:literal)?)) => {
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
                        // The text signature `inspect.signature` reads, as asyncio's.
                        ml_doc: {
                            const DOC: &CStr = match CStr::from_bytes_with_nul(
                                concat!(stringify!($attr), "($self", $(", ", $params,)? ")\n--\n\n\0").as_bytes(),
                            ) {
                                Ok(d) => d,
                                Err(_) => panic!("text signature with a NUL byte"),
                            };
                            DOC.as_ptr()
                        },
                    },
                }
    };
}

forwarders! {
    // Defined above (`direct_forwarders`): direct calls for the hot paths.
    direct {
        write("data"),
        writelines("list_of_data"),
        is_closing(),
        is_reading(),
        pause_reading(),
        resume_reading(),
        get_write_buffer_size(),
    }
    write_eof => write_eof(),
    can_write_eof => can_write_eof(),
    sendto => sendto("data, addr=None"),
    close => close(),
    abort => abort(),
    get_write_buffer_limits => get_write_buffer_limits(),
    set_write_buffer_limits => set_write_buffer_limits("high=None, low=None"),
    get_protocol => get_protocol(),
    set_protocol => set_protocol("protocol"),
    _force_close => force_close("exc"),
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
