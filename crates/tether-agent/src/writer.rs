//! The one writer of a connection: frames from every task of a session go out whole and
//! in the order each task sent them.

use bytes::BytesMut;
use std::io::{self, IoSlice};
use tether_proto::{encode, header, Frame};
use tokio::io::{AsyncWrite, AsyncWriteExt};
use tokio::sync::mpsc;

/// Frames queued per connection before senders wait: bounded memory per session, and
/// backpressure from a slow client all the way to the command's pipes.
pub const QUEUE: usize = 8;

/// Writes frames from `rx` to `w` until every sender is gone and flushes; hands `w`
/// back, so the session can half-close it or, after CONNECTED, carry raw bytes on it.
pub async fn run<W: AsyncWrite + Unpin>(
    mut w: W,
    mut rx: mpsc::Receiver<Frame>,
) -> (W, io::Result<()>) {
    let result = write_frames(&mut w, &mut rx).await;
    (w, result)
}

async fn write_frames<W: AsyncWrite + Unpin>(
    w: &mut W,
    rx: &mut mpsc::Receiver<Frame>,
) -> io::Result<()> {
    let mut small = BytesMut::with_capacity(4096);
    while let Some(frame) = rx.recv().await {
        match &frame {
            // Large data goes out straight from its buffer, header beside it.
            Frame::Stdout(b) | Frame::Stderr(b) | Frame::FileData(b) if b.len() >= 4096 => {
                if !small.is_empty() {
                    w.write_all(&small).await?;
                    small.clear();
                }
                let h = header(frame.kind(), b.len());
                write_two(w, &h, b).await?;
            }
            _ => {
                encode(&frame, &mut small).map_err(io::Error::other)?;
                // Gather what else is queued right now into the same write.
                if rx.is_empty() || small.len() > 64 * 1024 {
                    w.write_all(&small).await?;
                    small.clear();
                }
            }
        }
    }
    if !small.is_empty() {
        w.write_all(&small).await?;
    }
    w.flush().await
}

async fn write_two<W: AsyncWrite + Unpin>(w: &mut W, a: &[u8], b: &[u8]) -> io::Result<()> {
    let (mut a, mut b) = (a, b);
    while !a.is_empty() {
        let n = w
            .write_vectored(&[IoSlice::new(a), IoSlice::new(b)])
            .await?;
        if n == 0 {
            return Err(io::ErrorKind::WriteZero.into());
        }
        let from_a = n.min(a.len());
        a = &a[from_a..];
        b = &b[n - from_a..];
    }
    w.write_all(b).await
}
