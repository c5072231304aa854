//! `tether ping`: connect to the agent and time PING/PONG round trips.

use crate::config::Config;
use crate::exec::AgentArgs;
use anyhow::Result;
use std::process::ExitCode;
use std::time::Duration;
use tether_transport::Endpoint;

/// Options of `tether ping`.
#[derive(clap::Args, Debug)]
pub struct Args {
    /// The agent's endpoint; without it, the peer from --peer or the config file.
    pub uri: Option<Endpoint>,
    /// Round trips to time.
    #[arg(short, long, default_value_t = 10, value_parser = clap::value_parser!(u32).range(1..))]
    pub count: u32,
    /// Bytes in each PING.
    #[arg(short, long, value_name = "BYTES", default_value_t = 64,
          value_parser = clap::value_parser!(u32).range(0..=1 << 20))]
    pub size: u32,
    /// Print one JSON object instead of text.
    #[arg(long)]
    pub json: bool,
    #[command(flatten)]
    pub agent: AgentArgs,
}

pub async fn run(args: Args, cfg: &Config) -> Result<ExitCode> {
    let client = args.agent.client(args.uri.as_ref(), cfg)?;
    let mut pinger = client.pinger().await?;
    let stats = pinger
        .round_trips(args.count as usize, args.size as usize)
        .await?;
    let us = |d: Option<Duration>| {
        let d = d.unwrap_or_default();
        (d.as_secs_f64() * 1e7).round() / 10.0
    };
    let (min, p50, p99, max) = (
        us(stats.min()),
        us(stats.p50()),
        us(stats.p99()),
        us(stats.max()),
    );
    if args.json {
        let v = serde_json::json!({
            "remote": pinger.remote().to_string(),
            "connect_us": us(Some(stats.connect)),
            "count": stats.round_trips.len(),
            "payload_bytes": stats.payload_len,
            "min_us": min,
            "p50_us": p50,
            "p99_us": p99,
            "max_us": max,
            "mean_us": us(stats.mean()),
        });
        println!("{v}");
    } else {
        println!(
            "connected to {} in {} µs",
            pinger.remote(),
            us(Some(stats.connect))
        );
        println!(
            "{} round trips of {} bytes: min {min} µs, p50 {p50} µs, p99 {p99} µs, max {max} µs",
            stats.round_trips.len(),
            stats.payload_len
        );
    }
    Ok(ExitCode::SUCCESS)
}
