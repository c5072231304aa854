//! Duties of the agent when it is the guest's PID 1: the filesystems every program
//! expects, the kernel modules the guest needs (vsock, virtio), a host name, and the
//! loopback interface.

use nix::mount::{mount, MsFlags};
use std::ffi::CString;
use std::io;
use std::path::Path;

/// Where the initramfs lists the modules to load, one path per line, in order.
pub const MODULES_LIST: &str = "/etc/tether/modules";

/// Mounts /proc, /sys, /dev, /dev/pts, /tmp and /run; loads the listed modules; names
/// the host; brings up `lo`. Failures of single steps are reported and skipped: a guest
/// with fewer mounts still serves commands.
pub fn setup() -> io::Result<()> {
    let mounts: [(&str, &str, &str, &str); 6] = [
        ("proc", "/proc", "proc", ""),
        ("sysfs", "/sys", "sysfs", ""),
        ("devtmpfs", "/dev", "devtmpfs", "mode=0755"),
        (
            "devpts",
            "/dev/pts",
            "devpts",
            "gid=5,mode=620,ptmxmode=666",
        ),
        ("tmpfs", "/tmp", "tmpfs", "mode=1777"),
        ("tmpfs", "/run", "tmpfs", "mode=0755"),
    ];
    for (src, target, fstype, data) in mounts {
        let _ = std::fs::create_dir_all(target);
        let data = (!data.is_empty()).then_some(data);
        if let Err(e) = mount(Some(src), target, Some(fstype), MsFlags::empty(), data) {
            if e != nix::errno::Errno::EBUSY {
                eprintln!("tether init: mounting {target}: {e}");
            }
        }
    }
    // The pty multiplexer opens through /dev/ptmx, which devpts provides.
    if !Path::new("/dev/ptmx").exists() {
        let _ = std::os::unix::fs::symlink("pts/ptmx", "/dev/ptmx");
    }
    load_modules(Path::new(MODULES_LIST));
    name_virtio_ports();
    let _ = nix::unistd::sethostname("tether-vm");
    if let Err(e) = loopback_up() {
        eprintln!("tether init: bringing up lo: {e}");
    }
    Ok(())
}

/// Sets `lo` up, as a distribution's init scripts would. The kernel creates it down: a
/// program may bind 127.0.0.1 but nothing can connect there ("network is unreachable"),
/// which breaks guest services and forwarding to them.
fn loopback_up() -> io::Result<()> {
    use nix::libc;
    use std::os::fd::AsRawFd;
    // Any AF_INET socket will do for interface ioctls.
    let sock = std::net::UdpSocket::bind("0.0.0.0:0")?;
    // SAFETY: ifreq is plain data; all zeroes is a valid value.
    let mut req: libc::ifreq = unsafe { std::mem::zeroed() };
    for (dst, src) in req.ifr_name.iter_mut().zip(b"lo") {
        *dst = *src as libc::c_char;
    }
    // SAFETY: SIOCGIFFLAGS reads the name and writes the flags of `req`, which lives
    // across the call.
    if unsafe {
        libc::ioctl(
            sock.as_raw_fd(),
            libc::SIOCGIFFLAGS as libc::Ioctl,
            &mut req,
        )
    } < 0
    {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: SIOCGIFFLAGS filled the flags member of the union.
    unsafe { req.ifr_ifru.ifru_flags |= (libc::IFF_UP | libc::IFF_RUNNING) as libc::c_short };
    // SAFETY: SIOCSIFFLAGS reads `req`, which lives across the call.
    if unsafe { libc::ioctl(sock.as_raw_fd(), libc::SIOCSIFFLAGS as libc::Ioctl, &req) } < 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

/// Waits up to `limit` for `device` to exist, naming virtio-serial ports as they appear:
/// virtio_console adds its ports some time after the module loads, and a busy host can
/// make that seconds. Returns whether the device is there.
pub fn wait_for_device(device: &Path, limit: std::time::Duration) -> bool {
    let deadline = std::time::Instant::now() + limit;
    loop {
        if device.exists() {
            return true;
        }
        if std::time::Instant::now() >= deadline {
            return false;
        }
        std::thread::sleep(std::time::Duration::from_millis(20));
        name_virtio_ports();
    }
}

/// Links `/dev/virtio-ports/NAME` to each named virtio-serial port, as udev would, so
/// `mux+serial:///dev/virtio-ports/NAME:PORT` works without udev.
fn name_virtio_ports() {
    let Ok(ports) = std::fs::read_dir("/sys/class/virtio-ports") else {
        return;
    };
    let _ = std::fs::create_dir_all("/dev/virtio-ports");
    for port in ports.flatten() {
        let Ok(name) = std::fs::read_to_string(port.path().join("name")) else {
            continue;
        };
        let name = name.trim();
        if !name.is_empty() {
            let dev = format!("../{}", port.file_name().to_string_lossy());
            let _ = std::os::unix::fs::symlink(dev, format!("/dev/virtio-ports/{name}"));
        }
    }
}

fn load_modules(list: &Path) {
    let Ok(text) = std::fs::read_to_string(list) else {
        return;
    };
    for path in text.lines().map(str::trim).filter(|l| !l.is_empty()) {
        let loaded = std::fs::File::open(path)
            .map_err(|e| nix::errno::Errno::from_raw(e.raw_os_error().unwrap_or(nix::libc::EIO)))
            .and_then(|f| {
                nix::kmod::finit_module(
                    &f,
                    &CString::default(),
                    nix::kmod::ModuleInitFlags::empty(),
                )
            });
        match loaded {
            Ok(()) | Err(nix::errno::Errno::EEXIST) => {}
            Err(e) => eprintln!("tether init: loading {path}: {e}"),
        }
    }
}
