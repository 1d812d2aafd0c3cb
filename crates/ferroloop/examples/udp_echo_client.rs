//! The spec's "UDP echo client protocol" example, on ferroloop's Rust face.
//!
//! Run: start the server first (`cargo run --example udp_echo_server`), then
//! `cargo run --example udp_echo_client`. Prints the spec's transcript:
//!
//! ```text
//! Send: Hello World!
//! Received: Hello World!
//! Close the socket
//! Socket closed, stop the event loop
//! ```

use ferroloop::{Address, DatagramOptions, DatagramProtocol, DatagramTransport, Error, EventLoop};

struct EchoClientProtocol {
    message: String,
    lp: EventLoop,
    transport: Option<DatagramTransport>,
}

impl DatagramProtocol for EchoClientProtocol {
    fn connection_made(&mut self, transport: DatagramTransport) {
        println!("Send: {}", self.message);
        transport.sendto(self.message.as_bytes(), None).expect("sendto");
        self.transport = Some(transport);
    }

    fn datagram_received(&mut self, data: &[u8], _addr: &Address) {
        println!("Received: {}", String::from_utf8_lossy(data));

        println!("Close the socket");
        self.transport.as_ref().expect("connected").close();
    }

    fn error_received(&mut self, exc: Error) {
        println!("Error received: {exc}");
    }

    fn connection_lost(&mut self, _exc: Option<Error>) {
        println!("Socket closed, stop the event loop");
        self.lp.stop();
    }
}

fn main() -> ferroloop::Result<()> {
    let lp = EventLoop::new()?;
    let message = "Hello World!".to_string();
    let l2 = lp.clone();
    let connect = lp.create_datagram_endpoint(
        move || EchoClientProtocol { message, lp: l2, transport: None },
        DatagramOptions { remote_addr: Some(("127.0.0.1".into(), 9999)), ..Default::default() },
    );
    let (transport, _protocol) = lp.run_until_complete(&connect)?;
    lp.run_forever()?;
    transport.close();
    lp.close()
}
