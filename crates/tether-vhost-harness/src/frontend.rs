//! The vhost-user session: what QEMU's vhost-user-vsock device does to bring a backend up.
//!
//! The order follows QEMU: `SET_OWNER`, feature and protocol-feature negotiation, the
//! 8-byte config (`guest_cid`) read with `GET_CONFIG`, then at device start
//! `SET_FEATURES`, `SET_MEM_TABLE` and for queues 0 (rx) and 1 (tx) `SET_VRING_NUM`,
//! `SET_VRING_BASE`, `SET_VRING_ADDR`, `SET_VRING_KICK`, `SET_VRING_CALL` and
//! `SET_VRING_ENABLE`. The event queue (2) stays with the frontend, as in QEMU.

use crate::memory::{GuestRam, MemoryError};
use crate::ring::SplitRing;
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};
use thiserror::Error;
use vhost::vhost_user::message::{VhostUserConfigFlags, VhostUserHeaderFlag};
use vhost::vhost_user::{
    Frontend, VhostUserFrontend, VhostUserProtocolFeatures, VhostUserVirtioFeatures,
};
use vhost::{VhostBackend, VringConfigData};
use virtio_bindings::virtio_config::VIRTIO_F_VERSION_1;
use virtio_bindings::virtio_ring::VIRTIO_RING_F_EVENT_IDX;

/// Queue index of the receive queue (device to driver).
pub const RX_QUEUE: usize = 0;
/// Queue index of the transmit queue (driver to device).
pub const TX_QUEUE: usize = 1;

/// Why the vhost-user session failed.
#[derive(Debug, Error)]
pub enum FrontendError {
    /// The backend socket did not accept a connection in time.
    #[error("connecting to the backend socket {path}: {source} (waited {waited:?})")]
    Connect {
        /// The socket path.
        path: PathBuf,
        /// The last connect error.
        #[source]
        source: std::io::Error,
        /// How long we retried.
        waited: Duration,
    },
    /// A vhost-user request failed.
    #[error("vhost-user {step} failed: {source}")]
    Request {
        /// The request.
        step: &'static str,
        /// What vhost reported.
        #[source]
        source: vhost::Error,
    },
    /// The backend lacks a feature a vsock frontend needs.
    #[error("the backend does not offer {0}")]
    Missing(&'static str),
    /// Guest RAM could not be described.
    #[error(transparent)]
    Memory(#[from] MemoryError),
}

/// Negotiation knobs.
#[derive(Clone, Debug)]
pub struct FrontendOptions {
    /// How long to keep retrying while the backend has not created its socket yet.
    pub connect_timeout: Duration,
    /// Negotiate VIRTIO_RING_F_EVENT_IDX when offered (QEMU and Linux do).
    pub event_idx: bool,
    /// Negotiate REPLY_ACK when offered and ask for acknowledgements (QEMU does).
    pub reply_ack: bool,
    /// Bound on each vhost-user request's reply.
    pub request_timeout: Duration,
}

impl Default for FrontendOptions {
    fn default() -> Self {
        FrontendOptions {
            connect_timeout: Duration::from_secs(5),
            event_idx: true,
            reply_ack: true,
            request_timeout: Duration::from_secs(5),
        }
    }
}

/// What the two sides agreed on.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Negotiated {
    /// Virtio feature bits the backend offered.
    pub offered_features: u64,
    /// Virtio feature bits we acknowledged.
    pub acked_features: u64,
    /// Protocol features the backend offered.
    pub offered_protocol: VhostUserProtocolFeatures,
    /// Protocol features we acknowledged.
    pub acked_protocol: VhostUserProtocolFeatures,
    /// Queues the backend reports (with the MQ protocol feature), else 0.
    pub queue_num: u64,
    /// The device config's `guest_cid`.
    pub guest_cid: u64,
}

impl Negotiated {
    /// Whether event-index notification suppression is in use.
    pub fn event_idx(&self) -> bool {
        self.acked_features & (1 << VIRTIO_RING_F_EVENT_IDX) != 0
    }
}

/// One vhost-user connection to a backend, acting as the VMM.
pub struct Session {
    frontend: Frontend,
    negotiated: Negotiated,
}

impl std::fmt::Debug for Session {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Session")
            .field("negotiated", &self.negotiated)
            .finish_non_exhaustive()
    }
}

