//! Transports: the I/O side of a connection, paired with a [`Protocol`](crate::Protocol).
//!
//! - [`stream`]: the stream transport (TCP and Unix sockets), [`Transport`];
//! - [`pipe`]: read and write pipe transports (the stream transport on a pipe);
//! - [`subprocess`]: child processes with pipe transports for their stdio;
//! - [`tls`]: TLS over a stream transport (rustls), [`EventLoop::create_connection_tls`](crate::EventLoop::create_connection_tls), `start_tls`;
//! - [`tcp`]: client connections (`create_connection`, Happy Eyeballs, `sock=`);
//! - [`udp`]: the datagram transport (UDP and Unix datagram sockets), [`DatagramTransport`];
//! - [`unix`]: Unix stream servers and connections (`create_unix_server`, `create_unix_connection`).

pub(crate) mod buffer;
pub mod handle;
pub(crate) mod lifecycle;
pub mod pipe;
pub(crate) mod slot;
pub mod stream;
pub mod subprocess;
pub mod tcp;
pub mod tls;
pub mod udp;
pub mod unix;

pub use pipe::TransportKind;
pub use handle::Transport;
pub use slot::PauseHook;
pub use stream::{Address, ExtraInfo, LentBytes};
pub use tls::{TlsClientOptions, TlsConfig, TlsInfo, TlsOptions, TlsServerOptions};
pub use subprocess::{
    Stdio, SubprocessConnection, SubprocessOptions, SubprocessProtocol, SubprocessProtocolRef, SubprocessTransport,
};
pub use tcp::{ConnectOptions, Connection, StreamSocket};
pub use udp::{
    DatagramEndpoint, DatagramOptions, DatagramProtocol, DatagramProtocolRef, DatagramSocket, DatagramTransport,
};
