//! Packets between virtqueue descriptor chains and the engine.
//!
//! Chains are read and written through virtio-queue's `Reader`/`Writer`, so any layout
//! the driver chooses works: header and data in one descriptor, in two, or spread over
//! many (MSG_ZEROCOPY guests).

use bytes::Bytes;
use std::io::{Read, Write};
use std::ops::Deref;
use tether_vsock::{Header, HeaderError, Transmit, HEADER_LEN};
use thiserror::Error;
use virtio_queue::{DescriptorChain, Error as QueueError, Reader, Writer};
use vm_memory::GuestMemory;

/// Why a TX chain was dropped before reaching the engine.
#[derive(Debug, Error)]
pub enum ChainError {
    /// The chain's buffers do not lie in guest memory.
    #[error("descriptor chain outside guest memory: {0}")]
    Memory(QueueError),
    /// Fewer readable bytes than a header.
    #[error("descriptor chain holds {0} bytes, less than the 44-byte header")]
    Short(usize),
    /// The header does not decode.
    #[error("bad header: {0}")]
    Header(HeaderError),
    /// `len` promises more payload than the chain holds.
    #[error("header len {declared} exceeds the {actual} payload bytes in the chain")]
    Truncated {
        /// The header's `len`.
        declared: u32,
        /// Readable bytes after the header.
        actual: usize,
    },
    /// `len` is above the largest payload accepted.
    #[error("header len {declared} exceeds the {max}-byte maximum payload")]
    TooLarge {
        /// The header's `len`.
        declared: u32,
        /// The limit.
        max: u32,
    },
    /// Copying out of guest memory failed.
    #[error("reading the descriptor chain: {0}")]
    Io(std::io::Error),
}

/// Reads one packet (header and payload) out of a TX chain.
pub fn read_packet<G, M>(
    mem: &G,
    chain: DescriptorChain<M>,
    max_payload: u32,
) -> Result<(Header, Bytes), ChainError>
where
    G: GuestMemory,
    M: Deref,
    M::Target: GuestMemory + Sized,
{
    let mut reader: Reader<'_, _> = Reader::new(mem, chain).map_err(ChainError::Memory)?;
    let total = reader.available_bytes();
    if total < HEADER_LEN {
        return Err(ChainError::Short(total));
    }
    let mut raw = [0u8; HEADER_LEN];
    reader.read_exact(&mut raw).map_err(ChainError::Io)?;
    let header = Header::decode(&raw).map_err(ChainError::Header)?;
    let actual = reader.available_bytes();
    if header.len > max_payload {
        return Err(ChainError::TooLarge {
            declared: header.len,
            max: max_payload,
        });
    }
    if header.len as usize > actual {
        return Err(ChainError::Truncated {
            declared: header.len,
            actual,
        });
    }
    let mut payload = vec![0u8; header.len as usize];
    reader.read_exact(&mut payload).map_err(ChainError::Io)?;
    Ok((header, Bytes::from(payload)))
}

/// Room for payload in an RX chain: `None` when it cannot even hold a header.
pub fn rx_room<G, M>(mem: &G, chain: &DescriptorChain<M>) -> Result<Option<u32>, QueueError>
where
    G: GuestMemory,
    M: Deref + Clone,
    M::Target: GuestMemory + Sized,
{
    let writer: Writer<'_, _> = Writer::new(mem, chain.clone())?;
    let room = writer.available_bytes();
    Ok(room
        .checked_sub(HEADER_LEN)
        .map(|r| r.min(u32::MAX as usize) as u32))
}

/// Writes one packet into an RX chain; returns the bytes written (the used length).
pub fn write_packet<G, M>(
    mem: &G,
    chain: DescriptorChain<M>,
    packet: &Transmit,
) -> std::io::Result<u32>
where
    G: GuestMemory,
    M: Deref,
    M::Target: GuestMemory + Sized,
{
    let mut writer: Writer<'_, _> =
        Writer::new(mem, chain).map_err(|e| std::io::Error::other(e.to_string()))?;
    writer.write_all(&packet.header.encode())?;
    writer.write_all(&packet.payload)?;
    Ok((HEADER_LEN + packet.payload.len()) as u32)
}
