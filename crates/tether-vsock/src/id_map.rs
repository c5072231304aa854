//! Hash maps keyed by [`ConnId`](crate::ConnId), with a cheap hash.
//!
//! Drivers look a connection up on every read and write; with the standard library's
//! SipHash that showed up in profiles of a hundred busy connections. A `ConnId` is
//! handed out by the local engine, never chosen by the peer, so a keyless hash cannot be
//! steered into collisions and a multiplication is enough.

use crate::ConnId;
use std::collections::HashMap;
use std::hash::{BuildHasherDefault, Hasher};

/// A `HashMap` keyed by connection handle.
pub type ConnIdMap<V> = HashMap<ConnId, V, BuildHasherDefault<ConnIdHasher>>;

/// Fibonacci hashing of the handle's two words: bijective in the low bits (distinct
/// slots land in distinct buckets) and well mixed in the high bits (which hashbrown uses
/// for its control bytes).
#[derive(Clone, Copy, Debug, Default)]
pub struct ConnIdHasher(u64);

impl Hasher for ConnIdHasher {
    fn write(&mut self, bytes: &[u8]) {
        for &b in bytes {
            self.0 = self.0.rotate_left(8) ^ u64::from(b);
        }
    }

    fn write_u32(&mut self, n: u32) {
        self.0 = self.0.rotate_left(32) ^ u64::from(n);
    }

    fn finish(&self) -> u64 {
        self.0.wrapping_mul(0x9e37_79b9_7f4a_7c15)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::hash::{BuildHasher, Hash};

    fn hash_of(v: impl Hash) -> u64 {
        BuildHasherDefault::<ConnIdHasher>::default().hash_one(v)
    }

    #[test]
    fn different_handles_hash_differently() {
        let mut seen = std::collections::HashSet::new();
        for index in 0..256u32 {
            for generation in 0..16u32 {
                let mut h = ConnIdHasher::default();
                h.write_u32(index);
                h.write_u32(generation);
                assert!(seen.insert(h.finish()), "({index}, {generation}) collided");
            }
        }
    }

    #[test]
    fn high_bits_vary_for_consecutive_slots() {
        let tops: std::collections::HashSet<u64> =
            (0..128u32).map(|i| hash_of((i, 0u32)) >> 57).collect();
        assert!(
            tops.len() > 64,
            "only {} distinct control bytes",
            tops.len()
        );
    }
}
