//! The `device_chains` fuzz target's body, shared with `tests/fuzz_regressions.rs` so a
//! crash input replays in an ordinary test run. It drives the device through the fake
//! driver in `support` (which the includer declares as `crate::support`).
//!
//! The input is read as a configuration followed by a sequence of actions of a guest
//! driver that may misbehave in every way a virtqueue allows, and of host clients:
//!
//! * TX packets with plausible headers (right CIDs, known ports, defined ops) so the
//!   engine's state machine is reached, in any of the layouts real drivers use, with
//!   header fields and `len` sometimes wrong;
//! * raw TX and RX descriptors: addresses in the rings, past the end of memory or
//!   wrapping, zero and huge lengths, loops through `next`, write-only descriptors in TX,
//!   read-only ones in RX, indirect tables of any length, out-of-range heads, and an
//!   avail index that lies;
//! * RX buffers of arbitrary (but sane) layouts;
//! * host clients of the hybrid socket (good, partial and garbage CONNECT lines), host
//!   services accepting guest connections, writes, reads, half-closes and drops;
//! * `process_tx`, `process_rx`, `poll_host` in any order, and short sleeps so that
//!   timers (set as low as 0 ms) fire.
//!
//! The device must never panic or hang; every loop here is bounded, so a hang is the
//! device's. What can be checked from outside must hold:
//!
//! * an RX buffer laid out sanely (while no raw RX descriptor has been written) comes
//!   back either with 0 bytes, only when it cannot hold a header, or with one whole
//!   well-formed packet no larger than the buffer: header from CID 2 to the guest, `len`
//!   matching the used length and at most 64 KiB, a defined op;
//! * the device's counters never go backwards.

use crate::support::{
    read_available, write_available, Desc, Driver, Ring, RxLayout, TxLayout, DESC_SIZE, F_INDIRECT,
    F_NEXT, F_WRITE, GUEST_CID, RX_RING_BASE, SLOT_SIZE, TX_RING_BASE,
};
use std::io::Write;
use std::os::unix::net::{UnixListener, UnixStream};
use std::sync::OnceLock;
use std::time::Duration;
use tether_device::DeviceStats;
use tether_vsock::{Header, Op, HEADER_LEN, HOST_CID};
use vhost_user_backend::VringT;

/// Guest memory per run: rings, 50-odd 72 KiB slots, and the wild area.
const MEM: usize = 4 << 20;
/// Host services for guest connections listen on these ports.
const HOST_PORTS: [u32; 2] = [1024, 1025];
/// Guest ports the fake guest connects from and host clients ask for.
const GUEST_PORTS: [u32; 3] = [1000, 1001, 52];
const MAX_ACTIONS: usize = 256;
const MAX_HOST_STREAMS: usize = 12;
const MAX_SLEEPS: usize = 3;
/// Sane RX buffers outstanding at most (each holds a 72 KiB slot).
const MAX_RX_POSTED: usize = 24;
const MAX_PAYLOAD: u32 = 64 * 1024;

/// Reads the fuzzer's bytes; past the end everything reads as zero.
struct Input<'a> {
    data: &'a [u8],
}

impl Input<'_> {
    fn is_empty(&self) -> bool {
        self.data.is_empty()
    }

    fn u8(&mut self) -> u8 {
        match self.data.split_first() {
            Some((&b, rest)) => {
                self.data = rest;
                b
            }
            None => 0,
        }
    }

    fn u16(&mut self) -> u16 {
        u16::from_le_bytes([self.u8(), self.u8()])
    }

    fn u32(&mut self) -> u32 {
        u32::from_le_bytes([self.u8(), self.u8(), self.u8(), self.u8()])
    }

    fn u64(&mut self) -> u64 {
        u64::from(self.u32()) | (u64::from(self.u32()) << 32)
    }

    fn pick<T: Copy>(&mut self, items: &[T]) -> T {
        items[usize::from(self.u8()) % items.len()]
    }

    /// True about `percent` out of 100 times (one byte of input).
    fn chance(&mut self, percent: u8) -> bool {
        u16::from(self.u8()) * 100 < u16::from(percent) * 256
    }

    /// Payload bytes: their values do not matter to the device, so they are generated
    /// rather than taken from the input, which is better spent on actions.
    fn payload(&mut self, len: usize) -> Vec<u8> {
        let seed = self.u8();
        (0..len)
            .map(|i| (i as u8).wrapping_mul(31) ^ seed)
            .collect()
    }
}

