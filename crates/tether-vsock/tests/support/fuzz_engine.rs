//! The `engine` fuzz target's body, shared with `tests/fuzz_regressions.rs` so a crash
//! input replays in an ordinary test run.
//!
//! The input is read as a configuration followed by a sequence of actions: packets from
//! the peer (mostly plausible: right CIDs, ports of live connections, defined ops and
//! types, credit near what was sent), and application calls. The engine must never
//! panic, and what can be checked from outside must hold after every action:
//!
//! * every packet it emits is well-formed: right CIDs, `len` equal to the payload, an RW
//!   no larger than the payload limit asked for and within the credit the peer granted;
//! * no packet is emitted in answer to an RST;
//! * a packet rejected with a [`PacketError`] is exactly one that is malformed, and it
//!   changes nothing;
//! * no connection holds more unread data than its `buf_alloc`;
//! * the table holds at most `max_connections`;
//! * a connection reports `Closed` once, and nothing after that or after its release;
//! * end of stream is final;
//! * after `handle_timeout(now)` no timer is left due.

use bytes::Bytes;
use std::collections::{HashMap, HashSet};
use std::time::{Duration, Instant};
use tether_vsock::header::Op;
use tether_vsock::{
    Config, ConnId, Engine, Event, Header, PacketError, Shutdown, SocketType, Transmit,
    EPHEMERAL_PORT_START,
};

const LOCAL: u64 = 2;
const PEER: u64 = 3;

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

    fn pick<T: Copy>(&mut self, items: &[T]) -> T {
        items[usize::from(self.u8()) % items.len()]
    }

    fn bool(&mut self) -> bool {
        self.u8() & 1 == 1
    }

    /// `len` bytes of payload. Their value never matters to the engine, so they are not
    /// taken from the input, which is better spent on actions.
    fn payload(&mut self, len: usize) -> Bytes {
        let seed = self.u8();
        (0..len)
            .map(|i| (i as u8).wrapping_add(seed))
            .collect::<Vec<u8>>()
            .into()
    }
}

/// The credit the fuzzer, as the peer, has granted on one port pair.
#[derive(Clone, Copy, Debug, Default)]
struct Flow {
    /// Payload the engine has sent on this pair since the connection began.
    tx: u32,
    buf_alloc: u32,
    fwd_cnt: u32,
    /// Raw socket type of the connection, once known: a packet of another type does
    /// not update its credit (it resets the connection, or is dropped if an RST).
    type_: Option<u16>,
}

struct Harness {
    engine: Engine,
    now: Instant,
    /// Every handle the engine has given out, stale ones included.
    ids: Vec<ConnId>,
    /// (local port, peer port) of recent packets either way, to aim packets at.
    pairs: Vec<(u32, u32)>,
    flows: HashMap<(u32, u32), Flow>,
    closed: HashSet<ConnId>,
    released: HashSet<ConnId>,
    eof: HashSet<ConnId>,
}

/// Runs one input; panics on any broken property.
pub fn run(data: &[u8]) {
    let mut input = Input { data };
    let mut config = Config::new(LOCAL, PEER);
    config.buf_alloc = input.pick(&[1, 64, 1000, 4096, 65536, 256 * 1024]);
    config.send_buf = input.pick(&[1, 100, 4096, 65536]);
    config.max_payload = input.pick(&[1, 7, 512, 4096, 65536]);
    config.max_connections = 1 + usize::from(input.u8() % 8);
    config.connect_timeout = Duration::from_millis(input.pick(&[0, 1, 2000]));
    config.close_timeout = Duration::from_millis(input.pick(&[0, 100, 8000]));
    config.max_orphan_rsts = input.pick(&[0, 1, 4, 1024]);
    let mut h = Harness {
        engine: Engine::new(config),
        now: Instant::now(),
        ids: Vec::new(),
        pairs: Vec::new(),
        flows: HashMap::new(),
        closed: HashSet::new(),
        released: HashSet::new(),
        eof: HashSet::new(),
    };
    while !input.is_empty() {
        h.step(&mut input);
        h.check();
    }
    // Let every timer run out and everything drain.
    let limit = h.engine.config().max_payload;
    h.drain(limit);
    h.advance(Duration::from_secs(60));
    h.drain(u32::MAX);
    h.check();
}

