//! Copies of payload-sized byte ranges that stay fast on every x86 CPU.
//!
//! glibc's `memcpy` moves a few KiB or more with `rep movsb`. On AMD Zen CPUs that
//! instruction runs over ten times slower when the destination lies 1 to 63 bytes past
//! the source, counted modulo 4 KiB: on the machines tether is measured on, 64 KiB went
//! at 2.1 GB/s at a distance of 16 bytes and at 37 GB/s at 64. Payload buffers and
//! readers' buffers meet at such distances by chance (a buffer from `malloc` starts 16
//! bytes into a page, a payload 44 bytes after its header), so a mux reading one
//! connection could lose most of its speed on a run of unlucky buffers.
//!
//! Copies in pieces below glibc's `rep movsb` threshold go through its vector loop
//! instead, which is as fast at any distance; the split is made only at the slow
//! distances, so every other copy stays one `memcpy`.

use bytes::{BufMut, Bytes};

/// Pieces a copy at a slow distance is split into: below glibc's smallest `rep movsb`
/// threshold (2 KiB and up, by vector width).
const PIECE: usize = 2048;

/// Distances (destination minus source, modulo [`PAGE`]) from 1 below this one are slow.
const SLOW_BELOW: usize = 64;

const PAGE: usize = 4096;

/// Whether copying from `src` to `dst` would meet the slow case.
fn slow(dst: *const u8, src: *const u8, len: usize) -> bool {
    let distance = (dst as usize).wrapping_sub(src as usize) % PAGE;
    len > PIECE && distance != 0 && distance < SLOW_BELOW
}

/// Copies `src` into `dst`, which must be as long.
///
/// # Panics
/// When the lengths differ, as `copy_from_slice` does.
pub fn copy(dst: &mut [u8], src: &[u8]) {
    assert_eq!(
        dst.len(),
        src.len(),
        "copy between slices of different lengths"
    );
    if !slow(dst.as_ptr(), src.as_ptr(), src.len()) {
        dst.copy_from_slice(src);
        return;
    }
    for (d, s) in dst.chunks_mut(PIECE).zip(src.chunks(PIECE)) {
        d.copy_from_slice(s);
    }
}

/// Appends `src` to `dst`; reserve room first so that the distance checked is the one
/// the copy meets.
pub fn put(dst: &mut impl BufMut, src: &[u8]) {
    if dst.remaining_mut() < src.len()
        || !slow(dst.chunk_mut().as_mut_ptr(), src.as_ptr(), src.len())
    {
        dst.put_slice(src);
        return;
    }
    for piece in src.chunks(PIECE) {
        dst.put_slice(piece);
    }
}

/// `src` copied into a buffer of its own.
pub fn to_bytes(src: &[u8]) -> Bytes {
    let mut out = Vec::with_capacity(src.len());
    put(&mut out, src);
    Bytes::from(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A source and a destination `distance` bytes apart modulo a page, in one buffer.
    fn apart(backing: &mut [u8], len: usize, distance: usize) -> (usize, usize) {
        let base = backing.as_ptr() as usize;
        let src = (PAGE - base % PAGE) % PAGE;
        let dst = src + len.next_multiple_of(PAGE) + PAGE + distance;
        assert!(dst + len <= backing.len());
        (src, dst)
    }

    #[test]
    fn slow_distances_are_split_and_copied_exactly() {
        let len = 64 * 1024 + 7;
        for distance in [0, 1, 16, 44, 63, 64, 100, PAGE - 16] {
            let mut backing = vec![0u8; 3 * len + 4 * PAGE];
            let (s, d) = apart(&mut backing, len, distance);
            assert_eq!(
                slow(backing[d..].as_ptr(), backing[s..].as_ptr(), len),
                (1..SLOW_BELOW).contains(&distance),
                "distance {distance}"
            );
            let pattern: Vec<u8> = (0..len).map(|i| (i * 7 % 251) as u8).collect();
            backing[s..s + len].copy_from_slice(&pattern);
            let (head, tail) = backing.split_at_mut(d);
            copy(&mut tail[..len], &head[s..s + len]);
            assert_eq!(&backing[d..d + len], &pattern[..], "distance {distance}");
        }
    }

    #[test]
    fn put_and_to_bytes_keep_every_byte_in_order() {
        let src: Vec<u8> = (0..70_000u32).map(|i| (i % 253) as u8).collect();
        for start in [0, 1, 17, 3000] {
            let mut v = Vec::with_capacity(start + src.len());
            v.resize(start, 9);
            put(&mut v, &src[start..]);
            assert_eq!(&v[start..], &src[start..]);
            assert!(v[..start].iter().all(|&b| b == 9));
        }
        assert_eq!(&to_bytes(&src)[..], &src[..]);
        let mut short = bytes::BytesMut::new();
        put(&mut short, &src);
        assert_eq!(&short[..], &src[..]);
    }

    #[test]
    #[should_panic(expected = "different lengths")]
    fn copy_between_different_lengths_panics() {
        copy(&mut [0u8; 4999], &[1u8; 5000]);
    }
}
