//! A running command: its stdin, stdout and stderr, resize and signal, and its exit
//! status.
//!
//! Two tasks serve a session. The reader task decodes the agent's frames and feeds
//! stdout and stderr into bounded queues (a consumer that falls behind stops the reader,
//! which stops reading the connection, which makes the transport hold the agent back:
//! output is never dropped and never piles up). The writer task is the only writer of
//! the connection: stdin data, STDIN_EOF, RESIZE and SIGNAL reach it through channels
//! and go out as whole frames, so handles used from different tasks never interleave
//! partial frames. Control frames overtake queued stdin data.

use crate::client::{next_frame, unexpected, FrameReader, FrameWriter};
use crate::error::ClientError;
use bytes::{Buf, Bytes, BytesMut};
use std::convert::Infallible;
use std::fmt;
use std::future::Future;
use std::io;
use std::pin::Pin;
use std::sync::{Arc, OnceLock};
use std::task::{ready, Context, Poll};
use tether_proto::{encode, header, ExitStatus, Frame, Kind};
use tether_transport::Remote;
use tokio::io::{AsyncBufRead, AsyncRead, AsyncWrite, AsyncWriteExt, ReadBuf};
use tokio::sync::{mpsc, oneshot};
use tokio_util::sync::PollSender;

/// The largest STDIN frame a [`SessionStdin`] sends; bigger writes are split.
pub const STDIN_CHUNK: usize = 64 * 1024;
/// Output frames queued per stream before the reader stops reading the connection.
const OUTPUT_QUEUE: usize = 8;
/// Stdin frames queued before writes wait for the connection.
const STDIN_QUEUE: usize = 4;
/// Control frames queued before `resize`/`signal` wait.
const CONTROL_QUEUE: usize = 16;

type Ack = oneshot::Sender<io::Result<()>>;
type ExitResult = Result<ExitStatus, ClientError>;

/// Held by every handle on a session; when the last one is dropped the reader task
/// closes the connection, and the agent ends the command (SIGTERM, then SIGKILL).
#[derive(Clone)]
struct Alive(#[allow(dead_code)] mpsc::Sender<Infallible>);

/// A command running in the guest, from [`Client::exec`](crate::Client::exec).
///
/// Take the stdio handles out of the `Option`s to use them from other tasks, like
/// [`tokio::process::Child`]. Read stdout and stderr concurrently (or drop the one you
/// do not need): they share one connection, so a full, unread stderr queue holds stdout
/// back too. Dropping a reader discards its stream's data.
///
/// ```no_run
/// # async fn demo(client: tether_client::Client) -> Result<(), Box<dyn std::error::Error>> {
/// use tether_client::Command;
/// use tokio::io::{AsyncReadExt, AsyncWriteExt};
///
/// let mut session = client.exec(&Command::new("tr").args(["a-z", "A-Z"]).stdin(true)).await?;
/// let mut stdin = session.stdin.take().unwrap();
/// let mut stdout = session.stdout.take().unwrap();
/// stdin.write_all(b"hello\n").await?;
/// stdin.shutdown().await?; // STDIN_EOF
/// let mut out = Vec::new();
/// stdout.read_to_end(&mut out).await?;
/// assert_eq!(out, b"HELLO\n");
/// assert!(session.wait().await?.success());
/// # Ok(()) }
/// ```
pub struct Session {
    /// The command's stdin, when the command was built with
    /// [`stdin(true)`](crate::Command::stdin). `shutdown()` (or dropping it) sends
    /// STDIN_EOF.
    pub stdin: Option<SessionStdin>,
    /// The command's stdout (for a terminal session, everything the terminal shows).
    pub stdout: Option<SessionOutput>,
    /// The command's stderr (empty for a terminal session).
    pub stderr: Option<SessionOutput>,
    pid: u32,
    remote: Remote,
    control: Control,
    exit: Option<oneshot::Receiver<ExitResult>>,
    status: Option<ExitStatus>,
    _alive: Alive,
}

impl fmt::Debug for Session {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Session")
            .field("pid", &self.pid)
            .field("remote", &self.remote)
            .field("status", &self.status)
            .finish_non_exhaustive()
    }
}

/// Everything a finished command wrote, from [`Session::output`].
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Output {
    /// How it ended.
    pub status: ExitStatus,
    /// All of its stdout.
    pub stdout: Vec<u8>,
    /// All of its stderr.
    pub stderr: Vec<u8>,
}

