//! `tether-agent`: the guest agent on its own, a small static binary for a guest's root
//! filesystem. The same flags as `tether agent` (without its config file):
//!
//! ```text
//! tether-agent --listen vsock://:1024
//! tether-agent --init --listen vsock://:1024 --ready vsock://2:1023   # as PID 1
//! ```
//!
//! Build it small and static with `scripts/build-agent`, which links musl
//! (`cargo build --profile agent --target x86_64-unknown-linux-musl -p tether-agent
//! --features cli`).

use clap::Parser;
use std::process::ExitCode;

/// The tether guest agent: runs commands, copies files and forwards ports for tether
/// clients on the host.
#[derive(Parser, Debug)]
#[command(name = "tether-agent", version, after_help = EXAMPLES)]
struct Cli {
    #[command(flatten)]
    args: tether_agent::cli::Args,
}

const EXAMPLES: &str = "Examples:
  tether-agent --listen vsock://:1024
  tether-agent --listen unix:///run/tether.sock --root /srv/exchange
  tether-agent --listen tcp://0.0.0.0:1024 --token-file /etc/tether/token
  tether-agent --init --listen vsock://:1024 --ready vsock://2:1023    (as PID 1)";

fn main() -> ExitCode {
    match tether_agent::cli::run(Cli::parse().args) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("tether-agent: {e}");
            ExitCode::FAILURE
        }
    }
}
