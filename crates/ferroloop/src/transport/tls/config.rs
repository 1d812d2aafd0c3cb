//! The TLS configuration types: the options of either side, the rustls
//! configuration a transport reports (`sslcontext`), and what a session
//! negotiated ([`TlsInfo`]).

use std::sync::Arc;
use std::time::Duration;

#[cfg(doc)]
use crate::{EventLoop, Transport};

/// asyncio's `SSL_HANDSHAKE_TIMEOUT`.
pub const DEFAULT_HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(60);
/// asyncio's `SSL_SHUTDOWN_TIMEOUT`.
pub const DEFAULT_SHUTDOWN_TIMEOUT: Duration = Duration::from_secs(30);

/// Client side of a TLS connection ([`EventLoop::create_connection_tls`],
/// [`EventLoop::start_tls`]).
#[derive(Clone, Debug)]
pub struct TlsClientOptions {
    /// The rustls configuration (root certificates, ALPN, client certificate...).
    pub config: Arc<rustls::ClientConfig>,
    /// The name the server's certificate must match (and the SNI sent);
    /// `None`: the host passed to `create_connection_tls` (required for `start_tls`).
    pub server_name: Option<String>,
    /// Fail the handshake after this long (`None`: 60 s, asyncio's default).
    pub handshake_timeout: Option<Duration>,
    /// After close_notify is sent, wait this long for the peer's before
    /// aborting (`None`: 30 s, asyncio's default).
    pub shutdown_timeout: Option<Duration>,
}

impl TlsClientOptions {
    /// Options with `config` and the defaults.
    pub fn new(config: Arc<rustls::ClientConfig>) -> Self {
        TlsClientOptions { config, server_name: None, handshake_timeout: None, shutdown_timeout: None }
    }
}

/// Server side of a TLS connection ([`crate::ServerOptions::tls`], [`EventLoop::start_tls`]).
#[derive(Clone, Debug)]
pub struct TlsServerOptions {
    /// The rustls configuration (certificate chain and key, ALPN, client auth...).
    pub config: Arc<rustls::ServerConfig>,
    /// Fail the handshake after this long (`None`: 60 s).
    pub handshake_timeout: Option<Duration>,
    /// After close_notify is sent, wait this long for the peer's (`None`: 30 s).
    pub shutdown_timeout: Option<Duration>,
}

impl TlsServerOptions {
    /// Options with `config` and the defaults.
    pub fn new(config: Arc<rustls::ServerConfig>) -> Self {
        TlsServerOptions { config, handshake_timeout: None, shutdown_timeout: None }
    }
}

/// Either side, for [`EventLoop::start_tls`].
#[derive(Clone, Debug)]
pub enum TlsOptions {
    /// Act as the TLS client.
    Client(TlsClientOptions),
    /// Act as the TLS server.
    Server(TlsServerOptions),
}

impl From<TlsClientOptions> for TlsOptions {
    fn from(o: TlsClientOptions) -> Self {
        TlsOptions::Client(o)
    }
}

impl From<TlsServerOptions> for TlsOptions {
    fn from(o: TlsServerOptions) -> Self {
        TlsOptions::Server(o)
    }
}

/// The rustls configuration of a TLS transport: its `sslcontext` extra
/// info. Two values are equal when they share the same configuration
/// (`Arc::ptr_eq`).
#[derive(Clone, Debug)]
pub enum TlsConfig {
    /// A client's configuration.
    Client(Arc<rustls::ClientConfig>),
    /// A server's configuration.
    Server(Arc<rustls::ServerConfig>),
}

impl PartialEq for TlsConfig {
    fn eq(&self, other: &Self) -> bool {
        match (self, other) {
            (TlsConfig::Client(a), TlsConfig::Client(b)) => Arc::ptr_eq(a, b),
            (TlsConfig::Server(a), TlsConfig::Server(b)) => Arc::ptr_eq(a, b),
            _ => false,
        }
    }
}

impl Eq for TlsConfig {}

/// What a TLS transport negotiated ([`Transport::tls_info`]).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct TlsInfo {
    /// `"TLSv1.3"` or `"TLSv1.2"` (`None` before the handshake completes).
    pub protocol_version: Option<String>,
    /// The cipher suite's IANA name, e.g. `"TLS13_AES_256_GCM_SHA384"`.
    pub cipher_suite: Option<String>,
    /// The bulk cipher's key size in bits.
    pub cipher_bits: Option<u32>,
    /// The protocol agreed by ALPN, if any.
    pub alpn_protocol: Option<Vec<u8>>,
    /// The peer's certificate chain (DER), end certificate first; empty if the peer sent none.
    pub peer_certificates: Vec<Vec<u8>>,
    /// Client: the name the server was verified against. Server: the SNI the client sent.
    pub server_name: Option<String>,
    /// The handshake resumed an earlier session (a TLS 1.3 ticket or PSK, a
    /// TLS 1.2 session ID or ticket) instead of a full handshake. Resumption
    /// is on by default with rustls: a client resumes when it connects again
    /// with the same `ClientConfig` (its session cache) to a server whose
    /// `ServerConfig` remembers the session. `false` before the handshake completes.
    pub resumed: bool,
}
