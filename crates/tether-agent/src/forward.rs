//! Port forwarding: connections to guest destinations (CONNECT), guest listeners whose
//! connections clients claim (LISTEN, ACCEPTED, ATTACH), and the raw splice both end in.

use crate::policy::{check_forwardable, Pattern};
use crate::session::{proto_error, Frames};
use futures::StreamExt;
use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tether_proto::{Accepted, ErrorCode, ErrorMsg, Frame, ListenRequest, Listening};
use tether_transport::{relay, Endpoint, Listener, Stream, Transport, TransportError};
use tokio::io::{AsyncWriteExt, WriteHalf};
use tokio::sync::{mpsc, OwnedSemaphorePermit, Semaphore};

/// How long an accepted guest connection waits for a client's ATTACH before it is closed.
pub const CLAIM_TIMEOUT: Duration = Duration::from_secs(10);
/// Unclaimed connections one listener holds before it stops accepting (the rest wait in
/// the kernel's backlog): bounded memory however slow the client is.
pub const MAX_UNCLAIMED: usize = 128;

/// Which way a forwarding request goes, for policy and messages.
#[derive(Clone, Copy)]
enum Direction {
    Connect,
    Listen,
}

impl Direction {
    fn flag(self) -> &'static str {
        match self {
            Direction::Connect => "--allow-connect",
            Direction::Listen => "--allow-listen",
        }
    }

    fn key(self) -> &'static str {
        match self {
            Direction::Connect => "allow_connect",
            Direction::Listen => "allow_listen",
        }
    }

    fn verb(self) -> &'static str {
        match self {
            Direction::Connect => "connecting to",
            Direction::Listen => "listening on",
        }
    }
}

/// A guest connection accepted on a client's listener, waiting for its ATTACH.
struct Waiting {
    stream: Stream,
    listener: u64,
    /// Held until the connection is claimed or dropped: the listener's unclaimed budget.
    _slot: OwnedSemaphorePermit,
}

type WaitingMap = Arc<Mutex<HashMap<u64, Waiting>>>;

/// The agent's forwarding state: its policy and the accepted connections not yet claimed.
pub(crate) struct Forwarding {
    allow_connect: Vec<Pattern>,
    allow_listen: Vec<Pattern>,
    transport: Transport,
    waiting: WaitingMap,
    next_id: AtomicU64,
}

impl Forwarding {
    /// Forwarding allowed to the destinations of `allow_connect` and listeners on those of
    /// `allow_listen`; nothing when both are empty.
    pub(crate) fn new(allow_connect: Vec<Pattern>, allow_listen: Vec<Pattern>) -> Forwarding {
        Forwarding {
            allow_connect,
            allow_listen,
            transport: Transport::default(),
            waiting: Default::default(),
            next_id: AtomicU64::new(1),
        }
    }

    /// CONNECT: the policy check and the dial. The caller answers CONNECTED and splices.
    pub(crate) async fn connect(&self, target: &str) -> Result<Stream, ErrorMsg> {
        let ep = self.permitted(target, Direction::Connect)?;
        self.transport.dial(&ep).await.map_err(|e| dial_error(&e))
    }

    /// LISTEN: binds, answers LISTENING, then reports each guest connection with ACCEPTED
    /// until the client ends the control connection (or sends anything on it).
    pub(crate) async fn listen(
        &self,
        req: ListenRequest,
        frames: &mut Frames,
        out: &mpsc::Sender<Frame>,
    ) -> Result<(), ErrorMsg> {
        let ep = self.permitted(&req.bind, Direction::Listen)?;
        let listener = self
            .transport
            .bind(&ep)
            .await
            .map_err(|e| ErrorMsg::new(ErrorCode::Io, e.to_string()))?;
        let bound = listener.local_endpoint().to_string();
        tracing::debug!(%bound, "guest listener for a client");
        if out
            .send(Frame::Listening(Listening { bound }))
            .await
            .is_err()
        {
            return Ok(());
        }
        let listener_id = self.next_id.fetch_add(1, Ordering::Relaxed);
        let _unclaimed = DropUnclaimed {
            waiting: self.waiting.clone(),
            listener: listener_id,
        };
        self.accept_loop(listener, listener_id, frames, out).await
    }

    async fn accept_loop(
        &self,
        mut listener: Listener,
        listener_id: u64,
        frames: &mut Frames,
        out: &mpsc::Sender<Frame>,
    ) -> Result<(), ErrorMsg> {
        let slots = Arc::new(Semaphore::new(MAX_UNCLAIMED));
        loop {
            let slot = tokio::select! {
                s = slots.clone().acquire_owned() => s.expect("never closed"),
                f = frames.next() => return control_ended(f),
            };
            let accepted = tokio::select! {
                a = listener.accept() => a,
                f = frames.next() => return control_ended(f),
            };
            let stream = match accepted {
                Ok(s) => s,
                Err(e) => {
                    // Out of descriptors or an aborted handshake: keep listening.
                    tracing::warn!("{e}");
                    tokio::time::sleep(Duration::from_millis(20)).await;
                    continue;
                }
            };
            let peer = stream.remote().to_string();
            let id = self.park(stream, listener_id, slot);
            if out
                .send(Frame::Accepted(Accepted { id, peer }))
                .await
                .is_err()
            {
                return Ok(());
            }
        }
    }

