//! Relaying bytes both ways between two streams, as `tether forward` and the agent do per
//! connection.

use std::future::poll_fn;
use std::io;
use std::pin::Pin;
use std::task::{ready, Context, Poll};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};

/// Buffer per direction a relay starts with: what an idle or interactive connection
/// holds for good.
pub const INITIAL_BUFFER: usize = 16 * 1024;

/// Largest buffer per direction. socat's 8 KiB costs a system call per 8 KiB; 256 KiB lets
/// one read drain a loopback socket's whole queue. Forwarding through the agent moved
/// 1,665-1,999 MiB/s with this cap, against 1,513-1,616 with a fixed 64 KiB.
pub const MAX_BUFFER: usize = 256 * 1024;

/// Bytes one direction moves in one poll at most before it lets the other run.
const POLL_LIMIT: u64 = 4 * MAX_BUFFER as u64;

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
/// Each direction's buffer starts at [`INITIAL_BUFFER`] and doubles, up to
/// [`MAX_BUFFER`], whenever a read fills it: a bulk transfer gets large reads after a few
/// calls, while the many quiet connections of a busy forwarder stay small.
///
/// Works on any pair of byte streams whose `shutdown()` is a half-close: every
/// [`Stream`](crate::Stream), and wrappers such as the client's forwarded connections.
pub async fn relay<A, B>(a: &mut A, b: &mut B) -> io::Result<Relayed>
where
    A: AsyncRead + AsyncWrite + Unpin + ?Sized,
    B: AsyncRead + AsyncWrite + Unpin + ?Sized,
{
    let (mut a_to_b, mut b_to_a) = (Pump::new(), Pump::new());
    poll_fn(|cx| {
        let there = a_to_b.poll(cx, Pin::new(&mut *a), Pin::new(&mut *b))?;
        let back = b_to_a.poll(cx, Pin::new(&mut *b), Pin::new(&mut *a))?;
        match (there, back) {
            (Poll::Ready(a_to_b), Poll::Ready(b_to_a)) => {
                Poll::Ready(Ok(Relayed { a_to_b, b_to_a }))
            }
            _ => Poll::Pending,
        }
    })
    .await
}

/// One direction of a relay.
struct Pump {
    buf: Vec<u8>,
    /// The unwritten bytes are `buf[start..end]`.
    start: usize,
    end: usize,
    /// Bytes were written since the last flush.
    unflushed: bool,
    /// The source reached end of stream.
    eof: bool,
    /// The destination's write half is closed: this direction is over.
    done: bool,
    moved: u64,
}

impl Pump {
    fn new() -> Self {
        Pump {
            buf: Vec::new(),
            start: 0,
            end: 0,
            unflushed: false,
            eof: false,
            done: false,
            moved: 0,
        }
    }

    /// Moves bytes until `from` has nothing more for now or `to` pushes back; `Ready` with
    /// the byte count once `from` ended and `to`'s write half is closed.
    fn poll<R, W>(
        &mut self,
        cx: &mut Context<'_>,
        mut from: Pin<&mut R>,
        mut to: Pin<&mut W>,
    ) -> Poll<io::Result<u64>>
    where
        R: AsyncRead + ?Sized,
        W: AsyncWrite + ?Sized,
    {
        // Counted against the task's budget like tokio's own I/O, and bounded per call,
        // so that a stream that is always ready cannot starve the other direction (or the
        // other tasks of the worker).
        let coop = ready!(tokio::task::coop::poll_proceed(cx));
        coop.made_progress();
        let until = self.moved + POLL_LIMIT;
        loop {
            if self.done {
                return Poll::Ready(Ok(self.moved));
            }
            if self.moved >= until {
                cx.waker().wake_by_ref();
                return Poll::Pending;
            }
            let empty = self.start == self.end && !self.eof;
            if empty && self.poll_fill(cx, from.as_mut())?.is_pending() {
                // Nothing to read: what was written must not sit in a buffering writer.
                if self.unflushed {
                    ready!(to.as_mut().poll_flush(cx))?;
                    self.unflushed = false;
                }
                return Poll::Pending;
            }
            while self.start < self.end {
                let n = ready!(to.as_mut().poll_write(cx, &self.buf[self.start..self.end]))?;
                if n == 0 {
                    return Poll::Ready(Err(io::ErrorKind::WriteZero.into()));
                }
                self.start += n;
                self.moved += n as u64;
                self.unflushed = true;
            }
            if self.eof {
                ready!(to.as_mut().poll_shutdown(cx))?;
                self.done = true;
            }
        }
    }

