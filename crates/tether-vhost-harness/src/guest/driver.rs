//! The guest's driver state and the loop that moves packets between the rings and the
//! engine. The state sits behind one mutex: the driver thread pumps it when the device
//! signals, and API calls pump the transmit side inline so a write goes out without a
//! thread hand-off.

use super::queues::{RxFilled, RxQueue, TxDone, TxQueue};
use super::{GuestStats, RxRecord, TxLayout};
use crate::memory::GuestRam;
use crate::ring::{drain, RingError};
use bytes::Bytes;
use std::collections::{HashMap, VecDeque};
use std::os::fd::AsRawFd;
use std::sync::{Arc, Condvar, Mutex, MutexGuard};
use std::time::{Duration, Instant};
use tether_vsock::{CloseReason, ConnId, Engine, Event, Header, Op, HEADER_LEN};
use vmm_sys_util::epoll::{ControlOperation, Epoll, EpollEvent, EventSet};
use vmm_sys_util::eventfd::{EventFd, EFD_NONBLOCK};

/// Longest the driver sleeps without looking at the rings: a safety net should a
/// notification be lost, and the granularity of nothing else (engine timers wake it).
const MAX_SLEEP: Duration = Duration::from_millis(50);

/// What became of a connect.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum ConnectState {
    Pending,
    Connected,
    Failed(CloseReason),
}

/// Everything the driver and the API share.
pub(crate) struct State {
    pub ram: Arc<GuestRam>,
    pub rx: RxQueue,
    pub tx: TxQueue,
    pub engine: Engine,
    /// Accepted incoming connections not yet taken by `accept`: (local port, id).
    pub accept_queue: VecDeque<(u32, ConnId)>,
    pub listening: HashMap<u32, ()>,
    pub connects: HashMap<ConnId, ConnectState>,
    pub closed: HashMap<ConnId, CloseReason>,
    pub rx_log: VecDeque<RxRecord>,
    pub rx_log_capacity: usize,
    pub rx_seq: u64,
    pub raw_seq: u64,
    pub raw_done: HashMap<u64, u32>,
    pub stats: GuestStats,
    /// Set when the driver hit an error it cannot continue from.
    pub fatal: Option<String>,
    pub stopping: bool,
}

/// The state, a condition variable for waiters and the eventfd that wakes the driver.
pub(crate) struct Shared {
    pub state: Mutex<State>,
    pub changed: Condvar,
    pub wake: EventFd,
}

impl Shared {
    pub fn lock(&self) -> MutexGuard<'_, State> {
        // A panicking test thread must not take every other guest call down with it.
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Waits for a change up to `deadline`; returns `None` once it has passed.
    pub fn wait_until<'a>(
        &self,
        guard: MutexGuard<'a, State>,
        deadline: Instant,
    ) -> Option<MutexGuard<'a, State>> {
        let left = deadline.saturating_duration_since(Instant::now());
        if left.is_zero() {
            return None;
        }
        let (g, _) = self
            .changed
            .wait_timeout(guard, left)
            .unwrap_or_else(|e| e.into_inner());
        Some(g)
    }

    /// Asks the driver thread to look at the state (new timers, stop).
    pub fn poke(&self) {
        let _ = self.wake.write(1);
    }
}

impl State {
    /// Moves everything that can move: reclaims tx, receives rx, runs timers and events,
    /// transmits. Returns whether anything happened a waiter might care about.
    pub fn pump(&mut self) -> Result<bool, RingError> {
        let mut changed = self.reclaim_tx()?;
        changed |= self.receive()?;
        self.engine.handle_timeout(Instant::now());
        changed |= self.handle_events();
        self.transmit()?;
        Ok(changed)
    }

    /// The transmit half only, for API calls after they fed the engine. Returns whether
    /// something changed that other waiters might care about.
    pub fn flush(&mut self) -> Result<bool, RingError> {
        let mut changed = self.handle_events();
        changed |= self.reclaim_tx()?;
        self.transmit()?;
        Ok(changed)
    }

    fn reclaim_tx(&mut self) -> Result<bool, RingError> {
        let mut any = false;
        while let Some(done) = self.tx.reclaim()? {
            any = true;
            if let TxDone::Raw { seq, used_len } = done {
                self.raw_done.insert(seq, used_len);
            }
        }
        Ok(any)
    }

    fn receive(&mut self) -> Result<bool, RingError> {
        let mut any = false;
        while let Some(filled) = self.rx.take()? {
            any = true;
            self.deliver(filled)?;
            self.rx.post(filled.buf)?;
        }
        if any {
            self.rx.ring.notify()?;
        }
        Ok(any)
    }

    /// Parses one filled receive buffer and feeds it to the engine, logging it.
    fn deliver(&mut self, f: RxFilled) -> Result<(), RingError> {
        if (f.used_len as usize) < HEADER_LEN {
            self.stats.rx_bad_buffers += 1;
            return Ok(());
        }
        let mut raw = [0u8; HEADER_LEN];
        self.ram.read(f.header_at, &mut raw)?;
        let hdr = Header::decode(&raw).expect("44 bytes");
        let written = f.used_len as usize - HEADER_LEN;
        let len = hdr.len as usize;
        if len > written || len > f.data_room as usize {
            // The device claims more payload than it wrote, or than fits: a device bug.
            self.stats.rx_bad_buffers += 1;
            self.log(hdr, Some("len beyond what the device wrote".into()));
            return Ok(());
        }
        let mut payload = vec![0u8; len];
        self.ram.read(f.data_at, &mut payload)?;
        self.count_rx(&hdr);
        let verdict = self
            .engine
            .handle_packet(Instant::now(), &hdr, Bytes::from(payload))
            .err()
            .map(|e| e.to_string());
        if verdict.is_some() {
            self.stats.rx_rejected += 1;
        }
        self.log(hdr, verdict);
        Ok(())
    }

