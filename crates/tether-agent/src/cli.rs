//! The agent's command line, shared by `tether agent` and the standalone `tether-agent`
//! binary (feature `cli`): the flags, and serving on every listener until interrupted.

use crate::{Agent, AgentConfig, AgentError, Pattern};
use std::path::PathBuf;
use std::time::Duration;
use tether_transport::{DialOptions, Endpoint, Transport};

/// The agent's flags.
#[derive(clap::Args, Debug, Default)]
pub struct Args {
    /// Where to accept clients; repeat for several [default: vsock://:1024; `tether
    /// agent` first looks at `[agent] listen` in its config file].
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
    /// none, paths as given].
    #[arg(long, value_name = "DIR")]
    pub root: Option<PathBuf>,
    /// A guest destination clients may forward to (`tether forward --via`): an endpoint
    /// URI whose port may be `*`, e.g. 'tcp://127.0.0.1:*' or unix:///run/app.sock; repeat
    /// for several [default: none].
    #[arg(long = "allow-connect", value_name = "URI")]
    pub allow_connect: Vec<Pattern>,
    /// A guest address clients may listen on (`tether forward --via --reverse`), in the
    /// same form; repeat for several [default: none].
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

/// The port the agent listens on over vsock when told nothing else.
pub const DEFAULT_PORT: u32 = 1024;

/// Sets the guest up when `args.init` asks, then serves on every `--listen` endpoint
/// (vsock://:1024 when none) until one listener fails for good or SIGINT arrives. Runs its
/// own single-threaded runtime: an agent is mostly idle, and meant to stay small.
pub fn run(args: Args) -> Result<(), AgentError> {
    if args.init {
        crate::init::setup().map_err(AgentError::Init)?;
    }
    let token = match &args.token_file {
        Some(f) => Some(tether_proto::read_token_file(f).map_err(AgentError::Token)?),
        None => None,
    };
    let listen = match args.listen.is_empty() {
        true => vec![Endpoint::Vsock {
            cid: None,
            port: DEFAULT_PORT,
        }],
        false => args.listen,
    };
    // Refused before anything is bound, so no "listening" line ever claims otherwise.
    if let (None, Some(tcp)) = (
        &token,
        listen.iter().find(|ep| matches!(ep, Endpoint::Tcp { .. })),
    ) {
        return Err(AgentError::TcpWithoutToken(tcp.to_string()));
    }
    let config = AgentConfig {
        token,
        allow_cids: match args.allow_cids.is_empty() {
            true => vec![2],
            false => args.allow_cids,
        },
        allow_connect: args.allow_connect,
        allow_listen: args.allow_listen,
        root: args.root,
    };
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    rt.block_on(serve_all(config, listen, args.init, args.ready))
}

async fn serve_all(
    config: AgentConfig,
    listen: Vec<Endpoint>,
    init: bool,
    ready: Option<Endpoint>,
) -> Result<(), AgentError> {
    let agent = Agent::new(config)?;
    // One transport for listening and announcing: a serial port opens only once, so both
    // must share its mux link. Its retry window is the announcement's patience.
    let transport = Transport::new(DialOptions {
        retry: Duration::from_secs(30),
        ..Default::default()
    });
    let mut serving = tokio::task::JoinSet::new();
    for ep in &listen {
        if let (true, Endpoint::MuxSerial { device, .. }) = (init, ep) {
            // As init the agent starts before the guest's serial ports exist.
            let device = device.clone();
            let limit = Duration::from_secs(30);
            let _ =
                tokio::task::spawn_blocking(move || crate::init::wait_for_device(&device, limit))
                    .await;
        }
        let listener = transport.bind(ep).await?;
        eprintln!("tether: agent listening on {}", listener.local_endpoint());
        let agent = agent.clone();
        serving.spawn(async move { agent.serve(listener).await });
    }
    if let Some(ready) = &ready {
        if let Err(e) = announce(&transport, ready).await {
            // As init, exiting would panic the guest; keep serving whoever finds us.
            eprintln!("tether: {e}");
            if !init {
                return Err(e);
            }
        }
    }
    tokio::select! {
        Some(r) = serving.join_next() => r.unwrap_or_else(|e| Err(AgentError::Setup(std::io::Error::other(e)))),
        _ = tokio::signal::ctrl_c() => Ok(()),
    }
}

/// Tells the host the agent listens: a connection to `uri` carrying `ready`.
async fn announce(transport: &Transport, uri: &Endpoint) -> Result<(), AgentError> {
    use tokio::io::AsyncWriteExt;
    let failed = |detail: String| AgentError::Announce {
        uri: uri.to_string(),
        detail,
    };
    let mut s = transport
        .dial(uri)
        .await
        .map_err(|e| failed(e.to_string()))?;
    let line = format!("ready {}\n", env!("CARGO_PKG_VERSION"));
    let sent = async {
        s.write_all(line.as_bytes()).await?;
        s.shutdown().await
    };
    sent.await.map_err(|e| failed(e.to_string()))
}
