//! The sending end: a file or tree walked depth first into ENTRY, FILE_DATA, ENTRY_END
//! and COPY_DONE frames.

use crate::error::FilesError;
use crate::paths::display_join;
use crate::root::Root;
use bytes::Bytes;
use nix::dir::Dir;
use nix::fcntl::{openat, readlinkat, AtFlags, OFlag};
use nix::sys::stat::{fstat, fstatat, FileStat, Mode, SFlag};
use sha2::{Digest, Sha256};
use std::io::Read;
use std::os::fd::{AsFd, BorrowedFd};
use std::path::Path;
use tether_proto::{CopySummary, EntryKind, ErrorCode, FileEntry, Frame};

/// Bytes per FILE_DATA frame: large enough that framing costs nothing, small enough
/// that a copy holds little (the queues hold a few chunks).
pub const CHUNK: usize = 512 * 1024;

/// Walks `path` (resolved under `root`) and hands each frame of the copy to `emit`:
/// for every object depth first an ENTRY (a directory before its contents, each
/// directory's names in byte order), for a file its content in FILE_DATA frames of at
/// most [`CHUNK`] bytes and an ENTRY_END with its SHA-256, and last COPY_DONE with the
/// counts, which are also returned.
///
/// Nothing is followed: a symlink is sent as a link, wherever it points. Sockets, FIFOs
/// and devices are skipped (counted in `skipped`). `emit` returns `false` once nobody
/// takes frames any more; the walk then stops.
///
/// ```no_run
/// use tether_files::{send_tree, Root};
/// let mut frames = Vec::new();
/// let summary = send_tree(&Root::anywhere(), "/etc/hosts".as_ref(), &mut |f| {
///     frames.push(f);
///     true
/// })?;
/// assert_eq!(summary.files, 1);
/// # Ok::<(), tether_files::FilesError>(())
/// ```
pub fn send_tree(
    root: &Root,
    path: &Path,
    emit: &mut dyn FnMut(Frame) -> bool,
) -> Result<CopySummary, FilesError> {
    let (parent, name) = root.parent_of(path)?;
    let mut walk = Walk {
        emit,
        summary: CopySummary::default(),
    };
    let shown = path.display().to_string();
    let st = fstatat(parent.as_fd(), name.as_str(), AtFlags::AT_SYMLINK_NOFOLLOW)
        .map_err(|e| FilesError::errno(&shown, e))?;
    walk.visit(parent.as_fd(), &name, &name, &shown, &st)?;
    let summary = walk.summary.clone();
    walk.send(Frame::CopyDone(summary.clone()))?;
    Ok(summary)
}

struct Walk<'a> {
    emit: &'a mut dyn FnMut(Frame) -> bool,
    summary: CopySummary,
}

/// The error when the receiving side of `emit` has gone.
fn gone() -> FilesError {
    FilesError::new(ErrorCode::Io, "the copy's connection ended")
}

