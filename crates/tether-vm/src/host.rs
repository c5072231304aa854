//! What the host must provide: QEMU, a kernel with its modules, busybox, a vsock backend,
//! and a statically linked tether for the guest.

use crate::VmError;
use std::path::{Path, PathBuf};

/// The modules a guest needs for virtio-vsock and virtio-serial, in load order.
pub const GUEST_MODULES: &[&str] = &[
    "kernel/drivers/virtio/virtio_ring.ko",
    "kernel/drivers/virtio/virtio.ko",
    "kernel/drivers/virtio/virtio_pci_modern_dev.ko",
    "kernel/drivers/virtio/virtio_pci_legacy_dev.ko",
    "kernel/drivers/virtio/virtio_pci.ko",
    "kernel/net/vmw_vsock/vsock.ko",
    "kernel/net/vmw_vsock/vmw_vsock_virtio_transport_common.ko",
    "kernel/net/vmw_vsock/vmw_vsock_virtio_transport.ko",
    "kernel/drivers/char/virtio_console.ko",
];

const INSTALL: &str =
    "apt-get update && apt-get install -y qemu-system-x86 linux-image-amd64 busybox-static";

/// A program on PATH, or the install command in the error.
pub fn program(name: &str, install: &str) -> Result<PathBuf, VmError> {
    std::env::var_os("PATH")
        .into_iter()
        .flat_map(|p| std::env::split_paths(&p).collect::<Vec<_>>())
        .map(|d| d.join(name))
        .find(|p| p.is_file())
        .ok_or_else(|| VmError::Missing {
            what: name.into(),
            install: install.into(),
        })
}

/// QEMU for x86-64.
pub fn qemu() -> Result<PathBuf, VmError> {
    program("qemu-system-x86_64", INSTALL)
}

/// busybox, statically linked (the guest has no libraries).
pub fn busybox() -> Result<PathBuf, VmError> {
    let p = PathBuf::from("/bin/busybox");
    if p.is_file() {
        return Ok(p);
    }
    program("busybox", INSTALL)
}

/// vhost-device-vsock, the rust-vmm vhost-user backend.
pub fn vhost_device_vsock() -> Result<PathBuf, VmError> {
    let cargo_bin =
        std::env::var_os("HOME").map(|h| PathBuf::from(h).join(".cargo/bin/vhost-device-vsock"));
    if let Some(p) = cargo_bin.filter(|p| p.is_file()) {
        return Ok(p);
    }
    program(
        "vhost-device-vsock",
        "cargo install vhost-device-vsock --locked",
    )
}

/// The newest kernel in /boot with its modules directory.
pub fn kernel() -> Result<(PathBuf, PathBuf), VmError> {
    let mut found: Vec<(String, PathBuf)> = std::fs::read_dir("/boot")
        .map_err(|_| missing_kernel())?
        .flatten()
        .filter_map(|e| {
            let name = e.file_name().to_string_lossy().into_owned();
            let ver = name.strip_prefix("vmlinuz-")?.to_string();
            Path::new("/lib/modules")
                .join(&ver)
                .is_dir()
                .then(|| (ver, e.path()))
        })
        .collect();
    found.sort();
    let (ver, image) = found.pop().ok_or_else(missing_kernel)?;
    Ok((image, Path::new("/lib/modules").join(ver)))
}

fn missing_kernel() -> VmError {
    VmError::Missing {
        what: "a kernel in /boot with modules in /lib/modules".into(),
        install: INSTALL.into(),
    }
}

/// Whether the ELF file at `path` is statically linked (has no program interpreter).
pub fn is_static(path: &Path) -> std::io::Result<bool> {
    let elf = std::fs::read(path)?;
    if elf.len() < 64 || &elf[..4] != b"\x7fELF" || elf[4] != 2 {
        return Ok(false);
    }
    let u16_at = |o: usize| u16::from_le_bytes([elf[o], elf[o + 1]]) as usize;
    let phoff = u64::from_le_bytes(elf[32..40].try_into().expect("8 bytes")) as usize;
    let (phentsize, phnum) = (u16_at(54), u16_at(56));
    const PT_INTERP: u32 = 3;
    Ok((0..phnum).all(|i| {
        let o = phoff + i * phentsize;
        elf.get(o..o + 4)
            .map(|t| u32::from_le_bytes(t.try_into().expect("4 bytes")) != PT_INTERP)
            .unwrap_or(true)
    }))
}

/// The tether binary to put in the guest: `explicit`, else this executable when it is
/// static.
pub fn guest_binary(explicit: Option<&Path>) -> Result<PathBuf, VmError> {
    let candidate = match explicit {
        Some(p) => p.to_path_buf(),
        None => {
            std::env::current_exe().map_err(|e| VmError::Io("finding this executable".into(), e))?
        }
    };
    match is_static(&candidate) {
        Ok(true) => Ok(candidate),
        Ok(false) => Err(VmError::NotStatic(candidate)),
        Err(e) => {
            let what = format!("reading the guest binary {}", candidate.display());
            Err(VmError::Io(what, e))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_missing_guest_binary_is_named_as_missing_not_as_dynamic() {
        let err = guest_binary(Some(Path::new("/nonexistent/tether"))).unwrap_err();
        let msg = err.to_string();
        assert!(
            msg.starts_with("reading the guest binary /nonexistent/tether: "),
            "{msg}"
        );
        assert!(!msg.contains("dynamically linked"), "{msg}");
    }

    #[test]
    fn a_dynamic_binary_is_refused_with_how_to_build_a_static_one() {
        // This test binary links the C library dynamically, as cargo builds it.
        let this = std::env::current_exe().unwrap();
        let err = guest_binary(Some(&this)).unwrap_err();
        assert!(matches!(err, VmError::NotStatic(_)), "{err}");
        assert!(err.to_string().contains("crt-static"), "{err}");
    }
}
