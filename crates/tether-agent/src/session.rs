//! One connection: handshake, then one operation.

use crate::Ctx;
use futures::StreamExt;
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};
use tether_proto::{
    ErrorCode, ErrorMsg, Features, Frame, FrameCodec, Info, ProtoError, Welcome, PROTOCOL_VERSION,
};
use tether_transport::Stream;
use tokio::io::AsyncWriteExt;
use tokio::sync::mpsc;
use tokio_util::codec::FramedRead;

/// How long a client may take to send its hello.
const HELLO_TIMEOUT: Duration = Duration::from_secs(10);

/// The error frame for a frame that could not be decoded.
pub fn proto_error(e: &ProtoError) -> ErrorMsg {
    let code = match e {
        ProtoError::UnknownKind(_) => ErrorCode::UnknownKind,
        ProtoError::Oversize { .. } => ErrorCode::Oversize,
        _ => ErrorCode::BadFrame,
    };
    ErrorMsg::new(code, e.to_string())
}

/// Serves one connection to its end. Never panics on input; every refusal is an ERROR
/// frame followed by closing this connection only.
pub async fn serve(stream: Stream, ctx: Arc<Ctx>) {
    let remote = stream.remote().to_string();
    let (rd, wr) = tokio::io::split(stream);
    let mut frames = FramedRead::new(rd, FrameCodec);
    let (out, rx) = mpsc::channel(crate::writer::QUEUE);
    let writer = tokio::spawn(crate::writer::run(wr, rx));
    let mut splice = None;
    if let Err(e) = converse(&mut frames, &out, &ctx, &mut splice).await {
        tracing::debug!(%remote, "refused: {}", e.message);
        let _ = out.send(Frame::Error(e)).await;
    }
    // The writer drains what was queued and hands the write half back.
    drop(out);
    let Ok((mut wr, written)) = writer.await else {
        return;
    };
    match (written, splice) {
        (Err(e), _) => tracing::debug!(%remote, "connection ended: {e}"),
        (Ok(()), Some(target)) => crate::forward::splice(frames, wr, target).await,
        (Ok(()), None) => {
            drop(frames);
            let _ = wr.shutdown().await;
        }
    }
}

pub(crate) type Frames = FramedRead<tokio::io::ReadHalf<Stream>, FrameCodec>;

/// Handshake and request. A forwarding request that succeeds leaves the stream to join
/// this connection to in `splice`: raw bytes follow CONNECTED, no more frames.
async fn converse(
    frames: &mut Frames,
    out: &mpsc::Sender<Frame>,
    ctx: &Arc<Ctx>,
    splice: &mut Option<Stream>,
) -> Result<(), ErrorMsg> {
    let hello = match tokio::time::timeout(HELLO_TIMEOUT, frames.next()).await {
        Err(_) => return Err(ErrorMsg::new(ErrorCode::BadHello, "no hello within 10 s")),
        Ok(None) => return Ok(()),
        Ok(Some(Err(e))) => return Err(proto_error(&e)),
        Ok(Some(Ok(Frame::Hello(h)))) => h,
        Ok(Some(Ok(f))) => {
            return Err(ErrorMsg::new(
                ErrorCode::BadHello,
                format!("expected a hello first, got a {:?} frame", f.kind()),
            ))
        }
    };
    if hello.version == 0 {
        return Err(ErrorMsg::new(
            ErrorCode::Version,
            format!("client speaks version 0; this agent speaks 1 to {PROTOCOL_VERSION}"),
        ));
    }
    ctx.auth.check(&hello.proof, now())?;
    let welcome = Welcome {
        version: hello.version.min(PROTOCOL_VERSION),
        features: Features::ALL,
    };
    send(out, Frame::Welcome(welcome)).await?;
    match frames.next().await {
        None => Ok(()),
        Some(Err(e)) => Err(proto_error(&e)),
        Some(Ok(Frame::Exec(req))) => {
            crate::exec::run(*req, frames, out.clone(), ctx.clone()).await;
            Ok(())
        }
        Some(Ok(Frame::Ping(p))) => ping(p, frames, out).await,
        Some(Ok(Frame::InfoRequest)) => send(out, Frame::Info(info(ctx))).await,
        Some(Ok(Frame::Connect(req))) => {
            *splice = Some(ctx.forward.connect(&req.target).await?);
            send(out, Frame::Connected).await
        }
        Some(Ok(Frame::Listen(req))) => ctx.forward.listen(req, frames, out).await,
        Some(Ok(Frame::CopyOut(req))) => crate::files::copy_out(req, out, ctx).await,
        Some(Ok(Frame::CopyIn(req))) => crate::files::copy_in(req, frames, out, ctx).await,
        Some(Ok(Frame::Attach { id })) => {
            *splice = Some(ctx.forward.attach(id)?);
            send(out, Frame::Connected).await
        }
        Some(Ok(f)) => Err(ErrorMsg::new(
            ErrorCode::BadFrame,
            format!(
                "expected a request (EXEC, PING, INFO_REQUEST, CONNECT, LISTEN, ATTACH, COPY_OUT, COPY_IN), got a {:?} frame",
                f.kind()
            ),
        )),
    }
}

async fn send(out: &mpsc::Sender<Frame>, f: Frame) -> Result<(), ErrorMsg> {
    // A closed channel means the connection is gone; nothing more to tell anyone.
    let _ = out.send(f).await;
    Ok(())
}

async fn ping(
    first: bytes::Bytes,
    frames: &mut Frames,
    out: &mpsc::Sender<Frame>,
) -> Result<(), ErrorMsg> {
    send(out, Frame::Pong(first)).await?;
    while let Some(f) = frames.next().await {
        match f {
            Ok(Frame::Ping(p)) => send(out, Frame::Pong(p)).await?,
            Ok(f) => {
                return Err(ErrorMsg::new(
                    ErrorCode::BadFrame,
                    format!("expected PING, got a {:?} frame", f.kind()),
                ))
            }
            Err(e) => return Err(proto_error(&e)),
        }
    }
    Ok(())
}

fn info(ctx: &Ctx) -> Info {
    let uname = nix::sys::utsname::uname().ok();
    Info {
        version: env!("CARGO_PKG_VERSION").into(),
        hostname: uname
            .as_ref()
            .map(|u| u.nodename().to_string_lossy().into_owned())
            .unwrap_or_default(),
        kernel: uname
            .as_ref()
            .map(|u| u.release().to_string_lossy().into_owned())
            .unwrap_or_default(),
        pid: std::process::id(),
        uptime_secs: ctx.started.elapsed().as_secs(),
    }
}

fn now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}
