//! The guest's two virtqueues with their buffers: receive buffers posted to the rx ring
//! in a chosen descriptor layout, and transmit slots whose packets go out on the tx ring in
//! a chosen layout.

use super::{RxLayout, TxLayout};
use crate::memory::GuestRam;
use crate::ring::{RingError, Segment, SplitRing, UsedElem};
use tether_vsock::HEADER_LEN;
use vm_memory::GuestAddress;

/// Largest payload the guest sends in one packet (Linux: 64 KiB).
pub(crate) const MAX_TX_PAYLOAD: usize = 64 * 1024;
/// Largest raw packet (header bytes included) [`super::Guest::send_raw`] accepts.
pub(crate) const MAX_RAW: usize = 128 * 1024;
/// Raw packets in flight at once.
const RAW_SLOTS: usize = 4;
/// Where data starts in a slot when it has its own descriptor: past the header, aligned.
const DATA_OFFSET: u64 = 64;
/// Descriptors per chain at most in the scattered layout (Linux caps zerocopy frags near this).
const MAX_PIECES: usize = 64;

/// A received buffer's location.
#[derive(Clone, Copy, Debug)]
struct RxBuf {
    base: GuestAddress,
    /// Where the payload starts (right after the header, or in the second descriptor).
    data: GuestAddress,
    /// Payload room.
    data_len: u32,
}

/// The rx ring and the buffers it cycles through.
#[derive(Debug)]
pub(crate) struct RxQueue {
    pub ring: SplitRing,
    layout: RxLayout,
    bufs: Vec<RxBuf>,
    /// Buffer index by outstanding chain head.
    by_head: Vec<Option<u32>>,
    buffer_size: u32,
}

/// A filled receive buffer handed back by the device.
#[derive(Clone, Copy, Debug)]
pub(crate) struct RxFilled {
    pub buf: u32,
    /// Bytes the device says it wrote (header included).
    pub used_len: u32,
    pub header_at: GuestAddress,
    pub data_at: GuestAddress,
    pub data_room: u32,
}

impl RxQueue {
    /// Allocates buffers for every chain the ring can hold. `buffer_size` is the whole
    /// single descriptor (header + data) or the data descriptor of the split layout.
    pub fn new(
        ram: &GuestRam,
        ring: SplitRing,
        layout: RxLayout,
        buffer_size: u32,
    ) -> Result<Self, RingError> {
        let per_chain = match layout {
            RxLayout::Single => 1,
            RxLayout::Split => 2,
        };
        let count = usize::from(ring.size()) / per_chain;
        let mut bufs = Vec::with_capacity(count);
        for _ in 0..count {
            let base = ram.alloc(u64::from(buffer_size) + DATA_OFFSET, 64)?;
            bufs.push(match layout {
                RxLayout::Single => RxBuf {
                    base,
                    data: GuestAddress(base.0 + HEADER_LEN as u64),
                    data_len: buffer_size.saturating_sub(HEADER_LEN as u32),
                },
                RxLayout::Split => RxBuf {
                    base,
                    data: GuestAddress(base.0 + DATA_OFFSET),
                    data_len: buffer_size,
                },
            });
        }
        let by_head = vec![None; usize::from(ring.size())];
        Ok(RxQueue {
            ring,
            layout,
            bufs,
            by_head,
            buffer_size,
        })
    }

    /// Posts every buffer.
    pub fn post_all(&mut self) -> Result<(), RingError> {
        for i in 0..self.bufs.len() as u32 {
            self.post(i)?;
        }
        Ok(())
    }

    /// Posts one buffer (after its contents were consumed).
    pub fn post(&mut self, buf: u32) -> Result<(), RingError> {
        let b = self.bufs[buf as usize];
        let head = match self.layout {
            RxLayout::Single => self.ring.add(&[Segment {
                addr: b.base,
                len: self.buffer_size,
                device_writable: true,
            }])?,
            RxLayout::Split => self.ring.add(&[
                Segment {
                    addr: b.base,
                    len: HEADER_LEN as u32,
                    device_writable: true,
                },
                Segment {
                    addr: b.data,
                    len: b.data_len,
                    device_writable: true,
                },
            ])?,
        };
        self.by_head[usize::from(head)] = Some(buf);
        Ok(())
    }

