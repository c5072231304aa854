//! One connection's state: lifecycle, shutdown bits, credit and queues.

use crate::buffer::{RecvQueue, SendQueue};
use crate::credit::{RxCredit, TxCredit};
use crate::header::{shutdown, SocketType};
use std::time::Instant;

/// Why a connection ended.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum CloseReason {
    /// Both sides shut down and the close handshake completed.
    Graceful,
    /// The peer reset an established connection.
    Reset,
    /// The peer answered our REQUEST with RST: nothing listens on that port, or it is full.
    Refused,
    /// No RESPONSE arrived within the connect timeout (or the application never accepted).
    TimedOut,
    /// The peer broke the protocol on this connection (the detail names how); we reset it.
    ProtocolViolation(&'static str),
    /// The engine was reset as a whole (the link under it went away or the device was reset).
    EngineReset,
}

impl std::fmt::Display for CloseReason {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            CloseReason::Graceful => f.write_str("connection closed"),
            CloseReason::Reset => f.write_str("connection reset by peer"),
            CloseReason::Refused => f.write_str("connection refused by peer"),
            CloseReason::TimedOut => f.write_str("connection timed out"),
            CloseReason::ProtocolViolation(what) => write!(f, "peer broke the protocol: {what}"),
            CloseReason::EngineReset => f.write_str("transport reset"),
        }
    }
}

/// Lifecycle of a connection.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Phase {
    /// We sent (or will send) REQUEST and wait for RESPONSE.
    Connecting,
    /// The peer sent REQUEST; the application has not accepted yet.
    Incoming,
    /// Data may flow, subject to the shutdown bits.
    Established,
    /// The application released the connection; we flush, SHUTDOWN both ways, await RST.
    Closing,
    /// Nothing more goes on the wire; buffered data stays readable until release.
    Dead(CloseReason),
}

/// Control packets a connection owes the peer, sent ahead of data.
pub(crate) mod owed {
    pub const REQUEST: u8 = 1;
    pub const RESPONSE: u8 = 2;
    pub const CREDIT_UPDATE: u8 = 4;
    pub const CREDIT_REQUEST: u8 = 8;
    pub const SHUTDOWN: u8 = 16;
}

#[derive(Debug)]
pub(crate) struct Conn {
    pub local_port: u32,
    pub peer_port: u32,
    pub kind: SocketType,
    pub phase: Phase,
    pub tx: TxCredit,
    pub rx: RxCredit,
    pub send: SendQueue,
    pub recv: RecvQueue,
    /// Shutdown bits we have decided on (sent or owed).
    pub local_shut: u32,
    /// Shutdown bits the peer has sent; sticky.
    pub peer_shut: u32,
    /// Bitset of [`owed`] packets.
    pub owed: u8,
    pub deadline: Option<Instant>,
    /// Whether the application has released its handle.
    pub released: bool,
    /// A send was cut short; tell the application when room appears.
    pub write_blocked: bool,
    /// A writer waits outside the send queue for credit or for queued bytes to leave
    /// (see `Engine::wait_writable`).
    pub direct_waiting: bool,
    /// We asked for credit (or will, at `credit_request_at`) and have not seen the
    /// peer's `fwd_cnt` move since.
    pub credit_requested: bool,
    /// When a starved sender sends its CREDIT_REQUEST, unless credit comes first.
    pub credit_request_at: Option<Instant>,
    pub in_ctrl_queue: bool,
    pub in_data_queue: bool,
}

impl Conn {
    pub fn new(
        local_port: u32,
        peer_port: u32,
        kind: SocketType,
        phase: Phase,
        buf_alloc: u32,
    ) -> Self {
        Conn {
            local_port,
            peer_port,
            kind,
            phase,
            tx: TxCredit::default(),
            rx: RxCredit::new(buf_alloc),
            send: SendQueue::default(),
            recv: RecvQueue::default(),
            local_shut: 0,
            peer_shut: 0,
            owed: 0,
            deadline: None,
            released: false,
            write_blocked: false,
            direct_waiting: false,
            credit_requested: false,
            credit_request_at: None,
            in_ctrl_queue: false,
            in_data_queue: false,
        }
    }

    /// Whether a writer waiting outside the send queue is short of credit: nothing is
    /// queued that would make the engine ask for credit by itself.
    pub fn direct_starved(&self, min_packet: u32) -> bool {
        let useful = min_packet.min(self.tx.peer_buf_alloc / 4).max(1);
        self.direct_waiting && self.send.is_empty() && self.tx.available() < useful
    }

    /// Whether packets may still be exchanged in the data phase.
    pub fn is_open(&self) -> bool {
        matches!(self.phase, Phase::Established | Phase::Closing)
    }

    /// Whether our direction towards the peer is still open.
    pub fn can_send(&self) -> bool {
        self.local_shut & shutdown::SEND == 0 && self.peer_shut & shutdown::RCV == 0
    }

    /// Bytes of data the next RW may carry now, `None` when blocked. `Some(0)` is an empty
    /// seqpacket message, which needs no credit.
    ///
    /// Stays silent while the peer's credit is below a useful packet, so a peer that frees
    /// a few bytes at a time is not flooded with tiny packets (some guests reset for that).
    pub fn sendable(&self, max_payload: u32, min_packet: u32) -> Option<u32> {
        if !self.is_open() || self.send.is_empty() {
            return None;
        }
        let want = self.send.next_len(max_payload as usize) as u32;
        if want == 0 {
            return Some(0);
        }
        let credit = self.tx.available();
        let useful = min_packet.min(want).min(self.tx.peer_buf_alloc / 4).max(1);
        if credit < useful {
            return None;
        }
        Some(want.min(credit))
    }

    /// Whether a SHUTDOWN is owed and may go now: one that closes our sending side waits
    /// until every queued byte has been sent.
    pub fn shutdown_ready(&self) -> bool {
        self.owed & owed::SHUTDOWN != 0
            && (self.local_shut & shutdown::SEND == 0 || self.send.is_empty())
    }

    /// Drops unread data nobody will read, counting it as consumed so the peer's credit
    /// keeps moving.
    pub fn discard_received(&mut self) {
        self.rx.consume(self.recv.len() as u32);
        self.recv.clear();
    }

    /// Owed control packets that may be sent now.
    pub fn ctrl_ready(&self) -> bool {
        let others = self.owed & !owed::SHUTDOWN;
        others != 0 || self.shutdown_ready()
    }
}