impl Session {
    /// Starts the reader and writer tasks on a connection past STARTED.
    pub(crate) fn start(
        rd: FrameReader,
        wr: FrameWriter,
        pid: u32,
        stdin: bool,
        remote: Remote,
    ) -> Session {
        let (alive_tx, alive_rx) = mpsc::channel(1);
        let alive = Alive(alive_tx);
        let (out_tx, out_rx) = mpsc::channel(OUTPUT_QUEUE);
        let (err_tx, err_rx) = mpsc::channel(OUTPUT_QUEUE);
        let (exit_tx, exit_rx) = oneshot::channel();
        let (done_tx, done_rx) = oneshot::channel();
        let (ctrl_tx, ctrl_rx) = mpsc::channel(CONTROL_QUEUE);
        let failure = Arc::new(OnceLock::new());
        let (stdin_tx, stdin_rx) = if stdin {
            let (t, r) = mpsc::channel(STDIN_QUEUE);
            (Some(t), Some(r))
        } else {
            (None, None)
        };
        tokio::spawn(read_frames(Reader {
            rd,
            out: out_tx,
            err: err_tx,
            exit: exit_tx,
            failure: failure.clone(),
            alive: alive_rx,
            _done: done_tx,
        }));
        tokio::spawn(write_frames(wr, ctrl_rx, stdin_rx, done_rx));
        let output = |rx| SessionOutput {
            rx,
            chunk: Bytes::new(),
            failure: failure.clone(),
            _alive: alive.clone(),
        };
        Session {
            stdin: stdin_tx.map(|tx| SessionStdin {
                tx: PollSender::new(tx),
                pending: None,
                eof: false,
                _alive: alive.clone(),
            }),
            stdout: Some(output(out_rx)),
            stderr: Some(output(err_rx)),
            pid,
            remote,
            control: Control {
                tx: ctrl_tx,
                _alive: alive.clone(),
            },
            exit: Some(exit_rx),
            status: None,
            _alive: alive,
        }
    }

    /// The command's process id in the guest.
    pub fn pid(&self) -> u32 {
        self.pid
    }

    /// Which endpoint the session runs over.
    pub fn remote(&self) -> &Remote {
        &self.remote
    }

    /// A handle for resizing the terminal and sending signals from any task.
    pub fn control(&self) -> Control {
        self.control.clone()
    }

    /// Sets the terminal size (see [`Control::resize`]).
    pub async fn resize(&self, rows: u16, cols: u16) -> Result<(), ClientError> {
        self.control.resize(rows, cols).await
    }

    /// Sends `signal` to the command's process group (see [`Control::signal`]).
    pub async fn signal(&self, signal: i32) -> Result<(), ClientError> {
        self.control.signal(signal).await
    }

    /// Waits for the command's exit status: the EXIT frame, which the agent sends after
    /// all of the command's output.
    ///
    /// Handles still in the session are closed first, as [`tokio::process::Child::wait`]
    /// does: a `stdin` not taken gets its EOF, and a `stdout` or `stderr` not taken is
    /// discarded (so it cannot hold EXIT back). Taken readers must be read to their end,
    /// or dropped, for EXIT to arrive. Cancel-safe; once it has returned a status, it
    /// returns the same one again.
    ///
    /// Fails with [`ClientError::ConnectionLost`] when the connection ends before EXIT,
    /// and with [`ClientError::Agent`] when the agent reports an error instead.
    pub async fn wait(&mut self) -> Result<ExitStatus, ClientError> {
        if let Some(s) = self.status {
            return Ok(s);
        }
        self.stdin = None;
        self.stdout = None;
        self.stderr = None;
        let rx = self.exit.as_mut().ok_or(ClientError::SessionEnded)?;
        let result = rx.await.unwrap_or_else(|_| {
            Err(ClientError::ConnectionLost {
                during: "before the command's exit status",
                detail: "the session's reader task stopped".into(),
            })
        });
        self.exit = None;
        if let Ok(s) = &result {
            self.status = Some(*s);
        }
        result
    }

    /// Collects all of stdout and stderr (those not taken out of the session) and the
    /// exit status. A `stdin` still in the session gets its EOF first.
    pub async fn output(mut self) -> Result<Output, ClientError> {
        // The command may read its stdin to the end before it writes or exits.
        self.stdin = None;
        async fn all(r: Option<SessionOutput>) -> Vec<u8> {
            let mut v = Vec::new();
            if let Some(mut r) = r {
                // A read error means the session failed; wait() reports how.
                while let Ok(Some(chunk)) = r.chunk().await {
                    v.extend_from_slice(&chunk);
                }
            }
            v
        }
        let (stdout, stderr) = tokio::join!(all(self.stdout.take()), all(self.stderr.take()));
        let status = self.wait().await?;
        Ok(Output {
            status,
            stdout,
            stderr,
        })
    }
}