impl Harness {
    fn step(&mut self, input: &mut Input<'_>) {
        match input.u8() % 16 {
            0..=4 => self.packet(input),
            5 => {
                let port = input.pick(&[80, 1024, 1025, u32::MAX]);
                let kind = if input.bool() {
                    SocketType::SeqPacket
                } else {
                    SocketType::Stream
                };
                if let Ok(id) = self.engine.connect(self.now, port, kind) {
                    let ports = self.engine.ports(id).expect("new connection has ports");
                    let flow = Flow {
                        type_: Some(kind.to_u16()),
                        ..Flow::default()
                    };
                    self.flows.insert(ports, flow);
                    self.remember(ports);
                    self.ids.push(id);
                }
            }
            6 => match input.u8() % 8 {
                0..=3 => {
                    let port = input.pick(&[80, 1024, 1025, EPHEMERAL_PORT_START]);
                    let kind = if input.bool() {
                        SocketType::SeqPacket
                    } else {
                        SocketType::Stream
                    };
                    self.engine.listen(port, kind);
                }
                4 => self.engine.unlisten(input.pick(&[80, 1024, 1025])),
                5 => self.engine.listen_any(Some(SocketType::Stream)),
                6 => self.engine.listen_any(None),
                _ => self
                    .engine
                    .reset_all(tether_vsock::CloseReason::EngineReset),
            },
            7 => {
                if let Some(id) = self.pick_id(input) {
                    let _ = self.engine.accept(id);
                }
            }
            8 => {
                if let Some(id) = self.pick_id(input) {
                    let len = usize::from(input.u16() % 20_000);
                    let data = input.payload(len);
                    let _ = match input.u8() % 3 {
                        0 => self.engine.send(id, &data),
                        1 => self.engine.send_bytes(id, data),
                        _ => {
                            self.send_direct(id, data);
                            Ok(0)
                        }
                    };
                }
            }
            9 => {
                if let Some(id) = self.pick_id(input) {
                    let len = usize::from(input.u16() % 20_000);
                    let data = input.payload(len);
                    let _ = self.engine.send_message(id, data, input.bool());
                }
            }
            10 => {
                if let Some(id) = self.pick_id(input) {
                    self.read(id, input);
                }
            }
            11 => {
                if let Some(id) = self.pick_id(input) {
                    let how = input.pick(&[Shutdown::Read, Shutdown::Write, Shutdown::Both]);
                    let _ = self.engine.shutdown(id, how);
                }
            }
            12 => {
                if let Some(id) = self.pick_id(input) {
                    self.engine.close(self.now, id);
                    self.released.insert(id);
                }
            }
            13 => {
                let ms = u64::from(input.u16()) * input.pick(&[1, 1, 10]);
                self.advance(Duration::from_millis(ms));
            }
            _ => {
                let n = input.u8();
                let limit = match input.u8() % 6 {
                    0 => 0,
                    1 => 1,
                    2 => 16,
                    3 => 1024,
                    4 => u32::MAX,
                    _ => u32::from(input.u16()),
                };
                for _ in 0..n {
                    if !self.poll(limit) {
                        break;
                    }
                }
            }
        }
    }

    fn pick_id(&mut self, input: &mut Input<'_>) -> Option<ConnId> {
        if self.ids.is_empty() {
            return None;
        }
        Some(self.ids[usize::from(input.u8()) % self.ids.len()])
    }

    fn remember(&mut self, pair: (u32, u32)) {
        if !self.pairs.contains(&pair) {
            if self.pairs.len() >= 16 {
                self.pairs.remove(0);
            }
            self.pairs.push(pair);
        }
    }

