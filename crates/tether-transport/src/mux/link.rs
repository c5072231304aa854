//! The mux wire format, sans-IO: the link handshake record and the packet framing.
//!
//! See `docs/mux.md` for the byte layout. The decoder starts out scanning for a hello,
//! skipping whatever a serial line held before the peer started; once synced it expects
//! packets (a virtio-vsock header and its payload) or a fresh hello from a restarted peer.

use crate::pool::Pool;
use bytes::buf::Limit;
use bytes::{Buf, BufMut, Bytes, BytesMut};
use tether_vsock::{Header, HeaderError, HEADER_LEN};
use thiserror::Error;

/// The eight bytes that open every hello. Read as a little-endian `src_cid` they give a
/// value no real CID has, so a hello can never be mistaken for a packet header.
pub const MAGIC: [u8; 8] = *b"TETHRMUX";

/// Version of the mux wire format this code speaks.
pub const VERSION: u16 = 1;

/// Length of an encoded hello.
pub const HELLO_LEN: usize = 36;

/// Hello flag: the sender has seen the receiver's hello (no reply needed).
const FLAG_ACK: u16 = 1;

/// Payloads at least this large are read from the link straight into a buffer of their
/// own, saving a copy through the shared read buffer.
const DIRECT_PAYLOAD: usize = 16 * 1024;

/// Large payloads start at a page boundary of their buffer. The kernel copies into them
/// from page-based buffers (a Unix socket's pages, for one), and a copy whose
/// destination lies a few bytes past its source within a page is very slow on some x86
/// CPUs (see [`tether_vsock::copy`]); a payload right after its header, 44 bytes into
/// a `malloc`ed buffer, often met that case.
const PAGE: usize = 4096;

/// Idle payload buffers a decoder keeps for reuse.
const SPARE_PAYLOADS: usize = 8;

/// Largest payload a peer may announce it accepts; larger values are clamped.
pub const MAX_PAYLOAD_LIMIT: u32 = 1 << 20;

/// The record each end sends to open (or reopen) the link.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Hello {
    /// Wire format version of the sender.
    pub version: u16,
    /// The sender has already received the receiver's hello.
    pub ack: bool,
    /// The sender's CID on this link.
    pub cid: u64,
    /// Random per link session; a new value means the peer restarted.
    pub nonce: u64,
    /// Largest packet payload the sender accepts.
    pub max_payload: u32,
}

impl Hello {
    /// Encodes the hello with its trailing CRC-32.
    pub fn encode(&self) -> [u8; HELLO_LEN] {
        let mut out = [0u8; HELLO_LEN];
        out[0..8].copy_from_slice(&MAGIC);
        out[8..10].copy_from_slice(&self.version.to_le_bytes());
        let flags = if self.ack { FLAG_ACK } else { 0 };
        out[10..12].copy_from_slice(&flags.to_le_bytes());
        out[12..20].copy_from_slice(&self.cid.to_le_bytes());
        out[20..28].copy_from_slice(&self.nonce.to_le_bytes());
        out[28..32].copy_from_slice(&self.max_payload.to_le_bytes());
        let crc = crc32fast::hash(&out[..32]);
        out[32..36].copy_from_slice(&crc.to_le_bytes());
        out
    }

    /// Decodes a hello from exactly [`HELLO_LEN`] bytes, `None` when the magic or the
    /// CRC does not match.
    pub fn decode(b: &[u8; HELLO_LEN]) -> Option<Hello> {
        let crc = u32::from_le_bytes(b[32..36].try_into().expect("4 bytes"));
        if b[..8] != MAGIC || crc32fast::hash(&b[..32]) != crc {
            return None;
        }
        let u16_at = |o: usize| u16::from_le_bytes(b[o..o + 2].try_into().expect("2 bytes"));
        let u64_at = |o: usize| u64::from_le_bytes(b[o..o + 8].try_into().expect("8 bytes"));
        Some(Hello {
            version: u16_at(8),
            ack: u16_at(10) & FLAG_ACK != 0,
            cid: u64_at(12),
            nonce: u64_at(20),
            max_payload: u32::from_le_bytes(b[28..32].try_into().expect("4 bytes")),
        })
    }
}

