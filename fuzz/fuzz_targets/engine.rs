//! The engine driven by arbitrary packets and application calls.
#![no_main]

use libfuzzer_sys::fuzz_target;

// One copy of the action interpreter, also replayed by tether-vsock's stable tests.
#[path = "../../crates/tether-vsock/tests/support/fuzz_engine.rs"]
mod fuzz_engine;

fuzz_target!(|data: &[u8]| fuzz_engine::run(data));
