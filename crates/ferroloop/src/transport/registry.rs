//! The link from a transport to the set that lists it (a server's
//! connections), pointing upward through a trait: the transport layer
//! never names the server.
//!
//! A server registers each accepted stream transport under an id; the
//! stream calls [`Registry::release`] once it lets go of its socket, and a
//! TLS layer made over it replaces the entry with itself
//! ([`Registry::replace`]), so that the server's `close_clients` closes the
//! TLS transport (sending close_notify) rather than the socket under it.

use std::rc::Weak;

pub(crate) use crate::transport::handle::WeakTransport;

/// A set of transports listed by id.
pub(crate) trait Registry {
    /// The transport listed as `id` let go of its socket: drop the entry.
    fn release(&self, id: usize);
    /// The connection listed as `id` is now seen through `t`.
    fn replace(&self, id: usize, t: WeakTransport);
}

/// A transport's entry in a [`Registry`]: held by the stream transport,
/// told when it is released.
pub(crate) struct Entry {
    registry: Weak<dyn Registry>,
    id: usize,
}

impl Entry {
    /// The entry `id` of `registry`.
    pub(crate) fn new(registry: Weak<dyn Registry>, id: usize) -> Entry {
        Entry { registry, id }
    }

    /// Tell the registry the transport is gone.
    pub(crate) fn release(self) {
        if let Some(r) = self.registry.upgrade() {
            r.release(self.id);
        }
    }

    /// Tell the registry the connection is now seen through `t`.
    pub(crate) fn replace(&self, t: WeakTransport) {
        if let Some(r) = self.registry.upgrade() {
            r.replace(self.id, t);
        }
    }
}
