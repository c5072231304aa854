//! `tether cat`: stdin and stdout to an endpoint.

use crate::config::Config;
use crate::dial::DialArgs;
use anyhow::Result;
use tether_transport::Endpoint;

/// Options of `tether cat`.
#[derive(clap::Args, Debug)]
pub struct Args {
    /// Where to connect; without it, the peer from --peer or the config file.
    pub uri: Option<Endpoint>,
    #[command(flatten)]
    pub dial: DialArgs,
}

pub async fn run(args: Args, cfg: &Config) -> Result<()> {
    let peer = args.dial.peer(args.uri.as_ref(), cfg)?;
    let stream = args.dial.transport(cfg).dial_peer(&peer).await?;
    tracing::debug!(remote = %stream.remote(), "connected");
    crate::stdio::join(stream).await
}
