//! Throwaway microVMs: QEMU, the host's kernel, an initramfs holding busybox and the
//! statically linked tether agent as PID 1, and a vsock device through a vhost-user
//! backend. The guest announces its agent with a guest-to-host connection, so nothing
//! waits on a fixed sleep.

mod cpio;
pub mod host;
mod initramfs;
mod strip;
pub mod vmlinux;

use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::{Duration, Instant};
use tether_transport::{Endpoint, Transport};
use thiserror::Error;
use tokio::io::AsyncReadExt;
use tokio::process::{Child, Command};

/// The agent's port in the guest.
pub const AGENT_PORT: u32 = 1024;
/// The host port the guest announces readiness on.
pub const READY_PORT: u32 = 1023;
/// The guest's CID.
pub const GUEST_CID: u32 = 3;
/// The name of the virtio-serial port that carries the mux.
pub const SERIAL_PORT_NAME: &str = "tether";

/// Which accelerator QEMU uses.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Accel {
    /// KVM where a guest actually runs under it, TCG otherwise.
    Auto,
    /// Software emulation: slow, works everywhere.
    Tcg,
    /// Hardware virtualization.
    Kvm,
}

/// Which vhost-user backend gives the guest its vsock device.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub enum VsockDevice {
    /// `tether device`, run from the same tether binary the guest gets.
    #[default]
    Tether,
    /// The rust-vmm reference backend, vhost-device-vsock.
    VhostDeviceVsock,
}

impl VsockDevice {
    /// The name users know it by.
    pub fn name(self) -> &'static str {
        match self {
            VsockDevice::Tether => "tether device",
            VsockDevice::VhostDeviceVsock => "vhost-device-vsock",
        }
    }
}

/// How to build and boot the VM.
#[derive(Clone, Debug)]
pub struct VmConfig {
    /// Guest memory in MiB.
    pub memory_mib: u32,
    /// Virtual CPUs.
    pub cpus: u32,
    /// Accelerator.
    pub accel: Accel,
    /// The static tether binary for the guest; none means this executable.
    pub guest_binary: Option<PathBuf>,
    /// How long the boot may take to reach the agent.
    pub boot_timeout: Duration,
    /// Reach the agent through the mux over a virtio-serial port instead of vsock.
    pub serial: bool,
    /// The vsock device's backend (unused with `serial`).
    pub vsock: VsockDevice,
    /// Host programs to copy into the guest (with their shared libraries), e.g. socat.
    pub extra_programs: Vec<PathBuf>,
}

impl Default for VmConfig {
    fn default() -> Self {
        VmConfig {
            memory_mib: 256,
            cpus: 1,
            accel: Accel::Auto,
            guest_binary: None,
            boot_timeout: Duration::from_secs(90),
            serial: false,
            vsock: VsockDevice::Tether,
            extra_programs: Vec::new(),
        }
    }
}

