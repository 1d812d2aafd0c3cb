//! Transport bindings, one file per engine transport.

pub mod stream;
