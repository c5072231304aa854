//! A fake virtio-vsock driver for in-process device tests and the `device_chains` fuzz
//! target.
//!
//! The device is driven the way the vhost-user worker drives it (`process_tx`,
//! `process_rx`, `poll_host`), but the "guest" is this module: it owns guest memory, lays
//! out split virtqueues in it and writes descriptor chains of the shapes real drivers
//! produce, or deliberately broken ones. No vhost-user frontend is involved, so a test
//! decides exactly when the device runs and sees every packet it emits. The host side is
//! plain Unix sockets in a private temporary directory; nothing here touches AF_VSOCK.

// Each test binary (and the fuzz target) uses a different part of this module.
#![allow(dead_code)]

use std::collections::HashMap;
use std::io::{self, Read, Write};
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;
use tether_device::{Device, DeviceConfig};
use tether_vsock::{Header, Op, SocketType, HEADER_LEN, HOST_CID};
use vhost_user_backend::{VringRwLock, VringT};
use vm_memory::{Bytes as _, GuestAddress, GuestAddressSpace, GuestMemoryAtomic, GuestMemoryMmap};

/// The guest's context id in every test.
pub const GUEST_CID: u64 = 3;
/// Split-ring descriptor flags (virtio spec 2.7.5).
pub const F_NEXT: u16 = 1;
/// The device writes into this descriptor.
pub const F_WRITE: u16 = 2;
/// The descriptor points at a table of descriptors.
pub const F_INDIRECT: u16 = 4;
/// Size of one split-ring descriptor in guest memory.
pub const DESC_SIZE: u64 = 16;

/// Where the rings live: one 64 KiB region per queue holds a descriptor table, avail
/// ring and used ring for any size up to 1024.
pub const RX_RING_BASE: u64 = 0x1_0000;
/// See [`RX_RING_BASE`].
pub const TX_RING_BASE: u64 = 0x2_0000;
/// Buffers start here, after the rings.
pub const DATA_BASE: u64 = 0x4_0000;
/// One slot holds one chain: an indirect table (up to 64 entries) then 71 KiB of data,
/// enough for a 64 KiB payload, its header and the gaps between scattered pieces.
pub const SLOT_SIZE: u64 = 0x1_2000;
const SLOT_TABLE: u64 = 0x400;
/// Bytes left between scattered pieces, filled with a marker: a device that read guest
/// memory as one contiguous run instead of following the descriptors would pick them up.
const GAP: u64 = 8;
const GAP_FILL: u8 = 0xee;

/// Payload limit of one guest packet (Linux guests send at most 64 KiB).
pub const MAX_GUEST_PAYLOAD: usize = 64 * 1024;

/// One raw split-ring descriptor.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Desc {
    /// Guest physical address of the buffer.
    pub addr: u64,
    /// Buffer length.
    pub len: u32,
    /// `F_*` bits.
    pub flags: u16,
    /// Next descriptor when `F_NEXT` is set.
    pub next: u16,
}

impl Desc {
    fn encode(&self) -> [u8; 16] {
        let mut b = [0u8; 16];
        b[0..8].copy_from_slice(&self.addr.to_le_bytes());
        b[8..12].copy_from_slice(&self.len.to_le_bytes());
        b[12..14].copy_from_slice(&self.flags.to_le_bytes());
        b[14..16].copy_from_slice(&self.next.to_le_bytes());
        b
    }
}

/// A directory under the system temp dir, removed with everything in it on drop, so
/// parallel tests (and fuzz iterations) never share socket paths.
pub struct TempDir(PathBuf);

impl TempDir {
    /// A fresh, empty directory whose name carries `tag`, the pid and a counter.
    pub fn new(tag: &str) -> Self {
        static NEXT: AtomicU64 = AtomicU64::new(0);
        let n = NEXT.fetch_add(1, Ordering::Relaxed);
        let path = std::env::temp_dir().join(format!("tdev-{tag}-{}-{n}", std::process::id()));
        let _ = std::fs::remove_dir_all(&path);
        std::fs::create_dir_all(&path).expect("creating a temporary directory");
        TempDir(path)
    }

