//! Dialing and listening on endpoints, and peers reachable by several.

use crate::endpoint::{Endpoint, HYPERKIT_DEFAULT_CID};
use crate::error::TransportError;
use crate::listener::Listener;
use crate::mux::{CharDevice, Mux, MuxConfig};
use crate::stream::{Inner, Remote, Stream};
use crate::{hvsock, hybrid, hyperkit};
use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;
use tokio::io::AsyncWriteExt;
use tokio::net::{TcpStream, UnixStream};
use tokio::time::Instant;
use tokio_vsock::{VsockAddr, VsockStream};

/// How patient a dial is.
#[derive(Clone, Debug)]
pub struct DialOptions {
    /// The longest one attempt may take: connecting, plus the transport's own handshake
    /// (hybrid's `OK`, a mux link's hello). Default 10 s, as Kata waits for `OK`.
    pub timeout: Duration,
    /// How long to keep trying while the peer refuses (not listening yet, a guest still
    /// booting). Default zero: one round of attempts.
    pub retry: Duration,
    /// The pause between rounds of attempts. Default 100 ms.
    pub retry_interval: Duration,
}

impl Default for DialOptions {
    fn default() -> Self {
        DialOptions {
            timeout: Duration::from_secs(10),
            retry: Duration::ZERO,
            retry_interval: Duration::from_millis(100),
        }
    }
}

/// Several endpoints that reach the same peer. Dialing tries them cheapest first
/// ([`Endpoint::cost`]) and falls back to the next when one fails.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Peer {
    endpoints: Vec<Endpoint>,
}

impl Peer {
    /// A peer reachable by `endpoints`, kept in cost order (ties keep the given order).
    pub fn new(endpoints: impl IntoIterator<Item = Endpoint>) -> Peer {
        let mut endpoints: Vec<Endpoint> = endpoints.into_iter().collect();
        endpoints.sort_by_key(Endpoint::cost);
        Peer { endpoints }
    }

    /// The endpoints, cheapest first.
    pub fn endpoints(&self) -> &[Endpoint] {
        &self.endpoints
    }
}

/// Dials and binds endpoints. Cheap to clone; clones share mux links, so every
/// connection to ports on one serial line or chardev socket rides one link.
///
/// ```no_run
/// # async fn demo() -> Result<(), Box<dyn std::error::Error>> {
/// use tether_transport::{Endpoint, Transport};
/// use tokio::io::AsyncWriteExt;
/// let t = Transport::default();
/// let mut s = t.dial(&"hybrid:///run/fc/v.sock:1024".parse::<Endpoint>()?).await?;
/// s.write_all(b"hello").await?;
/// s.shutdown().await?; // half-close: the guest reads EOF, we can still read
/// # Ok(()) }
/// ```
#[derive(Clone, Default)]
pub struct Transport {
    opts: DialOptions,
    links: Arc<tokio::sync::Mutex<HashMap<PathBuf, Mux>>>,
}

impl Transport {
    /// A transport with these dial options.
    pub fn new(opts: DialOptions) -> Transport {
        Transport {
            opts,
            links: Default::default(),
        }
    }

    /// The dial options in force.
    pub fn options(&self) -> &DialOptions {
        &self.opts
    }

    /// Connects to `endpoint`, retrying refusals for [`DialOptions::retry`].
    pub async fn dial(&self, endpoint: &Endpoint) -> Result<Stream, TransportError> {
        self.dial_any(std::slice::from_ref(endpoint)).await
    }

    /// Connects to the cheapest reachable endpoint of `peer`.
    pub async fn dial_peer(&self, peer: &Peer) -> Result<Stream, TransportError> {
        self.dial_any(peer.endpoints()).await
    }

    /// Tries `endpoints` in order, in rounds, until one connects or the retry window
    /// closes. Fails at once on an error that waiting cannot fix when it is the only
    /// endpoint.
    async fn dial_any(&self, endpoints: &[Endpoint]) -> Result<Stream, TransportError> {
        if endpoints.is_empty() {
            return Err(TransportError::NoEndpoints);
        }
        let give_up = Instant::now() + self.opts.retry;
        loop {
            let mut errors = Vec::new();
            for ep in endpoints {
                match self.attempt(ep).await {
                    Ok(s) => return Ok(s),
                    Err(e) => {
                        tracing::debug!(endpoint = %ep, error = %e, "dial attempt failed");
                        errors.push(e);
                    }
                }
            }
            let retry = errors.iter().any(TransportError::is_retryable)
                && Instant::now() + self.opts.retry_interval < give_up;
            if !retry {
                return Err(if errors.len() == 1 {
                    errors.pop().expect("one")
                } else {
                    TransportError::AllFailed(errors)
                });
            }
            tokio::time::sleep(self.opts.retry_interval).await;
        }
    }

