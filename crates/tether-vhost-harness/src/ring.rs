//! The driver half of a split virtqueue (virtio 1.x, "Split Virtqueues"): the descriptor
//! table, the available ring the driver fills and the used ring the device fills, all in
//! guest RAM, plus the kick and call eventfds that stand in for notifications and
//! interrupts.
//!
//! Layout in guest RAM (little-endian):
//!
//! * descriptor table: `size` entries of `{addr: u64, len: u32, flags: u16, next: u16}`;
//! * available ring: `flags: u16, idx: u16, ring: [u16; size], used_event: u16`;
//! * used ring: `flags: u16, idx: u16, ring: [{id: u32, len: u32}; size], avail_event: u16`.

use crate::memory::{GuestRam, MemoryError};
use std::os::fd::AsRawFd;
use std::sync::atomic::{fence, Ordering};
use std::time::{Duration, Instant};
use thiserror::Error;
use virtio_bindings::virtio_ring::{
    VRING_AVAIL_F_NO_INTERRUPT, VRING_DESC_F_NEXT, VRING_DESC_F_WRITE, VRING_USED_F_NO_NOTIFY,
};
use vm_memory::{Bytes, GuestAddress, GuestMemoryMmap};
use vmm_sys_util::epoll::{ControlOperation, Epoll, EpollEvent, EventSet};
use vmm_sys_util::eventfd::{EventFd, EFD_NONBLOCK};

const DESC_SIZE: u64 = 16;
const USED_ELEM_SIZE: u64 = 8;

/// Why a ring operation failed.
#[derive(Debug, Error)]
pub enum RingError {
    /// The size is not a power of two in `1..=32768`.
    #[error("queue size {0} is not a power of two between 1 and 32768")]
    BadSize(u16),
    /// A chain needs at least one descriptor.
    #[error("a descriptor chain needs at least one segment")]
    EmptyChain,
    /// Not enough free descriptors for the chain.
    #[error("{want} descriptors needed, {free} free")]
    Full {
        /// Descriptors the chain needs.
        want: usize,
        /// Descriptors free.
        free: usize,
    },
    /// The device returned a head that is not an outstanding chain: a backend bug.
    #[error("device returned used id {id}, which is not an outstanding chain head")]
    BadUsedId {
        /// The used element's id.
        id: u32,
    },
    /// Guest RAM could not be read or written.
    #[error(transparent)]
    Memory(#[from] MemoryError),
    /// vm-memory refused an access.
    #[error("ring access failed: {0}")]
    Access(#[from] vm_memory::GuestMemoryError),
    /// An eventfd or epoll call failed.
    #[error("eventfd: {0}")]
    Io(#[from] std::io::Error),
}

/// One descriptor of a chain.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Segment {
    /// Guest physical address of the buffer.
    pub addr: GuestAddress,
    /// Buffer length in bytes.
    pub len: u32,
    /// Whether the device writes it (receive buffers) rather than reads it.
    pub device_writable: bool,
}

/// A chain the device has finished with.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct UsedElem {
    /// Head descriptor index, as returned by [`SplitRing::add`].
    pub head: u16,
    /// Bytes the device wrote into the chain's writable part.
    pub len: u32,
}

/// Guest physical addresses of a ring's three areas.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct RingAddresses {
    /// Descriptor table.
    pub desc: GuestAddress,
    /// Available ring.
    pub avail: GuestAddress,
    /// Used ring.
    pub used: GuestAddress,
}

/// The driver side of one split virtqueue.
#[derive(Debug)]
pub struct SplitRing {
    mem: GuestMemoryMmap,
    size: u16,
    addrs: RingAddresses,
    event_idx: bool,
    /// Free descriptor indices; a stack, so recently used (cache-warm) ones come back first.
    free: Vec<u16>,
    /// Descriptor indices of each outstanding chain, by head; empty when not outstanding.
    chains: Vec<Vec<u16>>,
    /// Our shadow of `avail.idx`, counting chains added but maybe not yet published.
    next_avail: u16,
    /// `avail.idx` when the device was last notified (or deliberately not).
    notified_at: u16,
    /// Next used ring entry to look at.
    last_used: u16,
    kick: EventFd,
    call: EventFd,
    epoll: Epoll,
    kicks: u64,
}

