//! TLS client connections: [`EventLoop::create_connection_tls`], a TCP
//! connection ([`EventLoop::create_connection`]) with the TLS transport's
//! internal protocol on it.

use std::cell::RefCell;
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::rc::Rc;

use crate::connect::{ConnectOptions, Connection};
use crate::error::Error;
use crate::event_loop::{panic_message, EventLoop};
use crate::future::LoopFuture;
use crate::protocol::Protocol;
use crate::transport::tls::{OnHandshake, TlsClientOptions, TlsInner, TlsProto, TlsSession};

impl EventLoop {
    /// Connect to `host:port` over TLS (asyncio's `create_connection(ssl=...)`):
    /// the future completes with the TLS transport after the handshake and the
    /// protocol's `connection_made`. The certificate is verified against
    /// `tls.server_name`, or `host` when it is `None`. A failed handshake
    /// completes it with [`Error::Tls`] (the factory is never called) and the
    /// socket is closed.
    pub fn create_connection_tls<P, F>(
        &self,
        factory: F,
        host: &str,
        port: u16,
        opts: ConnectOptions,
        tls: TlsClientOptions,
    ) -> LoopFuture<Connection<P>>
    where
        P: Protocol,
        F: FnOnce() -> P + 'static,
    {
        let out = LoopFuture::new();
        let name = tls.server_name.clone().unwrap_or_else(|| host.to_string());
        let session = match TlsSession::client(tls.config.clone(), &name) {
            Ok(s) => s,
            Err(e) => {
                out.set(Err(e));
                return out;
            }
        };
        let out2 = out.clone();
        let on_hs: OnHandshake = Box::new(move |r| match r {
            Ok(t) => match catch_unwind(AssertUnwindSafe(factory)) {
                Ok(p) => {
                    let p = Rc::new(RefCell::new(p));
                    let ok = t.tls_inner().map(|i| i.start_app(p.clone())).unwrap_or(false);
                    out2.set(if ok { Ok((t, p)) } else { Err(Error::state("connection_made() failed")) });
                }
                Err(payload) => {
                    t.abort();
                    out2.set(Err(Error::Panic(panic_message(&*payload))));
                }
            },
            Err(e) => out2.set(Err(e)),
        });
        let inner = TlsInner::new(self, session, tls.handshake_timeout, tls.shutdown_timeout, on_hs);
        let raw = self.create_connection(move || TlsProto(inner), host, port, opts);
        let out3 = out.clone();
        let raw2 = raw.clone();
        raw.add_done_callback(move || {
            if let Some(Err(e)) = raw2.take_result() {
                out3.set(Err(e));
            }
        });
        out
    }
}