/// `DEVICE_CHAINS_TRACE=1` prints what an input does (to understand a crash input, or
/// to check that a hand-made seed does what its name says).
fn tracing() -> bool {
    static TRACE: OnceLock<bool> = OnceLock::new();
    *TRACE.get_or_init(|| std::env::var_os("DEVICE_CHAINS_TRACE").is_some_and(|v| v != "0"))
}

macro_rules! trace {
    ($($arg:tt)*) => {
        if tracing() {
            eprintln!($($arg)*);
        }
    };
}

struct Harness {
    d: Driver,
    /// Two slots nobody else uses: raw descriptors point here and the fuzzer may write
    /// anything into it.
    wild: u64,
    /// A raw RX chain or a lying avail index was written: RX buffers may be overwritten
    /// by the device through other chains, so their contents prove nothing any more.
    wild_rx: bool,
    listeners: Vec<UnixListener>,
    streams: Vec<UnixStream>,
    sleeps: usize,
    /// (guest port, host port) pairs seen or tried, to aim plausible packets at.
    pairs: Vec<(u32, u32)>,
    stats: DeviceStats,
}

/// Runs one input; panics on any broken property.
pub fn run(data: &[u8]) {
    let mut input = Input { data };
    let rx_size = input.pick(&[1u16, 2, 4, 16, 64, 256]);
    let tx_size = input.pick(&[1u16, 2, 4, 16, 64, 256]);
    let flags = input.u8();
    let max_connections = 1 + usize::from(input.u8() % 6);
    let buf_alloc = input.pick(&[1u32, 4096, 65536, 256 * 1024]);
    let d = Driver::with(MEM, rx_size, tx_size, |c| {
        c.max_connections = max_connections;
        c.buf_alloc = buf_alloc;
        // Low timeouts let the sleeps below reach the device's timer paths.
        let ms = |bit: u8| Duration::from_millis(if flags & bit != 0 { 0 } else { 2000 });
        c.connect_timeout = ms(1);
        c.close_timeout = ms(2);
        c.handshake_timeout = ms(4);
    });
    let mut h = Harness {
        d,
        wild: 0,
        wild_rx: false,
        listeners: Vec::new(),
        streams: Vec::new(),
        sleeps: 0,
        pairs: vec![(1000, HOST_PORTS[0])],
        stats: DeviceStats::default(),
    };
    h.d.rx_target = 0;
    // The wild area spans two adjacent slots.
    let a = h.d.scratch().expect("memory for the wild area");
    let b = h.d.scratch().expect("memory for the wild area");
    assert_eq!(a.abs_diff(b), SLOT_SIZE, "slots are handed out in order");
    h.wild = a.min(b);
    for port in HOST_PORTS {
        h.listeners.push(h.d.host_listen(port));
    }

    for _ in 0..MAX_ACTIONS {
        if input.is_empty() {
            break;
        }
        let action = input.u8() % 16;
        trace!("action {action}");
        match action {
            0..=2 => h.plausible_tx(&mut input),
            3 => h.raw_chain(&mut input, false),
            4 => h.raw_chain(&mut input, true),
            5 => h.lying_avail(&mut input),
            6 | 7 => h.post_rx(&mut input),
            8 => h.process_tx(),
            9 => h.process_rx(),
            10 => h.d.device.poll_host(),
            11 => h.host_client(&mut input),
            12 => h.host_accept(),
            13 => h.host_io(&mut input),
            14 => h.sleep(&mut input),
            _ => {
                h.process_tx();
                h.d.device.poll_host();
                h.process_rx();
            }
        }
        h.check_stats();
    }
    // Let whatever is pending settle.
    for _ in 0..3 {
        h.process_tx();
        h.d.device.poll_host();
        h.process_rx();
        h.host_accept();
        h.check_stats();
    }
}