/// Sends RESIZE and SIGNAL frames for a session; cheap to clone and usable from any
/// task. Each call returns once its frame has been written to the connection.
///
/// ```no_run
/// # async fn demo(session: tether_client::Session) -> Result<(), tether_client::ClientError> {
/// let control = session.control();
/// tokio::spawn(async move {
///     // e.g. on SIGWINCH
///     let _ = control.resize(50, 132).await;
/// });
/// session.signal(15).await?; // SIGTERM to the command's process group
/// # Ok(()) }
/// ```
#[derive(Clone)]
pub struct Control {
    tx: mpsc::Sender<Ctrl>,
    _alive: Alive,
}

impl fmt::Debug for Control {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Control")
            .field("ended", &self.tx.is_closed())
            .finish()
    }
}

struct Ctrl {
    frame: Frame,
    ack: Ack,
}

impl Control {
    /// Sets the session's terminal size (a RESIZE frame); the command sees SIGWINCH.
    pub async fn resize(&self, rows: u16, cols: u16) -> Result<(), ClientError> {
        self.send(Frame::Resize { rows, cols }).await
    }

    /// Delivers `signal` (Linux numbering: 2 SIGINT, 9 SIGKILL, 15 SIGTERM, ...) to the
    /// command's whole process group (a SIGNAL frame).
    pub async fn signal(&self, signal: i32) -> Result<(), ClientError> {
        self.send(Frame::Signal(signal)).await
    }

    async fn send(&self, frame: Frame) -> Result<(), ClientError> {
        let (ack, acked) = oneshot::channel();
        self.tx
            .send(Ctrl { frame, ack })
            .await
            .map_err(|_| ClientError::SessionEnded)?;
        match acked.await {
            Ok(Ok(())) => Ok(()),
            Ok(Err(e)) => Err(ClientError::ConnectionLost {
                during: "sending a control frame",
                detail: e.to_string(),
            }),
            Err(_) => Err(ClientError::SessionEnded),
        }
    }
}

/// The command's stdin: each write becomes one STDIN frame of at most [`STDIN_CHUNK`]
/// bytes; `flush()` returns once everything written is on the connection;
/// `shutdown()` sends STDIN_EOF. Dropping it also sends STDIN_EOF, after the data
/// written so far.
///
/// ```no_run
/// # async fn demo(mut session: tether_client::Session) -> std::io::Result<()> {
/// use tokio::io::AsyncWriteExt;
/// let mut stdin = session.stdin.take().expect("built with .stdin(true)");
/// stdin.write_all(&vec![b'x'; 1 << 20]).await?; // 16 frames of 64 KiB
/// stdin.shutdown().await?;
/// # Ok(()) }
/// ```
pub struct SessionStdin {
    tx: PollSender<StdinMsg>,
    pending: Option<Pending>,
    eof: bool,
    _alive: Alive,
}

impl fmt::Debug for SessionStdin {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("SessionStdin")
            .field("eof", &self.eof)
            .finish_non_exhaustive()
    }
}

enum StdinMsg {
    Data(Bytes),
    Flush(Ack),
    Eof(Ack),
}

/// A flush or EOF the writer task has yet to acknowledge.
struct Pending {
    eof: bool,
    rx: oneshot::Receiver<io::Result<()>>,
}

fn gone() -> io::Error {
    io::Error::new(
        io::ErrorKind::BrokenPipe,
        "the session has ended or its connection is closed",
    )
}

impl SessionStdin {
    /// The acknowledgement of a pending flush or EOF: `(was_eof, result)`.
    fn poll_ack(&mut self, cx: &mut Context<'_>) -> Poll<Option<(bool, io::Result<()>)>> {
        let Some(p) = &mut self.pending else {
            return Poll::Ready(None);
        };
        let r = ready!(Pin::new(&mut p.rx).poll(cx)).unwrap_or_else(|_| Err(gone()));
        let eof = p.eof;
        self.pending = None;
        Poll::Ready(Some((eof, r)))
    }

    fn poll_request(
        &mut self,
        cx: &mut Context<'_>,
        msg: fn(Ack) -> StdinMsg,
        eof: bool,
    ) -> Poll<io::Result<()>> {
        ready!(self.tx.poll_reserve(cx)).map_err(|_| gone())?;
        let (ack, rx) = oneshot::channel();
        self.tx.send_item(msg(ack)).map_err(|_| gone())?;
        self.pending = Some(Pending { eof, rx });
        Poll::Ready(Ok(()))
    }
}

