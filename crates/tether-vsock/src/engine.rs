//! The connection table, packet handling, fair transmit scheduling and timers.

use crate::buffer::Message;
use crate::conn::{owed, CloseReason, Conn, Phase};
use crate::header::{shutdown, Header, Op, SocketType};
use bytes::Bytes;
use std::collections::{BTreeSet, HashMap, VecDeque};
use std::time::{Duration, Instant};
use thiserror::Error;

/// First port handed out by [`Engine::connect`], as Firecracker does for host ports.
pub const EPHEMERAL_PORT_START: u32 = 1 << 30;

/// Settings of an [`Engine`].
#[derive(Clone, Debug)]
pub struct Config {
    /// Our context id; packets addressed elsewhere are rejected.
    pub local_cid: u64,
    /// The only peer this engine talks to; packets from elsewhere are rejected.
    pub peer_cid: u64,
    /// Receive buffer per connection, advertised as `buf_alloc`.
    pub buf_alloc: u32,
    /// Bound on data queued for sending per connection.
    pub send_buf: u32,
    /// Largest RW payload we emit and accept.
    pub max_payload: u32,
    /// Live connections at most; further REQUESTs get RST, further connects fail.
    pub max_connections: usize,
    /// How long a REQUEST waits for RESPONSE (and an incoming one for the application).
    pub connect_timeout: Duration,
    /// How long a closing connection waits for the peer's RST before sending its own.
    pub close_timeout: Duration,
    /// Bound on queued RSTs for packets of unknown connections; more are dropped.
    pub max_orphan_rsts: usize,
    /// How long a sender starved of credit waits for the peer's own CREDIT_UPDATE before
    /// asking with a CREDIT_REQUEST. Receivers (Linux's and this engine) announce credit
    /// by themselves as they read, so an immediate request would only draw a second
    /// update: a request/update pair per few packets of a bulk transfer.
    pub credit_request_delay: Duration,
}

impl Config {
    /// Defaults modelled on Linux: 256 KiB buffers, 64 KiB packets, 2 s connect and 8 s
    /// close timeouts.
    pub fn new(local_cid: u64, peer_cid: u64) -> Self {
        Config {
            local_cid,
            peer_cid,
            buf_alloc: 256 * 1024,
            send_buf: 256 * 1024,
            max_payload: 64 * 1024,
            max_connections: 4096,
            connect_timeout: Duration::from_secs(2),
            close_timeout: Duration::from_secs(8),
            max_orphan_rsts: 1024,
            credit_request_delay: Duration::from_millis(100),
        }
    }

    /// Consumed bytes that justify a CREDIT_UPDATE on their own: a quarter of the
    /// buffer, at most 128 KiB.
    ///
    /// Why a quarter: the peer still has three quarters of its window to send into while
    /// the update travels. Why at most 128 KiB: with a 1 MiB buffer and 64 KiB packets,
    /// an update every 128 KiB moved 2-18 % more than one every 64 KiB over a socketpair
    /// mux (fewer small link writes and wake-ups); waiting until the peer had used half
    /// its window lost up to 25 % with one connection, the writer waiting on credit.
    fn credit_threshold(&self) -> u32 {
        (self.buf_alloc / 4).clamp(1, 128 * 1024)
    }

    /// Smallest RW worth sending when more data waits (silly-window avoidance).
    fn min_packet(&self) -> u32 {
        4096.min(self.max_payload)
    }
}

/// Handle to one connection. Carries a generation so a stale handle never reaches a
/// newer connection that reuses the slot.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct ConnId {
    index: u32,
    generation: u32,
}

/// What the application should know after feeding the engine.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Event {
    /// A peer asked to connect to a port we listen on: call [`Engine::accept`] or
    /// [`Engine::close`].
    Incoming {
        /// The new connection.
        id: ConnId,
        /// Our port it was addressed to.
        local_port: u32,
        /// The peer's port.
        peer_port: u32,
    },
    /// Our connect was accepted.
    Connected(ConnId),
    /// Data (or a message) arrived where there was none.
    Readable(ConnId),
    /// Room appeared in the send queue after a send was cut short.
    Writable(ConnId),
    /// The peer will send no more: reads end once the buffer drains.
    ReadClosed(ConnId),
    /// The peer will receive no more: writes fail, queued data was dropped.
    WriteClosed(ConnId),
    /// The connection is over; buffered data stays readable until [`Engine::close`].
    Closed(ConnId, CloseReason),
}

/// A packet to put on the wire.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Transmit {
    /// Header, with `len` equal to the payload length.
    pub header: Header,
    /// Payload (empty for control packets).
    pub payload: Bytes,
}

/// Why an incoming packet was dropped without touching any connection.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Error)]
pub enum PacketError {
    /// The packet is not for us.
    #[error("packet addressed to CID {got}, this end is CID {expected}")]
    WrongDestination {
        /// Our CID.
        expected: u64,
        /// The header's `dst_cid`.
        got: u64,
    },
    /// The packet is not from our peer.
    #[error("packet from CID {got}, the peer is CID {expected}")]
    WrongSource {
        /// The peer's CID.
        expected: u64,
        /// The header's `src_cid`.
        got: u64,
    },
    /// The header's `len` disagrees with the payload handed in.
    #[error("header announces {declared} payload bytes, {actual} given")]
    LengthMismatch {
        /// The header's `len`.
        declared: u32,
        /// Payload bytes given.
        actual: usize,
    },
    /// The payload exceeds the configured maximum.
    #[error("payload of {len} bytes exceeds the maximum of {max}")]
    TooLarge {
        /// Payload bytes.
        len: usize,
        /// The configured `max_payload`.
        max: u32,
    },
}

/// Why a connect or listen call failed.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Error)]
pub enum SetupError {
    /// The table already holds `max_connections` live connections.
    #[error("connection table full ({0} connections)")]
    TableFull(usize),
    /// The local port is taken by a listener or a connection to the same peer port.
    #[error("local port {0} is in use")]
    PortInUse(u32),
    /// Every ephemeral port is taken.
    #[error("no free local port")]
    NoFreePort,
}

