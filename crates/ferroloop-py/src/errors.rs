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
    // ssl's exceptions carry `library` and `reason` (and, for a failed
    // verification, `verify_code` and `verify_message`), as OpenSSL's do.
    let ssl_exc = |name: &str, reason: &str, message: String, verify: Option<String>| {
        Python::attach(|py| {
            let made = py.import("ssl").and_then(|m| m.getattr(name)).and_then(|t| t.call1((1, message.clone())));
            let e = match made {
                Ok(e) => e,
                Err(e) => return e,
            };
            let _ = e.setattr("library", "SSL");
            let _ = e.setattr("reason", reason);
            if let Some(v) = verify {
                // X509_V_ERR_UNSPECIFIED: rustls does not map to OpenSSL's codes.
                let _ = e.setattr("verify_code", 1);
                let _ = e.setattr("verify_message", v);
            }
            PyErr::from_value(e)
        })
    };
    match err {
        TlsError::HandshakeTimeout(_) => PyConnectionAbortedError::new_err(err.to_string()),
        TlsError::HandshakeInterrupted(_) => PyConnectionResetError::new_err(err.to_string()),
        TlsError::ShutdownTimeout(_) => pyo3::exceptions::PyTimeoutError::new_err(err.to_string()),
        TlsError::Protocol(rustls::Error::InvalidCertificate(c)) => ssl_exc(
            "SSLCertVerificationError",
            "CERTIFICATE_VERIFY_FAILED",
            format!("[SSL: CERTIFICATE_VERIFY_FAILED] certificate verify failed: {c}"),
            Some(c.to_string()),
        ),
        TlsError::Protocol(e) => {
            let reason = format!("{e:?}");
            let reason = reason.split(['(', ' ', '{']).next().unwrap_or("TLS_ERROR").to_string();
            ssl_exc("SSLError", &reason, format!("[SSL: {reason}] {e}"), None)
        }
        other => ssl_exc("SSLError", "TLS_ERROR", other.to_string(), None),
    }
}
