//! Datagram transports: UDP and Unix datagram sockets (asyncio's
//! `DatagramTransport` and `DatagramProtocol`).
//!
//! Read path: on readiness, receive until the socket is drained (at most
//! [`READS_PER_EVENT`] datagrams per event, then the rest from the ready
//! queue), delivering each datagram to [`DatagramProtocol::datagram_received`]
//! at once with its sender's address. UDP sockets receive in batches
//! (`recvmmsg`, a short batch meaning drained); Unix datagram sockets use
//! `recvfrom` into the loop's shared buffer until `WouldBlock`.
//! A receive error (an ICMP "port unreachable" on a connected UDP socket comes
//! back as `ECONNREFUSED`) goes to [`DatagramProtocol::error_received`]: it
//! never closes the transport, as in asyncio.
//!
//! Write path: [`DatagramTransport::sendto`] sends at once when nothing is
//! queued, and queues `(datagram, address)` pairs only when the socket says
//! `WouldBlock`; the queue drains on writability, up to 16 datagrams per
//! system call (`sendmmsg`), in order. Flow control counts the
//! queued payload bytes against the water marks of [`crate::flow`], as
//! asyncio's `_SelectorDatagramTransport` does. A send error (`EMSGSIZE` for
//! an oversized datagram, `ECONNREFUSED`...) goes to `error_received`.
//!
//! Unix datagram addresses are [`Address::Unix`] strings: a path, an
//! abstract-namespace name written with its leading NUL (`"\0name"`, as
//! Python's `b"\x00name"`), or the empty string for an unnamed socket.


mod endpoint;
mod sock;
mod transport;

use std::cell::RefCell;
use std::rc::Rc;

use crate::error::Error;
use crate::transport::Address;

pub use endpoint::DatagramOptions;
pub use sock::DatagramSocket;
pub use transport::DatagramTransport;

/// Datagrams read per readiness event before yielding to other sources.
pub const READS_PER_EVENT: usize = 64;

/// A datagram protocol (asyncio's `DatagramProtocol`).
///
/// Every method has an empty default, as in asyncio. The life of a datagram
/// protocol: `connection_made`, then any number of `datagram_received` and
/// `error_received` (and paired `pause_writing`/`resume_writing`), then
/// `connection_lost` exactly once.
///
/// Methods are never re-entered: an `error_received` or `pause_writing`
/// caused by a [`DatagramTransport::sendto`] made from inside a protocol
/// method is delivered right after that method returns. A panic in a method
/// is reported to the loop's exception handler and the transport goes on, as
/// asyncio reports an exception raised by `datagram_received`.
pub trait DatagramProtocol: 'static {
    /// The transport is ready; keep it to send and close.
    fn connection_made(&mut self, transport: DatagramTransport) {
        let _ = transport;
    }

    /// A datagram arrived from `addr` (it may be empty: UDP allows
    /// zero-length datagrams).
    fn datagram_received(&mut self, data: &[u8], addr: &Address) {
        let _ = (data, addr);
    }

    /// A send or receive failed, e.g. `ECONNREFUSED` after an ICMP "port
    /// unreachable" on a connected socket, or `EMSGSIZE`. The transport stays open.
    fn error_received(&mut self, exc: Error) {
        let _ = exc;
    }

    /// The transport is closed (`None` after `close`/`abort`). Called exactly once.
    fn connection_lost(&mut self, exc: Option<Error>) {
        let _ = exc;
    }

    /// The send queue went strictly over the high-water mark.
    fn pause_writing(&mut self) {}

    /// The send queue drained to the low-water mark or below.
    fn resume_writing(&mut self) {}
}

/// How a datagram transport holds its protocol (see [`crate::ProtocolRef`]).
pub type DatagramProtocolRef = Rc<RefCell<dyn DatagramProtocol>>;

/// What `create_datagram_endpoint` and friends complete with: the transport
/// and the protocol the factory made, typed.
pub type DatagramEndpoint<P> = (DatagramTransport, Rc<RefCell<P>>);
