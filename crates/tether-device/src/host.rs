//! One host-side Unix stream and the vsock connection it is bridged to.

use crate::connect_line::ConnectLine;
use bytes::{Buf, Bytes, BytesMut};
use std::io::{self, Read, Write};
use std::net::Shutdown as NetShutdown;
use std::os::unix::net::UnixStream;
use std::time::Instant;
use tether_vsock::{CloseReason, ConnId, Engine, Shutdown, StreamError};
use vmm_sys_util::epoll::EventSet;

/// A stream with this much queued for the guest reads no more until the guest has taken
/// it: bytes the host writes meanwhile gather in the socket and leave in full packets,
/// instead of one small packet per small write. One Linux RX buffer's worth.
const LOW_WATER: usize = 4096;

/// Largest chunk moved between a host socket and the engine in one call.
pub(crate) const CHUNK: usize = 256 * 1024;

/// Where a host stream stands.
#[derive(Debug)]
pub(crate) enum Phase {
    /// A client of the hybrid socket is still sending its `CONNECT <port>\n` line.
    Line {
        line: ConnectLine,
        deadline: Instant,
    },
    /// REQUEST sent to the guest; `OK` goes back once it answers.
    Connecting(ConnId),
    /// Bytes flow both ways.
    Open(ConnId),
}

/// What became of a host stream after some I/O.
#[derive(Debug, PartialEq, Eq)]
pub(crate) enum Outcome {
    /// Still in use.
    Live,
    /// Both directions finished: release the vsock side gracefully and drop the stream.
    Finished,
    /// The stream failed (or was abandoned): drop it, and close the vsock side.
    Failed,
}

/// A Unix stream on the host bridged to one vsock connection.
#[derive(Debug)]
pub(crate) struct HostConn {
    pub(crate) stream: UnixStream,
    pub(crate) phase: Phase,
    /// Guest bytes taken from the engine and not yet accepted by the host socket.
    out: Bytes,
    /// The host sent EOF (or stopped reading us); SHUTDOWN(SEND) went to the engine.
    host_eof: bool,
    /// The guest's stream ended and every byte of it reached the host; we shut our
    /// writing side.
    guest_eof_delivered: bool,
    /// The vsock connection ended; drop the stream once the remaining bytes are out.
    dead: Option<CloseReason>,
    /// Interest currently registered with epoll (`None`: not registered).
    pub(crate) registered: Option<EventSet>,
}

impl HostConn {
    pub(crate) fn new(stream: UnixStream, phase: Phase) -> Self {
        HostConn {
            stream,
            phase,
            out: Bytes::new(),
            host_eof: false,
            guest_eof_delivered: false,
            dead: None,
            registered: None,
        }
    }

    /// The vsock connection, once there is one.
    pub(crate) fn id(&self) -> Option<ConnId> {
        match self.phase {
            Phase::Line { .. } => None,
            Phase::Connecting(id) | Phase::Open(id) => Some(id),
        }
    }

    /// The guest accepted: tell the client which host port it got, as Firecracker does.
    pub(crate) fn opened(&mut self, id: ConnId, local_port: u32) {
        self.phase = Phase::Open(id);
        self.out = Bytes::from(format!("OK {local_port}\n"));
    }

    /// The vsock side ended for `reason`.
    pub(crate) fn ended(&mut self, reason: CloseReason) {
        self.dead = Some(reason);
    }

    /// Whether this stream waits for its queued bytes to reach the guest before it reads
    /// more (see [`HostConn::interest`]).
    pub(crate) fn waits_for_guest(&self, engine: &Engine) -> bool {
        match self.phase {
            Phase::Line { .. } => false,
            Phase::Connecting(id) | Phase::Open(id) => {
                !self.host_eof && self.dead.is_none() && engine.send_queue_len(id) >= LOW_WATER
            }
        }
    }

    /// The epoll interest this stream needs now.
    pub(crate) fn interest(&self, engine: &Engine) -> EventSet {
        let mut set = EventSet::empty();
        let wants_read = match self.phase {
            Phase::Line { .. } => true,
            Phase::Connecting(id) | Phase::Open(id) => {
                !self.host_eof && self.dead.is_none() && engine.send_queue_len(id) < LOW_WATER
            }
        };
        if wants_read {
            set |= EventSet::IN;
        }
        if !self.out.is_empty() {
            set |= EventSet::OUT;
        }
        set
    }

