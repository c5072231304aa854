//! The `virtio_vsock_hdr` codec: 44 bytes, packed, little-endian (virtio spec, "Socket Device").

use thiserror::Error;

/// Size of an encoded header in bytes.
pub const HEADER_LEN: usize = 44;

/// The CID of the host in every virtio-vsock deployment.
pub const HOST_CID: u64 = 2;

/// Socket type carried in the header's `type` field.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum SocketType {
    /// A byte stream (`SOCK_STREAM`), type 1.
    Stream,
    /// Messages with boundaries (`SOCK_SEQPACKET`), type 2.
    SeqPacket,
}

impl SocketType {
    /// The wire value of this type.
    pub const fn to_u16(self) -> u16 {
        match self {
            SocketType::Stream => 1,
            SocketType::SeqPacket => 2,
        }
    }

    /// Decodes a wire value, `None` for a type the spec does not define.
    pub const fn from_u16(raw: u16) -> Option<Self> {
        match raw {
            1 => Some(SocketType::Stream),
            2 => Some(SocketType::SeqPacket),
            _ => None,
        }
    }
}

/// Operation carried in the header's `op` field.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Op {
    /// Connection request (1).
    Request,
    /// Connection accepted (2).
    Response,
    /// Connection reset (3).
    Rst,
    /// One or both directions closed; see [`shutdown`] flags (4).
    Shutdown,
    /// Payload data (5).
    Rw,
    /// Unsolicited or requested credit information (6).
    CreditUpdate,
    /// Ask the peer for a credit update (7).
    CreditRequest,
}

impl Op {
    /// The wire value of this op.
    pub const fn to_u16(self) -> u16 {
        match self {
            Op::Request => 1,
            Op::Response => 2,
            Op::Rst => 3,
            Op::Shutdown => 4,
            Op::Rw => 5,
            Op::CreditUpdate => 6,
            Op::CreditRequest => 7,
        }
    }

    /// Decodes a wire value, `None` for `INVALID` (0) and every value the spec does not define.
    pub const fn from_u16(raw: u16) -> Option<Self> {
        match raw {
            1 => Some(Op::Request),
            2 => Some(Op::Response),
            3 => Some(Op::Rst),
            4 => Some(Op::Shutdown),
            5 => Some(Op::Rw),
            6 => Some(Op::CreditUpdate),
            7 => Some(Op::CreditRequest),
            _ => None,
        }
    }
}

/// Flags of a `SHUTDOWN` packet. Once a peer has set one, it stays set.
pub mod shutdown {
    /// The sender will receive no more data.
    pub const RCV: u32 = 1;
    /// The sender will send no more data.
    pub const SEND: u32 = 2;
    /// Both directions.
    pub const BOTH: u32 = RCV | SEND;
}

/// Flags of a `SEQPACKET` `RW` packet.
pub mod seqpacket {
    /// End of message: the last packet of a message.
    pub const EOM: u32 = 1;
    /// End of record (`MSG_EOR`), only meaningful together with EOM.
    pub const EOR: u32 = 2;
}

/// Why a byte slice is not a well-formed packet.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Error)]
pub enum HeaderError {
    /// Fewer than [`HEADER_LEN`] bytes were given.
    #[error("truncated vsock header: expected {HEADER_LEN} bytes, got {got}")]
    Truncated {
        /// Bytes available.
        got: usize,
    },
    /// The header announces more payload than follows it.
    #[error("truncated vsock payload: header announces {declared} bytes, {available} follow")]
    PayloadTruncated {
        /// The header's `len`.
        declared: u32,
        /// Bytes after the header.
        available: usize,
    },
    /// The header announces more payload than the receiver accepts.
    #[error("vsock payload too large: header announces {declared} bytes, at most {max} accepted")]
    PayloadTooLarge {
        /// The header's `len`.
        declared: u32,
        /// The receiver's limit.
        max: u32,
    },
}

