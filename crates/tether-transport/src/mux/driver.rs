//! Moving bytes between the link and the engine.
//!
//! Reading is one task: it decodes frames and feeds the engine. Writing is done by
//! whichever task produced something to send, right away (as a socket write would be),
//! through [`Shared::flush_link`]; the writer task only steps in when the link pushes
//! back, when another task is mid-write, or when a timer is due. That saves a task
//! hand-off per write, which is most of a small round trip's cost.

use super::link::{Decoder, Frame, Hello, HELLO_LEN, VERSION};
use super::state::{Shared, State};
use super::MuxError;
use bytes::Bytes;
use std::future::poll_fn;
use std::io::IoSlice;
use std::pin::Pin;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::{Duration, Instant};
use tether_vsock::{copy, HEADER_LEN};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};

/// Bytes gathered into one vectored write at most.
const BATCH_BYTES: usize = 512 * 1024;
/// Packets gathered into one vectored write at most (two slices each, under IOV_MAX).
const BATCH_PACKETS: usize = 256;
/// Slices handed to one vectored write at most (Linux's IOV_MAX).
const MAX_IOVECS: usize = 1024;
/// Longest pause between repeated hellos while the peer stays silent.
const MAX_HELLO_INTERVAL: Duration = Duration::from_secs(2);

/// The link's write half and the batch being written to it.
pub(crate) struct Output {
    wr: Pin<Box<dyn AsyncWrite + Send>>,
    batch: Batch,
    /// Bytes of `batch` already written.
    offset: usize,
}

impl Output {
    pub fn new(wr: impl AsyncWrite + Send + 'static) -> Self {
        Output {
            wr: Box::pin(wr),
            batch: Batch::default(),
            offset: 0,
        }
    }
}

/// What [`Shared::write_direct`] does when the link is busy.
pub(crate) enum WhenBusy {
    /// Give up, so the caller queues a copy.
    Queue,
    /// Wait for the link.
    Wait,
}

/// Where a flush left the link.
pub(crate) enum Flush {
    /// Everything owed is written; wake again by the deadline if there is one.
    Idle(Option<Instant>),
    /// The link is full; the caller's waker is registered with it.
    Blocked,
    /// Another task is writing; it will finish or hand over to the writer task.
    Busy,
    /// The mux is closed.
    Closed,
}

impl Shared {
    /// Writes everything owed to the link from the calling task until done or the link
    /// pushes back. Must be called without the state lock held (lock order: output, then
    /// state).
    ///
    /// Only one task writes at a time. One that finds another writing leaves its packets
    /// to it: it raises `flush_wanted` before trying the lock, and the writer looks at
    /// the flag after letting go of the lock and goes round again if it is up. Without
    /// that, packets queued just after the writer's last look at the engine would wait
    /// for the next write of anyone, which may never come.
    pub fn flush_link(self: &Arc<Self>, cx: &mut Context<'_>, writer_task: bool) -> Flush {
        loop {
            self.flush_wanted.store(true, Ordering::SeqCst);
            let Ok(mut guard) = self.output.try_lock() else {
                return Flush::Busy;
            };
            self.flush_wanted.store(false, Ordering::SeqCst);
            let flushed = self.flush_locked(&mut guard, cx);
            drop(guard);
            match flushed {
                Flush::Idle(_) => self.hand_over_link(),
                Flush::Closed => self.wake_all_link_waiters(),
                // Our task may never poll the link again: the writer task takes over and
                // registers itself with it. Only now that we let go of the write half: a
                // writer task woken while we held it would find it busy, leave the rest
                // to us and sleep, and the packet would wait for ever.
                Flush::Blocked if !writer_task => self.writer.notify_one(),
                Flush::Blocked | Flush::Busy => {}
            }
            let again = matches!(flushed, Flush::Idle(_) | Flush::Busy)
                && self.flush_wanted.load(Ordering::SeqCst);
            if !again {
                if let (Flush::Idle(Some(deadline)), false) = (&flushed, writer_task) {
                    self.tell_writer_about(*deadline);
                }
                return flushed;
            }
        }
    }

    /// Wakes the writer task when a timer is due before it next wakes by itself.
    pub(crate) fn tell_writer_about(&self, deadline: Instant) {
        let sleeping_until = *self.writer_wakes.lock().unwrap_or_else(|e| e.into_inner());
        if sleeping_until.is_none_or(|t| deadline < t) {
            self.writer.notify_one();
        }
    }

