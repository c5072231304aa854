//! Replays the inputs kept under fuzz/regressions/mux_link through the fuzz target's
//! body, so every crash ever found stays fixed without a nightly toolchain.

use tether_testkit::{pseudo_random_inputs, replay};

#[path = "support/fuzz_mux_link.rs"]
mod fuzz_mux_link;

#[test]
fn mux_link_regressions_and_seeds() {
    replay::each_input("mux_link", fuzz_mux_link::run);
}

#[test]
fn mux_link_generated_inputs() {
    // A deterministic spread of inputs, beyond the kept ones.
    for input in pseudo_random_inputs(400, 0x2545_f491_4f6c_dd1d, 400 * 13) {
        fuzz_mux_link::run(&input);
    }
}

#[path = "support/fuzz_endpoint.rs"]
mod fuzz_endpoint;

#[test]
fn endpoint_regressions_and_seeds() {
    replay::each_input("endpoint", fuzz_endpoint::run);
}