/// A decoded `virtio_vsock_hdr`.
///
/// Fields hold raw wire values so that a packet with an op or type the spec does not
/// define can still be answered (with RST); [`Header::op`] and [`Header::socket_type`]
/// give the typed view.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub struct Header {
    /// Source context id.
    pub src_cid: u64,
    /// Destination context id.
    pub dst_cid: u64,
    /// Source port.
    pub src_port: u32,
    /// Destination port.
    pub dst_port: u32,
    /// Payload length in bytes.
    pub len: u32,
    /// Raw socket type (1 stream, 2 seqpacket).
    pub type_: u16,
    /// Raw operation.
    pub op: u16,
    /// Op-specific flags.
    pub flags: u32,
    /// Sender's receive buffer size for this connection.
    pub buf_alloc: u32,
    /// Sender's free-running count of bytes it has consumed.
    pub fwd_cnt: u32,
}

impl Header {
    /// The typed operation, `None` if the raw value is not defined by the spec.
    pub const fn op(&self) -> Option<Op> {
        Op::from_u16(self.op)
    }

    /// The typed socket type, `None` if the raw value is not defined by the spec.
    pub const fn socket_type(&self) -> Option<SocketType> {
        SocketType::from_u16(self.type_)
    }

    /// Decodes the first [`HEADER_LEN`] bytes of `buf`.
    ///
    /// Only the header is read; `len` is not checked against what follows.
    ///
    /// ```
    /// use tether_vsock::header::{Header, Op, HEADER_LEN};
    /// let mut wire = [0u8; HEADER_LEN];
    /// wire[30] = 5; // op = RW
    /// let hdr = Header::decode(&wire).unwrap();
    /// assert_eq!(hdr.op(), Some(Op::Rw));
    /// ```
    pub fn decode(buf: &[u8]) -> Result<Header, HeaderError> {
        let b: &[u8; HEADER_LEN] = buf
            .get(..HEADER_LEN)
            .and_then(|s| s.try_into().ok())
            .ok_or(HeaderError::Truncated { got: buf.len() })?;
        let u64_at = |o: usize| u64::from_le_bytes(b[o..o + 8].try_into().expect("8 bytes"));
        let u32_at = |o: usize| u32::from_le_bytes(b[o..o + 4].try_into().expect("4 bytes"));
        let u16_at = |o: usize| u16::from_le_bytes(b[o..o + 2].try_into().expect("2 bytes"));
        Ok(Header {
            src_cid: u64_at(0),
            dst_cid: u64_at(8),
            src_port: u32_at(16),
            dst_port: u32_at(20),
            len: u32_at(24),
            type_: u16_at(28),
            op: u16_at(30),
            flags: u32_at(32),
            buf_alloc: u32_at(36),
            fwd_cnt: u32_at(40),
        })
    }

    /// Splits a whole packet (header followed by exactly or at least `len` bytes of payload)
    /// into its header and a borrowed payload, rejecting a `len` above `max_payload`.
    ///
    /// Bytes beyond `len` are ignored, so a receive buffer larger than the packet is fine.
    pub fn decode_packet(buf: &[u8], max_payload: u32) -> Result<(Header, &[u8]), HeaderError> {
        let hdr = Header::decode(buf)?;
        if hdr.len > max_payload {
            return Err(HeaderError::PayloadTooLarge {
                declared: hdr.len,
                max: max_payload,
            });
        }
        let body = &buf[HEADER_LEN..];
        let payload = body
            .get(..hdr.len as usize)
            .ok_or(HeaderError::PayloadTruncated {
                declared: hdr.len,
                available: body.len(),
            })?;
        Ok((hdr, payload))
    }

    /// Encodes the header into its 44-byte wire form.
    pub fn encode(&self) -> [u8; HEADER_LEN] {
        let mut out = [0u8; HEADER_LEN];
        out[0..8].copy_from_slice(&self.src_cid.to_le_bytes());
        out[8..16].copy_from_slice(&self.dst_cid.to_le_bytes());
        out[16..20].copy_from_slice(&self.src_port.to_le_bytes());
        out[20..24].copy_from_slice(&self.dst_port.to_le_bytes());
        out[24..28].copy_from_slice(&self.len.to_le_bytes());
        out[28..30].copy_from_slice(&self.type_.to_le_bytes());
        out[30..32].copy_from_slice(&self.op.to_le_bytes());
        out[32..36].copy_from_slice(&self.flags.to_le_bytes());
        out[36..40].copy_from_slice(&self.buf_alloc.to_le_bytes());
        out[40..44].copy_from_slice(&self.fwd_cnt.to_le_bytes());
        out
    }

