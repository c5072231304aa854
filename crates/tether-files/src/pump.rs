//! The walk and the receiver on tokio's blocking pool, joined to a connection by a
//! bounded queue of frames: memory per copy stays at a few chunks, and a slow disk or a
//! slow connection holds the other side back.

use crate::error::FilesError;
use crate::receive::{Receiver, Verdict};
use crate::root::Root;
use crate::send::send_tree;
use sha2::{Digest, Sha256};
use std::future::Future;
use std::path::PathBuf;
use std::pin::Pin;
use std::task::{Context, Poll};
use tether_proto::{CopySummary, ErrorCode, Frame};
use tokio::sync::mpsc;
use tokio::task::JoinHandle;

/// Frames queued between the filesystem thread and the connection.
pub const QUEUE: usize = 4;

/// How a copy running on the blocking pool ended.
#[derive(Debug)]
pub struct Outcome(JoinHandle<Result<CopySummary, FilesError>>);

impl Outcome {
    /// Waits for the filesystem side to finish: its summary, or why it failed. (An
    /// `Outcome` is also a future of the same, to await beside other things; do not
    /// poll it again once it has completed.)
    pub async fn wait(self) -> Result<CopySummary, FilesError> {
        self.await
    }
}

impl Future for Outcome {
    type Output = Result<CopySummary, FilesError>;

    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        Pin::new(&mut self.0).poll(cx).map(|joined| match joined {
            Ok(r) => r,
            Err(e) => Err(FilesError::new(
                ErrorCode::Internal,
                format!("the copy's filesystem task failed: {e}"),
            )),
        })
    }
}

/// Starts walking `path` under `root` (see [`send_tree`]); its frames, COPY_DONE last,
/// arrive on the returned queue. Dropping the queue stops the walk.
pub fn spawn_send(root: Root, path: PathBuf) -> (mpsc::Receiver<Frame>, Outcome) {
    let (tx, rx) = mpsc::channel(QUEUE);
    let task = tokio::task::spawn_blocking(move || {
        send_tree(&root, &path, &mut |f| tx.blocking_send(f).is_ok())
    });
    (rx, Outcome(task))
}

/// Starts a [`Receiver`] for `dest` under `root`, fed from the returned queue. It ends
/// with COPY_DONE applied, at the first error, or (removing the temporary of a file in
/// flight) when the queue is dropped before COPY_DONE.
///
/// File content is hashed on one thread and written on another, so the two overlap:
/// together they are most of a copy's work at the receiving end.
pub fn spawn_receive(root: Root, dest: PathBuf) -> (mpsc::Sender<Frame>, Outcome) {
    let (tx, mut rx) = mpsc::channel::<Frame>(QUEUE);
    let (checked_tx, mut checked) = mpsc::channel::<(Frame, Verdict)>(QUEUE);
    tokio::task::spawn_blocking(move || {
        let mut hash = Sha256::new();
        while let Some(f) = rx.blocking_recv() {
            let verdict = match &f {
                Frame::FileData(b) => {
                    hash.update(b);
                    None
                }
                Frame::EntryEnd { sha256 } => {
                    Some(<[u8; 32]>::from(hash.finalize_reset()) == *sha256)
                }
                // A new entry starts from an empty hash, whatever came before.
                Frame::Entry(_) => {
                    hash.reset();
                    None
                }
                _ => None,
            };
            if checked_tx.blocking_send((f, verdict)).is_err() {
                return;
            }
        }
    });
    let task = tokio::task::spawn_blocking(move || {
        let mut receiver = Receiver::new(root, dest);
        while let Some((f, verdict)) = checked.blocking_recv() {
            if let Some(summary) = receiver.frame_verified(f, verdict)? {
                return Ok(summary);
            }
        }
        Err(FilesError::new(
            ErrorCode::Io,
            "the copy was cut off before COPY_DONE; the file in flight was discarded",
        ))
    });
    (tx, Outcome(task))
}
