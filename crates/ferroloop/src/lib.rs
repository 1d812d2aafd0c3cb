//! # ferroloop
//!
//! asyncio's *transports and protocols* — the callback API of Python's
//! event loop — as a Rust event loop on [mio]. A program implements
//! [`Protocol`]; the loop drives it over a [`Transport`] with asyncio's exact
//! semantics: the protocol state machine, write flow control with high/low
//! water marks, pause/resume reading, half-close, protocol switching.
//!
//! ```no_run
//! use ferroloop::{EventLoop, Protocol, ServerOptions, Transport};
//!
//! #[derive(Default)]
//! struct Echo { t: Option<Transport> }
//!
//! impl Protocol for Echo {
//!     fn connection_made(&mut self, t: Transport) { self.t = Some(t); }
//!     fn data_received(&mut self, data: &[u8]) {
//!         self.t.as_ref().unwrap().write(data).unwrap();
//!     }
//! }
//!
//! let lp = EventLoop::new().unwrap();
//! let server = lp
//!     .run_until_complete(&lp.create_server(Echo::default, "127.0.0.1", 8888, ServerOptions::default()))
//!     .unwrap();
//! server.serve_forever().unwrap();
//! ```
//!
//! The loop is single-threaded, like asyncio's; scale across cores with one
//! loop per thread and `reuse_port`. Only [`LoopRemote`] crosses threads.

#![warn(missing_docs)]

pub mod child;
pub mod connect;
pub mod error;
pub mod event_loop;
pub mod flow;
pub mod future;
pub mod handle;
pub mod protocol;
pub mod resolve;
pub mod server;
pub mod signal;
mod sys;
mod timer;
pub mod transport;

pub use error::{Error, Result, TlsError};
pub use event_loop::{Blocker, EventLoop, ExceptionContext, ExceptionHandler, LoopRemote, PollStep, WarningHandler};
pub use flow::WriteFlow;
pub use future::LoopFuture;
pub use handle::{Handle, RemoteHandle, TimerHandle};
pub use protocol::{protocol_ref, Protocol, ProtocolRef};
pub use resolve::Family;
pub use server::{Host, Server, ServerOptions, ServerSocket};
pub use connect::ConnectOptions;
pub use transport::{Address, Connection, ExtraInfo, LentBytes, PauseHook, StreamSocket, Transport};
pub use transport::{TlsClientOptions, TlsConfig, TlsInfo, TlsOptions, TlsServerOptions};
/// The rustls crate this engine's TLS transport is built on (for its configuration types).
pub use rustls;
pub use server::accept::{self as accept, Accepted, Acceptor, Listener};
pub use child::ChildWatcher;
pub use transport::{
    Stdio, SubprocessConnection, SubprocessOptions, SubprocessProtocol, SubprocessProtocolRef, SubprocessTransport,
    TransportKind,
};
pub use transport::{
    DatagramEndpoint, DatagramOptions, DatagramProtocol, DatagramProtocolRef, DatagramSocket, DatagramTransport,
};
