//! The engine's error type.
//!
//! Every fallible operation returns [`Error`]. Operating-system failures keep
//! their `errno` (see [`Error::errno`]) so that a binding can raise the exact
//! `OSError` subclass asyncio would; argument errors map to `ValueError`, state
//! errors to `RuntimeError`.

use std::fmt;
use std::io;

/// Result alias used throughout the crate.
pub type Result<T, E = Error> = std::result::Result<T, E>;

/// What went wrong.
///
/// The enum is `#[non_exhaustive]`: later transports add variants.
#[derive(Debug)]
#[non_exhaustive]
pub enum Error {
    /// An operating-system error; [`Error::errno`] gives its `errno`.
    Io(io::Error),
    /// An invalid argument (asyncio raises `ValueError`).
    InvalidArgument(String),
    /// An operation that the current state forbids (asyncio raises
    /// `RuntimeError`), for example `write()` after `write_eof()`.
    InvalidState(String),
    /// The event loop is closed (asyncio: `RuntimeError('Event loop is closed')`).
    LoopClosed,
    /// The loop stopped before the awaited future completed.
    LoopStopped,
    /// Name resolution failed (asyncio raises `socket.gaierror`).
    Resolve {
        /// The host that was looked up.
        host: String,
        /// The resolver's message.
        message: String,
    },
    /// Binding a listening or local address failed (asyncio: `OSError` with
    /// "error while attempting to bind on address ..."); keeps the `errno`.
    Bind {
        /// The address that could not be bound.
        address: String,
        /// The operating system's error.
        source: io::Error,
    },
    /// Every connection attempt failed; one error per address tried, in order.
    /// With a single attempt, or when all errors read the same, the engine
    /// reports [`Error::Io`] instead, as asyncio does.
    Connect(Vec<Error>),
    /// The operation was cancelled.
    Cancelled,
    /// A callback or protocol method panicked; the payload's message.
    Panic(String),
    /// A TLS failure: the handshake failed (an untrusted certificate, a
    /// wrong server name, an alert from the peer), timed out or was cut
    /// short, or a record was corrupt. See [`TlsError`]; rustls' own error
    /// is kept in [`TlsError::Protocol`].
    Tls(TlsError),
    /// An error raised by user code behind the engine (for example a Python
    /// exception inside a protocol method), carried through unchanged.
    External(std::sync::Arc<dyn std::error::Error + Send + Sync + 'static>),
}

impl Error {
    /// The `errno` of an operating-system error, if this is one.
    pub fn errno(&self) -> Option<i32> {
        match self {
            Error::Io(e) | Error::Bind { source: e, .. } => e.raw_os_error(),
            _ => None,
        }
    }

    /// The `io::ErrorKind` of an operating-system error, if this is one.
    pub fn io_kind(&self) -> Option<io::ErrorKind> {
        match self {
            Error::Io(e) | Error::Bind { source: e, .. } => Some(e.kind()),
            _ => None,
        }
    }

    /// Shorthand for [`Error::InvalidArgument`].
    pub(crate) fn invalid(msg: impl Into<String>) -> Error {
        Error::InvalidArgument(msg.into())
    }

    /// Shorthand for [`Error::InvalidState`].
    pub(crate) fn state(msg: impl Into<String>) -> Error {
        Error::InvalidState(msg.into())
    }

    /// Build the error reported after a list of failed connection attempts,
    /// following asyncio: one error is itself, identical messages collapse to
    /// the first, otherwise "Multiple exceptions".
    pub(crate) fn from_attempts(mut errors: Vec<Error>) -> Error {
        if errors.is_empty() {
            return Error::Io(io::Error::new(io::ErrorKind::Other, "no addresses to connect to"));
        }
        let first = errors[0].to_string();
        if errors.len() == 1 || errors.iter().all(|e| e.to_string() == first) {
            return errors.swap_remove(0);
        }
        Error::Connect(errors)
    }
}

impl fmt::Display for Error {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Error::Io(e) => f.write_str(&fmt_io(e)),
            Error::InvalidArgument(m) | Error::InvalidState(m) => f.write_str(m),
            Error::Bind { address, source } => write!(
                f,
                "[Errno {}] error while attempting to bind on address {address}: {}",
                source.raw_os_error().unwrap_or(0),
                strerror(source).to_lowercase()
            ),
            Error::LoopClosed => f.write_str("Event loop is closed"),
            Error::LoopStopped => f.write_str("Event loop stopped before Future completed."),
            Error::Resolve { host, message } => write!(f, "cannot resolve {host:?}: {message}"),
            Error::Connect(errors) => {
                f.write_str("Multiple exceptions: ")?;
                for (i, e) in errors.iter().enumerate() {
                    if i > 0 {
                        f.write_str(", ")?;
                    }
                    write!(f, "{e}")?;
                }
                Ok(())
            }
            Error::Cancelled => f.write_str("cancelled"),
            Error::Panic(m) => write!(f, "panic: {m}"),
            Error::Tls(e) => write!(f, "{e}"),
            Error::External(e) => write!(f, "{e}"),
        }
    }
}

