//! `tether device` through the vhost-user harness: a frontend that plays the guest's
//! virtio-vsock driver over the real vhost-user protocol, with guest memory on a memfd.
//! Every conformance scenario must pass; the reference backend, vhost-device-vsock, runs
//! the same scenarios beside it and the two are printed side by side.

use tether_vhost_harness::scenarios::{self, Settings};
use tether_vhost_harness::Backend;

fn tether_device() -> Backend {
    Backend::command(env!("CARGO_BIN_EXE_tether"), &["device"]).with_name("tether device")
}

#[test]
fn tether_device_passes_every_conformance_scenario_where_the_reference_does_not() {
    let settings = Settings::default();
    let ours = scenarios::run_all(&tether_device(), &settings);
    let reference = Backend::vhost_device_vsock().unwrap_or_else(|e| panic!("{e}"));
    let theirs = scenarios::run_all(&reference, &settings);
    eprintln!("{}", scenarios::format_side_by_side(&theirs, &ours));
    let failed: Vec<String> = scenarios::all()
        .iter()
        .filter_map(|s| ours.get(s.name))
        .filter(|r| !r.passed)
        .map(|r| format!("{}: {}", r.name, r.detail))
        .collect();
    assert!(
        failed.is_empty(),
        "tether device failed:\n{}",
        failed.join("\n")
    );
    assert_eq!(ours.passed(), scenarios::all().len());
    // The harness itself must be able to fail: the reference has known flaws.
    assert!(
        theirs.passed() < ours.passed(),
        "the harness found no difference from vhost-device-vsock"
    );
}