    /// Moves host bytes into the engine, at most one read per call so that busy streams
    /// take turns. Returns how the stream stands afterwards.
    pub(crate) fn pump_in(&mut self, engine: &mut Engine, scratch: &mut [u8]) -> Outcome {
        let Some(id) = self.id() else {
            return Outcome::Live;
        };
        if self.host_eof || self.dead.is_some() {
            return Outcome::Live;
        }
        let room = send_room(engine, id).min(scratch.len());
        if room == 0 {
            return Outcome::Live;
        }
        match (&self.stream).read(&mut scratch[..room]) {
            Ok(0) => {
                self.host_eof = true;
                let _ = engine.shutdown(id, Shutdown::Write);
                self.finished_or_live()
            }
            Ok(n) => match engine.send(id, &scratch[..n]) {
                Ok(_) => Outcome::Live,
                Err(_) => Outcome::Failed,
            },
            Err(e) if would_block(&e) => Outcome::Live,
            Err(_) => Outcome::Failed,
        }
    }

    /// Moves guest bytes to the host socket until it is full or nothing is left; once the
    /// guest's stream ended and all of it went out, shuts our writing side (half-close).
    pub(crate) fn pump_out(&mut self, engine: &mut Engine) -> Outcome {
        loop {
            if self.out.is_empty() && !self.refill(engine) {
                return self.finished_or_live();
            }
            match (&self.stream).write(&self.out) {
                Ok(n) => self.out.advance(n),
                Err(e) if would_block(&e) => return Outcome::Live,
                Err(_) => return Outcome::Failed,
            }
        }
    }

    /// Takes the next guest bytes from the engine; `false` when there are none now.
    fn refill(&mut self, engine: &mut Engine) -> bool {
        let Phase::Open(id) = self.phase else {
            return false;
        };
        if self.guest_eof_delivered {
            return false;
        }
        match engine.recv_bytes(id, CHUNK) {
            Ok(bytes) if !bytes.is_empty() => {
                self.out = gather_small(engine, id, bytes);
                true
            }
            Ok(_) => {
                // End of the guest's stream: pass the half-close on.
                self.guest_eof_delivered = true;
                let _ = self.stream.shutdown(NetShutdown::Write);
                false
            }
            Err(StreamError::WouldBlock) => false,
            Err(_) => {
                // The connection is gone and nothing more is buffered.
                self.guest_eof_delivered = true;
                false
            }
        }
    }

    /// The guest will receive no more: the host's further writes must fail rather than
    /// pile up unread.
    pub(crate) fn guest_stopped_reading(&mut self, engine: &mut Engine) {
        if !self.host_eof {
            self.host_eof = true;
            let _ = self.stream.shutdown(NetShutdown::Read);
            if let Some(id) = self.id() {
                let _ = engine.shutdown(id, Shutdown::Write);
            }
        }
    }

    fn finished_or_live(&self) -> Outcome {
        let drained = self.out.is_empty() && self.guest_eof_delivered;
        match self.dead {
            Some(CloseReason::Graceful) if drained => Outcome::Finished,
            Some(CloseReason::Graceful) => Outcome::Live,
            Some(_) => Outcome::Failed,
            None if drained && self.host_eof => Outcome::Finished,
            None => Outcome::Live,
        }
    }
}

/// Joins a small received packet with the ones queued behind it, so a guest writing in
/// small pieces costs one host write per batch rather than one per packet. Large packets
/// go out as they are, without a copy.
fn gather_small(engine: &mut Engine, id: ConnId, first: Bytes) -> Bytes {
    const SMALL: usize = 16 * 1024;
    let more = engine.readable_len(id);
    if first.len() >= SMALL || more == 0 {
        return first;
    }
    let total = (first.len() + more).min(CHUNK);
    let mut buf = BytesMut::with_capacity(total);
    buf.extend_from_slice(&first);
    let start = buf.len();
    buf.resize(total, 0);
    let n = engine.recv(id, &mut buf[start..]).unwrap_or(0);
    buf.truncate(start + n);
    buf.freeze()
}

/// Room in the engine's send queue for this connection (0 once it cannot send).
fn send_room(engine: &Engine, id: ConnId) -> usize {
    let queued = engine.send_queue_len(id);
    (engine.config().send_buf as usize).saturating_sub(queued)
}

fn would_block(e: &io::Error) -> bool {
    matches!(
        e.kind(),
        io::ErrorKind::WouldBlock | io::ErrorKind::Interrupted
    )
}
