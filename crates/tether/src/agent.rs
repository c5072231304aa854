//! `tether agent`: the agent's shared flags (`tether_agent::cli`), with the config file's
//! `[agent]` table filling what the command line leaves out.

use crate::config::Config;
use anyhow::Result;
use std::path::Path;
use tether_agent::cli::Args;
use tether_transport::Endpoint;

pub fn run(mut args: Args, config: Option<&Path>) -> Result<()> {
    let cfg = Config::load(config)?;
    if args.listen.is_empty() {
        args.listen = match cfg.agent.listen.is_empty() {
            false => cfg.agent.listen_endpoints(),
            true => vec![Endpoint::Vsock {
                cid: None,
                port: cfg
                    .vsock_listen_port
                    .unwrap_or(tether_agent::cli::DEFAULT_PORT),
            }],
        };
    }
    if args.token_file.is_none() {
        args.token_file = cfg.agent.token_file.clone();
    }
    if args.allow_cids.is_empty() {
        args.allow_cids = cfg.agent.allow_cids.clone();
    }
    if args.allow_connect.is_empty() {
        args.allow_connect = cfg.agent.connect_patterns();
    }
    if args.allow_listen.is_empty() {
        args.allow_listen = cfg.agent.listen_patterns();
    }
    if args.root.is_none() {
        args.root = cfg.agent.root.clone();
    }
    Ok(tether_agent::cli::run(args)?)
}
