//! Temporaries: each file and symlink is made beside its final name and renamed into
//! place only once complete, so the final name never shows a half file.
//!
//! A file's content goes into an unnamed file (`O_TMPFILE`) where the filesystem offers
//! one (ext4, xfs, btrfs, tmpfs, overlayfs from Linux 6.6): a copy killed outright then
//! leaves nothing behind, since the kernel frees an unnamed file with its last
//! descriptor. It gets a name only once complete, just before the rename. Elsewhere, and
//! for symlinks, the temporary is named from the start; such names are recognizably
//! tether's (`.NAME.tether-XXXXXX`) for whoever finds one left by a killed copy.

use nix::errno::Errno;
use nix::fcntl::{openat, AtFlags, OFlag};
use nix::sys::stat::Mode;
use nix::unistd::UnlinkatFlags;
use std::os::fd::{AsFd, AsRawFd, OwnedFd};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, OnceLock};

/// The marker in every temporary's name.
pub const TEMP_MARKER: &str = ".tether-";

/// A temporary name for `name`: `.NAME.tether-XXXXXX`, with `NAME` cut (at a character
/// boundary) so the whole stays within 255 bytes.
///
/// ```
/// let t = tether_files::temp_name("app.log");
/// assert!(t.starts_with(".app.log.tether-") && t.len() == ".app.log.tether-".len() + 6);
/// assert!(tether_files::temp_name(&"é".repeat(127)).len() <= 255);
/// ```
pub fn temp_name(name: &str) -> String {
    const ALPHABET: &[u8] = b"abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789";
    let mut random = [0u8; 6];
    getrandom::fill(&mut random).expect("the operating system's random source");
    let suffix: String = random
        .iter()
        .map(|b| ALPHABET[*b as usize % ALPHABET.len()] as char)
        .collect();
    let room = 255 - 1 - TEMP_MARKER.len() - suffix.len();
    let mut cut = name.len().min(room);
    while !name.is_char_boundary(cut) {
        cut -= 1;
    }
    format!(".{}{TEMP_MARKER}{suffix}", &name[..cut])
}

/// Whether `name` looks like one of tether's temporaries.
pub fn is_temp_name(name: &str) -> bool {
    name.starts_with('.')
        && name
            .rsplit_once(TEMP_MARKER)
            .is_some_and(|(_, s)| s.len() == 6 && s.bytes().all(|b| b.is_ascii_alphanumeric()))
}

/// A temporary in a directory, removed when dropped unless [`Temp::committed`].
pub(crate) struct Temp {
    pub(crate) dir: Arc<OwnedFd>,
    pub(crate) name: String,
    live: bool,
}

impl Temp {
    /// Runs `make` with fresh temporary names for `final_name` until one is free
    /// (`make` fails with EEXIST when taken).
    pub(crate) fn create<T>(
        dir: &Arc<OwnedFd>,
        final_name: &str,
        mut make: impl FnMut(&str) -> Result<T, Errno>,
    ) -> Result<(Temp, T), Errno> {
        loop {
            let name = temp_name(final_name);
            match make(&name) {
                Ok(t) => {
                    let temp = Temp {
                        dir: dir.clone(),
                        name,
                        live: true,
                    };
                    return Ok((temp, t));
                }
                Err(Errno::EEXIST) => continue,
                Err(e) => return Err(e),
            }
        }
    }

    /// Renames the temporary to `final_name` in the same directory, replacing what is
    /// there (atomically); it is no longer removed on drop.
    pub(crate) fn commit(mut self, final_name: &str) -> Result<(), Errno> {
        nix::fcntl::renameat(
            self.dir.as_ref(),
            self.name.as_str(),
            self.dir.as_ref(),
            final_name,
        )?;
        self.live = false;
        Ok(())
    }
}

/// Where a received file's content is written until it is complete.
pub(crate) struct TempFile {
    dir: Arc<OwnedFd>,
    /// `None` while the file is unnamed (`O_TMPFILE`).
    named: Option<Temp>,
}

