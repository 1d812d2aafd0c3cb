//! Transports: the I/O side of a connection, paired with a [`Protocol`](crate::Protocol).
//!
//! - [`stream`]: the stream transport (TCP and Unix sockets), [`Transport`];
//! - [`tcp`]: client connections (`create_connection`, Happy Eyeballs, `sock=`);
//! - [`udp`]: the datagram transport (UDP and Unix datagram sockets), [`DatagramTransport`];
//! - [`unix`]: Unix stream servers and connections (`create_unix_server`, `create_unix_connection`).

pub(crate) mod buffer;
pub mod stream;
pub mod tcp;
pub mod udp;
pub mod unix;

pub use stream::{Address, ExtraInfo, Transport};
pub use tcp::{ConnectOptions, Connection, StreamSocket};
pub use udp::{
    DatagramEndpoint, DatagramOptions, DatagramProtocol, DatagramProtocolRef, DatagramSocket, DatagramTransport,
};