impl SplitRing {
    /// Allocates a ring of `size` entries in `ram`. With `event_idx` the driver uses the
    /// `used_event` / `avail_event` fields (VIRTIO_RING_F_EVENT_IDX) to suppress
    /// notifications; without it the flags fields.
    pub fn new(ram: &GuestRam, size: u16, event_idx: bool) -> Result<Self, RingError> {
        if !size.is_power_of_two() || size > 32768 {
            return Err(RingError::BadSize(size));
        }
        let n = u64::from(size);
        // Page alignment is more than the spec's 16/2/4 bytes, and what legacy devices need.
        let addrs = RingAddresses {
            desc: ram.alloc(DESC_SIZE * n, 4096)?,
            avail: ram.alloc(6 + 2 * n, 4096)?,
            used: ram.alloc(6 + USED_ELEM_SIZE * n, 4096)?,
        };
        let kick = EventFd::new(EFD_NONBLOCK)?;
        let call = EventFd::new(EFD_NONBLOCK)?;
        let epoll = Epoll::new()?;
        epoll.ctl(
            ControlOperation::Add,
            call.as_raw_fd(),
            EpollEvent::new(EventSet::IN, 0),
        )?;
        Ok(SplitRing {
            mem: ram.memory().clone(),
            size,
            addrs,
            event_idx,
            free: (0..size).rev().collect(),
            chains: vec![Vec::new(); usize::from(size)],
            next_avail: 0,
            notified_at: 0,
            last_used: 0,
            kick,
            call,
            epoll,
            kicks: 0,
        })
    }

    /// Number of entries.
    pub fn size(&self) -> u16 {
        self.size
    }

    /// Where the three areas live.
    pub fn addresses(&self) -> RingAddresses {
        self.addrs
    }

    /// Descriptors not part of an outstanding chain.
    pub fn free_descriptors(&self) -> usize {
        self.free.len()
    }

    /// Chains handed to the device and not yet returned.
    pub fn outstanding(&self) -> usize {
        self.chains.iter().filter(|c| !c.is_empty()).count()
    }

    /// The eventfd the driver writes to notify the device (`SET_VRING_KICK`).
    pub fn kick_fd(&self) -> &EventFd {
        &self.kick
    }

    /// The eventfd the device writes to interrupt the driver (`SET_VRING_CALL`).
    pub fn call_fd(&self) -> &EventFd {
        &self.call
    }

    /// Notifications sent to the device so far.
    pub fn kicks(&self) -> u64 {
        self.kicks
    }

    /// Writes a chain into the descriptor table and the next available ring slot. The
    /// device sees it only after [`SplitRing::notify`] (or [`SplitRing::publish`]).
    pub fn add(&mut self, segments: &[Segment]) -> Result<u16, RingError> {
        if segments.is_empty() {
            return Err(RingError::EmptyChain);
        }
        if segments.len() > self.free.len() {
            return Err(RingError::Full {
                want: segments.len(),
                free: self.free.len(),
            });
        }
        let split = self.free.len() - segments.len();
        let mut ids: Vec<u16> = self.free.split_off(split);
        ids.reverse();
        for (i, seg) in segments.iter().enumerate() {
            let last = i + 1 == segments.len();
            let mut flags = if last { 0 } else { VRING_DESC_F_NEXT as u16 };
            if seg.device_writable {
                flags |= VRING_DESC_F_WRITE as u16;
            }
            let next = if last { 0 } else { ids[i + 1] };
            self.write_desc(ids[i], seg, flags, next)?;
        }
        let head = ids[0];
        let slot = u64::from(self.next_avail % self.size);
        self.mem
            .write_obj(head.to_le(), self.addrs.avail.unchecked_add(4 + 2 * slot))?;
        self.next_avail = self.next_avail.wrapping_add(1);
        self.chains[usize::from(head)] = ids;
        Ok(head)
    }

    fn write_desc(&self, id: u16, seg: &Segment, flags: u16, next: u16) -> Result<(), RingError> {
        let mut raw = [0u8; DESC_SIZE as usize];
        raw[0..8].copy_from_slice(&seg.addr.0.to_le_bytes());
        raw[8..12].copy_from_slice(&seg.len.to_le_bytes());
        raw[12..14].copy_from_slice(&flags.to_le_bytes());
        raw[14..16].copy_from_slice(&next.to_le_bytes());
        let at = self.addrs.desc.unchecked_add(DESC_SIZE * u64::from(id));
        self.mem.write_slice(&raw, at)?;
        Ok(())
    }