impl TempFile {
    /// A file for `final_name`'s content in `dir`, open for writing: unnamed where the
    /// filesystem allows it, else under a temporary name.
    pub(crate) fn create(
        dir: &Arc<OwnedFd>,
        final_name: &str,
    ) -> Result<(TempFile, OwnedFd), Errno> {
        // An unnamed file is named later through /proc/self/fd where AT_EMPTY_PATH is
        // not allowed (it needs CAP_DAC_READ_SEARCH); without /proc, name it now.
        static PROC_FD: OnceLock<bool> = OnceLock::new();
        if *PROC_FD.get_or_init(|| std::path::Path::new("/proc/self/fd").is_dir()) {
            let flags = OFlag::O_TMPFILE | OFlag::O_WRONLY | OFlag::O_CLOEXEC;
            // Any failure (EOPNOTSUPP, or EISDIR from kernels without O_TMPFILE) leaves
            // the named way, which reports what is really wrong, if anything.
            if let Ok(fd) = openat(dir.as_ref(), ".", flags, Mode::from_bits_truncate(0o600)) {
                let temp = TempFile {
                    dir: dir.clone(),
                    named: None,
                };
                return Ok((temp, fd));
            }
        }
        Self::create_named(dir, final_name)
    }

    /// A file for `final_name`'s content in `dir` under a temporary name.
    fn create_named(dir: &Arc<OwnedFd>, final_name: &str) -> Result<(TempFile, OwnedFd), Errno> {
        let flags =
            OFlag::O_WRONLY | OFlag::O_CREAT | OFlag::O_EXCL | OFlag::O_NOFOLLOW | OFlag::O_CLOEXEC;
        let (temp, fd) = Temp::create(dir, final_name, |t| {
            openat(dir.as_ref(), t, flags, Mode::from_bits_truncate(0o600))
        })?;
        let temp = TempFile {
            dir: dir.clone(),
            named: Some(temp),
        };
        Ok((temp, fd))
    }

    /// Puts the complete content of `file` (the descriptor [`TempFile::create`] gave) in
    /// place as `final_name`, replacing what is there, atomically.
    pub(crate) fn commit(self, file: &impl AsFd, final_name: &str) -> Result<(), Errno> {
        let temp = match self.named {
            Some(temp) => temp,
            // linkat cannot replace a file, so the unnamed file gets a temporary name
            // first, for the moment until the rename.
            None => {
                let (temp, ()) =
                    Temp::create(&self.dir, final_name, |t| link_unnamed(file, &self.dir, t))?;
                temp
            }
        };
        temp.commit(final_name)
    }

    /// Whether the content is being written to an unnamed file.
    #[cfg(test)]
    fn is_unnamed(&self) -> bool {
        self.named.is_none()
    }
}

/// Gives unnamed file `file` the name `name` in `dir`: by its descriptor when this process
/// may (root, as the agent usually is: no path walk), else through /proc/self/fd.
fn link_unnamed(file: &impl AsFd, dir: &OwnedFd, name: &str) -> Result<(), Errno> {
    // Set once AT_EMPTY_PATH is refused, so unprivileged copies do not ask every time.
    static EMPTY_PATH_REFUSED: AtomicBool = AtomicBool::new(false);
    if !EMPTY_PATH_REFUSED.load(Ordering::Relaxed) {
        match nix::unistd::linkat(file.as_fd(), "", dir, name, AtFlags::AT_EMPTY_PATH) {
            Err(Errno::EPERM | Errno::ENOENT | Errno::EACCES) => {
                EMPTY_PATH_REFUSED.store(true, Ordering::Relaxed);
            }
            done => return done,
        }
    }
    link_by_proc(file, dir, name)
}

/// [`link_unnamed`] through /proc/self/fd, which any user may do.
fn link_by_proc(file: &impl AsFd, dir: &OwnedFd, name: &str) -> Result<(), Errno> {
    let proc_path = format!("/proc/self/fd/{}", file.as_fd().as_raw_fd());
    nix::unistd::linkat(
        nix::fcntl::AT_FDCWD,
        proc_path.as_str(),
        dir,
        name,
        AtFlags::AT_SYMLINK_FOLLOW,
    )
}

