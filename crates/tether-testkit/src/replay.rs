//! The inputs saved from fuzzing, under `fuzz/regressions/<target>/`, for the stable
//! `fuzz_regressions` tests that run them through the fuzz targets' bodies: a crash found
//! once stays fixed without a nightly toolchain.

use std::panic::{catch_unwind, AssertUnwindSafe};
use std::path::PathBuf;

/// One saved input.
#[derive(Debug)]
pub struct Input {
    /// Where it is kept, to name it when it fails.
    pub path: PathBuf,
    /// Its bytes.
    pub data: Vec<u8>,
}

/// `fuzz/regressions/<target>` in this repository.
pub fn dir(target: &str) -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("../../fuzz/regressions")
        .join(target)
}

/// Every input saved for `target`, in name order, notes (`*.md`) left out. Panics when
/// the directory is missing or holds no input: a replay that runs nothing proves nothing.
pub fn inputs(target: &str) -> Vec<Input> {
    let dir = dir(target);
    let mut paths: Vec<PathBuf> = std::fs::read_dir(&dir)
        .unwrap_or_else(|e| panic!("{}: {e}", dir.display()))
        .map(|entry| entry.expect("directory entry").path())
        .filter(|p| p.is_file() && p.extension().is_none_or(|e| e != "md"))
        .collect();
    paths.sort();
    assert!(!paths.is_empty(), "no inputs in {}", dir.display());
    paths
        .into_iter()
        .map(|path| {
            let data = std::fs::read(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
            Input { path, data }
        })
        .collect()
}

/// Runs `run` on every input saved for `target`; a panic fails the test naming the input.
pub fn each_input(target: &str, mut run: impl FnMut(&[u8])) {
    for input in inputs(target) {
        let outcome = catch_unwind(AssertUnwindSafe(|| run(&input.data)));
        if let Err(e) = outcome {
            let why = e
                .downcast_ref::<String>()
                .map(String::as_str)
                .or_else(|| e.downcast_ref::<&str>().copied())
                .unwrap_or("a panic");
            panic!("{} fails again: {why}", input.path.display());
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_saved_input_is_found_and_named() {
        let all = inputs("header");
        assert!(all.iter().all(|i| i.path.starts_with(dir("header"))));
        let mut seen = 0;
        each_input("header", |_| seen += 1);
        assert_eq!(seen, all.len());
    }

    #[test]
    #[should_panic(expected = "no-such-target")]
    fn a_missing_target_fails() {
        inputs("no-such-target");
    }

    #[test]
    #[should_panic(expected = "fails again: boom")]
    fn a_failing_input_is_named() {
        each_input("header", |_| panic!("boom"));
    }
}
