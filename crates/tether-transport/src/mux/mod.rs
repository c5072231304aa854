//! vsock over any byte stream: many connections with ports, credit flow control and
//! half-close over one serial port, pipe, Unix socket or TCP connection.
//!
//! Both ends run the `tether-vsock` engine and exchange its packets (the 44-byte
//! virtio-vsock header and payload) framed back to back after a short handshake; see
//! `docs/mux.md`. A slow reader on one connection holds back only its own writer: every
//! connection has its own credit, so one full buffer never blocks the others.
//!
//! ```no_run
//! # async fn demo() -> Result<(), Box<dyn std::error::Error>> {
//! use tether_transport::mux::{Mux, MuxConfig};
//! use tokio::io::{AsyncReadExt, AsyncWriteExt};
//!
//! let (a, b) = tokio::net::UnixStream::pair()?;
//! let host = Mux::new(a, MuxConfig::host());
//! let guest = Mux::new(b, MuxConfig::guest(3));
//!
//! let mut listener = guest.listen(1024)?;
//! let mut conn = host.connect(1024).await?;
//! let mut served = listener.accept().await?;
//!
//! conn.write_all(b"hello").await?;
//! conn.shutdown().await?; // half-close: the guest reads EOF after "hello"
//! let mut got = Vec::new();
//! served.read_to_end(&mut got).await?;
//! assert_eq!(got, b"hello");
//! # Ok(()) }
//! ```

mod chardev;
mod driver;
pub mod link;
mod state;
mod stream;
mod waiters;

pub use chardev::CharDevice;
pub use stream::MuxStream;

use state::{ListenSlot, Shared, Slot};
use std::future::poll_fn;
use std::sync::Arc;
use std::task::Poll;
use std::time::{Duration, Instant};
use tether_vsock::{CloseReason, Config, SetupError, SocketType, HOST_CID};
use thiserror::Error;
use tokio::io::{AsyncRead, AsyncWrite};

/// Settings of one end of a mux link.
#[derive(Clone, Debug)]
pub struct MuxConfig {
    /// This end's CID, announced in the handshake (the peer must use another).
    pub cid: u64,
    /// Receive buffer per connection (advertised credit).
    pub buf_alloc: u32,
    /// Send queue bound per connection.
    pub send_buf: u32,
    /// Largest packet payload this end accepts and sends.
    pub max_payload: u32,
    /// Connections at most.
    pub max_connections: usize,
    /// How long a connect waits for the link to come up and then for the peer to accept.
    pub connect_timeout: Duration,
    /// How long a closed connection waits for the peer's final RST.
    pub close_timeout: Duration,
    /// How long a writer starved of credit waits for the peer's own credit update before
    /// asking for one (a tether peer always sends one as its reader frees room).
    pub credit_request_delay: Duration,
    /// First pause between hellos while the peer is silent (doubles up to 2 s).
    pub hello_interval: Duration,
    /// Connections per listener answered before the application accepts them; further
    /// ones wait unanswered until `accept` makes room (as TCP's accept queue).
    pub accept_backlog: usize,
}

impl MuxConfig {
    /// Settings for an end with `cid`: 1 MiB receive credit and a 256 KiB send queue per
    /// connection, 64 KiB packets, 4096 connections, 10 s connect timeout (a guest may
    /// still be booting), 8 s close timeout.
    ///
    /// Why 1 MiB of credit: with 256 KiB, one connection writing 64 KiB at a time spent
    /// much of its time waiting for credit. 512 KiB moved 35-45 % more. 1 MiB, with the
    /// engine's credit update every 128 KiB read rather than every 64 KiB, moved 2-18 %
    /// more again at 64 KiB writes, with one connection and with 100, with 4 KiB writes
    /// unchanged within noise; 2 MiB did 2-5 % worse than 512 KiB in two of four cases. The credit bounds what a
    /// connection's unread bytes can take: 1 MiB per connection whose reader stops.
    pub fn new(cid: u64) -> Self {
        MuxConfig {
            cid,
            buf_alloc: 1024 * 1024,
            send_buf: 256 * 1024,
            max_payload: 64 * 1024,
            max_connections: 4096,
            connect_timeout: Duration::from_secs(10),
            close_timeout: Duration::from_secs(8),
            credit_request_delay: Duration::from_millis(100),
            hello_interval: Duration::from_millis(100),
            accept_backlog: 128,
        }
    }

    /// The host end (CID 2).
    pub fn host() -> Self {
        MuxConfig::new(HOST_CID)
    }

    /// A guest end with its CID.
    pub fn guest(cid: u64) -> Self {
        MuxConfig::new(cid)
    }

