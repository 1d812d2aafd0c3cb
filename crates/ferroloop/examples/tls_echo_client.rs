//! A TLS echo client on ferroloop's Rust face (rustls): sends a message,
//! prints the echo, stops when the server closes.
//!
//! Run against `tls_echo_server` (see its header for making the certificate):
//!
//! ```text
//! cargo run --example tls_echo_client -- target/tls-cert.pem [PORT]
//! ```
//!
//! The certificate file is the trusted root; the server's certificate must
//! name `localhost`.

use std::cell::Cell;
use std::rc::Rc;
use std::sync::Arc;

use ferroloop::rustls;
use ferroloop::rustls::pki_types::pem::PemObject;
use ferroloop::rustls::pki_types::CertificateDer;
use ferroloop::{ConnectOptions, Error, EventLoop, Protocol, TlsClientOptions, Transport};

struct Client {
    message: String,
    done: Rc<Cell<bool>>,
}

impl Protocol for Client {
    fn connection_made(&mut self, transport: Transport) {
        let info = transport.tls_info().unwrap_or_default();
        println!("TLS {} {}", info.protocol_version.unwrap_or_default(), info.cipher_suite.unwrap_or_default());
        transport.write(self.message.as_bytes()).expect("write");
        println!("Data sent: {:?}", self.message);
    }

    fn data_received(&mut self, data: &[u8]) {
        println!("Data received: {:?}", String::from_utf8_lossy(data));
    }

    fn connection_lost(&mut self, _exc: Option<Error>) {
        println!("The server closed the connection");
        self.done.set(true);
    }
}

fn main() {
    let args: Vec<String> = std::env::args().collect();
    if args.len() < 2 {
        eprintln!("usage: tls_echo_client CA.pem [PORT]");
        std::process::exit(2);
    }
    let port: u16 = args.get(2).map(|p| p.parse().expect("port")).unwrap_or(8443);
    let mut roots = rustls::RootCertStore::empty();
    for c in CertificateDer::pem_file_iter(&args[1]).expect("CA file") {
        roots.add(c.expect("certificate")).expect("root certificate");
    }
    let config = rustls::ClientConfig::builder().with_root_certificates(roots).with_no_client_auth();
    let mut tls = TlsClientOptions::new(Arc::new(config));
    tls.server_name = Some("localhost".into());
    let lp = EventLoop::new().expect("loop");
    let done = Rc::new(Cell::new(false));
    let d2 = done.clone();
    let fut = lp.create_connection_tls(
        move || Client { message: "Hello World!".into(), done: d2 },
        "127.0.0.1",
        port,
        ConnectOptions::default(),
        tls,
    );
    if let Err(e) = lp.run_until_complete(&fut) {
        eprintln!("connection failed: {e}");
        std::process::exit(1);
    }
    lp.run_until(|| done.get()).expect("run");
}
