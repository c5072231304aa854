//! The guest: a driver thread that plays Linux's virtio-vsock driver and socket layer
//! against a vhost-user backend, with a blocking API for tests and benchmarks.
//!
//! The socket layer is a [`tether_vsock::Engine`] with the guest CID read from the device
//! config and the host (CID 2) as its peer. Incoming connections to a listened port are
//! accepted at once, as Linux does while the backlog has room; [`Guest::accept`] hands
//! them out. Every wait has a timeout.

mod conn;
mod driver;
mod queues;

pub use conn::{ConnError, GuestConn};

use crate::frontend::{FrontendError, FrontendOptions, Negotiated, Session};
use crate::memory::{GuestRam, MemoryError};
use crate::ring::{RingError, SplitRing};
use driver::{ConnectState, Shared, State, Wakers};
use queues::{RxQueue, TxQueue};
use std::collections::{HashMap, VecDeque};
use std::path::Path;
use std::sync::{Arc, Condvar, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};
use tether_vsock::{CloseReason, Config, Engine, Header, SetupError, SocketType, HOST_CID};
use thiserror::Error;

/// RW payloads below this many bytes count as tiny in [`GuestStats::rx_tiny_rw`].
pub const TINY_PACKET: u32 = 512;

/// How receive buffers are laid out in descriptors.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum RxLayout {
    /// One descriptor holding header and data (Linux 6.2 and later).
    #[default]
    Single,
    /// A 44-byte header descriptor, then a data descriptor (older kernels).
    Split,
}

/// How transmitted packets are laid out in descriptors.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum TxLayout {
    /// Header and data in one descriptor.
    #[default]
    Single,
    /// Header in one descriptor, data in a second.
    Split,
    /// Header, then data in descriptors of `piece` bytes each (MSG_ZEROCOPY, Linux 6.7+).
    Scattered {
        /// Bytes per data descriptor.
        piece: u32,
    },
}

/// How the guest is set up.
#[derive(Clone, Debug)]
pub struct GuestOptions {
    /// Guest RAM size in bytes.
    pub ram_size: usize,
    /// Entries per virtqueue: 128 like QEMU's vhost-user-vsock-pci, 1024 like the mmio
    /// device. A power of two.
    pub queue_size: u16,
    /// Receive buffer layout.
    pub rx_layout: RxLayout,
    /// Receive buffer size: the whole descriptor for [`RxLayout::Single`], the data
    /// descriptor for [`RxLayout::Split`].
    pub rx_buffer_size: u32,
    /// Transmit layout for the engine's packets.
    pub tx_layout: TxLayout,
    /// Receive buffer per connection, advertised as `buf_alloc` (Linux: 256 KiB).
    pub buf_alloc: u32,
    /// How long a connect waits for RESPONSE before giving up (Linux: 2 s).
    pub connect_timeout: Duration,
    /// Default bound on each blocking [`GuestConn`] call.
    pub io_timeout: Duration,
    /// vhost-user negotiation.
    pub frontend: FrontendOptions,
    /// Received packets remembered in the log (oldest dropped first).
    pub rx_log_capacity: usize,
}

impl Default for GuestOptions {
    fn default() -> Self {
        GuestOptions {
            ram_size: crate::memory::DEFAULT_RAM_SIZE,
            queue_size: 128,
            rx_layout: RxLayout::Single,
            rx_buffer_size: 4096,
            tx_layout: TxLayout::Single,
            buf_alloc: 256 * 1024,
            connect_timeout: Duration::from_secs(2),
            io_timeout: Duration::from_secs(10),
            frontend: FrontendOptions::default(),
            rx_log_capacity: 65536,
        }
    }
}

