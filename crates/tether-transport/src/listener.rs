//! Listening on an endpoint.

use crate::endpoint::Endpoint;
use crate::error::TransportError;
use crate::mux::MuxListener;
use crate::stream::{Inner, Remote, Stream};
use crate::{hvsock, Transport};
use std::io;
use std::os::unix::fs::FileTypeExt;
use std::path::{Path, PathBuf};
use tokio::net::{TcpListener, UnixListener};
use tokio_vsock::{VsockAddr, VsockListener, VMADDR_CID_ANY};

/// Accepts connections on an endpoint; see [`Transport::bind`].
pub struct Listener {
    inner: ListenInner,
    local: Endpoint,
    _socket_file: Option<SocketFile>,
}

enum ListenInner {
    Tcp(TcpListener),
    Unix(UnixListener),
    Vsock(VsockListener),
    Mux(MuxListener, crate::mux::Mux),
}

impl std::fmt::Debug for Listener {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Listener")
            .field("local", &self.local)
            .finish()
    }
}

impl Listener {
    pub(crate) async fn bind(t: &Transport, ep: &Endpoint) -> Result<Listener, TransportError> {
        let io = |e| TransportError::io("listen on", ep, e);
        let mut local = ep.clone();
        let mut socket_file = None;
        let inner = match ep {
            Endpoint::Vsock { cid, port } => {
                let addr = VsockAddr::new(cid.unwrap_or(VMADDR_CID_ANY), *port);
                ListenInner::Vsock(VsockListener::bind(addr).map_err(io)?)
            }
            Endpoint::Tcp { host, port } => {
                let l = TcpListener::bind((host.as_str(), *port))
                    .await
                    .map_err(io)?;
                if let Endpoint::Tcp { port, .. } = &mut local {
                    *port = l.local_addr().map_err(io)?.port();
                }
                ListenInner::Tcp(l)
            }
            Endpoint::Unix { .. } | Endpoint::Hybrid { .. } | Endpoint::Hyperkit { .. } => {
                let path = ep.listen_path().expect("socket-file endpoints");
                let l = bind_unix(&path).map_err(io)?;
                socket_file = Some(SocketFile(path));
                ListenInner::Unix(l)
            }
            Endpoint::Hvsock { service, .. } => {
                return Err(TransportError::Unsupported {
                    endpoint: ep.to_string(),
                    hint: hvsock::unsupported_hint(service),
                })
            }
            Endpoint::MuxSerial { port, .. } | Endpoint::MuxUnix { port, .. } => {
                let mux = t.link(ep).await?;
                let l = mux.listen(*port).map_err(|error| TransportError::Mux {
                    endpoint: ep.to_string(),
                    error,
                })?;
                ListenInner::Mux(l, mux)
            }
        };
        Ok(Listener {
            inner,
            local,
            _socket_file: socket_file,
        })
    }

    /// Accepts connections to `port` of a mux link this process runs itself (for
    /// instance the guest end, on a socket it accepted); `local` names it in messages.
    pub fn from_mux(
        mux: &crate::mux::Mux,
        port: u32,
        local: Endpoint,
    ) -> Result<Listener, TransportError> {
        let l = mux.listen(port).map_err(|error| TransportError::Mux {
            endpoint: local.to_string(),
            error,
        })?;
        Ok(Listener {
            inner: ListenInner::Mux(l, mux.clone()),
            local,
            _socket_file: None,
        })
    }

    /// The endpoint listened on; for `tcp://HOST:0`, with the port the system chose.
    pub fn local_endpoint(&self) -> &Endpoint {
        &self.local
    }

    /// Waits for the next connection.
    pub async fn accept(&mut self) -> Result<Stream, TransportError> {
        let io = |e| TransportError::io("accept on", &self.local, e);
        match &mut self.inner {
            ListenInner::Tcp(l) => {
                let (s, peer) = l.accept().await.map_err(io)?;
                s.set_nodelay(true).map_err(io)?;
                Ok(Stream::new(Inner::Tcp(s), Remote::Tcp(peer)))
            }
            ListenInner::Unix(l) => {
                let (s, _) = l.accept().await.map_err(io)?;
                Ok(Stream::new(Inner::Unix(s), Remote::Unix))
            }
            ListenInner::Vsock(l) => {
                let (s, peer) = l.accept().await.map_err(io)?;
                Ok(Stream::new(
                    Inner::Vsock(s),
                    Remote::Vsock {
                        cid: peer.cid(),
                        port: peer.port(),
                    },
                ))
            }
            ListenInner::Mux(l, mux) => {
                let s = l.accept().await.map_err(|error| TransportError::Mux {
                    endpoint: self.local.to_string(),
                    error,
                })?;
                let peer_cid = match mux.status() {
                    crate::mux::LinkStatus::Up { peer_cid } => peer_cid,
                    _ => 0,
                };
                let port = s.peer_port();
                Ok(Stream::new(Inner::Mux(s), Remote::Mux { peer_cid, port }))
            }
        }
    }
}

/// Binds a Unix listener at `path`, first clearing a stale socket file there.
fn bind_unix(path: &Path) -> io::Result<UnixListener> {
    clear_stale_socket(path)?;
    UnixListener::bind(path)
}

/// Removes a socket file at `path` that nobody listens on any more (left by a process
/// that died), so it can be bound again. A live listener is never displaced: that is an
/// `AddrInUse` error. Anything else at `path` is left for `bind` to report.
pub fn clear_stale_socket(path: &Path) -> io::Result<()> {
    match std::fs::symlink_metadata(path) {
        Ok(meta) if meta.file_type().is_socket() => {
            match std::os::unix::net::UnixStream::connect(path) {
                Ok(_) => Err(io::Error::new(
                    io::ErrorKind::AddrInUse,
                    "another process is listening there",
                )),
                Err(e) if e.kind() == io::ErrorKind::ConnectionRefused => {
                    std::fs::remove_file(path)
                }
                Err(e) => Err(e),
            }
        }
        _ => Ok(()),
    }
}

/// Removes a listener's socket file when the listener goes.
struct SocketFile(PathBuf);

impl Drop for SocketFile {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.0);
    }
}