    /// The directory.
    pub fn path(&self) -> &Path {
        &self.0
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// A chain the driver made available and has not seen come back yet.
#[derive(Clone, Debug, Default)]
pub struct Posted {
    /// Descriptor indices taken from the ring's table (to free on return).
    descs: Vec<u16>,
    /// The memory slot holding the chain's buffers, if it came from the pool.
    pub slot: Option<u64>,
    /// Device-writable buffers, in order: where an RX packet is read back from.
    pub writable: Vec<(u64, u32)>,
}

impl Posted {
    /// Total device-writable bytes.
    pub fn capacity(&self) -> u32 {
        self.writable.iter().map(|&(_, len)| len).sum()
    }
}

/// A split virtqueue as the driver sees it, and the device's `VringRwLock` over it.
pub struct Ring {
    /// What the device is handed.
    pub vring: VringRwLock,
    mem: GuestMemoryAtomic<GuestMemoryMmap>,
    /// Entries in the ring.
    pub size: u16,
    /// Guest address of the descriptor table.
    pub desc_table: u64,
    /// Guest address of the available ring.
    pub avail: u64,
    /// Guest address of the used ring.
    pub used: u64,
    free: Vec<u16>,
    avail_idx: u16,
    used_idx: u16,
    posted: HashMap<u16, Posted>,
}

impl Ring {
    /// A ring of `size` entries (a power of two up to 1024) laid out from `base`, set up
    /// and enabled as a vhost-user frontend would.
    pub fn new(mem: &GuestMemoryAtomic<GuestMemoryMmap>, base: u64, size: u16) -> Self {
        assert!(size.is_power_of_two() && size <= 1024, "queue size {size}");
        let (desc_table, avail, used) = (base, base + 0x4000, base + 0x6000);
        let vring = VringRwLock::new(mem.clone(), size).expect("vring");
        vring.set_queue_size(size);
        vring
            .set_queue_info(desc_table, avail, used)
            .expect("queue addresses");
        vring.set_queue_ready(true);
        vring.set_enabled(true);
        let ring = Ring {
            vring,
            mem: mem.clone(),
            size,
            desc_table,
            avail,
            used,
            free: (0..size).rev().collect(),
            avail_idx: 0,
            used_idx: 0,
            posted: HashMap::new(),
        };
        ring.write(avail, &[0; 4]);
        ring.write(used, &[0; 4]);
        ring
    }

    fn write(&self, addr: u64, bytes: &[u8]) {
        self.mem
            .memory()
            .write_slice(bytes, GuestAddress(addr))
            .expect("ring memory");
    }

    fn read_u16(&self, addr: u64) -> u16 {
        let mut b = [0u8; 2];
        self.mem
            .memory()
            .read_slice(&mut b, GuestAddress(addr))
            .expect("ring memory");
        u16::from_le_bytes(b)
    }

    fn read_u32(&self, addr: u64) -> u32 {
        let mut b = [0u8; 4];
        self.mem
            .memory()
            .read_slice(&mut b, GuestAddress(addr))
            .expect("ring memory");
        u32::from_le_bytes(b)
    }

    /// The avail index the driver last published.
    pub fn avail_idx(&self) -> u16 {
        self.avail_idx
    }

    /// Free descriptor-table entries.
    pub fn free_descs(&self) -> usize {
        self.free.len()
    }

    /// Chains made available and not yet returned.
    pub fn outstanding(&self) -> usize {
        self.posted.len()
    }

    /// Writes descriptor `index` of the table at `table` (the ring's own or an indirect
    /// one). No checks: the fuzz target uses this to write whatever it likes.
    pub fn write_desc_at(&self, table: u64, index: u16, desc: Desc) {
        let addr = table + u64::from(index) * DESC_SIZE;
        let _ = self
            .mem
            .memory()
            .write_slice(&desc.encode(), GuestAddress(addr));
    }

    /// A ring's worth of chains is already waiting for the device. Only a driver that
    /// lied about the avail index (the fuzz target) gets here with descriptors free;
    /// publishing more would make the lie worse behind its back.
    fn full(&self) -> bool {
        self.avail_idx.wrapping_sub(self.vring.queue_next_avail()) >= self.size
    }

    /// Puts `head` in the next avail slot and publishes it.
    pub fn publish(&mut self, head: u16) {
        let slot = u64::from(self.avail_idx % self.size);
        self.write(self.avail + 4 + slot * 2, &head.to_le_bytes());
        self.avail_idx = self.avail_idx.wrapping_add(1);
        std::sync::atomic::fence(Ordering::SeqCst);
        self.write(self.avail + 2, &self.avail_idx.to_le_bytes());
    }

    /// Overwrites the published avail index with any value: a driver that lies about how
    /// many chains it offered.
    pub fn set_avail_idx_raw(&mut self, idx: u16) {
        self.avail_idx = idx;
        self.write(self.avail + 2, &idx.to_le_bytes());
    }

    /// Makes `chain` available, linking its descriptors in order (`F_NEXT` and `next`
    /// are filled in; other flags are kept). `None` when the table lacks free entries.
    pub fn post(&mut self, chain: &[Desc], slot: Option<u64>) -> Option<u16> {
        assert!(!chain.is_empty());
        if self.free.len() < chain.len() || self.full() {
            return None;
        }
        let idx: Vec<u16> = (0..chain.len())
            .map(|_| self.free.pop().expect("counted"))
            .collect();
        for (i, d) in chain.iter().enumerate() {
            let mut d = *d;
            if let Some(&next) = idx.get(i + 1) {
                d.flags |= F_NEXT;
                d.next = next;
            } else {
                d.flags &= !F_NEXT;
            }
            self.write_desc_at(self.desc_table, idx[i], d);
        }
        let head = idx[0];
        let writable = writable_of(chain);
        self.posted.insert(
            head,
            Posted {
                descs: idx,
                slot,
                writable,
            },
        );
        self.publish(head);
        Some(head)
    }

    /// Makes `chain` available through an indirect table written at `table`: one ring
    /// descriptor points at the table.
    pub fn post_indirect(&mut self, table: u64, chain: &[Desc], slot: Option<u64>) -> Option<u16> {
        assert!(!chain.is_empty());
        if self.full() {
            return None;
        }
        let head = self.free.pop()?;
        for (i, d) in chain.iter().enumerate() {
            let mut d = *d;
            if i + 1 < chain.len() {
                d.flags |= F_NEXT;
                d.next = (i + 1) as u16;
            } else {
                d.flags &= !F_NEXT;
            }
            self.write_desc_at(table, i as u16, d);
        }
        let entry = Desc {
            addr: table,
            len: (chain.len() as u64 * DESC_SIZE) as u32,
            flags: F_INDIRECT,
            next: 0,
        };
        self.write_desc_at(self.desc_table, head, entry);
        self.posted.insert(
            head,
            Posted {
                descs: vec![head],
                slot,
                writable: writable_of(chain),
            },
        );
        self.publish(head);
        Some(head)
    }

    /// Raw used entries (id, len) the device added since the last call. At most one
    /// ring's worth is read, so a corrupted used index cannot make this loop long.
    pub fn take_used_raw(&mut self) -> Vec<(u32, u32)> {
        let idx = self.read_u16(self.used + 2);
        let pending = idx.wrapping_sub(self.used_idx).min(self.size);
        let mut out = Vec::with_capacity(usize::from(pending));
        for i in 0..pending {
            let slot = u64::from(self.used_idx.wrapping_add(i) % self.size);
            let at = self.used + 4 + slot * 8;
            out.push((self.read_u32(at), self.read_u32(at + 4)));
        }
        self.used_idx = idx;
        out
    }

    /// Chains returned by the device, with their used lengths; their descriptors are
    /// free again. Entries naming a chain that is not outstanding are dropped (the fuzz
    /// target's raw chains, or a device bug a test then notices by a missing return).
    pub fn reclaim(&mut self) -> Vec<(Posted, u32)> {
        let mut out = Vec::new();
        for (id, len) in self.take_used_raw() {
            let Ok(head) = u16::try_from(id) else {
                continue;
            };
            if let Some(posted) = self.posted.remove(&head) {
                self.free.extend(posted.descs.iter().copied());
                out.push((posted, len));
            }
        }
        out
    }
}

fn writable_of(chain: &[Desc]) -> Vec<(u64, u32)> {
    chain
        .iter()
        .filter(|d| d.flags & F_WRITE != 0)
        .map(|d| (d.addr, d.len))
        .collect()
}

/// How a guest lays out one TX packet.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum TxLayout {
    /// Header and payload in one descriptor (Linux since 6.2).
    Single,
    /// Header in one descriptor, payload in the next (older Linux).
    HeaderThenPayload,
    /// Header, then the payload spread over this many descriptors (MSG_ZEROCOPY).
    Scattered(usize),
    /// Even the header split over two descriptors, then the payload over this many.
    SplitHeader(usize),
    /// Header and this many payload descriptors, in an indirect table.
    Indirect(usize),
}

/// Every TX layout the tests cycle through.
pub const TX_LAYOUTS: [TxLayout; 5] = [
    TxLayout::Single,
    TxLayout::HeaderThenPayload,
    TxLayout::Scattered(5),
    TxLayout::SplitHeader(3),
    TxLayout::Indirect(4),
];

impl TxLayout {
    /// Lengths of the descriptors carrying `total` bytes (header first). Never empty;
    /// no piece is empty unless `total` is 0.
    pub fn pieces(self, total: usize) -> Vec<usize> {
        let head = total.min(HEADER_LEN);
        let rest = total - head;
        let mut out = match self {
            TxLayout::Single => return vec![total],
            TxLayout::HeaderThenPayload => vec![head, rest],
            TxLayout::Scattered(n) | TxLayout::Indirect(n) => {
                let mut v = vec![head];
                v.extend(split_evenly(rest, n));
                v
            }
            TxLayout::SplitHeader(n) => {
                let first = head.min(20);
                let mut v = vec![first, head - first];
                v.extend(split_evenly(rest, n));
                v
            }
        };
        out.retain(|&n| n > 0);
        if out.is_empty() {
            out.push(0);
        }
        out
    }
}

fn split_evenly(total: usize, n: usize) -> Vec<usize> {
    let n = n.max(1);
    let base = total / n;
    let extra = total % n;
    (0..n).map(|i| base + usize::from(i < extra)).collect()
}

/// How a guest lays out one RX buffer.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum RxLayout {
    /// One writable descriptor of this many bytes, header included (Linux since 6.2
    /// posts 4 KiB ones).
    Single(u32),
    /// A 44-byte header descriptor, then a data descriptor of this many bytes (Linux
    /// before 6.2).
    HeaderThenData(u32),
    /// A header descriptor and a data descriptor of this many bytes, in an indirect table.
    Indirect(u32),
}