/// Why the guest could not start or a guest call failed.
#[derive(Debug, Error)]
pub enum GuestError {
    /// The vhost-user session failed.
    #[error(transparent)]
    Frontend(#[from] FrontendError),
    /// Guest RAM failed.
    #[error(transparent)]
    Memory(#[from] MemoryError),
    /// A ring failed.
    #[error(transparent)]
    Ring(#[from] RingError),
    /// A thread or eventfd could not be created.
    #[error("guest setup: {0}")]
    Io(#[from] std::io::Error),
    /// The driver thread stopped (the reason says why).
    #[error("{0}")]
    Stopped(String),
    /// A raw packet is larger than the raw area.
    #[error("raw packet of {len} bytes exceeds {max}")]
    RawTooLarge {
        /// Its length.
        len: usize,
        /// The limit.
        max: usize,
    },
    /// No room on the tx ring for a raw packet within the timeout.
    #[error("no tx room for a raw packet within {0:?}")]
    RawBusy(Duration),
}

/// Why a guest connect failed.
#[derive(Clone, Debug, PartialEq, Eq, Error)]
pub enum ConnectError {
    /// The host answered with RST.
    #[error("connection refused (RST after {0:?})")]
    Refused(Duration),
    /// Neither RESPONSE nor RST arrived in time.
    #[error("connect timed out after {0:?}")]
    TimedOut(Duration),
    /// The connection ended some other way before it was established.
    #[error("connect failed: {0}")]
    Failed(CloseReason),
    /// The engine could not start a connection.
    #[error("connect setup: {0}")]
    Setup(SetupError),
    /// The guest driver stopped.
    #[error("{0}")]
    Stopped(String),
}

/// One packet the backend put on the rx queue.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RxRecord {
    /// Position in the log, from 1.
    pub seq: u64,
    /// When the driver took it off the ring.
    pub at: Instant,
    /// Its header.
    pub header: Header,
    /// Why the engine (or the driver) rejected it, `None` when it was taken.
    pub rejected: Option<String>,
}

/// Counters since start (or [`Guest::reset_stats`]).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct GuestStats {
    /// Packets received.
    pub rx_packets: u64,
    /// Payload bytes received.
    pub rx_payload_bytes: u64,
    /// RW packets received.
    pub rx_rw_packets: u64,
    /// RW packets with fewer than [`TINY_PACKET`] payload bytes.
    pub rx_tiny_rw: u64,
    /// RW payload sizes: entry `i` counts sizes in `[2^(i-1), 2^i)` (entry 0 empty ones).
    pub rx_rw_size_log2: [u64; 18],
    /// RSTs received.
    pub rx_rst: u64,
    /// Packets the engine refused (wrong CID, bad length, ...).
    pub rx_rejected: u64,
    /// Receive buffers the device returned with an impossible length.
    pub rx_bad_buffers: u64,
    /// Engine packets sent.
    pub tx_packets: u64,
    /// Payload bytes in them.
    pub tx_payload_bytes: u64,
    /// Raw packets sent.
    pub tx_raw: u64,
}

/// A raw packet handed to the device, to ask later whether the device returned it.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct RawId(u64);

/// A running guest: vhost-user session, rings, driver thread and socket layer.
pub struct Guest {
    shared: Arc<Shared>,
    thread: Option<JoinHandle<()>>,
    session: Mutex<Option<Session>>,
    negotiated: Negotiated,
    options: GuestOptions,
}

impl std::fmt::Debug for Guest {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Guest")
            .field("negotiated", &self.negotiated)
            .finish_non_exhaustive()
    }
}

impl Guest {
    /// Connects to the backend's vhost-user socket (retrying while it appears), sets the
    /// device up, posts receive buffers and starts the driver thread.
    pub fn start(socket: &Path, options: GuestOptions) -> Result<Guest, GuestError> {
        let mut session = Session::open(socket, &options.frontend)?;
        let negotiated = session.negotiated();
        let ram = Arc::new(GuestRam::new(options.ram_size)?);
        let event_idx = negotiated.event_idx();
        let rx_ring = SplitRing::new(&ram, options.queue_size, event_idx)?;
        let tx_ring = SplitRing::new(&ram, options.queue_size, event_idx)?;
        let mut rx = RxQueue::new(&ram, rx_ring, options.rx_layout, options.rx_buffer_size)?;
        let tx = TxQueue::new(&ram, tx_ring, options.tx_layout)?;
        session.start(&ram, &rx.ring, &tx.ring)?;
        rx.post_all()?;
        rx.ring.force_kick()?;
        let wake = driver::wake_fd()?;
        let wakers = Wakers::new(rx.ring.call_fd(), tx.ring.call_fd(), &wake)?;
        let engine = Engine::new(engine_config(negotiated.guest_cid, &options));
        let state = new_state(ram, rx, tx, engine, &options);
        let shared = Arc::new(Shared {
            state: Mutex::new(state),
            changed: Condvar::new(),
            wake,
        });
        let thread = std::thread::Builder::new()
            .name("guest-driver".into())
            .spawn({
                let shared = shared.clone();
                move || driver::run(shared, wakers)
            })?;
        Ok(Guest {
            shared,
            thread: Some(thread),
            session: Mutex::new(Some(session)),
            negotiated,
            options,
        })
    }

    /// The guest CID read from the device config.
    pub fn cid(&self) -> u64 {
        self.negotiated.guest_cid
    }