/// One unit read off the link.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Frame {
    /// The peer (re)opened the link.
    Hello(Hello),
    /// A vsock packet.
    Packet(Header, Bytes),
}

/// A synced link carried something that is neither a packet nor a hello.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Error)]
pub enum LinkError {
    /// A header announced more payload than this end accepts.
    #[error("malformed mux packet: {0}")]
    Header(#[from] HeaderError),
    /// Bytes where a hello should be carried the magic but failed the CRC.
    #[error("malformed mux hello: CRC mismatch")]
    BadHello,
}

/// Where the decoder reads link bytes straight into a buffer of their own.
#[derive(Debug)]
enum Direct {
    /// After a large packet, with nothing else buffered: the next read goes into a
    /// payload buffer on the bet that it holds another large packet, header first. The
    /// read lands `pad` bytes in, so that such a packet's payload starts a page.
    Bet { buf: Vec<u8>, pad: usize },
    /// A large packet whose payload is arriving; it starts `start` bytes into `buf`
    /// (past the header when the header came in on a bet).
    Payload {
        hdr: Header,
        buf: Vec<u8>,
        start: usize,
    },
}

/// Incremental decoder of the mux byte stream.
///
/// Small packets are decoded out of one shared read buffer and copied out of it (a
/// small payload split off would pin the whole buffer for as long as a slow reader
/// keeps it, breaking the per-connection memory bound). Large payloads are read into
/// pooled buffers of their own instead, and in a stream of large packets each read
/// goes straight into such a buffer, header and all, so bulk data is never copied here.
#[derive(Debug)]
pub struct Decoder {
    buf: BytesMut,
    direct: Option<Direct>,
    /// The last packet was large: bet that the next one is too.
    expect_large: bool,
    /// Buffers of a header plus `max_payload` bytes, and room to align the payload, for
    /// payloads of at least half that.
    payloads: Pool,
    synced: bool,
    max_payload: u32,
    skipped: u64,
}

impl Decoder {
    /// A decoder that accepts payloads up to `max_payload` bytes and starts out scanning
    /// for a hello.
    pub fn new(max_payload: u32) -> Self {
        Decoder {
            buf: BytesMut::with_capacity(256 * 1024),
            direct: None,
            expect_large: false,
            payloads: Pool::new(HEADER_LEN + max_payload as usize + PAGE, SPARE_PAYLOADS),
            synced: false,
            max_payload,
            skipped: 0,
        }
    }

    /// The buffer to read link bytes into (append only).
    pub fn buffer(&mut self) -> &mut BytesMut {
        &mut self.buf
    }

    /// Where to read the next link bytes when not into [`Decoder::buffer`]: the rest of
    /// a large payload, limited to exactly what is missing, or (after a large packet,
    /// with nothing else buffered) a buffer for the whole next packet. Call
    /// [`Decoder::next_frame`] after each read. `None` means read into the buffer.
    pub fn direct_payload(&mut self) -> Option<Limit<&mut Vec<u8>>> {
        if self.direct.is_none() && self.expect_large && self.synced && self.buf.is_empty() {
            let (buf, pad) = self.aligned(HEADER_LEN);
            self.direct = Some(Direct::Bet { buf, pad });
        }
        let packet = HEADER_LEN + self.max_payload as usize;
        match self.direct.as_mut()? {
            Direct::Bet { buf, pad } => {
                let room = *pad + packet - buf.len();
                Some(buf.limit(room))
            }
            Direct::Payload { hdr, buf, start } => {
                let missing = *start + hdr.len as usize - buf.len();
                Some(buf.limit(missing))
            }
        }
    }

    /// Appends bytes read from the link.
    pub fn extend(&mut self, bytes: &[u8]) {
        self.buf.extend_from_slice(bytes);
    }

    /// Bytes skipped while scanning for a hello, over the decoder's life.
    pub fn skipped(&self) -> u64 {
        self.skipped
    }

