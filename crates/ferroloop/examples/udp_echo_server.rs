//! The spec's "UDP echo server protocol" example, on ferroloop's Rust face.
//!
//! Run: `cargo run --example udp_echo_server`, then in another terminal
//! `cargo run --example udp_echo_client` (or `echo hi | socat - UDP:127.0.0.1:9999`).
//! Serves until Ctrl+C. Prints the spec's transcript, per datagram:
//!
//! ```text
//! Starting UDP server
//! Received 'Hello World!' from ('127.0.0.1', 50000)
//! Send 'Hello World!' to ('127.0.0.1', 50000)
//! ```

mod common;

use ferroloop::{Address, DatagramOptions, DatagramProtocol, DatagramTransport, EventLoop};

#[derive(Default)]
struct EchoServerProtocol {
    transport: Option<DatagramTransport>,
}

impl DatagramProtocol for EchoServerProtocol {
    fn connection_made(&mut self, transport: DatagramTransport) {
        self.transport = Some(transport);
    }

    fn datagram_received(&mut self, data: &[u8], addr: &Address) {
        let message = String::from_utf8_lossy(data);
        println!("Received {} from {}", common::repr(&message), common::addr_repr(addr));
        println!("Send {} to {}", common::repr(&message), common::addr_repr(addr));
        self.transport.as_ref().expect("connected").sendto(data, Some(addr)).expect("sendto");
    }
}

fn main() -> ferroloop::Result<()> {
    let lp = EventLoop::new()?;
    println!("Starting UDP server");
    // One protocol instance will be created to serve all client requests
    let listen = lp.create_datagram_endpoint(
        EchoServerProtocol::default,
        DatagramOptions { local_addr: Some(("127.0.0.1".into(), 9999)), ..Default::default() },
    );
    let (transport, _protocol) = lp.run_until_complete(&listen)?;

    let l2 = lp.clone();
    lp.add_signal_handler(libc::SIGINT, move || l2.stop())?;
    lp.run_forever()?;

    transport.close();
    lp.close()
}