impl RxLayout {
    /// Bytes the device may write.
    pub fn capacity(self) -> u32 {
        match self {
            RxLayout::Single(n) => n,
            RxLayout::HeaderThenData(n) | RxLayout::Indirect(n) => HEADER_LEN as u32 + n,
        }
    }
}

/// One packet the device put in an RX buffer.
#[derive(Clone, Debug)]
pub struct Packet {
    /// Its header.
    pub header: Header,
    /// The payload, `header.len` bytes (or fewer if the device wrote fewer).
    pub payload: Vec<u8>,
    /// The used length the device reported.
    pub used_len: u32,
    /// What the buffer could hold.
    pub capacity: u32,
}

/// The guest side of one vsock connection, with its credit bookkeeping.
#[derive(Clone, Debug)]
pub struct GuestConn {
    /// Port on the guest.
    pub local_port: u32,
    /// Port on the host (CID 2).
    pub peer_port: u32,
    /// Receive buffer the guest advertises.
    pub buf_alloc: u32,
    /// Bytes the guest application consumed (advertised as fwd_cnt).
    pub fwd_cnt: u32,
    /// Payload bytes the guest sent.
    pub tx_cnt: u32,
    /// The device's latest advertised buffer and consumed count.
    pub peer_buf_alloc: u32,
    /// See `peer_buf_alloc`.
    pub peer_fwd_cnt: u32,
    /// Stream bytes received so far.
    pub received: Vec<u8>,
    /// Every packet the device sent on this connection, in order.
    pub packets: Vec<Packet>,
    /// Sticky SHUTDOWN flags the device sent.
    pub peer_shut: u32,
    /// RESPONSE seen.
    pub established: bool,
    /// RST seen.
    pub reset: bool,
    /// Consume received bytes at once and send CREDIT_UPDATE when a quarter of the
    /// buffer has been consumed since the last advertisement (like an eager reader).
    pub auto_credit: bool,
    advertised_fwd: u32,
}

