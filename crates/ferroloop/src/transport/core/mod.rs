//! The transports' pure state, apart from any descriptor: the protocol slot
//! and its notes ([`slot`]), closing and `connection_lost` ([`lifecycle`]),
//! and the write buffer ([`buffer`]). Each is unit-tested in memory.

pub(crate) mod buffer;
pub(crate) mod lifecycle;
pub(crate) mod slot;
