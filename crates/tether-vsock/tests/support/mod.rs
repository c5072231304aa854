//! Harness shared by the integration tests: two engines on one lossless, in-order link,
//! with checks that every packet on that link must pass whatever the test is about.
//!
//! Not every test binary uses every helper.
#![allow(dead_code)]

use bytes::Bytes;
use std::collections::{HashMap, VecDeque};
use std::time::{Duration, Instant};
use tether_vsock::header::Op;
use tether_vsock::{Config, ConnId, Engine, Event, Header, SocketType, StreamError, Transmit};

/// CID of the host end.
pub const HOST: u64 = 2;
/// CID of the guest end.
pub const GUEST: u64 = 3;

/// The credit each sender has been granted, as an outside observer of the link sees it.
///
/// A flow is keyed by (sender CID, sender port, receiver port). It is rebuilt from the
/// packets a sender has actually received, so an RW the sender emits can be judged against
/// exactly what the receiver advertised, independently of the engine's own bookkeeping.
#[derive(Debug, Default)]
pub struct CreditWatch {
    flows: HashMap<(u64, u32, u32), Flow>,
}

#[derive(Clone, Copy, Debug, Default)]
struct Flow {
    tx: u32,
    buf_alloc: u32,
    fwd_cnt: u32,
}

impl CreditWatch {
    /// Judges a packet as its sender emits it: an RW must fit in the sender's credit.
    pub fn on_emit(&mut self, h: &Header, payload_len: usize) {
        let key = (h.src_cid, h.src_port, h.dst_port);
        match h.op() {
            // A REQUEST starts a connection whose credit is unknown until RESPONSE.
            Some(Op::Request) => {
                self.flows.insert(key, Flow::default());
            }
            Some(Op::Response) => self.flows.entry(key).or_default().tx = 0,
            Some(Op::Rw) => {
                let f = self.flows.entry(key).or_default();
                let in_flight = f.tx.wrapping_sub(f.fwd_cnt);
                let credit = f.buf_alloc.saturating_sub(in_flight);
                assert!(
                    payload_len as u64 <= u64::from(credit),
                    "RW of {payload_len} bytes on {key:?} exceeds the advertised credit {credit} \
                     (buf_alloc {}, fwd_cnt {}, sent {})",
                    f.buf_alloc,
                    f.fwd_cnt,
                    f.tx
                );
                f.tx = f.tx.wrapping_add(payload_len as u32);
            }
            _ => {}
        }
    }

    /// Records the credit a delivered packet grants to its receiver's sending side.
    pub fn on_deliver(&mut self, h: &Header) {
        let key = (h.dst_cid, h.dst_port, h.src_port);
        let f = self.flows.entry(key).or_default();
        f.buf_alloc = h.buf_alloc;
        f.fwd_cnt = h.fwd_cnt;
        if h.op() == Some(Op::Request) {
            f.tx = 0;
        }
    }
}

/// Checks every packet an engine emits must pass, whatever else is going on.
pub fn check_emitted(engine: &Engine, t: &Transmit, limit: u32) {
    let cfg = engine.config();
    let h = &t.header;
    assert_eq!(h.src_cid, cfg.local_cid, "{h:?}");
    assert_eq!(h.dst_cid, cfg.peer_cid, "{h:?}");
    assert_eq!(
        h.len as usize,
        t.payload.len(),
        "header len disagrees with payload: {h:?}"
    );
    let op = h.op().expect("engine emitted an undefined op");
    if op == Op::Rw {
        assert!(
            t.payload.len() <= limit.min(cfg.max_payload) as usize,
            "RW over the limit {limit}: {h:?}"
        );
    } else {
        assert!(t.payload.is_empty(), "control packet with payload: {h:?}");
    }
}

/// One end of the link.
#[derive(Debug)]
pub struct Side {
    /// The engine under test.
    pub engine: Engine,
    /// Events taken from the engine, oldest first; tests consume them as they like.
    pub events: Vec<Event>,
    outbox: VecDeque<Transmit>,
}

impl Side {
    fn new(config: Config) -> Self {
        Side {
            engine: Engine::new(config),
            events: Vec::new(),
            outbox: VecDeque::new(),
        }
    }

    fn collect_events(&mut self) {
        while let Some(ev) = self.engine.poll_event() {
            self.events.push(ev);
        }
    }

    /// Moves every packet the engine has to send into the outbox, checking each one.
    fn drain_engine(&mut self, limit: u32, credit: &mut CreditWatch) {
        let mut guard = 0;
        while let Some(t) = self.engine.poll_transmit(limit) {
            check_emitted(&self.engine, &t, limit);
            credit.on_emit(&t.header, t.payload.len());
            self.outbox.push_back(t);
            guard += 1;
            assert!(guard < 1_000_000, "poll_transmit never runs dry");
        }
        self.collect_events();
    }

    /// Takes the events gathered so far.
    pub fn take_events(&mut self) -> Vec<Event> {
        std::mem::take(&mut self.events)
    }
}

/// Which end of a [`Pair`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum End {
    /// CID 2.
    Host,
    /// CID 3.
    Guest,
}

/// Two engines wired back to back.
#[derive(Debug)]
pub struct Pair {
    /// CID 2, talking to CID 3.
    pub host: Side,
    /// CID 3, talking to CID 2.
    pub guest: Side,
    /// The clock both engines are fed.
    pub now: Instant,
    /// Payload limit passed to `poll_transmit` on both ends.
    pub limit: u32,
    /// Every delivered packet, in delivery order.
    pub log: Vec<Header>,
    /// Credit seen on the link.
    pub credit: CreditWatch,
}

