//! The device's state: the engine, the hybrid socket, the host streams and the timer.
//!
//! Everything runs on the one vhost-user worker thread: virtqueue kicks and host socket
//! readiness both end up here, so there is no locking between the two sides.

use crate::config::DeviceConfig;
use crate::host::{HostConn, Outcome, Phase, CHUNK};
use crate::virtq;
use nix::sys::socket::{connect, socket, AddressFamily, SockFlag, SockType, UnixAddr};
use std::collections::{BTreeSet, HashMap, HashSet};
use std::io;
use std::os::fd::{AsRawFd, OwnedFd, RawFd};
use std::os::unix::net::{UnixListener, UnixStream};
use std::time::Instant;
use tether_vsock::{CloseReason, ConnId, ConnIdMap, Engine, Event, SocketType};
use tracing::{debug, info, warn};
use vhost_user_backend::{VringRwLock, VringT};
use virtio_queue::{QueueOwnedT, QueueT};
use vm_memory::{GuestAddressSpace, GuestMemoryAtomic, GuestMemoryMmap};
use vmm_sys_util::epoll::{ControlOperation, Epoll, EpollEvent, EventSet};
use vmm_sys_util::timerfd::TimerFd;

const TOKEN_LISTENER: u64 = 0;
const TOKEN_TIMER: u64 = 1;
const FIRST_CONN_TOKEN: u64 = 2;

/// Counters for the log and for tests.
#[derive(Clone, Copy, Debug, Default)]
pub struct DeviceStats {
    /// Packets read from the TX queue.
    pub tx_packets: u64,
    /// TX chains dropped as malformed (short, truncated, oversize, undecodable).
    pub malformed: u64,
    /// TX packets the engine refused (wrong CID, length mismatch).
    pub rejected: u64,
    /// Packets written to the RX queue.
    pub rx_packets: u64,
    /// Host connections refused because the connection table was full.
    pub refused_full: u64,
    /// Host connections accepted only to be closed because the process was out of file
    /// descriptors.
    pub refused_no_fds: u64,
    /// RX buffers returned unused: smaller than a header, or outside guest memory.
    pub bad_rx_buffers: u64,
    /// Times a ring's avail index announced buffers that could not be taken.
    pub broken_rings: u64,
    /// Chains whose head index lies outside their ring, so they cannot be returned.
    pub bad_heads: u64,
}

/// The device's state, shared by vhost-user callbacks through one lock.
pub struct Device {
    config: DeviceConfig,
    engine: Engine,
    epoll: Epoll,
    timer: TimerFd,
    /// When the timer is set to fire; re-arming only on change saves a syscall per event.
    timer_at: Option<Instant>,
    /// Reused by every poll of the host sockets.
    events: Vec<EpollEvent>,
    listener: UnixListener,
    /// A descriptor held in reserve. When accept fails for want of descriptors, letting go
    /// of it makes room to accept and close the waiting client, which sees EOF at once
    /// instead of hanging, and the level-triggered listener stops waking the worker.
    spare_fd: Option<std::fs::File>,
    conns: HashMap<u64, HostConn>,
    by_id: ConnIdMap<u64>,
    line_deadlines: BTreeSet<(Instant, u64)>,
    /// Streams not reading until their queued bytes have gone to the guest.
    waiting: HashSet<u64>,
    next_token: u64,
    scratch: Vec<u8>,
    mem: Option<GuestMemoryAtomic<GuestMemoryMmap>>,
    stats: DeviceStats,
}

