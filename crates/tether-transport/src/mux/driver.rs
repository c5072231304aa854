//! The two tasks that move bytes between the link and the engine: one reads and feeds,
//! one drains packets (and hellos) and writes them with vectored writes.

use super::link::{Decoder, Frame, Hello, VERSION};
use super::state::Shared;
use super::MuxError;
use bytes::Bytes;
use std::io::IoSlice;
use std::sync::Arc;
use std::time::{Duration, Instant};
use tether_vsock::HEADER_LEN;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};

/// Bytes gathered into one vectored write at most.
const BATCH_BYTES: usize = 512 * 1024;
/// Packets gathered into one vectored write at most (two slices each, under IOV_MAX).
const BATCH_PACKETS: usize = 256;
/// Longest pause between repeated hellos while the peer stays silent.
const MAX_HELLO_INTERVAL: Duration = Duration::from_secs(2);

pub(crate) async fn read_loop<R: AsyncRead + Unpin>(shared: Arc<Shared>, mut rd: R) {
    let max_payload = shared.lock().cfg.max_payload;
    let mut dec = Decoder::new(max_payload);
    loop {
        dec.buffer().reserve(128 * 1024);
        let err = match rd.read_buf(dec.buffer()).await {
            Ok(0) => MuxError::LinkClosed("the link reached end of stream".into()),
            Ok(_) => {
                feed(&shared, &mut dec);
                continue;
            }
            Err(e) => MuxError::LinkClosed(format!("reading the link failed: {e}")),
        };
        let mut st = shared.lock();
        shared.terminate(&mut st, err);
        return;
    }
}

/// Decodes everything buffered and feeds it to the engine under one lock.
fn feed(shared: &Arc<Shared>, dec: &mut Decoder) {
    let now = Instant::now();
    let mut st = shared.lock();
    loop {
        match dec.next_frame() {
            Ok(None) => break,
            Ok(Some(Frame::Hello(h))) => shared.on_hello(&mut st, h),
            Ok(Some(Frame::Packet(hdr, payload))) => {
                let Some(engine) = st.engine.as_mut() else {
                    continue;
                };
                if let Err(e) = engine.handle_packet(now, &hdr, payload) {
                    shared.restart(&mut st, format!("bad packet on the link: {e}"));
                    dec.resync();
                }
            }
            Err(e) => shared.restart(&mut st, format!("{e}")),
        }
        if st.closed.is_some() {
            return;
        }
    }
    shared.dispatch(&mut st);
}

/// One vectored write's worth of packets.
#[derive(Default)]
struct Batch {
    heads: Vec<[u8; HEADER_LEN]>,
    payloads: Vec<Bytes>,
    hello: Option<[u8; super::link::HELLO_LEN]>,
    bytes: usize,
}

impl Batch {
    fn is_empty(&self) -> bool {
        self.hello.is_none() && self.heads.is_empty()
    }

    fn clear(&mut self) {
        self.heads.clear();
        self.payloads.clear();
        self.hello = None;
        self.bytes = 0;
    }

    fn slices(&self) -> Vec<IoSlice<'_>> {
        let mut out = Vec::with_capacity(1 + 2 * self.heads.len());
        if let Some(h) = &self.hello {
            out.push(IoSlice::new(h));
        }
        for (h, p) in self.heads.iter().zip(&self.payloads) {
            out.push(IoSlice::new(h));
            if !p.is_empty() {
                out.push(IoSlice::new(p));
            }
        }
        out
    }
}

pub(crate) async fn write_loop<W: AsyncWrite + Unpin>(shared: Arc<Shared>, mut wr: W) {
    let mut batch = Batch::default();
    loop {
        batch.clear();
        let deadline = match fill(&shared, &mut batch) {
            Ok(deadline) => deadline,
            Err(()) => break,
        };
        if batch.is_empty() {
            let sleep = async {
                match deadline {
                    Some(t) => tokio::time::sleep_until(t.into()).await,
                    None => std::future::pending().await,
                }
            };
            tokio::select! {
                _ = shared.writer.notified() => {}
                _ = sleep => {}
            }
            continue;
        }
        if let Err(e) = write_all_vectored(&mut wr, &batch).await {
            let mut st = shared.lock();
            shared.terminate(
                &mut st,
                MuxError::LinkClosed(format!("writing the link failed: {e}")),
            );
            break;
        }
    }
    let _ = wr.shutdown().await;
}

/// Runs due timers and gathers what is owed to the link. Returns the next time the
/// writer must wake by itself, or `Err` once the mux is closed.
fn fill(shared: &Arc<Shared>, batch: &mut Batch) -> Result<Option<Instant>, ()> {
    let now = Instant::now();
    let mut st = shared.lock();
    if st.closed.is_some() {
        return Err(());
    }
    let st = &mut *st;
    if st.engine.is_none() && st.next_hello.is_some_and(|t| t <= now) {
        st.hello_due.get_or_insert(false);
    }
    if let Some(ack) = st.hello_due.take() {
        let hello = Hello {
            version: VERSION,
            ack,
            cid: st.cfg.cid,
            nonce: st.our_nonce,
            max_payload: st.cfg.max_payload,
        };
        batch.hello = Some(hello.encode());
        if st.engine.is_none() {
            st.next_hello = Some(now + st.hello_backoff);
            st.hello_backoff = (st.hello_backoff * 2).min(MAX_HELLO_INTERVAL);
        }
    }
    let Some(engine) = st.engine.as_mut() else {
        if st.draining && batch.is_empty() {
            shared.terminate(st, MuxError::LinkClosed("closed by this end".into()));
            return Err(());
        }
        return Ok(st.next_hello);
    };
    if engine.poll_timeout().is_some_and(|t| t <= now) {
        engine.handle_timeout(now);
    }
    while batch.bytes < BATCH_BYTES && batch.heads.len() < BATCH_PACKETS {
        let Some(t) = engine.poll_transmit(u32::MAX) else {
            break;
        };
        batch.bytes += HEADER_LEN + t.payload.len();
        batch.heads.push(t.header.encode());
        batch.payloads.push(t.payload);
    }
    let deadline = engine.poll_timeout();
    shared.dispatch(st);
    if st.draining && batch.is_empty() {
        shared.terminate(st, MuxError::LinkClosed("closed by this end".into()));
        return Err(());
    }
    Ok(deadline)
}

async fn write_all_vectored<W: AsyncWrite + Unpin>(
    wr: &mut W,
    batch: &Batch,
) -> std::io::Result<()> {
    let mut storage = batch.slices();
    let mut slices = &mut storage[..];
    while !slices.is_empty() {
        let n = wr.write_vectored(slices).await?;
        if n == 0 {
            return Err(std::io::ErrorKind::WriteZero.into());
        }
        IoSlice::advance_slices(&mut slices, n);
    }
    Ok(())
}
