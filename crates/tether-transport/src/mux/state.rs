//! State shared by the driver tasks and every stream of one mux: the engine of the
//! current link session, wakers, listeners and the session lifecycle.

use super::driver::Output;
use super::link::{Hello, VERSION};
use super::waiters::LinkWaiters;
use super::{LinkStatus, MuxConfig, MuxError, MuxStream};
use std::collections::{HashMap, VecDeque};
use std::hash::{BuildHasher, RandomState};
use std::sync::atomic::AtomicBool;
use std::sync::{Arc, Mutex, MutexGuard};
use std::task::{Context, Waker};
use std::time::Instant;
use tether_vsock::{CloseReason, ConnId, ConnIdMap, Engine, Event, SocketType};
use tokio::sync::{watch, Notify};

/// Wakers and outcome of one connection as seen by its stream.
#[derive(Default, Debug)]
pub(crate) struct Slot {
    pub read: Option<Waker>,
    pub write: Option<Waker>,
    pub connect: Option<Waker>,
    pub connected: bool,
    pub closed: Option<CloseReason>,
}

impl Slot {
    fn wake_all(&mut self) {
        wake(&mut self.read);
        wake(&mut self.write);
        wake(&mut self.connect);
    }
}

fn wake(waker: &mut Option<Waker>) {
    if let Some(w) = waker.take() {
        w.wake();
    }
}

/// Incoming connections to one port, waiting for the application's `accept`.
///
/// As with TCP, up to `accept_backlog` of them are answered at once (the first `ready`
/// entries); beyond that the REQUEST waits unanswered, bounded by the connection table
/// and the peer's connect timeout, so a busy acceptor delays connects instead of
/// refusing them.
#[derive(Default, Debug)]
pub(crate) struct ListenSlot {
    pub pending: VecDeque<ConnId>,
    pub ready: usize,
    pub waker: Option<Waker>,
}

impl ListenSlot {
    /// Answers waiting REQUESTs, in order, while the backlog has room.
    fn promote(&mut self, engine: &mut Engine, backlog: usize) {
        while self.ready < backlog.max(1) && self.ready < self.pending.len() {
            // A connection that died waiting fails here and is dropped at accept.
            let _ = engine.accept(self.pending[self.ready]);
            self.ready += 1;
        }
    }
}

pub(crate) struct State {
    pub cfg: MuxConfig,
    /// Engine of the current session; `None` while handshaking or after the end.
    pub engine: Option<Engine>,
    /// Counts sessions so a stream of an old one is never mistaken for a new one.
    pub session: u64,
    pub our_nonce: u64,
    pub peer_nonce: Option<u64>,
    /// A hello owed to the link, with its ACK flag.
    pub hello_due: Option<bool>,
    /// When to repeat our hello while the peer has not answered.
    pub next_hello: Option<Instant>,
    pub hello_backoff: std::time::Duration,
    pub slots: ConnIdMap<Slot>,
    pub listeners: HashMap<u32, ListenSlot>,
    /// Why the latest session ended; reported to its streams.
    pub last_reset: Arc<str>,
    /// Set once the link is gone for good.
    pub closed: Option<MuxError>,
    /// Every handle is gone: flush what is queued, then close.
    pub draining: bool,
}

pub(crate) struct Shared {
    state: Mutex<State>,
    /// The link's write half; `None` once closed. Lock before `state`, never after.
    pub output: Mutex<Option<Output>>,
    /// Wakes the writer task: packets or a hello may be due.
    pub writer: Notify,
    /// A task found the link's write half busy and left its packets to the task holding
    /// it (see `Shared::flush_link`).
    pub flush_wanted: AtomicBool,
    /// When the writer task next wakes by itself, if it sleeps on a timer.
    pub writer_wakes: Mutex<Option<Instant>>,
    pub status: watch::Sender<LinkStatus>,
    pub reader_abort: Mutex<Option<tokio::task::AbortHandle>>,
    /// Writers of large buffers waiting for the link's write half to be free and done with
    /// earlier batches (see `Shared::write_direct`). Woken one at a time whenever a task
    /// lets go of the write half with nothing left to write, all of them when the session
    /// ends or a woken one does not come.
    link_waiters: Mutex<LinkWaiters>,
}

