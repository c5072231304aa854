//! A vhost-user frontend that plays the guest's virtio-vsock driver, so a vhost-user-vsock
//! backend (a separate process) can be tested and benchmarked without a VM.
//!
//! The pieces, bottom up:
//!
//! * [`memory`]: guest RAM as a shared memfd, with a bump allocator for rings and buffers.
//! * [`ring`]: the driver half of a split virtqueue.
//! * [`frontend`]: the vhost-user session that hands RAM and rings to the backend.
//! * [`guest`]: a driver thread running a [`tether_vsock::Engine`] as the guest's socket
//!   layer, with a blocking API ([`Guest`], [`GuestConn`]) and raw packet access.
//! * [`backend`]: spawns a backend process in a fresh temporary directory.
//! * [`scenarios`]: conformance scenarios runnable against any backend.
//! * [`bench`](mod@bench): throughput and latency measurements.
//!
//! Running the scenarios and the benchmark against vhost-device-vsock and, optionally, a
//! second backend command (flags `--socket`, `--uds-path`, `--guest-cid` are appended
//! unless the command uses `{socket}`, `{uds}`, `{cid}` placeholders):
//!
//! ```text
//! cargo run --release -p tether-vhost-harness --example scenarios -- "target/release/tether device"
//! TETHER_DEVICE_CMD="target/release/tether device" cargo bench -p tether-vhost-harness
//! ```
//!
//! Using the pieces directly:
//!
//! ```no_run
//! use std::io::{Read, Write};
//! use std::time::Duration;
//! use tether_vhost_harness::{Backend, Guest, GuestOptions};
//!
//! let spec = Backend::vhost_device_vsock().unwrap();
//! let backend = spec.spawn().unwrap();
//! let guest = Guest::start(backend.socket_path(), GuestOptions::default()).unwrap();
//! guest.listen(1234);
//! let mut host = backend.connect_host(1234, Duration::from_secs(2)).unwrap();
//! host.write_all(b"ping").unwrap();
//! let conn = guest.accept(Duration::from_secs(2)).unwrap();
//! let mut buf = [0u8; 4];
//! conn.read_exact(&mut buf).unwrap();
//! assert_eq!(&buf, b"ping");
//! ```

pub mod backend;
pub mod bench;
pub mod frontend;
pub mod guest;
pub mod hybrid;
pub mod memory;
pub mod ring;
pub mod scenarios;

pub use backend::{Backend, BackendError, BackendProcess};
pub use guest::{
    ConnError, ConnectError, Guest, GuestConn, GuestError, GuestOptions, GuestStats, RawId,
    RxLayout, RxRecord, TxLayout,
};
