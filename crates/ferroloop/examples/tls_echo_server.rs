//! A TLS echo server on ferroloop's Rust face (rustls).
//!
//! Run (certificate made with openssl, as `make demo` does):
//!
//! ```text
//! openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes -days 1 \
//!     -subj /CN=localhost -addext subjectAltName=DNS:localhost -addext basicConstraints=critical,CA:FALSE \
//!     -keyout target/tls-key.pem -out target/tls-cert.pem
//! cargo run --example tls_echo_server -- target/tls-cert.pem target/tls-key.pem [PORT]
//! cargo run --example tls_echo_client -- target/tls-cert.pem [PORT]
//! # or: openssl s_client -connect 127.0.0.1:8443 -CAfile target/tls-cert.pem -quiet
//! ```
//!
//! Echoes each message back, then closes (with close_notify), like the spec's
//! TCP echo server. Serves until Ctrl+C.

use std::sync::Arc;

use ferroloop::rustls;
use ferroloop::rustls::pki_types::pem::PemObject;
use ferroloop::rustls::pki_types::{CertificateDer, PrivateKeyDer};
use ferroloop::{EventLoop, ExtraInfo, Protocol, ServerOptions, TlsServerOptions, Transport};

#[derive(Default)]
struct TlsEcho {
    transport: Option<Transport>,
}

impl Protocol for TlsEcho {
    fn connection_made(&mut self, transport: Transport) {
        let info = transport.tls_info().unwrap_or_default();
        let cipher = match transport.get_extra_info("cipher") {
            Some(ExtraInfo::Cipher { name, .. }) => name,
            _ => String::new(),
        };
        println!(
            "Connection from {} ({}, {cipher})",
            transport.peername().map(|a| a.to_string()).unwrap_or_default(),
            info.protocol_version.unwrap_or_default()
        );
        self.transport = Some(transport);
    }

    fn data_received(&mut self, data: &[u8]) {
        println!("Data received: {:?}", String::from_utf8_lossy(data));
        let t = self.transport.as_ref().expect("connected");
        t.write(data).expect("write");
        println!("Close the client socket");
        t.close();
    }
}

fn main() {
    let args: Vec<String> = std::env::args().collect();
    if args.len() < 3 {
        eprintln!("usage: tls_echo_server CERT.pem KEY.pem [PORT]");
        std::process::exit(2);
    }
    let port: u16 = args.get(3).map(|p| p.parse().expect("port")).unwrap_or(8443);
    let certs: Vec<CertificateDer<'static>> =
        CertificateDer::pem_file_iter(&args[1]).expect("certificate file").map(|c| c.expect("certificate")).collect();
    let key = PrivateKeyDer::from_pem_file(&args[2]).expect("key file");
    let config = rustls::ServerConfig::builder().with_no_client_auth().with_single_cert(certs, key).expect("certificate and key");
    let opts = ServerOptions { tls: Some(TlsServerOptions::new(Arc::new(config))), ..Default::default() };
    let lp = EventLoop::new().expect("loop");
    let server = lp.run_until_complete(&lp.create_server(TlsEcho::default, "127.0.0.1", port, opts)).expect("listen");
    println!("Serving TLS on 127.0.0.1:{port}");
    let s2 = server.clone();
    lp.add_signal_handler(libc::SIGINT, move || s2.close()).expect("SIGINT handler");
    server.serve_forever().expect("serve");
}
