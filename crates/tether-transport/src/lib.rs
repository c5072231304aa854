//! Transports for tether: ways to reach a VM, all yielding byte streams.
//!
//! * [`mux`]: vsock semantics (ports, connect/listen, credit flow control, half-close)
//!   over any single byte stream such as a virtio-serial port, a pipe or a socket.

pub mod mux;
