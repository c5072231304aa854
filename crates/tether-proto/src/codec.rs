//! Bytes to frames and back, with the hard limits enforced before any payload is held.

use crate::auth::Proof;
use crate::frame::{Frame, Kind};
use crate::messages::{Features, Hello, Welcome};
use bytes::{Buf, BufMut, Bytes, BytesMut};
use thiserror::Error;

/// Frame header: kind (1 byte) and payload length (4 bytes, little-endian).
pub const HEADER_LEN: usize = 5;
/// The hard cap on a payload: 1 MiB. Data is sent in frames of at most this size, so
/// nothing ever needs a bigger one.
pub const MAX_PAYLOAD: usize = 1 << 20;

const HELLO_MAGIC: &[u8; 4] = b"TTHR";
const HELLO_LEN: usize = 4 + 2 + 4 + 8 + 16 + 32;
const WELCOME_LEN: usize = 6;

/// A frame that cannot be decoded; the connection it came from must be closed.
#[derive(Debug, Error)]
pub enum ProtoError {
    /// The kind byte names no frame.
    #[error("unknown frame kind 0x{0:02x}")]
    UnknownKind(u8),
    /// The length is over the cap.
    #[error("frame of {len} bytes is over the {max}-byte limit")]
    Oversize {
        /// The declared payload length.
        len: usize,
        /// [`MAX_PAYLOAD`].
        max: usize,
    },
    /// The payload does not fit its kind.
    #[error("bad {kind:?} frame: {reason}")]
    BadPayload {
        /// The frame's kind.
        kind: Kind,
        /// What is wrong.
        reason: String,
    },
    /// The stream ended inside a frame.
    #[error("connection ended inside a frame ({0} bytes of it received)")]
    Truncated(usize),
    /// Reading or writing the connection failed.
    #[error("{0}")]
    Io(#[from] std::io::Error),
}

/// Encodes and decodes [`Frame`]s; use with `tokio_util::codec::Framed`.
#[derive(Clone, Copy, Debug, Default)]
pub struct FrameCodec;

/// The header for a frame of `kind` with `len` payload bytes.
pub fn header(kind: Kind, len: usize) -> [u8; HEADER_LEN] {
    debug_assert!(len <= MAX_PAYLOAD);
    let mut h = [0u8; HEADER_LEN];
    h[0] = kind as u8;
    h[1..].copy_from_slice(&(len as u32).to_le_bytes());
    h
}

impl tokio_util::codec::Decoder for FrameCodec {
    type Item = Frame;
    type Error = ProtoError;

    fn decode(&mut self, src: &mut BytesMut) -> Result<Option<Frame>, ProtoError> {
        if src.len() < HEADER_LEN {
            return Ok(None);
        }
        let kind = Kind::from_byte(src[0]).ok_or(ProtoError::UnknownKind(src[0]))?;
        let len = u32::from_le_bytes(src[1..5].try_into().expect("4 bytes")) as usize;
        if len > MAX_PAYLOAD {
            return Err(ProtoError::Oversize {
                len,
                max: MAX_PAYLOAD,
            });
        }
        if src.len() < HEADER_LEN + len {
            src.reserve(HEADER_LEN + len - src.len());
            return Ok(None);
        }
        src.advance(HEADER_LEN);
        let payload = src.split_to(len).freeze();
        decode_payload(kind, payload).map(Some)
    }