impl Drop for Temp {
    fn drop(&mut self) {
        if self.live {
            let _ = nix::unistd::unlinkat(
                self.dir.as_ref(),
                self.name.as_str(),
                UnlinkatFlags::NoRemoveDir,
            );
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn temporaries_are_recognizable_and_fresh() {
        let a = temp_name("x");
        let b = temp_name("x");
        assert_ne!(a, b);
        assert!(is_temp_name(&a));
        assert!(!is_temp_name("x"));
        assert!(!is_temp_name(".x.tether-ab"));
        assert!(is_temp_name(&temp_name(&"n".repeat(255))));
    }

    fn names(dir: &std::path::Path) -> Vec<String> {
        let mut v: Vec<String> = std::fs::read_dir(dir)
            .unwrap()
            .map(|e| e.unwrap().file_name().into_string().unwrap())
            .collect();
        v.sort();
        v
    }

    fn open_dir(path: &std::path::Path) -> Arc<OwnedFd> {
        let flags = OFlag::O_RDONLY | OFlag::O_DIRECTORY | OFlag::O_CLOEXEC;
        Arc::new(nix::fcntl::open(path, flags, Mode::empty()).unwrap())
    }

    #[test]
    fn an_unnamed_file_shows_nowhere_until_committed_and_is_gone_if_never_committed() {
        let t = tempfile::tempdir().unwrap();
        let dir = open_dir(t.path());
        std::fs::write(t.path().join("f"), "old").unwrap();
        let (temp, fd) = TempFile::create(&dir, "f").unwrap();
        assert!(temp.is_unnamed(), "ext4 and tmpfs offer O_TMPFILE");
        let mut file = std::fs::File::from(fd);
        std::io::Write::write_all(&mut file, b"new content").unwrap();
        assert_eq!(names(t.path()), ["f"], "nothing shows while it is written");
        temp.commit(&file, "f").unwrap();
        drop(file);
        assert_eq!(names(t.path()), ["f"]);
        assert_eq!(
            std::fs::read_to_string(t.path().join("f")).unwrap(),
            "new content"
        );

        // A copy killed outright runs no destructor: leaking both leaves no trace.
        let (temp, fd) = TempFile::create(&dir, "g").unwrap();
        nix::unistd::write(&fd, b"half").unwrap();
        std::mem::forget(temp);
        drop(fd);
        assert_eq!(names(t.path()), ["f"]);
    }

    #[test]
    fn an_unprivileged_process_names_an_unnamed_file_through_proc() {
        let t = tempfile::tempdir().unwrap();
        let dir = open_dir(t.path());
        let (temp, fd) = TempFile::create(&dir, "f").unwrap();
        assert!(temp.is_unnamed());
        nix::unistd::write(&fd, b"via proc").unwrap();
        link_by_proc(&fd, &dir, "named").unwrap();
        assert_eq!(names(t.path()), ["named"]);
        assert_eq!(
            std::fs::read_to_string(t.path().join("named")).unwrap(),
            "via proc"
        );
    }

    #[test]
    fn a_named_temporary_shows_under_a_temporary_name_and_commits_the_same_way() {
        let t = tempfile::tempdir().unwrap();
        let dir = open_dir(t.path());
        let (temp, fd) = TempFile::create_named(&dir, "f").unwrap();
        assert!(!temp.is_unnamed());
        nix::unistd::write(&fd, b"data").unwrap();
        let during = names(t.path());
        assert!(
            during.len() == 1 && during[0].starts_with(".f.tether-"),
            "{during:?}"
        );
        temp.commit(&fd, "f").unwrap();
        assert_eq!(names(t.path()), ["f"]);
        assert_eq!(std::fs::read_to_string(t.path().join("f")).unwrap(), "data");
    }
}
