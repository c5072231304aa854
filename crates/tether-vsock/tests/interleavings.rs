//! Random interleavings of application calls and link deliveries on several connections
//! at once, checked against a model of what each direction must carry.
//!
//! The link queues packets each way and delivers them in order, in random batches, so
//! credit updates, data and shutdowns cross in every order the link allows. Buffers are
//! small (4 KiB receive buffer, 1 KiB packets, 8 KiB send queue) so credit runs out often.

mod support;

use bytes::Bytes;
use proptest::prelude::*;
use std::collections::VecDeque;
use std::time::Duration;
use support::{check_emitted, pattern, End, Pair};
use tether_vsock::{ConnId, Event, Shutdown, SocketType, StreamError, Transmit};

const BUF_ALLOC: u32 = 4096;
const MAX_PAYLOAD: u32 = 1024;
const SEND_BUF: u32 = 8192;

/// (connector, listening port, kind) of each connection under test.
const CONNS: [(End, u32, SocketType); 4] = [
    (End::Host, 600, SocketType::Stream),
    (End::Host, 600, SocketType::Stream),
    (End::Guest, 500, SocketType::Stream),
    (End::Guest, 700, SocketType::SeqPacket),
];

#[derive(Clone, Debug)]
enum Step {
    /// Queue data (or one message) on a connection from one end.
    Write {
        conn: usize,
        from_host: bool,
        len: usize,
        seed: u64,
    },
    /// Read once with a buffer of `buf` bytes (ignored for messages).
    Read {
        conn: usize,
        at_host: bool,
        buf: usize,
    },
    /// Half-close one direction.
    ShutdownWrite { conn: usize, from_host: bool },
    /// Move up to `max` packets from an engine onto the link.
    Transmit {
        from_host: bool,
        max: usize,
        limit: u32,
    },
    /// Deliver up to `max` queued packets to an engine.
    Deliver { to_host: bool, max: usize },
    /// Let time pass (no connection here has a timer running).
    Advance { ms: u64 },
}

fn step() -> impl Strategy<Value = Step> {
    let conn = 0..CONNS.len();
    prop_oneof![
        3 => (conn.clone(), any::<bool>(), prop_oneof![0..3000usize, 3000..5000usize], any::<u64>())
            .prop_map(|(conn, from_host, len, seed)| Step::Write { conn, from_host, len, seed }),
        3 => (conn.clone(), any::<bool>(), 1..600usize)
            .prop_map(|(conn, at_host, buf)| Step::Read { conn, at_host, buf }),
        1 => (conn, any::<bool>()).prop_map(|(conn, from_host)| Step::ShutdownWrite { conn, from_host }),
        3 => (any::<bool>(), 1..12usize, prop_oneof![1..64u32, 64..=2048u32])
            .prop_map(|(from_host, max, limit)| Step::Transmit { from_host, max, limit }),
        3 => (any::<bool>(), 1..12usize).prop_map(|(to_host, max)| Step::Deliver { to_host, max }),
        1 => (0..3000u64).prop_map(|ms| Step::Advance { ms }),
    ]
}

/// What one direction of one connection has carried so far.
#[derive(Debug, Default)]
struct Flow {
    /// Stream bytes accepted by `send`, in order.
    bytes: Vec<u8>,
    /// Stream bytes read so far.
    read: usize,
    /// Messages accepted by `send_message` with their EOR flag, in order.
    messages: Vec<(Bytes, bool)>,
    /// Messages read so far.
    read_messages: usize,
    shut: bool,
    eof: bool,
}

impl Flow {
    fn all_read(&self) -> bool {
        self.read == self.bytes.len() && self.read_messages == self.messages.len()
    }
}

struct World {
    pair: Pair,
    /// Host and guest ids of each connection.
    ids: Vec<(ConnId, ConnId)>,
    kinds: Vec<SocketType>,
    /// Per connection: [host to guest, guest to host].
    flows: Vec<[Flow; 2]>,
    to_guest: VecDeque<Transmit>,
    to_host: VecDeque<Transmit>,
}

impl World {
    fn new() -> Self {
        let mut pair = Pair::with(|c| {
            c.buf_alloc = BUF_ALLOC;
            c.max_payload = MAX_PAYLOAD;
            c.send_buf = SEND_BUF;
        });
        let mut ids = Vec::new();
        for (from, port, kind) in CONNS {
            let (c, a) = pair.establish_from(from, port, kind);
            ids.push(if from == End::Host { (c, a) } else { (a, c) });
        }
        World {
            pair,
            ids,
            kinds: CONNS.iter().map(|c| c.2).collect(),
            flows: CONNS.iter().map(|_| Default::default()).collect(),
            to_guest: VecDeque::new(),
            to_host: VecDeque::new(),
        }
    }

