//! A sans-IO implementation of the virtio-vsock protocol.
//!
//! One engine serves one local CID talking to one peer CID: the device backend runs one per
//! guest, the stream multiplexer one per link. The engine owns the connection table,
//! credit flow control, half-close, timers and a fair transmit scheduler; the caller owns
//! every byte of I/O and the clock. That makes the protocol testable deterministically and
//! fuzzable, and lets the same code run over virtqueues and over byte streams.
//!
//! * [`header`]: the 44-byte `virtio_vsock_hdr` codec.
//! * [`credit`]: `buf_alloc` / `fwd_cnt` arithmetic.
//! * [`copy`]: payload copies that avoid a slow case of `memcpy` on some x86 CPUs.
//! * [`Engine`]: connections, packets in, packets and events out.

#![forbid(unsafe_code)]

mod buffer;
mod conn;
pub mod copy;
pub mod credit;
mod engine;
pub mod header;
mod id_map;

pub use buffer::Message;
pub use conn::CloseReason;
pub use engine::{
    Config, ConnId, Engine, Event, PacketError, SetupError, Shutdown, Stats, StreamError, Transmit,
    EPHEMERAL_PORT_START,
};
pub use header::{Header, HeaderError, Op, SocketType, HEADER_LEN, HOST_CID};
pub use id_map::{ConnIdHasher, ConnIdMap};