fn req<T>(step: &'static str, r: vhost::Result<T>) -> Result<T, FrontendError> {
    r.map_err(|source| FrontendError::Request { step, source })
}

/// Connects to a backend socket, retrying until `timeout` while it does not exist yet or
/// refuses (the backend process may still be starting).
pub fn connect_socket(path: &Path, timeout: Duration) -> Result<UnixStream, FrontendError> {
    let start = Instant::now();
    loop {
        match UnixStream::connect(path) {
            Ok(s) => return Ok(s),
            Err(e) if start.elapsed() < timeout => {
                let _ = e;
                std::thread::sleep(Duration::from_millis(10));
            }
            Err(source) => {
                return Err(FrontendError::Connect {
                    path: path.to_owned(),
                    source,
                    waited: start.elapsed(),
                })
            }
        }
    }
}

impl Session {
    /// Connects and negotiates; reads the guest CID from the device config.
    pub fn open(path: &Path, opts: &FrontendOptions) -> Result<Session, FrontendError> {
        let stream = connect_socket(path, opts.connect_timeout)?;
        // A backend that stops answering must not hang the frontend (nor a Drop that
        // stops the rings): every request gets a bounded wait.
        stream
            .set_read_timeout(Some(opts.request_timeout))
            .and_then(|()| stream.set_write_timeout(Some(opts.request_timeout)))
            .map_err(|source| FrontendError::Connect {
                path: path.to_owned(),
                source,
                waited: Duration::ZERO,
            })?;
        // Two queues are ours to set up; the event queue stays with the frontend.
        let mut frontend = Frontend::from_stream(stream, 2);
        req("SET_OWNER", frontend.set_owner())?;
        let offered_features = req("GET_FEATURES", frontend.get_features())?;
        let acked_features = choose_features(offered_features, opts)?;
        let offered_protocol = req("GET_PROTOCOL_FEATURES", frontend.get_protocol_features())?;
        let acked_protocol = choose_protocol(offered_protocol, opts)?;
        req(
            "SET_PROTOCOL_FEATURES",
            frontend.set_protocol_features(acked_protocol),
        )?;
        if acked_protocol.contains(VhostUserProtocolFeatures::REPLY_ACK) {
            frontend.set_hdr_flags(VhostUserHeaderFlag::NEED_REPLY);
        }
        let queue_num = if acked_protocol.contains(VhostUserProtocolFeatures::MQ) {
            req("GET_QUEUE_NUM", frontend.get_queue_num())?
        } else {
            0
        };
        let guest_cid = read_guest_cid(&mut frontend)?;
        req("SET_FEATURES", frontend.set_features(acked_features))?;
        Ok(Session {
            frontend,
            negotiated: Negotiated {
                offered_features,
                acked_features,
                offered_protocol,
                acked_protocol,
                queue_num,
                guest_cid,
            },
        })
    }

    /// What was negotiated.
    pub fn negotiated(&self) -> Negotiated {
        self.negotiated
    }

    /// Hands guest RAM and the rx and tx rings to the backend and enables both queues.
    /// Returns once the backend has processed every request (a round trip closes the
    /// setup, as nothing else acknowledges without REPLY_ACK).
    pub fn start(
        &mut self,
        ram: &GuestRam,
        rx: &SplitRing,
        tx: &SplitRing,
    ) -> Result<(), FrontendError> {
        let region = ram.region_info()?;
        req("SET_MEM_TABLE", self.frontend.set_mem_table(&[region]))?;
        for (index, ring) in [(RX_QUEUE, rx), (TX_QUEUE, tx)] {
            self.start_queue(ram, index, ring)?;
        }
        for index in [RX_QUEUE, TX_QUEUE] {
            req(
                "SET_VRING_ENABLE",
                self.frontend.set_vring_enable(index, true),
            )?;
        }
        req("GET_FEATURES (barrier)", self.frontend.get_features())?;
        Ok(())
    }