    fn id(&self, conn: usize, host: bool) -> ConnId {
        if host {
            self.ids[conn].0
        } else {
            self.ids[conn].1
        }
    }

    fn end(host: bool) -> End {
        if host {
            End::Host
        } else {
            End::Guest
        }
    }

    fn write(&mut self, conn: usize, from_host: bool, len: usize, seed: u64) {
        let id = self.id(conn, from_host);
        let data = pattern(seed, len);
        let flow = &mut self.flows[conn][usize::from(!from_host)];
        let engine = &mut self.pair.side(Self::end(from_host)).engine;
        match self.kinds[conn] {
            SocketType::Stream => match engine.send(id, &data) {
                Ok(n) => {
                    assert!(!flow.shut, "send after shutdown(Write) accepted");
                    assert!(n <= len);
                    flow.bytes.extend_from_slice(&data[..n]);
                }
                Err(StreamError::BrokenPipe) => assert!(flow.shut),
                Err(StreamError::WouldBlock) => {
                    assert!(len > 0 && engine.send_queue_len(id) >= SEND_BUF as usize)
                }
                Err(e) => panic!("send: {e}"),
            },
            SocketType::SeqPacket => match engine.send_message(id, data.clone(), seed % 2 == 0) {
                Ok(()) => {
                    assert!(!flow.shut, "send after shutdown(Write) accepted");
                    assert!(len <= BUF_ALLOC as usize);
                    flow.messages.push((data, seed % 2 == 0));
                }
                Err(StreamError::BrokenPipe) => assert!(flow.shut),
                Err(StreamError::WouldBlock) => {
                    assert!(engine.send_queue_len(id) + len > SEND_BUF as usize)
                }
                Err(StreamError::MessageTooLarge { len: l, max }) => {
                    assert_eq!((l, max), (len, BUF_ALLOC as usize))
                }
                Err(e) => panic!("send_message: {e}"),
            },
        }
    }

    /// One read; returns whether it made progress (data, a message or end of stream).
    fn read(&mut self, conn: usize, at_host: bool, buf: usize) -> bool {
        let id = self.id(conn, at_host);
        let flow = &mut self.flows[conn][usize::from(at_host)];
        let engine = &mut self.pair.side(Self::end(at_host)).engine;
        match self.kinds[conn] {
            SocketType::Stream => {
                let mut b = vec![0u8; buf];
                match engine.recv(id, &mut b) {
                    Ok(0) => {
                        assert!(flow.shut && flow.all_read(), "early EOF");
                        let first = !flow.eof;
                        flow.eof = true;
                        first
                    }
                    Ok(n) => {
                        let want = &flow.bytes[flow.read..flow.read + n];
                        assert!(
                            b[..n] == *want,
                            "stream data corrupted at offset {}",
                            flow.read
                        );
                        flow.read += n;
                        true
                    }
                    Err(StreamError::WouldBlock) => false,
                    Err(e) => panic!("recv: {e}"),
                }
            }
            SocketType::SeqPacket => match engine.recv_message(id) {
                Ok(None) => {
                    assert!(flow.shut && flow.all_read(), "early EOF");
                    let first = !flow.eof;
                    flow.eof = true;
                    first
                }
                Ok(Some(m)) => {
                    let (data, eor) = &flow.messages[flow.read_messages];
                    assert_eq!(
                        (&m.data, m.eor),
                        (data, *eor),
                        "message {}",
                        flow.read_messages
                    );
                    flow.read_messages += 1;
                    true
                }
                Err(StreamError::WouldBlock) => false,
                Err(e) => panic!("recv_message: {e}"),
            },
        }
    }

    fn shutdown_write(&mut self, conn: usize, from_host: bool) {
        let id = self.id(conn, from_host);
        self.pair
            .side(Self::end(from_host))
            .engine
            .shutdown(id, Shutdown::Write)
            .unwrap();
        self.flows[conn][usize::from(!from_host)].shut = true;
    }

    fn transmit(&mut self, from_host: bool, max: usize, limit: u32) -> usize {
        let side = self.pair.side(Self::end(from_host));
        let mut out = Vec::new();
        while out.len() < max {
            let Some(t) = side.engine.poll_transmit(limit) else {
                break;
            };
            check_emitted(&side.engine, &t, limit);
            out.push(t);
        }
        let n = out.len();
        for t in out {
            self.pair.credit.on_emit(&t.header, t.payload.len());
            if from_host {
                self.to_guest.push_back(t);
            } else {
                self.to_host.push_back(t);
            }
        }
        n
    }

