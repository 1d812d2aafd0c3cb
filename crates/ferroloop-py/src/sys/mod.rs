//! The binding's `unsafe` code, each block with a `// SAFETY:` comment.

use pyo3::buffer::PyBuffer;
use pyo3::ffi;
use pyo3::Python;

pub mod call_soon;
pub mod methods;

/// What a C-level function (called by CPython directly, not through PyO3)
/// returns for the outcome of its body run under `catch_unwind`: the new
/// reference, or NULL with the error set; a panic becomes a
/// `PanicException` (`what` names the function) instead of unwinding into
/// CPython.
pub fn ffi_return(
    py: Python<'_>,
    outcome: std::thread::Result<pyo3::PyResult<*mut ffi::PyObject>>,
    what: &str,
) -> *mut ffi::PyObject {
    match outcome {
        Ok(Ok(p)) => p,
        Ok(Err(e)) => {
            e.restore(py);
            std::ptr::null_mut()
        }
        Err(payload) => {
            let msg = payload
                .downcast_ref::<&str>()
                .map(|s| s.to_string())
                .or_else(|| payload.downcast_ref::<String>().cloned())
                .unwrap_or_else(|| format!("panic in {what}"));
            pyo3::panic::PanicException::new_err(msg).restore(py);
            std::ptr::null_mut()
        }
    }
}

/// A writable, C-contiguous byte buffer borrowed from a Python object (the
/// result of a `BufferedProtocol.get_buffer()` call).
pub struct WritableBuffer {
    buf: PyBuffer<u8>,
}

impl WritableBuffer {
    /// Check that `buf` is writable and contiguous.
    pub fn new(buf: PyBuffer<u8>) -> Result<Self, &'static str> {
        if buf.readonly() {
            return Err("get_buffer() returned a read-only buffer");
        }
        if !buf.is_c_contiguous() {
            return Err("get_buffer() returned a non-contiguous buffer");
        }
        Ok(WritableBuffer { buf })
    }

    /// The buffer's bytes, for the engine to read into.
    pub fn as_mut_slice(&mut self) -> &mut [u8] {
        let len = self.buf.len_bytes();
        if len == 0 {
            return &mut [];
        }
        // SAFETY: the exporter guarantees `buf_ptr` points to `len_bytes`
        // writable (checked: not read-only), contiguous (checked) bytes that
        // stay valid while the `PyBuffer` (held by `self`) is alive. The slice
        // borrows `self` mutably, so it cannot outlive the buffer, and the
        // engine fills it while holding the GIL: no Python code runs meanwhile.
        unsafe { std::slice::from_raw_parts_mut(self.buf.buf_ptr() as *mut u8, len) }
    }
}

/// A C-contiguous byte buffer of a Python object (`bytearray`,
/// `memoryview`), lent to the engine's `write_lent` for one call.
pub struct LentBuffer {
    buf: PyBuffer<u8>,
}

impl LentBuffer {
    /// `buf`, if it is C-contiguous (others are copied by the caller).
    pub fn new(buf: PyBuffer<u8>) -> Option<Self> {
        buf.is_c_contiguous().then_some(LentBuffer { buf })
    }
}

impl ferroloop::LentBytes for LentBuffer {
    fn lend<R>(&self, f: impl FnOnce(&[u8]) -> R) -> R {
        let len = self.buf.len_bytes();
        if len == 0 {
            return f(&[]);
        }
        // SAFETY: the exporter guarantees `buf_ptr` points to `len_bytes`
        // contiguous (checked in `new`) bytes that stay valid, and cannot be
        // resized, while the `PyBuffer` (held by `self`) is alive. The slice
        // lives only during `f`, which the caller runs with the GIL held
        // (`LentBuffer` is built from a `Bound`, and the write path never
        // detaches), and the engine's `write_lent` calls no Python code inside
        // `lend`: no Python code can change the bytes while the slice lives.
        f(unsafe { std::slice::from_raw_parts(self.buf.buf_ptr() as *const u8, len) })
    }
}

/// A `contextvars.Context` entered for the duration of a protocol callback
/// (what `Context.run` does, without building an argument tuple).
pub struct EnteredContext<'py> {
    ctx: pyo3::Bound<'py, pyo3::PyAny>,
}