    /// What the frontend and backend agreed on.
    pub fn negotiated(&self) -> Negotiated {
        self.negotiated
    }

    /// The options the guest runs with.
    pub fn options(&self) -> &GuestOptions {
        &self.options
    }

    /// Payload room of one receive buffer: the largest packet the backend can deliver.
    pub fn rx_payload_room(&self) -> u32 {
        self.shared.lock().rx.payload_room()
    }

    /// Starts accepting connections to `port`.
    pub fn listen(&self, port: u32) {
        let mut st = self.shared.lock();
        st.engine.listen(port, SocketType::Stream);
        st.listening.insert(port, ());
    }

    /// Stops accepting connections to `port`.
    pub fn unlisten(&self, port: u32) {
        let mut st = self.shared.lock();
        st.engine.unlisten(port);
        st.listening.remove(&port);
    }

    /// The next accepted connection on any listened port.
    pub fn accept(&self, timeout: Duration) -> Option<GuestConn> {
        self.accept_where(timeout, |_| true)
    }

    /// The next accepted connection to `port`.
    pub fn accept_on(&self, port: u32, timeout: Duration) -> Option<GuestConn> {
        self.accept_where(timeout, |p| p == port)
    }

    fn accept_where(&self, timeout: Duration, want: impl Fn(u32) -> bool) -> Option<GuestConn> {
        let deadline = Instant::now() + timeout;
        let mut st = self.shared.lock();
        loop {
            if let Some(i) = st.accept_queue.iter().position(|(p, _)| want(*p)) {
                let (_, id) = st.accept_queue.remove(i).expect("position is valid");
                return Some(GuestConn::new(
                    self.shared.clone(),
                    id,
                    self.options.io_timeout,
                ));
            }
            st = self.shared.wait_until(st, deadline)?;
        }
    }

    /// Connects to host port `port`, waiting up to `timeout` (the engine itself gives up
    /// after [`GuestOptions::connect_timeout`], as Linux does after 2 s).
    pub fn connect(&self, port: u32, timeout: Duration) -> Result<GuestConn, ConnectError> {
        let start = Instant::now();
        let deadline = start + timeout;
        let mut st = self.shared.lock();
        let id = st
            .engine
            .connect(start, port, SocketType::Stream)
            .map_err(ConnectError::Setup)?;
        st.connects.insert(id, ConnectState::Pending);
        st.flush()
            .map_err(|e| ConnectError::Stopped(e.to_string()))?;
        // The driver must learn of the new connect timer.
        self.shared.poke();
        loop {
            if let Some(f) = &st.fatal {
                return Err(ConnectError::Stopped(f.clone()));
            }
            match st.connects.get(&id).copied() {
                Some(ConnectState::Connected) => {
                    st.connects.remove(&id);
                    drop(st);
                    return Ok(GuestConn::new(
                        self.shared.clone(),
                        id,
                        self.options.io_timeout,
                    ));
                }
                Some(ConnectState::Failed(reason)) => {
                    st.connects.remove(&id);
                    st.engine.close(Instant::now(), id);
                    return Err(match reason {
                        CloseReason::Refused => ConnectError::Refused(start.elapsed()),
                        CloseReason::TimedOut => ConnectError::TimedOut(start.elapsed()),
                        other => ConnectError::Failed(other),
                    });
                }
                _ => {}
            }
            st = match self.shared.wait_until(st, deadline) {
                Some(g) => g,
                None => {
                    let mut st = self.shared.lock();
                    st.connects.remove(&id);
                    st.engine.close(Instant::now(), id);
                    let _ = st.flush();
                    return Err(ConnectError::TimedOut(start.elapsed()));
                }
            };
        }
    }

    /// Sends `bytes` as one tx chain in `layout`, bypassing the engine: the first 44 bytes
    /// (all of them when fewer) form the header descriptor. For malformed-packet tests.
    pub fn send_raw(&self, bytes: &[u8], layout: TxLayout) -> Result<RawId, GuestError> {
        if bytes.len() > queues::MAX_RAW {
            return Err(GuestError::RawTooLarge {
                len: bytes.len(),
                max: queues::MAX_RAW,
            });
        }
        let timeout = self.options.io_timeout;
        let deadline = Instant::now() + timeout;
        let mut st = self.shared.lock();
        loop {
            if let Some(f) = &st.fatal {
                return Err(GuestError::Stopped(f.clone()));
            }
            if let Some(seq) = st.send_raw(bytes, layout)? {
                return Ok(RawId(seq));
            }
            st = self
                .shared
                .wait_until(st, deadline)
                .ok_or(GuestError::RawBusy(timeout))?;
        }
    }

