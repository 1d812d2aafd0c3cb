//! Engine errors as Python exceptions, with asyncio's types and messages.
//!
//! OS errors become `OSError(errno, strerror)`, which Python turns into the
//! matching subclass (`ConnectionResetError`, ...), so `errno` is kept.

use std::sync::Arc;

use ferroloop::{rustls, Error, TlsError};
use pyo3::exceptions::{PyConnectionAbortedError, PyConnectionResetError, PyOSError, PyRuntimeError, PyValueError};
use pyo3::prelude::*;

/// Convert an engine error into the exception asyncio would raise.
pub fn to_pyerr(err: Error) -> PyErr {
    match err {
        Error::External(e) => match e.downcast_ref::<PyErr>() {
            Some(pyerr) => Python::attach(|py| pyerr.clone_ref(py)),
            None => PyRuntimeError::new_err(e.to_string()),
        },
        Error::Io(e) => io_to_pyerr(&e),
        Error::Bind { address, source } => PyOSError::new_err((
            source.raw_os_error().unwrap_or(0),
            format!("error while attempting to bind on address {address}: {}", err_text(&source).to_lowercase()),
        )),
        Error::InvalidArgument(m) => PyValueError::new_err(m),
        e @ (Error::InvalidState(_) | Error::LoopClosed | Error::LoopStopped | Error::Panic(_)) => {
            PyRuntimeError::new_err(e.to_string())
        }
        Error::Cancelled => pyo3::exceptions::asyncio::CancelledError::new_err(()),
        Error::Tls(e) => tls_to_pyerr(e),
        other => PyRuntimeError::new_err(other.to_string()),
    }
}

/// The C library's message for an OS error, without Rust's suffix.
fn err_text(e: &std::io::Error) -> String {
    let s = e.to_string();
    match s.rfind(" (os error ") {
        Some(i) => s[..i].to_string(),
        None => s,
    }
}

/// `OSError(errno, strerror)` for an `io::Error`.
pub fn io_to_pyerr(e: &std::io::Error) -> PyErr {
    match e.raw_os_error() {
        Some(code) => PyOSError::new_err((code, err_text(e))),
        None => PyOSError::new_err(e.to_string()),
    }
}

/// Wrap a Python exception so that it travels through the engine unchanged.
pub fn external(err: PyErr) -> Error {
    Error::External(Arc::new(err))
}

/// A TLS error as asyncio's SSL transport reports it: a certificate that
/// does not verify is `ssl.SSLCertVerificationError`, other TLS failures
/// `ssl.SSLError`; a handshake timeout `ConnectionAbortedError`, a peer gone
/// during the handshake `ConnectionResetError`, a peer that does not answer
/// close_notify `TimeoutError`.
fn tls_to_pyerr(err: TlsError) -> PyErr {
    let ssl_exc = |name: &str, message: String| {
        Python::attach(|py| {
            match py.import("ssl").and_then(|m| m.getattr(name)).and_then(|t| t.call1((1, message.clone()))) {
                Ok(e) => PyErr::from_value(e),
                Err(e) => e,
            }
        })
    };
    match err {
        TlsError::HandshakeTimeout(_) => PyConnectionAbortedError::new_err(err.to_string()),
        TlsError::HandshakeInterrupted(_) => PyConnectionResetError::new_err(err.to_string()),
        TlsError::ShutdownTimeout(_) => pyo3::exceptions::PyTimeoutError::new_err(err.to_string()),
        TlsError::Protocol(rustls::Error::InvalidCertificate(c)) => {
            ssl_exc("SSLCertVerificationError", format!("[SSL: CERTIFICATE_VERIFY_FAILED] certificate verify failed: {c}"))
        }
        TlsError::Protocol(e) => ssl_exc("SSLError", format!("[SSL] {e}")),
        other => ssl_exc("SSLError", other.to_string()),
    }
}