    /// Makes every added chain visible to the device (stores `avail.idx`).
    pub fn publish(&mut self) -> Result<(), RingError> {
        // Release: descriptors and ring entries are visible before the index that covers them.
        self.mem.store(
            self.next_avail.to_le(),
            self.addrs.avail.unchecked_add(2),
            Ordering::Release,
        )?;
        Ok(())
    }

    /// Publishes added chains and kicks the device unless it asked not to be notified.
    /// Returns whether a kick was sent.
    pub fn notify(&mut self) -> Result<bool, RingError> {
        if self.next_avail == self.notified_at {
            return Ok(false);
        }
        self.publish()?;
        // The index store must be visible before we read the device's suppression state,
        // or a device going to sleep at that moment would miss this batch.
        fence(Ordering::SeqCst);
        let old = self.notified_at;
        self.notified_at = self.next_avail;
        let wanted = if self.event_idx {
            let avail_event = self.load_u16(self.avail_event_addr())?;
            need_event(avail_event, self.next_avail, old)
        } else {
            let flags = self.load_u16(self.addrs.used)?;
            flags & VRING_USED_F_NO_NOTIFY as u16 == 0
        };
        if wanted {
            self.kick.write(1)?;
            self.kicks += 1;
        }
        Ok(wanted)
    }

    /// Kicks the device whether or not it asked for it (after setup, say).
    pub fn force_kick(&mut self) -> Result<(), RingError> {
        self.publish()?;
        self.notified_at = self.next_avail;
        self.kick.write(1)?;
        self.kicks += 1;
        Ok(())
    }

    /// Takes the next chain the device returned, freeing its descriptors.
    pub fn pop_used(&mut self) -> Result<Option<UsedElem>, RingError> {
        if self.event_idx {
            // Ask for an interrupt when the entry after those seen so far is used; the
            // fence orders that request before the check below, so none is missed.
            self.mem.store(
                self.last_used.to_le(),
                self.used_event_addr(),
                Ordering::Release,
            )?;
            fence(Ordering::SeqCst);
        }
        let used_idx = self.load_u16_acquire(self.addrs.used.unchecked_add(2))?;
        if used_idx == self.last_used {
            return Ok(None);
        }
        let slot = u64::from(self.last_used % self.size);
        let at = self.addrs.used.unchecked_add(4 + USED_ELEM_SIZE * slot);
        let id = u32::from_le(self.mem.read_obj::<u32>(at)?);
        let len = u32::from_le(self.mem.read_obj::<u32>(at.unchecked_add(4))?);
        let chain = usize::try_from(id)
            .ok()
            .and_then(|i| self.chains.get_mut(i))
            .filter(|c| !c.is_empty())
            .ok_or(RingError::BadUsedId { id })?;
        let ids = std::mem::take(chain);
        // Push back in reverse so the stack hands out the head first next time.
        self.free.extend(ids.iter().rev());
        self.last_used = self.last_used.wrapping_add(1);
        Ok(Some(UsedElem {
            head: id as u16,
            len,
        }))
    }

    /// Asks the device not to interrupt (without event-idx), or to interrupt again.
    pub fn set_interrupts(&mut self, enabled: bool) -> Result<(), RingError> {
        let flags: u16 = if enabled {
            0
        } else {
            VRING_AVAIL_F_NO_INTERRUPT as u16
        };
        self.mem
            .store(flags.to_le(), self.addrs.avail, Ordering::Release)?;
        Ok(())
    }

