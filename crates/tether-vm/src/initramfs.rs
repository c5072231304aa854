//! The guest's initramfs, built from host files and cached by content hash.

use crate::cpio::Cpio;
use crate::host::GUEST_MODULES;
use crate::{VmError, AGENT_PORT, READY_PORT, SERIAL_PORT_NAME};
use sha2::{Digest, Sha256};
use std::path::{Path, PathBuf};
use std::time::SystemTime;

/// What the throwaway guest's agent lets clients forward: any port on the guest's own
/// loopback, both ways (`tether forward --via`). The VM exists for its user, and loopback
/// reaches nothing beyond it.
const FORWARD_POLICY: &str =
    "--allow-connect 'tcp://127.0.0.1:*' --allow-listen 'tcp://127.0.0.1:*'";

/// Changes whenever the same inputs make a different archive, so that no archive built
/// the old way is taken from the cache.
const LAYOUT: &[u8] = b"layout 2: the guest's tether without debug information";

/// The init script: tether becomes PID 1 (exec), sets the guest up and serves, on vsock
/// or, when the kernel passes `serial` (after `--` on its command line), on the mux over
/// the virtio-serial port named `tether`.
fn init_script() -> String {
    format!(
        "#!/bin/busybox sh\n\
         if [ \"$1\" = serial ]; then\n\
         \tport=mux+serial:///dev/virtio-ports/{SERIAL_PORT_NAME}\n\
         \texec /bin/tether agent --init {FORWARD_POLICY} --listen $port:{AGENT_PORT} --ready $port:{READY_PORT}\n\
         fi\n\
         exec /bin/tether agent --init {FORWARD_POLICY} --listen vsock://:{AGENT_PORT} --ready vsock://2:{READY_PORT}\n"
    )
}

/// Returns the path of an initramfs for these inputs, building it when not cached.
/// `extras` are host programs copied in with the shared libraries they load.
pub fn build(
    tether: &Path,
    busybox: &Path,
    modules: &Path,
    extras: &[PathBuf],
) -> Result<PathBuf, VmError> {
    let read =
        |p: &Path| std::fs::read(p).map_err(|e| VmError::Io(format!("reading {}", p.display()), e));
    let tether_bin = read(tether)?;
    let busybox_bin = read(busybox)?;
    let mut mods = Vec::new();
    for m in GUEST_MODULES {
        let p = modules.join(m);
        if p.exists() {
            mods.push((format!("/lib/modules/{m}"), read(&p)?));
        }
    }
    let mut host_files = Vec::new();
    for program in extras {
        for f in std::iter::once(program.clone()).chain(libraries(program)?) {
            let data = read(&f)?;
            host_files.push((f.display().to_string(), data));
        }
    }
    host_files.sort();
    host_files.dedup_by(|a, b| a.0 == b.0);
    let script = init_script();
    let mut h = Sha256::new();
    h.update(LAYOUT);
    for (name, data) in &host_files {
        h.update(name.as_bytes());
        h.update(data);
    }
    h.update(&tether_bin);
    h.update(&busybox_bin);
    for (name, data) in &mods {
        h.update(name.as_bytes());
        h.update(data);
    }
    h.update(script.as_bytes());
    let hash: String = h.finalize()[..8]
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect();
    let cache = cache_dir()?;
    let path = cache.join(format!("initramfs-{hash}.cpio"));
    if path.exists() {
        mark_used(&path);
        return Ok(path);
    }

    let mut c = Cpio::default();
    for d in [
        "/bin",
        "/sbin",
        "/etc",
        "/etc/tether",
        "/proc",
        "/sys",
        "/dev",
        "/tmp",
        "/run",
        "/root",
        "/lib",
        "/lib/modules",
        "/usr",
        "/usr/bin",
        "/usr/sbin",
    ] {
        c.dir(d, 0o755);
    }
    c.file("/init", 0o755, script.as_bytes());
    c.file("/bin/busybox", 0o755, &busybox_bin);
    // Cached under the hash of the binary as built; stripped only when (re)built.
    let guest_tether = match crate::strip::without_debug_info(&tether_bin) {
        Ok(stripped) => stripped,
        Err(e) => {
            tracing::warn!("{} keeps its debug information: {e}", tether.display());
            tether_bin
        }
    };
    c.file("/bin/tether", 0o755, &guest_tether);
    for applet in applets(busybox) {
        if applet != "busybox" {
            c.symlink(&format!("/bin/{applet}"), "busybox");
        }
    }
    let mut list = String::new();
    for (name, data) in &mods {
        let dir = Path::new(name)
            .parent()
            .expect("module paths have a directory");
        let mut acc = PathBuf::from("/");
        for part in dir.iter().skip(1) {
            acc.push(part);
            c.dir(&acc.to_string_lossy(), 0o755);
        }
        c.file(name, 0o644, data);
        list.push_str(name);
        list.push('\n');
    }
    c.file("/etc/tether/modules", 0o644, list.as_bytes());
    let mut made: std::collections::HashSet<PathBuf> = Default::default();
    for (name, data) in &host_files {
        let mut acc = PathBuf::from("/");
        for part in Path::new(name)
            .parent()
            .into_iter()
            .flat_map(|d| d.iter().skip(1))
        {
            acc.push(part);
            if made.insert(acc.clone()) {
                c.dir(&acc.to_string_lossy(), 0o755);
            }
        }
        c.file(name, 0o755, data);
    }
    c.file(
        "/etc/passwd",
        0o644,
        b"root:x:0:0:root:/root:/bin/sh\nnobody:x:65534:65534:nobody:/nonexistent:/bin/false\n",
    );
    c.file("/etc/group", 0o644, b"root:x:0:\nnogroup:x:65534:\n");
    let tmp = path.with_extension("tmp");
    std::fs::write(&tmp, c.finish())
        .map_err(|e| VmError::Io(format!("writing {}", tmp.display()), e))?;
    std::fs::rename(&tmp, &path)
        .map_err(|e| VmError::Io(format!("writing {}", path.display()), e))?;
    prune(&cache, "initramfs-", ".cpio", KEEP_ARCHIVES);
    Ok(path)
}