/// Why a read or write on a connection failed.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Error)]
pub enum StreamError {
    /// Nothing to read yet, or no room to write: wait for the matching event.
    #[error("operation would block")]
    WouldBlock,
    /// The handle does not name a connection (released, or never existed).
    #[error("unknown connection")]
    UnknownConnection,
    /// Writing after our own or the peer's shutdown of this direction.
    #[error("connection shut down for writing")]
    BrokenPipe,
    /// The connection ended.
    #[error("{0}")]
    Closed(CloseReason),
    /// A seqpacket message larger than either side's buffer can ever hold.
    #[error("message of {len} bytes exceeds the limit of {max}")]
    MessageTooLarge {
        /// Message bytes.
        len: usize,
        /// The bound.
        max: usize,
    },
    /// A stream call on a seqpacket connection or the reverse.
    #[error("wrong socket type for this call: connection is {0:?}")]
    WrongType(SocketType),
}

/// Which directions [`Engine::shutdown`] closes.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Shutdown {
    /// We will read no more.
    Read,
    /// We will write no more (half-close); the peer reads EOF after our data.
    Write,
    /// Both.
    Both,
}

/// Counters for diagnostics.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Stats {
    /// Live connections (in the table).
    pub connections: usize,
    /// RSTs for unknown connections dropped because their queue was full.
    pub dropped_rsts: u64,
    /// Connections reset for breaking the protocol.
    pub violations: u64,
}

#[derive(Debug)]
struct Slot {
    generation: u32,
    conn: Option<Conn>,
}

/// The sans-IO virtio-vsock engine for one local CID talking to one peer CID.
///
/// Feed it packets with [`Engine::handle_packet`] and the time with
/// [`Engine::handle_timeout`]; take packets to send from [`Engine::poll_transmit`] and
/// happenings from [`Engine::poll_event`]. It does no I/O and reads no clock.
///
/// ```
/// use std::time::Instant;
/// use tether_vsock::{Config, Engine, Event, SocketType};
///
/// let now = Instant::now();
/// let mut host = Engine::new(Config::new(2, 3));
/// let mut guest = Engine::new(Config::new(3, 2));
/// guest.listen(1024, SocketType::Stream);
/// let id = host.connect(now, 1024, SocketType::Stream).unwrap();
/// host.send(id, b"ping").unwrap();
///
/// // Shuttle packets both ways until both sides are quiet.
/// loop {
///     let mut moved = false;
///     while let Some(t) = host.poll_transmit(u32::MAX) {
///         guest.handle_packet(now, &t.header, t.payload).unwrap();
///         moved = true;
///     }
///     while let Some(ev) = guest.poll_event() {
///         if let Event::Incoming { id, .. } = ev { guest.accept(id).unwrap(); }
///     }
///     while let Some(t) = guest.poll_transmit(u32::MAX) {
///         host.handle_packet(now, &t.header, t.payload).unwrap();
///         moved = true;
///     }
///     if !moved { break; }
/// }
/// let accepted = guest.connections().next().unwrap();
/// let mut buf = [0u8; 8];
/// assert_eq!(guest.recv(accepted, &mut buf), Ok(4));
/// assert_eq!(&buf[..4], b"ping");
/// ```
#[derive(Debug)]
pub struct Engine {
    config: Config,
    slots: Vec<Slot>,
    free: Vec<u32>,
    by_ports: HashMap<(u32, u32), u32>,
    listeners: HashMap<u32, SocketType>,
    accept_any: Option<SocketType>,
    next_port: u32,
    ctrl_queue: VecDeque<ConnId>,
    data_queue: VecDeque<ConnId>,
    orphan_rsts: VecDeque<Header>,
    timers: BTreeSet<(Instant, ConnId)>,
    /// When starved senders ask for credit (see [`Config::credit_request_delay`]).
    credit_timers: BTreeSet<(Instant, ConnId)>,
    /// The latest time the caller passed in.
    now: Option<Instant>,
    events: VecDeque<Event>,
    stats: Stats,
}

impl Engine {
    /// A new engine with no connections and no listeners.
    pub fn new(config: Config) -> Self {
        Engine {
            config,
            slots: Vec::new(),
            free: Vec::new(),
            by_ports: HashMap::new(),
            listeners: HashMap::new(),
            accept_any: None,
            next_port: EPHEMERAL_PORT_START,
            ctrl_queue: VecDeque::new(),
            data_queue: VecDeque::new(),
            orphan_rsts: VecDeque::new(),
            timers: BTreeSet::new(),
            credit_timers: BTreeSet::new(),
            now: None,
            events: VecDeque::new(),
            stats: Stats::default(),
        }
    }

    /// The configuration this engine runs with.
    pub fn config(&self) -> &Config {
        &self.config
    }

    /// Counters for diagnostics.
    pub fn stats(&self) -> Stats {
        Stats {
            connections: self.by_ports.len(),
            ..self.stats
        }
    }

    /// Accepts REQUESTs of `kind` to `port`; each raises [`Event::Incoming`].
    pub fn listen(&mut self, port: u32, kind: SocketType) {
        self.listeners.insert(port, kind);
    }

    /// Stops accepting REQUESTs to `port`; established connections are untouched.
    pub fn unlisten(&mut self, port: u32) {
        self.listeners.remove(&port);
    }

    /// Treats every port as listening for `kind` (a device backend that decides per
    /// connection), or stops doing so with `None`.
    pub fn listen_any(&mut self, kind: Option<SocketType>) {
        self.accept_any = kind;
    }

