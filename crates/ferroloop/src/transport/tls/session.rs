//! The seam between the TLS transport and rustls: everything that names a
//! rustls type besides the configurations lives here, so that a rustls API
//! change touches this file only. The transport drives a [`TlsSession`] as
//! rustls' `tlsserver-mio` example drives a `Connection`: feed ciphertext
//! (`read_tls` + `process_new_packets`), take plaintext out, take the
//! ciphertext to send (`write_tls`).

use std::io::{Read, Write};
use std::sync::Arc;

use rustls::pki_types::ServerName;

use crate::error::{Error, Result, TlsError};
use crate::transport::tls::config::{TlsConfig, TlsInfo};

/// What processing the received records produced.
pub(crate) struct Progress {
    /// The peer sent close_notify.
    pub peer_closed: bool,
}

/// One TLS connection's protocol state (no I/O of its own).
pub(crate) struct TlsSession {
    conn: rustls::Connection,
    /// The client's configured server name (a server learns it from SNI).
    server_name: Option<String>,
    /// The configuration the session was made with.
    config: TlsConfig,
}

impl TlsSession {
    /// A client session that will verify the server against `server_name`.
    pub(crate) fn client(config: Arc<rustls::ClientConfig>, server_name: &str) -> Result<TlsSession> {
        let name = ServerName::try_from(server_name.to_string())
            .map_err(|e| Error::invalid(format!("invalid server name {server_name:?}: {e}")))?;
        let conn = rustls::ClientConnection::new(config.clone(), name).map_err(|e| Error::Tls(TlsError::Protocol(e)))?;
        let mut conn: rustls::Connection = conn.into();
        conn.set_buffer_limit(None);
        Ok(TlsSession { conn, server_name: Some(server_name.to_string()), config: TlsConfig::Client(config) })
    }

    /// A server session.
    pub(crate) fn server(config: Arc<rustls::ServerConfig>) -> Result<TlsSession> {
        let conn = rustls::ServerConnection::new(config.clone()).map_err(|e| Error::Tls(TlsError::Protocol(e)))?;
        let mut conn: rustls::Connection = conn.into();
        conn.set_buffer_limit(None);
        Ok(TlsSession { conn, server_name: None, config: TlsConfig::Server(config) })
    }

    /// Feed received ciphertext; returns how much of `data` was taken (the
    /// rest must be fed again after the plaintext is taken out).
    pub(crate) fn feed(&mut self, data: &[u8]) -> Result<usize> {
        let mut rd = data;
        match self.conn.read_tls(&mut rd) {
            Ok(n) => Ok(n),
            Err(e) => Err(Error::Io(e)),
        }
    }

    /// The peer's socket reached EOF.
    pub(crate) fn feed_eof(&mut self) {
        let mut empty: &[u8] = &[];
        let _ = self.conn.read_tls(&mut empty);
    }

    /// Process the records fed so far.
    pub(crate) fn process(&mut self) -> Result<Progress> {
        match self.conn.process_new_packets() {
            Ok(io) => Ok(Progress { peer_closed: io.peer_has_closed() }),
            Err(e) => Err(Error::Tls(TlsError::Protocol(e))),
        }
    }

    /// Take decrypted plaintext into `buf`: `Some(n)` (n > 0), or `None` when
    /// none is available.
    pub(crate) fn read_plaintext(&mut self, buf: &mut [u8]) -> Option<usize> {
        match self.conn.reader().read(buf) {
            Ok(0) | Err(_) => None,
            Ok(n) => Some(n),
        }
    }

    /// Encrypt (or, during the handshake, buffer) plaintext; returns how much
    /// was taken (less than all when rustls' buffer limit is reached: take
    /// the ciphertext out, then call again).
    pub(crate) fn write_plaintext(&mut self, data: &[u8]) -> usize {
        self.conn.writer().write(data).unwrap_or(0)
    }

    /// Append all pending ciphertext to `out`.
    pub(crate) fn take_ciphertext(&mut self, out: &mut Vec<u8>) {
        while self.conn.wants_write() {
            // Writing into a Vec cannot fail.
            if self.conn.write_tls(out).unwrap_or(0) == 0 {
                break;
            }
        }
    }

    /// Whether the handshake is still going on.
    pub(crate) fn is_handshaking(&self) -> bool {
        self.conn.is_handshaking()
    }

    /// Queue a close_notify alert.
    pub(crate) fn send_close_notify(&mut self) {
        self.conn.send_close_notify()
    }

    /// The DER of the peer's end certificate.
    pub(crate) fn peer_cert(&self) -> Option<Vec<u8>> {
        self.conn.peer_certificates().and_then(|c| c.first()).map(|c| c.as_ref().to_vec())
    }

    /// `(cipher suite, protocol version, secret bits)`, as asyncio's `cipher` key.
    pub(crate) fn cipher(&self) -> Option<(String, String, u32)> {
        let suite = self.conn.negotiated_cipher_suite()?;
        let name = suite.suite().as_str().map(str::to_string).unwrap_or_else(|| format!("{:?}", suite.suite()));
        let version = self.conn.protocol_version().map(version_name).unwrap_or_default();
        Some((name.clone(), version, cipher_bits(&name)))
    }

    /// Everything the typed accessors report.
    /// The configuration the session was made with.
    pub(crate) fn config(&self) -> TlsConfig {
        self.config.clone()
    }

    pub(crate) fn info(&self) -> TlsInfo {
        let cipher = self.cipher();
        let server_name = match &self.conn {
            rustls::Connection::Server(s) => s.server_name().map(str::to_string),
            rustls::Connection::Client(_) => self.server_name.clone(),
        };
        TlsInfo {
            protocol_version: self.conn.protocol_version().map(version_name),
            cipher_suite: cipher.as_ref().map(|c| c.0.clone()),
            cipher_bits: cipher.as_ref().map(|c| c.2),
            alpn_protocol: self.conn.alpn_protocol().map(<[u8]>::to_vec),
            peer_certificates: self
                .conn
                .peer_certificates()
                .map(|v| v.iter().map(|c| c.as_ref().to_vec()).collect())
                .unwrap_or_default(),
            server_name,
            resumed: self.conn.handshake_kind() == Some(rustls::HandshakeKind::Resumed),
        }
    }
}

fn version_name(v: rustls::ProtocolVersion) -> String {
    match v {
        rustls::ProtocolVersion::TLSv1_3 => "TLSv1.3".into(),
        rustls::ProtocolVersion::TLSv1_2 => "TLSv1.2".into(),
        other => format!("{other:?}"),
    }
}

/// The bulk cipher's key size, from the suite's name.
fn cipher_bits(name: &str) -> u32 {
    if name.contains("AES_128") {
        128
    } else {
        256 // AES_256, CHACHA20_POLY1305
    }
}