    /// [`Guest::send_raw`] of an encoded header followed by `payload`.
    pub fn send_raw_packet(
        &self,
        header: &Header,
        payload: &[u8],
        layout: TxLayout,
    ) -> Result<RawId, GuestError> {
        let mut bytes = header.encode().to_vec();
        bytes.extend_from_slice(payload);
        self.send_raw(&bytes, layout)
    }

    /// Waits up to `timeout` for the device to return a raw packet's chain; gives the used
    /// length it reported. `None`: the chain is still with the device.
    pub fn raw_returned(&self, id: RawId, timeout: Duration) -> Option<u32> {
        let deadline = Instant::now() + timeout;
        let mut st = self.shared.lock();
        loop {
            if let Some(len) = st.raw_done.get(&id.0) {
                return Some(*len);
            }
            st = self.shared.wait_until(st, deadline)?;
        }
    }

    /// The sequence number of the latest logged packet: pass it to
    /// [`Guest::wait_rx`] to look only at packets after it.
    pub fn rx_mark(&self) -> u64 {
        self.shared.lock().rx_seq
    }

    /// Every logged packet after `mark`.
    pub fn rx_since(&self, mark: u64) -> Vec<RxRecord> {
        let st = self.shared.lock();
        st.rx_log.iter().filter(|r| r.seq > mark).cloned().collect()
    }

    /// Waits up to `timeout` for a packet after `mark` matching `pred`.
    pub fn wait_rx(
        &self,
        mark: u64,
        timeout: Duration,
        pred: impl Fn(&RxRecord) -> bool,
    ) -> Option<RxRecord> {
        let deadline = Instant::now() + timeout;
        let mut st = self.shared.lock();
        loop {
            if let Some(r) = st.rx_log.iter().find(|r| r.seq > mark && pred(r)) {
                return Some(r.clone());
            }
            st = self.shared.wait_until(st, deadline)?;
        }
    }

    /// Counters.
    pub fn stats(&self) -> GuestStats {
        self.shared.lock().stats.clone()
    }

    /// Zeroes the counters.
    pub fn reset_stats(&self) {
        self.shared.lock().stats = GuestStats::default();
    }

    /// Transmit chains handed to the device and not yet returned.
    pub fn tx_outstanding(&self) -> usize {
        self.shared.lock().tx.ring.outstanding()
    }

    /// Live connections in the socket layer.
    pub fn connections(&self) -> usize {
        self.shared.lock().engine.stats().connections
    }

    /// Why the driver stopped, if it did.
    pub fn fatal(&self) -> Option<String> {
        self.shared.lock().fatal.clone()
    }

    /// Stops the driver and the device the way QEMU does when a VM stops
    /// (`GET_VRING_BASE` on both queues), then closes the vhost-user connection. The
    /// backend should then wait for the next frontend.
    pub fn stop(mut self) -> Result<(), GuestError> {
        self.shutdown(true)
    }

    /// Drops the vhost-user connection without stopping the queues first, as a crashing
    /// VMM would.
    pub fn crash(mut self) {
        let _ = self.shutdown(false);
    }

    fn shutdown(&mut self, graceful: bool) -> Result<(), GuestError> {
        self.shared.lock().stopping = true;
        self.shared.poke();
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
        let session = self
            .session
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .take();
        if let (Some(mut s), true) = (session, graceful) {
            s.stop()?;
        }
        Ok(())
    }
}

impl Drop for Guest {
    fn drop(&mut self) {
        let _ = self.shutdown(true);
    }
}

fn engine_config(guest_cid: u64, options: &GuestOptions) -> Config {
    let mut config = Config::new(guest_cid, HOST_CID);
    config.buf_alloc = options.buf_alloc;
    config.connect_timeout = options.connect_timeout;
    config
}

fn new_state(
    ram: Arc<GuestRam>,
    rx: RxQueue,
    tx: TxQueue,
    engine: Engine,
    options: &GuestOptions,
) -> State {
    State {
        ram,
        rx,
        tx,
        engine,
        accept_queue: VecDeque::new(),
        listening: HashMap::new(),
        connects: HashMap::new(),
        closed: HashMap::new(),
        rx_log: VecDeque::new(),
        rx_log_capacity: options.rx_log_capacity.max(1),
        rx_seq: 0,
        raw_seq: 0,
        raw_done: HashMap::new(),
        stats: GuestStats::default(),
        fatal: None,
        stopping: false,
    }
}