    /// Forgets the current stream position and scans for the next hello again, as after
    /// a torn-down link session.
    pub fn resync(&mut self) {
        self.synced = false;
        self.expect_large = false;
        if let Some(Direct::Bet { buf, pad }) = self.direct.take() {
            // Not yet decoded: scanned like any other bytes.
            self.buf.extend_from_slice(&buf[pad..]);
            self.payloads.put(buf);
        }
    }

    /// The next complete frame, `Ok(None)` when more bytes are needed.
    ///
    /// An error leaves the decoder scanning for a hello, skipping the bad bytes.
    pub fn next_frame(&mut self) -> Result<Option<Frame>, LinkError> {
        match self.direct.take() {
            Some(Direct::Bet { buf, pad }) => return self.settle_bet(buf, pad),
            Some(payload) => {
                self.direct = Some(payload);
                return Ok(self.finish_payload());
            }
            None => {}
        }
        if !self.synced {
            return Ok(self.scan_hello().map(Frame::Hello));
        }
        if self.buf.len() >= MAGIC.len() && self.buf[..MAGIC.len()] == MAGIC {
            return self.synced_hello();
        }
        self.packet()
    }

    /// Decides a bet once bytes came: a large packet's payload stays where it landed;
    /// anything else moves to the shared buffer and is decoded from there.
    fn settle_bet(&mut self, bet: Vec<u8>, pad: usize) -> Result<Option<Frame>, LinkError> {
        let got = &bet[pad..];
        if got.is_empty() {
            self.direct = Some(Direct::Bet { buf: bet, pad });
            return Ok(None);
        }
        let large = (got.len() >= HEADER_LEN && got[..MAGIC.len()] != MAGIC)
            .then(|| Header::decode(got).ok())
            .flatten()
            .filter(|h| h.len as usize >= DIRECT_PAYLOAD && h.len <= self.max_payload);
        let Some(hdr) = large else {
            self.expect_large = false;
            self.buf.extend_from_slice(got);
            self.payloads.put(bet);
            return self.next_frame();
        };
        self.direct = Some(Direct::Payload {
            hdr,
            buf: bet,
            start: pad + HEADER_LEN,
        });
        Ok(self.finish_payload())
    }

    fn synced_hello(&mut self) -> Result<Option<Frame>, LinkError> {
        let Some(raw) = self.buf.get(..HELLO_LEN) else {
            return Ok(None);
        };
        let hello = Hello::decode(raw.try_into().expect("HELLO_LEN bytes"));
        match hello {
            Some(h) => {
                self.buf.advance(HELLO_LEN);
                Ok(Some(Frame::Hello(h)))
            }
            None => {
                self.synced = false;
                Err(LinkError::BadHello)
            }
        }
    }

    fn packet(&mut self) -> Result<Option<Frame>, LinkError> {
        if self.buf.len() < HEADER_LEN {
            return Ok(None);
        }
        let hdr = Header::decode(&self.buf).expect("HEADER_LEN bytes present");
        if hdr.len > self.max_payload {
            self.synced = false;
            return Err(HeaderError::PayloadTooLarge {
                declared: hdr.len,
                max: self.max_payload,
            }
            .into());
        }
        let len = hdr.len as usize;
        self.expect_large = len >= DIRECT_PAYLOAD;
        if self.expect_large {
            self.buf.advance(HEADER_LEN);
            let (buf, start) = self.payload_buffer(len);
            self.direct = Some(Direct::Payload { hdr, buf, start });
            return Ok(self.finish_payload());
        }
        if self.buf.len() < HEADER_LEN + len {
            self.buf.reserve(HEADER_LEN + len - self.buf.len());
            return Ok(None);
        }
        self.buf.advance(HEADER_LEN);
        let payload = tether_vsock::copy::to_bytes(&self.buf[..len]);
        self.buf.advance(len);
        Ok(Some(Frame::Packet(hdr, payload)))
    }

    /// A buffer for a payload of `len` bytes and where in it the payload starts: a pooled
    /// one when `len` is at least half the pool's size (so a pooled buffer never holds
    /// more than twice its payload).
    fn payload_buffer(&self, len: usize) -> (Vec<u8>, usize) {
        if len * 2 >= self.payloads.size() {
            self.aligned(0)
        } else {
            (Vec::with_capacity(len), 0)
        }
    }

