//! Options shared by the commands that dial: which peer, how patiently.

use crate::config::Config;
use anyhow::{bail, Result};
use std::time::Duration;
use tether_transport::{DialOptions, Endpoint, Peer, Transport};

/// How to reach the peer.
#[derive(clap::Args, Debug, Clone)]
pub struct DialArgs {
    /// An endpoint of the peer; repeat for several (the cheapest reachable wins:
    /// vsock, then hybrid/hyperkit/unix, then mux, then tcp). Replaces `peers` from the
    /// config file.
    #[arg(long = "peer", value_name = "URI")]
    pub peers: Vec<Endpoint>,
    /// Keep retrying this long while the peer refuses (a guest still booting), e.g. 30s.
    #[arg(long, value_name = "DURATION", value_parser = humantime::parse_duration)]
    pub retry: Option<Duration>,
    /// Limit for one connection attempt, including the VMM's handshake [default: 10s].
    #[arg(long, value_name = "DURATION", value_parser = humantime::parse_duration)]
    pub connect_timeout: Option<Duration>,
}

impl DialArgs {
    /// The transport with options from the command line, then the config file.
    pub fn transport(&self, cfg: &Config) -> Transport {
        let mut opts = DialOptions::default();
        if let Some(t) = self.connect_timeout.or(cfg.timeout) {
            opts.timeout = t;
        }
        if let Some(r) = self.retry.or(cfg.retry) {
            opts.retry = r;
        }
        Transport::new(opts)
    }

    /// The peer to dial: `uri` if given, else `--peer`s, else the config's `peers`.
    pub fn peer(&self, uri: Option<&Endpoint>, cfg: &Config) -> Result<Peer> {
        if let Some(u) = uri {
            if !self.peers.is_empty() {
                bail!("give the peer either as a URI argument or with --peer, not both");
            }
            return Ok(Peer::new([u.clone()]));
        }
        if !self.peers.is_empty() {
            return Ok(Peer::new(self.peers.clone()));
        }
        let from_file = cfg.peer_endpoints();
        if from_file.is_empty() {
            bail!("no peer: give a URI, --peer URI, or `peers = [...]` in the config file");
        }
        Ok(Peer::new(from_file))
    }
}
