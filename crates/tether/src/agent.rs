//! `tether agent`: serve commands to clients on one or more endpoints.

use crate::config::Config;
use anyhow::{Context, Result};
use std::path::{Path, PathBuf};
use tether_agent::{Agent, AgentConfig};
use tether_transport::{Endpoint, Transport};

/// Options of `tether agent`.
#[derive(clap::Args, Debug)]
pub struct Args {
    /// Where to accept clients; repeat for several [default: `[agent] listen` from the
    /// config file, else vsock://:1024].
    #[arg(long = "listen", value_name = "URI")]
    pub listen: Vec<Endpoint>,
    /// A file holding the shared token clients must prove (never given on the command
    /// line, where other users could read it). Required for tcp:// listeners.
    #[arg(long, value_name = "FILE")]
    pub token_file: Option<PathBuf>,
    /// A vsock CID allowed to connect; repeat for several [default: 2, the host].
    #[arg(long = "allow-cid", value_name = "CID")]
    pub allow_cids: Vec<u64>,
    /// Act as the guest's init (PID 1): mount /proc, /sys, /dev, /dev/pts, /tmp, /run and
    /// load the kernel modules listed in /etc/tether/modules before serving.
    #[arg(long)]
    pub init: bool,
    /// Once listening, connect to URI and write `ready`, so a host waiting there knows
    /// the agent is up (no fixed sleeps); e.g. vsock://2:1023.
    #[arg(long, value_name = "URI")]
    pub ready: Option<Endpoint>,
}

pub fn run(args: Args, config: Option<&Path>) -> Result<()> {
    if args.init {
        tether_agent::init::setup().context("setting up the guest as init")?;
    }
    let cfg = Config::load(config)?;
    let listen = if !args.listen.is_empty() {
        args.listen
    } else if !cfg.agent.listen.is_empty() {
        cfg.agent.listen_endpoints()
    } else {
        vec![Endpoint::Vsock {
            cid: None,
            port: cfg.vsock_listen_port.unwrap_or(1024),
        }]
    };
    let token_file = args.token_file.or(cfg.agent.token_file.clone());
    let token = match &token_file {
        Some(f) => Some(crate::token::read_token(f)?),
        None => None,
    };
    let allow_cids = if !args.allow_cids.is_empty() {
        args.allow_cids
    } else if !cfg.agent.allow_cids.is_empty() {
        cfg.agent.allow_cids.clone()
    } else {
        vec![2]
    };
    // One thread: an agent is mostly idle, and small (DESIGN.md: ≤ 2 MiB resident).
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    rt.block_on(async move {
        let agent = Agent::new(AgentConfig { token, allow_cids })?;
        // One transport for listening and announcing: a serial port opens only once, so
        // both must share its mux link. Its retry window is the announcement's patience.
        let transport = Transport::new(tether_transport::DialOptions {
            retry: std::time::Duration::from_secs(30),
            ..Default::default()
        });
        let mut serving = tokio::task::JoinSet::new();
        for ep in &listen {
            let listener = transport.bind(ep).await?;
            eprintln!("tether: agent listening on {}", listener.local_endpoint());
            let agent = agent.clone();
            serving.spawn(async move { agent.serve(listener).await });
        }
        if let Some(ready) = &args.ready {
            if let Err(e) = announce(&transport, ready).await {
                // As init, exiting would panic the guest; keep serving whoever finds us.
                eprintln!("tether: {e:#}");
                if !args.init {
                    return Err(e);
                }
            }
        }
        tokio::select! {
            Some(r) = serving.join_next() => r.context("listener task")?.map_err(anyhow::Error::from),
            _ = tokio::signal::ctrl_c() => Ok(()),
        }
    })
}

/// Tells the host the agent listens: a connection to `uri` carrying `ready`.
async fn announce(transport: &Transport, uri: &Endpoint) -> Result<()> {
    use tokio::io::AsyncWriteExt;
    let mut s = transport
        .dial(uri)
        .await
        .with_context(|| format!("announcing readiness to {uri}"))?;
    s.write_all(format!("ready {}\n", env!("CARGO_PKG_VERSION")).as_bytes())
        .await?;
    s.shutdown().await?;
    Ok(())
}
