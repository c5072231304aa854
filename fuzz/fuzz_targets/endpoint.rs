//! Endpoint URIs: any text fails with an error naming it, or round-trips exactly.
#![no_main]

use libfuzzer_sys::fuzz_target;

// One copy of the target's body, also replayed by tether-transport's stable tests.
#[path = "../../crates/tether-transport/tests/support/fuzz_endpoint.rs"]
mod fuzz_endpoint;

fuzz_target!(|data: &[u8]| fuzz_endpoint::run(data));