    fn start_queue(
        &mut self,
        ram: &GuestRam,
        index: usize,
        ring: &SplitRing,
    ) -> Result<(), FrontendError> {
        let a = ring.addresses();
        let config = VringConfigData {
            queue_max_size: ring.size(),
            queue_size: ring.size(),
            flags: 0,
            desc_table_addr: ram.host_address(a.desc)?,
            used_ring_addr: ram.host_address(a.used)?,
            avail_ring_addr: ram.host_address(a.avail)?,
            log_addr: None,
        };
        let f = &self.frontend;
        req("SET_VRING_NUM", f.set_vring_num(index, ring.size()))?;
        req("SET_VRING_BASE", f.set_vring_base(index, 0))?;
        req("SET_VRING_ADDR", f.set_vring_addr(index, &config))?;
        req("SET_VRING_KICK", f.set_vring_kick(index, ring.kick_fd()))?;
        req("SET_VRING_CALL", f.set_vring_call(index, ring.call_fd()))?;
        Ok(())
    }

    /// Stops both queues the way QEMU does when a VM stops (`GET_VRING_BASE`), returning
    /// the backend's next available index for rx and tx.
    pub fn stop(&mut self) -> Result<(u32, u32), FrontendError> {
        let rx = req("GET_VRING_BASE", self.frontend.get_vring_base(RX_QUEUE))?;
        let tx = req("GET_VRING_BASE", self.frontend.get_vring_base(TX_QUEUE))?;
        Ok((rx, tx))
    }
}

fn choose_features(offered: u64, opts: &FrontendOptions) -> Result<u64, FrontendError> {
    let version_1 = 1u64 << VIRTIO_F_VERSION_1;
    let protocol = VhostUserVirtioFeatures::PROTOCOL_FEATURES.bits();
    if offered & version_1 == 0 {
        return Err(FrontendError::Missing("VIRTIO_F_VERSION_1"));
    }
    if offered & protocol == 0 {
        return Err(FrontendError::Missing(
            "VHOST_USER_F_PROTOCOL_FEATURES (needed for GET_CONFIG)",
        ));
    }
    let mut wanted = version_1 | protocol;
    if opts.event_idx {
        wanted |= 1 << VIRTIO_RING_F_EVENT_IDX;
    }
    // Stream sockets only: no SEQPACKET bit, as the scenarios test streams.
    Ok(offered & wanted)
}

fn choose_protocol(
    offered: VhostUserProtocolFeatures,
    opts: &FrontendOptions,
) -> Result<VhostUserProtocolFeatures, FrontendError> {
    if !offered.contains(VhostUserProtocolFeatures::CONFIG) {
        return Err(FrontendError::Missing(
            "the CONFIG protocol feature (QEMU reads guest_cid with GET_CONFIG)",
        ));
    }
    let mut wanted = VhostUserProtocolFeatures::CONFIG | VhostUserProtocolFeatures::MQ;
    if opts.reply_ack {
        wanted |= VhostUserProtocolFeatures::REPLY_ACK;
    }
    Ok(offered & wanted)
}

fn read_guest_cid(frontend: &mut Frontend) -> Result<u64, FrontendError> {
    let (_, payload) = req(
        "GET_CONFIG",
        frontend.get_config(0, 8, VhostUserConfigFlags::empty(), &[0u8; 8]),
    )?;
    let raw: [u8; 8] = payload
        .get(..8)
        .and_then(|s| s.try_into().ok())
        .ok_or(FrontendError::Missing("an 8-byte device config"))?;
    Ok(u64::from_le_bytes(raw))
}