    fn engine_config(&self, peer_cid: u64) -> Config {
        let mut c = Config::new(self.cid, peer_cid);
        c.buf_alloc = self.buf_alloc;
        c.send_buf = self.send_buf;
        c.max_payload = self.max_payload.clamp(1, link::MAX_PAYLOAD_LIMIT);
        c.max_connections = self.max_connections;
        c.connect_timeout = self.connect_timeout;
        c.close_timeout = self.close_timeout;
        c.credit_request_delay = self.credit_request_delay;
        c
    }
}

/// Where the link stands.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum LinkStatus {
    /// Waiting for the peer's hello.
    Handshaking,
    /// A session is up with the peer.
    Up {
        /// The CID the peer announced.
        peer_cid: u64,
    },
    /// The link is gone for good.
    Closed(MuxError),
}

/// What went wrong on a mux or one of its connections.
#[derive(Clone, Debug, PartialEq, Eq, Error)]
pub enum MuxError {
    /// The byte stream under the mux ended or failed; nothing more will pass.
    #[error("mux link closed: {0}")]
    LinkClosed(String),
    /// The session this connection belonged to ended (peer restart or malformed input);
    /// the link itself may have reopened.
    #[error("mux link reset: {0}")]
    LinkReset(String),
    /// The peer did not complete the handshake in time.
    #[error("mux link not up: no handshake from the peer within {0:?}")]
    NotUp(Duration),
    /// The peer speaks another version of the mux wire format.
    #[error("mux version mismatch: this end speaks {ours}, the peer {theirs}")]
    VersionMismatch {
        /// Our version.
        ours: u16,
        /// The peer's version.
        theirs: u16,
    },
    /// Both ends announced the same CID.
    #[error("both ends of the mux link claim CID {0}; give them different CIDs")]
    SameCid(u64),
    /// A connect to a port failed.
    #[error("connect to port {port}: {reason}")]
    Connect {
        /// The peer port.
        port: u32,
        /// How it ended.
        reason: CloseReason,
    },
    /// The connection table refused.
    #[error("{0}")]
    Setup(#[from] SetupError),
    /// Someone on this end already listens on the port.
    #[error("port {0} already has a listener on this end")]
    AlreadyListening(u32),
}

/// Keeps the link alive while any handle exists; the last one closes it.
pub(crate) struct Keepalive(Arc<Shared>);

impl Drop for Keepalive {
    fn drop(&mut self) {
        // The writer sends what is already queued (a last reply, a SHUTDOWN) and then
        // closes the link, so dropping everything right after a write loses nothing.
        self.0.lock().draining = true;
        self.0.kick();
    }
}

/// One end of a mux link. Cheap to clone; the link closes when every clone, listener
/// and stream is dropped.
#[derive(Clone)]
pub struct Mux {
    shared: Arc<Shared>,
    keepalive: Arc<Keepalive>,
}

impl Mux {
    /// Starts a mux over `io` on the current tokio runtime. The handshake runs in the
    /// background; connects wait for it.
    ///
    /// Reading and writing share `io` through a lock; for a socket, prefer
    /// [`Mux::from_halves`] with its owned halves, so the two directions never wait on
    /// each other.
    pub fn new<T>(io: T, config: MuxConfig) -> Mux
    where
        T: AsyncRead + AsyncWrite + Send + 'static,
    {
        let (rd, wr) = tokio::io::split(io);
        Mux::from_halves(rd, wr, config)
    }

    /// Starts a mux over separate read and write halves, such as those of
    /// `UnixStream::into_split` or `TcpStream::into_split`.
    ///
    /// ```no_run
    /// # async fn demo() -> std::io::Result<()> {
    /// use tether_transport::mux::{Mux, MuxConfig};
    /// let sock = tokio::net::UnixStream::connect("/run/vm/serial.sock").await?;
    /// let (rd, wr) = sock.into_split();
    /// let host = Mux::from_halves(rd, wr, MuxConfig::host());
    /// # Ok(()) }
    /// ```
    pub fn from_halves<R, W>(rd: R, wr: W, config: MuxConfig) -> Mux
    where
        R: AsyncRead + Unpin + Send + 'static,
        W: AsyncWrite + Send + 'static,
    {
        let shared = Shared::new(config);
        *shared.output.lock().unwrap_or_else(|e| e.into_inner()) = Some(driver::Output::new(wr));
        let reader = tokio::spawn(driver::read_loop(shared.clone(), rd));
        *shared
            .reader_abort
            .lock()
            .unwrap_or_else(|e| e.into_inner()) = Some(reader.abort_handle());
        tokio::spawn(driver::write_loop(shared.clone()));
        Mux {
            keepalive: Arc::new(Keepalive(shared.clone())),
            shared,
        }
    }

