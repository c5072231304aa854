//! Relaying bytes both ways between two streams, as `tether forward` does per connection.

use crate::Stream;
use std::io;

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
pub async fn relay(a: &mut Stream, b: &mut Stream) -> io::Result<Relayed> {
    let (a_to_b, b_to_a) =
        tokio::io::copy_bidirectional_with_sizes(a, b, RELAY_BUFFER, RELAY_BUFFER).await?;
    Ok(Relayed { a_to_b, b_to_a })
}
