//! The host's kernel, decompressed once and booted through its PVH entry point.
//!
//! A distribution's `vmlinuz` is a bzImage whose kernel is compressed (xz on Debian, zstd
//! on Ubuntu). Under TCG the guest decompresses it instruction by instruction: about 6 s
//! of a 10 s boot here, before the kernel printed a line. QEMU can instead load an
//! uncompressed `vmlinux` and jump to its PVH entry point (the way Firecracker boots),
//! so the host decompresses it once, natively, and the result is cached.
//!
//! The readers here take whatever image `/boot` holds, which may be truncated or damaged,
//! so each is bounded: they check lengths before indexing, stop decompressing at
//! [`MAX_KERNEL`], and answer with a typed error (which means "boot the image as it is")
//! rather than panic. The `kernel_image` fuzz target feeds them arbitrary bytes.

use crate::VmError;
use object::read::elf::{FileHeader, ProgramHeader};
use object::{elf, Endianness};
use sha2::{Digest, Sha256};
use std::io::Read;
use std::path::{Path, PathBuf};

/// Largest decompressed kernel accepted (a distribution's `vmlinux` is 40–70 MB): a
/// corrupt or hostile image cannot make the host fill its memory.
pub const MAX_KERNEL: u64 = 512 << 20;

/// Where the compressed kernel lies in a bzImage, and what compressed it.
#[derive(Debug, PartialEq, Eq)]
pub struct Payload {
    /// Offset of the compressed kernel in the file.
    pub start: usize,
    /// The compressor, named as `file` would.
    pub format: Format,
}

/// Compressors the kernel build offers that this module can undo.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Format {
    /// xz (Debian's kernels).
    Xz,
    /// zstd (Ubuntu's kernels).
    Zstd,
    /// gzip (the kernel's default).
    Gzip,
}

/// Why a kernel is booted as it is instead of decompressed.
#[derive(Debug, thiserror::Error)]
pub enum NotDecompressed {
    /// The file lacks the x86 boot protocol's header, or its payload lies past its end.
    #[error("not a bzImage (no \"HdrS\" boot header)")]
    NotBzImage,
    /// The payload starts with no magic number this module knows.
    #[error("its payload is compressed with something other than xz, zstd or gzip")]
    UnknownCompression,
    /// The decoder failed on the payload.
    #[error("decompressing it failed: {0}")]
    Decompress(std::io::Error),
    /// The payload decompressed to more than the given limit.
    #[error("it decompresses to more than {} MiB", .0 >> 20)]
    TooLarge(u64),
    /// What came out is not an ELF kernel that QEMU can enter directly.
    #[error("the decompressed kernel has no PVH entry point (CONFIG_PVH)")]
    NoPvhEntry,
}

/// Finds the compressed kernel inside bzImage `image` (boot protocol 2.08 and later).
pub fn payload(image: &[u8]) -> Result<Payload, NotDecompressed> {
    if image.len() < 0x250 || &image[0x202..0x206] != b"HdrS" {
        return Err(NotDecompressed::NotBzImage);
    }
    let setup_sects = match image[0x1f1] {
        0 => 4,
        n => n as usize,
    };
    let offset = u32::from_le_bytes(image[0x248..0x24c].try_into().expect("4 bytes")) as usize;
    let start = (setup_sects + 1) * 512 + offset;
    let head = image
        .get(start..start + 6)
        .ok_or(NotDecompressed::NotBzImage)?;
    let format = if head == b"\xfd7zXZ\x00" {
        Format::Xz
    } else if head[..4] == [0x28, 0xb5, 0x2f, 0xfd] {
        Format::Zstd
    } else if head[..2] == [0x1f, 0x8b] {
        Format::Gzip
    } else {
        return Err(NotDecompressed::UnknownCompression);
    };
    Ok(Payload { start, format })
}

/// Decompresses the kernel in bzImage `image`, up to [`MAX_KERNEL`] bytes.
pub fn decompress(image: &[u8]) -> Result<Vec<u8>, NotDecompressed> {
    decompress_at_most(image, MAX_KERNEL)
}