/// Marks a cached file as just used, so that pruning takes older ones first.
pub(crate) fn mark_used(path: &Path) {
    let _ = std::fs::File::options()
        .write(true)
        .open(path)
        .and_then(|f| f.set_modified(SystemTime::now()));
}

/// Archives the cache keeps. Every build of tether makes a new one (its binary is inside),
/// so without a bound the cache grew by an archive per build.
const KEEP_ARCHIVES: usize = 4;

/// Deletes all but the `keep` most recently used files in `cache` named `prefix...suffix`.
/// A VM booting from a deleted one is unaffected: QEMU has it open.
pub(crate) fn prune(cache: &Path, prefix: &str, suffix: &str, keep: usize) {
    let Ok(entries) = std::fs::read_dir(cache) else {
        return;
    };
    let mut archives: Vec<(SystemTime, PathBuf)> = entries
        .filter_map(Result::ok)
        .filter(|e| {
            let name = e.file_name();
            let name = name.to_string_lossy();
            name.starts_with(prefix) && name.ends_with(suffix)
        })
        .filter_map(|e| Some((e.metadata().ok()?.modified().ok()?, e.path())))
        .collect();
    archives.sort_by_key(|a| std::cmp::Reverse(a.0));
    for (_, old) in archives.into_iter().skip(keep) {
        let _ = std::fs::remove_file(old);
    }
}

/// The shared libraries `program` loads (its dynamic loader included), as `ldd` lists them.
fn libraries(program: &Path) -> Result<Vec<PathBuf>, VmError> {
    let out = std::process::Command::new("ldd")
        .arg(program)
        .output()
        .map_err(|e| VmError::Io(format!("running ldd on {}", program.display()), e))?;
    Ok(String::from_utf8_lossy(&out.stdout)
        .lines()
        .filter_map(|l| {
            let path = match l.split_once("=>") {
                Some((_, rest)) => rest.split_whitespace().next()?,
                None => l.split_whitespace().next()?,
            };
            path.starts_with('/').then(|| PathBuf::from(path))
        })
        .collect())
}

fn applets(busybox: &Path) -> Vec<String> {
    std::process::Command::new(busybox)
        .arg("--list")
        .output()
        .map(|o| {
            String::from_utf8_lossy(&o.stdout)
                .lines()
                .map(str::to_string)
                .collect()
        })
        .unwrap_or_default()
}

/// tether's cache directory.
pub fn cache_dir() -> Result<PathBuf, VmError> {
    let base = std::env::var_os("XDG_CACHE_HOME")
        .map(PathBuf::from)
        .or_else(|| std::env::var_os("HOME").map(|h| PathBuf::from(h).join(".cache")))
        .unwrap_or_else(std::env::temp_dir);
    let dir = base.join("tether");
    std::fs::create_dir_all(&dir)
        .map_err(|e| VmError::Io(format!("creating {}", dir.display()), e))?;
    Ok(dir)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[test]
    fn pruning_keeps_the_most_recently_used_archives_and_nothing_else_is_touched() {
        let dir = std::env::temp_dir().join(format!("tether-prune-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        let base = SystemTime::now() - Duration::from_secs(3600);
        for (i, name) in ["a", "b", "c", "d", "e", "f"].iter().enumerate() {
            let p = dir.join(format!("initramfs-{name}.cpio"));
            let f = std::fs::File::create(&p).unwrap();
            // "a" is the oldest, "f" the newest.
            f.set_modified(base + Duration::from_secs(60 * i as u64))
                .unwrap();
        }
        std::fs::write(dir.join("kvm-hangs-x"), b"kept").unwrap();
        std::fs::write(dir.join("initramfs-z.tmp"), b"kept").unwrap();
        prune(&dir, "initramfs-", ".cpio", 4);
        let mut left: Vec<String> = std::fs::read_dir(&dir)
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .collect();
        left.sort();
        assert_eq!(
            left,
            [
                "initramfs-c.cpio",
                "initramfs-d.cpio",
                "initramfs-e.cpio",
                "initramfs-f.cpio",
                "initramfs-z.tmp",
                "kvm-hangs-x"
            ]
        );
        let _ = std::fs::remove_dir_all(&dir);
    }
}
