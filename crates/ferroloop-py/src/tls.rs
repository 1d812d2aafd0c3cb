//! `ferroloop.TLSContext`: the Python face's TLS fast path.
//!
//! A `TLSContext` holds a rustls configuration (client or server side) built
//! from PEM files. Passed as `ssl=` to `create_connection`, `create_server`,
//! `start_tls`..., it makes the loop use the engine's TLS transport: records
//! are encrypted and decrypted in Rust, with no Python call per record (a
//! Python `ssl.SSLContext` keeps going through asyncio's own `SSLProtocol`).

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use ferroloop::rustls;
use ferroloop::{TlsClientOptions, TlsOptions, TlsServerOptions};
use pyo3::exceptions::{PyOSError, PyValueError};
use pyo3::prelude::*;
use pyo3::types::PyTuple;
use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::crypto::CryptoProvider;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName, UnixTime};
use rustls::{DigitallySignedStruct, SignatureScheme};

/// `ssl.SSLError(1, message)`.
fn ssl_error(py: Python<'_>, message: String) -> PyErr {
    match py.import("ssl").and_then(|m| m.getattr("SSLError")).and_then(|t| t.call1((1, message.clone()))) {
        Ok(e) => PyErr::from_value(e),
        Err(e) => e,
    }
}

/// Read a PEM file: `OSError` (with errno) if it cannot be read.
fn read_file(path: &PathBuf) -> PyResult<Vec<u8>> {
    std::fs::read(path).map_err(|e| match e.raw_os_error() {
        Some(code) => PyOSError::new_err((code, e.to_string(), path.display().to_string())),
        None => PyOSError::new_err(e.to_string()),
    })
}