    /// A packet from the peer.
    fn packet(&mut self, input: &mut Input<'_>) {
        let (local, peer) = match input.u8() % 8 {
            0..=4 if !self.pairs.is_empty() => {
                self.pairs[usize::from(input.u8()) % self.pairs.len()]
            }
            0..=5 => (
                input.pick(&[
                    80,
                    1024,
                    1025,
                    EPHEMERAL_PORT_START,
                    EPHEMERAL_PORT_START + 1,
                ]),
                input.pick(&[1, 2, 1024, 5000]),
            ),
            _ => (input.u32(), input.u32()),
        };
        let r = input.u8();
        let op = if r < 240 {
            u16::from(r % 7) + 1
        } else {
            input.u16()
        };
        let r = input.u8();
        let type_ = if r < 248 {
            u16::from(r % 2) + 1
        } else {
            input.u16()
        };
        let flags = match input.u8() % 4 {
            0 => 0,
            1 => input.pick(&[1, 2, 3]),
            2 => u32::from(input.u8() % 4),
            _ => input.u32(),
        };
        let flow = self.flows.get(&(local, peer)).copied().unwrap_or_default();
        let buf_alloc = match input.u8() % 8 {
            0..=2 => flow.buf_alloc,
            3 => input.pick(&[0, 1, 100, 4096, 65536, 256 * 1024, u32::MAX]),
            _ => input.pick(&[4096, 256 * 1024]).max(flow.buf_alloc),
        };
        let fwd_cnt = match input.u8() % 8 {
            // The peer has consumed everything sent, or all but a little.
            0..=3 => flow.tx,
            4 | 5 => flow.tx.wrapping_sub(u32::from(input.u16())),
            6 => flow.fwd_cnt,
            _ => input.u32(),
        };
        let max = self.engine.config().max_payload;
        let len = match input.u8() % 8 {
            0..=3 if op == Op::Rw.to_u16() => usize::from(input.u16()) % (max as usize + 1),
            0..=5 => 0,
            6 => usize::from(input.u16() % 2048),
            _ => max as usize + 1,
        };
        let payload = input.payload(len);
        let mut hdr = Header {
            src_cid: PEER,
            dst_cid: LOCAL,
            src_port: peer,
            dst_port: local,
            len: len as u32,
            type_,
            op,
            flags,
            buf_alloc,
            fwd_cnt,
        };
        match input.u8() {
            0 => hdr.src_cid = u64::from(input.u8()),
            1 => hdr.dst_cid = u64::from(input.u8()),
            2 => hdr.len = input.u32(),
            3 => hdr.len = hdr.len.wrapping_add(1),
            _ => {}
        }
        self.feed(hdr, payload);
    }

    fn feed(&mut self, hdr: Header, payload: Bytes) {
        let expected = if hdr.dst_cid != LOCAL {
            Err(PacketError::WrongDestination {
                expected: LOCAL,
                got: hdr.dst_cid,
            })
        } else if hdr.src_cid != PEER {
            Err(PacketError::WrongSource {
                expected: PEER,
                got: hdr.src_cid,
            })
        } else if hdr.len as usize != payload.len() {
            Err(PacketError::LengthMismatch {
                declared: hdr.len,
                actual: payload.len(),
            })
        } else if payload.len() > self.engine.config().max_payload as usize {
            Err(PacketError::TooLarge {
                len: payload.len(),
                max: self.engine.config().max_payload,
            })
        } else {
            Ok(())
        };
        // Whatever the engine emits after an RST or a rejected packet must be caused by it,
        // so flush what was already owed first.
        let quiet_after = hdr.op == Op::Rst.to_u16() || expected.is_err();
        if quiet_after {
            self.drain(u32::MAX);
            self.events();
        }
        let stats = self.engine.stats();
        let pair = (hdr.dst_port, hdr.src_port);
        assert_eq!(
            self.engine.handle_packet(self.now, &hdr, payload),
            expected,
            "{hdr:?}"
        );
        if quiet_after {
            if let Some(t) = self.engine.poll_transmit(u32::MAX) {
                panic!("{hdr:?} ({expected:?}) was answered with {:?}", t.header);
            }
        }
        if expected.is_err() {
            assert_eq!(
                self.engine.stats(),
                stats,
                "a rejected packet changed the stats"
            );
            assert_eq!(
                self.engine.poll_event(),
                None,
                "a rejected packet raised an event"
            );
            return;
        }
        if hdr.op().is_some() && hdr.socket_type().is_some() {
            let flow = self.flows.entry(pair).or_default();
            if hdr.op() == Some(Op::Request) {
                *flow = Flow {
                    type_: Some(hdr.type_),
                    ..Flow::default()
                };
            }
            if flow.type_.is_none_or(|t| t == hdr.type_) {
                flow.buf_alloc = hdr.buf_alloc;
                flow.fwd_cnt = hdr.fwd_cnt;
            }
        }
        self.remember(pair);
    }

    fn read(&mut self, id: ConnId, input: &mut Input<'_>) {
        let max = 1 + usize::from(input.u16() % 8192);
        // Some(true): data (or a message, maybe empty); Some(false): end of stream.
        let got = match input.u8() % 3 {
            0 => {
                let mut buf = vec![0u8; max];
                self.engine.recv(id, &mut buf).ok().map(|n| n > 0)
            }
            1 => self.engine.recv_bytes(id, max).ok().map(|b| !b.is_empty()),
            _ => self.engine.recv_message(id).ok().map(|m| m.is_some()),
        };
        match got {
            Some(true) => assert!(
                !self.eof.contains(&id),
                "data after end of stream on {id:?}"
            ),
            Some(false) => {
                self.eof.insert(id);
            }
            None => {}
        }
    }

