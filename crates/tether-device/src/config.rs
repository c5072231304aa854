//! Settings of a device.

use std::path::PathBuf;
use std::time::Duration;
use tether_vsock::{Config as EngineConfig, HOST_CID};

/// How a device is set up. [`DeviceConfig::new`] gives Firecracker's limits.
#[derive(Clone, Debug)]
pub struct DeviceConfig {
    /// The vhost-user socket QEMU (or another frontend) connects to.
    pub socket: PathBuf,
    /// The hybrid socket: host clients send `CONNECT <port>\n` here, and guest connections
    /// to host port P dial `<uds_path>_P`.
    pub uds_path: PathBuf,
    /// The guest's context id, offered in the device config space.
    pub guest_cid: u64,
    /// Largest virtqueue size accepted (QEMU's PCI device uses 128, its mmio one 1024).
    pub queue_size: u16,
    /// Live connections at most; beyond, host clients are closed and guests get RST.
    pub max_connections: usize,
    /// Receive buffer per connection advertised to the guest, and the per-connection bound
    /// on host data waiting to go to the guest.
    pub buf_alloc: u32,
    /// How long a connection waits for the other side to accept.
    pub connect_timeout: Duration,
    /// How long a closing connection waits for the guest's RST.
    pub close_timeout: Duration,
    /// How long a hybrid client may take to send its CONNECT line.
    pub handshake_timeout: Duration,
}

impl DeviceConfig {
    /// A device for `guest_cid` with Firecracker's limits: 1023 connections, 2 s connect
    /// and close timeouts; 256 KiB buffers like Linux.
    pub fn new(socket: PathBuf, uds_path: PathBuf, guest_cid: u64) -> Self {
        DeviceConfig {
            socket,
            uds_path,
            guest_cid,
            queue_size: 1024,
            max_connections: 1023,
            buf_alloc: 256 * 1024,
            connect_timeout: Duration::from_secs(2),
            close_timeout: Duration::from_secs(2),
            handshake_timeout: Duration::from_secs(10),
        }
    }

    /// The engine settings: the host side speaks as CID 2 to the guest.
    pub(crate) fn engine_config(&self) -> EngineConfig {
        let mut c = EngineConfig::new(HOST_CID, self.guest_cid);
        c.buf_alloc = self.buf_alloc;
        c.send_buf = self.buf_alloc;
        c.max_connections = self.max_connections;
        c.connect_timeout = self.connect_timeout;
        c.close_timeout = self.close_timeout;
        c
    }

    /// Whether `cid` may be given to a guest (0, 1, 2 and the two all-ones values are
    /// reserved by the spec).
    pub fn valid_guest_cid(cid: u64) -> bool {
        cid > 2 && cid != u64::from(u32::MAX) && cid != u64::MAX
    }
}
