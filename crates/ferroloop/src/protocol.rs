//! The protocol contract: what a transport calls on the object it serves.
//!
//! The life of a stream protocol, guaranteed by every transport:
//!
//! ```text
//! start -> connection_made
//!       [-> data_received *]          (or get_buffer -> buffer_updated|buffer_unused *)
//!       [-> eof_received ?]
//!       -> connection_lost -> end
//! ```
//!
//! `pause_writing`/`resume_writing` come in pairs between `connection_made`
//! and `connection_lost`. Methods are never re-entered: if the protocol calls
//! a transport method that must notify it (a `write` that crosses the
//! high-water mark, say), the notification is delivered right after the
//! current method returns; `close()` delivers `connection_lost` from the
//! ready queue, never from inside the caller.
//!
//! # Bounding a producer
//!
//! asyncio calls `pause_writing()` from inside `write()`, so a producer
//! written as "write while not paused" stops as soon as the buffer goes over
//! the high-water mark. A Rust protocol is borrowed while it writes, so it
//! hears `pause_writing` only once its method returns; but the transport's
//! flow state changes inside the `write`, so the same loop is written with
//! [`Transport::is_writing_paused`]:
//!
//! ```no_run
//! # use ferroloop::{Protocol, Transport};
//! struct Producer { transport: Option<Transport>, chunk: Vec<u8> }
//!
//! impl Protocol for Producer {
//!     fn connection_made(&mut self, transport: Transport) {
//!         self.transport = Some(transport);
//!         self.produce();
//!     }
//!     fn resume_writing(&mut self) {
//!         self.produce();
//!     }
//! }
//!
//! impl Producer {
//!     fn produce(&mut self) {
//!         let t = self.transport.as_ref().unwrap();
//!         // Stops within one chunk of the high-water mark, whichever method it runs in.
//!         while !t.is_writing_paused() && !t.is_closing() {
//!             t.write(&self.chunk).unwrap();
//!         }
//!     }
//! }
//! ```
//!
//! A binding whose protocol objects can be re-entered (the Python face)
//! installs a [`crate::PauseHook`] instead, and calls its protocol's
//! `pause_writing` from inside the write, as asyncio does.

use std::cell::RefCell;
use std::rc::Rc;

use crate::error::Error;
use crate::transport::Transport;

/// A streaming protocol (asyncio's `Protocol` and `BufferedProtocol`).
///
/// Every method has an empty default, as in asyncio. A protocol that
/// overrides [`Protocol::get_buffer`] to return a buffer is a *buffered*
/// protocol: the transport reads straight into that buffer and calls
/// [`Protocol::buffer_updated`] instead of [`Protocol::data_received`].
pub trait Protocol: 'static {
    /// The connection is ready; keep `transport` to write, close, etc.
    fn connection_made(&mut self, transport: Transport) {
        let _ = transport;
    }

    /// Bytes arrived (never empty). Their order is preserved.
    fn data_received(&mut self, data: &[u8]) {
        let _ = data;
    }

    /// The peer will send nothing more. Return `true` to keep the transport
    /// half-open (closing it is then up to the protocol); `false` closes it.
    fn eof_received(&mut self) -> bool {
        false
    }

    /// The connection is closed: `None` after a clean close, EOF or abort,
    /// `Some(error)` after an error such as a reset. Called exactly once.
    fn connection_lost(&mut self, exc: Option<Error>) {
        let _ = exc;
    }

    /// The write buffer went strictly over the high-water mark.
    fn pause_writing(&mut self) {}

    /// The write buffer drained to the low-water mark or below.
    fn resume_writing(&mut self) {}

    /// Buffered protocols: return a non-empty buffer for the transport to read
    /// into; `size_hint` is the size the transport would like (it may be
    /// ignored). Plain protocols return `None` (the default).
    ///
    /// A stream transport takes the first answer of a protocol as its kind,
    /// as asyncio decides by type: once `get_buffer` returned `None`, the
    /// transport reads into its own buffer and calls `data_received` without
    /// asking again, until [`Transport::set_protocol`](crate::Transport::set_protocol)
    /// installs another protocol.
    fn get_buffer(&mut self, size_hint: usize) -> Option<&mut [u8]> {
        let _ = size_hint;
        None
    }

    /// Buffered protocols: `nbytes` bytes were written at the start of the
    /// buffer returned by the last [`Protocol::get_buffer`].
    fn buffer_updated(&mut self, nbytes: usize) {
        let _ = nbytes;
    }

    /// Buffered protocols: the read that asked [`Protocol::get_buffer`] for
    /// a buffer wrote nothing into it (no data was waiting, the stream
    /// ended, or the read failed; `eof_received` or the error's handling
    /// follows). The buffer is the protocol's again, as after
    /// [`Protocol::buffer_updated`]. The default does nothing.
    fn buffer_unused(&mut self) {}
}

/// How a transport holds its protocol: shared, so that the program can keep
/// a typed handle (`Rc<RefCell<MyProtocol>>`) while the transport calls it.
pub type ProtocolRef = Rc<RefCell<dyn Protocol>>;

/// Wrap a protocol value for [`Transport::set_protocol`](crate::Transport::set_protocol).
pub fn protocol_ref<P: Protocol>(p: P) -> ProtocolRef {
    Rc::new(RefCell::new(p))
}