impl GuestConn {
    /// A connection from guest port `local_port` to host port `peer_port`.
    pub fn new(local_port: u32, peer_port: u32) -> Self {
        GuestConn {
            local_port,
            peer_port,
            buf_alloc: 256 * 1024,
            fwd_cnt: 0,
            tx_cnt: 0,
            peer_buf_alloc: 0,
            peer_fwd_cnt: 0,
            received: Vec::new(),
            packets: Vec::new(),
            peer_shut: 0,
            established: false,
            reset: false,
            auto_credit: true,
            advertised_fwd: 0,
        }
    }

    /// A header from this connection with the guest's current credit.
    pub fn header(&self, op: Op, flags: u32, len: u32) -> Header {
        Header {
            src_cid: GUEST_CID,
            dst_cid: HOST_CID,
            src_port: self.local_port,
            dst_port: self.peer_port,
            len,
            type_: SocketType::Stream.to_u16(),
            op: op.to_u16(),
            flags,
            buf_alloc: self.buf_alloc,
            fwd_cnt: self.fwd_cnt,
        }
    }

    /// Bytes the device has room for now (virtio credit formula).
    pub fn peer_credit(&self) -> u32 {
        self.peer_buf_alloc
            .wrapping_sub(self.tx_cnt.wrapping_sub(self.peer_fwd_cnt))
    }

