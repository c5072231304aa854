//! Per-connection byte queues. Payloads are kept as the `Bytes` they arrived in, so data
//! moves from the link to the reader, and from the writer to the link, without extra copies.

use bytes::{Buf, Bytes, BytesMut};
use std::collections::VecDeque;

/// A seqpacket message as delivered to the reader.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Message {
    /// The whole message.
    pub data: Bytes,
    /// Whether the sender marked it end of record (`MSG_EOR`).
    pub eor: bool,
}

/// One unit of queued outgoing data. Stream data has `eom == false`; a seqpacket message
/// is one chunk with `eom == true`, split into packets at transmit time.
#[derive(Debug)]
struct Chunk {
    data: Bytes,
    eom: bool,
    eor: bool,
}

/// Outgoing data waiting for credit.
#[derive(Debug, Default)]
pub(crate) struct SendQueue {
    chunks: VecDeque<Chunk>,
    len: usize,
}

/// A slice of the send queue to put in one RW packet.
pub(crate) struct Piece {
    pub data: Bytes,
    /// Seqpacket flags for this piece (EOM, EOR) when it ends a message.
    pub flags: u32,
}

impl SendQueue {
    pub fn len(&self) -> usize {
        self.len
    }

    /// No chunks left. Counting chunks rather than bytes keeps an empty seqpacket message
    /// in the queue until its packet has gone out.
    pub fn is_empty(&self) -> bool {
        self.chunks.is_empty()
    }

    pub fn push(&mut self, data: Bytes, eom: bool, eor: bool) {
        self.len += data.len();
        self.chunks.push_back(Chunk { data, eom, eor });
    }

    pub fn clear(&mut self) {
        self.chunks.clear();
        self.len = 0;
    }

    /// Takes up to `max` bytes from the front, never crossing a message boundary. Stream
    /// chunks are joined when the front one is shorter than `max`: small writes leave in
    /// full packets instead of one packet each.
    pub fn take(&mut self, max: usize) -> Option<Piece> {
        let front = self.chunks.front()?;
        if !front.eom && front.data.len() < max && self.chunks.len() > 1 {
            return Some(self.gather_stream(max));
        }
        let front = self.chunks.front_mut()?;
        let n = front.data.len().min(max);
        let data = front.data.split_to(n);
        self.len -= n;
        let mut flags = 0;
        if front.data.is_empty() {
            if front.eom {
                flags |= crate::header::seqpacket::EOM;
                if front.eor {
                    flags |= crate::header::seqpacket::EOR;
                }
            }
            self.chunks.pop_front();
        }
        Some(Piece { data, flags })
    }

    /// Copies stream chunks from the front into one piece of at most `max` bytes.
    fn gather_stream(&mut self, max: usize) -> Piece {
        let mut buf = BytesMut::with_capacity(max.min(self.len));
        while buf.len() < max {
            let Some(front) = self.chunks.front_mut() else {
                break;
            };
            if front.eom {
                break;
            }
            let n = front.data.len().min(max - buf.len());
            crate::copy::put(&mut buf, &front.data[..n]);
            front.data.advance(n);
            if front.data.is_empty() {
                self.chunks.pop_front();
            }
        }
        self.len -= buf.len();
        Piece {
            data: buf.freeze(),
            flags: 0,
        }
    }

    /// Bytes the next packet may carry, at most `max`: the rest of a seqpacket message
    /// (a boundary always ends a packet), or the run of stream chunks at the front.
    pub fn next_len(&self, max: usize) -> usize {
        let mut total = 0;
        for chunk in &self.chunks {
            if chunk.eom {
                return if total == 0 {
                    chunk.data.len().min(max)
                } else {
                    total
                };
            }
            total += chunk.data.len();
            if total >= max {
                return max;
            }
        }
        total
    }
}

/// Received data waiting for the reader.
#[derive(Debug, Default)]
pub(crate) struct RecvQueue {
    chunks: VecDeque<Bytes>,
    len: usize,
    /// Seqpacket only: the message being assembled and the completed ones.
    partial: BytesMut,
    messages: VecDeque<Message>,
}

impl RecvQueue {
    /// Bytes held, counting partial and complete messages.
    pub fn len(&self) -> usize {
        self.len
    }

    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    pub fn push_stream(&mut self, data: Bytes) {
        if data.is_empty() {
            return;
        }
        self.len += data.len();
        self.chunks.push_back(data);
    }

