//! The initramfs format the kernel unpacks: "newc" cpio, uncompressed.

/// An archive being written in memory.
#[derive(Default)]
pub struct Cpio {
    out: Vec<u8>,
    ino: u32,
}

const DIR: u32 = 0o040000;
const FILE: u32 = 0o100000;
const LINK: u32 = 0o120000;

impl Cpio {
    /// A directory with `mode` permission bits.
    pub fn dir(&mut self, path: &str, mode: u32) {
        self.entry(path, DIR | mode, &[]);
    }

    /// A regular file.
    pub fn file(&mut self, path: &str, mode: u32, data: &[u8]) {
        self.entry(path, FILE | mode, data);
    }

    /// A symbolic link to `target`.
    pub fn symlink(&mut self, path: &str, target: &str) {
        self.entry(path, LINK | 0o777, target.as_bytes());
    }

    fn entry(&mut self, path: &str, mode: u32, data: &[u8]) {
        self.ino += 1;
        let name = path.trim_start_matches('/');
        let fields = [
            self.ino,
            mode,
            0,
            0,
            1,
            0,
            data.len() as u32,
            0,
            0,
            0,
            0,
            name.len() as u32 + 1,
            0,
        ];
        self.out.extend_from_slice(b"070701");
        for f in fields {
            self.out.extend_from_slice(format!("{f:08x}").as_bytes());
        }
        self.out.extend_from_slice(name.as_bytes());
        self.out.push(0);
        self.pad();
        self.out.extend_from_slice(data);
        self.pad();
    }

    fn pad(&mut self) {
        while self.out.len() % 4 != 0 {
            self.out.push(0);
        }
    }

    /// The finished archive.
    pub fn finish(mut self) -> Vec<u8> {
        self.ino = 0;
        self.entry("TRAILER!!!", 0, &[]);
        self.out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn entries_are_aligned_newc() {
        let mut c = Cpio::default();
        c.file("/init", 0o755, b"#!/bin/sh\n");
        let a = c.finish();
        assert!(a.starts_with(b"070701"));
        assert_eq!(a.len() % 4, 0);
        // Header 110 bytes, "init\0" padded to 4, 10 bytes of data padded to 4.
        let second = 110 + 5 + 1 + 10 + 2;
        assert_eq!(&a[second..second + 6], b"070701");
        assert!(a.windows(10).any(|w| w == b"TRAILER!!!"));
    }
}
