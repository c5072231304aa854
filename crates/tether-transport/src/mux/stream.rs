//! One mux connection as a tokio byte stream.

use super::driver::WhenBusy;
use super::state::{Shared, State};
use super::Keepalive;
use std::io;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Instant;
use tether_vsock::{CloseReason, ConnId, Engine, Shutdown, StreamError};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};

/// Writes shorter than this, made while the connection is [streaming], are queued and
/// left to the writer task instead of written at once: the task takes what gathered by
/// the time it runs, joined into full packets, so a stream of 4 KiB writes costs a link
/// write per 64 KiB rather than one per write, and the peer reads full packets.
///
/// [streaming]: MuxStream::streaming
const COALESCE_BELOW: usize = 16 * 1024;

/// Bytes written and not yet consumed by the peer (as far as its latest packet tells) from
/// which a connection counts as streaming. A request or a ping on a connection whose peer
/// has read what it was sent goes out at once, from the writing task. The peer announces
/// what it read only every quarter of its buffer, so after a burst a small write may still
/// count as streaming: it then waits one task hand-off, never for credit or a timer.
const STREAMING_UNCONSUMED: usize = 64 * 1024;

/// A connection over a mux link: `AsyncRead + AsyncWrite`, where `shutdown()` is a
/// half-close (the peer reads EOF, this end can still read) and dropping closes both ways.
pub struct MuxStream {
    shared: Arc<Shared>,
    session: u64,
    id: ConnId,
    local_port: u32,
    peer_port: u32,
    _keepalive: Option<Arc<Keepalive>>,
}

impl std::fmt::Debug for MuxStream {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("MuxStream")
            .field("local_port", &self.local_port)
            .field("peer_port", &self.peer_port)
            .finish()
    }
}

impl MuxStream {
    pub(crate) fn new(
        shared: Arc<Shared>,
        session: u64,
        id: ConnId,
        local_port: u32,
        peer_port: u32,
    ) -> Self {
        MuxStream {
            shared,
            session,
            id,
            local_port,
            peer_port,
            _keepalive: None,
        }
    }

    pub(crate) fn with_keepalive(mut self, k: Arc<Keepalive>) -> Self {
        self._keepalive = Some(k);
        self
    }

    pub(crate) fn session(&self) -> u64 {
        self.session
    }

    pub(crate) fn id(&self) -> ConnId {
        self.id
    }

    /// This end's port.
    pub fn local_port(&self) -> u32 {
        self.local_port
    }

    /// The peer's port.
    pub fn peer_port(&self) -> u32 {
        self.peer_port
    }

    /// Runs `op` on this connection's engine, hands out events, then writes whatever
    /// the engine now owes the link from this task.
    fn with_engine<T>(
        &self,
        cx: &mut Context<'_>,
        op: impl FnOnce(&mut Engine, &mut State) -> Result<T, StreamError>,
    ) -> Result<T, io::Error> {
        let (out, owes) = self.with_engine_locked(op);
        if owes {
            self.shared.flush_link(cx, false);
        }
        out
    }

    /// Whether this connection is streaming: enough of what it wrote is still unread by
    /// the peer that a small write can wait to be joined with the next ones.
    fn streaming(&self) -> bool {
        self.engine_says(|e| e.unconsumed_len(self.id) >= STREAMING_UNCONSUMED)
    }

    /// Whether this connection has bytes queued that the peer has credit for: they wait
    /// only for the link, and a large write waits behind them rather than be copied in
    /// after them. Without this, connections that once queued (the link was busy) keep
    /// queueing every write, since a direct write must not overtake queued bytes.
    fn queued_behind_busy_link(&self) -> bool {
        self.engine_says(|e| e.queued_sendable(self.id))
    }

    /// `ask` of this connection's session's engine; false when the session is gone.
    fn engine_says(&self, ask: impl FnOnce(&Engine) -> bool) -> bool {
        let st = self.shared.lock();
        st.session == self.session && st.engine.as_ref().is_some_and(ask)
    }

    /// The result, and whether the engine now owes the link a packet.
    fn with_engine_locked<T>(
        &self,
        op: impl FnOnce(&mut Engine, &mut State) -> Result<T, StreamError>,
    ) -> (Result<T, io::Error>, bool) {
        let mut guard = self.shared.lock();
        let st = &mut *guard;
        if st.session != self.session {
            let err = io::Error::new(io::ErrorKind::ConnectionAborted, st.session_error());
            return (Err(err), false);
        }
        let Some(mut engine) = st.engine.take() else {
            let err = io::Error::new(io::ErrorKind::NotConnected, "mux link is down");
            return (Err(err), false);
        };
        let out = op(&mut engine, st);
        st.engine = Some(engine);
        self.shared.dispatch(st);
        let owes = st.engine.as_ref().is_some_and(Engine::has_transmit);
        (out.map_err(|e| to_io(e, st)), owes)
    }
}

