//! The config file: defaults the command line can override.
//!
//! Looked up at `--config FILE`, else `$TETHER_CONFIG`, else
//! `$XDG_CONFIG_HOME/tether/config.toml` (or `~/.config/tether/config.toml`) when it exists.
//! Keys (all optional; see docs/config.md):
//!
//! ```toml
//! peers = ["vsock://3:1024", "tcp://10.0.0.5:1024"]  # endpoints of the default peer
//! vsock_listen_port = 1024                          # `tether listen` with no URI
//! timeout = "10s"                                   # one dial attempt
//! retry = "30s"                                     # keep retrying a refusing peer
//!
//! [agent]                                           # `tether agent`
//! allow_connect = ["tcp://127.0.0.1:*"]             # where clients may forward to
//! allow_listen = ["tcp://127.0.0.1:5432"]           # where clients may listen
//! ```

use anyhow::{Context, Result};
use serde::Deserialize;
use std::path::{Path, PathBuf};
use std::time::Duration;
use tether_agent::Pattern;
use tether_transport::Endpoint;

/// The file's contents.
#[derive(Debug, Default, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct Config {
    /// Endpoints of the default peer, in any order (dialing orders them by cost).
    #[serde(default)]
    pub peers: Vec<String>,
    /// The vsock port `tether listen` uses when no URI is given.
    pub vsock_listen_port: Option<u32>,
    /// One dial attempt's limit, e.g. "10s".
    #[serde(default, with = "humantime_serde_opt")]
    pub timeout: Option<Duration>,
    /// How long to retry a refusing peer, e.g. "30s".
    #[serde(default, with = "humantime_serde_opt")]
    pub retry: Option<Duration>,
    /// `tether agent`'s settings.
    #[serde(default)]
    pub agent: AgentSection,
}

/// The `[agent]` table.
#[derive(Debug, Default, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct AgentSection {
    /// Endpoints to listen on.
    #[serde(default)]
    pub listen: Vec<String>,
    /// The shared token's file.
    pub token_file: Option<PathBuf>,
    /// CIDs allowed to connect over vsock or a mux.
    #[serde(default)]
    pub allow_cids: Vec<u64>,
    /// The directory file copies are confined beneath (`tether agent --root`).
    pub root: Option<PathBuf>,
    /// Guest destinations clients may forward to (patterns like `tcp://127.0.0.1:*`).
    #[serde(default)]
    pub allow_connect: Vec<String>,
    /// Guest addresses clients may listen on, in the same form.
    #[serde(default)]
    pub allow_listen: Vec<String>,
}

impl AgentSection {
    /// The listen endpoints, parsed.
    pub fn listen_endpoints(&self) -> Vec<Endpoint> {
        self.listen
            .iter()
            .map(|p| p.parse().expect("checked at load"))
            .collect()
    }

    /// `allow_connect`, parsed.
    pub fn connect_patterns(&self) -> Vec<Pattern> {
        patterns(&self.allow_connect)
    }

    /// `allow_listen`, parsed.
    pub fn listen_patterns(&self) -> Vec<Pattern> {
        patterns(&self.allow_listen)
    }
}

fn patterns(texts: &[String]) -> Vec<Pattern> {
    texts
        .iter()
        .map(|p| p.parse().expect("checked at load"))
        .collect()
}

impl Config {
    /// Reads the config named by `explicit`, or the default one when it exists.
    pub fn load(explicit: Option<&Path>) -> Result<Config> {
        let path = match explicit {
            Some(p) => p.to_path_buf(),
            None => match default_path() {
                Some(p) if p.exists() => p,
                _ => return Ok(Config::default()),
            },
        };
        let text = std::fs::read_to_string(&path)
            .with_context(|| format!("reading config file {}", path.display()))?;
        Config::parse(&text).with_context(|| format!("in config file {}", path.display()))
    }

