//! Transports: the I/O side of a connection, paired with a [`Protocol`](crate::Protocol).
//!
//! - [`stream`]: the stream transport (TCP and Unix sockets), [`Transport`];
//! - [`tcp`]: client connections (`create_connection`, Happy Eyeballs, `sock=`).

pub(crate) mod buffer;
pub mod stream;
pub mod tcp;

pub use stream::{Address, ExtraInfo, Transport};
pub use tcp::{ConnectOptions, Connection, StreamSocket};
