//! Dialing the agent and the handshake every operation opens with.

use crate::command::Command;
use crate::error::ClientError;
use crate::ping::{PingStats, Pinger};
use crate::session::Session;
use bytes::BytesMut;
use futures::StreamExt;
use std::fmt;
use std::time::{Duration, SystemTime, UNIX_EPOCH};
use tether_proto::{
    encode, Features, Frame, FrameCodec, Hello, Info, Proof, ProtoError, Welcome, PROTOCOL_VERSION,
};
use tether_transport::{Peer, Remote, Stream, Transport};
use tokio::io::{AsyncWriteExt, ReadHalf, WriteHalf};
use tokio_util::codec::FramedRead;

/// The read buffer of a connection: big enough for a few full-size data frames, so
/// output is read in large gulps.
const READ_BUFFER: usize = 256 * 1024;

pub(crate) type FrameReader = FramedRead<ReadHalf<Stream>, FrameCodec>;
pub(crate) type FrameWriter = WriteHalf<Stream>;

/// A handle on one agent: where it is, and the token to prove. Every operation opens
/// its own connection (vsock connections are cheap; over a serial line the mux provides
/// them), so a `Client` is cheap to clone and may be used from many tasks at once.
///
/// ```no_run
/// # async fn demo() -> Result<(), Box<dyn std::error::Error>> {
/// use tether_client::{Client, Command};
/// use tether_transport::Peer;
/// use tokio::io::AsyncReadExt;
///
/// let peer = Peer::new(["hybrid:///run/fc/v.sock:1024".parse()?]);
/// let token = std::fs::read("/etc/tether/token")?;
/// let client = Client::new(peer).token(token);
///
/// let mut session = client.exec(&Command::new("uname").arg("-a")).await?;
/// let mut out = String::new();
/// session.stdout.take().unwrap().read_to_string(&mut out).await?;
/// let status = session.wait().await?;
/// println!("{out}{status}");
/// # Ok(()) }
/// ```
#[derive(Clone)]
pub struct Client {
    transport: Transport,
    peer: Peer,
    token: Option<Vec<u8>>,
    reply_timeout: Duration,
}

impl fmt::Debug for Client {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Client")
            .field("peer", &self.peer)
            .field("token", &self.token.as_ref().map(|_| "<set>"))
            .field("reply_timeout", &self.reply_timeout)
            .finish()
    }
}

impl Client {
    /// A client for the agent at `peer` (any of its endpoints, cheapest first), dialing
    /// with default options.
    pub fn new(peer: Peer) -> Client {
        Client::with_transport(Transport::default(), peer)
    }

    /// A client dialing `peer` with `transport` (its dial timeout and retries; clones of
    /// one transport share mux links).
    pub fn with_transport(transport: Transport, peer: Peer) -> Client {
        let reply_timeout = transport.options().timeout;
        Client {
            transport,
            peer,
            token: None,
            reply_timeout,
        }
    }

    /// Proves `token` in every hello. Read it from a file; never put it in argv.
    /// Without a token the hello's proof is all zero.
    pub fn token(mut self, token: Vec<u8>) -> Client {
        self.token = Some(token);
        self
    }

    /// How long to wait for the agent's first answers (WELCOME, then STARTED or INFO)
    /// once connected. Defaults to the transport's dial timeout.
    pub fn reply_timeout(mut self, limit: Duration) -> Client {
        self.reply_timeout = limit;
        self
    }

    /// The peer this client dials.
    pub fn peer(&self) -> &Peer {
        &self.peer
    }

    /// The hello this client opens with: version, `features`, and a fresh proof.
    pub fn hello(&self, features: Features) -> Hello {
        Hello {
            version: PROTOCOL_VERSION,
            features,
            proof: self.proof(),
        }
    }

    fn proof(&self) -> Proof {
        let Some(token) = &self.token else {
            return Proof::default();
        };
        let now = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map(|d| d.as_secs())
            .unwrap_or(0);
        let mut nonce = [0u8; 16];
        getrandom::fill(&mut nonce).expect("the operating system's random source");
        Proof::new(token, now, nonce)
    }

    /// Runs `cmd`: one connection, the hello and the EXEC request written together, then
    /// WELCOME and STARTED read back. Returns once the command runs; its output streams
    /// through the [`Session`].
    ///
    /// An agent that cannot start the command answers ERROR `spawn`, which becomes
    /// [`ClientError::Agent`] naming the reason.
    pub async fn exec(&self, cmd: &Command) -> Result<Session, ClientError> {
        let req = cmd.request();
        let mut features = Features::EXEC;
        if req.tty.is_some() {
            features = Features(features.0 | Features::TTY.0);
        }
        let exec = Frame::Exec(Box::new(req.clone()));
        let mut conn = self.open(features, Some(&exec)).await?;
        if !conn.welcome.features.contains(Features::EXEC) {
            return Err(ClientError::Unsupported("running commands"));
        }
        if req.tty.is_some() && !conn.welcome.features.contains(Features::TTY) {
            return Err(ClientError::Unsupported("terminal sessions"));
        }
        let frame = self
            .reply(
                &mut conn.rd,
                "the command's start",
                "before the command started",
            )
            .await?;
        let pid = match frame {
            Frame::Started { pid } => pid,
            Frame::Error(e) => return Err(ClientError::from_agent(e)),
            other => return Err(unexpected(&other, "STARTED")),
        };
        Ok(Session::start(
            conn.rd,
            conn.wr,
            pid,
            req.stdin,
            conn.remote,
        ))
    }