    /// A pooled buffer filled with `pad` bytes, so that a read of `lead` more bytes ends
    /// at a page boundary; and `pad`.
    fn aligned(&self, lead: usize) -> (Vec<u8>, usize) {
        let mut buf = self.payloads.take();
        let pad = (PAGE - (buf.as_ptr() as usize + lead) % PAGE) % PAGE;
        buf.resize(pad, 0);
        (buf, pad)
    }

    /// Moves buffered bytes into the arriving payload, hands bytes read past its end
    /// back to the shared buffer, and returns the packet once it is whole.
    fn finish_payload(&mut self) -> Option<Frame> {
        let Some(Direct::Payload { hdr, buf, start }) = self.direct.as_mut() else {
            unreachable!("called with a payload arriving");
        };
        let end = *start + hdr.len as usize;
        if buf.len() > end {
            // A bet read past the packet: the rest is the next frame's.
            let mut rest = self.buf.split();
            self.buf.extend_from_slice(&buf[end..]);
            self.buf.unsplit(std::mem::take(&mut rest));
            buf.truncate(end);
        }
        let n = (end - buf.len()).min(self.buf.len());
        tether_vsock::copy::put(buf, &self.buf[..n]);
        self.buf.advance(n);
        if buf.len() < end {
            return None;
        }
        let Some(Direct::Payload { hdr, buf, start }) = self.direct.take() else {
            unreachable!("matched above");
        };
        let mut payload = if buf.capacity() == self.payloads.size() {
            self.payloads.freeze(buf)
        } else {
            Bytes::from(buf)
        };
        payload.advance(start);
        Some(Frame::Packet(hdr, payload))
    }

    /// Skips to the next valid hello; keeps a possible partial one buffered.
    fn scan_hello(&mut self) -> Option<Hello> {
        loop {
            let start = find(&self.buf, &MAGIC).unwrap_or_else(|| {
                // Keep a tail that may be the start of a magic split across reads.
                self.buf.len().saturating_sub(MAGIC.len() - 1)
            });
            self.skip(start);
            let raw = self.buf.get(..HELLO_LEN)?;
            if let Some(h) = Hello::decode(raw.try_into().expect("HELLO_LEN bytes")) {
                self.buf.advance(HELLO_LEN);
                self.synced = true;
                return Some(h);
            }
            self.skip(1);
        }
    }

    fn skip(&mut self, n: usize) {
        self.buf.advance(n);
        self.skipped += n as u64;
    }
}

fn find(haystack: &[u8], needle: &[u8]) -> Option<usize> {
    haystack.windows(needle.len()).position(|w| w == needle)
}

#[cfg(test)]
mod tests {
    use super::*;
    use tether_vsock::{Op, SocketType};

    fn hello(ack: bool) -> Hello {
        Hello {
            version: VERSION,
            ack,
            cid: 3,
            nonce: 0x0123_4567_89ab_cdef,
            max_payload: 65536,
        }
    }

    fn packet(len: u32) -> Vec<u8> {
        let hdr = Header {
            src_cid: 2,
            dst_cid: 3,
            src_port: 1,
            dst_port: 2,
            len,
            type_: SocketType::Stream.to_u16(),
            op: Op::Rw.to_u16(),
            ..Header::default()
        };
        let mut v = hdr.encode().to_vec();
        v.extend((0..len).map(|i| i as u8));
        v
    }

    #[test]
    fn hello_round_trips_and_rejects_corruption() {
        let h = hello(true);
        let mut wire = h.encode();
        assert_eq!(Hello::decode(&wire), Some(h));
        wire[14] ^= 1;
        assert_eq!(Hello::decode(&wire), None);
    }

    #[test]
    fn magic_is_not_a_plausible_cid() {
        assert!(u64::from_le_bytes(MAGIC) > u64::from(u32::MAX));
    }