    /// The next buffer the device filled.
    pub fn take(&mut self) -> Result<Option<RxFilled>, RingError> {
        let Some(UsedElem { head, len }) = self.ring.pop_used()? else {
            return Ok(None);
        };
        let buf = self.by_head[usize::from(head)]
            .take()
            .ok_or(RingError::BadUsedId { id: head.into() })?;
        let b = self.bufs[buf as usize];
        Ok(Some(RxFilled {
            buf,
            used_len: len,
            header_at: b.base,
            data_at: b.data,
            data_room: b.data_len,
        }))
    }

    /// Payload room of one buffer.
    pub fn payload_room(&self) -> u32 {
        self.bufs.first().map_or(0, |b| b.data_len)
    }
}

/// What an outstanding tx chain carries.
#[derive(Clone, Copy, Debug)]
enum InFlight {
    Packet { slot: u32 },
    Raw { slot: u32, seq: u64 },
}

/// A tx chain the device finished with.
#[derive(Clone, Copy, Debug)]
pub(crate) enum TxDone {
    /// An engine packet.
    Packet,
    /// A raw packet, by sequence number, with the used length the device reported.
    Raw { seq: u64, used_len: u32 },
}

/// The tx ring and the memory packets are written into before going out.
#[derive(Debug)]
pub(crate) struct TxQueue {
    pub ring: SplitRing,
    layout: TxLayout,
    slots: Vec<GuestAddress>,
    free_slots: Vec<u32>,
    raw_slots: Vec<GuestAddress>,
    free_raw: Vec<u32>,
    by_head: Vec<Option<InFlight>>,
}

impl TxQueue {
    /// One slot per ring entry (a packet needs at least one descriptor), each big enough
    /// for a header and the largest payload; plus a few large slots for raw packets.
    pub fn new(ram: &GuestRam, ring: SplitRing, layout: TxLayout) -> Result<Self, RingError> {
        let n = usize::from(ring.size());
        let slot_len = DATA_OFFSET + MAX_TX_PAYLOAD as u64;
        let slots = (0..n)
            .map(|_| ram.alloc(slot_len, 64))
            .collect::<Result<Vec<_>, _>>()?;
        let raw_slots = (0..RAW_SLOTS)
            .map(|_| ram.alloc(DATA_OFFSET + MAX_RAW as u64, 64))
            .collect::<Result<Vec<_>, _>>()?;
        Ok(TxQueue {
            by_head: vec![None; n],
            free_slots: (0..n as u32).rev().collect(),
            free_raw: (0..RAW_SLOTS as u32).rev().collect(),
            ring,
            layout,
            slots,
            raw_slots,
        })
    }

    /// The largest payload the next engine packet may carry given free descriptors and
    /// slots: `None` when not even a header-only packet fits.
    pub fn room(&self) -> Option<u32> {
        let free = self.ring.free_descriptors();
        if self.free_slots.is_empty() || free == 0 {
            return None;
        }
        let room = match self.layout {
            TxLayout::Single => MAX_TX_PAYLOAD,
            TxLayout::Split if free >= 2 => MAX_TX_PAYLOAD,
            TxLayout::Split => 0,
            TxLayout::Scattered { piece } => {
                let pieces = (free - 1).min(MAX_PIECES);
                (piece.max(1) as usize * pieces).min(MAX_TX_PAYLOAD)
            }
        };
        Some(room as u32)
    }

    /// Whether a raw packet can go now.
    pub fn raw_room(&self, len: usize, layout: TxLayout) -> bool {
        !self.free_raw.is_empty() && descriptors(layout, len) <= self.ring.free_descriptors()
    }

    /// Writes an engine packet into a slot and adds its chain (not yet published).
    pub fn push_packet(
        &mut self,
        ram: &GuestRam,
        header: &[u8],
        payload: &[u8],
    ) -> Result<(), RingError> {
        let slot = self.free_slots.pop().expect("room() checked a free slot");
        let base = self.slots[slot as usize];
        match self.push_bytes(ram, base, self.layout, header, payload) {
            Ok(head) => {
                self.by_head[usize::from(head)] = Some(InFlight::Packet { slot });
                Ok(())
            }
            Err(e) => {
                self.free_slots.push(slot);
                Err(e)
            }
        }
    }

