//! Replays fuzz/regressions/kernel_image through the fuzz target's body.

use tether_testkit::replay;

#[path = "support/fuzz_kernel_image.rs"]
mod fuzz_kernel_image;

#[test]
fn kernel_image_regressions_and_seeds() {
    replay::each_input("kernel_image", fuzz_kernel_image::run);
}

/// The hand-made seeds reach the readers' far ends: a kernel comes out of each compressor,
/// and the ELF readers find its PVH note and loaded extent.
#[test]
fn the_seeds_decompress_to_a_pvh_kernel() {
    use tether_vm::vmlinux::{decompress, has_pvh_entry, loaded_end_of, NotDecompressed};
    let seed =
        |name: &str| std::fs::read(replay::dir("kernel_image").join(name)).expect("seed exists");
    let elf = seed("seed-elf-with-pvh-note");
    assert!(has_pvh_entry(&elf));
    assert_eq!(loaded_end_of(&elf), Some(0x1000000 + 0x2000000));
    for name in ["seed-bzimage-gzip", "seed-bzimage-xz", "seed-bzimage-zstd"] {
        let kernel = decompress(&seed(name)).unwrap_or_else(|e| panic!("{name}: {e}"));
        assert_eq!(kernel, elf, "{name}");
    }
    let no_pvh = decompress(&seed("seed-bzimage-gzip-no-pvh"));
    assert!(
        matches!(no_pvh, Err(NotDecompressed::NoPvhEntry)),
        "{no_pvh:?}"
    );
    let past_end = decompress(&seed("seed-bzimage-offset-past-end"));
    assert!(
        matches!(past_end, Err(NotDecompressed::NotBzImage)),
        "{past_end:?}"
    );
}
