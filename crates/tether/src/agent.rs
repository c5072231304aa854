//! `tether agent`: serve commands to clients on one or more endpoints.

use crate::config::Config;
use anyhow::{Context, Result};
use std::path::{Path, PathBuf};
use tether_agent::{Agent, AgentConfig, Pattern};
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
    /// Confine file copies (`tether cp`) beneath DIR, which clients then see as `/`: no
    /// `..`, absolute path or symlink leads out of it (openat2 RESOLVE_BENEATH) [default:
    /// `[agent] root` from the config file, else none: paths as given].
    #[arg(long, value_name = "DIR")]
    pub root: Option<PathBuf>,
    /// A guest destination clients may forward to (`tether forward --via`): an endpoint
    /// URI whose port may be `*`, e.g. 'tcp://127.0.0.1:*' or unix:///run/app.sock; repeat
    /// for several [default: `[agent] allow_connect` from the config file, else none].
    #[arg(long = "allow-connect", value_name = "URI")]
    pub allow_connect: Vec<Pattern>,
    /// A guest address clients may listen on (`tether forward --via --reverse`), in the
    /// same form; repeat for several [default: `[agent] allow_listen`, else none].
    #[arg(long = "allow-listen", value_name = "URI")]
    pub allow_listen: Vec<Pattern>,
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
    let allow_connect = or_config(args.allow_connect, cfg.agent.connect_patterns());
    let allow_listen = or_config(args.allow_listen, cfg.agent.listen_patterns());
    let root = args.root.or(cfg.agent.root.clone());
    // One thread: an agent is mostly idle, and small (DESIGN.md: ≤ 2 MiB resident).
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    rt.block_on(async move {
        let agent = Agent::new(AgentConfig {
            token,
            allow_cids,
            allow_connect,
            allow_listen,
            root,
        })?;
        // One transport for listening and announcing: a serial port opens only once, so
        // both must share its mux link. Its retry window is the announcement's patience.
        let transport = Transport::new(tether_transport::DialOptions {
            retry: std::time::Duration::from_secs(30),
            ..Default::default()
        });
        let mut serving = tokio::task::JoinSet::new();
        for ep in &listen {
            if let (true, Endpoint::MuxSerial { device, .. }) = (args.init, ep) {
                // As init the agent starts before the guest's serial ports exist.
                let device = device.clone();
                let limit = std::time::Duration::from_secs(30);
                tokio::task::spawn_blocking(move || {
                    tether_agent::init::wait_for_device(&device, limit)
                })
                .await?;
            }
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

/// The command line's list when it gives one, else the config file's.
fn or_config(flags: Vec<Pattern>, file: Vec<Pattern>) -> Vec<Pattern> {
    if flags.is_empty() {
        file
    } else {
        flags
    }
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
