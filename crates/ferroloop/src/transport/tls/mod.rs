//! TLS transports: rustls over a stream transport, as asyncio's `SSLProtocol`
//! layers TLS over a socket transport.
//!
//! An internal protocol (`TlsProto`) sits on the raw stream [`Transport`] and
//! feeds a TLS session (see `session.rs`, the only file that drives rustls);
//! the application's [`Protocol`] gets a [`Transport`] whose methods act on
//! the plaintext side. Semantics follow asyncio's SSL transport:
//!
//! - `connection_made` only after the handshake; a failed handshake fails
//!   the future with [`Error::Tls`] (the protocol never hears of the
//!   connection) and closes the socket, after sending the alert;
//! - `data_received` with plaintext; `pause_reading`/`resume_reading` pass
//!   through (and stop delivery at once, also of plaintext already decrypted);
//! - the peer's close_notify: `eof_received` (its return value is ignored, TLS
//!   has no half-close here), then our close_notify and the socket closes;
//! - `close()`: flush, send close_notify, wait up to the shutdown timeout for
//!   the peer's, then close the socket; `connection_lost` follows;
//! - `can_write_eof()` is false and `write_eof()` fails;
//! - write flow control counts what is buffered below the application:
//!   ciphertext not yet sent (plaintext is encrypted as soon as it is
//!   written), against the water marks of [`crate::flow`].
//! - `get_extra_info`: `peercert` (DER), `cipher`, `compression` (always
//!   `None`, as with asyncio), `alpn_protocol`, `server_hostname`; asyncio's
//!   `sslcontext` and `ssl_object` are absent; [`Transport::tls_info`] gives
//!   the rest.

pub(crate) mod config;
mod ops;
mod session;
mod state;
pub(crate) mod transport;

use std::cell::RefCell;
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::rc::Rc;
use std::time::Duration;

use crate::error::{Error, Result};
use crate::event_loop::{panic_message, EventLoop, ExceptionContext};
use crate::future::LoopFuture;
use crate::protocol::ProtocolRef;
use crate::transport::fd::StreamSocket;
use crate::transport::Transport;

pub use config::{
    TlsClientOptions, TlsConfig, TlsInfo, TlsOptions, TlsServerOptions, DEFAULT_HANDSHAKE_TIMEOUT, DEFAULT_SHUTDOWN_TIMEOUT,
};
pub(crate) use session::TlsSession;
pub(crate) use transport::{OnHandshake, TlsInner, TlsProto};

/// The internal protocol of an accepted TLS connection (see `server/mod.rs`):
/// `factory` makes the application's protocol once the handshake is done.
pub(crate) fn server_protocol(
    lp: &EventLoop,
    opts: &TlsServerOptions,
    factory: Rc<dyn Fn() -> ProtocolRef>,
) -> Result<ProtocolRef> {
    let session = TlsSession::server(opts.config.clone())?;
    let lp2 = lp.clone();
    let on_hs: OnHandshake = Box::new(move |r| {
        // A failed handshake is only logged by asyncio in debug mode: nothing to report.
        let Ok(t) = r else { return };
        match catch_unwind(AssertUnwindSafe(|| factory())) {
            Ok(p) => {
                if let Some(inner) = t.tls_inner() {
                    inner.start_app(p);
                }
            }
            Err(payload) => {
                lp2.call_exception_handler(ExceptionContext {
                    message: "Error in protocol factory".into(),
                    error: Some(Error::Panic(panic_message(&*payload))),
                });
                t.abort();
            }
        }
    });
    let inner = TlsInner::new(lp, session, opts.handshake_timeout, opts.shutdown_timeout, on_hs);
    Ok(Rc::new(RefCell::new(TlsProto(inner))))
}

impl EventLoop {
    /// Upgrade a live plain transport to TLS (STARTTLS; asyncio's
    /// `start_tls`): the transport's protocol is kept and sees the
    /// plaintext side, through the TLS transport the future completes with
    /// once the handshake is done (no second `connection_made`). The old
    /// transport must no longer be used. Client options need a `server_name`.
    pub fn start_tls(&self, transport: &Transport, tls: impl Into<TlsOptions>) -> LoopFuture<Transport> {
        let out = LoopFuture::new();
        let out2 = out.clone();
        if let Err(e) = self.start_tls_transport(transport, tls, None, move |r| out2.set(r)) {
            out.set(Err(e));
        }
        out
    }

