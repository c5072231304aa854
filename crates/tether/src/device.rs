//! `tether device`: the vhost-user-vsock backend for QEMU.

use anyhow::{Context, Result};
use nix::sys::signal::{SigSet, Signal};
use std::path::PathBuf;
use tether_device::DeviceConfig;

/// Options of `tether device` (spelled like vhost-device-vsock's, so it drops in).
#[derive(clap::Args, Debug)]
pub struct Args {
    /// The vhost-user socket QEMU connects to (`-chardev socket,path=...`).
    #[arg(long, value_name = "PATH")]
    pub socket: PathBuf,
    /// The hybrid vsock socket on the host: clients write `CONNECT <port>\n` here, and
    /// guest connections to host port P reach `<PATH>_P`.
    #[arg(long, value_name = "PATH")]
    pub uds_path: PathBuf,
    /// The guest's context id.
    #[arg(long, default_value_t = 3)]
    pub guest_cid: u64,
    /// Largest virtqueue size accepted (QEMU's PCI device uses 128, mmio 1024).
    #[arg(long, default_value_t = 1024, value_parser = clap::value_parser!(u16).range(1..=32768))]
    pub queue_size: u16,
    /// Live connections at most; further ones are refused.
    #[arg(long, default_value_t = 1023)]
    pub max_connections: usize,
}

pub fn run(args: Args) -> Result<()> {
    let mut config = DeviceConfig::new(args.socket, args.uds_path, args.guest_cid);
    config.queue_size = args.queue_size;
    config.max_connections = args.max_connections;
    remove_sockets_on_signal(&config)?;
    tether_device::serve(config).context("tether device")
}

/// SIGINT and SIGTERM remove both socket files before exiting, so a restarted device
/// binds cleanly and no client dials a dead path.
fn remove_sockets_on_signal(config: &DeviceConfig) -> Result<()> {
    let mut set = SigSet::empty();
    set.add(Signal::SIGINT);
    set.add(Signal::SIGTERM);
    // Blocked here, before any other thread starts, so every thread inherits the mask and
    // only the waiter below takes these signals.
    set.thread_block().context("blocking SIGINT/SIGTERM")?;
    let paths = [config.socket.clone(), config.uds_path.clone()];
    std::thread::Builder::new()
        .name("signals".into())
        .spawn(move || {
            if let Ok(signal) = set.wait() {
                for path in &paths {
                    let _ = std::fs::remove_file(path);
                }
                std::process::exit(128 + signal as i32);
            }
        })
        .context("starting the signal thread")?;
    Ok(())
}