    fn decode_eof(&mut self, src: &mut BytesMut) -> Result<Option<Frame>, ProtoError> {
        match self.decode(src)? {
            Some(f) => Ok(Some(f)),
            None if src.is_empty() => Ok(None),
            None => Err(ProtoError::Truncated(src.len())),
        }
    }
}

fn bad(kind: Kind, reason: impl Into<String>) -> ProtoError {
    ProtoError::BadPayload {
        kind,
        reason: reason.into(),
    }
}

fn exact(kind: Kind, p: &Bytes, len: usize) -> Result<(), ProtoError> {
    if p.len() != len {
        return Err(bad(
            kind,
            format!("{} payload bytes where {len} were expected", p.len()),
        ));
    }
    Ok(())
}

fn json<T: serde::de::DeserializeOwned>(kind: Kind, p: &[u8]) -> Result<T, ProtoError> {
    serde_json::from_slice(p).map_err(|e| bad(kind, e.to_string()))
}

/// Decodes one payload of `kind`.
pub fn decode_payload(kind: Kind, mut p: Bytes) -> Result<Frame, ProtoError> {
    Ok(match kind {
        Kind::Hello => {
            exact(kind, &p, HELLO_LEN)?;
            if &p[..4] != HELLO_MAGIC {
                return Err(bad(kind, "missing the TTHR magic"));
            }
            p.advance(4);
            let version = p.get_u16_le();
            let features = Features(p.get_u32_le());
            let time = p.get_u64_le();
            let mut nonce = [0u8; 16];
            p.copy_to_slice(&mut nonce);
            let mut mac = [0u8; 32];
            p.copy_to_slice(&mut mac);
            Frame::Hello(Hello {
                version,
                features,
                proof: Proof { time, nonce, mac },
            })
        }
        Kind::Welcome => {
            exact(kind, &p, WELCOME_LEN)?;
            Frame::Welcome(Welcome {
                version: p.get_u16_le(),
                features: Features(p.get_u32_le()),
            })
        }
        Kind::Error => Frame::Error(json(kind, &p)?),
        Kind::Exec => Frame::Exec(Box::new(json(kind, &p)?)),
        Kind::Started => {
            #[derive(serde::Deserialize)]
            struct Started {
                pid: u32,
            }
            Frame::Started {
                pid: json::<Started>(kind, &p)?.pid,
            }
        }
        Kind::Stdin => Frame::Stdin(p),
        Kind::StdinEof => {
            exact(kind, &p, 0)?;
            Frame::StdinEof
        }
        Kind::Stdout => Frame::Stdout(p),
        Kind::Stderr => Frame::Stderr(p),
        Kind::Resize => {
            exact(kind, &p, 4)?;
            Frame::Resize {
                rows: p.get_u16_le(),
                cols: p.get_u16_le(),
            }
        }
        Kind::Signal => {
            exact(kind, &p, 4)?;
            Frame::Signal(p.get_i32_le())
        }
        Kind::Exit => Frame::Exit(json(kind, &p)?),
        Kind::Ping => Frame::Ping(p),
        Kind::Pong => Frame::Pong(p),
        Kind::InfoRequest => {
            exact(kind, &p, 0)?;
            Frame::InfoRequest
        }
        Kind::Info => Frame::Info(json(kind, &p)?),
        Kind::CopyOut => Frame::CopyOut(json(kind, &p)?),
        Kind::CopyIn => Frame::CopyIn(json(kind, &p)?),
        Kind::Entry => Frame::Entry(json(kind, &p)?),
        Kind::FileData => Frame::FileData(p),
        Kind::EntryEnd => {
            exact(kind, &p, 32)?;
            let mut sha256 = [0u8; 32];
            p.copy_to_slice(&mut sha256);
            Frame::EntryEnd { sha256 }
        }
        Kind::CopyDone => Frame::CopyDone(json(kind, &p)?),
        Kind::Connect => Frame::Connect(json(kind, &p)?),
        Kind::Connected => {
            exact(kind, &p, 0)?;
            Frame::Connected
        }
        Kind::Listen => Frame::Listen(json(kind, &p)?),
        Kind::Listening => Frame::Listening(json(kind, &p)?),
        Kind::Accepted => Frame::Accepted(json(kind, &p)?),
        Kind::Attach => {
            #[derive(serde::Deserialize)]
            struct Attach {
                id: u64,
            }
            Frame::Attach {
                id: json::<Attach>(kind, &p)?.id,
            }
        }
    })
}

impl tokio_util::codec::Encoder<Frame> for FrameCodec {
    type Error = ProtoError;

    fn encode(&mut self, frame: Frame, dst: &mut BytesMut) -> Result<(), ProtoError> {
        encode(&frame, dst)
    }
}

/// Appends `frame` to `dst`. Fails only for a payload over [`MAX_PAYLOAD`].
pub fn encode(frame: &Frame, dst: &mut BytesMut) -> Result<(), ProtoError> {
    let start = dst.len();
    dst.put_slice(&[0u8; HEADER_LEN]);
    match frame {
        Frame::Hello(h) => {
            dst.put_slice(HELLO_MAGIC);
            dst.put_u16_le(h.version);
            dst.put_u32_le(h.features.0);
            dst.put_u64_le(h.proof.time);
            dst.put_slice(&h.proof.nonce);
            dst.put_slice(&h.proof.mac);
        }
        Frame::Welcome(w) => {
            dst.put_u16_le(w.version);
            dst.put_u32_le(w.features.0);
        }
        Frame::Error(e) => put_json(dst, e),
        Frame::Exec(r) => put_json(dst, r),
        Frame::Started { pid } => put_json(dst, &serde_json::json!({ "pid": pid })),
        Frame::Stdin(b)
        | Frame::Stdout(b)
        | Frame::Stderr(b)
        | Frame::Ping(b)
        | Frame::Pong(b)
        | Frame::FileData(b) => dst.put_slice(b),
        Frame::StdinEof | Frame::InfoRequest | Frame::Connected => {}
        Frame::Resize { rows, cols } => {
            dst.put_u16_le(*rows);
            dst.put_u16_le(*cols);
        }
        Frame::Signal(s) => dst.put_i32_le(*s),
        Frame::Exit(x) => put_json(dst, x),
        Frame::Info(i) => put_json(dst, i),
        Frame::CopyOut(r) => put_json(dst, r),
        Frame::CopyIn(r) => put_json(dst, r),
        Frame::Entry(e) => put_json(dst, e),
        Frame::EntryEnd { sha256 } => dst.put_slice(sha256),
        Frame::CopyDone(s) => put_json(dst, s),
        Frame::Connect(r) => put_json(dst, r),
        Frame::Listen(r) => put_json(dst, r),
        Frame::Listening(l) => put_json(dst, l),
        Frame::Accepted(a) => put_json(dst, a),
        Frame::Attach { id } => put_json(dst, &serde_json::json!({ "id": id })),
    }
    let len = dst.len() - start - HEADER_LEN;
    if len > MAX_PAYLOAD {
        dst.truncate(start);
        return Err(ProtoError::Oversize {
            len,
            max: MAX_PAYLOAD,
        });
    }
    dst[start..start + HEADER_LEN].copy_from_slice(&header(frame.kind(), len));
    Ok(())
}

fn put_json<T: serde::Serialize>(dst: &mut BytesMut, v: &T) {
    serde_json::to_writer(dst.writer(), v).expect("records serialize");
}