    /// Keeps an accepted connection for [`CLAIM_TIMEOUT`] under a fresh id.
    fn park(&self, stream: Stream, listener: u64, slot: OwnedSemaphorePermit) -> u64 {
        let id = self.next_id.fetch_add(1, Ordering::Relaxed);
        let waiting = Waiting {
            stream,
            listener,
            _slot: slot,
        };
        lock(&self.waiting).insert(id, waiting);
        let map = self.waiting.clone();
        tokio::spawn(async move {
            tokio::time::sleep(CLAIM_TIMEOUT).await;
            if lock(&map).remove(&id).is_some() {
                tracing::debug!(id, "accepted connection never claimed: closed");
            }
        });
        id
    }

    /// ATTACH: hands over the accepted connection `id`, once.
    pub(crate) fn attach(&self, id: u64) -> Result<Stream, ErrorMsg> {
        match lock(&self.waiting).remove(&id) {
            Some(w) => Ok(w.stream),
            None => Err(ErrorMsg::new(
                ErrorCode::NotFound,
                format!(
                    "no accepted connection {id} is waiting: it was claimed already, its \
                     listener ended, or it waited more than {}s",
                    CLAIM_TIMEOUT.as_secs()
                ),
            )),
        }
    }

    /// Parses `uri` and checks it against the policy for `dir`.
    fn permitted(&self, uri: &str, dir: Direction) -> Result<Endpoint, ErrorMsg> {
        let ep: Endpoint = uri
            .parse()
            .map_err(|e| ErrorMsg::new(ErrorCode::BadFrame, format!("{e}")))?;
        check_forwardable(&ep).map_err(|e| ErrorMsg::new(ErrorCode::BadFrame, e.to_string()))?;
        let allowed = match dir {
            Direction::Connect => &self.allow_connect,
            Direction::Listen => &self.allow_listen,
        };
        if allowed.iter().any(|p| p.matches(&ep)) {
            return Ok(ep);
        }
        Err(ErrorMsg::new(
            ErrorCode::Denied,
            format!(
                "{} {ep} is not allowed; start the agent with {} {ep} (or a pattern such \
                 as {}, or `{}` in the [agent] section of its config file)",
                dir.verb(),
                dir.flag(),
                star_port(&ep),
                dir.key(),
            ),
        ))
    }
}

/// The `*`-port pattern covering `ep`, as a hint (`tcp://127.0.0.1:*`).
fn star_port(ep: &Endpoint) -> String {
    match ep {
        Endpoint::Tcp { .. } | Endpoint::Vsock { .. } => {
            let text = ep.to_string();
            let head = text.rsplit_once(':').map_or(text.as_str(), |(h, _)| h);
            format!("{head}:*")
        }
        other => other.to_string(),
    }
}

/// The end of a listener's control connection: the client closed it (the normal way to
/// stop), broke it, or sent a frame where none belongs.
fn control_ended(f: Option<Result<Frame, tether_proto::ProtoError>>) -> Result<(), ErrorMsg> {
    match f {
        None => Ok(()),
        Some(Err(e)) => Err(proto_error(&e)),
        Some(Ok(f)) => Err(ErrorMsg::new(
            ErrorCode::BadFrame,
            format!(
                "expected no frames after LISTEN (close the connection to stop listening), \
                 got a {:?} frame",
                f.kind()
            ),
        )),
    }
}

fn dial_error(e: &TransportError) -> ErrorMsg {
    // Nothing listening (refused, no socket file) is "not found"; the rest is I/O.
    let code = if e.is_retryable() {
        ErrorCode::NotFound
    } else {
        ErrorCode::Io
    };
    ErrorMsg::new(code, e.to_string())
}

fn lock(m: &Mutex<HashMap<u64, Waiting>>) -> std::sync::MutexGuard<'_, HashMap<u64, Waiting>> {
    // The map holds no invariant a panicking holder could break.
    m.lock().unwrap_or_else(|p| p.into_inner())
}

/// Closes a listener's unclaimed connections when the listener ends, however it ends.
struct DropUnclaimed {
    waiting: WaitingMap,
    listener: u64,
}

impl Drop for DropUnclaimed {
    fn drop(&mut self) {
        lock(&self.waiting).retain(|_, w| w.listener != self.listener);
    }
}

/// Joins a session's connection, now past CONNECTED, to `target` as raw bytes both ways
/// with half-close. Bytes the client sent right behind its request (read ahead by the
/// frame reader) go to `target` first.
pub(crate) async fn splice(frames: Frames, wr: WriteHalf<Stream>, mut target: Stream) {
    let parts = frames.into_parts();
    let mut client = parts.io.unsplit(wr);
    if !parts.read_buf.is_empty() {
        if let Err(e) = target.write_all(&parts.read_buf).await {
            tracing::debug!("forwarded connection ended: {e}");
            return;
        }
    }
    match relay::relay(&mut client, &mut target).await {
        Ok(n) => tracing::debug!(up = n.a_to_b, down = n.b_to_a, "forwarded connection ended"),
        Err(e) => tracing::debug!("forwarded connection ended: {e}"),
    }
}
