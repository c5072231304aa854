//! The vhost-user side: features, config space, and events routed to the [`Device`].

use crate::device::Device;
use std::io;
use std::sync::{Arc, Mutex};
use vhost::vhost_user::message::{VhostUserProtocolFeatures, VhostUserVirtioFeatures};
use vhost_user_backend::{VhostUserBackendMut, VringRwLock};
use virtio_bindings::bindings::virtio_config::{VIRTIO_F_NOTIFY_ON_EMPTY, VIRTIO_F_VERSION_1};
use virtio_bindings::bindings::virtio_ring::{
    VIRTIO_RING_F_EVENT_IDX, VIRTIO_RING_F_INDIRECT_DESC,
};
use vm_memory::{GuestMemoryAtomic, GuestMemoryMmap};
use vmm_sys_util::epoll::EventSet;
use vmm_sys_util::event::{
    new_event_consumer_and_notifier, EventConsumer, EventFlag, EventNotifier,
};

/// rx, tx and event; QEMU keeps the event queue to itself, so only 0 and 1 reach us.
pub(crate) const NUM_QUEUES: usize = 3;
const RX: u16 = 0;
const TX: u16 = 1;
const EVT: u16 = 2;
/// The id of the device's own epoll fd in the worker's epoll (ids up to NUM_QUEUES are
/// taken by the queues and the exit event).
pub(crate) const HOST_EVENT: u16 = NUM_QUEUES as u16 + 1;

/// The vhost-user backend of one frontend session: a [`Device`] behind a lock shared with
/// the serving loop.
pub struct Backend {
    pub(crate) device: Arc<Mutex<Device>>,
    guest_cid: u64,
    queue_size: u16,
    event_idx: bool,
    /// Ends the session's worker thread: a stale worker would otherwise keep taking host
    /// events for vrings that no longer exist.
    exit: (EventConsumer, EventNotifier),
}

impl Backend {
    pub(crate) fn new(
        device: Arc<Mutex<Device>>,
        guest_cid: u64,
        queue_size: u16,
    ) -> io::Result<Self> {
        Ok(Backend {
            device,
            guest_cid,
            queue_size,
            event_idx: false,
            exit: new_event_consumer_and_notifier(EventFlag::NONBLOCK | EventFlag::CLOEXEC)?,
        })
    }
}

impl VhostUserBackendMut for Backend {
    type Bitmap = ();
    type Vring = VringRwLock;

    fn num_queues(&self) -> usize {
        NUM_QUEUES
    }

    fn max_queue_size(&self) -> usize {
        usize::from(self.queue_size)
    }

    fn features(&self) -> u64 {
        (1 << VIRTIO_F_VERSION_1)
            | (1 << VIRTIO_F_NOTIFY_ON_EMPTY)
            | (1 << VIRTIO_RING_F_EVENT_IDX)
            | (1 << VIRTIO_RING_F_INDIRECT_DESC)
            | VhostUserVirtioFeatures::PROTOCOL_FEATURES.bits()
    }

    fn protocol_features(&self) -> VhostUserProtocolFeatures {
        VhostUserProtocolFeatures::MQ | VhostUserProtocolFeatures::CONFIG
    }

    fn exit_event(&self, _thread_index: usize) -> Option<(EventConsumer, EventNotifier)> {
        Some((self.exit.0.try_clone().ok()?, self.exit.1.try_clone().ok()?))
    }

    fn set_event_idx(&mut self, enabled: bool) {
        self.event_idx = enabled;
    }

    fn get_config(&self, offset: u32, size: u32) -> Vec<u8> {
        let config = self.guest_cid.to_le_bytes();
        let (offset, size) = (offset as usize, size as usize);
        match offset.checked_add(size) {
            Some(end) if end <= config.len() => config[offset..end].to_vec(),
            _ => Vec::new(),
        }
    }

    fn update_memory(&mut self, mem: GuestMemoryAtomic<GuestMemoryMmap>) -> io::Result<()> {
        self.device.lock().expect("device lock").set_memory(mem);
        Ok(())
    }

    fn handle_event(
        &mut self,
        device_event: u16,
        _evset: EventSet,
        vrings: &[VringRwLock],
        _thread_id: usize,
    ) -> io::Result<()> {
        let mut device = self.device.lock().expect("device lock");
        let (rx, tx) = (&vrings[RX as usize], &vrings[TX as usize]);
        match device_event {
            RX => {}
            TX => device.process_tx(tx),
            HOST_EVENT => device.poll_host(),
            EVT => return Ok(()),
            other => {
                return Err(io::Error::other(format!(
                    "event {other} is neither a queue nor the host sockets"
                )))
            }
        }
        // Whatever happened, the engine may owe the guest packets now. Nothing a guest does
        // is returned as an error: that would end the worker and the device with it.
        device.process_rx(rx);
        Ok(())
    }
}
