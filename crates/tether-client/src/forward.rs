//! Port forwarding through the agent: connections to guest destinations and guest
//! listeners whose connections come back to the host.

use crate::client::{unexpected, Client, Conn};
use crate::error::ClientError;
use bytes::{Buf, Bytes};
use std::fmt;
use std::io::{self, IoSlice};
use std::pin::Pin;
use std::task::{Context, Poll};
use tether_proto::{ConnectRequest, Features, Frame, ListenRequest};
use tether_transport::{Remote, Stream};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};

impl Client {
    /// Connects to `target` inside the guest (an endpoint URI as the guest sees it:
    /// `tcp://127.0.0.1:80`, `unix:///run/app.sock`) through the agent. Once the agent
    /// has connected, the returned stream carries raw bytes both ways, and `shutdown()`
    /// half-closes: the guest service reads EOF and can still answer.
    ///
    /// The agent connects only where its policy allows (`--allow-connect`); a refusal is
    /// [`ClientError::Forward`] with code `denied`, nothing listening there is code
    /// `not-found`.
    ///
    /// ```no_run
    /// # async fn demo(client: tether_client::Client) -> Result<(), Box<dyn std::error::Error>> {
    /// use tokio::io::{AsyncReadExt, AsyncWriteExt};
    /// let mut web = client.connect_guest("tcp://127.0.0.1:80").await?;
    /// web.write_all(b"GET / HTTP/1.0\r\n\r\n").await?;
    /// web.shutdown().await?;
    /// let mut page = Vec::new();
    /// web.read_to_end(&mut page).await?;
    /// # Ok(()) }
    /// ```
    pub async fn connect_guest(&self, target: &str) -> Result<GuestStream, ClientError> {
        let req = Frame::Connect(ConnectRequest {
            target: target.to_string(),
        });
        let conn = self.open(Features::FORWARD, Some(&req)).await?;
        self.connected(conn, target).await
    }

    /// Listens on `bind` inside the guest (`tcp://127.0.0.1:5432`, `tcp://127.0.0.1:0`
    /// for any free port, `unix:///run/host-db.sock`) through the agent. The listener
    /// lives as long as the returned [`GuestListener`]; each guest connection is claimed
    /// on a connection of its own.
    ///
    /// ```no_run
    /// # async fn demo(client: tether_client::Client) -> Result<(), Box<dyn std::error::Error>> {
    /// let mut listener = client.listen_guest("tcp://127.0.0.1:0").await?;
    /// println!("guest programs can connect to {}", listener.bound());
    /// let conn = listener.accept().await?;
    /// # Ok(()) }
    /// ```
    pub async fn listen_guest(&self, bind: &str) -> Result<GuestListener, ClientError> {
        let req = Frame::Listen(ListenRequest {
            bind: bind.to_string(),
        });
        let mut conn = self.open(Features::FORWARD, Some(&req)).await?;
        require_forward(&conn)?;
        let frame = self
            .reply(&mut conn.rd, "the listen request", "before LISTENING")
            .await?;
        let bound = match frame {
            Frame::Listening(l) => l.bound,
            Frame::Error(e) => return Err(ClientError::from_forward(bind, e)),
            other => return Err(unexpected(&other, "LISTENING")),
        };
        Ok(GuestListener {
            client: self.clone(),
            control: conn,
            bound,
        })
    }

    /// Claims the guest connection the agent announced as `id` (see
    /// [`GuestListener::next`]): a new agent connection that carries it.
    pub async fn attach(&self, id: u64) -> Result<GuestStream, ClientError> {
        let conn = self
            .open(Features::FORWARD, Some(&Frame::Attach { id }))
            .await?;
        self.connected(conn, &format!("accepted connection {id}"))
            .await
    }

    /// Waits for CONNECTED and turns the connection raw.
    async fn connected(&self, mut conn: Conn, target: &str) -> Result<GuestStream, ClientError> {
        require_forward(&conn)?;
        let frame = self
            .reply(&mut conn.rd, "the forwarding request", "before CONNECTED")
            .await?;
        match frame {
            Frame::Connected => Ok(GuestStream::from_conn(conn)),
            Frame::Error(e) => Err(ClientError::from_forward(target, e)),
            other => Err(unexpected(&other, "CONNECTED")),
        }
    }
}