impl Harness {
    fn check_stats(&mut self) {
        let s = self.d.device.stats();
        if tracing() && format!("{s:?}") != format!("{:?}", self.stats) {
            trace!("  stats {s:?}");
        }
        let before = self.stats;
        assert!(
            s.tx_packets >= before.tx_packets
                && s.malformed >= before.malformed
                && s.rejected >= before.rejected
                && s.rx_packets >= before.rx_packets
                && s.refused_full >= before.refused_full,
            "counters went backwards: {before:?} -> {s:?}"
        );
        assert!(
            s.malformed + s.rejected <= s.tx_packets,
            "more TX chains dropped than read: {s:?}"
        );
        self.stats = s;
    }

    fn process_tx(&mut self) {
        self.d.device.process_tx(&self.d.tx.vring);
        self.d.reclaim_tx();
    }

    /// A header the engine will mostly take as addressed to it.
    fn plausible_header(&mut self, input: &mut Input<'_>, len: u32) -> Header {
        let (mut guest, mut host) = self.pairs[usize::from(input.u8()) % self.pairs.len()];
        if input.chance(20) {
            guest = input.pick(&GUEST_PORTS);
            host = input.pick(&[HOST_PORTS[0], HOST_PORTS[1], 7, 1 << 30]);
            if self.pairs.len() < 32 {
                self.pairs.push((guest, host));
            }
        }
        let mut h = Header {
            src_cid: GUEST_CID,
            dst_cid: HOST_CID,
            src_port: guest,
            dst_port: host,
            len,
            type_: 1,
            op: input.pick(&[1u16, 1, 2, 3, 4, 5, 5, 5, 6, 7]),
            flags: 0,
            buf_alloc: input.pick(&[0u32, 4096, 16 * 1024, 256 * 1024, u32::MAX]),
            fwd_cnt: input.pick(&[0u32, 0, 4096, 65536, 1 << 20]),
        };
        if h.op == Op::Shutdown.to_u16() {
            h.flags = u32::from(input.u8() % 4);
        }
        if input.chance(10) {
            match input.u8() % 8 {
                0 => h.src_cid = input.u64(),
                1 => h.dst_cid = input.pick(&[0, 1, 3, u64::MAX]),
                2 => h.type_ = input.u16(),
                3 => h.op = input.u16(),
                4 => h.flags = input.u32(),
                5 => h.len = input.u32(),
                6 => {
                    h.len = h
                        .len
                        .wrapping_add(u32::from(input.u8() % 3))
                        .wrapping_sub(1)
                }
                _ => {
                    h.src_port = input.u32();
                    h.dst_port = input.u32();
                }
            }
        }
        h
    }

    fn plausible_tx(&mut self, input: &mut Input<'_>) {
        let len = input.pick(&[0usize, 0, 0, 1, 100, 4052, 4096, 65536, 65537]);
        let header = self.plausible_header(input, len as u32);
        let payload = input.payload(len);
        let n = 1 + usize::from(input.u8() % 8);
        let layout = input.pick(&[
            TxLayout::Single,
            TxLayout::HeaderThenPayload,
            TxLayout::Scattered(n),
            TxLayout::SplitHeader(n.min(4)),
            TxLayout::Indirect(n),
        ]);
        let mut bytes = header.encode().to_vec();
        bytes.extend_from_slice(&payload);
        if input.chance(5) {
            bytes.truncate(usize::from(input.u8()) % (HEADER_LEN + 1));
        }
        trace!("  TX {layout:?} {} bytes: {header:?}", bytes.len());
        // Sending may give the device a turn on a full ring. It fails quietly when the
        // device no longer returns chains (after a lying avail index).
        let _ = self.d.try_send_bytes(&bytes, layout);
    }