    /// Writes arbitrary bytes as one chain in `layout`; the first 44 bytes (or all, when
    /// fewer) form the header descriptor.
    pub fn push_raw(
        &mut self,
        ram: &GuestRam,
        bytes: &[u8],
        layout: TxLayout,
        seq: u64,
    ) -> Result<(), RingError> {
        let slot = self.free_raw.pop().expect("raw_room() checked a free slot");
        let base = self.raw_slots[slot as usize];
        let (head_bytes, tail) = bytes.split_at(bytes.len().min(HEADER_LEN));
        match self.push_bytes(ram, base, layout, head_bytes, tail) {
            Ok(head) => {
                self.by_head[usize::from(head)] = Some(InFlight::Raw { slot, seq });
                Ok(())
            }
            Err(e) => {
                self.free_raw.push(slot);
                Err(e)
            }
        }
    }

    fn push_bytes(
        &mut self,
        ram: &GuestRam,
        base: GuestAddress,
        layout: TxLayout,
        head: &[u8],
        tail: &[u8],
    ) -> Result<u16, RingError> {
        let readable = |addr: GuestAddress, len: usize| Segment {
            addr,
            len: len as u32,
            device_writable: false,
        };
        ram.write(base, head)?;
        let mut segs = Vec::with_capacity(2);
        if let TxLayout::Single = layout {
            ram.write(GuestAddress(base.0 + head.len() as u64), tail)?;
            segs.push(readable(base, head.len() + tail.len()));
            return self.ring.add(&segs);
        }
        let data = GuestAddress(base.0 + DATA_OFFSET);
        ram.write(data, tail)?;
        segs.push(readable(base, head.len()));
        let piece = match layout {
            TxLayout::Scattered { piece } => piece.max(1) as usize,
            _ => tail.len().max(1),
        };
        for (i, chunk) in tail.chunks(piece).enumerate() {
            segs.push(readable(
                GuestAddress(data.0 + (i * piece) as u64),
                chunk.len(),
            ));
        }
        self.ring.add(&segs)
    }

    /// The next chain the device finished with; its slot becomes free.
    pub fn reclaim(&mut self) -> Result<Option<TxDone>, RingError> {
        let Some(UsedElem { head, len }) = self.ring.pop_used()? else {
            return Ok(None);
        };
        let what = self.by_head[usize::from(head)]
            .take()
            .ok_or(RingError::BadUsedId { id: head.into() })?;
        Ok(Some(match what {
            InFlight::Packet { slot } => {
                self.free_slots.push(slot);
                TxDone::Packet
            }
            InFlight::Raw { slot, seq } => {
                self.free_raw.push(slot);
                TxDone::Raw { seq, used_len: len }
            }
        }))
    }
}

