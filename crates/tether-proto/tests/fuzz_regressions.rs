//! Replays fuzz/regressions/agent_frames through the fuzz target's body.

#[path = "support/fuzz_agent_frames.rs"]
mod fuzz_agent_frames;

#[test]
fn agent_frames_regressions_and_seeds() {
    let dir = concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/../../fuzz/regressions/agent_frames"
    );
    let mut count = 0;
    for entry in std::fs::read_dir(dir).expect("regression directory exists") {
        fuzz_agent_frames::run(&std::fs::read(entry.unwrap().path()).unwrap());
        count += 1;
    }
    assert!(count > 0, "no inputs in {dir}");
}