    fn count_rx(&mut self, hdr: &Header) {
        let s = &mut self.stats;
        s.rx_packets += 1;
        s.rx_payload_bytes += u64::from(hdr.len);
        if hdr.op() == Some(Op::Rw) {
            s.rx_rw_packets += 1;
            if hdr.len < super::TINY_PACKET {
                s.rx_tiny_rw += 1;
            }
            let bucket = (32 - hdr.len.leading_zeros()) as usize;
            s.rx_rw_size_log2[bucket.min(s.rx_rw_size_log2.len() - 1)] += 1;
        }
        if hdr.op() == Some(Op::Rst) {
            s.rx_rst += 1;
        }
    }

    fn log(&mut self, header: Header, rejected: Option<String>) {
        self.rx_seq += 1;
        if self.rx_log.len() >= self.rx_log_capacity {
            self.rx_log.pop_front();
        }
        self.rx_log.push_back(RxRecord {
            seq: self.rx_seq,
            at: Instant::now(),
            header,
            rejected,
        });
    }

    /// Accepts incoming connections at once, as the Linux socket layer does for a
    /// listener with backlog room, and records connect outcomes and closes.
    fn handle_events(&mut self) -> bool {
        let mut any = false;
        while let Some(ev) = self.engine.poll_event() {
            any = true;
            match ev {
                Event::Incoming { id, local_port, .. } => {
                    if self.listening.contains_key(&local_port) {
                        let _ = self.engine.accept(id);
                        self.accept_queue.push_back((local_port, id));
                    } else {
                        self.engine.close(Instant::now(), id);
                    }
                }
                Event::Connected(id) => {
                    self.connects.insert(id, ConnectState::Connected);
                }
                Event::Closed(id, reason) => {
                    if let Some(s) = self.connects.get_mut(&id) {
                        if *s == ConnectState::Pending {
                            *s = ConnectState::Failed(reason);
                        }
                    }
                    self.closed.insert(id, reason);
                }
                _ => {}
            }
        }
        any
    }

    /// Hands the engine's packets to the tx ring while there is room, then notifies.
    fn transmit(&mut self) -> Result<(), RingError> {
        while let Some(room) = self.tx.room() {
            let Some(t) = self.engine.poll_transmit(room) else {
                break;
            };
            self.tx
                .push_packet(&self.ram, &t.header.encode(), &t.payload)?;
            self.stats.tx_packets += 1;
            self.stats.tx_payload_bytes += t.payload.len() as u64;
        }
        self.tx.ring.notify()?;
        Ok(())
    }

    /// Queues raw bytes as one tx chain; returns its sequence number.
    pub fn send_raw(&mut self, bytes: &[u8], layout: TxLayout) -> Result<Option<u64>, RingError> {
        if !self.tx.raw_room(bytes.len(), layout) {
            return Ok(None);
        }
        self.raw_seq += 1;
        let seq = self.raw_seq;
        self.tx.push_raw(&self.ram, bytes, layout, seq)?;
        self.tx.ring.notify()?;
        self.stats.tx_raw += 1;
        Ok(Some(seq))
    }

    /// The next engine timer, bounded by the safety-net sleep.
    fn sleep_for(&self) -> Duration {
        let now = Instant::now();
        self.engine
            .poll_timeout()
            .map_or(MAX_SLEEP, |t| t.saturating_duration_since(now))
            .min(MAX_SLEEP)
    }
}

/// Eventfds the driver thread sleeps on.
pub(crate) struct Wakers {
    epoll: Epoll,
    fds: Vec<EventFd>,
}

impl Wakers {
    /// Clones of the rx and tx call eventfds and the API's wake eventfd.
    pub fn new(rx_call: &EventFd, tx_call: &EventFd, wake: &EventFd) -> std::io::Result<Self> {
        let epoll = Epoll::new()?;
        let fds = vec![
            rx_call.try_clone()?,
            tx_call.try_clone()?,
            wake.try_clone()?,
        ];
        for (i, fd) in fds.iter().enumerate() {
            epoll.ctl(
                ControlOperation::Add,
                fd.as_raw_fd(),
                EpollEvent::new(EventSet::IN, i as u64),
            )?;
        }
        Ok(Wakers { epoll, fds })
    }

    fn sleep(&self, timeout: Duration) {
        let mut events = [EpollEvent::default(); 3];
        let ms = i32::try_from(timeout.as_millis()).unwrap_or(i32::MAX);
        let _ = self.epoll.wait(ms, &mut events);
        for fd in &self.fds {
            drain(fd);
        }
    }
}

/// A fresh wake eventfd.
pub(crate) fn wake_fd() -> std::io::Result<EventFd> {
    EventFd::new(EFD_NONBLOCK)
}

/// The driver thread: sleep on the eventfds, pump, tell waiters, until told to stop or
/// something breaks (then the error is recorded for every caller to see).
pub(crate) fn run(shared: Arc<Shared>, wakers: Wakers) {
    let mut timeout = Duration::ZERO;
    loop {
        wakers.sleep(timeout);
        let mut st = shared.lock();
        if st.stopping {
            break;
        }
        match st.pump() {
            Ok(changed) => {
                timeout = st.sleep_for();
                drop(st);
                if changed {
                    shared.changed.notify_all();
                }
            }
            Err(e) => {
                st.fatal = Some(format!("guest driver stopped: {e}"));
                drop(st);
                shared.changed.notify_all();
                break;
            }
        }
    }
}