    /// An address for a raw descriptor: mostly inside the wild area, else anywhere.
    fn address(&mut self, input: &mut Input<'_>) -> u64 {
        let wild_len = 2 * SLOT_SIZE;
        match input.u8() % 10 {
            0..=5 => self.wild + u64::from(input.u16()) % wild_len,
            6 => input.pick(&[RX_RING_BASE, TX_RING_BASE, TX_RING_BASE + 0x4000, 0]),
            7 => MEM as u64 - u64::from(input.u8()),
            8 => input.pick(&[MEM as u64, 1 << 40, u64::MAX - 15, u64::MAX]),
            _ => input.u64(),
        }
    }

    fn length(&mut self, input: &mut Input<'_>) -> u32 {
        match input.u8() % 8 {
            0 => 0,
            1 => HEADER_LEN as u32,
            2 => input.pick(&[1, 43, 45, 4096, 65536 + 44]),
            3 => input.pick(&[u32::MAX, 1 << 31, MEM as u32]),
            4 => input.u32(),
            _ => u32::from(input.u16()) % 512,
        }
    }

    /// Any number of raw descriptors of any shape written straight into a ring's table
    /// (or an indirect table in the wild area), and a head made available.
    fn raw_chain(&mut self, input: &mut Input<'_>, rx: bool) {
        let count = 1 + usize::from(input.u8() % 8);
        let size = if rx { self.d.rx.size } else { self.d.tx.size };
        let mut first_addr = None;
        let mut descs = Vec::with_capacity(count);
        for _ in 0..count {
            let addr = self.address(input);
            let len = self.length(input);
            let mut flags = u16::from(input.u8()) & (F_NEXT | F_WRITE | F_INDIRECT);
            if rx && input.chance(70) {
                flags |= F_WRITE;
            }
            if input.chance(5) {
                flags = input.u16();
            }
            let next = match input.u8() % 4 {
                // A loop back into the chain, or past the end of the table.
                0 => input.u16() % (size + 2),
                _ => (descs.len() as u16 + 1) % size.max(1),
            };
            first_addr.get_or_insert(addr);
            descs.push(Desc {
                addr,
                len,
                flags,
                next,
            });
        }
        // A header at the first buffer, if it is in the wild area, so a raw chain can
        // still carry a packet the engine looks at.
        if let Some(addr) = first_addr {
            let in_wild = addr >= self.wild && addr < self.wild + 2 * SLOT_SIZE - 128;
            if in_wild && input.chance(60) {
                let len = input_len(input);
                let header = self.plausible_header(input, len);
                self.d.write_mem(addr, &header.encode());
            }
        }
        let indirect = input.chance(25);
        let ring = if rx { &mut self.d.rx } else { &mut self.d.tx };
        let head = if indirect {
            // The table sits in the wild area; the ring entry points at it with a length
            // that is usually, not always, a multiple of 16.
            let table = self.wild + u64::from(input.u16() % 0x1000) * DESC_SIZE;
            for (i, d) in descs.iter().enumerate() {
                ring.write_desc_at(table, i as u16, *d);
            }
            let len = if input.chance(80) {
                (descs.len() as u64 * DESC_SIZE) as u32
            } else {
                input.u32()
            };
            let index = input.u16() % size;
            ring.write_desc_at(
                ring.desc_table,
                index,
                Desc {
                    addr: table,
                    len,
                    flags: F_INDIRECT | (input.u16() & (F_NEXT | F_WRITE)),
                    next: input.u16() % size,
                },
            );
            index
        } else {
            let base = input.u16() % size;
            for (i, d) in descs.iter().enumerate() {
                ring.write_desc_at(ring.desc_table, (base + i as u16) % size, *d);
            }
            base
        };
        // Sometimes a head that is not in the table at all.
        let head = if input.chance(10) { input.u16() } else { head };
        trace!(
            "  raw {} chain, head {head}{}: {descs:x?}",
            if rx { "RX" } else { "TX" },
            if indirect { " (indirect)" } else { "" }
        );
        publish_bounded(ring, head);
        if rx {
            self.wild_rx = true;
        }
    }