impl AsyncWrite for SessionStdin {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        let this = self.get_mut();
        if this.eof {
            return Poll::Ready(Err(io::Error::new(
                io::ErrorKind::BrokenPipe,
                "the session's stdin was already closed",
            )));
        }
        if buf.is_empty() {
            return Poll::Ready(Ok(0));
        }
        // A flush abandoned before it finished no longer covers what follows.
        this.pending = None;
        ready!(this.tx.poll_reserve(cx)).map_err(|_| gone())?;
        let n = buf.len().min(STDIN_CHUNK);
        this.tx
            .send_item(StdinMsg::Data(Bytes::copy_from_slice(&buf[..n])))
            .map_err(|_| gone())?;
        Poll::Ready(Ok(n))
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        loop {
            if let Some((_, r)) = ready!(this.poll_ack(cx)) {
                return Poll::Ready(r);
            }
            if this.eof {
                return Poll::Ready(Ok(()));
            }
            ready!(this.poll_request(cx, StdinMsg::Flush, false))?;
        }
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        loop {
            match ready!(this.poll_ack(cx)) {
                Some((true, r)) => return Poll::Ready(r),
                Some((false, r)) => r?,
                None if this.eof => return Poll::Ready(Ok(())),
                None => {
                    ready!(this.poll_request(cx, StdinMsg::Eof, true))?;
                    this.eof = true;
                }
            }
        }
    }
}

/// The command's stdout or stderr: `AsyncRead` and `AsyncBufRead`, ending (EOF) when
/// the command's stream has been delivered in full. When the session fails instead
/// (the connection lost, an agent error), reads fail with
/// [`ConnectionAborted`](io::ErrorKind::ConnectionAborted) once the data received
/// before the failure has been read.
///
/// ```no_run
/// # async fn demo(mut session: tether_client::Session) -> std::io::Result<()> {
/// let mut stdout = session.stdout.take().unwrap();
/// let mut all = Vec::new();
/// // AsyncBufRead: copy_buf writes each frame's bytes straight from where they arrived.
/// tokio::io::copy_buf(&mut stdout, &mut all).await?;
/// # Ok(()) }
/// ```
pub struct SessionOutput {
    rx: mpsc::Receiver<Bytes>,
    chunk: Bytes,
    failure: Arc<OnceLock<String>>,
    _alive: Alive,
}

impl fmt::Debug for SessionOutput {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("SessionOutput")
            .field("buffered", &self.chunk.len())
            .finish_non_exhaustive()
    }
}

impl SessionOutput {
    /// The next piece of output as it arrived (one frame's payload, or what a partial
    /// read left of it), `None` at the end.
    pub async fn chunk(&mut self) -> io::Result<Option<Bytes>> {
        if !self.chunk.is_empty() {
            return Ok(Some(std::mem::take(&mut self.chunk)));
        }
        match self.rx.recv().await {
            Some(b) => Ok(Some(b)),
            None => self.end().map(|()| None),
        }
    }

    fn end(&self) -> io::Result<()> {
        match self.failure.get() {
            Some(m) => Err(io::Error::new(io::ErrorKind::ConnectionAborted, m.clone())),
            None => Ok(()),
        }
    }

    /// Makes `self.chunk` non-empty, or reports the end.
    fn poll_chunk(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<bool>> {
        while self.chunk.is_empty() {
            match ready!(self.rx.poll_recv(cx)) {
                Some(b) => self.chunk = b,
                None => return Poll::Ready(self.end().map(|()| false)),
            }
        }
        Poll::Ready(Ok(true))
    }
}

impl AsyncRead for SessionOutput {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        if ready!(this.poll_chunk(cx))? {
            let n = this.chunk.len().min(buf.remaining());
            buf.put_slice(&this.chunk[..n]);
            this.chunk.advance(n);
        }
        Poll::Ready(Ok(()))
    }
}

