//! Replays every input saved from fuzzing the device (`fuzz/regressions/device_chains/`)
//! through the same code the `device_chains` fuzz target runs, so a fixed crash stays
//! fixed without a nightly toolchain. A batch of pseudo-random inputs also runs the
//! interpreter on every test run.

#[path = "support/fuzz_chains.rs"]
mod fuzz_chains;
mod support;

use std::path::PathBuf;
use std::sync::mpsc;
use std::time::Duration;
use tether_testkit::{pseudo_random_inputs, replay};

/// A replay taking longer than this is a hang: the device's loops must terminate.
const HANG: Duration = Duration::from_secs(20);

/// Runs one input on its own thread so that a hang fails the test instead of stalling
/// it (the stuck thread is left behind until the binary exits).
fn replay_bounded(path: &std::path::Path, data: Vec<u8>, run: fn(&[u8])) -> Result<(), String> {
    let (done, outcome) = mpsc::channel();
    std::thread::spawn(move || {
        let result = std::panic::catch_unwind(|| run(&data));
        let _ = done.send(result.is_ok());
    });
    match outcome.recv_timeout(HANG) {
        Ok(true) => Ok(()),
        Ok(false) => Err(format!("{} panics", path.display())),
        Err(_) => Err(format!("{} hangs (no end within {HANG:?})", path.display())),
    }
}

#[test]
fn device_chains_regressions_stay_fixed() {
    let failures: Vec<String> = replay::inputs("device_chains")
        .into_iter()
        .filter_map(|input| replay_bounded(&input.path, input.data, fuzz_chains::run).err())
        .collect();
    assert!(failures.is_empty(), "{failures:#?}");
}

#[test]
fn device_chains_interpreter_survives_pseudo_random_inputs() {
    for (i, input) in pseudo_random_inputs(300, 0xde71_ce5e_ed00, 700).enumerate() {
        let name = format!("pseudo-random input #{i}");
        replay_bounded(std::path::Path::new(&name), input, fuzz_chains::run)
            .unwrap_or_else(|e| panic!("{e}"));
    }
}

/// Runs the input file named by `DEVICE_CHAINS_INPUT` (a crash artifact, say); with
/// `DEVICE_CHAINS_TRACE=1` it prints every action:
/// `DEVICE_CHAINS_TRACE=1 DEVICE_CHAINS_INPUT=path cargo test -p tether-device
/// --test fuzz_regressions -- --ignored --nocapture replay_input_from_env`.
#[test]
#[ignore = "a debugging aid: needs DEVICE_CHAINS_INPUT"]
fn replay_input_from_env() {
    let path = PathBuf::from(std::env::var_os("DEVICE_CHAINS_INPUT").expect("DEVICE_CHAINS_INPUT"));
    let data = std::fs::read(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    replay_bounded(&path, data, fuzz_chains::run).unwrap_or_else(|e| panic!("{e}"));
}
