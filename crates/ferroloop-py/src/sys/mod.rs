//! The binding's `unsafe` code, each block with a `// SAFETY:` comment.

use pyo3::buffer::PyBuffer;

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