    /// Whether `p` belongs to this connection.
    pub fn owns(&self, p: &Packet) -> bool {
        p.header.src_port == self.peer_port && p.header.dst_port == self.local_port
    }

    /// RW payload bytes received in total.
    pub fn rw_bytes(&self) -> usize {
        self.packets
            .iter()
            .filter(|p| p.header.op == Op::Rw.to_u16())
            .map(|p| p.payload.len())
            .sum()
    }
}

/// The device plus a fake guest driving it.
pub struct Driver {
    /// The device under test.
    pub device: Device,
    /// Its settings.
    pub config: DeviceConfig,
    /// Guest memory shared with the device.
    pub mem: GuestMemoryAtomic<GuestMemoryMmap>,
    /// Queue 0.
    pub rx: Ring,
    /// Queue 1.
    pub tx: Ring,
    slots: Vec<u64>,
    /// Layout of the RX buffers [`Driver::fill_rx`] posts.
    pub rx_layout: RxLayout,
    /// RX buffers kept available (0: the guest posts none on its own).
    pub rx_target: usize,
    /// Packets received and not yet claimed by a [`GuestConn`].
    pub inbox: Vec<Packet>,
    /// RX buffers the device returned with fewer bytes than a header.
    pub short_rx_returns: usize,
    /// The directory holding the sockets; removed on drop (after the device).
    pub dir: TempDir,
}

impl Driver {
    /// A device with the default configuration, 32 MiB of guest memory and 256-entry
    /// queues, with 64 RX buffers of 4 KiB kept available.
    pub fn new() -> Self {
        Driver::with(32 << 20, 256, 256, |_| {})
    }

    /// A device over `mem_size` bytes of guest memory with queues of the given sizes;
    /// `tweak` adjusts the configuration before the device starts.
    pub fn with(
        mem_size: usize,
        rx_size: u16,
        tx_size: u16,
        tweak: impl FnOnce(&mut DeviceConfig),
    ) -> Self {
        let dir = TempDir::new("dev");
        let mut config = DeviceConfig::new(
            dir.path().join("vhost.sock"),
            dir.path().join("v.sock"),
            GUEST_CID,
        );
        tweak(&mut config);
        let mem = GuestMemoryAtomic::new(
            GuestMemoryMmap::<()>::from_ranges(&[(GuestAddress(0), mem_size)])
                .expect("guest memory"),
        );
        let rx = Ring::new(&mem, RX_RING_BASE, rx_size);
        let tx = Ring::new(&mem, TX_RING_BASE, tx_size);
        let mut device = Device::new(config.clone()).expect("device");
        device.set_memory(mem.clone());
        let mut slots = Vec::new();
        let mut at = DATA_BASE;
        while at + SLOT_SIZE <= mem_size as u64 {
            slots.push(at);
            at += SLOT_SIZE;
        }
        slots.reverse();
        Driver {
            device,
            config,
            mem,
            rx,
            tx,
            slots,
            rx_layout: RxLayout::Single(4096),
            rx_target: 64,
            inbox: Vec::new(),
            short_rx_returns: 0,
            dir,
        }
    }

    /// The hybrid socket host clients connect to.
    pub fn uds_path(&self) -> PathBuf {
        self.config.uds_path.clone()
    }

    /// Where a host service for guest connections to host port `port` listens.
    pub fn host_path(&self, port: u32) -> PathBuf {
        PathBuf::from(format!("{}_{port}", self.config.uds_path.display()))
    }

    /// A host service for guest connections to `port`.
    pub fn host_listen(&self, port: u32) -> UnixListener {
        let l = UnixListener::bind(self.host_path(port)).expect("host listener");
        l.set_nonblocking(true).expect("nonblocking");
        l
    }

    /// Writes `bytes` into guest memory (ignoring addresses outside it).
    pub fn write_mem(&self, addr: u64, bytes: &[u8]) {
        let _ = self.mem.memory().write_slice(bytes, GuestAddress(addr));
    }