    fn advance(&mut self, by: Duration) {
        self.now += by;
        self.engine.handle_timeout(self.now);
        if let Some(t) = self.engine.poll_timeout() {
            assert!(
                t > self.now,
                "a timer due at {t:?} survived handle_timeout({:?})",
                self.now
            );
        }
    }

    /// Takes one packet; returns whether there was one.
    /// A write straight to the wire, as the mux makes one, or a wait for the engine to
    /// say the connection is writable.
    fn send_direct(&mut self, id: ConnId, data: Bytes) {
        match self.engine.send_now(id, data.len()) {
            Ok(Some((header, n))) => {
                let t = Transmit {
                    header,
                    payload: data.slice(..n),
                };
                self.check_emitted(&t, u32::MAX);
            }
            Ok(None) => {
                let _ = self.engine.wait_writable(id);
            }
            Err(_) => {}
        }
    }

    fn poll(&mut self, limit: u32) -> bool {
        let Some(t) = self.engine.poll_transmit(limit) else {
            return false;
        };
        self.check_emitted(&t, limit);
        true
    }

    fn drain(&mut self, limit: u32) {
        let mut n = 0u64;
        while self.poll(limit) {
            n += 1;
            assert!(n < 10_000_000, "poll_transmit never runs dry");
        }
    }

    fn check_emitted(&mut self, t: &Transmit, limit: u32) {
        let h = &t.header;
        let max_payload = self.engine.config().max_payload;
        assert_eq!((h.src_cid, h.dst_cid), (LOCAL, PEER), "{h:?}");
        assert_eq!(h.len as usize, t.payload.len(), "{h:?}");
        let op = h.op().expect("emitted an undefined op");
        let pair = (h.src_port, h.dst_port);
        self.remember(pair);
        match op {
            Op::Rw => {
                assert!(
                    t.payload.len() <= limit.min(max_payload) as usize,
                    "RW over limit {limit}: {h:?}"
                );
                assert!(h.socket_type().is_some(), "{h:?}");
                if h.socket_type() == Some(SocketType::Stream) {
                    assert!(!t.payload.is_empty(), "empty stream RW: {h:?}");
                }
                let f = self.flows.entry(pair).or_default();
                let credit = f.buf_alloc.saturating_sub(f.tx.wrapping_sub(f.fwd_cnt));
                assert!(
                    t.payload.len() <= credit as usize,
                    "RW of {} bytes beyond credit {credit}: {h:?}, {f:?}",
                    t.payload.len()
                );
                f.tx = f.tx.wrapping_add(t.payload.len() as u32);
            }
            Op::Request => {
                assert!(t.payload.is_empty());
                let flow = Flow {
                    type_: Some(h.type_),
                    ..Flow::default()
                };
                self.flows.insert(pair, flow);
            }
            Op::Response => {
                assert!(t.payload.is_empty());
                self.flows.entry(pair).or_default().tx = 0;
            }
            _ => assert!(t.payload.is_empty(), "control packet with payload: {h:?}"),
        }
    }

    fn events(&mut self) {
        while let Some(ev) = self.engine.poll_event() {
            let id = match ev {
                Event::Incoming { id, .. } => {
                    assert!(
                        !self.ids.contains(&id),
                        "Incoming reuses a live handle {id:?}"
                    );
                    self.ids.push(id);
                    continue;
                }
                Event::Connected(id)
                | Event::Readable(id)
                | Event::Writable(id)
                | Event::ReadClosed(id)
                | Event::WriteClosed(id)
                | Event::Closed(id, _) => id,
            };
            assert!(!self.released.contains(&id), "{ev:?} for a released handle");
            assert!(!self.closed.contains(&id), "{ev:?} after Closed");
            if let Event::Closed(..) = ev {
                self.closed.insert(id);
            }
        }
    }

    fn check(&mut self) {
        self.events();
        let buf_alloc = self.engine.config().buf_alloc as usize;
        for &id in &self.ids {
            let held = self.engine.readable_len(id);
            assert!(
                held <= buf_alloc,
                "{id:?} holds {held} unread bytes, buf_alloc {buf_alloc}"
            );
        }
        assert!(self.engine.stats().connections <= self.engine.config().max_connections);
        assert!(self
            .engine
            .connections()
            .all(|id| !self.released.contains(&id)));
    }
}