impl<'py> EnteredContext<'py> {
    /// Enter `ctx`, which must be a `contextvars.Context`. Fails like
    /// `Context.run` if the context is already entered.
    pub fn enter(ctx: pyo3::Bound<'py, pyo3::PyAny>) -> pyo3::PyResult<Self> {
        // SAFETY: the GIL is held (we have a `Bound<'py>`); PyContext_CheckExact
        // only reads the object's type.
        if unsafe { pyo3::ffi::PyContext_CheckExact(ctx.as_ptr()) } == 0 {
            return Err(pyo3::exceptions::PyTypeError::new_err("an instance of Context was expected"));
        }
        // SAFETY: `ctx` is a live Context (checked above) and the GIL is held.
        if unsafe { pyo3::ffi::PyContext_Enter(ctx.as_ptr()) } != 0 {
            return Err(pyo3::PyErr::fetch(ctx.py()));
        }
        Ok(EnteredContext { ctx })
    }
}

impl Drop for EnteredContext<'_> {
    fn drop(&mut self) {
        // SAFETY: `enter` succeeded on this same context, which `self` keeps
        // alive, and the GIL is still held (the `'py` lifetime). Exiting a
        // context we entered cannot fail; if it did, the error is reported
        // as unraisable rather than lost.
        if unsafe { pyo3::ffi::PyContext_Exit(self.ctx.as_ptr()) } != 0 {
            pyo3::PyErr::fetch(self.ctx.py()).write_unraisable(self.ctx.py(), None);
        }
    }
}

/// An engine value (`Rc`-based, so neither `Send` nor `Sync`) held by a
/// Python object, which Python may touch from any thread.
///
/// Every access happens inside a `#[pymethods]` call or a `tp_dealloc`/GC
/// slot, which PyO3 runs with the GIL held (this module is not declared
/// free-threading safe, so the interpreter always has a GIL). The GIL
/// serialises those accesses and its acquire/release orders their memory
/// effects, so the value is never used by two threads at once. A loop made
/// on one thread may thus be run on another, as in asyncio.
pub struct GilBound<T> {
    value: T,
}

// SAFETY: see the type's documentation: all uses are serialised by the GIL.
unsafe impl<T> Send for GilBound<T> {}
// SAFETY: as above; shared references are only used while the GIL is held.
unsafe impl<T> Sync for GilBound<T> {}

impl<T> GilBound<T> {
    /// Wrap `value` (called with the GIL held).
    pub fn new(value: T) -> Self {
        GilBound { value }
    }

    /// The value (callers hold the GIL: they are PyO3 methods).
    pub fn get(&self) -> &T {
        &self.value
    }
}

/// Duplicate descriptor `fd` (close-on-exec); the copy is owned by the caller.
pub fn dup_fd(fd: i32) -> std::io::Result<std::os::fd::OwnedFd> {
    use std::os::fd::FromRawFd;
    // SAFETY: F_DUPFD_CLOEXEC creates a new descriptor and touches no memory;
    // an invalid `fd` only makes it fail with EBADF.
    let rc = unsafe { libc::fcntl(fd, libc::F_DUPFD_CLOEXEC, 0) };
    if rc < 0 {
        return Err(std::io::Error::last_os_error());
    }
    // SAFETY: `rc` is the descriptor fcntl just created; nothing else owns it.
    Ok(unsafe { std::os::fd::OwnedFd::from_raw_fd(rc) })
}

/// `contextvars.copy_context()`.
pub fn copy_context(py: pyo3::Python<'_>) -> pyo3::PyResult<pyo3::Py<pyo3::PyAny>> {
    // SAFETY: the GIL is held (`py`); PyContext_CopyCurrent returns a new
    // reference or NULL with an exception set, which from_owned_ptr_or_err
    // takes over.
    unsafe {
        let p = pyo3::ffi::PyContext_CopyCurrent();
        pyo3::Bound::from_owned_ptr_or_err(py, p).map(pyo3::Bound::unbind)
    }
}

/// The engine's stream socket on the Python transport's own descriptor (no
/// duplicate: one descriptor per connection).
pub fn borrow_stream_socket(fd: std::os::fd::RawFd) -> std::io::Result<ferroloop::StreamSocket> {
    // SAFETY: `fd` belongs to the Python transport the engine transport is
    // made for (through its `socket` object, or bare for an accepted
    // connection whose object is made on request), and only that
    // transport's `_finish()` closes it: after `connection_lost`, which the
    // engine delivers once it has let go of the descriptor (or after
    // `close_socket()` in the finalizer). Until then the descriptor stays
    // open.
    unsafe { ferroloop::StreamSocket::borrow_raw(fd) }
}