    /// Reads guest memory; `None` outside it.
    pub fn read_mem(&self, addr: u64, len: usize) -> Option<Vec<u8>> {
        let mut v = vec![0u8; len];
        self.mem
            .memory()
            .read_slice(&mut v, GuestAddress(addr))
            .ok()?;
        Some(v)
    }

    /// Queues one TX chain carrying `bytes` (normally a header and payload) in `layout`.
    /// When the ring is full the device is first given a turn to drain it.
    pub fn send_bytes(&mut self, bytes: &[u8], layout: TxLayout) {
        assert!(
            self.try_send_bytes(bytes, layout),
            "no room for a TX chain: the device does not return them"
        );
    }

    /// [`Driver::send_bytes`], or `false` when guest memory or the ring stays full even
    /// after the device had a turn (a device stuck on a broken ring).
    pub fn try_send_bytes(&mut self, bytes: &[u8], layout: TxLayout) -> bool {
        let pieces = layout.pieces(bytes.len());
        let needed = if matches!(layout, TxLayout::Indirect(_)) {
            1
        } else {
            pieces.len()
        };
        if self.tx.free_descs() < needed || self.slots.is_empty() {
            // Chains come back only when the device runs.
            self.device.process_tx(&self.tx.vring);
            self.reclaim_tx();
        }
        if self.tx.free_descs() < needed {
            return false;
        }
        let Some(slot) = self.slots.pop() else {
            return false;
        };
        let mut at = slot + SLOT_TABLE;
        let mut off = 0;
        let mut chain = Vec::with_capacity(pieces.len());
        for len in pieces {
            self.write_mem(at, &bytes[off..off + len]);
            self.write_mem(at + len as u64, &[GAP_FILL; GAP as usize]);
            chain.push(Desc {
                addr: at,
                len: len as u32,
                flags: 0,
                next: 0,
            });
            at += len as u64 + GAP;
            off += len;
        }
        assert!(at <= slot + SLOT_SIZE, "packet too large for a slot");
        if matches!(layout, TxLayout::Indirect(_)) {
            self.tx.post_indirect(slot, &chain, Some(slot))
        } else {
            self.tx.post(&chain, Some(slot))
        }
        .is_some()
    }

    /// Queues one packet.
    pub fn send(&mut self, header: &Header, payload: &[u8], layout: TxLayout) {
        let mut bytes = header.encode().to_vec();
        bytes.extend_from_slice(payload);
        self.send_bytes(&bytes, layout);
    }

    /// Queues one packet on `conn`, stamping its credit; RW counts against the device's
    /// credit (the caller checks there is some).
    pub fn guest_send(
        &mut self,
        conn: &mut GuestConn,
        op: Op,
        flags: u32,
        payload: &[u8],
        layout: TxLayout,
    ) {
        let header = conn.header(op, flags, payload.len() as u32);
        if op == Op::Rw {
            conn.tx_cnt = conn.tx_cnt.wrapping_add(payload.len() as u32);
        }
        conn.advertised_fwd = conn.fwd_cnt;
        self.send(&header, payload, layout);
    }

    /// Sends as much of `data` as the device's credit allows, in packets of at most
    /// 64 KiB; returns the bytes sent.
    pub fn guest_write(&mut self, conn: &mut GuestConn, data: &[u8], layout: TxLayout) -> usize {
        let mut sent = 0;
        while sent < data.len() {
            let n = (conn.peer_credit() as usize)
                .min(data.len() - sent)
                .min(MAX_GUEST_PAYLOAD);
            if n == 0 {
                break;
            }
            self.guest_send(conn, Op::Rw, 0, &data[sent..sent + n], layout);
            sent += n;
        }
        sent
    }

    /// Posts one RX buffer of `layout`.
    pub fn post_rx(&mut self, layout: RxLayout) -> bool {
        let needed = match layout {
            RxLayout::Single(_) | RxLayout::Indirect(_) => 1,
            RxLayout::HeaderThenData(_) => 2,
        };
        if self.rx.free_descs() < needed {
            return false;
        }
        let Some(slot) = self.slots.pop() else {
            return false;
        };
        let data = slot + SLOT_TABLE;
        let w = |addr, len| Desc {
            addr,
            len,
            flags: F_WRITE,
            next: 0,
        };
        let hdr = HEADER_LEN as u32;
        let ok = match layout {
            RxLayout::Single(n) => self.rx.post(&[w(data, n)], Some(slot)),
            RxLayout::HeaderThenData(n) => {
                self.rx.post(&[w(data, hdr), w(data + 64, n)], Some(slot))
            }
            RxLayout::Indirect(n) => {
                self.rx
                    .post_indirect(slot, &[w(data, hdr), w(data + 64, n)], Some(slot))
            }
        };
        ok.is_some()
    }

