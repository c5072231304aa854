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
}

pub fn run(args: Args, config: Option<&Path>) -> Result<()> {
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
        let transport = Transport::default();
        let mut serving = tokio::task::JoinSet::new();
        for ep in &listen {
            let listener = transport.bind(ep).await?;
            eprintln!("tether: agent listening on {}", listener.local_endpoint());
            let agent = agent.clone();
            serving.spawn(async move { agent.serve(listener).await });
        }
        tokio::select! {
            Some(r) = serving.join_next() => r.context("listener task")?.map_err(anyhow::Error::from),
            _ = tokio::signal::ctrl_c() => Ok(()),
        }
    })
}