/// Descriptors a packet of `len` bytes (header included) takes in `layout`.
pub(crate) fn descriptors(layout: TxLayout, len: usize) -> usize {
    let tail = len.saturating_sub(HEADER_LEN);
    match layout {
        TxLayout::Single => 1,
        TxLayout::Split => 1 + usize::from(tail > 0),
        TxLayout::Scattered { piece } => 1 + tail.div_ceil(piece.max(1) as usize),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use virtio_queue::{Queue, QueueT};
    use vm_memory::Bytes;

    fn device(ring: &SplitRing) -> Queue {
        let a = ring.addresses();
        let mut q = Queue::new(ring.size()).unwrap();
        q.set_size(ring.size());
        q.set_desc_table_address(Some(a.desc.0 as u32), Some((a.desc.0 >> 32) as u32));
        q.set_avail_ring_address(Some(a.avail.0 as u32), Some((a.avail.0 >> 32) as u32));
        q.set_used_ring_address(Some(a.used.0 as u32), Some((a.used.0 >> 32) as u32));
        q.set_ready(true);
        q
    }

    /// Descriptor lengths and the bytes they hold, as the device would read them.
    fn sent(ram: &GuestRam, dev: &mut Queue) -> (u16, Vec<u32>, Vec<u8>) {
        let chain = dev.pop_descriptor_chain(ram.memory()).unwrap();
        let head = chain.head_index();
        let mut lens = Vec::new();
        let mut bytes = Vec::new();
        for d in chain {
            assert!(!d.is_write_only());
            lens.push(d.len());
            let mut buf = vec![0u8; d.len() as usize];
            ram.memory().read_slice(&mut buf, d.addr()).unwrap();
            bytes.extend(buf);
        }
        (head, lens, bytes)
    }

    #[test]
    fn tx_layouts_put_the_same_bytes_in_different_descriptors() {
        let header = [0xabu8; HEADER_LEN];
        let payload: Vec<u8> = (0..10_000u32).map(|i| i as u8).collect();
        let mut want = header.to_vec();
        want.extend_from_slice(&payload);
        for (layout, lens) in [
            (TxLayout::Single, vec![10_044]),
            (TxLayout::Split, vec![44, 10_000]),
            (
                TxLayout::Scattered { piece: 4096 },
                vec![44, 4096, 4096, 1808],
            ),
        ] {
            let ram = GuestRam::new(32 << 20).unwrap();
            let ring = SplitRing::new(&ram, 16, false).unwrap();
            let mut dev = device(&ring);
            let mut tx = TxQueue::new(&ram, ring, layout).unwrap();
            tx.push_packet(&ram, &header, &payload).unwrap();
            tx.push_packet(&ram, &header, &[]).unwrap();
            tx.ring.notify().unwrap();
            let (head, got_lens, bytes) = sent(&ram, &mut dev);
            assert_eq!(got_lens, lens, "{layout:?}");
            assert_eq!(bytes, want, "{layout:?}");
            let (_, control, _) = sent(&ram, &mut dev);
            assert_eq!(
                control,
                [44],
                "{layout:?}: a control packet is the header alone"
            );
            dev.add_used(ram.memory(), head, 0).unwrap();
            assert!(matches!(tx.reclaim().unwrap(), Some(TxDone::Packet)));
        }
    }

    #[test]
    fn raw_packets_shorter_than_a_header_go_as_they_are() {
        let ram = GuestRam::new(32 << 20).unwrap();
        let ring = SplitRing::new(&ram, 16, false).unwrap();
        let mut dev = device(&ring);
        let mut tx = TxQueue::new(&ram, ring, TxLayout::Single).unwrap();
        assert!(tx.raw_room(20, TxLayout::Split));
        tx.push_raw(&ram, &[1u8; 20], TxLayout::Split, 9).unwrap();
        tx.ring.notify().unwrap();
        let (head, lens, _) = sent(&ram, &mut dev);
        assert_eq!(lens, [20]);
        dev.add_used(ram.memory(), head, 3).unwrap();
        assert!(matches!(
            tx.reclaim().unwrap(),
            Some(TxDone::Raw {
                seq: 9,
                used_len: 3
            })
        ));
    }

    #[test]
    fn rx_layouts_offer_writable_buffers_and_find_the_payload() {
        for (layout, lens, room) in [
            (RxLayout::Single, vec![4096], 4052),
            (RxLayout::Split, vec![44, 4096], 4096),
        ] {
            let ram = GuestRam::new(8 << 20).unwrap();
            let ring = SplitRing::new(&ram, 8, false).unwrap();
            let mut dev = device(&ring);
            let mut rx = RxQueue::new(&ram, ring, layout, 4096).unwrap();
            rx.post_all().unwrap();
            rx.ring.notify().unwrap();
            assert_eq!(rx.payload_room(), room);
            let chain = dev.pop_descriptor_chain(ram.memory()).unwrap();
            let head = chain.head_index();
            let descs: Vec<_> = chain.collect();
            assert!(descs.iter().all(|d| d.is_write_only()));
            assert_eq!(descs.iter().map(|d| d.len()).collect::<Vec<_>>(), lens);
            // The device writes a header and 5 payload bytes the way the layout asks.
            let payload_at = if descs.len() == 1 {
                GuestAddress(descs[0].addr().0 + HEADER_LEN as u64)
            } else {
                descs[1].addr()
            };
            ram.write(payload_at, b"hello").unwrap();
            dev.add_used(ram.memory(), head, HEADER_LEN as u32 + 5)
                .unwrap();
            let f = rx.take().unwrap().unwrap();
            assert_eq!(f.used_len, 49);
            assert_eq!(f.data_at, payload_at);
            assert_eq!(f.header_at, descs[0].addr());
            rx.post(f.buf).unwrap();
        }
    }
}
