//! The spec's "TCP echo client protocol" example, on ferroloop's Rust face.
//!
//! Run: start the server first (`cargo run --example tcp_echo_server`), then
//! `cargo run --example tcp_echo_client`. Prints the spec's transcript:
//!
//! ```text
//! Data sent: 'Hello World!'
//! Data received: 'Hello World!'
//! The server closed the connection
//! Stop the event loop
//! ```

mod common;

use ferroloop::{ConnectOptions, Error, EventLoop, Protocol, Transport};

struct EchoClientProtocol {
    message: String,
    lp: EventLoop,
}

impl Protocol for EchoClientProtocol {
    fn connection_made(&mut self, transport: Transport) {
        transport.write(self.message.as_bytes()).expect("write");
        println!("Data sent: {}", common::repr(&self.message));
    }

    fn data_received(&mut self, data: &[u8]) {
        println!("Data received: {}", common::repr(&String::from_utf8_lossy(data)));
    }

    fn connection_lost(&mut self, _exc: Option<Error>) {
        println!("The server closed the connection");
        println!("Stop the event loop");
        self.lp.stop();
    }
}

fn main() -> ferroloop::Result<()> {
    let lp = EventLoop::new()?;
    let message = "Hello World!".to_string();
    let l2 = lp.clone();
    let connect = lp.create_connection(
        move || EchoClientProtocol { message, lp: l2 },
        "127.0.0.1",
        8888,
        ConnectOptions::default(),
    );
    lp.run_until_complete(&connect)?;
    lp.run_forever()?;
    lp.close()
}