    /// The driver overwrites the avail index with a value of its choosing.
    fn lying_avail(&mut self, input: &mut Input<'_>) {
        let rx = input.u8() & 1 == 1;
        let ring = if rx { &mut self.d.rx } else { &mut self.d.tx };
        let base = ring.vring.queue_next_avail();
        let ahead = match input.u8() % 4 {
            0 => ring.size.wrapping_add(1),
            1 => 0x8000,
            2 => input.u16(),
            _ => input.u16() % (ring.size + 1),
        };
        trace!(
            "  {} avail index {ahead} ahead",
            if rx { "RX" } else { "TX" }
        );
        ring.set_avail_idx_raw(base.wrapping_add(ahead));
        // Whatever the chains in those slots are, the RX side no longer proves anything.
        if rx {
            self.wild_rx = true;
        }
    }

    fn post_rx(&mut self, input: &mut Input<'_>) {
        let count = 1 + usize::from(input.u8() % 4);
        for _ in 0..count {
            if self.d.rx.outstanding() >= MAX_RX_POSTED {
                return;
            }
            let size = input.pick(&[0u32, 1, 20, 43, 44, 45, 100, 4096, 4096 - 44, 65536 + 44]);
            let layout = match input.u8() % 3 {
                0 => RxLayout::Single(size),
                1 => RxLayout::HeaderThenData(size),
                _ => RxLayout::Indirect(size),
            };
            if !self.d.post_rx(layout) {
                return;
            }
        }
    }

    /// Runs the RX queue and checks every sane buffer the device handed back.
    fn process_rx(&mut self) {
        self.d.device.process_rx(&self.d.rx.vring);
        let used = self.d.rx.reclaim();
        for (posted, len) in used {
            let capacity = posted.capacity();
            let slot = posted.slot;
            if !self.wild_rx {
                check_rx_buffer(&self.d, &posted, len, capacity);
            }
            if tracing() && len as usize >= HEADER_LEN {
                let h = Header::decode(&self.d.gather(&posted.writable, HEADER_LEN));
                trace!("  RX {len}/{capacity}: {h:?}");
            }
            if let Some(slot) = slot {
                self.d.release_slot(slot);
            }
        }
    }

    /// A hybrid client: a CONNECT line (or something like one) and maybe early bytes.
    fn host_client(&mut self, input: &mut Input<'_>) {
        if self.streams.len() >= MAX_HOST_STREAMS {
            return;
        }
        // Connecting to a Unix socket completes at once while the backlog has room,
        // which MAX_HOST_STREAMS guarantees.
        let Ok(mut s) = UnixStream::connect(self.d.uds_path()) else {
            return;
        };
        let port = input.pick(&GUEST_PORTS);
        let line: Vec<u8> = match input.u8() % 6 {
            0..=2 => format!("CONNECT {port}\n").into_bytes(),
            3 => format!("connect {port}\r\nearly bytes").into_bytes(),
            4 => b"CONNECT 5".to_vec(),
            _ => {
                let len = usize::from(input.u8() % 40);
                input.payload(len)
            }
        };
        trace!("  host client sends {:?}", String::from_utf8_lossy(&line));
        let _ = s.write_all(&line);
        let _ = s.set_nonblocking(true);
        self.streams.push(s);
    }

