//! The vhost-user-vsock device driven by a misbehaving guest driver and host clients:
//! arbitrary descriptor chains on both queues, plausible and broken packets, hybrid
//! CONNECT lines, host reads, writes and closes.
#![no_main]

use libfuzzer_sys::fuzz_target;

// The fake driver and the action interpreter, also run by tether-device's stable tests
// (`tests/fuzz_regressions.rs`). The interpreter finds the driver at `crate::support`.
#[path = "../../crates/tether-device/tests/support/fuzz_chains.rs"]
mod fuzz_chains;
#[path = "../../crates/tether-device/tests/support/mod.rs"]
mod support;

fuzz_target!(|data: &[u8]| fuzz_chains::run(data));