    /// The body of [`Shared::flush_link`], with the link's write half held.
    fn flush_locked(self: &Arc<Self>, guard: &mut Option<Output>, cx: &mut Context<'_>) -> Flush {
        let Some(out) = guard.as_mut() else {
            return Flush::Closed;
        };
        loop {
            if out.offset == out.batch.bytes {
                out.batch.clear();
                out.offset = 0;
                match fill(self, &mut out.batch) {
                    Err(()) => return Flush::Closed,
                    Ok(deadline) if out.batch.is_empty() => return Flush::Idle(deadline),
                    Ok(_) => {}
                }
            }
            let slices = out.batch.slices_from(out.offset);
            match out.wr.as_mut().poll_write_vectored(cx, &slices) {
                Poll::Ready(Ok(0)) => {
                    return self.link_failed("writing the link failed: wrote zero bytes")
                }
                Poll::Ready(Ok(n)) => out.offset += n,
                Poll::Ready(Err(e)) => {
                    return self.link_failed(&format!("writing the link failed: {e}"));
                }
                Poll::Pending => return Flush::Blocked,
            }
        }
    }

    /// Writes `data` to the link as an RW of connection `id` straight from the caller's
    /// buffer when the link is free and the peer has credit; copies only what the link
    /// does not take at once. `Ready(None)` means the fast path does not apply: queue
    /// instead.
    ///
    /// When another task is writing, an earlier batch is still going out, the peer is
    /// short of credit or bytes are queued ahead, `when_busy` decides: [`WhenBusy::Queue`]
    /// gives up (`Ready(None)`); [`WhenBusy::Wait`] waits like a socket writer would
    /// (`Pending`), which saves a large write its copy into the send queue.
    pub fn write_direct(
        self: &Arc<Self>,
        cx: &mut Context<'_>,
        session: u64,
        id: tether_vsock::ConnId,
        data: &[u8],
        when_busy: WhenBusy,
    ) -> Poll<Option<std::io::Result<usize>>> {
        let wait = matches!(when_busy, WhenBusy::Wait);
        let mut guard = match self.output.try_lock() {
            Ok(g) => g,
            Err(_) if !wait => return Poll::Ready(None),
            Err(_) => {
                // Registered before the second try, so a holder letting go in between
                // still finds us to wake.
                self.wait_for_link(id, cx);
                match self.output.try_lock() {
                    Ok(g) => {
                        self.stop_waiting_for_link(id);
                        g
                    }
                    Err(_) => return Poll::Pending,
                }
            }
        };
        if wait
            && guard
                .as_ref()
                .is_some_and(|out| out.offset != out.batch.bytes)
        {
            // The writer task finishes the batch and wakes us when it is done.
            self.wait_for_link(id, cx);
            drop(guard);
            self.writer.notify_one();
            return Poll::Pending;
        }
        let (written, left_batch) =
            self.write_direct_locked(&mut guard, cx, session, id, data, wait);
        let backlogged = guard
            .as_ref()
            .is_some_and(|out| out.offset != out.batch.bytes);
        drop(guard);
        // A batch left half written, and packets left to us by a task that found the
        // link busy meanwhile (see flush_link), go now, whatever became of ours. Either
        // way, a writer who found the link busy while we held it is woken by whoever
        // leaves it with nothing to write: that flush, the writer task, or us. A writer
        // short of credit (`written` pending) is not listed: the engine wakes it.
        if left_batch || self.flush_wanted.load(Ordering::SeqCst) {
            self.flush_link(cx, false);
        } else if !backlogged {
            self.hand_over_link();
        }
        if wait && left_batch && matches!(written, Poll::Ready(None)) {
            // Others' packets went first; try again rather than queue a copy.
            cx.waker().wake_by_ref();
            return Poll::Pending;
        }
        written
    }

