//! A stream joined to this process's stdin and stdout.

use anyhow::{Context, Result};
use tether_transport::Stream;
use tokio::io::{AsyncRead, AsyncWrite, AsyncWriteExt};

/// Copies stdin to `stream` (then half-closes it) and `stream` to stdout, until the
/// peer's side ends. When stdin ends first, the peer reads EOF and may still answer; when
/// the peer ends first, whatever stdin still holds is not sent (as with ncat).
pub async fn join(stream: Stream) -> Result<()> {
    join_io(stream, tokio::io::stdin(), tokio::io::stdout(), true).await
}

/// [`join`] over any reader and writer; `send` false closes the stream's write half at
/// once.
pub async fn join_io<R, W>(stream: Stream, mut input: R, mut output: W, send: bool) -> Result<()>
where
    R: AsyncRead + Unpin,
    W: AsyncWrite + Unpin,
{
    let (mut rd, mut wr) = tokio::io::split(stream);
    let up = async {
        if send {
            copy(&mut input, &mut wr).await.context("sending")?;
        }
        wr.shutdown().await.context("half-closing")?;
        anyhow::Ok(())
    };
    let down = async {
        copy(&mut rd, &mut output).await.context("receiving")?;
        output.flush().await.context("writing output")?;
        anyhow::Ok(())
    };
    tokio::pin!(up, down);
    let mut up_done = false;
    loop {
        tokio::select! {
            r = &mut up, if !up_done => { r?; up_done = true; }
            r = &mut down => return r,
        }
    }
}

/// A copy with a buffer large enough to move a socket's queue per call.
async fn copy<R, W>(r: &mut R, w: &mut W) -> std::io::Result<u64>
where
    R: AsyncRead + Unpin + ?Sized,
    W: AsyncWrite + Unpin + ?Sized,
{
    let mut r = tokio::io::BufReader::with_capacity(256 * 1024, r);
    tokio::io::copy_buf(&mut r, w).await
}