fn fmt_io(e: &io::Error) -> String {
        match e.raw_os_error() {
            Some(code) => format!("[Errno {code}] {}", strerror(e)),
            None => e.to_string(),
        }
}

/// The C library's message for an OS error, without Rust's " (os error N)" suffix.
fn strerror(e: &io::Error) -> String {
    let s = e.to_string();
    match s.rfind(" (os error ") {
        Some(i) => s[..i].to_string(),
        None => s,
    }
}

impl std::error::Error for Error {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        match self {
            Error::Io(e) | Error::Bind { source: e, .. } => Some(e),
            Error::External(e) => Some(&**e as &(dyn std::error::Error + 'static)),
            Error::Tls(TlsError::Protocol(e)) => Some(e),
            _ => None,
        }
    }
}

impl From<io::Error> for Error {
    fn from(e: io::Error) -> Self {
        Error::Io(e)
    }
}

impl Clone for Error {
    /// Errors are cloned when one failure must reach both the exception
    /// handler and `connection_lost`. An OS error keeps its `errno`.
    fn clone(&self) -> Self {
        match self {
            Error::Io(e) => Error::Io(clone_io(e)),
            Error::InvalidArgument(m) => Error::InvalidArgument(m.clone()),
            Error::InvalidState(m) => Error::InvalidState(m.clone()),
            Error::Bind { address, source } => Error::Bind { address: address.clone(), source: clone_io(source) },
            Error::LoopClosed => Error::LoopClosed,
            Error::LoopStopped => Error::LoopStopped,
            Error::Resolve { host, message } => Error::Resolve { host: host.clone(), message: message.clone() },
            Error::Connect(v) => Error::Connect(v.clone()),
            Error::Cancelled => Error::Cancelled,
            Error::Panic(m) => Error::Panic(m.clone()),
            Error::Tls(e) => Error::Tls(e.clone()),
            Error::External(e) => Error::External(e.clone()),
        }
    }
}

fn clone_io(e: &io::Error) -> io::Error {
    match e.raw_os_error() {
        Some(code) => io::Error::from_raw_os_error(code),
        None => io::Error::new(e.kind(), e.to_string()),
    }
}

/// What went wrong in a TLS connection ([`Error::Tls`]).
#[derive(Debug, Clone)]
#[non_exhaustive]
pub enum TlsError {
    /// rustls refused the connection or a record: a certificate that does
    /// not verify or does not match the server name, an alert from the peer,
    /// a corrupt or unexpected message. The rustls error, unchanged.
    Protocol(rustls::Error),
    /// The handshake did not complete within the handshake timeout
    /// (asyncio: `TimeoutError("SSL handshake is taking longer than ... seconds")`).
    HandshakeTimeout(std::time::Duration),
    /// The peer closed the connection (or it failed) before the handshake completed.
    HandshakeInterrupted(String),
    /// After our close_notify, the peer's did not come within the shutdown
    /// timeout (asyncio: `TimeoutError("SSL shutdown timed out")`).
    ShutdownTimeout(std::time::Duration),
}

impl fmt::Display for TlsError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            TlsError::Protocol(e) => write!(f, "TLS error: {e}"),
            TlsError::HandshakeTimeout(d) => {
                write!(f, "SSL handshake is taking longer than {} seconds: aborting the connection", d.as_secs_f64())
            }
            TlsError::HandshakeInterrupted(m) => write!(f, "TLS handshake interrupted: {m}"),
            TlsError::ShutdownTimeout(_) => write!(f, "SSL shutdown timed out"),
        }
    }
}

impl std::error::Error for TlsError {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        match self {
            TlsError::Protocol(e) => Some(e),
            _ => None,
        }
    }
}