impl State {
    /// Why a connection of an ended session is gone: the link closed for good, or the
    /// session was reset.
    pub fn session_error(&self) -> MuxError {
        self.closed
            .clone()
            .unwrap_or_else(|| MuxError::LinkReset(self.last_reset.to_string()))
    }
}

impl Shared {
    pub fn new(cfg: MuxConfig) -> Arc<Shared> {
        let state = State {
            hello_backoff: cfg.hello_interval,
            cfg,
            engine: None,
            session: 0,
            our_nonce: random_nonce(),
            peer_nonce: None,
            hello_due: Some(false),
            next_hello: None,
            slots: ConnIdMap::default(),
            listeners: HashMap::new(),
            last_reset: Arc::from("no link session yet"),
            closed: None,
            draining: false,
        };
        Arc::new(Shared {
            state: Mutex::new(state),
            output: Mutex::new(None),
            writer: Notify::new(),
            flush_wanted: AtomicBool::new(false),
            writer_wakes: Mutex::new(None),
            status: watch::Sender::new(LinkStatus::Handshaking),
            reader_abort: Mutex::new(None),
            link_waiters: Mutex::new(LinkWaiters::default()),
        })
    }

    fn waiters(&self) -> MutexGuard<'_, LinkWaiters> {
        self.link_waiters.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// The link came free: wakes the writer that has waited longest for it (see
    /// [`Shared::link_waiters`]), and makes sure the writer task looks again if that one
    /// does not come.
    pub fn hand_over_link(&self) {
        let check_by = self.waiters().hand_over(Instant::now);
        if let Some(t) = check_by {
            self.tell_writer_about(t);
        }
    }

    /// Wakes every writer waiting for the link.
    pub fn wake_all_link_waiters(&self) {
        self.waiters().wake_all();
    }

    /// For the writer task: wakes every waiting writer if a hand-over went unanswered;
    /// returns when to look again.
    pub fn check_link_waiters(&self) -> Option<Instant> {
        self.waiters().check(Instant::now())
    }

    /// Adds connection `id`'s writer to those waiting for the link (replacing its earlier
    /// waker, keeping its place: one writer per connection).
    pub fn wait_for_link(&self, id: ConnId, cx: &Context<'_>) {
        self.waiters().wait(id, cx.waker());
    }

    /// Takes connection `id`'s writer off the list [`Shared::wait_for_link`] keeps.
    pub fn stop_waiting_for_link(&self, id: ConnId) {
        self.waiters().forget(id);
    }

