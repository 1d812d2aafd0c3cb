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

#[cfg(test)]
mod tests {
    use rustls::pki_types::{CertificateDer, PrivateKeyDer, PrivatePkcs8KeyDer};

    use super::*;

    type Version = &'static rustls::SupportedProtocolVersion;

    /// A self-signed certificate for `localhost` and its key (PKCS#8 DER).
    fn pki() -> (CertificateDer<'static>, Vec<u8>) {
        let ck = rcgen::generate_simple_self_signed(vec!["localhost".to_string()]).unwrap();
        (ck.cert.der().clone(), ck.key_pair.serialize_der())
    }

    fn server_config(cert: &CertificateDer<'static>, key: &[u8], alpn: &[&[u8]]) -> Arc<rustls::ServerConfig> {
        let key = PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(key.to_vec()));
        let mut c =
            rustls::ServerConfig::builder().with_no_client_auth().with_single_cert(vec![cert.clone()], key).unwrap();
        c.alpn_protocols = alpn.iter().map(|a| a.to_vec()).collect();
        Arc::new(c)
    }

    fn client_config(trusted: &CertificateDer<'static>, version: Version, alpn: &[&[u8]]) -> Arc<rustls::ClientConfig> {
        let mut roots = rustls::RootCertStore::empty();
        roots.add(trusted.clone()).unwrap();
        let mut c = rustls::ClientConfig::builder_with_protocol_versions(&[version])
            .with_root_certificates(roots)
            .with_no_client_auth();
        c.alpn_protocols = alpn.iter().map(|a| a.to_vec()).collect();
        Arc::new(c)
    }

    /// Move all of `from`'s pending ciphertext into `to` and process it:
    /// whether anything moved, and whether `to` saw close_notify.
    fn pump(from: &mut TlsSession, to: &mut TlsSession) -> Result<(bool, bool)> {
        let mut wire = Vec::new();
        from.take_ciphertext(&mut wire);
        let mut closed = false;
        let mut rest = &wire[..];
        while !rest.is_empty() {
            let n = to.feed(rest)?;
            assert!(n > 0, "the session takes no more ciphertext");
            rest = &rest[n..];
            closed |= to.process()?.peer_closed;
        }
        Ok((!wire.is_empty(), closed))
    }

    /// Pump both ways until neither side has anything to send.
    fn settle(client: &mut TlsSession, server: &mut TlsSession) -> Result<()> {
        for _ in 0..20 {
            let (a, _) = pump(client, server)?;
            let (b, _) = pump(server, client)?;
            if !a && !b {
                return Ok(());
            }
        }
        panic!("the sessions never settle");
    }

    fn read_all(s: &mut TlsSession) -> Vec<u8> {
        let mut out = Vec::new();
        let mut buf = [0u8; 4096];
        while let Some(n) = s.read_plaintext(&mut buf) {
            out.extend_from_slice(&buf[..n]);
        }
        out
    }

    /// A connected pair over TLS `version`, and the server's certificate.
    fn connected(version: Version) -> (TlsSession, TlsSession, CertificateDer<'static>) {
        let (cert, key) = pki();
        let mut client = TlsSession::client(client_config(&cert, version, &[]), "localhost").unwrap();
        let mut server = TlsSession::server(server_config(&cert, &key, &[])).unwrap();
        settle(&mut client, &mut server).unwrap();
        (client, server, cert)
    }

    #[test]
    fn a_handshake_completes_in_memory_and_info_reports_it() {
        let (cert, key) = pki();
        let ccfg = client_config(&cert, &rustls::version::TLS13, &[b"h2", b"http/1.1"]);
        let scfg = server_config(&cert, &key, &[b"http/1.1"]);
        let mut client = TlsSession::client(ccfg.clone(), "localhost").unwrap();
        let mut server = TlsSession::server(scfg.clone()).unwrap();
        assert!(client.is_handshaking() && server.is_handshaking());
        assert_eq!(client.cipher(), None);
        assert_eq!(client.peer_cert(), None);
        let before = client.info();
        assert_eq!(before, TlsInfo { server_name: Some("localhost".into()), ..Default::default() });
        assert_eq!(server.info(), TlsInfo::default());

        settle(&mut client, &mut server).unwrap();
        assert!(!client.is_handshaking() && !server.is_handshaking());

        let (name, version, bits) = client.cipher().unwrap();
        assert!(name.starts_with("TLS13_"), "{name}");
        assert_eq!(version, "TLSv1.3");
        assert_eq!(bits, if name.contains("AES_128") { 128 } else { 256 });
        assert_eq!(server.cipher(), Some((name.clone(), version, bits)));

        let info = client.info();
        assert_eq!(info.protocol_version.as_deref(), Some("TLSv1.3"));
        assert_eq!(info.cipher_suite.as_deref(), Some(name.as_str()));
        assert_eq!(info.cipher_bits, Some(bits));
        assert_eq!(info.alpn_protocol.as_deref(), Some(&b"http/1.1"[..]));
        assert_eq!(info.peer_certificates, vec![cert.as_ref().to_vec()]);
        assert_eq!(info.server_name.as_deref(), Some("localhost"));
        assert!(!info.resumed);
        assert_eq!(client.peer_cert().as_deref(), Some(cert.as_ref()));

        let info = server.info();
        assert_eq!(info.server_name.as_deref(), Some("localhost"), "the SNI the client sent");
        assert_eq!(info.alpn_protocol.as_deref(), Some(&b"http/1.1"[..]));
        assert!(info.peer_certificates.is_empty(), "no client certificate");
        assert_eq!(server.peer_cert(), None);

        assert_eq!(client.config(), TlsConfig::Client(ccfg));
        assert_eq!(server.config(), TlsConfig::Server(scfg));
    }

    #[test]
    fn tls12_is_reported_by_name() {
        let (client, server, _) = connected(&rustls::version::TLS12);
        let (name, version, bits) = client.cipher().unwrap();
        assert!(name.starts_with("TLS_ECDHE_"), "{name}");
        assert_eq!(version, "TLSv1.2");
        assert_eq!(bits, if name.contains("AES_128") { 128 } else { 256 });
        assert_eq!(server.info().protocol_version.as_deref(), Some("TLSv1.2"));
    }

    #[test]
    fn plaintext_crosses_both_ways_and_early_writes_wait_for_the_handshake() {
        let (cert, key) = pki();
        let mut client = TlsSession::client(client_config(&cert, &rustls::version::TLS13, &[]), "localhost").unwrap();
        let mut server = TlsSession::server(server_config(&cert, &key, &[])).unwrap();
        assert_eq!(client.write_plaintext(b"early "), 6, "buffered during the handshake");
        settle(&mut client, &mut server).unwrap();
        assert_eq!(read_all(&mut server), b"early ");
        assert_eq!(server.read_plaintext(&mut [0u8; 16]), None, "nothing more");

        let ping: Vec<u8> = (0..10_000u32).map(|i| (i % 251) as u8).collect();
        assert_eq!(client.write_plaintext(&ping), ping.len());
        assert_eq!(server.write_plaintext(b"pong"), 4);
        settle(&mut client, &mut server).unwrap();
        assert_eq!(read_all(&mut server), ping);
        assert_eq!(read_all(&mut client), b"pong");
    }

    #[test]
    fn a_full_plaintext_buffer_refuses_ciphertext_until_it_is_read() {
        let (mut client, mut server, _) = connected(&rustls::version::TLS13);
        let big: Vec<u8> = (0..100_000u32).map(|i| (i % 253) as u8).collect();
        assert_eq!(client.write_plaintext(&big), big.len(), "no limit on what is queued for sending");
        let mut wire = Vec::new();
        client.take_ciphertext(&mut wire);
        assert!(wire.len() > big.len());
        let (mut got, mut refused, mut rest) = (Vec::new(), 0, &wire[..]);
        while !rest.is_empty() {
            // rustls keeps 16 KiB of received plaintext at most: `feed` then
            // fails (an I/O error, not a short count) until it is read.
            match server.feed(rest) {
                Ok(n) => {
                    assert!(n > 0);
                    rest = &rest[n..];
                    server.process().unwrap();
                }
                Err(e) => {
                    assert!(matches!(e, Error::Io(_)), "{e:?}");
                    refused += 1;
                    let drained = read_all(&mut server);
                    assert!(!drained.is_empty(), "refused with nothing to read");
                    got.extend(drained);
                }
            }
        }
        got.extend(read_all(&mut server));
        assert!(refused > 0);
        assert!(got == big, "byte-exact across the refusals");
    }

    #[test]
    fn close_notify_reaches_the_peer_after_the_data() {
        let (mut client, mut server, _) = connected(&rustls::version::TLS13);
        client.write_plaintext(b"last words");
        client.send_close_notify();
        let (_, closed) = pump(&mut client, &mut server).unwrap();
        assert!(closed, "the server sees close_notify");
        assert_eq!(read_all(&mut server), b"last words");
        server.send_close_notify();
        let (_, closed) = pump(&mut server, &mut client).unwrap();
        assert!(closed);
        assert!(read_all(&mut client).is_empty());
    }

    #[test]
    fn an_untrusted_certificate_fails_the_handshake_on_both_sides() {
        let (cert, key) = pki();
        let (other, _) = pki();
        let mut client = TlsSession::client(client_config(&other, &rustls::version::TLS13, &[]), "localhost").unwrap();
        let mut server = TlsSession::server(server_config(&cert, &key, &[])).unwrap();
        pump(&mut client, &mut server).unwrap();
        let err = pump(&mut server, &mut client).unwrap_err();
        assert!(
            matches!(err, Error::Tls(TlsError::Protocol(rustls::Error::InvalidCertificate(_)))),
            "client: {err:?}"
        );
        assert!(client.is_handshaking());
        // The client's alert tells the server.
        let err = pump(&mut client, &mut server).unwrap_err();
        assert!(matches!(err, Error::Tls(TlsError::Protocol(rustls::Error::AlertReceived(_)))), "server: {err:?}");
    }

    #[test]
    fn a_certificate_for_another_name_fails_the_handshake() {
        let (cert, key) = pki();
        let mut client = TlsSession::client(client_config(&cert, &rustls::version::TLS13, &[]), "example.com").unwrap();
        let mut server = TlsSession::server(server_config(&cert, &key, &[])).unwrap();
        let err = settle(&mut client, &mut server).unwrap_err();
        assert!(
            matches!(err, Error::Tls(TlsError::Protocol(rustls::Error::InvalidCertificate(_)))),
            "{err:?}"
        );
    }

    #[test]
    fn an_invalid_server_name_is_an_argument_error() {
        let (cert, _) = pki();
        let Err(err) = TlsSession::client(client_config(&cert, &rustls::version::TLS13, &[]), "not a name") else {
            panic!("accepted");
        };
        let Error::InvalidArgument(m) = &err else { panic!("{err:?}") };
        assert!(m.starts_with("invalid server name \"not a name\""), "{m}");
    }

    #[test]
    fn garbage_on_the_wire_is_a_tls_error() {
        let (cert, key) = pki();
        let mut server = TlsSession::server(server_config(&cert, &key, &[])).unwrap();
        let n = server.feed(b"GET / HTTP/1.1\r\n\r\n").unwrap();
        assert!(n > 0);
        assert!(matches!(server.process(), Err(Error::Tls(TlsError::Protocol(_)))));
    }

    #[test]
    fn eof_without_close_notify_is_not_a_clean_close() {
        let (mut client, mut server, _) = connected(&rustls::version::TLS13);
        client.write_plaintext(b"cut");
        pump(&mut client, &mut server).unwrap();
        server.feed_eof();
        let progress = server.process().unwrap();
        assert!(!progress.peer_closed, "only close_notify counts");
        assert_eq!(read_all(&mut server), b"cut", "what arrived before EOF is kept");
    }

    #[test]
    fn a_second_connection_with_the_same_configs_resumes() {
        let (cert, key) = pki();
        let ccfg = client_config(&cert, &rustls::version::TLS13, &[]);
        let scfg = server_config(&cert, &key, &[]);
        for resumed in [false, true] {
            let mut client = TlsSession::client(ccfg.clone(), "localhost").unwrap();
            let mut server = TlsSession::server(scfg.clone()).unwrap();
            settle(&mut client, &mut server).unwrap();
            assert_eq!(client.info().resumed, resumed);
            assert_eq!(server.info().resumed, resumed);
        }
    }
}
