//! The tether guest agent.
//!
//! Serves the protocol of docs/protocol.md on any [`tether_transport::Listener`]: runs
//! commands with streamed stdio or a terminal, delivers signals to their process groups,
//! enforces timeouts, reports exit codes and signals distinctly, and reaps every child
//! from a single `waitpid` owner (so it can run as PID 1). It forwards connections to
//! guest destinations and from guest listeners, to and from the places its
//! [`AgentConfig`] allows ([`Pattern`]s). It copies files and trees both ways, each
//! file renamed into place only once its SHA-256 matched, optionally confined beneath a
//! root directory.
//!
//! ```no_run
//! # async fn demo() -> Result<(), Box<dyn std::error::Error>> {
//! use tether_agent::{Agent, AgentConfig};
//! use tether_transport::Transport;
//! let agent = Agent::new(AgentConfig::default())?;
//! let listener = Transport::default().bind(&"unix:///run/tether.sock".parse()?).await?;
//! agent.serve(listener).await?;
//! # Ok(()) }
//! ```

mod auth;
#[cfg(feature = "cli")]
pub mod cli;
mod exec;
mod files;
mod forward;
mod idle;
pub mod init;
mod policy;
mod reaper;
mod session;
mod spawn;
pub mod user;
mod writer;

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Instant;
use tether_transport::{Endpoint, Listener, Remote, TransportError};
use thiserror::Error;

pub use auth::Auth;
pub use forward::{CLAIM_TIMEOUT, MAX_UNCLAIMED};
pub use policy::{ParsePatternError, Pattern};

/// How the agent behaves.
#[derive(Clone, Debug)]
pub struct AgentConfig {
    /// The shared token clients must prove; none accepts every client that may connect.
    pub token: Option<Vec<u8>>,
    /// vsock (and mux) CIDs allowed to connect. Default: only the host, CID 2.
    pub allow_cids: Vec<u64>,
    /// Guest destinations clients may connect to (CONNECT). Default: none.
    pub allow_connect: Vec<Pattern>,
    /// Guest addresses clients may listen on (LISTEN). Default: none.
    pub allow_listen: Vec<Pattern>,
    /// Confine file copies (COPY_OUT, COPY_IN) beneath this directory, which they see
    /// as `/`: no `..`, absolute path or symlink leads out of it. Default: none, paths
    /// are plain (absolute, or relative to the agent's working directory).
    pub root: Option<PathBuf>,
}

impl Default for AgentConfig {
    fn default() -> Self {
        AgentConfig {
            token: None,
            allow_cids: vec![2],
            allow_connect: Vec::new(),
            allow_listen: Vec::new(),
            root: None,
        }
    }
}

/// Why the agent could not serve.
#[derive(Debug, Error)]
pub enum AgentError {
    /// Accepting failed for good.
    #[error(transparent)]
    Transport(#[from] TransportError),
    /// Setting up the agent failed.
    #[error("starting the agent: {0}")]
    Setup(#[from] std::io::Error),
    /// Setting the guest up as its init failed.
    #[error("setting up the guest as init: {0}")]
    Init(std::io::Error),
    /// The token file could not be used.
    #[error("{0}")]
    Token(std::io::Error),
    /// The host waiting for the agent could not be told it is ready.
    #[error("announcing readiness to {uri}: {detail}")]
    Announce {
        /// Where the announcement went.
        uri: String,
        /// What failed.
        detail: String,
    },
    /// A TCP listener without a token would let anyone on the network run commands.
    #[error("refusing to listen on {0} without a token: anyone who can reach it could run commands; give --token-file")]
    TcpWithoutToken(String),
}

/// What every session shares.
pub(crate) struct Ctx {
    pub(crate) reaper: reaper::Reaper,
    pub(crate) auth: Auth,
    pub(crate) started: Instant,
    pub(crate) forward: forward::Forwarding,
    /// Where copied paths resolve (`AgentConfig::root`).
    pub(crate) files_root: tether_files::Root,
    idle: Arc<idle::Idle>,
    allow_cids: Vec<u64>,
}

/// A running agent; cheap to clone, shares sessions' state across listeners.
#[derive(Clone)]
pub struct Agent {
    ctx: Arc<Ctx>,
}

impl Agent {
    /// Sets up the agent on the current tokio runtime: takes over reaping (and becomes a
    /// child subreaper when it is not PID 1, so orphans of its commands are reaped too).
    pub fn new(config: AgentConfig) -> Result<Agent, AgentError> {
        if std::process::id() != 1 {
            let _ = nix::sys::prctl::set_child_subreaper(true);
        }
        if std::env::var_os("PATH").is_none() {
            // PID 1 starts without PATH; commands are looked up where a shell would look.
            // SAFETY: set once at startup, before any other thread reads the environment.
            unsafe {
                std::env::set_var(
                    "PATH",
                    "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin",
                )
            };
        }
        let files_root = match &config.root {
            Some(dir) => tether_files::Root::beneath(dir)?,
            None => tether_files::Root::anywhere(),
        };
        Ok(Agent {
            ctx: Arc::new(Ctx {
                files_root,
                reaper: reaper::Reaper::start()?,
                auth: Auth::new(config.token),
                started: Instant::now(),
                forward: forward::Forwarding::new(config.allow_connect, config.allow_listen),
                idle: idle::Idle::start(),
                allow_cids: config.allow_cids,
            }),
        })
    }

    /// Accepts connections on `listener` and serves each in its own task, until
    /// accepting fails for good.
    pub async fn serve(&self, mut listener: Listener) -> Result<(), AgentError> {
        if matches!(listener.local_endpoint(), Endpoint::Tcp { .. }) && !self.ctx.auth.required() {
            return Err(AgentError::TcpWithoutToken(
                listener.local_endpoint().to_string(),
            ));
        }
        loop {
            let stream = match listener.accept().await {
                Ok(s) => s,
                Err(e @ TransportError::Mux { .. }) => return Err(e.into()),
                Err(e) => {
                    tracing::warn!("{e}");
                    tokio::time::sleep(std::time::Duration::from_millis(20)).await;
                    continue;
                }
            };
            if !self.allowed(stream.remote()) {
                tracing::warn!(remote = %stream.remote(), "connection refused: CID not allowed (--allow-cid)");
                continue;
            }
            let busy = self.ctx.idle.busy();
            let ctx = self.ctx.clone();
            tokio::spawn(async move {
                session::serve(stream, ctx).await;
                drop(busy);
            });
        }
    }

    fn allowed(&self, remote: &Remote) -> bool {
        match remote {
            Remote::Vsock { cid, .. } => self.ctx.allow_cids.contains(&u64::from(*cid)),
            Remote::Mux { peer_cid, .. } => self.ctx.allow_cids.contains(peer_cid),
            _ => true,
        }
    }
}
