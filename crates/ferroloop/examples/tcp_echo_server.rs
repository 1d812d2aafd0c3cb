//! The spec's "TCP echo server protocol" example, on ferroloop's Rust face.
//!
//! Run: `cargo run --example tcp_echo_server`, then in another terminal
//! `cargo run --example tcp_echo_client` (or `echo hi | socat - TCP:127.0.0.1:8888`).
//! Serves until Ctrl+C. Prints, per client, the spec's transcript:
//!
//! ```text
//! Serving on ('127.0.0.1', 8888)
//! Connection from ('127.0.0.1', 50000)
//! Data received: 'Hello World!'
//! Send: 'Hello World!'
//! Close the client socket
//! ```

mod common;

use ferroloop::{EventLoop, Protocol, ServerOptions, Transport};

#[derive(Default)]
struct EchoServerClientProtocol {
    transport: Option<Transport>,
}

impl Protocol for EchoServerClientProtocol {
    fn connection_made(&mut self, transport: Transport) {
        let peername = transport.peername().expect("peername");
        println!("Connection from {}", common::addr_repr(&peername));
        self.transport = Some(transport);
    }

    fn data_received(&mut self, data: &[u8]) {
        let message = String::from_utf8_lossy(data);
        println!("Data received: {}", common::repr(&message));

        println!("Send: {}", common::repr(&message));
        let t = self.transport.as_ref().expect("connected");
        t.write(data).expect("write");

        println!("Close the client socket");
        t.close();
    }
}

fn main() -> ferroloop::Result<()> {
    let lp = EventLoop::new()?;
    // Each client connection will create a new protocol instance
    let coro = lp.create_server(EchoServerClientProtocol::default, "127.0.0.1", 8888, ServerOptions::default());
    let server = lp.run_until_complete(&coro)?;

    // Serve requests until Ctrl+C is pressed
    let sockname = server.sockets()[0].address.clone().expect("bound");
    println!("Serving on {}", common::addr_repr(&sockname));
    let l2 = lp.clone();
    lp.add_signal_handler(libc::SIGINT, move || l2.stop())?;
    lp.run_forever()?;

    // Close the server
    server.close();
    lp.run_until_complete(&server.wait_closed())?;
    lp.close()
}
