//! A vhost-user-vsock device backend.
//!
//! QEMU's `vhost-user-vsock-pci` / `vhost-user-vsock-device` hand the guest's vsock
//! virtqueues to this process; packets and connections are handled by the sans-IO
//! [`tether_vsock::Engine`], and the host side speaks Firecracker's hybrid vsock:
//!
//! * a host client connects to the Unix socket `uds_path`, writes `CONNECT <port>\n`, and
//!   reads `OK <host port>\n` once the guest accepts (host ports count from 2^30); a
//!   refusal closes the socket without a word;
//! * a guest connecting to host port P reaches the Unix socket `<uds_path>_P`, and gets
//!   RST at once when nothing listens there;
//! * half-close passes through both ways, connects and closes time out, and the number
//!   of connections is bounded.
//!
//! ```no_run
//! use tether_device::{serve, DeviceConfig};
//! let config = DeviceConfig::new("/tmp/vhost.sock".into(), "/tmp/v.sock".into(), 3);
//! serve(config).expect("device failed");
//! ```

mod backend;
mod config;
pub mod connect_line;
mod device;
mod host;
pub mod virtq;

pub use config::DeviceConfig;
pub use device::{Device, DeviceStats};

use backend::{Backend, HOST_EVENT};
use std::path::Path;
use std::sync::{Arc, Mutex};
use thiserror::Error;
use tracing::info;
use vhost::vhost_user::{Error as VhostUserError, Listener};
use vhost_user_backend::VhostUserDaemon;
use vm_memory::{GuestMemoryAtomic, GuestMemoryMmap};
use vmm_sys_util::epoll::EventSet;

/// Why the device stopped.
#[derive(Debug, Error)]
pub enum DeviceError {
    /// The guest CID is reserved.
    #[error("guest CID {0} is reserved; expected a value from 3 to 4294967294")]
    ReservedCid(u64),
    /// The hybrid socket could not be set up.
    #[error("hybrid socket {path}: {source}")]
    Hybrid {
        /// The socket path.
        path: std::path::PathBuf,
        /// What failed.
        source: std::io::Error,
    },
    /// The vhost-user daemon failed.
    #[error("vhost-user socket {path}: {detail}")]
    VhostUser {
        /// The socket path.
        path: std::path::PathBuf,
        /// What failed.
        detail: String,
    },
}

/// Serves frontends on `config.socket` one after another, forever: when one disconnects
/// its connections end and the next one is served, so QEMU can restart or reconnect.
pub fn serve(config: DeviceConfig) -> Result<(), DeviceError> {
    if !DeviceConfig::valid_guest_cid(config.guest_cid) {
        return Err(DeviceError::ReservedCid(config.guest_cid));
    }
    raise_fd_limit();
    let device = Device::new(config.clone()).map_err(|source| DeviceError::Hybrid {
        path: config.uds_path.clone(),
        source,
    })?;
    let device = Arc::new(Mutex::new(device));
    // One listener for the device's whole life: a frontend that connects while the last
    // one is being torn down waits in its backlog instead of being reset.
    let mut listener = vhost_listener(&config.socket).map_err(|e| DeviceError::VhostUser {
        path: config.socket.clone(),
        detail: e.to_string(),
    })?;
    loop {
        serve_one(&config, &device, &mut listener)?;
        device.lock().expect("device lock").frontend_gone();
    }
}

/// Binds the vhost-user socket, replacing a stale socket file but never a live device.
fn vhost_listener(path: &Path) -> std::io::Result<Listener> {
    tether_transport::clear_stale_socket(path)?;
    Listener::new(path, false).map_err(|e| std::io::Error::other(e.to_string()))
}

/// Serves one frontend connection until it goes away.
fn serve_one(
    config: &DeviceConfig,
    device: &Arc<Mutex<Device>>,
    listener: &mut Listener,
) -> Result<(), DeviceError> {
    let vhost_err = |detail: String| DeviceError::VhostUser {
        path: config.socket.clone(),
        detail,
    };
    let backend = Backend::new(device.clone(), config.guest_cid, config.queue_size)
        .map_err(|e| vhost_err(format!("exit event: {e}")))?;
    let backend = Arc::new(Mutex::new(backend));
    let mut daemon = VhostUserDaemon::new(
        "tether-device".to_string(),
        backend,
        GuestMemoryAtomic::new(GuestMemoryMmap::new()),
    )
    .map_err(|e| vhost_err(e.to_string()))?;
    let epoll_fd = device.lock().expect("device lock").epoll_fd();
    let handlers = daemon.get_epoll_handlers();
    for handler in &handlers {
        handler
            .register_listener(epoll_fd, EventSet::IN, u64::from(HOST_EVENT))
            .map_err(|e| vhost_err(format!("watching host sockets: {e}")))?;
    }
    info!(socket = %config.socket.display(), "waiting for a vhost-user frontend");
    daemon
        .start(listener)
        .map_err(|e| vhost_err(e.to_string()))?;
    let result = daemon.wait();
    // The worker threads outlive the connection unless told to stop; a stale one would keep
    // taking host events meant for the next session's vrings.
    for handler in &handlers {
        handler.send_exit_event();
    }
    match result {
        Ok(()) => Ok(()),
        // A frontend that vanishes mid-message (QEMU killed) is a disconnect like any other.
        Err(vhost_user_backend::Error::HandleRequest(
            VhostUserError::Disconnected | VhostUserError::PartialMessage,
        )) => Ok(()),
        Err(e) => {
            tracing::warn!("frontend session ended: {e}");
            Ok(())
        }
    }
}

/// 1023 connections need more than the usual 1024 descriptors once the vhost-user fds,
/// listeners and epoll are counted: take the hard limit.
fn raise_fd_limit() {
    use nix::sys::resource::{getrlimit, setrlimit, Resource};
    if let Ok((_, hard)) = getrlimit(Resource::RLIMIT_NOFILE) {
        let _ = setrlimit(Resource::RLIMIT_NOFILE, hard, hard);
    }
}