/// Decompresses the kernel in bzImage `image`, refusing one of more than `max` bytes. The
/// payload length in the header is not trusted (it can end short of the stream): each
/// decoder reads to its end of stream.
pub fn decompress_at_most(image: &[u8], max: u64) -> Result<Vec<u8>, NotDecompressed> {
    let p = payload(image)?;
    let data = &image[p.start..];
    let mut out = Vec::new();
    // One byte past the limit tells a kernel of exactly `max` bytes from a larger one.
    let limit = max.saturating_add(1);
    let read = match p.format {
        Format::Xz => liblzma::read::XzDecoder::new(data)
            .take(limit)
            .read_to_end(&mut out),
        Format::Gzip => flate2::read::GzDecoder::new(data)
            .take(limit)
            .read_to_end(&mut out),
        Format::Zstd => ruzstd::decoding::StreamingDecoder::new(data)
            .map_err(|e| std::io::Error::new(std::io::ErrorKind::InvalidData, e.to_string()))
            .and_then(|d| d.take(limit).read_to_end(&mut out)),
    };
    read.map_err(NotDecompressed::Decompress)?;
    if out.len() as u64 > max {
        return Err(NotDecompressed::TooLarge(max));
    }
    if !has_pvh_entry(&out) {
        return Err(NotDecompressed::NoPvhEntry);
    }
    Ok(out)
}

/// Whether ELF `kernel` carries the Xen note that gives its 32-bit PVH entry point, the
/// one QEMU jumps to when `-kernel` names an ELF file.
pub fn has_pvh_entry(kernel: &[u8]) -> bool {
    const XEN_ELFNOTE_PHYS32_ENTRY: elf::NoteType = elf::NoteType(18);
    let Some((endian, headers)) = program_headers(kernel) else {
        return false;
    };
    headers
        .iter()
        .filter(|ph| ph.p_type(endian) == elf::PT_NOTE)
        .filter_map(|ph| ph.notes(endian, kernel).ok().flatten())
        .any(|mut notes| {
            std::iter::from_fn(|| notes.next().ok().flatten())
                .any(|n| n.name() == b"Xen" && n.n_type(endian) == XEN_ELFNOTE_PHYS32_ENTRY)
        })
}

/// The program headers of 64-bit ELF file `data`, which may be cut short after them (the
/// section headers, at the end of the file, are not needed).
fn program_headers(data: &[u8]) -> Option<(Endianness, &[elf::ProgramHeader64<Endianness>])> {
    let header = elf::FileHeader64::<Endianness>::parse(data).ok()?;
    let endian = header.endian().ok()?;
    Some((endian, header.program_headers(endian, data).ok()?))
}

/// The kernel to hand QEMU for bzImage `image`: its decompressed `vmlinux` from the
/// cache (made now if missing), or the bzImage itself when it cannot be (slower to
/// boot, and said so in the log).
pub fn bootable(image: &Path, cache: &Path) -> Result<PathBuf, VmError> {
    let bytes =
        std::fs::read(image).map_err(|e| VmError::Io(format!("reading {}", image.display()), e))?;
    let hash: String = Sha256::digest(&bytes)[..8]
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect();
    let path = cache.join(format!("vmlinux-{hash}.elf"));
    if path.exists() {
        crate::initramfs::mark_used(&path);
        return Ok(path);
    }
    match decompress(&bytes) {
        Ok(vmlinux) => {
            // Per process, and not named like a kernel, so that another start's pruning
            // never takes a file still being written.
            let tmp = cache.join(format!("vmlinux-{hash}.{}.tmp", std::process::id()));
            std::fs::write(&tmp, vmlinux)
                .and_then(|()| std::fs::rename(&tmp, &path))
                .map_err(|e| VmError::Io(format!("writing {}", path.display()), e))?;
            crate::initramfs::prune(cache, "vmlinux-", ".elf", KEEP_KERNELS);
            Ok(path)
        }
        Err(why) => {
            tracing::info!("booting {} as it is: {why}", image.display());
            Ok(image.to_path_buf())
        }
    }
}

/// Where the ELF kernel at `path` ends in guest-physical memory once loaded, from its
/// program headers: a guest needs at least this much RAM before the kernel can even be
/// placed (QEMU then hangs rather than fail). `None` for anything but a 64-bit ELF file.
pub fn loaded_end(path: &Path) -> Option<u64> {
    let mut head = Vec::new();
    std::fs::File::open(path)
        .ok()?
        .take(64 * 1024)
        .read_to_end(&mut head)
        .ok()?;
    loaded_end_of(&head)
}