impl Default for Pair {
    fn default() -> Self {
        Pair::new(Config::new(HOST, GUEST), Config::new(GUEST, HOST))
    }
}

impl Pair {
    /// Two engines with the given configurations (CIDs must be 2 and 3 as in the defaults).
    pub fn new(host: Config, guest: Config) -> Self {
        Pair {
            host: Side::new(host),
            guest: Side::new(guest),
            now: Instant::now(),
            limit: u32::MAX,
            log: Vec::new(),
            credit: CreditWatch::default(),
        }
    }

    /// Both engines with `f` applied to their default configuration.
    pub fn with(f: impl Fn(&mut Config)) -> Self {
        let mut host = Config::new(HOST, GUEST);
        let mut guest = Config::new(GUEST, HOST);
        f(&mut host);
        f(&mut guest);
        Pair::new(host, guest)
    }

    /// The side at `end`.
    pub fn side(&mut self, end: End) -> &mut Side {
        match end {
            End::Host => &mut self.host,
            End::Guest => &mut self.guest,
        }
    }

    /// Shuttles packets both ways until neither engine has anything to send; returns the
    /// number of packets moved.
    ///
    /// Every RST delivered is checked to draw no reply: the receiver's pending packets
    /// are taken out first, so anything it emits right after the RST is an answer to it.
    pub fn pump(&mut self) -> usize {
        let mut moved = 0;
        loop {
            let n = transfer(
                &mut self.host,
                &mut self.guest,
                self.now,
                self.limit,
                &mut self.log,
                &mut self.credit,
            ) + transfer(
                &mut self.guest,
                &mut self.host,
                self.now,
                self.limit,
                &mut self.log,
                &mut self.credit,
            );
            if n == 0 {
                return moved;
            }
            moved += n;
        }
    }

    /// Moves the clock forward and runs both engines' timers.
    pub fn advance(&mut self, by: Duration) {
        self.now += by;
        self.host.engine.handle_timeout(self.now);
        self.guest.engine.handle_timeout(self.now);
        self.host.collect_events();
        self.guest.collect_events();
    }

    /// Opens a connection from `from` to `port` on the other end, which listens for it
    /// and accepts; returns (connector's id, acceptor's id). Events of the setup are
    /// consumed.
    pub fn establish_from(&mut self, from: End, port: u32, kind: SocketType) -> (ConnId, ConnId) {
        let to = match from {
            End::Host => End::Guest,
            End::Guest => End::Host,
        };
        let now = self.now;
        self.side(to).engine.listen(port, kind);
        let c = self
            .side(from)
            .engine
            .connect(now, port, kind)
            .expect("connect");
        self.pump();
        let events = self.side(to).take_events();
        let a = match events.as_slice() {
            [Event::Incoming { id, local_port, .. }] if *local_port == port => *id,
            other => panic!("expected one Incoming, got {other:?}"),
        };
        self.side(to).engine.accept(a).expect("accept");
        self.pump();
        assert_eq!(self.side(from).take_events(), vec![Event::Connected(c)]);
        (c, a)
    }

    /// [`Pair::establish_from`] the host.
    pub fn establish(&mut self, port: u32, kind: SocketType) -> (ConnId, ConnId) {
        self.establish_from(End::Host, port, kind)
    }

    /// Reads a stream connection until it would block or ends, pumping in between so
    /// credit flows; returns the bytes and whether end of stream was seen.
    pub fn read_stream(&mut self, end: End, id: ConnId, chunk: usize) -> (Vec<u8>, bool) {
        let mut out = Vec::new();
        let mut buf = vec![0u8; chunk];
        loop {
            match self.side(end).engine.recv(id, &mut buf) {
                Ok(0) => return (out, true),
                Ok(n) => out.extend_from_slice(&buf[..n]),
                Err(StreamError::WouldBlock) => {
                    if self.pump() == 0 {
                        return (out, false);
                    }
                }
                Err(e) => panic!("recv failed: {e}"),
            }
            self.pump();
        }
    }

    /// Packets in the log as (sender CID, op, flags).
    pub fn ops(&self) -> Vec<(u64, Op, u32)> {
        self.log
            .iter()
            .map(|h| (h.src_cid, h.op().expect("defined op"), h.flags))
            .collect()
    }

    /// Number of logged packets from `cid` with `op`.
    pub fn count(&self, cid: u64, op: Op) -> usize {
        self.log
            .iter()
            .filter(|h| h.src_cid == cid && h.op() == Some(op))
            .count()
    }
}

fn transfer(
    from: &mut Side,
    to: &mut Side,
    now: Instant,
    limit: u32,
    log: &mut Vec<Header>,
    credit: &mut CreditWatch,
) -> usize {
    from.drain_engine(limit, credit);
    let mut moved = 0;
    while let Some(t) = from.outbox.pop_front() {
        let is_rst = t.header.op() == Some(Op::Rst);
        if is_rst {
            to.drain_engine(limit, credit);
        }
        credit.on_deliver(&t.header);
        log.push(t.header);
        to.engine
            .handle_packet(now, &t.header, t.payload)
            .expect("packet accepted");
        if is_rst {
            if let Some(reply) = to.engine.poll_transmit(limit) {
                panic!("RST {:?} was answered with {:?}", t.header, reply.header);
            }
        }
        to.collect_events();
        moved += 1;
    }
    moved
}

/// Deterministic pseudo-random bytes, so a test can tell every byte from its neighbours.
pub fn pattern(seed: u64, len: usize) -> Bytes {
    tether_testkit::pattern(seed, len).into()
}
