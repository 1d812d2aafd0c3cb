//! The spec's "Register an open socket to wait for data using a protocol"
//! example: a socketpair, one end handed to the loop as a transport.
//!
//! Run: `cargo run --example register_open_socket`. Prints:
//!
//! ```text
//! Received: abc
//! ```

use std::io::Write;
use std::os::unix::net::UnixStream;

use ferroloop::{Error, EventLoop, Protocol, Transport};

struct MyProtocol {
    transport: Option<Transport>,
    lp: EventLoop,
}

impl Protocol for MyProtocol {
    fn connection_made(&mut self, transport: Transport) {
        self.transport = Some(transport);
    }

    fn data_received(&mut self, data: &[u8]) {
        println!("Received: {}", String::from_utf8_lossy(data));

        // We are done: close the transport (it will call connection_lost())
        self.transport.as_ref().expect("connected").close();
    }

    fn connection_lost(&mut self, _exc: Option<Error>) {
        // The socket has been closed, stop the event loop
        self.lp.stop();
    }
}

fn main() -> ferroloop::Result<()> {
    // Create a pair of connected sockets
    let (rsock, mut wsock) = UnixStream::pair()?;
    let lp = EventLoop::new()?;

    // Register the socket to wait for data
    let l2 = lp.clone();
    let connect = lp.create_connection_from_socket(move || MyProtocol { transport: None, lp: l2 }, rsock);
    let (_transport, _protocol) = lp.run_until_complete(&connect)?;

    // Simulate the reception of data from the network
    lp.call_soon(move || {
        wsock.write_all(b"abc").expect("send");
    })?;

    // Run the event loop
    lp.run_forever()?;

    // We are done, close the event loop (the write end closes when its callback is dropped)
    lp.close()
}
