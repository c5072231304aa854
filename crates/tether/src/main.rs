//! The tether command line: thin argument parsing over the tether crates.

use clap::{Parser, Subcommand};
use std::process::ExitCode;

mod demo;

/// Talk to virtual machines over vsock.
#[derive(Parser)]
#[command(
    name = "tether",
    version,
    about,
    after_help = "Examples:\n  \
        tether demo                       run both ends of a mux link in-process and report figures\n  \
        tether demo --link pty --conns 32 the same over a pseudo-terminal in raw mode, like a serial port"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Run a host and a guest mux end over one link in this process: concurrent echo
    /// connections with checksums and half-close, then throughput and round-trip figures.
    Demo(demo::Args),
}

fn main() -> ExitCode {
    tracing_subscriber::fmt()
        .with_env_filter(tracing_subscriber::EnvFilter::from_env("TETHER_LOG"))
        .with_writer(std::io::stderr)
        .init();
    let cli = Cli::parse();
    let result = match cli.command {
        Command::Demo(args) => demo::run(args),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("tether: {e:#}");
            ExitCode::FAILURE
        }
    }
}
