//! Replays every input saved from fuzzing (`fuzz/regressions/<target>/`) through the same
//! code the fuzz targets run, so a fixed crash stays fixed without a nightly toolchain.
//! A batch of pseudo-random inputs also runs the interpreters on every test run.

#[path = "support/fuzz_engine.rs"]
mod fuzz_engine;
#[path = "support/fuzz_header.rs"]
mod fuzz_header;

use std::path::PathBuf;

fn regressions(target: &str) -> Vec<(PathBuf, Vec<u8>)> {
    let dir = PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("../../fuzz/regressions")
        .join(target);
    let mut files: Vec<_> = std::fs::read_dir(&dir)
        .unwrap_or_else(|e| panic!("{}: {e}", dir.display()))
        .map(|entry| entry.expect("directory entry").path())
        .filter(|p| p.is_file() && p.extension().is_none_or(|e| e != "md"))
        .collect();
    files.sort();
    files
        .into_iter()
        .map(|p| {
            let data = std::fs::read(&p).unwrap_or_else(|e| panic!("{}: {e}", p.display()));
            (p, data)
        })
        .collect()
}

fn replay(target: &str, run: fn(&[u8])) -> usize {
    let cases = regressions(target);
    for (path, data) in &cases {
        let outcome = std::panic::catch_unwind(|| run(data));
        assert!(outcome.is_ok(), "{} fails again", path.display());
    }
    cases.len()
}

#[test]
fn engine_regressions_stay_fixed() {
    let n = replay("engine", fuzz_engine::run);
    assert!(n > 0, "no saved engine inputs found");
}

#[test]
fn header_regressions_stay_fixed() {
    let n = replay("header", fuzz_header::run);
    assert!(n > 0, "no saved header inputs found");
}

/// Deterministic inputs of assorted lengths: keeps the interpreters honest (they must
/// accept anything) and gives the engine a small fuzz run under `cargo test`.
fn pseudo_random_inputs(count: usize, seed: u64) -> impl Iterator<Item = Vec<u8>> {
    let mut x = seed | 1;
    let mut next = move || {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        x
    };
    (0..count).map(move |_| {
        let len = (next() % 600) as usize;
        (0..len).map(|_| next() as u8).collect()
    })
}

#[test]
fn engine_interpreter_survives_pseudo_random_inputs() {
    for input in pseudo_random_inputs(3000, 0x7e7e_5eed) {
        fuzz_engine::run(&input);
    }
}

#[test]
fn header_target_survives_pseudo_random_inputs() {
    for input in pseudo_random_inputs(3000, 0x4ead_e500) {
        fuzz_header::run(&input);
    }
    fuzz_header::run(&[]);
    fuzz_header::run(&[0xff; 44]);
}