    /// Where the link stands now.
    pub fn status(&self) -> LinkStatus {
        self.shared.status.borrow().clone()
    }

    /// Waits until a session is up (or the connect timeout passes); returns the peer CID.
    pub async fn ready(&self) -> Result<u64, MuxError> {
        let timeout = self.shared.lock().cfg.connect_timeout;
        let mut rx = self.shared.status.subscribe();
        let status = tokio::time::timeout(timeout, async {
            rx.wait_for(|s| !matches!(s, LinkStatus::Handshaking))
                .await
                .map(|s| s.clone())
        })
        .await;
        match status {
            Err(_) => Err(MuxError::NotUp(timeout)),
            Ok(Err(_)) => Err(MuxError::LinkClosed("mux dropped".into())),
            Ok(Ok(LinkStatus::Up { peer_cid })) => Ok(peer_cid),
            Ok(Ok(LinkStatus::Closed(e))) => Err(e),
            Ok(Ok(LinkStatus::Handshaking)) => unreachable!("waited for another status"),
        }
    }

    /// Opens a stream connection to the peer's `port`.
    pub async fn connect(&self, port: u32) -> Result<MuxStream, MuxError> {
        self.ready().await?;
        let stream = {
            let mut st = self.shared.lock();
            let session = st.session;
            let ended = st.session_error();
            let engine = st.engine.as_mut().ok_or(ended)?;
            let id = engine.connect(Instant::now(), port, SocketType::Stream)?;
            let (local, _) = engine.ports(id).expect("just created");
            st.slots.insert(id, Slot::default());
            MuxStream::new(self.shared.clone(), session, id, local, port)
        };
        poll_fn(|cx| {
            self.shared.flush_link(cx, false);
            let mut st = self.shared.lock();
            if st.session != stream.session() {
                return Poll::Ready(Err(st.session_error()));
            }
            let slot = st
                .slots
                .get_mut(&stream.id())
                .expect("stream holds its slot");
            if slot.connected {
                return Poll::Ready(Ok(()));
            }
            if let Some(reason) = slot.closed {
                return Poll::Ready(Err(MuxError::Connect { port, reason }));
            }
            slot.connect = Some(cx.waker().clone());
            Poll::Pending
        })
        .await?;
        Ok(stream.with_keepalive(self.keepalive.clone()))
    }

    /// Accepts stream connections to `port`.
    pub fn listen(&self, port: u32) -> Result<MuxListener, MuxError> {
        let mut st = self.shared.lock();
        if let Some(err) = &st.closed {
            return Err(err.clone());
        }
        if st.listeners.contains_key(&port) {
            return Err(MuxError::AlreadyListening(port));
        }
        st.listeners.insert(port, ListenSlot::default());
        if let Some(engine) = st.engine.as_mut() {
            engine.listen(port, SocketType::Stream);
        }
        Ok(MuxListener {
            port,
            shared: self.shared.clone(),
            keepalive: self.keepalive.clone(),
        })
    }
}

/// Accepts connections to one port of a [`Mux`]. Dropping it stops listening.
pub struct MuxListener {
    port: u32,
    shared: Arc<Shared>,
    keepalive: Arc<Keepalive>,
}

impl MuxListener {
    /// The port listened on.
    pub fn port(&self) -> u32 {
        self.port
    }

    /// The next accepted connection. Fails once the link is closed for good; across a
    /// session reset the listener keeps working.
    pub async fn accept(&mut self) -> Result<MuxStream, MuxError> {
        let stream = poll_fn(|cx| {
            let mut st = self.shared.lock();
            if let Some(err) = &st.closed {
                return Poll::Ready(Err(err.clone()));
            }
            if let Some(s) = self.shared.accept_pending(&mut st, self.port) {
                return Poll::Ready(Ok(s));
            }
            let slot = st
                .listeners
                .get_mut(&self.port)
                .expect("listener holds its slot");
            slot.waker = Some(cx.waker().clone());
            Poll::Pending
        })
        .await?;
        Ok(stream.with_keepalive(self.keepalive.clone()))
    }
}

impl Drop for MuxListener {
    fn drop(&mut self) {
        let now = Instant::now();
        let mut st = self.shared.lock();
        let pending = st
            .listeners
            .remove(&self.port)
            .map(|l| l.pending)
            .unwrap_or_default();
        if let Some(engine) = st.engine.as_mut() {
            engine.unlisten(self.port);
            for id in pending {
                engine.close(now, id);
            }
        }
        self.shared.kick();
    }
}
