//! The guest's copy of tether, without its debug information.
//!
//! The initramfs is unpacked into the guest's RAM and the binary then lives there, in
//! tmpfs, for the VM's life. A release build with line tables is about 50 MB, of which
//! 40 are `.debug_*` sections: enough that a 128 MiB guest failed to unpack it and
//! panicked at boot. Symbols stay, so a panic's backtrace still names functions.

use object::build::elf::Builder;

/// `elf` without its debug sections.
pub fn without_debug_info(elf: &[u8]) -> Result<Vec<u8>, object::build::Error> {
    let mut builder = Builder::read(elf)?;
    for section in builder.sections.iter_mut() {
        let name = section.name.as_slice();
        if name.starts_with(b".debug_") || name.starts_with(b".zdebug_") {
            section.delete = true;
        }
    }
    let mut out = Vec::new();
    builder.write(&mut out)?;
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use object::{Object, ObjectSection};

    #[test]
    fn debug_sections_go_and_the_code_stays() {
        let me = std::fs::read(std::env::current_exe().unwrap()).unwrap();
        let before = object::File::parse(&*me).unwrap();
        let stripped = without_debug_info(&me).expect("a test binary is an ELF file");
        let after = object::File::parse(&*stripped).unwrap();
        let names = |f: &object::File| -> Vec<String> {
            f.sections()
                .filter_map(|s| s.name().ok().map(str::to_string))
                .collect()
        };
        assert!(names(&before).iter().any(|n| n.starts_with(".debug_")));
        assert!(
            names(&after).iter().all(|n| !n.starts_with(".debug_")),
            "{:?}",
            names(&after)
        );
        let text = |f: &object::File| f.section_by_name(".text").unwrap().data().unwrap().to_vec();
        assert_eq!(
            text(&before),
            text(&after),
            ".text must be kept byte for byte"
        );
        assert_eq!(before.entry(), after.entry());
        assert!(after.symbols().count() > 0, "symbols stay for backtraces");
    }

    #[test]
    fn not_an_elf_file_is_an_error() {
        assert!(without_debug_info(b"#!/bin/sh\necho hi\n").is_err());
    }
}