    fn host_accept(&mut self) {
        for l in &self.listeners {
            while self.streams.len() < MAX_HOST_STREAMS {
                match l.accept() {
                    Ok((s, _)) => {
                        trace!("  host service accepted a guest connection");
                        let _ = s.set_nonblocking(true);
                        self.streams.push(s);
                    }
                    Err(_) => break,
                }
            }
        }
    }

    fn host_io(&mut self, input: &mut Input<'_>) {
        if self.streams.is_empty() {
            return;
        }
        let i = usize::from(input.u8()) % self.streams.len();
        let op = input.u8() % 6;
        trace!(
            "  host stream {i}: {}",
            ["write", "write", "read", "read", "shutdown", "drop"][usize::from(op)]
        );
        match op {
            0 | 1 => {
                let len = input.pick(&[1usize, 100, 4096, 70_000, 300_000]);
                let data = input.payload(len);
                let _ = write_available(&mut self.streams[i], &data);
            }
            2 | 3 => {
                let mut sink = Vec::new();
                let r = read_available(&mut self.streams[i], &mut sink);
                trace!(
                    "    read {:?}: {:?}",
                    r,
                    String::from_utf8_lossy(&sink[..sink.len().min(60)])
                );
            }
            4 => {
                let how = input.pick(&[
                    std::net::Shutdown::Write,
                    std::net::Shutdown::Read,
                    std::net::Shutdown::Both,
                ]);
                let _ = self.streams[i].shutdown(how);
            }
            _ => {
                self.streams.swap_remove(i);
            }
        }
    }

    fn sleep(&mut self, input: &mut Input<'_>) {
        if self.sleeps >= MAX_SLEEPS {
            return;
        }
        self.sleeps += 1;
        std::thread::sleep(Duration::from_micros(100 + u64::from(input.u8()) * 8));
        self.d.device.poll_host();
    }
}

/// A payload length for a header written into a raw chain.
fn input_len(input: &mut Input<'_>) -> u32 {
    input.pick(&[0u32, 0, 10, 100, 4052, 65536, u32::MAX])
}

/// Publishes `head` without letting the driver get more than a ring ahead of the device
/// by itself: going further is the lying-avail action's job.
fn publish_bounded(ring: &mut Ring, head: u16) {
    let pending = ring.avail_idx().wrapping_sub(ring.vring.queue_next_avail());
    if pending < ring.size {
        ring.publish(head);
    }
}

fn check_rx_buffer(d: &Driver, posted: &crate::support::Posted, len: u32, capacity: u32) {
    assert!(
        len <= capacity,
        "the device wrote {len} bytes into a {capacity}-byte RX buffer"
    );
    if len == 0 {
        assert!(
            (capacity as usize) < HEADER_LEN,
            "a {capacity}-byte RX buffer came back empty"
        );
        return;
    }
    assert!(
        len as usize >= HEADER_LEN,
        "a {len}-byte RX packet is shorter than its header"
    );
    let bytes = d.gather(&posted.writable, HEADER_LEN);
    let h = Header::decode(&bytes).expect("44 bytes");
    assert_eq!(
        (h.src_cid, h.dst_cid),
        (HOST_CID, GUEST_CID),
        "RX packet addressed wrongly: {h:?}"
    );
    assert_eq!(
        h.len as usize + HEADER_LEN,
        len as usize,
        "RX used length disagrees with the header: {h:?}"
    );
    assert!(h.len <= MAX_PAYLOAD, "RX payload above 64 KiB: {h:?}");
    assert!(
        (Op::Request.to_u16()..=Op::CreditRequest.to_u16()).contains(&h.op),
        "RX packet with undefined op: {h:?}"
    );
    if h.op != Op::Rst.to_u16() {
        assert_eq!(h.type_, 1, "only an RST may echo a foreign type: {h:?}");
    }
    if h.op != Op::Rw.to_u16() {
        assert_eq!(h.len, 0, "control packet with payload: {h:?}");
    }
}
