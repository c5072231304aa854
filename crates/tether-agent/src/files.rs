//! Copies: COPY_OUT streams a guest file or tree to the client, COPY_IN stores the
//! client's in the guest. The filesystem work runs on the blocking pool (tether-files);
//! this joins it to the connection, a few frames at a time.

use crate::session::{proto_error, Frames};
use crate::Ctx;
use futures::StreamExt;
use tether_files::{spawn_receive, spawn_send};
use tether_proto::{CopyInRequest, CopyOutRequest, ErrorCode, ErrorMsg, Frame};
use tokio::sync::mpsc;

/// Sends the file, symlink or tree at `req.path`: its entries, COPY_DONE last. An error
/// (a missing path, a refusal under the root, a read failure) ends it with ERROR.
pub async fn copy_out(
    req: CopyOutRequest,
    out: &mpsc::Sender<Frame>,
    ctx: &Ctx,
) -> Result<(), ErrorMsg> {
    let (mut frames, walked) = spawn_send(ctx.files_root.clone(), req.path.into());
    while let Some(f) = frames.recv().await {
        if out.send(f).await.is_err() {
            // The connection is gone; dropping the queue stops the walk.
            break;
        }
    }
    drop(frames);
    walked.wait().await.map(drop).map_err(ErrorMsg::from)
}

/// How the client's side of a COPY_IN ended.
enum Ended {
    /// COPY_DONE arrived and was handed on.
    Done,
    /// The receiver stopped taking frames: it failed, and says why.
    Refused,
    /// The client sent ERROR or went away: nobody to answer.
    Abandoned,
    /// The client sent something the protocol does not allow.
    Bad(ErrorMsg),
}

/// Stores the client's entries at `req.dest`; answers COPY_DONE with what is in place
/// once every file has been renamed into it, or ERROR. A client that leaves before
/// COPY_DONE leaves no temporary behind.
pub async fn copy_in(
    req: CopyInRequest,
    frames: &mut Frames,
    out: &mpsc::Sender<Frame>,
    ctx: &Ctx,
) -> Result<(), ErrorMsg> {
    let (sink, mut received) = spawn_receive(ctx.files_root.clone(), req.dest.into());
    // The receiver's early end (a refused entry, a full disk) is reported at once, not
    // when the client next sends something.
    let mut finished = None;
    let ended = loop {
        let next = tokio::select! {
            r = &mut received => {
                finished = Some(r);
                break Ended::Refused;
            }
            f = frames.next() => f,
        };
        let f = match next {
            Some(Ok(f)) => f,
            Some(Err(e)) => break Ended::Bad(proto_error(&e)),
            None => break Ended::Abandoned,
        };
        match f {
            Frame::Entry(_) | Frame::FileData(_) | Frame::EntryEnd { .. } => {
                if sink.send(f).await.is_err() {
                    break Ended::Refused;
                }
            }
            Frame::CopyDone(_) => {
                break match sink.send(f).await {
                    Ok(()) => Ended::Done,
                    Err(_) => Ended::Refused,
                }
            }
            Frame::Error(e) => {
                tracing::debug!("the client abandoned its copy: {}", e.message);
                break Ended::Abandoned;
            }
            f => {
                break Ended::Bad(ErrorMsg::new(
                    ErrorCode::BadFrame,
                    format!("{:?} frame during a copy", f.kind()),
                ))
            }
        }
    };
    // Without COPY_DONE the receiver discards the file in flight and stops.
    drop(sink);
    let result = match finished {
        Some(r) => r,
        None => received.await,
    };
    match (ended, result) {
        (Ended::Bad(e), _) => Err(e),
        (Ended::Abandoned, _) => Ok(()),
        (Ended::Done, Ok(summary)) => {
            let _ = out.send(Frame::CopyDone(summary)).await;
            Ok(())
        }
        (_, Err(e)) => Err(e.into()),
        (Ended::Refused, Ok(_)) => Err(ErrorMsg::new(
            ErrorCode::Internal,
            "the copy's receiver stopped without a reason",
        )),
    }
}