    /// Appends a seqpacket fragment; returns true when it completed a message.
    pub fn push_fragment(&mut self, data: &[u8], flags: u32) -> bool {
        self.len += data.len();
        crate::copy::put(&mut self.partial, data);
        if flags & crate::header::seqpacket::EOM == 0 {
            return false;
        }
        let eor = flags & crate::header::seqpacket::EOR != 0;
        let data = self.partial.split().freeze();
        self.messages.push_back(Message { data, eor });
        true
    }

    /// Copies up to `buf.len()` stream bytes into `buf`.
    pub fn read_into(&mut self, buf: &mut [u8]) -> usize {
        let mut done = 0;
        while done < buf.len() {
            let Some(front) = self.chunks.front_mut() else {
                break;
            };
            let n = front.len().min(buf.len() - done);
            crate::copy::copy(&mut buf[done..done + n], &front[..n]);
            front.advance(n);
            done += n;
            if front.is_empty() {
                self.chunks.pop_front();
            }
        }
        self.len -= done;
        done
    }

    /// Takes up to `max` stream bytes without copying.
    pub fn read_bytes(&mut self, max: usize) -> Option<Bytes> {
        let front = self.chunks.front_mut()?;
        let out = if front.len() <= max {
            self.chunks.pop_front().expect("front exists")
        } else {
            front.split_to(max)
        };
        self.len -= out.len();
        Some(out)
    }

    /// Takes the oldest complete message.
    pub fn read_message(&mut self) -> Option<Message> {
        let msg = self.messages.pop_front()?;
        self.len -= msg.data.len();
        Some(msg)
    }

    /// Whether a read would return something now (bytes, or a whole message).
    pub fn readable(&self) -> bool {
        !self.chunks.is_empty() || !self.messages.is_empty()
    }

    pub fn clear(&mut self) {
        *self = RecvQueue::default();
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::header::seqpacket::{EOM, EOR};

    #[test]
    fn send_queue_splits_without_crossing_messages() {
        let mut q = SendQueue::default();
        q.push(Bytes::from_static(b"abcdef"), true, true);
        q.push(Bytes::from_static(b"gh"), true, false);
        let p = q.take(4).unwrap();
        assert_eq!((&p.data[..], p.flags), (&b"abcd"[..], 0));
        let p = q.take(100).unwrap();
        assert_eq!((&p.data[..], p.flags), (&b"ef"[..], EOM | EOR));
        let p = q.take(100).unwrap();
        assert_eq!((&p.data[..], p.flags), (&b"gh"[..], EOM));
        assert!(q.take(100).is_none());
        assert!(q.is_empty());
    }

    #[test]
    fn stream_chunks_join_into_one_piece() {
        let mut q = SendQueue::default();
        for part in [&b"ab"[..], b"cde", b"fghij"] {
            q.push(Bytes::copy_from_slice(part), false, false);
        }
        assert_eq!(q.next_len(100), 10);
        assert_eq!(q.next_len(4), 4);
        let p = q.take(4).unwrap();
        assert_eq!(&p.data[..], b"abcd");
        assert_eq!(q.len(), 6);
        let p = q.take(100).unwrap();
        assert_eq!(&p.data[..], b"efghij");
        assert!(q.is_empty() && q.take(100).is_none());
    }

    #[test]
    fn recv_queue_reads_across_chunks() {
        let mut q = RecvQueue::default();
        q.push_stream(Bytes::from_static(b"hello "));
        q.push_stream(Bytes::from_static(b"world"));
        let mut buf = [0u8; 8];
        assert_eq!(q.read_into(&mut buf), 8);
        assert_eq!(&buf, b"hello wo");
        assert_eq!(q.read_bytes(10).unwrap(), Bytes::from_static(b"rld"));
        assert!(q.is_empty() && !q.readable());
    }

    #[test]
    fn fragments_assemble_into_messages() {
        let mut q = RecvQueue::default();
        assert!(!q.push_fragment(b"ab", 0));
        assert!(!q.readable());
        assert!(q.push_fragment(b"cd", EOM | EOR));
        assert_eq!(q.len(), 4);
        let m = q.read_message().unwrap();
        assert_eq!((&m.data[..], m.eor), (&b"abcd"[..], true));
        assert!(q.is_empty());
    }
}