    /// Reads into the (emptied) buffer, growing it first if the last read filled it
    /// (`end` still marks where that read stopped).
    fn poll_fill<R: AsyncRead + ?Sized>(
        &mut self,
        cx: &mut Context<'_>,
        from: Pin<&mut R>,
    ) -> Poll<io::Result<()>> {
        let want = match self.buf.len() {
            0 => INITIAL_BUFFER,
            n if self.end == n => (n * 2).min(MAX_BUFFER),
            n => n,
        };
        if want != self.buf.len() {
            self.buf = vec![0; want];
        }
        let mut rb = ReadBuf::new(&mut self.buf);
        ready!(from.poll_read(cx, &mut rb))?;
        let n = rb.filled().len();
        (self.start, self.end) = (0, n);
        self.eof = n == 0;
        Poll::Ready(Ok(()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    /// A reader handing out up to the next of `chunks` per call, then end of stream; notes
    /// the room it was offered each time.
    struct Chunks {
        chunks: Vec<usize>,
        offered: Vec<usize>,
    }

    impl AsyncRead for Chunks {
        fn poll_read(
            mut self: Pin<&mut Self>,
            _: &mut Context<'_>,
            buf: &mut ReadBuf<'_>,
        ) -> Poll<io::Result<()>> {
            self.offered.push(buf.remaining());
            if let Some(&want) = self.chunks.first() {
                let n = want.min(buf.remaining());
                buf.put_slice(&vec![7; n]);
                self.chunks[0] -= n;
                if self.chunks[0] == 0 {
                    self.chunks.remove(0);
                }
            }
            Poll::Ready(Ok(()))
        }
    }

    /// Pumps `chunks` into a sink; returns the buffer sizes the reads were offered.
    fn offered(chunks: Vec<usize>) -> Vec<usize> {
        let total: usize = chunks.iter().sum();
        let mut from = Chunks {
            chunks,
            offered: Vec::new(),
        };
        let mut to = tokio::io::sink();
        let mut cx = Context::from_waker(std::task::Waker::noop());
        let mut pump = Pump::new();
        let moved = loop {
            let before = pump.moved;
            let polled = pump.poll(&mut cx, Pin::new(&mut from), Pin::new(&mut to));
            // One poll moves a bounded share (the limit, overshot by at most one read),
            // then asks to be polled again.
            assert!(pump.moved - before < POLL_LIMIT + MAX_BUFFER as u64);
            if let Poll::Ready(moved) = polled {
                break moved.unwrap();
            }
        };
        assert_eq!(moved, total as u64);
        from.offered
    }

    #[test]
    fn buffer_grows_only_while_reads_fill_it() {
        let bulk = offered(vec![4 << 20]);
        assert_eq!(bulk[..6], [16, 32, 64, 128, 256, 256].map(|k| k * 1024));
        assert!(bulk[5..].iter().all(|&n| n == MAX_BUFFER), "capped");
        // Small reads (an interactive session) leave it at its first size.
        let small = offered(vec![100; 50]);
        assert!(small.iter().all(|&n| n == INITIAL_BUFFER), "{small:?}");
        // A full read after small ones grows it by one step only.
        let mixed = offered(vec![100, INITIAL_BUFFER, 100]);
        assert_eq!(mixed, [16, 16, 32, 32].map(|k| k * 1024));
    }

    #[tokio::test]
    async fn relays_both_ways_and_passes_half_close_through() {
        let (mut client, mut a) = tokio::io::duplex(1024);
        let (mut b, mut server) = tokio::io::duplex(1024);
        let relay = tokio::spawn(async move { relay(&mut a, &mut b).await });
        let up = tether_testkit::pattern(1, 3 << 20);
        let down = tether_testkit::pattern(2, 1 << 20);
        let down2 = down.clone();
        let server_task = tokio::spawn(async move {
            let mut got = Vec::new();
            server.read_to_end(&mut got).await.unwrap();
            // The client's half-close reached us; our direction still flows.
            server.write_all(&down2).await.unwrap();
            server.shutdown().await.unwrap();
            got
        });
        client.write_all(&up).await.unwrap();
        client.shutdown().await.unwrap();
        let mut back = Vec::new();
        client.read_to_end(&mut back).await.unwrap();
        assert!(server_task.await.unwrap() == up, "bytes up arrive intact");
        assert!(
            back == down,
            "bytes down arrive intact after the half-close"
        );
        let moved = relay.await.unwrap().unwrap();
        let want = Relayed {
            a_to_b: up.len() as u64,
            b_to_a: down.len() as u64,
        };
        assert_eq!(moved, want);
    }

    /// A reader that always has a full buffer of bytes and a writer that always takes
    /// everything: a direction between them never waits. Not tokio's `repeat` and
    /// `sink`: those yield to the task budget, which would hide a relay that does not.
    struct Endless;

    impl AsyncRead for Endless {
        fn poll_read(
            self: Pin<&mut Self>,
            _: &mut Context<'_>,
            buf: &mut ReadBuf<'_>,
        ) -> Poll<io::Result<()>> {
            buf.put_slice(&vec![1; buf.remaining()]);
            Poll::Ready(Ok(()))
        }
    }

    impl AsyncWrite for Endless {
        fn poll_write(
            self: Pin<&mut Self>,
            _: &mut Context<'_>,
            data: &[u8],
        ) -> Poll<io::Result<usize>> {
            Poll::Ready(Ok(data.len()))
        }
        fn poll_flush(self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<io::Result<()>> {
            Poll::Ready(Ok(()))
        }
        fn poll_shutdown(self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<io::Result<()>> {
            Poll::Ready(Ok(()))
        }
    }

    #[test]
    fn a_direction_that_never_waits_does_not_starve_the_other() {
        let rt = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .enable_all()
            .build()
            .unwrap();
        let got = rt.block_on(async {
            let (mut a_peer, a_out) = tokio::io::duplex(1024);
            let (b_in, mut b_peer) = tokio::io::duplex(1024);
            let mut a = tokio::io::join(Endless, a_out);
            let mut b = tokio::io::join(b_in, Endless);
            tokio::spawn(async move { relay(&mut a, &mut b).await });
            b_peer.write_all(b"ping").await.unwrap();
            let mut got = [0; 4];
            let read = a_peer.read_exact(&mut got);
            tokio::time::timeout(Duration::from_secs(10), read)
                .await
                .map(|_| got)
        });
        // A relay stuck in one poll would hold its worker for good: leave it behind
        // rather than wait for it, so the test fails instead of hanging.
        rt.shutdown_background();
        assert_eq!(&got.expect("the quiet direction was relayed"), b"ping");
    }

    /// A stream whose reads and writes fail with a reset.
    struct Broken;

    impl AsyncRead for Broken {
        fn poll_read(
            self: Pin<&mut Self>,
            _: &mut Context<'_>,
            _: &mut ReadBuf<'_>,
        ) -> Poll<io::Result<()>> {
            Poll::Ready(Err(io::ErrorKind::ConnectionReset.into()))
        }
    }

    impl AsyncWrite for Broken {
        fn poll_write(
            self: Pin<&mut Self>,
            _: &mut Context<'_>,
            _: &[u8],
        ) -> Poll<io::Result<usize>> {
            Poll::Ready(Err(io::ErrorKind::ConnectionReset.into()))
        }
        fn poll_flush(self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<io::Result<()>> {
            Poll::Ready(Ok(()))
        }
        fn poll_shutdown(self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<io::Result<()>> {
            Poll::Ready(Ok(()))
        }
    }

    #[tokio::test]
    async fn a_failing_side_ends_the_relay_with_its_error() {
        let (_client, mut a) = tokio::io::duplex(1024);
        let err = relay(&mut a, &mut Broken).await.unwrap_err();
        assert_eq!(err.kind(), io::ErrorKind::ConnectionReset);
    }
}