    /// Handles of every connection the application still holds, in slot order.
    pub fn connections(&self) -> impl Iterator<Item = ConnId> + '_ {
        self.slots.iter().enumerate().filter_map(|(i, s)| {
            s.conn.as_ref().filter(|c| !c.released).map(|_| ConnId {
                index: i as u32,
                generation: s.generation,
            })
        })
    }

    /// `(local port, peer port)` of a connection.
    pub fn ports(&self, id: ConnId) -> Option<(u32, u32)> {
        self.held(id).map(|c| (c.local_port, c.peer_port))
    }

    /// Opens a connection from a fresh ephemeral port to the peer's `peer_port`.
    ///
    /// Data may be sent at once; it is queued until the peer accepts.
    pub fn connect(
        &mut self,
        now: Instant,
        peer_port: u32,
        kind: SocketType,
    ) -> Result<ConnId, SetupError> {
        let local_port = self.pick_ephemeral(peer_port)?;
        self.connect_from(now, local_port, peer_port, kind)
    }

    /// Opens a connection from an explicit local port.
    pub fn connect_from(
        &mut self,
        now: Instant,
        local_port: u32,
        peer_port: u32,
        kind: SocketType,
    ) -> Result<ConnId, SetupError> {
        self.tick(now);
        if self.by_ports.contains_key(&(local_port, peer_port)) {
            return Err(SetupError::PortInUse(local_port));
        }
        self.check_room()?;
        let conn = Conn::new(
            local_port,
            peer_port,
            kind,
            Phase::Connecting,
            self.config.buf_alloc,
        );
        let id = self.insert(conn);
        self.set_deadline(id, Some(now + self.config.connect_timeout));
        self.owe(id, owed::REQUEST);
        Ok(id)
    }

    /// Accepts an [`Event::Incoming`] connection: RESPONSE goes out, data may flow.
    pub fn accept(&mut self, id: ConnId) -> Result<(), StreamError> {
        let conn = self.held_mut(id).ok_or(StreamError::UnknownConnection)?;
        match conn.phase {
            Phase::Incoming => {}
            Phase::Dead(reason) => return Err(StreamError::Closed(reason)),
            _ => return Ok(()),
        }
        conn.phase = Phase::Established;
        self.set_deadline(id, None);
        self.owe(id, owed::RESPONSE);
        Ok(())
    }

    /// Queues stream bytes; returns how many were taken (fewer than given when the send
    /// queue is full, then [`Event::Writable`] follows once room appears).
    pub fn send(&mut self, id: ConnId, data: &[u8]) -> Result<usize, StreamError> {
        let room = self.send_room(id, SocketType::Stream)?;
        let n = room.min(data.len());
        self.enqueue(
            id,
            Bytes::copy_from_slice(&data[..n]),
            data.len(),
            false,
            false,
        )
    }

    /// Queues stream bytes without copying; returns how many were taken.
    pub fn send_bytes(&mut self, id: ConnId, mut data: Bytes) -> Result<usize, StreamError> {
        let room = self.send_room(id, SocketType::Stream)?;
        let wanted = data.len();
        data.truncate(room);
        self.enqueue(id, data, wanted, false, false)
    }

    /// Sends stream bytes at once, bypassing the send queue: when nothing is queued on
    /// this connection and the peer has credit, returns the RW header for the first `n`
    /// bytes of `len` (credit already taken). The caller must put that header and those
    /// bytes on the wire next, ahead of any later [`Engine::poll_transmit`] packet.
    /// `Ok(None)` means use [`Engine::send`] instead.
    ///
    /// This lets a driver write the application's buffer straight to the link, saving
    /// the copy into the queue when the link is idle.
    pub fn send_now(
        &mut self,
        id: ConnId,
        len: usize,
    ) -> Result<Option<(Header, usize)>, StreamError> {
        self.send_room(id, SocketType::Stream)?;
        let (max_payload, min_packet) = (self.config.max_payload, self.config.min_packet());
        let conn = self.held_mut(id).ok_or(StreamError::UnknownConnection)?;
        // An accepted connection's RESPONSE must reach the peer before its first RW, and
        // the caller writes this RW ahead of whatever `poll_transmit` still holds.
        let response_owed = conn.owed & owed::RESPONSE != 0;
        if len == 0 || conn.phase != Phase::Established || !conn.send.is_empty() || response_owed {
            return Ok(None);
        }
        let want = len.min(max_payload as usize) as u32;
        let useful = min_packet.min(want).min(conn.tx.peer_buf_alloc / 4).max(1);
        let credit = conn.tx.available();
        if credit < useful {
            return Ok(None);
        }
        let n = want.min(credit);
        conn.tx.consume(n);
        Ok(Some((self.header_for(id, Op::Rw, 0, n), n as usize)))
    }

    /// Registers a writer that [`Engine::send_now`] turned away and that waits instead of
    /// copying its bytes into the send queue, as a socket writer waits for room:
    /// [`Event::Writable`] follows once the peer's credit moves or queued bytes leave.
    /// A writer short of credit asks for it after [`Config::credit_request_delay`], as
    /// queued bytes do, so an update that never comes cannot leave it waiting for ever.
    pub fn wait_writable(&mut self, id: ConnId) -> Result<(), StreamError> {
        self.send_room(id, SocketType::Stream)?;
        let min_packet = self.config.min_packet();
        let conn = self.held_mut(id).ok_or(StreamError::UnknownConnection)?;
        conn.write_blocked = true;
        conn.direct_waiting = true;
        if conn.direct_starved(min_packet) && !conn.credit_requested {
            conn.credit_requested = true;
            self.arm_credit_request(id);
        }
        Ok(())
    }

    /// Queues one seqpacket message, whole or not at all. Before the peer accepts, this
    /// is [`StreamError::WouldBlock`] (the peer's buffer size, which bounds a message, is
    /// not known yet) and [`Event::Writable`] follows [`Event::Connected`].
    pub fn send_message(&mut self, id: ConnId, data: Bytes, eor: bool) -> Result<(), StreamError> {
        let room = self.send_room(id, SocketType::SeqPacket)?;
        let send_buf = self.config.send_buf as usize;
        let conn = self.held_mut(id).ok_or(StreamError::UnknownConnection)?;
        if conn.phase != Phase::Established {
            // Until RESPONSE tells the peer's buffer size, a message might never fit it and
            // would stall the connection unseen; wait for Writable, sent on connect.
            conn.write_blocked = true;
            return Err(StreamError::WouldBlock);
        }
        let max = send_buf.min(conn.tx.peer_buf_alloc as usize);
        if data.len() > max {
            return Err(StreamError::MessageTooLarge {
                len: data.len(),
                max,
            });
        }
        if data.len() > room {
            self.conn_mut(id).expect("checked").write_blocked = true;
            return Err(StreamError::WouldBlock);
        }
        let len = data.len();
        self.enqueue(id, data, len, true, eor).map(|_| ())
    }

    /// Copies received stream bytes into `buf`. `Ok(0)` means end of stream (the peer
    /// shut its sending side, or we shut reading, and everything was read).
    pub fn recv(&mut self, id: ConnId, buf: &mut [u8]) -> Result<usize, StreamError> {
        self.read_with(id, SocketType::Stream, |conn| {
            match conn.recv.read_into(buf) {
                0 if !buf.is_empty() => None,
                n => Some(n),
            }
        })
        .map(|n| n.unwrap_or(0))
    }

    /// Takes up to `max` received stream bytes without copying; an empty `Bytes` means
    /// end of stream.
    pub fn recv_bytes(&mut self, id: ConnId, max: usize) -> Result<Bytes, StreamError> {
        self.read_with(id, SocketType::Stream, |conn| conn.recv.read_bytes(max))
            .map(Option::unwrap_or_default)
    }

    /// Takes the next whole seqpacket message; `Ok(None)` means end of stream.
    pub fn recv_message(&mut self, id: ConnId) -> Result<Option<Message>, StreamError> {
        self.read_with(id, SocketType::SeqPacket, |conn| conn.recv.read_message())
    }

    /// Bytes (or message bytes) buffered for reading.
    pub fn readable_len(&self, id: ConnId) -> usize {
        self.held(id).map_or(0, |c| c.recv.len())
    }

    /// Stream bytes not yet consumed by the peer's reader, as far as its latest packet
    /// tells: those queued here plus those sent and unacknowledged.
    pub fn unconsumed_len(&self, id: ConnId) -> usize {
        self.held(id)
            .map_or(0, |c| c.send.len() + c.tx.in_flight() as usize)
    }

    /// Whether bytes are queued on this connection that the peer has credit for, so the
    /// next [`Engine::poll_transmit`] can send them: they wait only for the link.
    pub fn queued_sendable(&self, id: ConnId) -> bool {
        let (max_payload, min_packet) = (self.config.max_payload, self.config.min_packet());
        self.held(id)
            .is_some_and(|c| c.sendable(max_payload, min_packet).is_some_and(|n| n > 0))
    }

    /// Bytes queued for sending and not yet handed to [`Engine::poll_transmit`].
    pub fn send_queue_len(&self, id: ConnId) -> usize {
        self.held(id).map_or(0, |c| c.send.len())
    }

    /// Closes one or both directions. Closing `Write` sends SHUTDOWN(SEND) once every
    /// queued byte has gone out; the other direction keeps flowing.
    pub fn shutdown(&mut self, id: ConnId, how: Shutdown) -> Result<(), StreamError> {
        let bits = match how {
            Shutdown::Read => shutdown::RCV,
            Shutdown::Write => shutdown::SEND,
            Shutdown::Both => shutdown::BOTH,
        };
        let conn = self.held_mut(id).ok_or(StreamError::UnknownConnection)?;
        if let Phase::Dead(reason) = conn.phase {
            return Err(StreamError::Closed(reason));
        }
        if conn.local_shut & bits == bits {
            return Ok(());
        }
        conn.local_shut |= bits;
        if bits & shutdown::RCV != 0 {
            conn.discard_received();
        }
        self.owe(id, owed::SHUTDOWN);
        Ok(())
    }

    /// Releases the handle. A live connection flushes its queued data, sends SHUTDOWN
    /// both ways and waits up to the close timeout for the peer's RST before sending its
    /// own. An incoming one not yet accepted is refused with RST.
    pub fn close(&mut self, now: Instant, id: ConnId) {
        self.tick(now);
        let close_timeout = self.config.close_timeout;
        let Some(conn) = self.conn_mut(id) else {
            return;
        };
        if conn.released {
            return;
        }
        conn.released = true;
        conn.discard_received();
        match conn.phase {
            Phase::Dead(_) => self.remove(id),
            Phase::Incoming | Phase::Connecting => self.reset(id, None),
            Phase::Established if conn.peer_shut == shutdown::BOTH => self.reset(id, None),
            Phase::Established | Phase::Closing => {
                conn.phase = Phase::Closing;
                conn.local_shut = shutdown::BOTH;
                self.set_deadline(id, Some(now + close_timeout));
                self.owe(id, owed::SHUTDOWN);
            }
        }
    }

    /// Ends every connection at once without a word on the wire (the link went away, or
    /// the transport was reset); each held one gets [`Event::Closed`] with `reason`.
    /// Listeners stay.
    pub fn reset_all(&mut self, reason: CloseReason) {
        let ids: Vec<ConnId> = self.live_ids().collect();
        for id in ids {
            self.kill(id, reason);
        }
        self.orphan_rsts.clear();
        self.ctrl_queue.clear();
        self.data_queue.clear();
    }

    /// Whether [`Engine::poll_transmit`] may have a packet now (a cheap hint for waking
    /// a writer; it can be wrong only towards `true`).
    pub fn has_transmit(&self) -> bool {
        !self.orphan_rsts.is_empty() || !self.ctrl_queue.is_empty() || !self.data_queue.is_empty()
    }

    /// The next happening to report, if any.
    pub fn poll_event(&mut self) -> Option<Event> {
        self.events.pop_front()
    }

    /// The earliest time [`Engine::handle_timeout`] has work to do.
    pub fn poll_timeout(&self) -> Option<Instant> {
        let first = |set: &BTreeSet<(Instant, ConnId)>| set.first().map(|(t, _)| *t);
        match (first(&self.timers), first(&self.credit_timers)) {
            (Some(a), Some(b)) => Some(a.min(b)),
            (a, b) => a.or(b),
        }
    }

    /// Runs every timer due at `now`: connects give up, closes send their RST, senders
    /// still starved of credit ask for it.
    pub fn handle_timeout(&mut self, now: Instant) {
        self.tick(now);
        self.ask_for_credit(now);
        while let Some((_, id)) = pop_due(&mut self.timers, now) {
            let Some(conn) = self.conn_mut(id) else {
                continue;
            };
            conn.deadline = None;
            match conn.phase {
                Phase::Connecting | Phase::Incoming => self.reset(id, Some(CloseReason::TimedOut)),
                Phase::Closing => self.reset(id, None),
                Phase::Established | Phase::Dead(_) => {}
            }
        }
    }

    /// Sends the CREDIT_REQUESTs due at `now` for connections still starved.
    fn ask_for_credit(&mut self, now: Instant) {
        let (max_payload, min_packet) = (self.config.max_payload, self.config.min_packet());
        while let Some((when, id)) = pop_due(&mut self.credit_timers, now) {
            let Some(conn) = self.conn_mut(id) else {
                continue;
            };
            if conn.credit_request_at != Some(when) {
                continue;
            }
            conn.credit_request_at = None;
            let queued_starved =
                conn.sendable(max_payload, min_packet).is_none() && !conn.send.is_empty();
            if queued_starved || conn.direct_starved(min_packet) {
                self.owe(id, owed::CREDIT_REQUEST);
            }
        }
    }

    /// Remembers the caller's latest time: the base for timers armed while transmitting.
    fn tick(&mut self, now: Instant) {
        self.now = Some(self.now.map_or(now, |t| t.max(now)));
    }

    /// Feeds one received packet. Errors mean the packet was dropped as not belonging to
    /// this engine; protocol mistakes inside a connection reset that connection instead.
    pub fn handle_packet(
        &mut self,
        now: Instant,
        hdr: &Header,
        payload: Bytes,
    ) -> Result<(), PacketError> {
        self.tick(now);
        self.check_packet(hdr, &payload)?;
        let live = self.lookup(hdr.dst_port, hdr.src_port);
        let (Some(op), Some(kind)) = (hdr.op(), hdr.socket_type()) else {
            // Our RST ends the peer's side of a live connection, so ours must end too.
            match live {
                Some(id) if hdr.op != Op::Rst.to_u16() => {
                    self.violation(id, "undefined op or socket type")
                }
                _ => self.refuse(hdr, "undefined op or socket type"),
            }
            return Ok(());
        };
        let Some(id) = live else {
            self.handle_unknown(now, hdr, op, kind);
            return Ok(());
        };
        let conn = self.conn_mut(id).expect("table entry is live");
        if conn.kind != kind {
            // An RST of another type is not for this connection (a stale one, most likely)
            // and must not be answered: drop it.
            if op != Op::Rst {
                self.violation(id, "socket type changed mid-connection");
            }
            return Ok(());
        }
        if op != Op::Request {
            let before = conn.tx;
            conn.tx.update(hdr.buf_alloc, hdr.fwd_cnt);
            // Ask again only once the peer's numbers have moved, so an unhelpful answer
            // does not start a CREDIT_REQUEST / CREDIT_UPDATE ping-pong.
            if conn.tx != before {
                conn.credit_requested = false;
                // A closed handle has no writer left to tell.
                let waiting = std::mem::take(&mut conn.direct_waiting) && !conn.released;
                if waiting {
                    conn.write_blocked = false;
                }
                if let Some(at) = conn.credit_request_at.take() {
                    self.credit_timers.remove(&(at, id));
                }
                if waiting {
                    self.events.push_back(Event::Writable(id));
                }
            }
        }
        match op {
            Op::Request => self.violation(id, "REQUEST on an existing connection"),
            Op::Response => self.on_response(id),
            Op::Rst => self.on_rst(id),
            Op::Shutdown => self.on_shutdown(id, hdr.flags),
            Op::Rw => self.on_rw(id, hdr.flags, payload),
            Op::CreditUpdate => {}
            Op::CreditRequest => self.owe(id, owed::CREDIT_UPDATE),
        }
        self.schedule(id);
        Ok(())
    }

    /// The next packet to send, at most `max_payload` bytes of payload (a device passes
    /// the room in the guest's receive buffer; with 0 only control packets go). Control
    /// packets go first; data is taken round-robin, one packet per connection per turn, so
    /// no connection starves another. `None` means nothing is owed until the engine is fed
    /// again.
    pub fn poll_transmit(&mut self, max_payload: u32) -> Option<Transmit> {
        if let Some(header) = self.orphan_rsts.pop_front() {
            return Some(Transmit {
                header,
                payload: Bytes::new(),
            });
        }
        if let Some(t) = self.poll_control() {
            return Some(t);
        }
        let limit = max_payload.min(self.config.max_payload);
        if limit > 0 {
            while let Some(id) = self.data_queue.pop_front() {
                let Some(conn) = self.conn_mut(id) else {
                    continue;
                };
                conn.in_data_queue = false;
                if let Some(t) = self.next_data(id, limit) {
                    self.schedule(id);
                    return Some(t);
                }
                self.schedule(id);
            }
        }
        // A connection found starved just now owes a CREDIT_REQUEST; returning `None`
        // instead would leave it unsent until something else woke the caller.
        self.poll_control()
    }

    fn poll_control(&mut self) -> Option<Transmit> {
        while let Some(id) = self.ctrl_queue.pop_front() {
            let Some(conn) = self.conn_mut(id) else {
                continue;
            };
            conn.in_ctrl_queue = false;
            if let Some(t) = self.next_control(id) {
                self.schedule(id);
                return Some(t);
            }
        }
        None
    }

    // ---- packet handlers ----

    fn check_packet(&self, hdr: &Header, payload: &Bytes) -> Result<(), PacketError> {
        if hdr.dst_cid != self.config.local_cid {
            return Err(PacketError::WrongDestination {
                expected: self.config.local_cid,
                got: hdr.dst_cid,
            });
        }
        if hdr.src_cid != self.config.peer_cid {
            return Err(PacketError::WrongSource {
                expected: self.config.peer_cid,
                got: hdr.src_cid,
            });
        }
        if hdr.len as usize != payload.len() {
            return Err(PacketError::LengthMismatch {
                declared: hdr.len,
                actual: payload.len(),
            });
        }
        if payload.len() > self.config.max_payload as usize {
            return Err(PacketError::TooLarge {
                len: payload.len(),
                max: self.config.max_payload,
            });
        }
        Ok(())
    }

    fn handle_unknown(&mut self, now: Instant, hdr: &Header, op: Op, kind: SocketType) {
        if op != Op::Request {
            self.refuse(hdr, "no such connection");
            return;
        }
        let listening = self
            .listeners
            .get(&hdr.dst_port)
            .copied()
            .or(self.accept_any);
        if listening != Some(kind) || self.check_room().is_err() {
            self.refuse(hdr, "nobody listens or table full");
            return;
        }
        let mut conn = Conn::new(
            hdr.dst_port,
            hdr.src_port,
            kind,
            Phase::Incoming,
            self.config.buf_alloc,
        );
        conn.tx.update(hdr.buf_alloc, hdr.fwd_cnt);
        let id = self.insert(conn);
        self.set_deadline(id, Some(now + self.config.connect_timeout));
        self.events.push_back(Event::Incoming {
            id,
            local_port: hdr.dst_port,
            peer_port: hdr.src_port,
        });
    }

    fn on_response(&mut self, id: ConnId) {
        let conn = self.conn_mut(id).expect("live");
        if conn.phase != Phase::Connecting {
            self.violation(id, "RESPONSE outside connect");
            return;
        }
        conn.phase = Phase::Established;
        conn.owed &= !owed::REQUEST;
        let blocked = std::mem::take(&mut conn.write_blocked);
        self.set_deadline(id, None);
        self.events.push_back(Event::Connected(id));
        if blocked {
            self.events.push_back(Event::Writable(id));
        }
    }

    fn on_rst(&mut self, id: ConnId) {
        let conn = self.conn_mut(id).expect("live");
        // Our SHUTDOWN of both directions already on the wire makes this RST the expected
        // end of the close handshake, whether we got there by close() or shutdown(Both).
        let we_shut_both = conn.local_shut == shutdown::BOTH && conn.owed & owed::SHUTDOWN == 0;
        let reason = match conn.phase {
            Phase::Connecting => CloseReason::Refused,
            Phase::Closing => CloseReason::Graceful,
            _ if conn.peer_shut == shutdown::BOTH || we_shut_both => CloseReason::Graceful,
            _ => CloseReason::Reset,
        };
        self.kill(id, reason);
    }

    fn on_shutdown(&mut self, id: ConnId, flags: u32) {
        let conn = self.conn_mut(id).expect("live");
        if !conn.is_open() {
            self.violation(id, "SHUTDOWN before the connection was established");
            return;
        }
        let new = flags & shutdown::BOTH & !conn.peer_shut;
        conn.peer_shut |= new;
        // A released handle hears nothing more: its id may mean nothing to the caller now.
        let tell = !conn.released;
        if new & shutdown::RCV != 0 {
            conn.send.clear();
            if tell {
                self.events.push_back(Event::WriteClosed(id));
            }
        }
        if new & shutdown::SEND != 0 && tell {
            self.events.push_back(Event::ReadClosed(id));
        }
        self.finish_if_done(id);
    }

    fn on_rw(&mut self, id: ConnId, flags: u32, payload: Bytes) {
        let conn = self.conn_mut(id).expect("live");
        if !conn.is_open() {
            self.violation(id, "RW before the connection was established");
            return;
        }
        if conn.peer_shut & shutdown::SEND != 0 {
            self.violation(id, "RW after the peer's SHUTDOWN(SEND)");
            return;
        }
        let len = payload.len() as u32;
        if !conn.rx.receive(len) {
            self.violation(id, "RW beyond the credit we granted");
            return;
        }
        if conn.released || conn.local_shut & shutdown::RCV != 0 {
            // Nobody will read it: consume at once so the peer's credit keeps moving.
            conn.rx.consume(len);
            self.maybe_credit_update(id);
            return;
        }
        let was_readable = conn.recv.readable();
        match conn.kind {
            SocketType::Stream => conn.recv.push_stream(payload),
            SocketType::SeqPacket => {
                conn.recv.push_fragment(&payload, flags);
            }
        }
        let seqpacket = conn.kind == SocketType::SeqPacket;
        if !was_readable && conn.recv.readable() {
            self.events.push_back(Event::Readable(id));
        }
        if seqpacket {
            // A fragment the reader cannot take until the rest comes: the room freed by
            // earlier reads may be what the sender waits for (see maybe_credit_update).
            self.maybe_credit_update(id);
        }
    }

    /// When the peer has shut both directions and nothing is left for the reader, the
    /// close handshake ends with our RST (as Linux does).
    fn finish_if_done(&mut self, id: ConnId) {
        let Some(conn) = self.conn(id) else {
            return;
        };
        if conn.peer_shut == shutdown::BOTH
            && conn.is_open()
            && (conn.released || conn.recv.is_empty())
        {
            self.reset(id, Some(CloseReason::Graceful));
        }
    }

    // ---- transmit ----

    fn next_control(&mut self, id: ConnId) -> Option<Transmit> {
        let conn = self.conn_mut(id)?;
        let (op, flags, bit) = if conn.owed & owed::REQUEST != 0 {
            (Op::Request, 0, owed::REQUEST)
        } else if conn.owed & owed::RESPONSE != 0 {
            (Op::Response, 0, owed::RESPONSE)
        } else if conn.shutdown_ready() && conn.is_open() {
            (Op::Shutdown, conn.local_shut, owed::SHUTDOWN)
        } else if conn.owed & owed::CREDIT_UPDATE != 0 && conn.is_open() {
            (Op::CreditUpdate, 0, owed::CREDIT_UPDATE)
        } else if conn.owed & owed::CREDIT_REQUEST != 0 && conn.is_open() {
            (Op::CreditRequest, 0, owed::CREDIT_REQUEST)
        } else {
            return None;
        };
        conn.owed &= !bit;
        if op == Op::Response && conn.direct_waiting && !conn.released {
            // A direct writer held back until the RESPONSE went (see `send_now`).
            conn.direct_waiting = false;
            conn.write_blocked = false;
            self.events.push_back(Event::Writable(id));
        }
        let header = self.header_for(id, op, flags, 0);
        Some(Transmit {
            header,
            payload: Bytes::new(),
        })
    }

    fn next_data(&mut self, id: ConnId, limit: u32) -> Option<Transmit> {
        let (min_packet, send_buf) = (self.config.min_packet(), self.config.send_buf);
        let conn = self.conn_mut(id)?;
        let Some(n) = conn.sendable(limit, min_packet) else {
            if !conn.send.is_empty() && conn.is_open() && !conn.credit_requested {
                conn.credit_requested = true;
                self.arm_credit_request(id);
            }
            return None;
        };
        let piece = conn.send.take(n as usize).expect("sendable implies data");
        conn.tx.consume(piece.data.len() as u32);
        if conn.write_blocked && !conn.released && (conn.send.len() as u32) < send_buf {
            conn.write_blocked = false;
            conn.direct_waiting = false;
            self.events.push_back(Event::Writable(id));
        }
        let len = piece.data.len() as u32;
        let header = self.header_for(id, Op::Rw, piece.flags, len);
        Some(Transmit {
            header,
            payload: piece.data,
        })
    }

    /// Builds a header for a live connection, stamping our current credit into it.
    fn header_for(&mut self, id: ConnId, op: Op, flags: u32, len: u32) -> Header {
        let (local_cid, peer_cid) = (self.config.local_cid, self.config.peer_cid);
        let conn = self.conn_mut(id).expect("live");
        conn.rx.advertised();
        conn.owed &= !owed::CREDIT_UPDATE;
        Header {
            src_cid: local_cid,
            dst_cid: peer_cid,
            src_port: conn.local_port,
            dst_port: conn.peer_port,
            len,
            type_: conn.kind.to_u16(),
            op: op.to_u16(),
            flags,
            buf_alloc: conn.rx.buf_alloc,
            fwd_cnt: conn.rx.fwd_cnt,
        }
    }

    /// Queues an RST answering a packet that has no connection. Never answers an RST.
    fn refuse(&mut self, hdr: &Header, _why: &'static str) {
        if hdr.op == Op::Rst.to_u16() {
            return;
        }
        if self.orphan_rsts.len() >= self.config.max_orphan_rsts {
            self.stats.dropped_rsts += 1;
            return;
        }
        self.orphan_rsts.push_back(Header {
            src_cid: self.config.local_cid,
            dst_cid: self.config.peer_cid,
            src_port: hdr.dst_port,
            dst_port: hdr.src_port,
            len: 0,
            type_: hdr.type_,
            op: Op::Rst.to_u16(),
            flags: 0,
            buf_alloc: 0,
            fwd_cnt: 0,
        });
    }

    // ---- connection bookkeeping ----

    fn violation(&mut self, id: ConnId, what: &'static str) {
        self.stats.violations += 1;
        self.reset(id, Some(CloseReason::ProtocolViolation(what)));
    }

    /// Sends RST for a connection and ends it; `reason` is reported to a holder (none
    /// when the application already released it).
    fn reset(&mut self, id: ConnId, reason: Option<CloseReason>) {
        let header = self.header_for(id, Op::Rst, 0, 0);
        if self.orphan_rsts.len() < self.config.max_orphan_rsts.max(self.config.max_connections) {
            self.orphan_rsts.push_back(header);
        } else {
            self.stats.dropped_rsts += 1;
        }
        self.kill(id, reason.unwrap_or(CloseReason::Graceful));
    }

    /// Takes a connection off the wire: out of the table and queues. A released one is
    /// freed; a held one stays readable until [`Engine::close`].
    fn kill(&mut self, id: ConnId, reason: CloseReason) {
        self.set_deadline(id, None);
        let conn = self.conn_mut(id).expect("live");
        let key = (conn.local_port, conn.peer_port);
        conn.phase = Phase::Dead(reason);
        conn.owed = 0;
        conn.send.clear();
        let released = conn.released;
        self.by_ports.remove(&key);
        if released {
            self.remove(id);
        } else {
            self.events.push_back(Event::Closed(id, reason));
        }
    }

    fn remove(&mut self, id: ConnId) {
        self.set_deadline(id, None);
        let slot = &mut self.slots[id.index as usize];
        if let Some(conn) = slot.conn.take() {
            if !matches!(conn.phase, Phase::Dead(_)) {
                self.by_ports.remove(&(conn.local_port, conn.peer_port));
            }
            slot.generation = slot.generation.wrapping_add(1);
            self.free.push(id.index);
        }
    }

    fn insert(&mut self, conn: Conn) -> ConnId {
        let key = (conn.local_port, conn.peer_port);
        let index = match self.free.pop() {
            Some(i) => i,
            None => {
                self.slots.push(Slot {
                    generation: 0,
                    conn: None,
                });
                (self.slots.len() - 1) as u32
            }
        };
        let slot = &mut self.slots[index as usize];
        slot.conn = Some(conn);
        self.by_ports.insert(key, index);
        ConnId {
            index,
            generation: slot.generation,
        }
    }

    fn lookup(&self, local_port: u32, peer_port: u32) -> Option<ConnId> {
        let index = *self.by_ports.get(&(local_port, peer_port))?;
        Some(ConnId {
            index,
            generation: self.slots[index as usize].generation,
        })
    }

    fn live_ids(&self) -> impl Iterator<Item = ConnId> + '_ {
        self.by_ports.values().map(|&index| ConnId {
            index,
            generation: self.slots[index as usize].generation,
        })
    }

    fn conn(&self, id: ConnId) -> Option<&Conn> {
        let slot = self.slots.get(id.index as usize)?;
        (slot.generation == id.generation).then_some(slot.conn.as_ref()?)
    }

    fn conn_mut(&mut self, id: ConnId) -> Option<&mut Conn> {
        let slot = self.slots.get_mut(id.index as usize)?;
        if slot.generation != id.generation {
            return None;
        }
        slot.conn.as_mut()
    }

    /// A connection the application still holds: once released, its handle names nothing
    /// for the public calls, even while the close handshake runs on.
    fn held(&self, id: ConnId) -> Option<&Conn> {
        self.conn(id).filter(|c| !c.released)
    }

    fn held_mut(&mut self, id: ConnId) -> Option<&mut Conn> {
        self.conn_mut(id).filter(|c| !c.released)
    }

    fn check_room(&self) -> Result<(), SetupError> {
        if self.by_ports.len() >= self.config.max_connections {
            return Err(SetupError::TableFull(self.config.max_connections));
        }
        Ok(())
    }

    fn pick_ephemeral(&mut self, peer_port: u32) -> Result<u32, SetupError> {
        let span = u32::MAX - EPHEMERAL_PORT_START;
        for _ in 0..span.min(self.by_ports.len() as u32 + self.listeners.len() as u32 + 1) {
            let port = self.next_port;
            self.next_port = if port == u32::MAX {
                EPHEMERAL_PORT_START
            } else {
                port + 1
            };
            if !self.listeners.contains_key(&port)
                && !self.by_ports.contains_key(&(port, peer_port))
            {
                return Ok(port);
            }
        }
        Err(SetupError::NoFreePort)
    }

    fn set_deadline(&mut self, id: ConnId, when: Option<Instant>) {
        let Some(conn) = self.conn_mut(id) else {
            return;
        };
        let old = std::mem::replace(&mut conn.deadline, when);
        if let Some(t) = old {
            self.timers.remove(&(t, id));
        }
        if let Some(t) = when {
            self.timers.insert((t, id));
        }
    }

    /// A CREDIT_REQUEST for `id` after the delay, unless the peer's credit moves first;
    /// at once when the engine has not been given a time yet.
    fn arm_credit_request(&mut self, id: ConnId) {
        let Some(now) = self.now else {
            if let Some(conn) = self.conn_mut(id) {
                conn.owed |= owed::CREDIT_REQUEST;
            }
            return;
        };
        let at = now + self.config.credit_request_delay;
        if let Some(conn) = self.conn_mut(id) {
            conn.credit_request_at = Some(at);
            self.credit_timers.insert((at, id));
        }
    }

    fn owe(&mut self, id: ConnId, bit: u8) {
        if let Some(conn) = self.conn_mut(id) {
            conn.owed |= bit;
        }
        self.schedule(id);
    }

    /// Puts a connection on the queues its pending work calls for.
    fn schedule(&mut self, id: ConnId) {
        let (max_payload, min_packet) = (self.config.max_payload, self.config.min_packet());
        let Some(conn) = self.conn_mut(id) else {
            return;
        };
        if matches!(conn.phase, Phase::Dead(_)) {
            return;
        }
        if !conn.in_ctrl_queue && conn.ctrl_ready() {
            conn.in_ctrl_queue = true;
            self.ctrl_queue.push_back(id);
        }
        let conn = self.conn_mut(id).expect("live");
        let wants_data = !conn.send.is_empty() && conn.is_open();
        let starved = wants_data && conn.sendable(max_payload, min_packet).is_none();
        if wants_data && !conn.in_data_queue && (!starved || !conn.credit_requested) {
            conn.in_data_queue = true;
            self.data_queue.push_back(id);
        }
    }

    fn maybe_credit_update(&mut self, id: ConnId) {
        let threshold = self.config.credit_threshold();
        let Some(conn) = self.conn_mut(id) else {
            return;
        };
        // A reader holding only part of a seqpacket message can take nothing more until the
        // sender finishes it, and the sender may be holding back on exactly the room this
        // read freed (it waits for a useful amount of credit, more than zero).
        let blocked_on_partial = !conn.recv.is_empty() && !conn.recv.readable();
        let unadvertised = conn.rx.fwd_cnt != conn.rx.last_advertised;
        if conn.is_open()
            && (conn.rx.update_worthwhile(threshold) || (blocked_on_partial && unadvertised))
        {
            self.owe(id, owed::CREDIT_UPDATE);
        }
    }

    fn send_room(&self, id: ConnId, kind: SocketType) -> Result<usize, StreamError> {
        let conn = self.held(id).ok_or(StreamError::UnknownConnection)?;
        if conn.kind != kind {
            return Err(StreamError::WrongType(conn.kind));
        }
        if let Phase::Dead(reason) = conn.phase {
            return Err(StreamError::Closed(reason));
        }
        if !conn.can_send() {
            return Err(StreamError::BrokenPipe);
        }
        Ok((self.config.send_buf as usize).saturating_sub(conn.send.len()))
    }

    fn enqueue(
        &mut self,
        id: ConnId,
        data: Bytes,
        wanted: usize,
        eom: bool,
        eor: bool,
    ) -> Result<usize, StreamError> {
        let n = data.len();
        let conn = self.conn_mut(id).expect("checked by send_room");
        if n < wanted || (n == 0 && wanted > 0) {
            conn.write_blocked = true;
        }
        if n == 0 && wanted > 0 {
            return Err(StreamError::WouldBlock);
        }
        if n > 0 || eom {
            conn.send.push(data, eom, eor);
        }
        self.schedule(id);
        Ok(n)
    }

    /// Shared body of the read calls: type check, end-of-stream and error rules, credit.
    fn read_with<T>(
        &mut self,
        id: ConnId,
        kind: SocketType,
        take: impl FnOnce(&mut Conn) -> Option<T>,
    ) -> Result<Option<T>, StreamError> {
        let conn = self.held_mut(id).ok_or(StreamError::UnknownConnection)?;
        if conn.kind != kind {
            return Err(StreamError::WrongType(conn.kind));
        }
        let before = conn.recv.len();
        if let Some(out) = take(conn) {
            let consumed = (before - conn.recv.len()) as u32;
            conn.rx.consume(consumed);
            self.maybe_credit_update(id);
            self.finish_if_done(id);
            return Ok(Some(out));
        }
        let ended = conn.peer_shut & shutdown::SEND != 0 || conn.local_shut & shutdown::RCV != 0;
        match conn.phase {
            Phase::Dead(CloseReason::Graceful) => Ok(None),
            Phase::Dead(reason) => Err(StreamError::Closed(reason)),
            _ if ended => Ok(None),
            _ => Err(StreamError::WouldBlock),
        }
    }
}
/// Takes the earliest timer of `set` if it is due at `now`.
fn pop_due(set: &mut BTreeSet<(Instant, ConnId)>, now: Instant) -> Option<(Instant, ConnId)> {
    set.first()
        .is_some_and(|&(when, _)| when <= now)
        .then(|| set.pop_first())?
}
