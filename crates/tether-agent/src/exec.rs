//! One exec session: the command's streams to frames and back, signals, timeout, exit.

use crate::spawn::{self, ChildIo};
use crate::Ctx;
use bytes::Bytes;
use futures::StreamExt;
use nix::sys::signal::{killpg, Signal};
use nix::sys::wait::WaitStatus;
use nix::unistd::Pid;
use std::os::fd::{AsRawFd, OwnedFd};
use std::sync::Arc;
use std::time::Duration;
use tether_proto::{ErrorCode, ErrorMsg, ExecRequest, ExitStatus, Frame, ProtoError};
use tether_transport::pool::Pool;
use tokio::io::unix::AsyncFd;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWriteExt};
use tokio::sync::mpsc;
use tokio::time::Instant;

/// Bytes per output frame: a pipe's worth of data per system call.
const READ_CHUNK: usize = 256 * 1024;
/// Stdin frames buffered before the session stops reading the client.
const STDIN_QUEUE: usize = 16;
const DEFAULT_GRACE: Duration = Duration::from_secs(2);

/// Runs `req`, reading the client's frames from `frames` and sending to `out`.
pub async fn run<S>(req: ExecRequest, mut frames: S, out: mpsc::Sender<Frame>, ctx: Arc<Ctx>)
where
    S: futures::Stream<Item = Result<Frame, ProtoError>> + Unpin,
{
    let child = match spawn::spawn(&req, &ctx.reaper) {
        Ok(c) => c,
        Err(msg) => {
            tracing::debug!("spawn failed: {msg}");
            let _ = out
                .send(Frame::Error(ErrorMsg::new(ErrorCode::Spawn, msg)))
                .await;
            return;
        }
    };
    let pid = child.pid;
    let pgid = Pid::from_raw(pid as i32);
    tracing::debug!(pid, argv = ?req.argv, "started");
    if out.send(Frame::Started { pid }).await.is_err() {
        kill_group(pgid, Signal::SIGKILL);
    }

    let (stdin_tx, pumps, pty) = start_pumps(child.io, &out);
    let mut stdin_tx = stdin_tx;
    let grace = req
        .kill_grace_ms
        .map(Duration::from_millis)
        .unwrap_or(DEFAULT_GRACE);
    let mut deadline =
        (req.timeout_ms > 0).then(|| Instant::now() + Duration::from_millis(req.timeout_ms));
    let mut kill_at: Option<Instant> = None;
    let mut timed_out = false;
    let mut client_open = true;
    let mut status_rx = child.status;

    let status = loop {
        let timer = deadline.or(kill_at);
        tokio::select! {
            s = &mut status_rx => break s.ok(),
            f = frames.next(), if client_open => match f {
                Some(Ok(frame)) => {
                    if let Err(e) = handle(frame, &mut stdin_tx, pty.as_ref(), pgid).await {
                        let _ = out.send(Frame::Error(e)).await;
                        client_open = false;
                        kill_at = Some(term_then_grace(pgid, grace));
                    }
                }
                Some(Err(e)) => {
                    let _ = out.send(Frame::Error(crate::session::proto_error(&e))).await;
                    client_open = false;
                    kill_at = Some(term_then_grace(pgid, grace));
                }
                None => {
                    tracing::debug!(pid, "client gone before exit: ending the group");
                    client_open = false;
                    kill_at = Some(term_then_grace(pgid, grace));
                }
            },
            () = sleep_until(timer), if timer.is_some() => {
                if deadline.take().is_some() {
                    timed_out = true;
                    kill_at = Some(term_then_grace(pgid, grace));
                } else {
                    kill_group(pgid, Signal::SIGKILL);
                    kill_at = None;
                }
            }
        }
    };
    drop(stdin_tx);
    if !client_open {
        // Ended for a departed client: what is left of its group goes too. (After a
        // normal exit, background processes the command started are left running.)
        kill_group(pgid, Signal::SIGKILL);
    }
    // Everything the command wrote goes out before the exit report.
    for p in pumps {
        let _ = p.await;
    }
    let mut exit = match status {
        Some(WaitStatus::Exited(_, code)) => ExitStatus::exited(code),
        Some(WaitStatus::Signaled(_, sig, core)) => ExitStatus::signaled(sig as i32, core),
        other => {
            let msg = format!("lost track of the command: {other:?}");
            let _ = out
                .send(Frame::Error(ErrorMsg::new(ErrorCode::Internal, msg)))
                .await;
            return;
        }
    };
    exit.timed_out = timed_out;
    tracing::debug!(pid, %exit, "finished");
    if client_open {
        let _ = out.send(Frame::Exit(exit)).await;
    }
}

async fn sleep_until(t: Option<Instant>) {
    match t {
        Some(t) => tokio::time::sleep_until(t).await,
        None => std::future::pending().await,
    }
}

fn kill_group(pgid: Pid, sig: Signal) {
    let _ = killpg(pgid, sig);
}

fn term_then_grace(pgid: Pid, grace: Duration) -> Instant {
    kill_group(pgid, Signal::SIGTERM);
    kill_group(pgid, Signal::SIGCONT);
    Instant::now() + grace
}