    #[test]
    fn skips_garbage_before_hello_even_split_across_reads() {
        let mut d = Decoder::new(65536);
        let mut stream = b"stale bytes TETHR garbage TETHRMUX not-a-hello...........".to_vec();
        stream.extend_from_slice(&hello(false).encode());
        stream.extend_from_slice(&packet(10));
        let mut frames = Vec::new();
        for chunk in stream.chunks(7) {
            d.extend(chunk);
            while let Some(f) = d.next_frame().unwrap() {
                frames.push(f);
            }
        }
        assert_eq!(frames.len(), 2);
        assert_eq!(frames[0], Frame::Hello(hello(false)));
        let Frame::Packet(hdr, payload) = &frames[1] else {
            panic!("expected a packet, got {:?}", frames[1]);
        };
        assert_eq!((hdr.len, payload.len()), (10, 10));
        assert_eq!(payload[9], 9);
        assert!(d.skipped() > 40, "garbage was skipped, not parsed");
    }

    #[test]
    fn large_payload_arrives_through_the_direct_buffer() {
        let mut d = Decoder::new(65536);
        d.extend(&hello(false).encode());
        assert!(matches!(d.next_frame(), Ok(Some(Frame::Hello(_)))));
        let wire = packet(40_000);
        let mut wire = &wire[..];
        d.extend(&wire[..1000]);
        wire = &wire[1000..];
        assert_eq!(d.next_frame(), Ok(None));
        // The rest comes in through the direct buffer, never more than is missing.
        while let Some(mut target) = d.direct_payload() {
            let n = target.remaining_mut().min(7000).min(wire.len());
            target.put_slice(&wire[..n]);
            wire = &wire[n..];
            if let Some(frame) = d.next_frame().unwrap() {
                let Frame::Packet(hdr, payload) = frame else {
                    panic!("expected a packet")
                };
                assert_eq!(hdr.len, 40_000);
                assert!(payload.iter().enumerate().all(|(i, &b)| b == i as u8));
                assert_eq!(payload.as_ptr() as usize % PAGE, 0, "starts a page");
                break;
            }
        }
        assert!(
            wire.is_empty(),
            "the direct buffer took exactly the payload"
        );
        // After a large packet, with nothing else buffered, the decoder bets on another.
        assert!(d.direct_payload().is_some());
    }

    /// Reads `wire` as the driver does, at most `step` bytes per read, into whatever the
    /// decoder offers; returns the frames and how many reads went to the shared buffer.
    fn drive(d: &mut Decoder, mut wire: &[u8], step: usize) -> (Vec<Frame>, usize) {
        let (mut frames, mut shared_reads) = (Vec::new(), 0);
        while !wire.is_empty() {
            let n = match d.direct_payload() {
                Some(mut target) => {
                    let n = target.remaining_mut().min(step).min(wire.len());
                    target.put_slice(&wire[..n]);
                    n
                }
                None => {
                    shared_reads += 1;
                    let n = step.min(wire.len());
                    d.extend(&wire[..n]);
                    n
                }
            };
            wire = &wire[n..];
            while let Some(f) = d.next_frame().unwrap() {
                frames.push(f);
            }
        }
        (frames, shared_reads)
    }

    #[test]
    fn a_run_of_large_packets_is_read_straight_into_payload_buffers() {
        let mut d = Decoder::new(65536);
        let mut wire = hello(false).encode().to_vec();
        for _ in 0..10 {
            wire.extend(packet(65536));
        }
        // Reads as large as a whole packet, as the driver's are.
        let (frames, shared_reads) = drive(&mut d, &wire, HEADER_LEN + 65536);
        assert_eq!(frames.len(), 11);
        for f in &frames[1..] {
            let Frame::Packet(hdr, payload) = f else {
                panic!("expected a packet, got {f:?}");
            };
            assert_eq!((hdr.len, payload.len()), (65536, 65536));
            assert!(payload.iter().enumerate().all(|(i, &b)| b == i as u8));
            assert_eq!(payload.as_ptr() as usize % PAGE, 0, "starts a page");
        }
        // The hello and the first packet's header come through the shared buffer; every
        // later packet lands in its own buffer, header and all.
        assert_eq!(
            shared_reads, 1,
            "only the first read went to the shared buffer"
        );
    }

