//! The mux wire format, sans-IO: the link handshake record and the packet framing.
//!
//! See `docs/mux.md` for the byte layout. The decoder starts out scanning for a hello,
//! skipping whatever a serial line held before the peer started; once synced it expects
//! packets (a virtio-vsock header and its payload) or a fresh hello from a restarted peer.

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

/// Payloads at least this large that have not fully arrived are read from the link
/// straight into a buffer of their own, saving a copy through the shared read buffer.
const DIRECT_PAYLOAD: usize = 16 * 1024;

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

/// Incremental decoder of the mux byte stream.
#[derive(Debug)]
pub struct Decoder {
    buf: BytesMut,
    /// A large packet whose payload is being read directly into its own buffer.
    partial: Option<(Header, BytesMut)>,
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
            partial: None,
            synced: false,
            max_payload,
            skipped: 0,
        }
    }

    /// The buffer to read link bytes into (append only).
    pub fn buffer(&mut self) -> &mut BytesMut {
        &mut self.buf
    }

    /// While a large payload is arriving, the place to read the rest of it into,
    /// limited to exactly what is missing; `None` means read into [`Decoder::buffer`].
    pub fn direct_payload(&mut self) -> Option<Limit<&mut BytesMut>> {
        let (hdr, payload) = self.partial.as_mut()?;
        let missing = hdr.len as usize - payload.len();
        Some(payload.limit(missing))
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
        self.partial = None;
    }

    /// The next complete frame, `Ok(None)` when more bytes are needed.
    ///
    /// An error leaves the decoder scanning for a hello, skipping the bad bytes.
    pub fn next_frame(&mut self) -> Result<Option<Frame>, LinkError> {
        if self.partial.is_some() {
            return Ok(self.finish_partial());
        }
        if !self.synced {
            return Ok(self.scan_hello().map(Frame::Hello));
        }
        if self.buf.len() >= MAGIC.len() && self.buf[..MAGIC.len()] == MAGIC {
            return self.synced_hello();
        }
        self.packet()
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
        let total = HEADER_LEN + len;
        if self.buf.len() < total {
            if len < DIRECT_PAYLOAD {
                self.buf.reserve(total - self.buf.len());
                return Ok(None);
            }
            self.buf.advance(HEADER_LEN);
            self.partial = Some((hdr, BytesMut::with_capacity(len)));
            return Ok(self.finish_partial());
        }
        self.buf.advance(HEADER_LEN);
        // Copy rather than split: a small payload split off would pin the whole read
        // buffer for as long as a slow reader keeps it, breaking the per-connection bound.
        let payload = Bytes::copy_from_slice(&self.buf[..hdr.len as usize]);
        self.buf.advance(hdr.len as usize);
        Ok(Some(Frame::Packet(hdr, payload)))
    }

    /// Moves buffered bytes into the partial payload; the packet once it is whole.
    fn finish_partial(&mut self) -> Option<Frame> {
        let (hdr, payload) = self.partial.as_mut().expect("called with a partial packet");
        let missing = hdr.len as usize - payload.len();
        let n = missing.min(self.buf.len());
        payload.extend_from_slice(&self.buf[..n]);
        self.buf.advance(n);
        if payload.len() < hdr.len as usize {
            return None;
        }
        let (hdr, payload) = self.partial.take().expect("checked above");
        Some(Frame::Packet(hdr, payload.freeze()))
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
                break;
            }
        }
        assert!(
            wire.is_empty(),
            "the direct buffer took exactly the payload"
        );
        assert!(d.direct_payload().is_none());
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