    async fn attempt(&self, ep: &Endpoint) -> Result<Stream, TransportError> {
        let limit = self.opts.timeout;
        match tokio::time::timeout(limit, self.connect(ep)).await {
            Ok(r) => r,
            Err(_) => Err(TransportError::Timeout {
                endpoint: ep.to_string(),
                what: "no connection",
                after: limit,
            }),
        }
    }

    async fn connect(&self, ep: &Endpoint) -> Result<Stream, TransportError> {
        let name = ep.to_string();
        let io = |e| TransportError::io("connect to", ep, e);
        match ep {
            Endpoint::Vsock { cid: None, port } => Err(TransportError::Unsupported {
                endpoint: name,
                hint: format!(
                    "vsock://:{port} is a listen address; to dial, name the CID, \
                     e.g. vsock://2:{port} for the host"
                ),
            }),
            Endpoint::Vsock {
                cid: Some(cid),
                port,
            } => {
                let s = VsockStream::connect(VsockAddr::new(*cid, *port))
                    .await
                    .map_err(io)?;
                Ok(Stream::new(
                    Inner::Vsock(s),
                    Remote::Vsock {
                        cid: *cid,
                        port: *port,
                    },
                ))
            }
            Endpoint::Hybrid { path, port } => {
                let (s, host_port) =
                    hybrid::dial_once(path, *port, &name, self.opts.timeout).await?;
                Ok(Stream::new(
                    Inner::Unix(s),
                    Remote::Hybrid {
                        port: *port,
                        host_port,
                    },
                ))
            }
            Endpoint::Hyperkit { cid, port, dir } => {
                let cid = cid.unwrap_or(HYPERKIT_DEFAULT_CID);
                let mut s = UnixStream::connect(hyperkit::connect_path(dir))
                    .await
                    .map_err(io)?;
                s.write_all(hyperkit::connect_header(cid, *port).as_bytes())
                    .await
                    .map_err(io)?;
                Ok(Stream::new(
                    Inner::Unix(s),
                    Remote::Hyperkit { cid, port: *port },
                ))
            }
            Endpoint::Hvsock { service, .. } => Err(TransportError::Unsupported {
                endpoint: name,
                hint: hvsock::unsupported_hint(service),
            }),
            Endpoint::Tcp { host, port } => {
                let s = TcpStream::connect((host.as_str(), *port))
                    .await
                    .map_err(io)?;
                // Forwarded interactive traffic must not wait for Nagle.
                s.set_nodelay(true).map_err(io)?;
                let peer = s.peer_addr().map_err(io)?;
                Ok(Stream::new(Inner::Tcp(s), Remote::Tcp(peer)))
            }
            Endpoint::Unix { path } => {
                let s = UnixStream::connect(path).await.map_err(io)?;
                Ok(Stream::new(Inner::Unix(s), Remote::Unix))
            }
            Endpoint::MuxSerial { port, .. } | Endpoint::MuxUnix { port, .. } => {
                let mux = self.link(ep).await?;
                let mux_err = |error| TransportError::Mux {
                    endpoint: ep.to_string(),
                    error,
                };
                let peer_cid = mux.ready().await.map_err(mux_err)?;
                let s = mux.connect(*port).await.map_err(mux_err)?;
                Ok(Stream::new(
                    Inner::Mux(s),
                    Remote::Mux {
                        peer_cid,
                        port: *port,
                    },
                ))
            }
        }
    }

    /// Listens on `endpoint`.
    pub async fn bind(&self, endpoint: &Endpoint) -> Result<Listener, TransportError> {
        Listener::bind(self, endpoint).await
    }

    /// The mux link under a mux endpoint, opened on first use and reopened after it
    /// closed.
    pub(crate) async fn link(&self, ep: &Endpoint) -> Result<Mux, TransportError> {
        let path = ep.mux_link().expect("a mux endpoint").to_path_buf();
        let mut links = self.links.lock().await;
        if let Some(m) = links.get(&path) {
            if !matches!(m.status(), crate::mux::LinkStatus::Closed(_)) {
                return Ok(m.clone());
            }
        }
        let io = |e| TransportError::io("open mux link", ep, e);
        let mux = match ep {
            Endpoint::MuxSerial { device, .. } => {
                Mux::new(CharDevice::open(device).map_err(io)?, MuxConfig::guest(3))
            }
            Endpoint::MuxUnix { path, .. } => {
                let (rd, wr) = UnixStream::connect(path).await.map_err(io)?.into_split();
                Mux::from_halves(rd, wr, MuxConfig::host())
            }
            _ => unreachable!("mux_link is Some only for mux endpoints"),
        };
        links.insert(path, mux.clone());
        Ok(mux)
    }
}
