//! Replays every saved input of the `copy_receiver` fuzz target (fuzz/regressions).

#[path = "support/fuzz_receiver.rs"]
mod fuzz_receiver;

#[test]
fn copy_receiver_inputs_stay_fixed() {
    tether_testkit::replay::each_input("copy_receiver", fuzz_receiver::run);
}