impl Device {
    /// Binds the hybrid socket and prepares the engine.
    pub fn new(config: DeviceConfig) -> io::Result<Self> {
        tether_transport::clear_stale_socket(&config.uds_path)?;
        let listener = UnixListener::bind(&config.uds_path)?;
        listener.set_nonblocking(true)?;
        let epoll = Epoll::new()?;
        let timer = TimerFd::new()?;
        epoll.ctl(
            ControlOperation::Add,
            listener.as_raw_fd(),
            EpollEvent::new(EventSet::IN, TOKEN_LISTENER),
        )?;
        epoll.ctl(
            ControlOperation::Add,
            timer.as_raw_fd(),
            EpollEvent::new(EventSet::IN, TOKEN_TIMER),
        )?;
        let mut engine = Engine::new(config.engine_config());
        engine.listen_any(Some(SocketType::Stream));
        Ok(Device {
            config,
            engine,
            epoll,
            timer,
            timer_at: None,
            events: vec![EpollEvent::default(); 64],
            listener,
            spare_fd: Some(std::fs::File::open("/dev/null")?),
            conns: HashMap::new(),
            by_id: ConnIdMap::default(),
            line_deadlines: BTreeSet::new(),
            waiting: HashSet::new(),
            next_token: FIRST_CONN_TOKEN,
            scratch: vec![0; CHUNK],
            mem: None,
            stats: DeviceStats::default(),
        })
    }

    /// The epoll fd gathering host-side readiness; the vhost-user worker watches it.
    pub fn epoll_fd(&self) -> RawFd {
        self.epoll.as_raw_fd()
    }

    /// Counters so far.
    pub fn stats(&self) -> DeviceStats {
        self.stats
    }

    /// The guest's memory changed (or appeared).
    pub fn set_memory(&mut self, mem: GuestMemoryAtomic<GuestMemoryMmap>) {
        self.mem = Some(mem);
    }

    /// The frontend went away: every connection of that guest ends, and its host
    /// streams are closed. The hybrid socket stays, so clients can wait for the next one.
    pub fn frontend_gone(&mut self) {
        self.engine.reset_all(CloseReason::EngineReset);
        self.drain_engine_events(Instant::now());
        let tokens: Vec<u64> = self
            .conns
            .iter()
            .filter(|(_, c)| c.id().is_some())
            .map(|(t, _)| *t)
            .collect();
        for token in tokens {
            self.drop_conn(token);
        }
        self.by_id.clear();
        self.mem = None;
        info!("frontend disconnected; connections reset");
    }

    /// Handles whatever the host side has ready, without blocking.
    pub fn poll_host(&mut self) {
        let mut events = std::mem::take(&mut self.events);
        loop {
            let n = match self.epoll.wait(0, &mut events) {
                Ok(n) => n,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(e) => {
                    warn!("epoll_wait on host sockets: {e}");
                    break;
                }
            };
            for event in &events[..n] {
                self.on_host_event(event.data(), event.event_set());
            }
            if n < events.len() {
                break;
            }
        }
        self.events = events;
        self.drain_engine_events(Instant::now());
    }

    fn on_host_event(&mut self, token: u64, set: EventSet) {
        let now = Instant::now();
        match token {
            TOKEN_LISTENER => self.accept_clients(now),
            TOKEN_TIMER => {
                let _ = self.timer.wait();
                self.timer_at = None;
                self.engine.handle_timeout(now);
                self.expire_lines(now);
            }
            token => self.on_stream_event(token, set, now),
        }
    }