    /// Waits up to `timeout` for a used chain, sleeping on the call eventfd.
    pub fn wait_used(&mut self, timeout: Duration) -> Result<Option<UsedElem>, RingError> {
        let deadline = Instant::now() + timeout;
        loop {
            if let Some(used) = self.pop_used()? {
                return Ok(Some(used));
            }
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                return Ok(None);
            }
            self.wait_call(left)?;
        }
    }

    /// Sleeps until the device signals the call eventfd or `timeout` passes; consumes the
    /// signal. Returns whether it was signalled.
    pub fn wait_call(&self, timeout: Duration) -> Result<bool, RingError> {
        let mut events = [EpollEvent::default(); 1];
        let ms = i32::try_from(timeout.as_millis().max(1)).unwrap_or(i32::MAX);
        let n = match self.epoll.wait(ms, &mut events) {
            Ok(n) => n,
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => 0,
            Err(e) => return Err(e.into()),
        };
        if n > 0 {
            drain(&self.call);
        }
        Ok(n > 0)
    }

    fn used_event_addr(&self) -> GuestAddress {
        self.addrs.avail.unchecked_add(4 + 2 * u64::from(self.size))
    }

    fn avail_event_addr(&self) -> GuestAddress {
        self.addrs
            .used
            .unchecked_add(4 + USED_ELEM_SIZE * u64::from(self.size))
    }

    fn load_u16(&self, at: GuestAddress) -> Result<u16, RingError> {
        Ok(u16::from_le(self.mem.load::<u16>(at, Ordering::SeqCst)?))
    }

    fn load_u16_acquire(&self, at: GuestAddress) -> Result<u16, RingError> {
        Ok(u16::from_le(self.mem.load::<u16>(at, Ordering::Acquire)?))
    }
}

/// Reads an eventfd to zero; a non-blocking read that finds nothing is fine.
pub fn drain(fd: &EventFd) {
    let _ = fd.read();
}

/// The virtio rule for event-index suppression: notify when `event` lies in the half-open
/// window `[old, new)` of indices just made available (or used).
pub fn need_event(event: u16, new: u16, old: u16) -> bool {
    new.wrapping_sub(event).wrapping_sub(1) < new.wrapping_sub(old)
}

trait AddrExt {
    fn unchecked_add(self, off: u64) -> GuestAddress;
}

