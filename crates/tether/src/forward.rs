//! `tether forward`: a proxy from one endpoint to another.

use crate::config::Config;
use crate::dial::DialArgs;
use anyhow::Result;
use std::sync::Arc;
use std::time::Duration;
use tether_transport::{relay, Endpoint, TransportError};
use tokio::sync::Semaphore;

/// Options of `tether forward`.
#[derive(clap::Args, Debug)]
pub struct Args {
    /// Where to accept connections.
    pub from: Endpoint,
    /// Where to connect each one; without it, the peer from --peer or the config file.
    pub to: Option<Endpoint>,
    #[command(flatten)]
    pub dial: DialArgs,
    /// Connections relayed at once; more wait in the listener's backlog.
    #[arg(long, default_value_t = 4096)]
    pub max_conns: usize,
}

pub async fn run(args: Args, cfg: &Config) -> Result<()> {
    let peer = args.dial.peer(args.to.as_ref(), cfg)?;
    let transport = args.dial.transport(cfg);
    let mut listener = transport.bind(&args.from).await?;
    eprintln!(
        "tether: forwarding {} to {}",
        listener.local_endpoint(),
        peer.endpoints()
            .iter()
            .map(|e| e.to_string())
            .collect::<Vec<_>>()
            .join(" | ")
    );
    let slots = Arc::new(Semaphore::new(args.max_conns.max(1)));
    loop {
        let permit = slots.clone().acquire_owned().await.expect("never closed");
        let mut inbound = match listener.accept().await {
            Ok(s) => s,
            Err(e @ TransportError::Mux { .. }) => return Err(e.into()),
            Err(e) => {
                // Out of descriptors or an aborted handshake: keep serving the rest.
                tracing::warn!("{e}");
                tokio::time::sleep(Duration::from_millis(50)).await;
                continue;
            }
        };
        let transport = transport.clone();
        let peer = peer.clone();
        tokio::spawn(async move {
            let from = inbound.remote().to_string();
            match transport.dial_peer(&peer).await {
                Ok(mut outbound) => match relay::relay(&mut inbound, &mut outbound).await {
                    Ok(n) => tracing::debug!(%from, up = n.a_to_b, down = n.b_to_a, "relayed"),
                    Err(e) => tracing::debug!(%from, "relay ended: {e}"),
                },
                Err(e) => tracing::warn!(%from, "{e}"),
            }
            drop(permit);
        });
    }
}