    /// Opens a connection for round trips: dial, hello, WELCOME. The time that took is
    /// [`Pinger::connect_time`].
    pub async fn pinger(&self) -> Result<Pinger, ClientError> {
        let start = tokio::time::Instant::now();
        let conn = self.open(Features(0), None).await?;
        Ok(Pinger::new(
            conn.rd,
            conn.wr,
            start.elapsed(),
            conn.remote,
            conn.welcome,
        ))
    }

    /// Connects and measures `count` PING/PONG round trips of 64-byte payloads on one
    /// connection.
    pub async fn ping(&self, count: usize) -> Result<PingStats, ClientError> {
        self.pinger().await?.round_trips(count, 64).await
    }

    /// Asks the agent about itself: version, host name, kernel, pid, uptime.
    pub async fn info(&self) -> Result<Info, ClientError> {
        let mut conn = self.open(Features(0), Some(&Frame::InfoRequest)).await?;
        match self
            .reply(&mut conn.rd, "the info request", "before INFO")
            .await?
        {
            Frame::Info(i) => Ok(i),
            Frame::Error(e) => Err(ClientError::from_agent(e)),
            other => Err(unexpected(&other, "INFO")),
        }
    }

    /// Dials, writes the hello and `request` in one write, reads WELCOME.
    pub(crate) async fn open(
        &self,
        features: Features,
        request: Option<&Frame>,
    ) -> Result<Conn, ClientError> {
        let stream = self.transport.dial_peer(&self.peer).await?;
        let remote = stream.remote().clone();
        tracing::debug!(%remote, "connected to the agent");
        let (rd, mut wr) = tokio::io::split(stream);
        let mut rd = FramedRead::with_capacity(rd, FrameCodec, READ_BUFFER);
        let mut buf = BytesMut::with_capacity(256);
        encode(&Frame::Hello(self.hello(features)), &mut buf).expect("a hello fits");
        if let Some(r) = request {
            encode(r, &mut buf).map_err(|e| match e {
                ProtoError::Oversize { len, max } => ClientError::Protocol(format!(
                    "the request is {len} bytes, over the {max}-byte frame limit"
                )),
                e => ClientError::Protocol(e.to_string()),
            })?;
        }
        // Hello and request together: an exec costs one round trip. A write that fails
        // may be the agent refusing and closing; its ERROR frame says why.
        if let Err(e) = write_all(&mut wr, &buf).await {
            let reason = tokio::time::timeout(Duration::from_millis(500), rd.next()).await;
            if let Ok(Some(Ok(Frame::Error(msg)))) = reason {
                return Err(ClientError::from_agent(msg));
            }
            return Err(ClientError::ConnectionLost {
                during: "sending the request",
                detail: e.to_string(),
            });
        }
        let welcome = match self
            .reply(&mut rd, "the hello", "during the handshake")
            .await?
        {
            Frame::Welcome(w) => w,
            Frame::Error(e) => return Err(ClientError::from_agent(e)),
            other => return Err(unexpected(&other, "WELCOME")),
        };
        if welcome.version == 0 || welcome.version > PROTOCOL_VERSION {
            return Err(ClientError::Version {
                ours: PROTOCOL_VERSION,
                detail: format!("the agent answered version {}", welcome.version),
            });
        }
        Ok(Conn {
            rd,
            wr,
            welcome,
            remote,
        })
    }

    /// The next frame, within the reply timeout.
    pub(crate) async fn reply(
        &self,
        rd: &mut FrameReader,
        what: &'static str,
        during: &'static str,
    ) -> Result<Frame, ClientError> {
        match tokio::time::timeout(self.reply_timeout, next_frame(rd, during)).await {
            Ok(r) => r,
            Err(_) => Err(ClientError::Timeout {
                what,
                after: self.reply_timeout,
            }),
        }
    }
}

async fn write_all(wr: &mut FrameWriter, buf: &[u8]) -> std::io::Result<()> {
    wr.write_all(buf).await?;
    wr.flush().await
}

/// An agent connection past the handshake.
pub(crate) struct Conn {
    pub(crate) rd: FrameReader,
    pub(crate) wr: FrameWriter,
    pub(crate) welcome: Welcome,
    pub(crate) remote: Remote,
}

/// The next frame, with the end of the connection and I/O failures as
/// [`ClientError::ConnectionLost`] and undecodable frames as [`ClientError::Protocol`].
pub(crate) async fn next_frame(
    rd: &mut FrameReader,
    during: &'static str,
) -> Result<Frame, ClientError> {
    match rd.next().await {
        Some(Ok(f)) => Ok(f),
        Some(Err(e)) => Err(frame_error(e, during)),
        None => Err(ClientError::ConnectionLost {
            during,
            detail: "the agent closed the connection".into(),
        }),
    }
}

pub(crate) fn frame_error(e: ProtoError, during: &'static str) -> ClientError {
    match e {
        ProtoError::Io(e) => ClientError::ConnectionLost {
            during,
            detail: e.to_string(),
        },
        ProtoError::Truncated(n) => ClientError::ConnectionLost {
            during,
            detail: format!("the connection ended inside a frame ({n} bytes of it received)"),
        },
        e => ClientError::Protocol(e.to_string()),
    }
}

pub(crate) fn unexpected(frame: &Frame, expected: &str) -> ClientError {
    ClientError::Protocol(format!(
        "expected {expected}, got a {:?} frame",
        frame.kind()
    ))
}
