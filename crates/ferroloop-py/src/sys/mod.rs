//! The binding's `unsafe` code, each block with a `// SAFETY:` comment.

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

/// The bytes of a Python object's buffer, exported with `PyBUF_SIMPLE`
/// (plus `PyBUF_WRITABLE` when asked): C-contiguous unsigned bytes whatever
/// the exporter's item format, the request `socket.send` and
/// `socket.recv_into` make. The exporter fills no shape or strides for it,
/// and no format string is parsed.
///
/// # Safety
///
/// `view` must be valid for writes of a `Py_buffer`, and the GIL held. On
/// success the export must be released with `PyBuffer_Release` on that same
/// address; on failure the Python error is cleared and false returned.
unsafe fn export_bytes(obj: &pyo3::Bound<'_, pyo3::PyAny>, view: *mut ffi::Py_buffer, writable: bool) -> bool {
    let flags = if writable { ffi::PyBUF_WRITABLE } else { ffi::PyBUF_SIMPLE };
    // SAFETY: the caller guarantees `view` is writable storage and the GIL is
    // held; `obj` is a live object.
    if unsafe { ffi::PyObject_GetBuffer(obj.as_ptr(), view, flags) } == 0 {
        return true;
    }
    // SAFETY: the GIL is held; the failed export set an error, cleared here.
    unsafe { ffi::PyErr_Clear() };
    false
}

/// Room for one [`LentBuffer`] export, on the caller's stack: the export's
/// `Py_buffer` stays at this address until the lent buffer is dropped.
pub struct BufferSlot(std::mem::MaybeUninit<ffi::Py_buffer>);

impl BufferSlot {
    /// An empty slot.
    pub fn new() -> Self {
        BufferSlot(std::mem::MaybeUninit::uninit())
    }
}

impl Default for BufferSlot {
    fn default() -> Self {
        Self::new()
    }
}

/// The contiguous bytes of a `bytearray`/`memoryview` (any item format),
/// lent to the engine's `write_lent` for one call; released on drop.
pub struct LentBuffer<'a, 'py> {
    view: &'a mut ffi::Py_buffer,
    _gil: std::marker::PhantomData<Python<'py>>,
}

impl<'a, 'py> LentBuffer<'a, 'py> {
    /// Export `obj`'s bytes into `slot`, or None if it has no C-contiguous
    /// byte view (the caller copies those another way).
    pub fn export(obj: &pyo3::Bound<'py, pyo3::PyAny>, slot: &'a mut BufferSlot) -> Option<Self> {
        // SAFETY: `slot` is storage for a `Py_buffer` that the returned value
        // borrows, so it stays at this address until `drop` releases the
        // export; the GIL is held (`obj` is a `Bound<'py>`).
        if !unsafe { export_bytes(obj, slot.0.as_mut_ptr(), false) } {
            return None;
        }
        // SAFETY: `PyObject_GetBuffer` succeeded, so it initialised the view.
        let view = unsafe { slot.0.assume_init_mut() };
        Some(LentBuffer { view, _gil: std::marker::PhantomData })
    }
}

impl ferroloop::LentBytes for LentBuffer<'_, '_> {
    fn lend<R>(&self, f: impl FnOnce(&[u8]) -> R) -> R {
        let len = usize::try_from(self.view.len).unwrap_or(0);
        if len == 0 || self.view.buf.is_null() {
            return f(&[]);
        }
        // SAFETY: a `PyBUF_SIMPLE` export is `len` contiguous bytes at `buf`
        // that stay valid, and cannot be resized, until the export is
        // released in `drop`. The slice lives only during `f`, which runs
        // with the GIL held (the `'py` lifetime; the write path never
        // detaches), and the engine's `write_lent` calls no Python code inside
        // `lend`: nothing can change the bytes while the slice lives.
        f(unsafe { std::slice::from_raw_parts(self.view.buf as *const u8, len) })
    }
}

impl Drop for LentBuffer<'_, '_> {
    fn drop(&mut self) {
        // SAFETY: the view holds a successful export made at this address
        // (the slot cannot move while borrowed), released exactly once here,
        // with the GIL held (the `'py` lifetime).
        unsafe { ffi::PyBuffer_Release(self.view) };
    }
}

/// A writable, C-contiguous byte buffer borrowed from a Python object (the
/// result of a `BufferedProtocol.get_buffer()` call), for the engine to read
/// into. Its `Py_buffer` is boxed once and reused by every export, so that
/// the export's address is stable and a read allocates nothing (and the
/// owner's field is one pointer: a protocol that is not buffered has none).
pub struct WritableBuffer(Box<Export>);

struct Export {
    view: std::mem::MaybeUninit<ffi::Py_buffer>,
    held: bool,
}

impl WritableBuffer {
    /// A buffer holding no export.
    pub fn new() -> Self {
        WritableBuffer(Box::new(Export { view: std::mem::MaybeUninit::uninit(), held: false }))
    }

    /// Release the previous export, then export `obj`'s bytes writable and
    /// C-contiguous (`PyBUF_WRITABLE`, any item format, as
    /// `socket.recv_into` accepts). False if `obj` has no such buffer
    /// (read-only, not contiguous, or no buffer at all).
    pub fn export(&mut self, obj: &pyo3::Bound<'_, pyo3::PyAny>) -> bool {
        self.release();
        let e = &mut *self.0;
        // SAFETY: the boxed storage does not move while the export is held
        // (the box is never replaced) and is released before reuse
        // (`release` above); the GIL is held (`obj` is a `Bound`).
        e.held = unsafe { export_bytes(obj, e.view.as_mut_ptr(), true) };
        e.held
    }

