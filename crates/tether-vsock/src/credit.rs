//! Credit-based flow control, both directions of one connection.
//!
//! All counters are free-running `u32`s compared with wrapping arithmetic, as the spec
//! requires: `peer_free = peer_buf_alloc - (tx_cnt - peer_fwd_cnt)`.

/// What we may send: the peer's advertised buffer and how much of it we have used.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct TxCredit {
    /// Bytes of payload we have sent, free-running.
    pub tx_cnt: u32,
    /// The peer's receive buffer, from its latest packet.
    pub peer_buf_alloc: u32,
    /// The peer's consumed count, from its latest packet.
    pub peer_fwd_cnt: u32,
}

impl TxCredit {
    /// Records the credit fields every packet of the flow carries.
    pub fn update(&mut self, buf_alloc: u32, fwd_cnt: u32) {
        self.peer_buf_alloc = buf_alloc;
        self.peer_fwd_cnt = fwd_cnt;
    }

    /// Bytes sent that the peer has not yet told us it consumed.
    pub fn in_flight(&self) -> u32 {
        self.tx_cnt.wrapping_sub(self.peer_fwd_cnt)
    }

    /// Bytes the peer can still take. Zero, not a wrapped huge value, when the peer has
    /// shrunk its buffer below what is already in flight.
    pub fn available(&self) -> u32 {
        self.peer_buf_alloc.saturating_sub(self.in_flight())
    }

    /// Accounts for `n` bytes sent; the caller has checked `n <= available()`.
    pub fn consume(&mut self, n: u32) {
        debug_assert!(n <= self.available(), "RW beyond the peer's credit");
        self.tx_cnt = self.tx_cnt.wrapping_add(n);
    }
}

/// What we promise to receive: our buffer, what has arrived and what the reader consumed.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct RxCredit {
    /// Our receive buffer, advertised in every packet.
    pub buf_alloc: u32,
    /// Bytes received, free-running.
    pub rx_cnt: u32,
    /// Bytes the application has consumed, free-running; advertised in every packet.
    pub fwd_cnt: u32,
    /// The `fwd_cnt` the peer last saw from us.
    pub last_advertised: u32,
}

impl RxCredit {
    /// A fresh receive side with `buf_alloc` bytes of buffer.
    pub fn new(buf_alloc: u32) -> Self {
        RxCredit {
            buf_alloc,
            rx_cnt: 0,
            fwd_cnt: 0,
            last_advertised: 0,
        }
    }

    /// Bytes received and not yet consumed.
    pub fn buffered(&self) -> u32 {
        self.rx_cnt.wrapping_sub(self.fwd_cnt)
    }

    /// Room left in our buffer.
    pub fn free(&self) -> u32 {
        self.buf_alloc.saturating_sub(self.buffered())
    }

    /// Room the peer believes it has, judging by what we last advertised.
    pub fn peer_visible_free(&self) -> u32 {
        let unacked = self.rx_cnt.wrapping_sub(self.last_advertised);
        self.buf_alloc.saturating_sub(unacked)
    }

    /// Accepts `n` received bytes, or returns `false` when they exceed the credit we gave.
    pub fn receive(&mut self, n: u32) -> bool {
        if n > self.free() {
            return false;
        }
        self.rx_cnt = self.rx_cnt.wrapping_add(n);
        true
    }

    /// Records that the application consumed `n` bytes.
    pub fn consume(&mut self, n: u32) {
        self.fwd_cnt = self.fwd_cnt.wrapping_add(n);
    }

    /// Notes that a packet carrying our current `fwd_cnt` is on its way to the peer.
    pub fn advertised(&mut self) {
        self.last_advertised = self.fwd_cnt;
    }

    /// Whether a CREDIT_UPDATE would help: the reader freed at least `threshold` bytes the
    /// peer does not know about yet, or the peer is stalled on zero credit while room exists.
    ///
    /// Checking this after every read, rather than updating after every read, keeps the
    /// packet count down when the reader takes small bites.
    pub fn update_worthwhile(&self, threshold: u32) -> bool {
        let unadvertised = self.fwd_cnt.wrapping_sub(self.last_advertised);
        if unadvertised == 0 {
            return false;
        }
        unadvertised >= threshold || self.peer_visible_free() == 0
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tx_available_wraps_around_u32() {
        let mut tx = TxCredit {
            tx_cnt: u32::MAX - 10,
            peer_buf_alloc: 100,
            peer_fwd_cnt: u32::MAX - 10,
        };
        assert_eq!(tx.available(), 100);
        tx.consume(60);
        assert_eq!(tx.tx_cnt, 49);
        assert_eq!(tx.available(), 40);
        tx.update(100, 20); // peer consumed 31 bytes, wrapping past zero
        assert_eq!(tx.available(), 71);
    }

    #[test]
    fn tx_available_is_zero_when_peer_shrinks_its_buffer() {
        let mut tx = TxCredit::default();
        tx.update(1000, 0);
        tx.consume(800);
        tx.update(500, 0);
        assert_eq!(tx.available(), 0);
    }

    #[test]
    fn rx_rejects_bytes_beyond_credit() {
        let mut rx = RxCredit::new(10);
        assert!(rx.receive(6));
        assert!(!rx.receive(5));
        assert!(rx.receive(4));
        assert_eq!(rx.free(), 0);
        rx.consume(10);
        assert_eq!(rx.free(), 10);
        assert_eq!(rx.peer_visible_free(), 0);
    }

    #[test]
    fn update_only_when_it_helps() {
        let mut rx = RxCredit::new(1000);
        assert!(rx.receive(100));
        rx.consume(10);
        assert!(
            !rx.update_worthwhile(100),
            "10 freed bytes are not worth a packet"
        );
        rx.consume(90);
        assert!(rx.update_worthwhile(100));
        rx.advertised();
        assert!(!rx.update_worthwhile(100));
    }

    #[test]
    fn stalled_peer_gets_an_update_for_any_room() {
        let mut rx = RxCredit::new(1000);
        assert!(rx.receive(1000));
        rx.consume(1);
        assert!(rx.update_worthwhile(500), "peer sees zero credit");
    }

    #[test]
    fn rx_counters_wrap() {
        let mut rx = RxCredit::new(64);
        rx.rx_cnt = u32::MAX - 3;
        rx.fwd_cnt = u32::MAX - 3;
        rx.last_advertised = u32::MAX - 3;
        assert!(rx.receive(10));
        assert_eq!(rx.buffered(), 10);
        rx.consume(10);
        assert_eq!(rx.buffered(), 0);
        assert!(rx.update_worthwhile(10));
    }
}
