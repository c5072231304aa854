//! Header codec: decode anything, round-trip whatever decodes.
#![no_main]

use libfuzzer_sys::fuzz_target;

// One copy of the target's body, also replayed by tether-vsock's stable tests.
#[path = "../../crates/tether-vsock/tests/support/fuzz_header.rs"]
mod fuzz_header;

fuzz_target!(|data: &[u8]| fuzz_header::run(data));