impl Walk<'_> {
    fn send(&mut self, frame: Frame) -> Result<(), FilesError> {
        if (self.emit)(frame) {
            Ok(())
        } else {
            Err(gone())
        }
    }

    /// Sends the object `name` in `parent`, whose lstat is `st`, as entry `rel`.
    fn visit(
        &mut self,
        parent: BorrowedFd,
        name: &str,
        rel: &str,
        shown: &str,
        st: &FileStat,
    ) -> Result<(), FilesError> {
        match SFlag::from_bits_truncate(st.st_mode) & SFlag::S_IFMT {
            SFlag::S_IFREG => self.file(parent, name, rel, shown),
            SFlag::S_IFDIR => self.dir(parent, name, rel, shown),
            SFlag::S_IFLNK => self.symlink(parent, name, rel, shown, st),
            _ => {
                tracing::warn!("{shown}: skipped: not a file, directory or symlink");
                self.summary.skipped += 1;
                Ok(())
            }
        }
    }

    fn file(
        &mut self,
        parent: BorrowedFd,
        name: &str,
        rel: &str,
        shown: &str,
    ) -> Result<(), FilesError> {
        // O_NONBLOCK: should the name have become a FIFO since the lstat, the open must
        // not hang; fstat of what was opened decides.
        let flags = OFlag::O_RDONLY | OFlag::O_NOFOLLOW | OFlag::O_CLOEXEC | OFlag::O_NONBLOCK;
        let fd =
            openat(parent, name, flags, Mode::empty()).map_err(|e| FilesError::errno(shown, e))?;
        let st = fstat(&fd).map_err(|e| FilesError::errno(shown, e))?;
        if SFlag::from_bits_truncate(st.st_mode) & SFlag::S_IFMT != SFlag::S_IFREG {
            return Err(FilesError::new(
                ErrorCode::Io,
                format!("{shown}: changed into something else while being copied"),
            ));
        }
        self.send(Frame::Entry(entry(rel, EntryKind::File, &st, None)))?;
        let mut file = std::fs::File::from(fd);
        let mut hash = Sha256::new();
        loop {
            // A fresh buffer per chunk: it travels on inside the frame, uncopied.
            let mut buf = Vec::with_capacity(CHUNK);
            let n = (&mut file)
                .take(CHUNK as u64)
                .read_to_end(&mut buf)
                .map_err(|e| FilesError::io(shown, &e))?;
            if n == 0 {
                break;
            }
            hash.update(&buf);
            self.summary.bytes += n as u64;
            self.send(Frame::FileData(Bytes::from(buf)))?;
            if n < CHUNK {
                break;
            }
        }
        self.send(Frame::EntryEnd {
            sha256: hash.finalize().into(),
        })?;
        self.summary.files += 1;
        Ok(())
    }

    fn dir(
        &mut self,
        parent: BorrowedFd,
        name: &str,
        rel: &str,
        shown: &str,
    ) -> Result<(), FilesError> {
        let flags = OFlag::O_RDONLY | OFlag::O_DIRECTORY | OFlag::O_NOFOLLOW | OFlag::O_CLOEXEC;
        let mut dir = Dir::openat(parent, name, flags, Mode::empty())
            .map_err(|e| FilesError::errno(shown, e))?;
        let st = fstat(&dir).map_err(|e| FilesError::errno(shown, e))?;
        self.send(Frame::Entry(entry(rel, EntryKind::Dir, &st, None)))?;
        self.summary.dirs += 1;
        let mut names = Vec::new();
        for e in dir.iter() {
            let e = e.map_err(|e| FilesError::errno(shown, e))?;
            let n = e.file_name().to_bytes();
            if n != b"." && n != b".." {
                names.push(e.file_name().to_owned());
            }
        }
        names.sort_unstable();
        for n in names {
            let child_shown = display_join(shown, &n.to_string_lossy());
            let child = n.to_str().map_err(|_| {
                FilesError::new(
                    ErrorCode::Io,
                    format!("{child_shown}: the name is not UTF-8; tether copies UTF-8 names only"),
                )
            })?;
            let st = match fstatat(dir.as_fd(), child, AtFlags::AT_SYMLINK_NOFOLLOW) {
                Ok(st) => st,
                // Removed since the directory was read: as if it had never been there.
                Err(nix::errno::Errno::ENOENT) => continue,
                Err(e) => return Err(FilesError::errno(&child_shown, e)),
            };
            let child_rel = format!("{rel}/{child}");
            self.visit(dir.as_fd(), child, &child_rel, &child_shown, &st)?;
        }
        Ok(())
    }

    fn symlink(
        &mut self,
        parent: BorrowedFd,
        name: &str,
        rel: &str,
        shown: &str,
        st: &FileStat,
    ) -> Result<(), FilesError> {
        let target = readlinkat(parent, name).map_err(|e| FilesError::errno(shown, e))?;
        let target = target.into_string().map_err(|_| {
            FilesError::new(
                ErrorCode::Io,
                format!("{shown}: the link's target is not UTF-8; tether copies UTF-8 names only"),
            )
        })?;
        self.send(Frame::Entry(entry(
            rel,
            EntryKind::Symlink,
            st,
            Some(target),
        )))?;
        self.summary.symlinks += 1;
        Ok(())
    }
}

/// The entry describing an object with status `st`.
fn entry(path: &str, kind: EntryKind, st: &FileStat, target: Option<String>) -> FileEntry {
    FileEntry {
        path: path.to_string(),
        kind,
        mode: st.st_mode & 0o7777,
        uid: st.st_uid,
        gid: st.st_gid,
        mtime_ns: st.st_mtime * 1_000_000_000 + st.st_mtime_nsec,
        size: if kind == EntryKind::File {
            st.st_size as u64
        } else {
            0
        },
        target,
    }
}
