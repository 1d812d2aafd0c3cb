//! Transport bindings, one file per engine transport.

pub mod pipe;
pub mod stream;
pub mod udp;
