//! Transport bindings, one file per engine transport.

pub(crate) mod callback;
pub mod pipe;
pub mod stream;
pub mod udp;