    /// Encodes the header into the first [`HEADER_LEN`] bytes of `buf`.
    ///
    /// Returns [`HeaderError::Truncated`] when `buf` is shorter than a header.
    pub fn encode_into(&self, buf: &mut [u8]) -> Result<(), HeaderError> {
        let got = buf.len();
        let dst = buf
            .get_mut(..HEADER_LEN)
            .ok_or(HeaderError::Truncated { got })?;
        dst.copy_from_slice(&self.encode());
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample() -> Header {
        Header {
            src_cid: 3,
            dst_cid: HOST_CID,
            src_port: 1024,
            dst_port: 0x4000_0001,
            len: 5,
            type_: SocketType::Stream.to_u16(),
            op: Op::Rw.to_u16(),
            flags: 0,
            buf_alloc: 256 * 1024,
            fwd_cnt: 0xffff_fff0,
        }
    }

    #[test]
    fn round_trips_every_field() {
        let hdr = sample();
        assert_eq!(Header::decode(&hdr.encode()), Ok(hdr));
    }

    #[test]
    fn layout_matches_the_spec_offsets() {
        let wire = sample().encode();
        assert_eq!(&wire[0..8], &3u64.to_le_bytes());
        assert_eq!(&wire[8..16], &2u64.to_le_bytes());
        assert_eq!(&wire[16..20], &1024u32.to_le_bytes());
        assert_eq!(&wire[20..24], &0x4000_0001u32.to_le_bytes());
        assert_eq!(&wire[24..28], &5u32.to_le_bytes());
        assert_eq!(&wire[28..30], &1u16.to_le_bytes());
        assert_eq!(&wire[30..32], &5u16.to_le_bytes());
        assert_eq!(&wire[36..40], &(256u32 * 1024).to_le_bytes());
        assert_eq!(&wire[40..44], &0xffff_fff0u32.to_le_bytes());
    }

    #[test]
    fn every_op_and_type_round_trips_and_unknowns_are_none() {
        for raw in 0..=20u16 {
            match Op::from_u16(raw) {
                Some(op) => assert_eq!(op.to_u16(), raw),
                None => assert!(raw == 0 || raw > 7, "op {raw} should be defined"),
            }
            match SocketType::from_u16(raw) {
                Some(t) => assert_eq!(t.to_u16(), raw),
                None => assert!(raw != 1 && raw != 2),
            }
        }
    }

    #[test]
    fn short_input_is_a_typed_error() {
        assert_eq!(
            Header::decode(&[0u8; 43]),
            Err(HeaderError::Truncated { got: 43 })
        );
        let msg = HeaderError::Truncated { got: 43 }.to_string();
        assert!(msg.contains("expected 44 bytes"), "{msg}");
    }

    #[test]
    fn packet_payload_is_borrowed_and_bounded() {
        let mut wire = sample().encode().to_vec();
        wire.extend_from_slice(b"hello trailing");
        let (hdr, payload) = Header::decode_packet(&wire, 64 * 1024).unwrap();
        assert_eq!(hdr.len, 5);
        assert_eq!(payload, b"hello");
        assert_eq!(
            Header::decode_packet(&wire[..HEADER_LEN + 3], 64 * 1024),
            Err(HeaderError::PayloadTruncated {
                declared: 5,
                available: 3
            })
        );
        assert_eq!(
            Header::decode_packet(&wire, 4),
            Err(HeaderError::PayloadTooLarge {
                declared: 5,
                max: 4
            })
        );
    }

    #[test]
    fn encode_into_short_buffer_fails() {
        let mut small = [0u8; 10];
        assert_eq!(
            sample().encode_into(&mut small),
            Err(HeaderError::Truncated { got: 10 })
        );
        let mut big = [0u8; 50];
        sample().encode_into(&mut big).unwrap();
        assert_eq!(Header::decode(&big), Ok(sample()));
    }
}