fn load_certs(py: Python<'_>, path: &PathBuf) -> PyResult<Vec<CertificateDer<'static>>> {
    let pem = read_file(path)?;
    let certs: Result<Vec<_>, _> = CertificateDer::pem_slice_iter(&pem).collect();
    let certs = certs.map_err(|e| ssl_error(py, format!("{}: bad PEM certificate: {e}", path.display())))?;
    if certs.is_empty() {
        return Err(ssl_error(py, format!("{}: no certificate found", path.display())));
    }
    Ok(certs)
}

fn load_key(py: Python<'_>, path: &PathBuf) -> PyResult<PrivateKeyDer<'static>> {
    let pem = read_file(path)?;
    PrivateKeyDer::from_pem_slice(&pem).map_err(|e| ssl_error(py, format!("{}: no usable private key: {e}", path.display())))
}

fn roots(py: Python<'_>, cafile: Option<&PathBuf>) -> PyResult<rustls::RootCertStore> {
    let mut store = rustls::RootCertStore::empty();
    match cafile {
        Some(path) => {
            for c in load_certs(py, path)? {
                store.add(c).map_err(|e| ssl_error(py, format!("{}: {e}", path.display())))?;
            }
        }
        None => {
            // The system's trust store, as `ssl.create_default_context()`.
            let found = rustls_native_certs::load_native_certs();
            store.add_parsable_certificates(found.certs);
            if store.is_empty() {
                return Err(ssl_error(py, "no trusted CA certificates found in the system store; pass cafile=".into()));
            }
        }
    }
    Ok(store)
}

fn versions(py: Python<'_>, names: Option<Vec<String>>) -> PyResult<Vec<&'static rustls::SupportedProtocolVersion>> {
    let Some(names) = names else { return Ok(rustls::DEFAULT_VERSIONS.to_vec()) };
    let mut out = Vec::new();
    for n in names {
        match n.as_str() {
            "TLSv1.2" => out.push(&rustls::version::TLS12),
            "TLSv1.3" => out.push(&rustls::version::TLS13),
            other => {
                return Err(ssl_error(py, format!("unsupported TLS version {other:?} (TLSv1.2 and TLSv1.3 are)")));
            }
        }
    }
    if out.is_empty() {
        return Err(PyValueError::new_err("versions must name at least one TLS version"));
    }
    Ok(out)
}

fn alpn(protocols: Option<Vec<String>>) -> Vec<Vec<u8>> {
    protocols.unwrap_or_default().into_iter().map(String::into_bytes).collect()
}

fn provider() -> Arc<CryptoProvider> {
    CryptoProvider::get_default().cloned().unwrap_or_else(|| Arc::new(rustls::crypto::ring::default_provider()))
}

/// `verify=False`: any server certificate is accepted (as `ssl.CERT_NONE`),
/// but the handshake's signatures are still checked against it.
#[derive(Debug)]
struct AcceptAnyServerCert(Arc<CryptoProvider>);

impl ServerCertVerifier for AcceptAnyServerCert {
    fn verify_server_cert(
        &self,
        _end_entity: &CertificateDer<'_>,
        _intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        _ocsp_response: &[u8],
        _now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        Ok(ServerCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(message, cert, dss, &self.0.signature_verification_algorithms)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(message, cert, dss, &self.0.signature_verification_algorithms)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.0.signature_verification_algorithms.supported_schemes()
    }
}

enum Side {
    Client(Arc<rustls::ClientConfig>),
    Server(Arc<rustls::ServerConfig>),
}

/// A rustls TLS configuration for `ssl=` (the fast path). Made with
/// `TLSContext.client(...)` or `TLSContext.server(...)`.
#[pyclass(module = "ferroloop._ferroloop", name = "TLSContext", frozen)]
pub struct TlsContext {
    side: Side,
    alpn: Vec<Vec<u8>>,
    verify: bool,
}

impl TlsContext {
    /// The engine options for one connection.
    pub(crate) fn options(
        &self,
        server_hostname: Option<String>,
        handshake_timeout: Option<f64>,
        shutdown_timeout: Option<f64>,
    ) -> PyResult<TlsOptions> {
        let secs = |v: Option<f64>| -> PyResult<Option<Duration>> {
            match v {
                None => Ok(None),
                Some(s) if s > 0.0 => Duration::try_from_secs_f64(s)
                    .map(Some)
                    .map_err(|_| PyValueError::new_err(format!("timeout is out of range: {s}"))),
                Some(s) => Err(PyValueError::new_err(format!("timeout should be a positive number, got {s}"))),
            }
        };
        let (hs, sd) = (secs(handshake_timeout)?, secs(shutdown_timeout)?);
        Ok(match &self.side {
            Side::Client(c) => {
                let Some(name) = server_hostname else {
                    return Err(PyValueError::new_err("server_hostname is required with a client TLSContext"));
                };
                TlsOptions::Client(TlsClientOptions {
                    config: c.clone(),
                    server_name: Some(name),
                    handshake_timeout: hs,
                    shutdown_timeout: sd,
                })
            }
            Side::Server(c) => {
                TlsOptions::Server(TlsServerOptions { config: c.clone(), handshake_timeout: hs, shutdown_timeout: sd })
            }
        })
    }
}

#[pymethods]
impl TlsContext {
    /// A server-side context: the certificate chain in `certfile` (PEM) and
    /// its private key in `keyfile` (or in `certfile` too). `cafile` and
    /// `client_auth` (`"none"`, `"optional"`, `"required"`) ask clients for
    /// certificates signed by those CAs. `alpn_protocols` in order of
    /// preference; `versions` a subset of `("TLSv1.2", "TLSv1.3")`.
    #[staticmethod]
    #[pyo3(signature = (certfile, keyfile=None, *, alpn_protocols=None, cafile=None, client_auth="none", versions=None))]
    fn server(
        py: Python<'_>,
        certfile: PathBuf,
        keyfile: Option<PathBuf>,
        alpn_protocols: Option<Vec<String>>,
        cafile: Option<PathBuf>,
        client_auth: &str,
        versions: Option<Vec<String>>,
    ) -> PyResult<Self> {
        let chain = load_certs(py, &certfile)?;
        let key = load_key(py, keyfile.as_ref().unwrap_or(&certfile))?;
        let builder = rustls::ServerConfig::builder_with_provider(provider())
            .with_protocol_versions(&self::versions(py, versions)?)
            .map_err(|e| ssl_error(py, e.to_string()))?;
        let builder = match client_auth {
            "none" => builder.with_no_client_auth(),
            "optional" | "required" => {
                let Some(ca) = cafile.as_ref() else {
                    return Err(PyValueError::new_err("client_auth needs cafile= (the CAs client certificates must chain to)"));
                };
                let store = Arc::new(roots(py, Some(ca))?);
                let vb = rustls::server::WebPkiClientVerifier::builder_with_provider(store, provider());
                let vb = if client_auth == "optional" { vb.allow_unauthenticated() } else { vb };
                builder.with_client_cert_verifier(vb.build().map_err(|e| ssl_error(py, e.to_string()))?)
            }
            other => {
                return Err(PyValueError::new_err(format!(
                    "client_auth must be 'none', 'optional' or 'required', not {other:?}"
                )))
            }
        };
        let mut config = builder
            .with_single_cert(chain, key)
            .map_err(|e| ssl_error(py, format!("certificate and key do not form a usable pair: {e}")))?;
        let alpn = alpn(alpn_protocols);
        config.alpn_protocols = alpn.clone();
        Ok(TlsContext { side: Side::Server(Arc::new(config)), alpn, verify: client_auth != "none" })
    }

    /// A client-side context. The server's certificate is verified against
    /// `cafile` (PEM), or the system's trust store when it is `None`, and
    /// its name against the `server_hostname` (by default the host
    /// connected to); `verify=False` accepts any certificate (as
    /// `ssl.CERT_NONE`). `certfile`/`keyfile`: a client certificate.
    #[staticmethod]
    #[pyo3(signature = (*, cafile=None, certfile=None, keyfile=None, alpn_protocols=None, verify=true, versions=None))]
    fn client(
        py: Python<'_>,
        cafile: Option<PathBuf>,
        certfile: Option<PathBuf>,
        keyfile: Option<PathBuf>,
        alpn_protocols: Option<Vec<String>>,
        verify: bool,
        versions: Option<Vec<String>>,
    ) -> PyResult<Self> {
        let builder = rustls::ClientConfig::builder_with_provider(provider())
            .with_protocol_versions(&self::versions(py, versions)?)
            .map_err(|e| ssl_error(py, e.to_string()))?;
        let builder = if verify {
            builder.with_root_certificates(roots(py, cafile.as_ref())?)
        } else {
            builder.dangerous().with_custom_certificate_verifier(Arc::new(AcceptAnyServerCert(provider())))
        };
        let mut config = match certfile {
            Some(cert) => {
                let chain = load_certs(py, &cert)?;
                let key = load_key(py, keyfile.as_ref().unwrap_or(&cert))?;
                builder
                    .with_client_auth_cert(chain, key)
                    .map_err(|e| ssl_error(py, format!("certificate and key do not form a usable pair: {e}")))?
            }
            None => builder.with_no_client_auth(),
        };
        let alpn = alpn(alpn_protocols);
        config.alpn_protocols = alpn.clone();
        Ok(TlsContext { side: Side::Client(Arc::new(config)), alpn, verify })
    }

    /// True for a server-side context.
    #[getter]
    fn server_side(&self) -> bool {
        matches!(self.side, Side::Server(_))
    }

    /// The ALPN protocols offered, in order of preference.
    #[getter]
    fn alpn_protocols<'py>(&self, py: Python<'py>) -> PyResult<Bound<'py, PyTuple>> {
        PyTuple::new(py, self.alpn.iter().map(|p| String::from_utf8_lossy(p).into_owned()))
    }

    /// Whether the peer's certificate is verified (client: the server's;
    /// server: a client certificate is asked for).
    #[getter]
    fn verify(&self) -> bool {
        self.verify
    }

    fn __repr__(&self) -> String {
        format!(
            "<ferroloop.TLSContext {} alpn={:?} verify={}>",
            if self.server_side() { "server" } else { "client" },
            self.alpn.iter().map(|p| String::from_utf8_lossy(p).into_owned()).collect::<Vec<_>>(),
            self.verify
        )
    }
}
