//! Throughput and latency of vhost-device-vsock and, when `TETHER_DEVICE_CMD` names a
//! second backend command (e.g. `"/path/to/tether device"`), of that one too, side by side.
//!
//! ```text
//! cargo bench -p tether-vhost-harness
//! TETHER_DEVICE_CMD="target/release/tether device" cargo bench -p tether-vhost-harness
//! ```
//! A relative program path is taken from the workspace root (cargo runs benches in the
//! package directory). `TETHER_BENCH_QUEUE` sets the queue size (default 128), `TETHER_BENCH_SCALE` multiplies
//! the bytes per cell (e.g. 0.1 for a quick run).

use std::time::Duration;
use tether_vhost_harness::bench::{self, BenchSettings};
use tether_vhost_harness::Backend;

fn settings() -> anyhow::Result<BenchSettings> {
    let mut s = BenchSettings::default();
    if let Ok(q) = std::env::var("TETHER_BENCH_QUEUE") {
        s.guest.queue_size = q.parse()?;
    }
    if let Ok(scale) = std::env::var("TETHER_BENCH_SCALE") {
        let scale: f64 = scale.parse()?;
        SCALE.set(scale).ok();
        s.bytes_for = |size| {
            let bytes = bench::default_bytes_for(size) as f64 * SCALE.get().copied().unwrap_or(1.0);
            (bytes as usize).max(size)
        };
        s.round_trips = ((s.round_trips as f64 * scale) as usize).max(10);
    }
    s.guest.io_timeout = Duration::from_secs(30);
    Ok(s)
}

static SCALE: std::sync::OnceLock<f64> = std::sync::OnceLock::new();

fn main() -> anyhow::Result<()> {
    // `cargo bench` runs in the package directory; paths in TETHER_DEVICE_CMD are meant
    // from the workspace root, where the command is typed.
    std::env::set_current_dir(concat!(env!("CARGO_MANIFEST_DIR"), "/../.."))?;
    let settings = settings()?;
    let mut backends = vec![Backend::vhost_device_vsock()?];
    if let Some(cmd) = std::env::var("TETHER_DEVICE_CMD")
        .ok()
        .filter(|c| !c.trim().is_empty())
    {
        backends.push(Backend::from_command_line(&cmd)?);
    }
    let mut reports = Vec::new();
    for b in &backends {
        eprintln!("measuring {} ...", b.name());
        reports.push(bench::run(b, &settings).map_err(|e| anyhow::anyhow!("{}: {e}", b.name()))?);
    }
    let refs: Vec<_> = reports.iter().collect();
    println!(
        "queue size {}, rx buffers {} B\n{}",
        settings.guest.queue_size,
        settings.guest.rx_buffer_size,
        bench::format_reports(&refs)
    );
    Ok(())
}