    /// A slot of guest memory for the caller's own use, never handed out again.
    pub fn scratch(&mut self) -> Option<u64> {
        self.slots.pop()
    }

    /// Stops posting RX buffers and gets the device to use up those already posted (with
    /// RSTs answering packets of an undefined op), so that what follows finds none.
    pub fn use_up_rx_buffers(&mut self) {
        self.rx_target = 0;
        let n = self.rx.outstanding();
        let mut h = GuestConn::new(u32::MAX, u32::MAX).header(Op::Rw, 0, 0);
        h.op = 0x7777;
        for _ in 0..n {
            self.send(&h, &[], TxLayout::Single);
        }
        self.pump();
        assert_eq!(self.rx.outstanding(), 0, "RX buffers left");
        self.inbox.retain(|p| p.header.dst_port != u32::MAX);
    }

    /// Tops the RX ring up to `rx_target` outstanding buffers.
    pub fn fill_rx(&mut self) {
        while self.rx.outstanding() < self.rx_target {
            if !self.post_rx(self.rx_layout) {
                break;
            }
        }
    }

    /// Frees the TX chains the device consumed.
    pub fn reclaim_tx(&mut self) {
        for (posted, _) in self.tx.reclaim() {
            if let Some(slot) = posted.slot {
                self.slots.push(slot);
            }
        }
    }

    /// Reads back the RX buffers the device filled into [`Driver::inbox`]; returns how
    /// many came back (short ones included).
    pub fn reclaim_rx(&mut self) -> usize {
        let used = self.rx.reclaim();
        let n = used.len();
        for (posted, len) in used {
            if let Some(slot) = posted.slot {
                self.slots.push(slot);
            }
            if (len as usize) < HEADER_LEN {
                self.short_rx_returns += 1;
                continue;
            }
            let bytes = self.gather(&posted.writable, len as usize);
            let header = Header::decode(&bytes).expect("a used length beyond the buffer");
            let end = (HEADER_LEN + header.len as usize).min(bytes.len());
            self.inbox.push(Packet {
                header,
                payload: bytes[HEADER_LEN..end].to_vec(),
                used_len: len,
                capacity: posted.capacity(),
            });
        }
        n
    }

    /// Gives a slot back to the pool (for callers reclaiming chains themselves).
    pub fn release_slot(&mut self, slot: u64) {
        self.slots.push(slot);
    }

    /// The first `len` bytes of a chain's writable buffers, in order (fewer if they
    /// hold fewer).
    pub fn gather(&self, writable: &[(u64, u32)], len: usize) -> Vec<u8> {
        let mut out = Vec::with_capacity(len);
        for &(addr, seg) in writable {
            let take = (seg as usize).min(len - out.len());
            match self.read_mem(addr, take) {
                Some(bytes) => out.extend(bytes),
                None => break,
            }
            if out.len() == len {
                break;
            }
        }
        out
    }

    /// One turn of the device: TX queue, host sockets, then RX until the device has
    /// nothing more or the guest no buffers. Returns RX buffers filled.
    pub fn pump(&mut self) -> usize {
        self.device.process_tx(&self.tx.vring);
        self.reclaim_tx();
        self.device.poll_host();
        let mut filled = 0;
        for _ in 0..64 {
            self.fill_rx();
            self.device.process_rx(&self.rx.vring);
            let n = self.reclaim_rx();
            filled += n;
            if n == 0 {
                break;
            }
        }
        filled
    }

    /// Pumps until `done` holds, sleeping a little whenever a turn moved nothing (host
    /// sockets are asynchronous only through the kernel, so this settles fast). Panics
    /// after about 5 s naming `what`.
    pub fn pump_until(&mut self, what: &str, mut done: impl FnMut(&mut Self) -> bool) {
        for _ in 0..5000 {
            if done(self) {
                return;
            }
            if self.pump() == 0 {
                std::thread::sleep(Duration::from_millis(1));
            }
        }
        panic!("gave up waiting for {what}");
    }