    fn deliver(&mut self, to_host: bool, max: usize) -> usize {
        let now = self.pair.now;
        let mut n = 0;
        while n < max {
            let queue = if to_host {
                &mut self.to_host
            } else {
                &mut self.to_guest
            };
            let Some(t) = queue.pop_front() else {
                break;
            };
            self.pair.credit.on_deliver(&t.header);
            let side = self.pair.side(Self::end(to_host));
            side.engine
                .handle_packet(now, &t.header, t.payload)
                .expect("packet accepted");
            n += 1;
        }
        n
    }

    fn advance(&mut self, ms: u64) {
        self.pair.now += Duration::from_millis(ms);
        let now = self.pair.now;
        self.pair.host.engine.handle_timeout(now);
        self.pair.guest.engine.handle_timeout(now);
    }

    fn apply(&mut self, step: &Step) {
        match *step {
            Step::Write {
                conn,
                from_host,
                len,
                seed,
            } => self.write(conn, from_host, len, seed),
            Step::Read { conn, at_host, buf } => {
                self.read(conn, at_host, buf);
            }
            Step::ShutdownWrite { conn, from_host } => self.shutdown_write(conn, from_host),
            Step::Transmit {
                from_host,
                max,
                limit,
            } => {
                self.transmit(from_host, max, limit);
            }
            Step::Deliver { to_host, max } => {
                self.deliver(to_host, max);
            }
            Step::Advance { ms } => self.advance(ms),
        }
        self.check();
    }

    /// Invariants after every step.
    fn check(&mut self) {
        for conn in 0..self.ids.len() {
            for host in [true, false] {
                let id = self.id(conn, host);
                let engine = &self.pair.side(Self::end(host)).engine;
                assert!(
                    engine.readable_len(id) <= BUF_ALLOC as usize,
                    "connection {conn} holds {} unread bytes",
                    engine.readable_len(id)
                );
            }
        }
        for host in [true, false] {
            let side = self.pair.side(Self::end(host));
            while let Some(ev) = side.engine.poll_event() {
                assert!(
                    !matches!(ev, Event::Closed(..) | Event::WriteClosed(_)),
                    "{ev:?}"
                );
            }
        }
    }

    /// Closes every direction, then moves and reads everything until quiet.
    fn finish(&mut self) {
        for conn in 0..self.ids.len() {
            for from_host in [true, false] {
                if !self.flows[conn][usize::from(!from_host)].shut {
                    self.shutdown_write(conn, from_host);
                }
            }
        }
        for _round in 0..100_000 {
            let mut progress = 0;
            for host in [true, false] {
                progress += self.transmit(host, usize::MAX, MAX_PAYLOAD);
                progress += self.deliver(!host, usize::MAX);
            }
            for conn in 0..self.ids.len() {
                for host in [true, false] {
                    while self.read(conn, host, 777) {
                        progress += 1;
                    }
                }
            }
            self.check();
            if progress == 0 {
                break;
            }
        }
        for (conn, flows) in self.flows.iter().enumerate() {
            for (dir, flow) in flows.iter().enumerate() {
                assert!(
                    flow.all_read() && flow.eof,
                    "connection {conn} direction {dir}: read {}/{} bytes, {}/{} messages, eof {}",
                    flow.read,
                    flow.bytes.len(),
                    flow.read_messages,
                    flow.messages.len(),
                    flow.eof
                );
            }
        }
        // Both ends release; the close handshake completes with nothing left anywhere.
        let now = self.pair.now;
        for (h, g) in self.ids.clone() {
            self.pair.host.engine.close(now, h);
            self.pair.guest.engine.close(now, g);
        }
        self.pair.pump();
        assert_eq!(self.pair.host.engine.stats().connections, 0);
        assert_eq!(self.pair.guest.engine.stats().connections, 0);
        assert_eq!(self.pair.host.engine.stats().violations, 0);
        assert_eq!(self.pair.guest.engine.stats().violations, 0);
    }
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 256, ..ProptestConfig::default() })]

    #[test]
    fn every_byte_arrives_once_in_order_within_credit(steps in prop::collection::vec(step(), 1..500)) {
        let mut world = World::new();
        for s in &steps {
            world.apply(s);
        }
        world.finish();
    }
}
