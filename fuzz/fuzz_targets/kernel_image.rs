//! Kernel images: arbitrary bytes never panic the bzImage, decompression and ELF readers
//! `tether vm` runs on the host's kernel, and what they accept is consistent.
#![no_main]

use libfuzzer_sys::fuzz_target;

// One copy of the target's body, also replayed by tether-vm's stable tests.
#[path = "../../crates/tether-vm/tests/support/fuzz_kernel_image.rs"]
mod fuzz_kernel_image;

fuzz_target!(|data: &[u8]| fuzz_kernel_image::run(data));