fn require_forward(conn: &Conn) -> Result<(), ClientError> {
    if conn.welcome.features.contains(Features::FORWARD) {
        Ok(())
    } else {
        Err(ClientError::Unsupported("port forwarding"))
    }
}

/// A connection to a guest destination, or from a guest program to a
/// [`GuestListener`]: `AsyncRead + AsyncWrite` raw bytes through the agent, where
/// `shutdown()` is a half-close (the far end reads EOF and can still send).
pub struct GuestStream {
    /// Bytes that arrived behind CONNECTED in the same read; delivered first.
    ahead: Bytes,
    inner: Stream,
}

impl fmt::Debug for GuestStream {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("GuestStream")
            .field("agent", self.inner.remote())
            .finish()
    }
}

impl GuestStream {
    fn from_conn(conn: Conn) -> GuestStream {
        let parts = conn.rd.into_parts();
        GuestStream {
            ahead: parts.read_buf.freeze(),
            inner: parts.io.unsplit(conn.wr),
        }
    }

    /// The agent end of the connection that carries this stream.
    pub fn agent(&self) -> &Remote {
        self.inner.remote()
    }
}

impl AsyncRead for GuestStream {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let me = self.get_mut();
        if !me.ahead.is_empty() {
            let n = me.ahead.len().min(buf.remaining());
            buf.put_slice(&me.ahead[..n]);
            me.ahead.advance(n);
            return Poll::Ready(Ok(()));
        }
        Pin::new(&mut me.inner).poll_read(cx, buf)
    }
}

impl AsyncWrite for GuestStream {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.get_mut().inner).poll_write(cx, buf)
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.get_mut().inner).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().inner).poll_flush(cx)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().inner).poll_shutdown(cx)
    }
}

/// A listener inside the guest, from [`Client::listen_guest`]. It listens while this
/// value lives (its control connection to the agent stays open); dropping it closes the
/// guest listener and any guest connections not yet claimed.
pub struct GuestListener {
    client: Client,
    control: Conn,
    bound: String,
}

impl fmt::Debug for GuestListener {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("GuestListener")
            .field("bound", &self.bound)
            .finish()
    }
}

impl GuestListener {
    /// The address bound in the guest, as an endpoint URI; for `tcp://HOST:0`, with the
    /// port the guest chose.
    pub fn bound(&self) -> &str {
        &self.bound
    }

    /// The next guest connection, claimed and ready for bytes. Claiming costs one more
    /// agent connection; to claim several at once, take them with [`next`](Self::next)
    /// and [`Incoming::attach`] each in its own task.
    pub async fn accept(&mut self) -> Result<GuestStream, ClientError> {
        self.next().await?.attach().await
    }

    /// The next guest connection as the agent announced it, not yet claimed. Claim it
    /// within 10 s (the agent's claim timeout) or the agent closes it.
    pub async fn next(&mut self) -> Result<Incoming, ClientError> {
        let frame = crate::client::next_frame(&mut self.control.rd, "on the guest listener")
            .await
            .map_err(|e| match e {
                ClientError::ConnectionLost { detail, .. } => ClientError::ListenerEnded {
                    bound: self.bound.clone(),
                    detail,
                },
                e => e,
            })?;
        match frame {
            Frame::Accepted(a) => Ok(Incoming {
                client: self.client.clone(),
                id: a.id,
                peer: a.peer,
            }),
            Frame::Error(e) => Err(ClientError::from_forward(&self.bound, e)),
            other => Err(unexpected(&other, "ACCEPTED")),
        }
    }
}

/// A guest connection waiting on a [`GuestListener`] for its claim.
#[derive(Debug)]
pub struct Incoming {
    client: Client,
    id: u64,
    peer: String,
}

impl Incoming {
    /// The agent's id for it.
    pub fn id(&self) -> u64 {
        self.id
    }

    /// Who connected in the guest, as the agent describes it (`tcp 127.0.0.1:41234`).
    pub fn peer(&self) -> &str {
        &self.peer
    }

    /// Claims it: see [`Client::attach`].
    pub async fn attach(self) -> Result<GuestStream, ClientError> {
        self.client.attach(self.id).await
    }
}