    fn accept_clients(&mut self, now: Instant) {
        loop {
            match self.listener.accept() {
                Ok((stream, _)) => {
                    if stream.set_nonblocking(true).is_err() {
                        continue;
                    }
                    let deadline = now + self.config.handshake_timeout;
                    let token = self.insert(HostConn::new(
                        stream,
                        Phase::Line {
                            line: Default::default(),
                            deadline,
                        },
                    ));
                    self.line_deadlines.insert((deadline, token));
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => return,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(e) if is_out_of_fds(&e) && self.shed_client() => {
                    if self.stats.refused_no_fds.is_power_of_two() {
                        warn!(
                            "accept on {}: {e}; closing clients until descriptors free up \
                             ({} so far)",
                            self.config.uds_path.display(),
                            self.stats.refused_no_fds
                        );
                    }
                }
                Err(e) => {
                    // Leave the rest in the backlog for later.
                    warn!("accept on {}: {e}", self.config.uds_path.display());
                    return;
                }
            }
        }
    }

    /// Accepts one waiting client with the spare descriptor's slot and closes it at once.
    /// False when there is no spare or the accept still fails.
    fn shed_client(&mut self) -> bool {
        if self.spare_fd.take().is_none() {
            return false;
        }
        let shed = self.listener.accept().is_ok();
        if shed {
            self.stats.refused_no_fds += 1;
        }
        self.spare_fd = std::fs::File::open("/dev/null").ok();
        shed
    }

    fn on_stream_event(&mut self, token: u64, set: EventSet, now: Instant) {
        let Some(conn) = self.conns.get_mut(&token) else {
            return;
        };
        if matches!(conn.phase, Phase::Line { .. }) {
            self.read_line(token, now);
            return;
        }
        let mut outcome = Outcome::Live;
        if set.intersects(EventSet::IN | EventSet::HANG_UP | EventSet::ERROR) {
            outcome = conn.pump_in(&mut self.engine, &mut self.scratch);
        }
        if outcome == Outcome::Live && set.intersects(EventSet::OUT | EventSet::ERROR) {
            outcome = conn.pump_out(&mut self.engine);
        }
        self.settle(token, outcome, now);
    }

    /// Reads the CONNECT line one byte at a time, never past its newline.
    fn read_line(&mut self, token: u64, now: Instant) {
        let conn = self.conns.get_mut(&token).expect("caller checked");
        let Phase::Line { line, deadline } = &mut conn.phase else {
            return;
        };
        let deadline = *deadline;
        let mut byte = [0u8; 1];
        let result = loop {
            match io::Read::read(&mut &conn.stream, &mut byte) {
                Ok(0) => break Some(Err("closed before the CONNECT line ended".to_string())),
                Ok(_) => {
                    if let Some(parsed) = line.push(byte[0]) {
                        break Some(parsed.map_err(|e| e.to_string()));
                    }
                }
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => break None,
                Err(e) => break Some(Err(e.to_string())),
            }
        };
        match result {
            None => {}
            Some(Err(why)) => {
                debug!("hybrid client dropped: {why}");
                self.line_deadlines.remove(&(deadline, token));
                self.drop_conn(token);
            }
            Some(Ok(port)) => {
                self.line_deadlines.remove(&(deadline, token));
                self.connect_to_guest(token, port, now);
            }
        }
    }

    /// Sends REQUEST for a host client; the client's socket is closed without a word if
    /// the table is full (Firecracker's way of refusing).
    fn connect_to_guest(&mut self, token: u64, port: u32, now: Instant) {
        match self.engine.connect(now, port, SocketType::Stream) {
            Ok(id) => {
                self.conns.get_mut(&token).expect("live").phase = Phase::Connecting(id);
                self.by_id.insert(id, token);
                self.refresh(token);
            }
            Err(e) => {
                self.stats.refused_full += 1;
                warn!("host connection to guest port {port} refused: {e}");
                self.drop_conn(token);
            }
        }
    }

    fn expire_lines(&mut self, now: Instant) {
        while let Some(&(deadline, token)) = self.line_deadlines.first() {
            if deadline > now {
                break;
            }
            self.line_deadlines.pop_first();
            debug!("hybrid client sent no CONNECT line in time");
            self.drop_conn(token);
        }
    }

    /// The guest connects to host port `port`: dial `<uds_path>_<port>` at once; RST
    /// when nothing is there.
    fn guest_connects(&mut self, id: ConnId, port: u32, now: Instant) {
        let path = format!("{}_{port}", self.config.uds_path.display());
        match dial_nonblocking(&path) {
            Ok(stream) => {
                if self.engine.accept(id).is_err() {
                    return;
                }
                let token = self.insert(HostConn::new(stream, Phase::Open(id)));
                self.by_id.insert(id, token);
                self.refresh(token);
            }
            Err(e) => {
                debug!("guest connection to {path} refused: {e}");
                self.engine.close(now, id);
            }
        }
    }

    /// Acts on what the engine reported after being fed.
    pub fn drain_engine_events(&mut self, now: Instant) {
        while let Some(event) = self.engine.poll_event() {
            match event {
                Event::Incoming { id, local_port, .. } => self.guest_connects(id, local_port, now),
                Event::Connected(id) => self.on_connected(id, now),
                Event::Readable(id) | Event::ReadClosed(id) => {
                    self.with_conn(id, now, |c, e| c.pump_out(e))
                }
                Event::Writable(id) => self.with_conn(id, now, |_, _| Outcome::Live),
                Event::WriteClosed(id) => self.with_conn(id, now, |c, e| {
                    c.guest_stopped_reading(e);
                    c.pump_out(e)
                }),
                Event::Closed(id, reason) => self.with_conn(id, now, |c, e| {
                    c.ended(reason);
                    c.pump_out(e)
                }),
            }
        }
        self.arm_timer();
    }

    fn on_connected(&mut self, id: ConnId, now: Instant) {
        let port = self.engine.ports(id).map_or(0, |(local, _)| local);
        self.with_conn(id, now, |c, e| {
            c.opened(id, port);
            c.pump_out(e)
        });
    }

    fn with_conn(
        &mut self,
        id: ConnId,
        now: Instant,
        f: impl FnOnce(&mut HostConn, &mut Engine) -> Outcome,
    ) {
        let Some(&token) = self.by_id.get(&id) else {
            return;
        };
        let conn = self
            .conns
            .get_mut(&token)
            .expect("by_id points at a live stream");
        let outcome = f(conn, &mut self.engine);
        self.settle(token, outcome, now);
    }

    /// Applies an outcome: keep (with fresh epoll interest) or drop the stream.
    fn settle(&mut self, token: u64, outcome: Outcome, now: Instant) {
        match outcome {
            Outcome::Live => self.refresh(token),
            Outcome::Finished | Outcome::Failed => {
                if let Some(id) = self.conns.get(&token).and_then(HostConn::id) {
                    self.by_id.remove(&id);
                    self.engine.close(now, id);
                }
                self.drop_conn(token);
            }
        }
    }

    fn insert(&mut self, conn: HostConn) -> u64 {
        let token = self.next_token;
        self.next_token += 1;
        self.conns.insert(token, conn);
        self.refresh(token);
        token
    }

    /// Registers the interest the stream needs now. A stream wanting nothing is taken out
    /// of epoll, so a hung-up peer cannot spin the loop while we wait for credit.
    fn refresh(&mut self, token: u64) {
        let Some(conn) = self.conns.get_mut(&token) else {
            return;
        };
        let want = conn.interest(&self.engine);
        if conn.waits_for_guest(&self.engine) {
            self.waiting.insert(token);
        }
        if conn.registered == Some(want) || (conn.registered.is_none() && want.is_empty()) {
            return;
        }
        let fd = conn.stream.as_raw_fd();
        let result = match (conn.registered, want.is_empty()) {
            (Some(_), true) => self
                .epoll
                .ctl(ControlOperation::Delete, fd, EpollEvent::default()),
            (Some(_), false) => {
                self.epoll
                    .ctl(ControlOperation::Modify, fd, EpollEvent::new(want, token))
            }
            (None, _) => self
                .epoll
                .ctl(ControlOperation::Add, fd, EpollEvent::new(want, token)),
        };
        match result {
            Ok(()) => conn.registered = (!want.is_empty()).then_some(want),
            Err(e) => warn!("epoll_ctl for a host stream: {e}"),
        }
    }

    fn drop_conn(&mut self, token: u64) {
        self.waiting.remove(&token);
        if let Some(conn) = self.conns.remove(&token) {
            if conn.registered.is_some() {
                let _ = self.epoll.ctl(
                    ControlOperation::Delete,
                    conn.stream.as_raw_fd(),
                    EpollEvent::default(),
                );
            }
            if let Some(id) = conn.id() {
                if self.by_id.get(&id) == Some(&token) {
                    self.by_id.remove(&id);
                }
            }
        }
    }

    fn arm_timer(&mut self) {
        let engine = self.engine.poll_timeout();
        let line = self.line_deadlines.first().map(|(t, _)| *t);
        let next = match (engine, line) {
            (Some(a), Some(b)) => Some(a.min(b)),
            (a, b) => a.or(b),
        };
        if next == self.timer_at {
            return;
        }
        self.timer_at = next;
        let result = match next {
            Some(when) => {
                // A zero duration would disarm the timer: fire in a nanosecond instead.
                let left = when.saturating_duration_since(Instant::now());
                self.timer
                    .reset(left.max(std::time::Duration::from_nanos(1)), None)
            }
            None => self.timer.clear(),
        };
        if let Err(e) = result {
            warn!("arming the timer: {e}");
        }
    }

    /// Feeds every TX chain the guest queued to the engine. A broken ring is logged and
    /// left alone; nothing a guest writes makes this fail or loop.
    pub fn process_tx(&mut self, vring: &VringRwLock) {
        let Some(mem) = self.mem.clone() else {
            return;
        };
        let max_payload = self.engine.config().max_payload;
        let guard = mem.memory();
        let mut used = false;
        let mut state = vring.get_mut();
        if !state.get_queue().ready() {
            return;
        }
        loop {
            let _ = state.disable_notification();
            let mut popped = false;
            while let Some(chain) = state.get_queue_mut().pop_descriptor_chain(&*guard) {
                let head = chain.head_index();
                self.take_tx_chain(&guard, chain, max_payload);
                used |= self.give_back(&mut state, head, 0);
                popped = true;
            }
            match state.enable_notification() {
                Ok(true) if popped => continue,
                Ok(true) => {
                    // The guest says chains wait, yet none can be taken: its avail index
                    // is corrupt. Going round again would spin forever.
                    self.broken_ring("tx");
                    break;
                }
                Ok(false) => break,
                Err(e) => {
                    warn!("tx queue: {e}");
                    break;
                }
            }
        }
        self.notify_guest(&mut state, used);
        drop(state);
        self.drain_engine_events(Instant::now());
    }

    fn take_tx_chain<M>(
        &mut self,
        mem: &GuestMemoryMmap,
        chain: virtio_queue::DescriptorChain<M>,
        max_payload: u32,
    ) where
        M: std::ops::Deref,
        M::Target: vm_memory::GuestMemory + Sized,
    {
        self.stats.tx_packets += 1;
        match virtq::read_packet(mem, chain, max_payload) {
            Ok((header, payload)) => {
                if let Err(e) = self.engine.handle_packet(Instant::now(), &header, payload) {
                    self.stats.rejected += 1;
                    debug!("dropped a guest packet: {e}");
                }
            }
            Err(e) => {
                self.stats.malformed += 1;
                debug!("dropped a malformed TX chain: {e}");
            }
        }
    }

    /// Moves the engine's pending packets into the guest's RX buffers while both last.
    pub fn process_rx(&mut self, vring: &VringRwLock) {
        let Some(mem) = self.mem.clone() else {
            return;
        };
        let guard = mem.memory();
        let mut used = false;
        let mut state = vring.get_mut();
        if !state.get_queue().ready() {
            return;
        }
        let mut looked_again = false;
        while self.engine.has_transmit() {
            let Some(chain) = state.get_queue_mut().pop_descriptor_chain(&*guard) else {
                // Out of buffers: ask to be kicked when the guest adds some, then look once
                // more in case it did so in between. A second miss with buffers announced
                // means a corrupt avail index.
                match state.enable_notification() {
                    Ok(true) if !looked_again => {
                        looked_again = true;
                        continue;
                    }
                    Ok(true) => self.broken_ring("rx"),
                    Ok(false) => {}
                    Err(e) => warn!("rx queue: {e}"),
                }
                break;
            };
            looked_again = false;
            let head = chain.head_index();
            let room = match virtq::rx_room(&*guard, &chain) {
                Ok(Some(room)) => room,
                Ok(None) | Err(_) => {
                    self.stats.bad_rx_buffers += 1;
                    debug!("RX buffer unusable (smaller than a header, or outside memory)");
                    used |= self.give_back(&mut state, head, 0);
                    continue;
                }
            };
            self.top_up_waiting();
            let Some(packet) = self.engine.poll_transmit(room) else {
                state.get_queue_mut().go_to_previous_position();
                break;
            };
            let len = match virtq::write_packet(&*guard, chain, &packet) {
                Ok(len) => len,
                Err(e) => {
                    // rx_room checked this chain a moment ago; losing a packet here
                    // would desynchronise a connection, so say so loudly.
                    warn!("writing an RX buffer failed, a packet is lost: {e}");
                    0
                }
            };
            used |= self.give_back(&mut state, head, len);
            self.stats.rx_packets += 1;
        }
        self.notify_guest(&mut state, used);
        drop(state);
        if used {
            self.drain_engine_events(Instant::now());
            self.resume_readers();
        }
    }

    /// Streams that stopped reading with enough queued read again as soon as their queue
    /// runs low, before the next packet is cut: the tail of what they queued then leaves
    /// together with what the host wrote meanwhile, not as a small packet of its own.
    fn top_up_waiting(&mut self) {
        if self.waiting.is_empty() {
            return;
        }
        let now = Instant::now();
        let ready: Vec<u64> = self
            .waiting
            .iter()
            .copied()
            .filter(|t| {
                self.conns
                    .get(t)
                    .is_some_and(|c| !c.waits_for_guest(&self.engine))
            })
            .collect();
        for token in ready {
            self.waiting.remove(&token);
            let conn = self
                .conns
                .get_mut(&token)
                .expect("waiting streams are live");
            let outcome = conn.pump_in(&mut self.engine, &mut self.scratch);
            self.settle(token, outcome, now);
        }
    }

    /// Streams whose queued bytes have gone to the guest read again.
    fn resume_readers(&mut self) {
        let waiting: Vec<u64> = self.waiting.drain().collect();
        for token in waiting {
            self.refresh(token);
        }
    }

    /// Returns a chain to the guest; a head outside the ring is counted and dropped rather
    /// than allowed to stop the device.
    fn give_back(&mut self, state: &mut VringState, head: u16, len: u32) -> bool {
        match state.add_used(head, len) {
            Ok(()) => true,
            Err(e) => {
                self.stats.bad_heads += 1;
                debug!("cannot return descriptor {head}: {e}");
                false
            }
        }
    }

    fn notify_guest(&mut self, state: &mut VringState, used: bool) {
        if used && state.needs_notification().unwrap_or(true) {
            if let Err(e) = state.signal_used_queue() {
                warn!("notifying the guest: {e}");
            }
        }
    }

    fn broken_ring(&mut self, which: &str) {
        self.stats.broken_rings += 1;
        warn!(
            "{which} ring: the avail index announces buffers that cannot be taken; ignoring them"
        );
    }
}

/// The state of a vring, as its lock guard derefs to.
type VringState = vhost_user_backend::VringState<GuestMemoryAtomic<GuestMemoryMmap>>;

/// Connects to a Unix socket without blocking on a full backlog.
fn dial_nonblocking(path: &str) -> io::Result<UnixStream> {
    let fd: OwnedFd = socket(
        AddressFamily::Unix,
        SockType::Stream,
        SockFlag::SOCK_NONBLOCK | SockFlag::SOCK_CLOEXEC,
        None,
    )?;
    let addr = UnixAddr::new(path)?;
    connect(fd.as_raw_fd(), &addr)?;
    Ok(UnixStream::from(fd))
}

/// EMFILE or ENFILE: the process or the system has no descriptor left to give.
fn is_out_of_fds(e: &io::Error) -> bool {
    matches!(e.raw_os_error(), Some(code) if code == nix::libc::EMFILE || code == nix::libc::ENFILE)
}