    /// Parses a config file's text.
    pub fn parse(text: &str) -> Result<Config> {
        let cfg: Config = toml::from_str(text)?;
        for p in &cfg.peers {
            p.parse::<Endpoint>().context("in `peers`")?;
        }
        for p in &cfg.agent.listen {
            p.parse::<Endpoint>().context("in `[agent] listen`")?;
        }
        for p in &cfg.agent.allow_connect {
            p.parse::<Pattern>().context("in `[agent] allow_connect`")?;
        }
        for p in &cfg.agent.allow_listen {
            p.parse::<Pattern>().context("in `[agent] allow_listen`")?;
        }
        Ok(cfg)
    }

    /// The peers' endpoints, parsed.
    pub fn peer_endpoints(&self) -> Vec<Endpoint> {
        self.peers
            .iter()
            .map(|p| p.parse().expect("checked at load"))
            .collect()
    }
}

fn default_path() -> Option<PathBuf> {
    let base = std::env::var_os("XDG_CONFIG_HOME")
        .map(PathBuf::from)
        .or_else(|| std::env::var_os("HOME").map(|h| PathBuf::from(h).join(".config")))?;
    Some(base.join("tether").join("config.toml"))
}

mod humantime_serde_opt {
    use serde::{Deserialize, Deserializer};
    use std::time::Duration;

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Option<Duration>, D::Error> {
        let s = String::deserialize(d)?;
        humantime::parse_duration(&s).map(Some).map_err(|e| {
            serde::de::Error::custom(format!("`{s}` is not a duration like \"10s\": {e}"))
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_key_parses() {
        let cfg = Config::parse(
            "peers = [\"vsock://3:1024\", \"tcp://127.0.0.1:9\"]\n\
             vsock_listen_port = 1024\ntimeout = \"2s\"\nretry = \"1m\"\n",
        )
        .unwrap();
        assert_eq!(cfg.peers.len(), 2);
        assert_eq!(cfg.vsock_listen_port, Some(1024));
        assert_eq!(cfg.timeout, Some(Duration::from_secs(2)));
        assert_eq!(cfg.retry, Some(Duration::from_secs(60)));
    }

    #[test]
    fn agent_forwarding_patterns_parse_and_bad_ones_are_named() {
        let cfg = Config::parse(
            "[agent]\nallow_connect = [\"tcp://127.0.0.1:*\", \"unix:///run/app.sock\"]\n\
             allow_listen = [\"tcp://127.0.0.1:5432\"]\n",
        )
        .unwrap();
        let connect = cfg.agent.connect_patterns();
        assert!(connect[0].matches(&"tcp://127.0.0.1:80".parse().unwrap()));
        assert!(connect[1].matches(&"unix:///run/app.sock".parse().unwrap()));
        assert_eq!(
            cfg.agent.listen_patterns()[0].to_string(),
            "tcp://127.0.0.1:5432"
        );
        let e = format!(
            "{:#}",
            Config::parse("[agent]\nallow_listen = [\"hybrid:///v.sock:*\"]").unwrap_err()
        );
        assert!(e.contains("allow_listen") && e.contains("hybrid"), "{e}");
    }

    #[test]
    fn the_agent_root_is_a_path() {
        let cfg = Config::parse("[agent]\nroot = \"/srv/exchange\"\n").unwrap();
        assert_eq!(cfg.agent.root, Some(PathBuf::from("/srv/exchange")));
        assert_eq!(Config::parse("").unwrap().agent.root, None);
    }

    #[test]
    fn unknown_keys_bad_peers_and_bad_durations_are_named() {
        let e = format!("{:#}", Config::parse("peer = []").unwrap_err());
        assert!(e.contains("unknown field `peer`"), "{e}");
        let e = format!("{:#}", Config::parse("peers = [\"vsock:3\"]").unwrap_err());
        assert!(e.contains("vsock:3") && e.contains("peers"), "{e}");
        let e = format!("{:#}", Config::parse("retry = \"soon\"").unwrap_err());
        assert!(e.contains("soon"), "{e}");
    }
}
