//! Helpers shared by tether's tests and benches, so that each is written once: data both
//! ends of a test can regenerate, scratch directories, and the replay of the inputs saved
//! from fuzzing. A dev-dependency only; not published.

pub mod replay;

use std::path::PathBuf;

/// xorshift64: a fast, deterministic stream of numbers. Not for anything but tests.
#[derive(Clone, Debug)]
pub struct XorShift(u64);

impl XorShift {
    /// A stream that differs per `seed` (zero included).
    pub fn new(seed: u64) -> Self {
        XorShift(seed.wrapping_mul(0x9e37_79b9_7f4a_7c15) | 1)
    }

    /// The next number.
    pub fn next_u64(&mut self) -> u64 {
        let mut x = self.0;
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        self.0 = x;
        x
    }

    /// `len` bytes, one per number.
    pub fn bytes(&mut self, len: usize) -> Vec<u8> {
        (0..len).map(|_| self.next_u64() as u8).collect()
    }
}

/// `len` pseudo-random bytes, different per `seed` and never periodic over short spans:
/// both ends of a test can regenerate them to check content, not just length.
pub fn pattern(seed: u64, len: usize) -> Vec<u8> {
    XorShift::new(seed).bytes(len)
}

/// `count` pseudo-random inputs of 0 to `max_len - 1` bytes, for running a fuzz target's
/// body under `cargo test`.
pub fn pseudo_random_inputs(
    count: usize,
    seed: u64,
    max_len: usize,
) -> impl Iterator<Item = Vec<u8>> {
    let mut rng = XorShift::new(seed);
    (0..count).map(move |_| {
        let len = (rng.next_u64() % max_len.max(1) as u64) as usize;
        rng.bytes(len)
    })
}

/// SHA-256 of `bytes`.
pub fn sha256(bytes: &[u8]) -> Vec<u8> {
    use sha2::{Digest, Sha256};
    Sha256::digest(bytes).to_vec()
}

/// An empty directory `tether-TAG-PID` under the system's temporary directory, emptied
/// first if an earlier run of this process id left one.
pub fn scratch_dir(tag: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("tether-{tag}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir)
        .unwrap_or_else(|e| panic!("creating scratch directory {}: {e}", dir.display()));
    dir
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn patterns_differ_per_seed_and_repeat_per_seed() {
        assert_eq!(pattern(7, 4096), pattern(7, 4096));
        assert_ne!(pattern(7, 4096), pattern(8, 4096));
        assert_ne!(pattern(0, 64), vec![0; 64], "seed zero still varies");
        let p = pattern(1, 1 << 16);
        assert!(
            p.windows(256)
                .step_by(256)
                .collect::<std::collections::HashSet<_>>()
                .len()
                > 250,
            "no short period"
        );
    }

    #[test]
    fn inputs_stay_under_their_length_bound_and_vary() {
        let inputs: Vec<_> = pseudo_random_inputs(200, 3, 50).collect();
        assert_eq!(inputs.len(), 200);
        assert!(inputs.iter().all(|i| i.len() < 50));
        let lens: std::collections::HashSet<_> = inputs.iter().map(Vec::len).collect();
        assert!(lens.len() > 20, "lengths vary: {lens:?}");
    }

    #[test]
    fn sha256_matches_a_known_digest() {
        let hex: String = sha256(b"abc").iter().map(|b| format!("{b:02x}")).collect();
        assert_eq!(
            hex,
            "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad"
        );
    }

    #[test]
    fn scratch_dirs_start_empty() {
        let d = scratch_dir("testkit-selftest");
        std::fs::write(d.join("left"), b"x").unwrap();
        let again = scratch_dir("testkit-selftest");
        assert_eq!(d, again);
        assert_eq!(std::fs::read_dir(&again).unwrap().count(), 0);
        std::fs::remove_dir_all(again).unwrap();
    }
}
