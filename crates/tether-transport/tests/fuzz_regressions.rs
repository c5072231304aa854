//! Replays the inputs kept under fuzz/regressions/mux_link through the fuzz target's
//! body, so every crash ever found stays fixed without a nightly toolchain.

#[path = "../../../fuzz/regressions/replay.rs"]
mod replay;

#[path = "support/fuzz_mux_link.rs"]
mod fuzz_mux_link;

#[test]
fn mux_link_regressions_and_seeds() {
    replay::each_input("mux_link", fuzz_mux_link::run);
}

#[test]
fn mux_link_generated_inputs() {
    // A deterministic spread of inputs, beyond the kept ones.
    let mut x = 0x2545_f491_4f6c_dd1du64;
    for len in 0..400usize {
        let input: Vec<u8> = (0..len * 13)
            .map(|_| {
                x ^= x << 13;
                x ^= x >> 7;
                x ^= x << 17;
                x as u8
            })
            .collect();
        fuzz_mux_link::run(&input);
    }
}

#[path = "support/fuzz_endpoint.rs"]
mod fuzz_endpoint;

#[test]
fn endpoint_regressions_and_seeds() {
    replay::each_input("endpoint", fuzz_endpoint::run);
}