    /// [`EventLoop::start_tls`] with a callback instead of a future, and the
    /// TLS transport returned at once (until the handshake completes it only
    /// accepts `close`/`abort`). `protocol`, when `Some`, takes the place of
    /// the transport's protocol on the plaintext side (asyncio's
    /// `start_tls(transport, protocol, ...)`); it hears nothing before the
    /// handshake completes, and no `connection_made`. `on_handshake` gets
    /// the TLS transport, or the error ([`Error::Tls`]) once the socket is
    /// closed and out of the poll (its descriptor may then be closed).
    pub fn start_tls_transport(
        &self,
        transport: &Transport,
        tls: impl Into<TlsOptions>,
        protocol: Option<ProtocolRef>,
        on_handshake: impl FnOnce(Result<Transport>) + 'static,
    ) -> Result<Transport> {
        if transport.is_tls() {
            return Err(Error::invalid("the transport already uses TLS"));
        }
        if transport.is_closing() {
            return Err(Error::state("the transport is closing"));
        }
        let (session, hs, sd) = session_for(tls.into(), "start_tls")?;
        let app = protocol.or_else(|| transport.get_protocol());
        let on_hs: OnHandshake = Box::new(move |r| match r {
            Ok(t) => {
                if let Some(inner) = t.tls_inner() {
                    inner.adopt_app(app);
                }
                on_handshake(Ok(t));
            }
            Err(e) => on_handshake(Err(e)),
        });
        let inner = TlsInner::new(self, session, hs, sd, on_hs);
        inner.defer_failure.set(true);
        transport.set_protocol(Rc::new(RefCell::new(TlsProto(inner.clone()))));
        // As asyncio's start_tls: the handshake needs the socket read, even
        // if the plain protocol had paused reading.
        transport.resume_reading();
        inner.raw_made(transport.clone());
        Ok(inner.transport())
    }
}

/// The session and timeouts `opts` ask for; `what` names the caller in the
/// error when client options lack a `server_name`.
fn session_for(opts: TlsOptions, what: &str) -> Result<(TlsSession, Option<Duration>, Option<Duration>)> {
    Ok(match opts {
        TlsOptions::Client(o) => {
            let Some(name) = o.server_name.clone() else {
                return Err(Error::invalid(format!("{what}: TlsClientOptions::server_name is required")));
            };
            (TlsSession::client(o.config.clone(), &name)?, o.handshake_timeout, o.shutdown_timeout)
        }
        TlsOptions::Server(o) => (TlsSession::server(o.config.clone())?, o.handshake_timeout, o.shutdown_timeout),
    })
}

impl EventLoop {
    /// Make a TLS transport on a connected stream socket (an accepted or
    /// connected socket handed over by other code, as asyncio's
    /// `_make_ssl_transport`). `protocol` gets `connection_made` once the
    /// handshake is done, then `on_handshake(Ok(transport))` runs; a failed
    /// handshake closes the socket, then runs `on_handshake(Err(..))` once
    /// it is out of the poll (the protocol never hears of the connection).
    /// Client options need a `server_name`. The TLS transport is returned at
    /// once; until the handshake completes it only accepts `close`/`abort`.
    pub fn create_tls_transport(
        &self,
        stream: StreamSocket,
        protocol: ProtocolRef,
        tls: impl Into<TlsOptions>,
        on_handshake: impl FnOnce(Result<Transport>) + 'static,
    ) -> Result<Transport> {
        let (session, hs, sd) = session_for(tls.into(), "create_tls_transport")?;
        let on_hs: OnHandshake = Box::new(move |r| match r {
            Ok(t) => {
                // A connection_made that fails has already been reported and
                // the connection aborted: connection_lost follows, so the
                // handshake itself is still reported as done.
                if let Some(i) = t.tls_inner() {
                    i.start_app(protocol);
                }
                on_handshake(Ok(t));
            }
            Err(e) => on_handshake(Err(e)),
        });
        let inner = TlsInner::new(self, session, hs, sd, on_hs);
        inner.defer_failure.set(true);
        let tls_transport = inner.transport();
        self.create_transport(stream, Rc::new(RefCell::new(TlsProto(inner))))?;
        Ok(tls_transport)
    }
}
