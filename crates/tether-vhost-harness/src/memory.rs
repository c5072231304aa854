//! Guest RAM: a memfd mapped shared into this process, so the backend process that maps
//! the same file (after `SET_MEM_TABLE`) sees every byte the "guest" writes.
//!
//! Areas are carved out with a bump allocator and never freed: a guest allocates its rings
//! and buffer pools once, at start, and the whole file goes away with the guest.

use std::fs::File;
use std::sync::Mutex;
use thiserror::Error;
use vhost::VhostUserMemoryRegionInfo;
use vm_memory::{
    Bytes, FileOffset, GuestAddress, GuestMemoryBackend, GuestMemoryError, GuestMemoryMmap,
};

/// Default guest RAM size: room for two 1024-entry rings, their buffers and raw packets.
pub const DEFAULT_RAM_SIZE: usize = 128 << 20;

/// Why guest RAM could not be set up or used.
#[derive(Debug, Error)]
pub enum MemoryError {
    /// `memfd_create` failed.
    #[error("memfd_create failed: {0}")]
    Memfd(#[source] nix::Error),
    /// The memfd could not be grown to the RAM size.
    #[error("sizing the memfd to {size} bytes failed: {source}")]
    Size {
        /// Requested size.
        size: usize,
        /// The `ftruncate` error.
        #[source]
        source: std::io::Error,
    },
    /// Mapping the memfd failed.
    #[error("mapping guest RAM failed: {0}")]
    Map(#[from] vm_memory::mmap::FromRangesError),
    /// The bump allocator ran out of RAM.
    #[error("guest RAM exhausted: {want} bytes asked, {left} left (raise GuestOptions::ram_size)")]
    Exhausted {
        /// Bytes asked for.
        want: u64,
        /// Bytes left.
        left: u64,
    },
    /// A read or write outside guest RAM.
    #[error("guest memory access at {addr:#x} failed: {source}")]
    Access {
        /// Guest physical address.
        addr: u64,
        /// What vm-memory reported.
        #[source]
        source: GuestMemoryError,
    },
    /// The region cannot be described to the backend.
    #[error("describing guest RAM for SET_MEM_TABLE failed: {0}")]
    Describe(#[source] vhost::Error),
}

/// Guest RAM: one shared memfd region at guest physical address 0.
#[derive(Debug)]
pub struct GuestRam {
    mem: GuestMemoryMmap,
    size: u64,
    next: Mutex<u64>,
}

impl GuestRam {
    /// Creates `size` bytes of zeroed guest RAM backed by a fresh memfd.
    pub fn new(size: usize) -> Result<Self, MemoryError> {
        let fd = nix::sys::memfd::memfd_create(
            c"tether-guest-ram",
            nix::sys::memfd::MFdFlags::MFD_CLOEXEC,
        )
        .map_err(MemoryError::Memfd)?;
        let file = File::from(fd);
        file.set_len(size as u64)
            .map_err(|source| MemoryError::Size { size, source })?;
        let mem = GuestMemoryMmap::from_ranges_with_files([(
            GuestAddress(0),
            size,
            Some(FileOffset::new(file, 0)),
        )])?;
        Ok(GuestRam {
            mem,
            size: size as u64,
            // Page 0 stays unused so that address 0 never names a real buffer.
            next: Mutex::new(4096),
        })
    }

    /// Size in bytes.
    pub fn size(&self) -> u64 {
        self.size
    }

    /// The mapping, for vm-memory accessors.
    pub fn memory(&self) -> &GuestMemoryMmap {
        &self.mem
    }

    /// Reserves `len` bytes aligned to `align` (a power of two).
    pub fn alloc(&self, len: u64, align: u64) -> Result<GuestAddress, MemoryError> {
        let mut next = self.next.lock().expect("allocator lock");
        let start = next.next_multiple_of(align.max(1));
        let end = start.saturating_add(len);
        if end > self.size {
            return Err(MemoryError::Exhausted {
                want: len,
                left: self.size.saturating_sub(*next),
            });
        }
        *next = end;
        Ok(GuestAddress(start))
    }

    /// Bytes the allocator has handed out so far (including the unused first page).
    pub fn allocated(&self) -> u64 {
        *self.next.lock().expect("allocator lock")
    }

    /// The region as `SET_MEM_TABLE` describes it: file descriptor, guest address and the
    /// address of our own mapping (the backend translates ring addresses through it).
    pub fn region_info(&self) -> Result<VhostUserMemoryRegionInfo, MemoryError> {
        let region = self.mem.iter().next().expect("guest RAM has one region");
        VhostUserMemoryRegionInfo::from_guest_region(region).map_err(MemoryError::Describe)
    }

    /// The address of guest RAM at `addr` in this process. vhost-user passes ring
    /// addresses in the frontend's address space, not as guest physical addresses.
    pub fn host_address(&self, addr: GuestAddress) -> Result<u64, MemoryError> {
        self.mem
            .get_host_address(addr)
            .map(|p| p as u64)
            .map_err(|source| MemoryError::Access {
                addr: addr.0,
                source,
            })
    }

    /// Copies `data` into guest RAM at `addr`.
    pub fn write(&self, addr: GuestAddress, data: &[u8]) -> Result<(), MemoryError> {
        self.mem
            .write_slice(data, addr)
            .map_err(|source| MemoryError::Access {
                addr: addr.0,
                source,
            })
    }

    /// Copies guest RAM at `addr` into `buf`.
    pub fn read(&self, addr: GuestAddress, buf: &mut [u8]) -> Result<(), MemoryError> {
        self.mem
            .read_slice(buf, addr)
            .map_err(|source| MemoryError::Access {
                addr: addr.0,
                source,
            })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn allocations_are_aligned_disjoint_and_bounded() {
        let ram = GuestRam::new(1 << 20).unwrap();
        let a = ram.alloc(100, 16).unwrap();
        let b = ram.alloc(10, 4096).unwrap();
        assert_eq!(a.0 % 16, 0);
        assert_eq!(b.0 % 4096, 0);
        assert!(b.0 >= a.0 + 100);
        assert!(a.0 >= 4096, "page 0 stays unused");
        assert!(matches!(
            ram.alloc(2 << 20, 1),
            Err(MemoryError::Exhausted { .. })
        ));
    }

    #[test]
    fn memory_round_trips_and_is_described_by_a_file() {
        let ram = GuestRam::new(1 << 20).unwrap();
        let at = ram.alloc(5, 1).unwrap();
        ram.write(at, b"hello").unwrap();
        let mut back = [0u8; 5];
        ram.read(at, &mut back).unwrap();
        assert_eq!(&back, b"hello");
        let info = ram.region_info().unwrap();
        assert_eq!(info.guest_phys_addr, 0);
        assert_eq!(info.memory_size, 1 << 20);
        assert!(info.mmap_handle >= 0);
        assert_eq!(
            ram.host_address(GuestAddress(0)).unwrap(),
            info.userspace_addr
        );
    }
}
