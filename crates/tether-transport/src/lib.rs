//! Transports for tether: every way to reach a VM, all yielding one byte stream type.
//!
//! * [`Endpoint`]: a URI naming a place to dial or listen (`vsock://`, `hybrid://`,
//!   `hyperkit://`, `hvsock://`, `tcp://`, `unix://`, `mux+serial://`, `mux+unix://`);
//!   see [`endpoint`] for the grammar.
//! * [`Transport`]: dial and listen on endpoints; [`Peer`]: several endpoints for one
//!   peer, tried cheapest first.
//! * [`Stream`]: what every dial and accept yields, `AsyncRead + AsyncWrite` with
//!   half-close.
//! * [`mux`]: vsock semantics (ports, connect/listen, credit flow control, half-close)
//!   over any single byte stream such as a virtio-serial port, a pipe or a socket.
//! * [`hybrid`], [`hyperkit`], [`hvsock`]: the wire details of each VMM's host side.

pub mod endpoint;
mod error;
pub mod hvsock;
pub mod hybrid;
pub mod hyperkit;
mod listener;
pub mod mux;
pub mod pool;
pub mod relay;
mod stream;
mod transport;

pub use endpoint::{Endpoint, LinkCost, ParseEndpointError};
pub use error::TransportError;
pub use listener::{clear_stale_socket, Listener};
pub use stream::{Remote, Stream};
pub use transport::{DialOptions, Peer, Transport};
