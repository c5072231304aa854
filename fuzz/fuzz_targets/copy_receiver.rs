//! The receiving end of `tether cp` fed arbitrary frames, confined beneath a directory.
#![no_main]

use libfuzzer_sys::fuzz_target;

// One copy of the body, also replayed by tether-files' stable tests.
#[path = "../../crates/tether-files/tests/support/fuzz_receiver.rs"]
mod fuzz_receiver;

fuzz_target!(|data: &[u8]| fuzz_receiver::run(data));