    /// Locks the state. A panic while holding the lock is a bug that already took its
    /// task down; the state itself stays consistent between calls, so keep serving.
    pub fn lock(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Hands engine events to the streams, listeners and connectors waiting on them.
    /// Packets the engine now owes are left for the caller to flush once it has let go of
    /// the state lock.
    pub fn dispatch(&self, st: &mut State) {
        while let Some(ev) = st.engine.as_mut().and_then(Engine::poll_event) {
            match ev {
                Event::Incoming { id, local_port, .. } => {
                    self.incoming(st, Instant::now(), id, local_port)
                }
                Event::Connected(id) => {
                    if let Some(slot) = st.slots.get_mut(&id) {
                        slot.connected = true;
                        wake(&mut slot.connect);
                    }
                }
                Event::Readable(id) | Event::ReadClosed(id) => {
                    if let Some(slot) = st.slots.get_mut(&id) {
                        wake(&mut slot.read);
                    }
                }
                Event::Writable(id) | Event::WriteClosed(id) => {
                    if let Some(slot) = st.slots.get_mut(&id) {
                        wake(&mut slot.write);
                    }
                }
                Event::Closed(id, reason) => {
                    if let Some(slot) = st.slots.get_mut(&id) {
                        slot.closed = Some(reason);
                        slot.wake_all();
                    }
                }
            }
        }
    }

    fn incoming(&self, st: &mut State, now: Instant, id: ConnId, local_port: u32) {
        let engine = st.engine.as_mut().expect("events come from an engine");
        let Some(l) = st.listeners.get_mut(&local_port) else {
            engine.close(now, id);
            return;
        };
        l.pending.push_back(id);
        l.promote(engine, st.cfg.accept_backlog);
        wake(&mut l.waker);
    }

    /// Accepts the oldest pending connection to `port` that is still alive.
    pub fn accept_pending(self: &Arc<Self>, st: &mut State, port: u32) -> Option<MuxStream> {
        let now = Instant::now();
        let engine = st.engine.as_mut()?;
        let listener = st.listeners.get_mut(&port)?;
        while let Some(id) = listener.pending.pop_front() {
            listener.ready = listener.ready.saturating_sub(1);
            listener.promote(engine, st.cfg.accept_backlog);
            if engine.accept(id).is_err() {
                // The peer gave up while it waited.
                engine.close(now, id);
                continue;
            }
            let (local, peer) = engine.ports(id).expect("accepted connection is live");
            st.slots.insert(
                id,
                Slot {
                    connected: true,
                    ..Slot::default()
                },
            );
            return Some(MuxStream::new(self.clone(), st.session, id, local, peer));
        }
        None
    }

    /// Handles the peer's hello: opens a session, notices a restarted peer, answers.
    pub fn on_hello(&self, st: &mut State, hello: Hello) {
        if hello.version != VERSION {
            self.terminate(
                st,
                MuxError::VersionMismatch {
                    ours: VERSION,
                    theirs: hello.version,
                },
            );
            return;
        }
        if hello.cid == st.cfg.cid {
            self.terminate(st, MuxError::SameCid(hello.cid));
            return;
        }
        match st.peer_nonce {
            Some(n) if n == hello.nonce => {}
            Some(_) => {
                self.end_session(st, "the peer restarted the link");
                self.start_session(st, hello);
            }
            None => self.start_session(st, hello),
        }
        if !hello.ack {
            st.hello_due = Some(true);
            self.kick();
        }
    }

    fn start_session(&self, st: &mut State, hello: Hello) {
        let mut config = st.cfg.engine_config(hello.cid);
        config.max_payload = config.max_payload.min(hello.max_payload.max(1));
        let mut engine = Engine::new(config);
        for &port in st.listeners.keys() {
            engine.listen(port, SocketType::Stream);
        }
        st.engine = Some(engine);
        st.peer_nonce = Some(hello.nonce);
        st.next_hello = None;
        tracing::debug!(peer_cid = hello.cid, session = st.session, "mux link up");
        self.status.send_replace(LinkStatus::Up {
            peer_cid: hello.cid,
        });
    }

    /// Ends the current session: every connection fails with `why`.
    pub fn end_session(&self, st: &mut State, why: &str) {
        if let Some(mut engine) = st.engine.take() {
            engine.reset_all(CloseReason::EngineReset);
        }
        self.wake_all_link_waiters();
        for slot in st.slots.values_mut() {
            slot.wake_all();
        }
        st.slots.clear();
        for l in st.listeners.values_mut() {
            l.pending.clear();
            l.ready = 0;
        }
        st.session += 1;
        st.peer_nonce = None;
        st.last_reset = Arc::from(why);
    }

    /// Tears a session down after a protocol error on the link and offers a new one.
    pub fn restart(&self, st: &mut State, why: String) {
        tracing::warn!(reason = %why, "mux link torn down");
        self.end_session(st, &why);
        st.our_nonce = random_nonce();
        st.hello_due = Some(false);
        st.hello_backoff = st.cfg.hello_interval;
        st.next_hello = None;
        self.status.send_replace(LinkStatus::Handshaking);
        self.kick();
    }

    /// Ends the mux for good.
    pub fn terminate(&self, st: &mut State, err: MuxError) {
        if st.closed.is_some() {
            return;
        }
        tracing::debug!(reason = %err, "mux link closed");
        self.end_session(st, &err.to_string());
        for l in st.listeners.values_mut() {
            wake(&mut l.waker);
        }
        st.closed = Some(err.clone());
        self.status.send_replace(LinkStatus::Closed(err));
        self.kick();
        if let Some(abort) = self
            .reader_abort
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .take()
        {
            abort.abort();
        }
    }
}

fn random_nonce() -> u64 {
    // RandomState is seeded from the OS per process and per instance: enough to tell one
    // link session from the next without another dependency.
    RandomState::new().hash_one(Instant::now())
}
