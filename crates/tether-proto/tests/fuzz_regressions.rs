//! Replays fuzz/regressions/agent_frames through the fuzz target's body.

use tether_testkit::replay;

#[path = "support/fuzz_agent_frames.rs"]
mod fuzz_agent_frames;

#[test]
fn agent_frames_regressions_and_seeds() {
    replay::each_input("agent_frames", fuzz_agent_frames::run);
}