impl AddrExt for GuestAddress {
    fn unchecked_add(self, off: u64) -> GuestAddress {
        GuestAddress(self.0 + off)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use virtio_queue::{Queue, QueueT};

    /// The device side, played by virtio-queue's `Queue` over the same memory.
    fn device(ring: &SplitRing, event_idx: bool) -> Queue {
        let a = ring.addresses();
        let mut q = Queue::new(ring.size()).unwrap();
        q.set_size(ring.size());
        q.set_desc_table_address(Some(a.desc.0 as u32), Some((a.desc.0 >> 32) as u32));
        q.set_avail_ring_address(Some(a.avail.0 as u32), Some((a.avail.0 >> 32) as u32));
        q.set_used_ring_address(Some(a.used.0 as u32), Some((a.used.0 >> 32) as u32));
        q.set_event_idx(event_idx);
        q.set_ready(true);
        q
    }

    fn seg(addr: u64, len: u32, device_writable: bool) -> Segment {
        Segment {
            addr: GuestAddress(addr),
            len,
            device_writable,
        }
    }

    #[test]
    fn rejects_sizes_that_are_not_powers_of_two() {
        let ram = GuestRam::new(1 << 20).unwrap();
        assert!(matches!(
            SplitRing::new(&ram, 100, false),
            Err(RingError::BadSize(100))
        ));
        assert!(matches!(
            SplitRing::new(&ram, 0, false),
            Err(RingError::BadSize(0))
        ));
    }

    #[test]
    fn device_sees_chains_in_order_with_their_layout() {
        let ram = GuestRam::new(1 << 20).unwrap();
        let mut ring = SplitRing::new(&ram, 8, false).unwrap();
        let mut dev = device(&ring, false);
        let h1 = ring
            .add(&[seg(0x10000, 44, false), seg(0x20000, 100, false)])
            .unwrap();
        let h2 = ring.add(&[seg(0x30000, 4096, true)]).unwrap();
        assert_eq!(ring.free_descriptors(), 5);
        // Not published yet: the device sees nothing.
        assert!(dev.pop_descriptor_chain(ram.memory()).is_none());
        assert!(ring.notify().unwrap(), "kicked without suppression");
        assert_eq!(ring.kick_fd().read().unwrap(), 1);

        let c1 = dev.pop_descriptor_chain(ram.memory()).unwrap();
        assert_eq!(c1.head_index(), h1);
        let d: Vec<_> = c1.collect();
        assert_eq!(d.len(), 2);
        assert_eq!(
            (d[0].addr().0, d[0].len(), d[0].is_write_only()),
            (0x10000, 44, false)
        );
        assert_eq!(
            (d[1].addr().0, d[1].len(), d[1].is_write_only()),
            (0x20000, 100, false)
        );
        let c2 = dev.pop_descriptor_chain(ram.memory()).unwrap();
        assert_eq!(c2.head_index(), h2);
        let d: Vec<_> = c2.collect();
        assert_eq!(d.len(), 1);
        assert!(d[0].is_write_only());
        assert!(dev.pop_descriptor_chain(ram.memory()).is_none());

        // Returned out of order: the driver gets exactly what the device reported.
        dev.add_used(ram.memory(), h2, 77).unwrap();
        dev.add_used(ram.memory(), h1, 0).unwrap();
        assert_eq!(
            ring.pop_used().unwrap(),
            Some(UsedElem { head: h2, len: 77 })
        );
        assert_eq!(
            ring.pop_used().unwrap(),
            Some(UsedElem { head: h1, len: 0 })
        );
        assert_eq!(ring.pop_used().unwrap(), None);
        assert_eq!(ring.free_descriptors(), 8);
        assert_eq!(ring.outstanding(), 0);
    }

    #[test]
    fn wraps_around_many_times_without_leaking_descriptors() {
        let ram = GuestRam::new(1 << 20).unwrap();
        let mut ring = SplitRing::new(&ram, 4, false).unwrap();
        let mut dev = device(&ring, false);
        for round in 0..70_000u32 {
            let nsegs = 1 + (round % 3) as usize;
            let segs: Vec<_> = (0..nsegs)
                .map(|i| seg(0x8000 + i as u64 * 64, 64, true))
                .collect();
            let head = ring.add(&segs).unwrap();
            ring.notify().unwrap();
            let chain = dev.pop_descriptor_chain(ram.memory()).unwrap();
            assert_eq!(chain.head_index(), head);
            assert_eq!(chain.count(), nsegs);
            dev.add_used(ram.memory(), head, round).unwrap();
            let used = ring.pop_used().unwrap().unwrap();
            assert_eq!(used, UsedElem { head, len: round });
        }
        assert_eq!(ring.free_descriptors(), 4);
    }

    #[test]
    fn full_ring_is_reported_not_overwritten() {
        let ram = GuestRam::new(1 << 20).unwrap();
        let mut ring = SplitRing::new(&ram, 4, false).unwrap();
        ring.add(&[seg(0x8000, 1, false); 3]).unwrap();
        assert!(matches!(
            ring.add(&[seg(0x8000, 1, false); 2]),
            Err(RingError::Full { want: 2, free: 1 })
        ));
        assert!(matches!(ring.add(&[]), Err(RingError::EmptyChain)));
        ring.add(&[seg(0x8000, 1, false)]).unwrap();
    }

    #[test]
    fn a_bogus_used_id_is_an_error() {
        let ram = GuestRam::new(1 << 20).unwrap();
        let mut ring = SplitRing::new(&ram, 4, false).unwrap();
        let mut dev = device(&ring, false);
        let head = ring.add(&[seg(0x8000, 1, false)]).unwrap();
        ring.notify().unwrap();
        dev.pop_descriptor_chain(ram.memory()).unwrap();
        // The device reports a head it never got.
        dev.add_used(ram.memory(), (head + 1) % 4, 0).unwrap();
        assert!(matches!(ring.pop_used(), Err(RingError::BadUsedId { .. })));
    }

    #[test]
    fn flags_suppress_kicks_without_event_idx() {
        let ram = GuestRam::new(1 << 20).unwrap();
        let mut ring = SplitRing::new(&ram, 8, false).unwrap();
        let mut dev = device(&ring, false);
        dev.disable_notification(ram.memory()).unwrap();
        ring.add(&[seg(0x8000, 1, false)]).unwrap();
        assert!(!ring.notify().unwrap(), "device said NO_NOTIFY");
        dev.enable_notification(ram.memory()).unwrap();
        ring.add(&[seg(0x8000, 1, false)]).unwrap();
        assert!(ring.notify().unwrap());
        // Nothing new: no kick.
        assert!(!ring.notify().unwrap());
        assert_eq!(ring.kicks(), 1);
    }

    #[test]
    fn event_idx_kicks_only_when_the_device_asked() {
        let ram = GuestRam::new(1 << 20).unwrap();
        let mut ring = SplitRing::new(&ram, 8, true).unwrap();
        let mut dev = device(&ring, true);
        // The device asks to hear about the next chain (avail_event = 0).
        dev.enable_notification(ram.memory()).unwrap();
        ring.add(&[seg(0x8000, 1, false)]).unwrap();
        assert!(ring.notify().unwrap());
        // The device has not consumed anything nor moved avail_event: the next one is
        // beyond the window it asked about, so no kick.
        ring.add(&[seg(0x8000, 1, false)]).unwrap();
        assert!(!ring.notify().unwrap());
        // The device drains and re-arms: avail_event = 2, the next chain crosses it.
        while dev.pop_descriptor_chain(ram.memory()).is_some() {}
        assert!(!dev.enable_notification(ram.memory()).unwrap());
        ring.add(&[seg(0x8000, 1, false)]).unwrap();
        assert!(ring.notify().unwrap());
        assert_eq!(ring.kicks(), 2);
    }

    #[test]
    fn event_idx_interrupts_are_requested_for_the_next_used_entry() {
        let ram = GuestRam::new(1 << 20).unwrap();
        let mut ring = SplitRing::new(&ram, 8, true).unwrap();
        let mut dev = device(&ring, true);
        let h = ring.add(&[seg(0x8000, 1, true)]).unwrap();
        ring.notify().unwrap();
        // Polling once publishes used_event = 0: the first used entry must interrupt.
        assert_eq!(ring.pop_used().unwrap(), None);
        dev.pop_descriptor_chain(ram.memory()).unwrap();
        dev.add_used(ram.memory(), h, 1).unwrap();
        assert!(dev.needs_notification(ram.memory()).unwrap());
        assert!(ring.pop_used().unwrap().is_some());
        // Draining to the end re-arms: used_event = 1 now, so the second entry interrupts,
        // a third (added without the driver looking again) does not.
        assert_eq!(ring.pop_used().unwrap(), None);
        let h2 = ring.add(&[seg(0x8000, 1, true)]).unwrap();
        let h3 = ring.add(&[seg(0x8000, 1, true)]).unwrap();
        ring.notify().unwrap();
        dev.pop_descriptor_chain(ram.memory()).unwrap();
        dev.pop_descriptor_chain(ram.memory()).unwrap();
        dev.add_used(ram.memory(), h2, 1).unwrap();
        assert!(dev.needs_notification(ram.memory()).unwrap());
        dev.add_used(ram.memory(), h3, 1).unwrap();
        assert!(!dev.needs_notification(ram.memory()).unwrap());
    }

    #[test]
    fn wait_used_times_out_and_wakes_on_call() {
        let ram = GuestRam::new(1 << 20).unwrap();
        let mut ring = SplitRing::new(&ram, 4, false).unwrap();
        let start = Instant::now();
        assert_eq!(ring.wait_used(Duration::from_millis(50)).unwrap(), None);
        assert!(start.elapsed() >= Duration::from_millis(45));

        let mut dev = device(&ring, false);
        let head = ring.add(&[seg(0x8000, 8, true)]).unwrap();
        ring.notify().unwrap();
        let mem = ram.memory().clone();
        let call = ring.call_fd().try_clone().unwrap();
        let worker = std::thread::spawn(move || {
            std::thread::sleep(Duration::from_millis(20));
            let chain = dev.pop_descriptor_chain(&mem).unwrap();
            dev.add_used(&mem, chain.head_index(), 8).unwrap();
            call.write(1).unwrap();
        });
        let used = ring.wait_used(Duration::from_secs(5)).unwrap();
        worker.join().unwrap();
        assert_eq!(used, Some(UsedElem { head, len: 8 }));
    }

    #[test]
    fn need_event_matches_the_spec_formula_across_wraparound() {
        assert!(need_event(0, 1, 0));
        assert!(!need_event(1, 1, 0));
        assert!(need_event(65535, 1, 65534));
        assert!(need_event(65535, 0, 65535));
        assert!(!need_event(5, 3, 1));
    }
}
