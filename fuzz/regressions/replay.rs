//! Replays the saved inputs of a fuzz target, for the stable `fuzz_regressions` tests of
//! the crates whose parsers are fuzzed (each includes this file with `#[path]`).

use std::path::PathBuf;

/// `fuzz/regressions/<target>`, from the including crate's directory (`crates/NAME`).
pub fn dir(target: &str) -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("../../fuzz/regressions")
        .join(target)
}

/// Runs `run` on every input saved for `target`; fails when there is none.
pub fn each_input(target: &str, mut run: impl FnMut(&[u8])) {
    let dir = dir(target);
    let mut count = 0;
    for entry in std::fs::read_dir(&dir).expect("regression directory exists") {
        run(&std::fs::read(entry.unwrap().path()).unwrap());
        count += 1;
    }
    assert!(count > 0, "no inputs in {}", dir.display());
}
