//! The one stream type every dial and accept yields.

use crate::mux::MuxStream;
use std::fmt;
use std::io::{self, IoSlice};
use std::net::SocketAddr;
use std::os::fd::{AsRawFd, RawFd};
use std::pin::Pin;
use std::task::{Context, Poll};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::{TcpStream, UnixStream};
use tokio_vsock::VsockStream;

/// A connected byte stream on any transport: `AsyncRead + AsyncWrite`, where
/// `shutdown()` is a half-close (the peer reads EOF; this end can still read).
pub struct Stream {
    inner: Inner,
    remote: Remote,
}

pub(crate) enum Inner {
    Tcp(TcpStream),
    Unix(UnixStream),
    Vsock(VsockStream),
    Mux(MuxStream),
}

/// Who is at the other end of a [`Stream`], as far as the transport can tell.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Remote {
    /// An AF_VSOCK peer.
    Vsock {
        /// The peer's CID.
        cid: u32,
        /// The peer's port.
        port: u32,
    },
    /// A TCP peer.
    Tcp(SocketAddr),
    /// A Unix socket peer (plain, or guest connections arriving at a hybrid or hyperkit
    /// listener).
    Unix,
    /// A guest port reached through a hybrid vsock device.
    Hybrid {
        /// The guest port.
        port: u32,
        /// The host port the device assigned (from its `OK` reply).
        host_port: u32,
    },
    /// A guest port reached through hyperkit.
    Hyperkit {
        /// The guest CID.
        cid: u32,
        /// The guest port.
        port: u32,
    },
    /// A connection on a mux link.
    Mux {
        /// The CID the far end of the link announced.
        peer_cid: u64,
        /// The far end's port.
        port: u32,
    },
}

impl fmt::Display for Remote {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Remote::Vsock { cid, port } => write!(f, "vsock {cid}:{port}"),
            Remote::Tcp(a) => write!(f, "tcp {a}"),
            Remote::Unix => f.write_str("unix peer"),
            Remote::Hybrid { port, host_port } => {
                write!(f, "hybrid guest port {port} (host port {host_port})")
            }
            Remote::Hyperkit { cid, port } => write!(f, "hyperkit {cid}:{port}"),
            Remote::Mux { peer_cid, port } => write!(f, "mux {peer_cid}:{port}"),
        }
    }
}

impl fmt::Debug for Stream {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Stream")
            .field("remote", &self.remote)
            .finish()
    }
}

impl Stream {
    pub(crate) fn new(inner: Inner, remote: Remote) -> Stream {
        Stream { inner, remote }
    }

    /// Who is at the other end.
    pub fn remote(&self) -> &Remote {
        &self.remote
    }

    /// The socket descriptor when the stream is a kernel socket (not a mux connection).
    pub fn as_raw_fd(&self) -> Option<RawFd> {
        match &self.inner {
            Inner::Tcp(s) => Some(s.as_raw_fd()),
            Inner::Unix(s) => Some(s.as_raw_fd()),
            Inner::Vsock(s) => Some(s.as_raw_fd()),
            Inner::Mux(_) => None,
        }
    }
}

macro_rules! each {
    ($self:expr, $s:ident => $e:expr) => {
        match &mut $self.get_mut().inner {
            Inner::Tcp($s) => $e,
            Inner::Unix($s) => $e,
            Inner::Vsock($s) => $e,
            Inner::Mux($s) => $e,
        }
    };
}

impl AsyncRead for Stream {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        each!(self, s => Pin::new(s).poll_read(cx, buf))
    }
}

impl AsyncWrite for Stream {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        each!(self, s => Pin::new(s).poll_write(cx, buf))
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        each!(self, s => Pin::new(s).poll_write_vectored(cx, bufs))
    }

    fn is_write_vectored(&self) -> bool {
        match &self.inner {
            Inner::Tcp(s) => s.is_write_vectored(),
            Inner::Unix(s) => s.is_write_vectored(),
            Inner::Vsock(s) => s.is_write_vectored(),
            Inner::Mux(s) => s.is_write_vectored(),
        }
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        each!(self, s => Pin::new(s).poll_flush(cx))
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        each!(self, s => Pin::new(s).poll_shutdown(cx))
    }
}