fn to_io(e: StreamError, st: &State) -> io::Error {
    use io::ErrorKind as K;
    let kind = match e {
        StreamError::WouldBlock => K::WouldBlock,
        StreamError::UnknownConnection => K::NotConnected,
        StreamError::BrokenPipe => K::BrokenPipe,
        StreamError::Closed(CloseReason::Reset) => K::ConnectionReset,
        StreamError::Closed(CloseReason::Refused) => K::ConnectionRefused,
        StreamError::Closed(CloseReason::TimedOut) => K::TimedOut,
        StreamError::Closed(CloseReason::EngineReset) => {
            return io::Error::new(K::ConnectionAborted, st.session_error())
        }
        StreamError::Closed(_) => K::ConnectionAborted,
        StreamError::MessageTooLarge { .. } | StreamError::WrongType(_) => K::InvalidInput,
    };
    io::Error::new(kind, e)
}

impl AsyncRead for MuxStream {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let id = self.id;
        let waker = cx.waker().clone();
        let res = self.with_engine(cx, |engine, st| {
            let n = engine.recv(id, buf.initialize_unfilled());
            if matches!(n, Err(StreamError::WouldBlock)) {
                // Park under the same lock as the check, so a wake cannot slip between.
                if let Some(slot) = st.slots.get_mut(&id) {
                    slot.read = Some(waker);
                }
            }
            n
        });
        match res {
            Ok(n) => {
                buf.advance(n);
                Poll::Ready(Ok(()))
            }
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => Poll::Pending,
            Err(e) => Poll::Ready(Err(e)),
        }
    }
}

impl AsyncWrite for MuxStream {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        data: &[u8],
    ) -> Poll<io::Result<usize>> {
        let id = self.id;
        let small = data.len() < COALESCE_BELOW;
        let coalesce = small && self.streaming();
        if !small {
            // Listed before the check, so a flush that empties the queue meanwhile still
            // finds us to wake.
            self.shared.wait_for_link(self.id, cx);
            if self.queued_behind_busy_link() {
                self.shared.kick();
                return Poll::Pending;
            }
            self.shared.stop_waiting_for_link(self.id);
        }
        if !coalesce {
            // Large writes wait for a busy link rather than be copied into the queue.
            let when_busy = if small {
                WhenBusy::Queue
            } else {
                WhenBusy::Wait
            };
            match self
                .shared
                .write_direct(cx, self.session, id, data, when_busy)
            {
                Poll::Pending => return Poll::Pending,
                Poll::Ready(Some(res)) => return Poll::Ready(res),
                Poll::Ready(None) => {}
            }
        }
        let waker = cx.waker().clone();
        let (res, owes) = self.with_engine_locked(|engine, st| {
            let n = engine.send(id, data);
            if matches!(n, Err(StreamError::WouldBlock)) {
                if let Some(slot) = st.slots.get_mut(&id) {
                    slot.write = Some(waker);
                }
            }
            n
        });
        match (owes, coalesce) {
            (true, true) => self.shared.kick(),
            (true, false) => {
                self.shared.flush_link(cx, false);
            }
            (false, _) => {}
        }
        match res {
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => Poll::Pending,
            other => Poll::Ready(other),
        }
    }

    fn poll_flush(self: Pin<&mut Self>, _cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        // Queued bytes go out in order without further action, as with a socket.
        Poll::Ready(Ok(()))
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let id = self.id;
        let res = self.with_engine(cx, |engine, _| match engine.shutdown(id, Shutdown::Write) {
            Err(StreamError::Closed(CloseReason::Graceful)) => Ok(()),
            other => other,
        });
        Poll::Ready(res)
    }
}

impl Drop for MuxStream {
    fn drop(&mut self) {
        let mut st = self.shared.lock();
        if st.session != self.session {
            return;
        }
        st.slots.remove(&self.id);
        if let Some(engine) = st.engine.as_mut() {
            engine.close(Instant::now(), self.id);
        }
        self.shared.dispatch(&mut st);
        drop(st);
        self.shared.kick();
    }
}