/// Where the kernel whose ELF file starts with `head` ends in guest-physical memory once
/// loaded; `None` unless `head` holds a 64-bit ELF header and all its program headers.
pub fn loaded_end_of(head: &[u8]) -> Option<u64> {
    let (endian, headers) = program_headers(head)?;
    headers
        .iter()
        .filter(|ph| ph.p_type(endian) == elf::PT_LOAD)
        .map(|ph| ph.p_paddr(endian).saturating_add(ph.p_memsz(endian)))
        .max()
}

/// Decompressed kernels the cache keeps (about 65 MB each); one per installed kernel used.
const KEEP_KERNELS: usize = 2;

#[cfg(test)]
mod tests {
    use super::*;

    /// A minimal bzImage: boot header, one setup sector, and `payload` as the kernel.
    fn bz_image(payload: &[u8]) -> Vec<u8> {
        let mut img = vec![0u8; 2 * 512];
        img[0x1f1] = 1;
        img[0x202..0x206].copy_from_slice(b"HdrS");
        img[0x248..0x24c].copy_from_slice(&16u32.to_le_bytes());
        img.extend_from_slice(&[0u8; 16]);
        img.extend_from_slice(payload);
        img
    }

    #[test]
    fn the_payload_is_found_after_the_setup_sectors_and_its_compressor_named() {
        let mut gz = Vec::new();
        {
            use std::io::Write;
            let mut e = flate2::write::GzEncoder::new(&mut gz, flate2::Compression::fast());
            e.write_all(b"not a kernel").unwrap();
        }
        let img = bz_image(&gz);
        assert_eq!(
            payload(&img).unwrap(),
            Payload {
                start: 2 * 512 + 16,
                format: Format::Gzip
            }
        );
        assert!(
            matches!(decompress(&img), Err(NotDecompressed::NoPvhEntry)),
            "what comes out must be a kernel QEMU can enter"
        );
        assert!(matches!(
            payload(b"\x7fELF plus nothing"),
            Err(NotDecompressed::NotBzImage)
        ));
        assert!(matches!(
            payload(&bz_image(b"BZh91AY")),
            Err(NotDecompressed::UnknownCompression)
        ));
    }

    #[test]
    fn a_payload_that_decompresses_beyond_the_limit_is_refused() {
        use std::io::Write;
        let mut gz = Vec::new();
        let mut e = flate2::write::GzEncoder::new(&mut gz, flate2::Compression::best());
        e.write_all(&vec![0u8; 1 << 20]).unwrap();
        e.finish().unwrap();
        let img = bz_image(&gz);
        assert!(gz.len() < 4096, "a small image, a large kernel");
        assert!(matches!(
            decompress_at_most(&img, (1 << 20) - 1),
            Err(NotDecompressed::TooLarge(_))
        ));
        // Exactly at the limit is not too large (it then fails for want of a PVH note).
        assert!(matches!(
            decompress_at_most(&img, 1 << 20),
            Err(NotDecompressed::NoPvhEntry)
        ));
    }

    #[test]
    fn the_hosts_kernel_decompresses_to_an_elf_with_a_pvh_entry() {
        let Ok((image, _)) = crate::host::kernel() else {
            panic!("scripts/test installs a kernel in /boot");
        };
        let bytes = std::fs::read(&image).unwrap();
        let vmlinux = decompress(&bytes).unwrap_or_else(|e| panic!("{}: {e}", image.display()));
        assert_eq!(&vmlinux[..4], b"\x7fELF");
        assert!(vmlinux.len() > bytes.len(), "decompressed is larger");
        let end = loaded_end_of(&vmlinux[..64 * 1024]).expect("program headers");
        // x86-64 kernels load at 16 MiB physical and take tens of MiB from there.
        assert!(
            (20 << 20..1 << 30).contains(&end),
            "loaded end {end:#x} is not plausible"
        );
        assert_eq!(loaded_end_of(&bytes), None, "a bzImage is not an ELF file");

        // Ubuntu's kernels are zstd-compressed: the same kernel, recompressed, round-trips.
        let zst = ruzstd::encoding::compress_to_vec(
            &vmlinux[..],
            ruzstd::encoding::CompressionLevel::Fastest,
        );
        let img = bz_image(&zst);
        assert_eq!(payload(&img).unwrap().format, Format::Zstd);
        assert!(
            decompress(&img).unwrap() == vmlinux,
            "zstd round trip differs"
        );
    }
}
