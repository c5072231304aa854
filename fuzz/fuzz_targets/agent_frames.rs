//! Agent protocol frames: arbitrary bytes in arbitrary chunks never panic the decoder,
//! and every decoded frame round-trips.
#![no_main]

use libfuzzer_sys::fuzz_target;

// One copy of the target's body, also replayed by tether-proto's stable tests.
#[path = "../../crates/tether-proto/tests/support/fuzz_agent_frames.rs"]
mod fuzz_agent_frames;

fuzz_target!(|data: &[u8]| fuzz_agent_frames::run(data));
