//! Mux link decoder: arbitrary bytes in arbitrary read sizes, and a round trip of
//! well-formed frames.
#![no_main]

use libfuzzer_sys::fuzz_target;

// One copy of the target's body, also replayed by tether-transport's stable tests.
#[path = "../../crates/tether-transport/tests/support/fuzz_mux_link.rs"]
mod fuzz_mux_link;

fuzz_target!(|data: &[u8]| fuzz_mux_link::run(data));