/// Why a VM could not be had.
#[derive(Debug, Error)]
pub enum VmError {
    /// A host program or file is missing.
    #[error("{what} is missing; install it with: {install}")]
    Missing {
        /// What.
        what: String,
        /// The exact command that installs it.
        install: String,
    },
    /// The guest needs a tether without shared libraries.
    #[error("{} is dynamically linked; the guest has no libraries. Build a static tether with \
             RUSTFLAGS='-C target-feature=+crt-static' cargo build --release --target x86_64-unknown-linux-gnu -p tether \
             and pass --guest-binary target/x86_64-unknown-linux-gnu/release/tether", .0.display())]
    NotStatic(PathBuf),
    /// The agent did not announce itself in time.
    #[error("the guest's agent did not come up within {after:?}; QEMU said:\n{console}")]
    BootTimeout {
        /// How long tether waited.
        after: Duration,
        /// The end of the guest console.
        console: String,
    },
    /// The guest is too small to hold its kernel and initramfs at all.
    #[error(
        "a guest of {memory_mib} MiB cannot boot: its kernel loads up to {kernel_mib} MiB \
             and its initramfs takes {initramfs_mib} MiB more; give it at least {needs_mib} MiB \
             with --memory"
    )]
    TooLittleMemory {
        /// The guest's memory.
        memory_mib: u32,
        /// Where the kernel ends in guest-physical memory.
        kernel_mib: u64,
        /// The size of the initramfs.
        initramfs_mib: u64,
        /// The least that could boot.
        needs_mib: u64,
    },
    /// The guest's kernel ran out of memory while booting.
    #[error("the guest ran out of memory while booting in {memory_mib} MiB (its initramfs \
             alone is {initramfs_mib} MiB); give it more with --memory; its console said:\n{console}")]
    OutOfMemory {
        /// The guest's memory.
        memory_mib: u32,
        /// The size of the initramfs the kernel had to unpack.
        initramfs_mib: u64,
        /// The end of the guest console.
        console: String,
    },
    /// QEMU or the backend exited during boot.
    #[error("{what} exited during boot ({status}); output:\n{output}")]
    Exited {
        /// Which program.
        what: String,
        /// Its status.
        status: String,
        /// The end of its output.
        output: String,
    },
    /// A file or process operation failed.
    #[error("{0}: {1}")]
    Io(String, #[source] std::io::Error),
    /// Listening for the guest failed.
    #[error(transparent)]
    Transport(#[from] tether_transport::TransportError),
}

/// A running microVM; dropping it powers the VM off and removes its files.
pub struct Vm {
    dir: PathBuf,
    qemu: Child,
    backend: Option<Child>,
    transport: Transport,
    endpoint: Endpoint,
    boot: Duration,
    accel: Accel,
}

impl Vm {
    /// Builds (or reuses) the initramfs, starts the vsock backend and QEMU, and waits for
    /// the agent's announcement.
    pub async fn start(config: &VmConfig) -> Result<Vm, VmError> {
        let started = Instant::now();
        let qemu = host::qemu()?;
        let (kernel, modules) = host::kernel()?;
        let kernel = vmlinux::bootable(&kernel, &initramfs::cache_dir()?)?;
        let guest = host::guest_binary(config.guest_binary.as_deref())?;
        // A serial VM needs no vsock device, so no backend either.
        let backend_bin = match (config.serial, config.vsock) {
            (true, _) => PathBuf::new(),
            (false, VsockDevice::Tether) => guest.clone(),
            (false, VsockDevice::VhostDeviceVsock) => host::vhost_device_vsock()?,
        };
        let initrd = initramfs::build(&guest, &host::busybox()?, &modules, &config.extra_programs)?;
        check_memory(config.memory_mib, &kernel, &initrd)?;
        let accels: &[Accel] = match config.accel {
            Accel::Auto if kvm_usable() && !kvm_known_to_hang() => &[Accel::Kvm, Accel::Tcg],
            Accel::Auto | Accel::Tcg => &[Accel::Tcg],
            Accel::Kvm => &[Accel::Kvm],
        };
        let mut last = None;
        for (i, accel) in accels.iter().enumerate() {
            // KVM is given a short first chance: on nested hosts it opens but hangs.
            let limit = if i + 1 < accels.len() {
                Duration::from_secs(15)
            } else {
                config.boot_timeout
            };
            match boot(config, *accel, limit, &qemu, &kernel, &initrd, &backend_bin).await {
                Ok(mut vm) => {
                    vm.boot = started.elapsed();
                    return Ok(vm);
                }
                // Not the accelerator's fault: TCG would fail the same way, and KVM must
                // not be remembered as hanging.
                Err(e @ VmError::OutOfMemory { .. }) => return Err(e),
                Err(e) => {
                    if *accel == Accel::Kvm && i + 1 < accels.len() {
                        tracing::info!("KVM did not reach the agent in time; using TCG");
                        remember_kvm_hangs();
                    }
                    last = Some(e)
                }
            }
        }
        Err(last.expect("at least one accelerator"))
    }

    /// The agent's endpoint, for `tether_client`.
    pub fn endpoint(&self) -> &Endpoint {
        &self.endpoint
    }

    /// The transport to dial the agent with: for a serial VM it holds the one mux link
    /// QEMU's chardev socket accepts, so dial through this, not a new transport.
    pub fn transport(&self) -> &Transport {
        &self.transport
    }

    /// From `start` being called to the agent's announcement.
    pub fn boot_time(&self) -> Duration {
        self.boot
    }

    /// The accelerator the VM runs under.
    pub fn accel(&self) -> Accel {
        self.accel
    }

    /// Where the VM's sockets and logs live.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// Powers the VM off and removes its files.
    pub async fn stop(mut self) {
        let _ = self.qemu.kill().await;
        if let Some(b) = &mut self.backend {
            let _ = b.kill().await;
        }
    }
}

impl Drop for Vm {
    fn drop(&mut self) {
        let _ = self.qemu.start_kill();
        if let Some(b) = &mut self.backend {
            let _ = b.start_kill();
        }
        discard(&self.dir);
    }
}

/// Whether /dev/kvm can be opened at all (whether a guest then runs is tried by booting).
fn kvm_usable() -> bool {
    std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open("/dev/kvm")
        .is_ok()
}

/// Where the verdict "KVM opens but its guests hang" is kept for this boot of the host,
/// so only the first VM pays for finding out.
fn kvm_verdict_file() -> Option<PathBuf> {
    let boot = std::fs::read_to_string("/proc/sys/kernel/random/boot_id").ok()?;
    Some(
        initramfs::cache_dir()
            .ok()?
            .join(format!("kvm-hangs-{}", boot.trim())),
    )
}

fn kvm_known_to_hang() -> bool {
    kvm_verdict_file().is_some_and(|f| f.exists())
}

fn remember_kvm_hangs() {
    if let Some(f) = kvm_verdict_file() {
        let _ = std::fs::write(f, "KVM guests did not reach the agent; TCG is used\n");
    }
}

/// Removes a VM's files, unless TETHER_VM_KEEP asks to keep them for a post-mortem.
fn discard(dir: &Path) {
    if std::env::var_os("TETHER_VM_KEEP").is_some() {
        eprintln!("tether: kept {}", dir.display());
    } else {
        let _ = std::fs::remove_dir_all(dir);
    }
}

fn scratch_dir() -> Result<PathBuf, VmError> {
    static N: std::sync::atomic::AtomicU32 = std::sync::atomic::AtomicU32::new(0);
    let n = N.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    let dir = std::env::temp_dir().join(format!("tether-vm-{}-{n}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir)
        .map_err(|e| VmError::Io(format!("creating {}", dir.display()), e))?;
    Ok(dir)
}

async fn boot(
    config: &VmConfig,
    accel: Accel,
    limit: Duration,
    qemu: &Path,
    kernel: &Path,
    initrd: &Path,
    backend_bin: &Path,
) -> Result<Vm, VmError> {
    let dir = scratch_dir()?;
    let vhost = dir.join("vhost.sock");
    let uds = dir.join("v.sock");
    let console = dir.join("console.log");
    let io = |what: &str| {
        let what = what.to_string();
        move |e| VmError::Io(what, e)
    };
    let serial_sock = dir.join("serial.sock");
    let transport = Transport::default();
    let (backend, ready_ep, agent_ep) = if config.serial {
        let at = |port| Endpoint::MuxUnix {
            path: serial_sock.clone(),
            port,
        };
        (None, at(READY_PORT), at(AGENT_PORT))
    } else {
        let name = config.vsock.name();
        let mut backend = Command::new(backend_bin);
        if config.vsock == VsockDevice::Tether {
            backend.arg("device");
        }
        let mut backend = backend
            .args(["--guest-cid", &GUEST_CID.to_string()])
            .arg("--socket")
            .arg(&vhost)
            .arg("--uds-path")
            .arg(&uds)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(dir.join("backend.log")).map_err(io("backend log"))?)
            .kill_on_drop(true)
            .spawn()
            .map_err(io(&format!("starting {name}")))?;
        wait_for_path(&vhost, &mut backend, name, &dir.join("backend.log")).await?;
        let at = |port| Endpoint::Hybrid {
            path: uds.clone(),
            port,
        };
        (Some(backend), at(READY_PORT), at(AGENT_PORT))
    };
    let mem = config.memory_mib;
    let accel_arg = match accel {
        Accel::Kvm => "kvm",
        _ => "tcg",
    };
    let mut qemu_cmd = Command::new(qemu);
    qemu_cmd
        .args([
            "-accel",
            accel_arg,
            "-cpu",
            "max",
            "-smp",
            &config.cpus.to_string(),
        ])
        .args([
            "-m",
            &format!("{mem}M"),
            "-nographic",
            "-no-reboot",
            "-nodefaults",
        ])
        .args(["-serial", &format!("file:{}", console.display())])
        .arg("-object")
        .arg(format!("memory-backend-memfd,id=mem,size={mem}M,share=on"))
        .args(["-machine", "q35,memory-backend=mem"])
        .args(device_args(config.serial, &vhost, &serial_sock))
        .arg("-kernel")
        .arg(kernel)
        .arg("-initrd")
        .arg(initrd)
        .args([
            "-append",
            if config.serial {
                "console=ttyS0 quiet panic=-1 rdinit=/init -- serial"
            } else {
                "console=ttyS0 quiet panic=-1 rdinit=/init"
            },
        ])
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(std::fs::File::create(dir.join("qemu.log")).map_err(io("qemu log"))?)
        .kill_on_drop(true);
    let mut qemu = qemu_cmd.spawn().map_err(io("starting QEMU"))?;
    // The chardev socket exists once QEMU runs; the mux link (and the listener for the
    // announcement) can only open then.
    if config.serial {
        wait_for_path(&serial_sock, &mut qemu, "QEMU", &dir.join("qemu.log")).await?;
    }
    let mut ready = transport.bind(&ready_ep).await?;

    let announced = tokio::time::timeout(limit, async {
        tokio::select! {
            s = ready.accept() => {
                let mut s = s?;
                let mut line = String::new();
                let _ = s.read_to_string(&mut line).await;
                Ok(Some(line))
            }
            // QEMU ending before the announcement is a failed boot.
            _ = qemu.wait() => Ok::<_, VmError>(None),
        }
    })
    .await;
    match announced {
        Ok(Ok(Some(line))) if line.starts_with("ready") => Ok(Vm {
            endpoint: agent_ep,
            transport,
            dir,
            qemu,
            backend,
            boot: Duration::ZERO,
            accel,
        }),
        Ok(Ok(_)) => {
            let output = tail(&console) + &tail(&dir.join("qemu.log"));
            // Too small a guest can also die before its console is up, printing nothing.
            let silent = !output.contains("] ");
            if ran_out_of_memory(&output) || (silent && config.memory_mib < SMALL_GUEST_MIB) {
                discard(&dir);
                return Err(VmError::OutOfMemory {
                    memory_mib: config.memory_mib,
                    initramfs_mib: std::fs::metadata(initrd).map_or(0, |m| m.len() >> 20),
                    console: output,
                });
            }
            let status = qemu
                .try_wait()
                .ok()
                .flatten()
                .map(|s| s.to_string())
                .unwrap_or_else(|| "no announcement".into());
            discard(&dir);
            Err(VmError::Exited {
                what: "QEMU".to_string(),
                status,
                output,
            })
        }
        Ok(Err(e)) => {
            discard(&dir);
            Err(e)
        }
        Err(_) => {
            let console_text = tail(&console) + &tail(&dir.join("qemu.log"));
            let _ = qemu.kill().await;
            discard(&dir);
            Err(VmError::BootTimeout {
                after: limit,
                console: console_text,
            })
        }
    }
}

/// Room a guest needs beyond its kernel and initramfs to get as far as unpacking it.
const BOOT_HEADROOM_MIB: u64 = 16;

/// Refuses, before starting QEMU, a guest too small to hold its kernel where the kernel
/// loads plus its initramfs: QEMU would sit at "Booting from ROM" until the boot timeout.
fn check_memory(memory_mib: u32, kernel: &Path, initrd: &Path) -> Result<(), VmError> {
    let Some(kernel_end) = vmlinux::loaded_end(kernel) else {
        return Ok(());
    };
    let initrd_len = std::fs::metadata(initrd).map_or(0, |m| m.len());
    let needs_mib = (kernel_end + initrd_len).div_ceil(1 << 20) + BOOT_HEADROOM_MIB;
    if u64::from(memory_mib) >= needs_mib {
        return Ok(());
    }
    Err(VmError::TooLittleMemory {
        memory_mib,
        kernel_mib: kernel_end >> 20,
        initramfs_mib: initrd_len >> 20,
        needs_mib,
    })
}

/// Below this much memory a guest whose kernel printed nothing before QEMU ended is taken
/// to have run out of memory. It matters for a kernel booted compressed, which
/// `check_memory` cannot size: Debian's dies that way in 64 MiB and boots in 128.
const SMALL_GUEST_MIB: u32 = 128;

/// Whether a guest console shows the kernel giving up for want of memory (a guest this
/// small fails before any userspace runs, so the message is all there is to go on).
fn ran_out_of_memory(console: &str) -> bool {
    [
        "Initramfs unpacking failed: write error",
        "Initramfs unpacking failed: invalid magic",
        "System is deadlocked on memory",
        "Out of memory and no killable processes",
    ]
    .iter()
    .any(|m| console.contains(m))
}

/// The vsock device, or the virtio-serial port named `tether` on a chardev socket.
fn device_args(serial: bool, vhost: &Path, serial_sock: &Path) -> Vec<String> {
    if serial {
        vec![
            "-device".into(),
            "virtio-serial-pci".into(),
            "-chardev".into(),
            format!(
                "socket,id=ser0,path={},server=on,wait=off",
                serial_sock.display()
            ),
            "-device".into(),
            format!("virtserialport,chardev=ser0,name={SERIAL_PORT_NAME}"),
        ]
    } else {
        vec![
            "-chardev".into(),
            format!("socket,id=vsock0,path={}", vhost.display()),
            "-device".into(),
            "vhost-user-vsock-pci,chardev=vsock0".into(),
        ]
    }
}

async fn wait_for_path(
    path: &Path,
    owner: &mut Child,
    what: &str,
    log: &Path,
) -> Result<(), VmError> {
    for _ in 0..500 {
        if path.exists() {
            return Ok(());
        }
        if let Ok(Some(status)) = owner.try_wait() {
            return Err(VmError::Exited {
                what: what.to_string(),
                status: status.to_string(),
                output: tail(log),
            });
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    Err(VmError::Exited {
        what: what.to_string(),
        status: "never created its socket".into(),
        output: tail(log),
    })
}

/// The last 40 lines of a log.
fn tail(path: &Path) -> String {
    let text = std::fs::read_to_string(path).unwrap_or_default();
    let lines: Vec<&str> = text.lines().collect();
    let from = lines.len().saturating_sub(40);
    lines[from..].join("\n") + "\n"
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_kernels_words_for_running_out_of_memory_are_recognised() {
        // As Debian's 6.1 kernel printed them in guests of 96 and 128 MiB.
        let seen = [
            "[    1.343501] Kernel panic - not syncing: System is deadlocked on memory",
            "[    1.936840] Initramfs unpacking failed: invalid magic at start of compressed archive",
        ];
        for line in seen {
            assert!(
                ran_out_of_memory(&format!("Booting from ROM...\n{line}\n")),
                "{line}"
            );
        }
        assert!(!ran_out_of_memory(
            "[    3.3] Run /init as init process\n[    3.6] Kernel panic - not syncing: Attempted to kill init!"
        ));
    }
}
