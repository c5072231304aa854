//! The body of the `kernel_image` fuzz target, also replayed by tether-vm's stable tests:
//! arbitrary bytes given to the kernel-image readers never panic them, and what they
//! accept is consistent.

use tether_vm::vmlinux::{self, NotDecompressed};

/// Decompressed kernels larger than this are refused here, to keep each run fast (real
/// ones are capped at [`vmlinux::MAX_KERNEL`]).
const MAX_OUT: u64 = 4 << 20;

/// Runs one input through every reader.
pub fn run(data: &[u8]) {
    if let Ok(p) = vmlinux::payload(data) {
        assert!(p.start < data.len(), "a payload lies inside the image");
    }
    match vmlinux::decompress_at_most(data, MAX_OUT) {
        Ok(kernel) => {
            assert!(kernel.len() as u64 <= MAX_OUT, "the limit holds");
            assert!(vmlinux::has_pvh_entry(&kernel), "only PVH kernels come out");
        }
        Err(NotDecompressed::NotBzImage) => {
            assert!(vmlinux::payload(data).is_err(), "payload() agrees");
        }
        Err(_) => {}
    }
    if let Some(end) = vmlinux::loaded_end_of(data) {
        assert!(
            data.len() >= 64 && data.starts_with(b"\x7fELF"),
            "program headers ({end:#x}) came from an ELF header"
        );
    }
    let _ = vmlinux::has_pvh_entry(data);
}
