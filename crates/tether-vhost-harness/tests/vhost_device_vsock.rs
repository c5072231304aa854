//! The conformance scenarios against the installed rust-vmm reference backend,
//! vhost-device-vsock: what it does right is asserted to pass; for its known flaws the
//! scenario must name the flaw (a fixed release would pass them, which is fine too).

use std::sync::Mutex;
use std::time::Duration;
use tether_vhost_harness::scenarios::{self, ScenarioResult, Settings};
use tether_vhost_harness::Backend;

/// Scenarios run one at a time: several open a thousand connections or measure timing,
/// and the machine may have two cores.
static SERIAL: Mutex<()> = Mutex::new(());

fn backend() -> Backend {
    // Fails (never skips) with the install hint when the binary is missing.
    Backend::vhost_device_vsock().unwrap_or_else(|e| panic!("{e}"))
}

fn run(name: &str) -> ScenarioResult {
    let _serial = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
    let scenario = scenarios::by_name(name).unwrap_or_else(|| panic!("no scenario {name}"));
    let r = scenarios::run(&scenario, &backend(), &Settings::default());
    eprintln!(
        "{name}: {} in {:?}: {}",
        if r.passed { "pass" } else { "FAIL" },
        r.elapsed,
        r.detail
    );
    assert!(
        r.elapsed < Duration::from_secs(30),
        "{name} took {:?}",
        r.elapsed
    );
    r
}

fn passes(name: &str) -> ScenarioResult {
    let r = run(name);
    assert!(r.passed, "{name} failed: {}", r.detail);
    r
}

/// A known flaw: passing is fine (a newer release), failing must be for that reason.
fn flaw(name: &str, reason: &str) {
    let r = run(name);
    if !r.passed {
        assert!(
            r.detail.contains(reason),
            "{name} failed, but not for the known reason {reason:?}: {}",
            r.detail
        );
    }
}

#[test]
fn host_to_guest_connect_carries_data_both_ways() {
    let r = passes("host-connect");
    assert!(r.detail.contains("`OK "), "{}", r.detail);
    assert!(r.detail.contains("1 MiB each way intact"), "{}", r.detail);
}

#[test]
fn guest_to_host_connect_carries_data_both_ways() {
    let r = passes("guest-connect");
    assert!(r.detail.contains("1 MiB each way intact"), "{}", r.detail);
}

#[test]
fn refused_host_connect_closes_the_socket() {
    passes("host-connect-refused");
}

#[test]
fn credit_exhaustion_recovers_without_loss() {
    let r = passes("credit-recovery");
    assert!(r.detail.contains("read intact"), "{}", r.detail);
}

#[test]
fn host_data_arrives_in_large_packets() {
    passes("packet-sizes");
}

#[test]
fn a_thousand_and_twenty_three_host_connections() {
    passes("many-host-connections");
}

#[test]
fn a_thousand_and_twenty_three_guest_connections() {
    passes("many-guest-connections");
}

#[test]
fn a_second_frontend_is_served() {
    passes("reconnect");
    passes("reconnect-after-crash");
}

#[test]
fn split_layouts_and_large_queues_work() {
    passes("rx-split-layout");
    passes("tx-split-layout");
    passes("queue-size-1024");
}

#[test]
fn malformed_packets_leave_the_backend_serving() {
    for name in [
        "malformed-bad-op",
        "malformed-bad-type",
        "malformed-len-beyond-chain",
        "malformed-len-over-max",
        "malformed-wrong-src-cid",
        "malformed-short-chain",
    ] {
        let r = run(name);
        // 0.3.0 drops chains it cannot parse without returning them: that fails the
        // scenario, but service must go on either way.
        assert!(r.detail.contains("still serving"), "{name}: {}", r.detail);
        assert!(
            r.detail.contains("RST") || r.detail.contains("dropped"),
            "{name} must say whether it was answered: {}",
            r.detail
        );
    }
}

#[test]
fn malformed_data_never_reaches_the_host_beyond_the_chain() {
    let r = run("malformed-len-beyond-chain");
    assert!(!r.detail.contains("more than the"), "{}", r.detail);
}

#[test]
fn connection_bound_probe_reports_and_service_continues() {
    let r = run("connection-limit");
    assert!(r.detail.contains("serving"), "{}", r.detail);
}

#[test]
fn known_flaws_are_reported_as_such() {
    flaw("host-port", "below 2^30");
    flaw("connect-with-data", "swallowed");
    flaw("guest-connect-refused", "no RST");
    flaw("half-close-host", "SHUTDOWN(3)");
    flaw("half-close-guest", "no EOF");
    flaw("tx-scattered-layout", "tx chains still with the device");
}
