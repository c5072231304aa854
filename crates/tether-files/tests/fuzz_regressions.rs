//! Replays every saved input of the `copy_receiver` fuzz target (fuzz/regressions).

#[path = "support/fuzz_receiver.rs"]
mod fuzz_receiver;

#[test]
fn copy_receiver_inputs_stay_fixed() {
    let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../../fuzz/regressions/copy_receiver");
    let mut n = 0;
    for entry in std::fs::read_dir(&dir).expect("regressions directory") {
        let path = entry.expect("entry").path();
        fuzz_receiver::run(&std::fs::read(&path).expect("input"));
        n += 1;
    }
    assert!(n > 0, "no inputs in {}", dir.display());
}
