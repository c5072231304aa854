//! Replays every input saved from fuzzing (`fuzz/regressions/<target>/`) through the same
//! code the fuzz targets run, so a fixed crash stays fixed without a nightly toolchain.
//! A batch of pseudo-random inputs also runs the interpreters on every test run.

#[path = "support/fuzz_engine.rs"]
mod fuzz_engine;
#[path = "support/fuzz_header.rs"]
mod fuzz_header;

use tether_testkit::{pseudo_random_inputs, replay};

#[test]
fn engine_regressions_stay_fixed() {
    replay::each_input("engine", fuzz_engine::run);
}

#[test]
fn header_regressions_stay_fixed() {
    replay::each_input("header", fuzz_header::run);
}

#[test]
fn engine_interpreter_survives_pseudo_random_inputs() {
    for input in pseudo_random_inputs(3000, 0x7e7e_5eed, 600) {
        fuzz_engine::run(&input);
    }
}

#[test]
fn header_target_survives_pseudo_random_inputs() {
    for input in pseudo_random_inputs(3000, 0x4ead_e500, 600) {
        fuzz_header::run(&input);
    }
    fuzz_header::run(&[]);
    fuzz_header::run(&[0xff; 44]);
}
