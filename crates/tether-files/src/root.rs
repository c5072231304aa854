//! Where a copy's paths resolve: anywhere, or confined beneath one directory.

use crate::error::FilesError;
use crate::paths::split_path;
use nix::errno::Errno;
use nix::fcntl::{openat, openat2, OFlag, OpenHow, ResolveFlag, AT_FDCWD};
use nix::sys::stat::Mode;
use std::os::fd::OwnedFd;
use std::path::{Path, PathBuf};
use std::sync::Arc;

/// How a copy's paths (the source of a COPY_OUT, the destination of a COPY_IN) are
/// resolved.
///
/// [`Root::anywhere`] resolves them as any program would: absolute, or relative to the
/// working directory. [`Root::beneath`] treats a directory as `/`: every path is taken
/// relative to it and resolved with `openat2(RESOLVE_BENEATH | RESOLVE_NO_MAGICLINKS)`
/// from a descriptor of it, so `..` above it, absolute symlinks, relative symlinks that
/// climb out and `/proc` magic links are refused by the kernel at resolution time (the
/// error is `denied`). Inside a copied tree nothing is ever resolved by path again: each
/// name is opened with `O_NOFOLLOW` relative to its parent's descriptor.
///
/// ```no_run
/// use tether_files::Root;
/// let root = Root::beneath("/srv/uploads".as_ref())?;
/// assert!(root.is_confined());
/// # Ok::<(), std::io::Error>(())
/// ```
#[derive(Clone, Debug, Default)]
pub struct Root {
    dir: Option<Arc<OwnedFd>>,
}

impl Root {
    /// Paths resolve as they would for any program.
    pub fn anywhere() -> Root {
        Root { dir: None }
    }

    /// Paths resolve beneath `dir`, which must be an existing directory.
    pub fn beneath(dir: &Path) -> std::io::Result<Root> {
        let fd = openat(
            AT_FDCWD,
            dir,
            OFlag::O_PATH | OFlag::O_DIRECTORY | OFlag::O_CLOEXEC,
            Mode::empty(),
        )
        .map_err(|e| std::io::Error::other(format!("{}: {}", dir.display(), e.desc())))?;
        Ok(Root {
            dir: Some(Arc::new(fd)),
        })
    }

    /// Whether paths are confined beneath a directory.
    pub fn is_confined(&self) -> bool {
        self.dir.is_some()
    }

    /// Opens `path` as a directory (`O_PATH`), following symlinks as the policy allows.
    pub fn open_dir(&self, path: &Path) -> Result<OwnedFd, Errno> {
        let flags = OFlag::O_PATH | OFlag::O_DIRECTORY | OFlag::O_CLOEXEC;
        match &self.dir {
            None => openat(AT_FDCWD, path, flags, Mode::empty()),
            Some(root) => {
                let how = OpenHow::new()
                    .flags(flags)
                    .resolve(ResolveFlag::RESOLVE_BENEATH | ResolveFlag::RESOLVE_NO_MAGICLINKS);
                openat2(root.as_ref(), &beneath(path), how)
            }
        }
    }

    /// Opens the directory holding `path` and returns it with `path`'s last name; the
    /// name itself is not resolved (so a symlink there is never followed).
    pub fn parent_of(&self, path: &Path) -> Result<(OwnedFd, String), FilesError> {
        let (dir, name) = split_path(path)?;
        let fd = self
            .open_dir(&dir)
            .map_err(|e| FilesError::errno(dir.display(), e))?;
        Ok((fd, name))
    }
}

/// A path taken relative to the root: leading slashes dropped, `.` for the root itself.
fn beneath(path: &Path) -> PathBuf {
    use std::os::unix::ffi::OsStrExt;
    let bytes = path.as_os_str().as_bytes();
    match bytes.iter().position(|b| *b != b'/') {
        Some(i) => PathBuf::from(std::ffi::OsStr::from_bytes(&bytes[i..])),
        None => PathBuf::from("."),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn paths_beneath_the_root_lose_their_leading_slashes() {
        assert_eq!(beneath(Path::new("/srv/a")), Path::new("srv/a"));
        assert_eq!(beneath(Path::new("//srv")), Path::new("srv"));
        assert_eq!(beneath(Path::new("/")), Path::new("."));
        assert_eq!(beneath(Path::new("srv")), Path::new("srv"));
    }

    #[test]
    fn confinement_refuses_every_way_out() {
        let t = tempfile::tempdir().unwrap();
        let root = t.path().join("root");
        let outside = t.path().join("outside");
        std::fs::create_dir_all(root.join("in")).unwrap();
        std::fs::create_dir_all(&outside).unwrap();
        std::os::unix::fs::symlink(&outside, root.join("abs")).unwrap();
        std::os::unix::fs::symlink("../outside", root.join("rel")).unwrap();
        std::os::unix::fs::symlink("in", root.join("inner")).unwrap();
        let r = Root::beneath(&root).unwrap();
        for way_out in ["..", "/in/../..", "abs", "/rel", "abs/x/.."] {
            assert_eq!(
                r.open_dir(Path::new(way_out)).unwrap_err(),
                Errno::EXDEV,
                "{way_out}"
            );
        }
        for inside in ["/", ".", "in", "/inner", "in/.."] {
            assert!(r.open_dir(Path::new(inside)).is_ok(), "{inside}");
        }
        let (_, name) = r.parent_of(Path::new("/abs")).unwrap();
        assert_eq!(name, "abs");
        let e = r.parent_of(Path::new("/abs/secret")).unwrap_err();
        assert_eq!(e.code, tether_proto::ErrorCode::Denied);
        assert_eq!(e.message, "/abs: outside the agent's root (--root)");
    }
}