    /// The body of [`Shared::write_direct`], with the link's write half held; also says
    /// whether it left a batch to write.
    fn write_direct_locked(
        self: &Arc<Self>,
        guard: &mut Option<Output>,
        cx: &mut Context<'_>,
        session: u64,
        id: tether_vsock::ConnId,
        data: &[u8],
        wait: bool,
    ) -> (Poll<Option<std::io::Result<usize>>>, bool) {
        let Some(out) = guard.as_mut() else {
            return (Poll::Ready(None), false);
        };
        if out.offset != out.batch.bytes {
            // The link pushed back on an earlier batch; its writer finishes it.
            return (Poll::Ready(None), false);
        }
        out.batch.clear();
        out.offset = 0;
        // Whatever else is owed goes first, written by the caller's flush: the engine no
        // longer holds it, so a flush after queueing would not find it.
        if fill(self, &mut out.batch).is_err() {
            return (Poll::Ready(None), false);
        }
        if !out.batch.is_empty() {
            return (Poll::Ready(None), true);
        }
        let sent = match self.send_now(cx, session, id, data.len(), wait) {
            Poll::Pending => return (Poll::Pending, false),
            Poll::Ready(sent) => sent,
        };
        let Some((hdr, n)) = sent else {
            return (Poll::Ready(None), false);
        };
        let head = hdr.encode();
        let slices = [IoSlice::new(&head), IoSlice::new(&data[..n])];
        let written = match out.wr.as_mut().poll_write_vectored(cx, &slices) {
            Poll::Ready(Ok(w)) => w,
            Poll::Pending => 0,
            Poll::Ready(Err(e)) => {
                self.link_failed(&format!("writing the link failed: {e}"));
                let err = std::io::Error::new(std::io::ErrorKind::ConnectionAborted, e);
                return (Poll::Ready(Some(Err(err))), false);
            }
        };
        let partial = written < head.len() + n;
        if partial {
            // The packet is committed: its rest goes out before anything else, copied
            // since the caller's buffer is not ours once we return.
            out.batch.rest = Some(rest_of_packet(&head, &data[..n], written));
            out.batch.bytes = head.len() + n - written;
        }
        (Poll::Ready(Some(Ok(n))), partial)
    }

    /// Asks the engine for an RW header for up to `len` bytes of connection `id`.
    /// `Ready(None)` means queue instead (or let [`tether_vsock::Engine::send`] report the
    /// connection's error). A waiting writer the engine turns away (short of credit, or
    /// with bytes queued ahead) is `Pending` until the engine says it is writable.
    fn send_now(
        &self,
        cx: &Context<'_>,
        session: u64,
        id: tether_vsock::ConnId,
        len: usize,
        wait: bool,
    ) -> Poll<Option<(tether_vsock::Header, usize)>> {
        let mut guard = self.lock();
        let st = &mut *guard;
        let Some(engine) = st.engine.as_mut().filter(|_| st.session == session) else {
            return Poll::Ready(None);
        };
        match engine.send_now(id, len) {
            Ok(Some(sent)) => Poll::Ready(Some(sent)),
            Ok(None) if wait && engine.wait_writable(id).is_ok() => {
                // Parked under the same lock as the engine's answer, so the credit that
                // ends the wait cannot slip in between.
                if let Some(slot) = st.slots.get_mut(&id) {
                    slot.write = Some(cx.waker().clone());
                }
                Poll::Pending
            }
            _ => Poll::Ready(None),
        }
    }

    /// Leaves writing to the writer task: for callers with no task context, or holding
    /// the state lock (which a flush must not be called under).
    pub fn kick(&self) {
        self.writer.notify_one();
    }

    fn link_failed(&self, why: &str) -> Flush {
        let mut st = self.lock();
        self.terminate(&mut st, MuxError::LinkClosed(why.into()));
        Flush::Closed
    }
}

