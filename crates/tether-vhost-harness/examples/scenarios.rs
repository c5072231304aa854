//! Runs the conformance scenarios against vhost-device-vsock and, when given, a second
//! backend command, and prints the two side by side.
//!
//! ```text
//! cargo run --release -p tether-vhost-harness --example scenarios -- ["/path/to/tether device"] [--only NAME,NAME]
//! ```
//! `TETHER_DEVICE_CMD` works instead of the positional command.

use tether_vhost_harness::scenarios::{self, Settings};
use tether_vhost_harness::Backend;

fn main() -> anyhow::Result<()> {
    let mut args = std::env::args().skip(1);
    let mut other = std::env::var("TETHER_DEVICE_CMD").ok();
    let mut only: Option<Vec<String>> = None;
    while let Some(a) = args.next() {
        if a == "--only" {
            only = args
                .next()
                .map(|s| s.split(',').map(str::to_owned).collect());
        } else {
            other = Some(a);
        }
    }
    let chosen: Vec<_> = scenarios::all()
        .into_iter()
        .filter(|s| only.as_ref().is_none_or(|o| o.iter().any(|n| n == s.name)))
        .collect();
    let settings = Settings::default();
    let mut backends = vec![Backend::vhost_device_vsock()?];
    if let Some(cmd) = other.filter(|c| !c.trim().is_empty()) {
        backends.push(Backend::from_command_line(&cmd)?);
    }
    let tables: Vec<_> = backends
        .iter()
        .map(|b| {
            scenarios::run_some(&chosen, b, &settings, |r| {
                let mark = if r.passed { "pass" } else { "FAIL" };
                eprintln!("[{}] {} {mark} ({:?})", b.name(), r.name, r.elapsed);
            })
        })
        .collect();
    let refs: Vec<_> = tables.iter().collect();
    println!("{}", scenarios::format_tables(&refs));
    Ok(())
}