    /// Moves packets of `conn` from the inbox into it, answering as a Linux guest would:
    /// credit bookkeeping, CREDIT_UPDATE when asked or after consuming a quarter of the
    /// buffer (with `auto_credit`).
    pub fn deliver(&mut self, conn: &mut GuestConn) {
        let mut mine = Vec::new();
        self.inbox.retain(|p| {
            if conn.owns(p) {
                mine.push(p.clone());
                false
            } else {
                true
            }
        });
        let mut asked = false;
        for p in mine {
            let h = p.header;
            conn.peer_buf_alloc = h.buf_alloc;
            conn.peer_fwd_cnt = h.fwd_cnt;
            match h.op() {
                Some(Op::Response) => conn.established = true,
                Some(Op::Rst) => conn.reset = true,
                Some(Op::Shutdown) => conn.peer_shut |= h.flags,
                Some(Op::Rw) => {
                    conn.received.extend_from_slice(&p.payload);
                    if conn.auto_credit {
                        conn.fwd_cnt = conn.fwd_cnt.wrapping_add(p.payload.len() as u32);
                    }
                }
                Some(Op::CreditRequest) => asked = true,
                _ => {}
            }
            conn.packets.push(p);
        }
        let consumed = conn.fwd_cnt.wrapping_sub(conn.advertised_fwd);
        if !conn.reset && (asked || (conn.auto_credit && consumed >= conn.buf_alloc / 4)) {
            self.guest_send(conn, Op::CreditUpdate, 0, &[], TxLayout::Single);
        }
    }

    /// Guest connect from `local_port` to host port `port`: sends REQUEST and waits for
    /// RESPONSE or RST.
    pub fn guest_connect(&mut self, local_port: u32, port: u32) -> GuestConn {
        let mut conn = GuestConn::new(local_port, port);
        self.guest_send(&mut conn, Op::Request, 0, &[], TxLayout::Single);
        self.pump_until("RESPONSE or RST", |d| {
            d.deliver(&mut conn);
            conn.established || conn.reset
        });
        conn
    }

    /// A host client of the hybrid socket that sent `CONNECT <port>\n` and `extra`.
    pub fn host_connect(&self, port: u32, extra: &[u8]) -> UnixStream {
        let mut s = UnixStream::connect(self.uds_path()).expect("hybrid socket");
        let mut line = format!("CONNECT {port}\n").into_bytes();
        line.extend_from_slice(extra);
        s.write_all(&line).expect("CONNECT line");
        s.set_nonblocking(true).expect("nonblocking");
        s
    }

    /// Waits for the device's REQUEST to guest `port` (from a host client) and answers
    /// with RESPONSE; returns the connection.
    pub fn guest_accept(&mut self, port: u32) -> GuestConn {
        let mut found = None;
        self.pump_until("REQUEST to the guest", |d| {
            if let Some(i) = d
                .inbox
                .iter()
                .position(|p| p.header.op == Op::Request.to_u16() && p.header.dst_port == port)
            {
                found = Some(d.inbox.remove(i));
                true
            } else {
                false
            }
        });
        let req = found.expect("found");
        let mut conn = GuestConn::new(port, req.header.src_port);
        conn.peer_buf_alloc = req.header.buf_alloc;
        conn.peer_fwd_cnt = req.header.fwd_cnt;
        conn.packets.push(req);
        self.guest_send(&mut conn, Op::Response, 0, &[], TxLayout::Single);
        conn.established = true;
        conn
    }
}

impl Default for Driver {
    fn default() -> Self {
        Driver::new()
    }
}

/// Reads what a non-blocking host stream has now; `Ok(None)` at EOF.
pub fn read_available(s: &mut UnixStream, into: &mut Vec<u8>) -> io::Result<Option<usize>> {
    let mut buf = [0u8; 64 * 1024];
    let mut total = 0;
    loop {
        match s.read(&mut buf) {
            Ok(0) => return Ok(None),
            Ok(n) => {
                into.extend_from_slice(&buf[..n]);
                total += n;
            }
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => return Ok(Some(total)),
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            Err(e) => return Err(e),
        }
    }
}

/// Writes as much of `data` as a non-blocking host stream takes now.
pub fn write_available(s: &mut UnixStream, data: &[u8]) -> io::Result<usize> {
    let mut total = 0;
    while total < data.len() {
        match s.write(&data[total..]) {
            Ok(n) => total += n,
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => break,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            Err(e) => return Err(e),
        }
    }
    Ok(total)
}
