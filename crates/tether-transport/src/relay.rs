//! Relaying bytes both ways between two streams, as `tether forward` does per connection.

use std::io;
use tokio::io::{AsyncRead, AsyncWrite};

/// Buffer per direction. socat's 8 KiB costs a system call per 8 KiB; 256 KiB lets one
/// read drain a loopback socket's whole queue.
pub const RELAY_BUFFER: usize = 256 * 1024;

/// Bytes moved by a finished relay.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Relayed {
    /// From the first stream to the second.
    pub a_to_b: u64,
    /// From the second stream to the first.
    pub b_to_a: u64,
}

/// Copies `a` to `b` and `b` to `a` until both directions reach end of stream. When one
/// side stops sending, the other side's write half is closed and the reverse direction
/// keeps flowing (half-close passes through).
///
/// Works on any pair of byte streams whose `shutdown()` is a half-close: every
/// [`Stream`](crate::Stream), and wrappers such as the client's forwarded connections.
pub async fn relay<A, B>(a: &mut A, b: &mut B) -> io::Result<Relayed>
where
    A: AsyncRead + AsyncWrite + Unpin + ?Sized,
    B: AsyncRead + AsyncWrite + Unpin + ?Sized,
{
    relay_with_buffer(a, b, RELAY_BUFFER).await
}

/// [`relay`] with `buffer` bytes per direction instead of [`RELAY_BUFFER`]: a process
/// that relays many connections at once and must stay small (the guest agent) trades a
/// few system calls for memory.
pub async fn relay_with_buffer<A, B>(a: &mut A, b: &mut B, buffer: usize) -> io::Result<Relayed>
where
    A: AsyncRead + AsyncWrite + Unpin + ?Sized,
    B: AsyncRead + AsyncWrite + Unpin + ?Sized,
{
    let (a_to_b, b_to_a) = tokio::io::copy_bidirectional_with_sizes(a, b, buffer, buffer).await?;
    Ok(Relayed { a_to_b, b_to_a })
}