/// Applies one client frame to the running command.
async fn handle(
    frame: Frame,
    stdin: &mut Option<mpsc::Sender<Bytes>>,
    pty: Option<&Arc<AsyncFd<OwnedFd>>>,
    pgid: Pid,
) -> Result<(), ErrorMsg> {
    match frame {
        Frame::Stdin(b) => {
            if let Some(tx) = stdin {
                if tx.send(b).await.is_err() {
                    // The command closed its stdin; further input has nowhere to go.
                    *stdin = None;
                }
            }
        }
        Frame::StdinEof => {
            if let (Some(tx), Some(_)) = (stdin.as_ref(), pty) {
                // A terminal has no EOF of its own: send its EOF character, as a keyboard would.
                let _ = tx.send(Bytes::from_static(&[0x04])).await;
            }
            *stdin = None;
        }
        Frame::Resize { rows, cols } => {
            if let Some(m) = pty {
                let ws = nix::pty::Winsize {
                    ws_row: rows,
                    ws_col: cols,
                    ws_xpixel: 0,
                    ws_ypixel: 0,
                };
                // SAFETY: TIOCSWINSZ with a valid winsize on the terminal's master.
                unsafe { nix::libc::ioctl(m.get_ref().as_raw_fd(), nix::libc::TIOCSWINSZ, &ws) };
            }
        }
        Frame::Signal(n) => {
            let sig = Signal::try_from(n)
                .map_err(|_| ErrorMsg::new(ErrorCode::BadFrame, format!("no signal {n}")))?;
            kill_group(pgid, sig);
        }
        other => {
            return Err(ErrorMsg::new(
                ErrorCode::BadFrame,
                format!("{:?} frame during an exec", other.kind()),
            ))
        }
    }
    Ok(())
}

type Pumps = (
    Option<mpsc::Sender<Bytes>>,
    Vec<tokio::task::JoinHandle<()>>,
    Option<Arc<AsyncFd<OwnedFd>>>,
);

/// Starts the tasks that move the command's output to frames and stdin frames to it.
fn start_pumps(io: ChildIo, out: &mpsc::Sender<Frame>) -> Pumps {
    match io {
        ChildIo::Pipes {
            stdin,
            stdout,
            stderr,
        } => {
            let pumps = vec![
                tokio::spawn(pump(stdout, out.clone(), Frame::Stdout)),
                tokio::spawn(pump(stderr, out.clone(), Frame::Stderr)),
            ];
            let tx = stdin.map(|mut pipe| {
                let (tx, mut rx) = mpsc::channel::<Bytes>(STDIN_QUEUE);
                tokio::spawn(async move {
                    while let Some(b) = rx.recv().await {
                        if pipe.write_all(&b).await.is_err() {
                            return;
                        }
                    }
                });
                tx
            });
            (tx, pumps, None)
        }
        ChildIo::Pty(master) => {
            let master = Arc::new(master);
            let pumps = vec![tokio::spawn(pump_pty(master.clone(), out.clone()))];
            let (tx, mut rx) = mpsc::channel::<Bytes>(STDIN_QUEUE);
            let m = master.clone();
            tokio::spawn(async move {
                while let Some(b) = rx.recv().await {
                    if write_pty(&m, &b).await.is_err() {
                        return;
                    }
                }
            });
            (Some(tx), pumps, Some(master))
        }
    }
}

/// Output to frames until EOF.
async fn pump<R: AsyncRead + Unpin>(mut r: R, out: mpsc::Sender<Frame>, wrap: fn(Bytes) -> Frame) {
    // As many buffers as can be queued to the writer, plus the one being written and
    // the one being read into.
    let pool = Pool::new(READ_CHUNK, crate::writer::QUEUE + 2);
    loop {
        let mut buf = pool.take();
        match r.read_buf(&mut buf).await {
            Ok(0) | Err(_) => return,
            Ok(_) => {
                if out.send(wrap(pool.freeze(buf))).await.is_err() {
                    // The client is gone; keep draining so the command never blocks on a
                    // full pipe while it is being ended.
                    let _ = tokio::io::copy(&mut r, &mut tokio::io::sink()).await;
                    return;
                }
            }
        }
    }
}

/// A terminal's output until every holder of its slave side is gone (EIO).
async fn pump_pty(master: Arc<AsyncFd<OwnedFd>>, out: mpsc::Sender<Frame>) {
    let mut buf = vec![0u8; 64 * 1024];
    loop {
        let n = match master.readable().await {
            Err(_) => return,
            Ok(mut guard) => match guard
                .try_io(|m| nix::unistd::read(m.get_ref(), &mut buf).map_err(std::io::Error::from))
            {
                Err(_would_block) => continue,
                Ok(Ok(0)) | Ok(Err(_)) => return,
                Ok(Ok(n)) => n,
            },
        };
        if out
            .send(Frame::Stdout(Bytes::copy_from_slice(&buf[..n])))
            .await
            .is_err()
        {
            return;
        }
    }
}

async fn write_pty(master: &AsyncFd<OwnedFd>, mut b: &[u8]) -> std::io::Result<()> {
    while !b.is_empty() {
        let mut guard = master.writable().await?;
        match guard.try_io(|m| nix::unistd::write(m.get_ref(), b).map_err(std::io::Error::from)) {
            Err(_would_block) => continue,
            Ok(Ok(n)) => b = &b[n..],
            Ok(Err(e)) => return Err(e),
        }
    }
    Ok(())
}