    /// The exported bytes (empty when nothing is held).
    pub fn as_mut_slice(&mut self) -> &mut [u8] {
        let e = &mut *self.0;
        if !e.held {
            return &mut [];
        }
        // SAFETY: `held` means the export succeeded and initialised the view.
        let view = unsafe { e.view.assume_init_ref() };
        let len = usize::try_from(view.len).unwrap_or(0);
        if len == 0 || view.buf.is_null() {
            return &mut [];
        }
        // SAFETY: a writable simple export is `len` writable, contiguous bytes
        // at `buf`, valid until the export is released. The slice borrows
        // `self` mutably, so no release can happen while it lives, and the
        // engine fills it holding the GIL: no Python code runs meanwhile.
        unsafe { std::slice::from_raw_parts_mut(view.buf as *mut u8, len) }
    }

    /// Release the export, if one is held.
    pub fn release(&mut self) {
        if self.0.held {
            Python::attach(|py| self.release_in(py));
        }
    }

    /// [`WritableBuffer::release`] for a caller that holds the GIL already.
    pub fn release_in(&mut self, _py: Python<'_>) {
        let e = &mut *self.0;
        if !e.held {
            return;
        }
        e.held = false;
        // SAFETY: the view holds a successful export made at this boxed
        // address, released once (`held` is now false), with the GIL held
        // (the `Python` token).
        unsafe { ffi::PyBuffer_Release(e.view.as_mut_ptr()) }
    }
}

impl Default for WritableBuffer {
    fn default() -> Self {
        Self::new()
    }
}

impl Drop for WritableBuffer {
    fn drop(&mut self) {
        self.release();
    }
}

/// Whether `obj` is a `contextvars.Context` (a final type: no subclasses).
pub fn is_context(obj: &pyo3::Bound<'_, pyo3::PyAny>) -> bool {
    // SAFETY: the GIL is held (we have a `Bound`); PyContext_CheckExact only
    // reads the object's type.
    unsafe { pyo3::ffi::PyContext_CheckExact(obj.as_ptr()) != 0 }
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
        enter_context(&ctx)?;
        Ok(EnteredContext { ctx })
    }
}

impl Drop for EnteredContext<'_> {
    fn drop(&mut self) {
        exit_context(&self.ctx);
    }
}

/// A `contextvars.Context` entered by one call and exited by a later one on
/// the same thread, with no other Python code of the loop in between: a
/// buffered read's `get_buffer` ... `buffer_updated`, which asyncio runs in
/// one handle, so in one entry of the context.
#[derive(Default)]
pub struct HeldContext(Option<pyo3::Py<pyo3::PyAny>>);

impl HeldContext {
    /// Enter `ctx` (a `contextvars.Context`) until [`HeldContext::exit`];
    /// fails like `Context.run` if it is entered already. A context held
    /// before is exited first.
    pub fn enter(&mut self, ctx: pyo3::Bound<'_, pyo3::PyAny>) -> pyo3::PyResult<()> {
        self.exit(ctx.py());
        enter_context(&ctx)?;
        self.0 = Some(ctx.unbind());
        Ok(())
    }

    /// Whether a context is entered now.
    pub fn is_held(&self) -> bool {
        self.0.is_some()
    }

    /// Exit the context entered, if any.
    pub fn exit(&mut self, py: Python<'_>) {
        if let Some(ctx) = self.0.take() {
            exit_context(ctx.bind(py));
        }
    }
}

impl Drop for HeldContext {
    fn drop(&mut self) {
        if self.0.is_some() {
            Python::attach(|py| self.exit(py));
        }
    }
}

/// `PyContext_Enter` with `Context.run`'s errors.
fn enter_context(ctx: &pyo3::Bound<'_, pyo3::PyAny>) -> pyo3::PyResult<()> {
    if !is_context(ctx) {
        return Err(pyo3::exceptions::PyTypeError::new_err("an instance of Context was expected"));
    }
    // SAFETY: `ctx` is a live Context (checked above) and the GIL is held.
    if unsafe { pyo3::ffi::PyContext_Enter(ctx.as_ptr()) } != 0 {
        return Err(pyo3::PyErr::fetch(ctx.py()));
    }
    Ok(())
}

/// `PyContext_Exit` of a context [`enter_context`] entered.
fn exit_context(ctx: &pyo3::Bound<'_, pyo3::PyAny>) {
    // SAFETY: the caller entered this same, live context on this thread and
    // holds the GIL (the `Bound`). Exiting a context we entered cannot fail;
    // if it did, the error is reported as unraisable rather than lost.
    if unsafe { pyo3::ffi::PyContext_Exit(ctx.as_ptr()) } != 0 {
        pyo3::PyErr::fetch(ctx.py()).write_unraisable(ctx.py(), None);
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

/// The engine's listener on the Python server's listening socket `fd`, borrowed.
pub fn borrow_listener(fd: std::os::fd::RawFd) -> std::io::Result<ferroloop::Listener> {
    // SAFETY: `fd` is the listening socket of a Python `Server`, which keeps
    // its socket object (so the descriptor) open until `Server.close()`; that
    // closes the acceptor first (`AcceptorCore.close`: out of the poll, never
    // accepted on again) and only then the socket. The acceptor's finalizer
    // closes it too, should the server be dropped without `close()`.
    unsafe { ferroloop::Listener::borrow_raw(fd) }
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