    #[test]
    fn lost_bets_hand_their_bytes_to_the_shared_buffer_in_order() {
        // Large packets followed by small ones, a hello, packets shorter than a bet's
        // buffer (so a bet reads past them) and an empty one, in every read size.
        let mut wire = hello(false).encode().to_vec();
        let mut want = vec![Frame::Hello(hello(false))];
        let lens = [65536, 100, 40_000, 20_000, 0, 65536, 17_000, 5, 65536];
        for (i, len) in lens.into_iter().enumerate() {
            if i == 6 {
                wire.extend(hello(true).encode());
                want.push(Frame::Hello(hello(true)));
            }
            let p = packet(len);
            let hdr = Header::decode(&p).unwrap();
            want.push(Frame::Packet(hdr, Bytes::copy_from_slice(&p[HEADER_LEN..])));
            wire.extend(p);
        }
        for step in [1, 7, 44, 45, 4096, 16_383, 65_580, 65_581, 200_000] {
            let mut d = Decoder::new(65536);
            let (frames, _) = drive(&mut d, &wire, step);
            assert_eq!(frames, want, "read size {step}");
        }
    }

    #[test]
    fn a_bet_holding_a_bad_header_is_an_error_and_resyncs() {
        let mut d = Decoder::new(65536);
        let mut wire = hello(false).encode().to_vec();
        wire.extend(packet(65536));
        let mut bad = packet(0);
        bad[24..28].copy_from_slice(&70_000u32.to_le_bytes()); // len beyond the limit
        wire.extend(&bad);
        wire.extend(hello(true).encode());
        let mut frames = Vec::new();
        let mut errors = Vec::new();
        let mut rest = &wire[..];
        while !rest.is_empty() {
            let n = match d.direct_payload() {
                Some(mut t) => {
                    let n = t.remaining_mut().min(rest.len());
                    t.put_slice(&rest[..n]);
                    n
                }
                None => {
                    d.extend(rest);
                    rest.len()
                }
            };
            rest = &rest[n..];
            loop {
                match d.next_frame() {
                    Ok(Some(f)) => frames.push(f),
                    Ok(None) => break,
                    Err(e) => errors.push(e),
                }
            }
        }
        assert_eq!(
            errors,
            [LinkError::Header(HeaderError::PayloadTooLarge {
                declared: 70_000,
                max: 65536
            })]
        );
        assert_eq!(frames.len(), 3, "hello, the packet, and the next hello");
        assert_eq!(frames[2], Frame::Hello(hello(true)));
    }

    #[test]
    fn oversize_packet_is_an_error_and_resyncs() {
        let mut d = Decoder::new(16);
        d.extend(&hello(false).encode());
        assert!(matches!(d.next_frame(), Ok(Some(Frame::Hello(_)))));
        d.extend(&packet(17));
        assert_eq!(
            d.next_frame(),
            Err(LinkError::Header(HeaderError::PayloadTooLarge {
                declared: 17,
                max: 16
            }))
        );
        // A fresh hello after the bad bytes brings the link back.
        d.extend(&hello(true).encode());
        assert_eq!(d.next_frame(), Ok(Some(Frame::Hello(hello(true)))));
    }

    #[test]
    fn hello_mid_stream_is_reported() {
        let mut d = Decoder::new(65536);
        d.extend(&hello(false).encode());
        d.extend(&packet(0));
        d.extend(&hello(true).encode());
        assert!(matches!(d.next_frame(), Ok(Some(Frame::Hello(_)))));
        assert!(matches!(d.next_frame(), Ok(Some(Frame::Packet(..)))));
        assert_eq!(d.next_frame(), Ok(Some(Frame::Hello(hello(true)))));
        assert_eq!(d.next_frame(), Ok(None));
    }

    #[test]
    fn corrupted_hello_mid_stream_is_an_error() {
        let mut d = Decoder::new(65536);
        d.extend(&hello(false).encode());
        let mut bad = hello(true).encode();
        bad[20] ^= 0xff;
        d.extend(&bad);
        assert!(matches!(d.next_frame(), Ok(Some(Frame::Hello(_)))));
        assert_eq!(d.next_frame(), Err(LinkError::BadHello));
    }
}