impl AsyncBufRead for SessionOutput {
    fn poll_fill_buf(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<&[u8]>> {
        let this = self.get_mut();
        ready!(this.poll_chunk(cx))?;
        Poll::Ready(Ok(&this.chunk))
    }

    fn consume(self: Pin<&mut Self>, amt: usize) {
        self.get_mut().chunk.advance(amt);
    }
}

struct Reader {
    rd: FrameReader,
    out: mpsc::Sender<Bytes>,
    err: mpsc::Sender<Bytes>,
    exit: oneshot::Sender<ExitResult>,
    failure: Arc<OnceLock<String>>,
    alive: mpsc::Receiver<Infallible>,
    /// Dropped when the reader ends, which stops the writer.
    _done: oneshot::Sender<()>,
}

/// The reader task: frames to output queues until EXIT, an error, or every handle on
/// the session is gone.
async fn read_frames(mut r: Reader) {
    const DURING: &str = "before the command's exit status";
    let result = loop {
        let frame = tokio::select! {
            biased;
            f = next_frame(&mut r.rd, DURING) => f,
            _ = r.alive.recv() => {
                tracing::debug!("every handle on the session is gone; closing its connection");
                return;
            }
        };
        match frame {
            // Waiting here is the backpressure; a dropped reader's data is discarded.
            Ok(Frame::Stdout(b)) if !b.is_empty() => {
                let _ = r.out.send(b).await;
            }
            Ok(Frame::Stderr(b)) if !b.is_empty() => {
                let _ = r.err.send(b).await;
            }
            Ok(Frame::Stdout(_) | Frame::Stderr(_)) => {}
            Ok(Frame::Exit(status)) => break Ok(status),
            Ok(Frame::Error(e)) => break Err(ClientError::from_agent(e)),
            Ok(other) => break Err(unexpected(&other, "output or EXIT")),
            Err(e) => break Err(e),
        }
    };
    if let Err(e) = &result {
        tracing::debug!(error = %e, "session failed");
        let _ = r.failure.set(e.to_string());
    }
    let _ = r.exit.send(result);
    // Dropping the senders ends stdout and stderr (with the failure, if any).
}

/// What the writer does next.
enum Job {
    Write(Frame, Option<Ack>),
    Flush(Ack),
}

/// The writer task: the only writer of the connection. Control frames go first; stdin
/// in order; STDIN_EOF when asked or when the stdin handle is dropped.
async fn write_frames(
    mut wr: FrameWriter,
    mut ctrl: mpsc::Receiver<Ctrl>,
    mut stdin: Option<mpsc::Receiver<StdinMsg>>,
    mut done: oneshot::Receiver<()>,
) {
    let mut ctrl_open = true;
    let mut eof_sent = stdin.is_none();
    let mut buf = BytesMut::new();
    loop {
        let job = tokio::select! {
            biased;
            _ = &mut done => return,
            c = ctrl.recv(), if ctrl_open => match c {
                Some(c) => Job::Write(c.frame, Some(c.ack)),
                None => {
                    ctrl_open = false;
                    continue;
                }
            },
            m = recv_opt(&mut stdin) => match m {
                Some(StdinMsg::Data(b)) => Job::Write(Frame::Stdin(b), None),
                Some(StdinMsg::Flush(ack)) => Job::Flush(ack),
                Some(StdinMsg::Eof(ack)) => Job::Write(Frame::StdinEof, Some(ack)),
                None => {
                    stdin = None;
                    if eof_sent {
                        continue;
                    }
                    Job::Write(Frame::StdinEof, None)
                }
            },
        };
        let (result, ack) = match job {
            Job::Write(frame, ack) => {
                if frame == Frame::StdinEof {
                    eof_sent = true;
                }
                let idle = ctrl.is_empty() && stdin.as_ref().is_none_or(|s| s.is_empty());
                let r = tokio::select! {
                    biased;
                    _ = &mut done => return,
                    r = write_frame(&mut wr, &mut buf, frame, idle) => r,
                };
                (r, ack)
            }
            Job::Flush(ack) => {
                let r = tokio::select! {
                    biased;
                    _ = &mut done => return,
                    r = wr.flush() => r,
                };
                (r, Some(ack))
            }
        };
        let failed = result.as_ref().err().map(|e| e.to_string());
        if let Some(ack) = ack {
            let _ = ack.send(result);
        }
        if let Some(e) = failed {
            tracing::debug!(error = %e, "writing to the agent failed");
            // Dropping the receivers makes every later write, resize or signal fail.
            return;
        }
    }
}

async fn recv_opt<T>(rx: &mut Option<mpsc::Receiver<T>>) -> Option<T> {
    match rx {
        Some(r) => r.recv().await,
        None => std::future::pending().await,
    }
}

/// Writes one whole frame; stdin payloads go out without another copy.
async fn write_frame(
    wr: &mut FrameWriter,
    buf: &mut BytesMut,
    frame: Frame,
    flush: bool,
) -> io::Result<()> {
    match frame {
        Frame::Stdin(data) => {
            let mut whole = Bytes::copy_from_slice(&header(Kind::Stdin, data.len())).chain(data);
            wr.write_all_buf(&mut whole).await?;
        }
        frame => {
            buf.clear();
            encode(&frame, buf).map_err(|e| io::Error::new(io::ErrorKind::InvalidInput, e))?;
            wr.write_all(buf).await?;
        }
    }
    if flush {
        wr.flush().await?;
    }
    Ok(())
}