pub(crate) async fn read_loop<R: AsyncRead + Unpin>(shared: Arc<Shared>, mut rd: R) {
    let max_payload = shared.lock().cfg.max_payload;
    let mut dec = Decoder::new(max_payload);
    loop {
        let read = match dec.direct_payload() {
            Some(mut payload) => rd.read_buf(&mut payload).await,
            None => {
                dec.buffer().reserve(128 * 1024);
                rd.read_buf(dec.buffer()).await
            }
        };
        let err = match read {
            Ok(0) => MuxError::LinkClosed("the link reached end of stream".into()),
            Ok(_) => {
                feed(&shared, &mut dec);
                // Answer (credit updates, RESPONSEs) from this task, without a hand-off.
                poll_fn(|cx| Poll::Ready(shared.flush_link(cx, false))).await;
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

/// Writes when nobody else does: after the link pushed back, after a busy flush, for
/// hellos and timers; wakes writers waiting for the link when a hand-over went
/// unanswered. Ends by closing the write half once the mux is closed.
pub(crate) async fn write_loop(shared: Arc<Shared>) {
    loop {
        // Before our own flush, whose hand-over would count as the link moving.
        shared.check_link_waiters();
        // Wait on the link and on notifications at once: a task that hit a full link
        // took the link's waker slot and then notified us to take it back.
        let state = tokio::select! {
            biased;
            s = poll_fn(|cx| match shared.flush_link(cx, true) {
                Flush::Blocked => Poll::Pending,
                other => Poll::Ready(other),
            }) => s,
            _ = shared.writer.notified() => continue,
        };
        let deadline = match state {
            Flush::Closed => break,
            Flush::Busy => None,
            Flush::Idle(deadline) => deadline,
            Flush::Blocked => unreachable!("blocked flushes stay pending"),
        };
        // When to look at the waiters again, if a hand-over leaves some waiting.
        let deadline = deadline
            .into_iter()
            .chain(shared.check_link_waiters())
            .min();
        *shared
            .writer_wakes
            .lock()
            .unwrap_or_else(|e| e.into_inner()) = deadline;
        let sleep = async {
            match deadline {
                Some(t) => tokio::time::sleep_until(t.into()).await,
                None => std::future::pending().await,
            }
        };
        tokio::select! {
            biased;
            _ = shared.writer.notified() => {}
            _ = sleep => {}
        }
    }
    let out = shared
        .output
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .take();
    if let Some(mut out) = out {
        let _ = out.wr.shutdown().await;
    }
}

/// What is left of a packet of which the link took only the first `written` bytes.
fn rest_of_packet(head: &[u8], payload: &[u8], written: usize) -> Bytes {
    if let Some(from) = written.checked_sub(head.len()) {
        return copy::to_bytes(&payload[from..]);
    }
    let mut rest = Vec::with_capacity(head.len() + payload.len() - written);
    rest.extend_from_slice(&head[written..]);
    copy::put(&mut rest, payload);
    rest.into()
}

/// One vectored write's worth of packets.
#[derive(Default)]
struct Batch {
    /// The unwritten end of a packet written straight from a caller's buffer: it goes
    /// before everything else.
    rest: Option<Bytes>,
    heads: Vec<[u8; HEADER_LEN]>,
    payloads: Vec<Bytes>,
    hello: Option<[u8; HELLO_LEN]>,
    bytes: usize,
}

impl Batch {
    fn is_empty(&self) -> bool {
        self.bytes == 0
    }

    fn clear(&mut self) {
        self.rest = None;
        self.heads.clear();
        self.payloads.clear();
        self.hello = None;
        self.bytes = 0;
    }

    fn push_packet(&mut self, head: [u8; HEADER_LEN], payload: Bytes) {
        self.bytes += HEADER_LEN + payload.len();
        self.heads.push(head);
        self.payloads.push(payload);
    }

    /// The unwritten part of the batch, `offset` bytes in, as at most `MAX_IOVECS`
    /// slices. Whole written packets are skipped by arithmetic, so a link taking a big
    /// batch in many small writes costs no quadratic slice building.
    fn slices_from(&self, mut offset: usize) -> Vec<IoSlice<'_>> {
        let rest = self.rest.as_ref().map(|r| &r[..]);
        let hello = self.hello.as_ref().map(|h| &h[..]);
        let packets = self
            .heads
            .iter()
            .zip(&self.payloads)
            .flat_map(|(h, p)| [&h[..], &p[..]]);
        let mut out = Vec::with_capacity(MAX_IOVECS.min(1 + 2 * self.heads.len()));
        for part in rest.into_iter().chain(hello).chain(packets) {
            if offset >= part.len() {
                offset -= part.len();
                continue;
            }
            out.push(IoSlice::new(&part[offset..]));
            offset = 0;
            if out.len() == MAX_IOVECS {
                break;
            }
        }
        out
    }
}

/// Runs due timers and gathers what is owed to the link. Returns the next time the
/// writer must wake by itself, or `Err` once the mux is closed.
fn fill(shared: &Arc<Shared>, batch: &mut Batch) -> Result<Option<Instant>, ()> {
    let mut guard = shared.lock();
    let st = &mut *guard;
    if st.closed.is_some() {
        return Err(());
    }
    // The clock is read only when a timer is armed: most flushes have none.
    take_hello(st, batch);
    let Some(engine) = st.engine.as_mut() else {
        return finish(shared, st, batch, st.next_hello);
    };
    if let Some(due) = engine.poll_timeout() {
        let now = Instant::now();
        if due <= now {
            engine.handle_timeout(now);
        }
    }
    while batch.bytes < BATCH_BYTES && batch.heads.len() < BATCH_PACKETS {
        let Some(t) = engine.poll_transmit(u32::MAX) else {
            break;
        };
        batch.push_packet(t.header.encode(), t.payload);
    }
    let deadline = engine.poll_timeout();
    shared.dispatch(st);
    finish(shared, st, batch, deadline)
}

/// Puts an owed hello in the batch; while the peer is silent, repeats it with backoff.
fn take_hello(st: &mut State, batch: &mut Batch) {
    if st.engine.is_none() && st.next_hello.is_some_and(|t| t <= Instant::now()) {
        st.hello_due.get_or_insert(false);
    }
    let Some(ack) = st.hello_due.take() else {
        return;
    };
    let hello = Hello {
        version: VERSION,
        ack,
        cid: st.cfg.cid,
        nonce: st.our_nonce,
        max_payload: st.cfg.max_payload,
    };
    batch.hello = Some(hello.encode());
    batch.bytes += HELLO_LEN;
    if st.engine.is_none() {
        st.next_hello = Some(Instant::now() + st.hello_backoff);
        st.hello_backoff = (st.hello_backoff * 2).min(MAX_HELLO_INTERVAL);
    }
}

/// Closes a draining mux once nothing is left to write.
fn finish(
    shared: &Shared,
    st: &mut State,
    batch: &Batch,
    deadline: Option<Instant>,
) -> Result<Option<Instant>, ()> {
    if st.draining && batch.is_empty() {
        shared.terminate(st, MuxError::LinkClosed("closed by this end".into()));
        return Err(());
    }
    Ok(deadline)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn flat(slices: &[IoSlice<'_>]) -> Vec<u8> {
        slices.iter().flat_map(|s| s.iter().copied()).collect()
    }

    #[test]
    fn slices_resume_mid_packet_and_skip_empty_payloads() {
        let mut b = Batch {
            hello: Some([7; HELLO_LEN]),
            bytes: HELLO_LEN,
            ..Batch::default()
        };
        b.push_packet([1; HEADER_LEN], Bytes::new());
        b.push_packet([2; HEADER_LEN], Bytes::from_static(b"payload"));
        let all = flat(&b.slices_from(0));
        assert_eq!(all.len(), b.bytes);
        assert_eq!(b.slices_from(0).len(), 4, "no slice for the empty payload");
        for offset in [1, HELLO_LEN, HELLO_LEN + 3, b.bytes - 2, b.bytes] {
            assert_eq!(
                flat(&b.slices_from(offset)),
                all[offset..],
                "offset {offset}"
            );
        }
    }

    #[test]
    fn the_rest_of_a_partly_written_packet_goes_first() {
        let head = [3u8; HEADER_LEN];
        let payload: Vec<u8> = (0..5000u32).map(|i| i as u8).collect();
        let whole: Vec<u8> = head.iter().chain(&payload).copied().collect();
        for written in [
            1,
            HEADER_LEN - 1,
            HEADER_LEN,
            HEADER_LEN + 1,
            whole.len() - 1,
        ] {
            let rest = rest_of_packet(&head, &payload, written);
            assert_eq!(&rest[..], &whole[written..], "written {written}");
            let mut b = Batch {
                bytes: rest.len(),
                rest: Some(rest),
                ..Batch::default()
            };
            b.push_packet([4; HEADER_LEN], Bytes::from_static(b"next"));
            let sent = flat(&b.slices_from(0));
            assert_eq!(sent.len(), b.bytes);
            assert_eq!(&sent[..whole.len() - written], &whole[written..]);
            b.clear();
            assert!(b.is_empty() && b.slices_from(0).is_empty());
        }
    }
}
