//! Throughput and latency of vhost-device-vsock and, when `TETHER_DEVICE_CMD` names a
//! second backend command (e.g. `"/path/to/tether device"`), of that one too, side by side.
//!
//! ```text
//! cargo bench -p tether-vhost-harness
//! TETHER_DEVICE_CMD="target/release/tether device" cargo bench -p tether-vhost-harness
//! ```
//! A relative program path is taken from the workspace root (cargo runs benches in the
//! package directory). `TETHER_BENCH_QUEUE` sets the queue size (default 128),
//! `TETHER_BENCH_SCALE` multiplies the bytes per cell (e.g. 0.1 for a quick run), and
//! `TETHER_BENCH_ROUNDS` the interleaved rounds whose medians are printed (default 5),
//! `TETHER_BENCH_ROUND_TRIPS` the ping-pong's round trips per round (default 2000).

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
    if let Ok(n) = std::env::var("TETHER_BENCH_ROUND_TRIPS") {
        s.round_trips = n.parse()?;
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
    let rounds: usize = match std::env::var("TETHER_BENCH_ROUNDS") {
        Ok(r) => r.parse()?,
        Err(_) => 5,
    };
    let mut backends = vec![Backend::vhost_device_vsock()?];
    if let Some(cmd) = std::env::var("TETHER_DEVICE_CMD")
        .ok()
        .filter(|c| !c.trim().is_empty())
    {
        backends.push(Backend::from_command_line(&cmd)?);
    }
    // Rounds alternate the backends (and which goes first), so a slow spell of the
    // machine lands on both rather than on one.
    let mut runs: Vec<Vec<bench::BenchReport>> = vec![Vec::new(); backends.len()];
    for round in 0..rounds.max(1) {
        let mut order: Vec<usize> = (0..backends.len()).collect();
        if round % 2 == 1 {
            order.reverse();
        }
        for i in order {
            let b = &backends[i];
            eprintln!("round {}: measuring {} ...", round + 1, b.name());
            let report =
                bench::run(b, &settings).map_err(|e| anyhow::anyhow!("{}: {e}", b.name()))?;
            runs[i].push(report);
        }
    }
    let medians: Vec<_> = runs.iter().filter_map(|r| bench::median(r)).collect();
    let refs: Vec<_> = medians.iter().collect();
    println!(
        "queue size {}, rx buffers {} B, median of {} interleaved rounds\n{}",
        settings.guest.queue_size,
        settings.guest.rx_buffer_size,
        rounds.max(1),
        bench::format_reports(&refs)
    );
    let rigs = backends
        .iter()
        .map(|b| bench::Rig::start(b, &settings))
        .collect::<Result<Vec<_>, _>>()?;
    let slices = 20;
    let latencies =
        bench::ping_pong_interleaved(&rigs, settings.round_trips * rounds.max(1), slices)?;
    println!(
        "1-byte round trips with every backend up, {} each in {slices} slices taken in turn:",
        latencies.first().map_or(0, |l| l.samples)
    );
    for (rig, l) in rigs.iter().zip(&latencies) {
        println!(
            "  {:<28} p50 {:>7.1} us   p99 {:>7.1} us",
            rig.name(),
            l.p50.as_secs_f64() * 1e6,
            l.p99.as_secs_f64() * 1e6
        );
    }
    if let [first, .., last] = &latencies[..] {
        println!(
            "  p50 ratio (first over last): {:.2}x",
            first.p50.as_secs_f64() / last.p50.as_secs_f64()
        );
    }
    drop(rigs);
    println!(
        "ceiling: the bench's host writer alone, into a Unix socket a thread drains \
         (median of {} runs)",
        rounds.max(1)
    );
    for &size in &settings.write_sizes {
        let mut runs = (0..rounds.max(1))
            .map(|_| bench::host_writer_ceiling(size, (settings.bytes_for)(size)))
            .collect::<Result<Vec<f64>, _>>()?;
        runs.sort_by(f64::total_cmp);
        println!("  {size} B writes: {:.2} Gbps", runs[runs.len() / 2]);
    }
    if let [base, .., last] = &runs[..] {
        println!("ratio in each round (last backend over the first; latency inverted):");
        print_round_ratios(base, last);
    }
    Ok(())
}

/// Each cell's ratio per round, to show how far one round can be trusted.
fn print_round_ratios(base: &[bench::BenchReport], other: &[bench::BenchReport]) {
    let Some(first) = base.first() else {
        return;
    };
    for (i, cell) in first.throughput.iter().enumerate() {
        let ratios: Vec<String> = base
            .iter()
            .zip(other)
            .map(|(b, o)| format!("{:.2}", o.throughput[i].gbps() / b.throughput[i].gbps()))
            .collect();
        println!(
            "  {} {} B writes: {}",
            cell.direction,
            cell.write_size,
            ratios.join(" ")
        );
    }
    let p50: Vec<String> = base
        .iter()
        .zip(other)
        .map(|(b, o)| {
            format!(
                "{:.2}",
                b.latency.p50.as_secs_f64() / o.latency.p50.as_secs_f64()
            )
        })
        .collect();
    println!("  1-byte round trip p50: {}", p50.join(" "));
}
