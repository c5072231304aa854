//! Replays fuzz/regressions/agent_frames through the fuzz target's body.

#[path = "../../../fuzz/regressions/replay.rs"]
mod replay;

#[path = "support/fuzz_agent_frames.rs"]
mod fuzz_agent_frames;

#[test]
fn agent_frames_regressions_and_seeds() {
    replay::each_input("agent_frames", fuzz_agent_frames::run);
}
