//! The receiving end: entries checked, files written to temporaries and renamed into
//! place once their SHA-256 matches, directories' modes and times applied after their
//! contents.

use crate::error::FilesError;
use crate::paths::{display_join, entry_components, wants_dir};
use crate::root::Root;
use crate::temp::{Temp, TempFile};
use nix::errno::Errno;
use nix::fcntl::{openat, AtFlags, OFlag};
use nix::sys::stat::{fchmod, futimens, mkdirat, utimensat, Mode, UtimensatFlags};
use nix::sys::time::TimeSpec;
use nix::unistd::{fchown, fchownat, symlinkat, Gid, Uid};
use sha2::{Digest, Sha256};
use std::io::Write;
use std::os::fd::OwnedFd;
use std::path::PathBuf;
use std::sync::Arc;
use tether_proto::{CopySummary, EntryKind, ErrorCode, FileEntry, Frame};

/// Applies the frames of one copy (ENTRY, FILE_DATA, ENTRY_END, COPY_DONE) to the
/// filesystem at `dest`, refusing anything docs/protocol.md does not allow.
///
/// Where the copy lands follows `cp -r`: when `dest` is an existing directory the root
/// goes inside it under its own name, otherwise it is created (or, for a file, replaced)
/// as `dest`. Each entry must name the root or a path under it whose directory was sent
/// before it, depth first.
///
/// Every file is written to a temporary in its final directory (unnamed, `O_TMPFILE`,
/// where the filesystem offers it, so that even a process killed outright leaves nothing;
/// else `.NAME.tether-XXXXXX`) and renamed over its final name only after its SHA-256
/// matched the sender's; its mode, owner (when this process is root) and modification
/// time are set before the rename. A directory gets its mode, owner and time once the
/// walk has left it (so a read-only directory can still be filled, and its time is not
/// disturbed by its contents). Dropping the receiver before COPY_DONE removes the
/// temporary of a file in flight; what was renamed into place stays.
///
/// ```no_run
/// use tether_files::{send_tree, Receiver, Root};
/// let mut rx = Receiver::new(Root::anywhere(), "/tmp/copy-of-etc".into());
/// let mut result = None;
/// send_tree(&Root::anywhere(), "/etc/ssh".as_ref(), &mut |f| {
///     result = rx.frame(f).expect("applied");
///     true
/// })?;
/// assert!(result.is_some(), "COPY_DONE came last");
/// # Ok::<(), tether_files::FilesError>(())
/// ```
pub struct Receiver {
    root: Root,
    dest: PathBuf,
    chown: bool,
    tree: Option<Tree>,
    file: Option<Incoming>,
    summary: CopySummary,
}

/// Whether a file's content matched its ENTRY_END, when a stage before the receiver
/// (see `pump`) computed the SHA-256 so that hashing and writing overlap.
pub(crate) type Verdict = Option<bool>;

/// Where the copy's root went and the directories the walk is inside.
struct Tree {
    sender_root: String,
    /// Open directories, outermost first: an entry's directory must be one of them.
    dirs: Vec<OpenDir>,
}

struct OpenDir {
    /// The sender's path for it.
    path: String,
    fd: Arc<OwnedFd>,
    entry: FileEntry,
    shown: String,
}

/// A file whose content is arriving.
struct Incoming {
    temp: TempFile,
    file: std::fs::File,
    entry: FileEntry,
    name: String,
    shown: String,
    /// None when a stage before the receiver hashes.
    hash: Option<Sha256>,
    got: u64,
}

/// Where an entry goes: its directory, its name there, its path for messages.
struct Place {
    dir: Arc<OwnedFd>,
    name: String,
    shown: String,
}

impl Receiver {
    /// A receiver for a copy to `dest`, resolved under `root`.
    pub fn new(root: Root, dest: PathBuf) -> Receiver {
        Receiver {
            root,
            dest,
            chown: nix::unistd::geteuid().is_root(),
            tree: None,
            file: None,
            summary: CopySummary::default(),
        }
    }

    /// Applies one frame; returns the summary of what is in place once COPY_DONE has
    /// been applied (the copy is then complete).
    pub fn frame(&mut self, frame: Frame) -> Result<Option<CopySummary>, FilesError> {
        self.apply(frame, None, true)
    }

    /// Applies one frame whose file content was hashed before it came here: `verdict`
    /// says, for an ENTRY_END, whether the content matched.
    pub(crate) fn frame_verified(
        &mut self,
        frame: Frame,
        verdict: Verdict,
    ) -> Result<Option<CopySummary>, FilesError> {
        self.apply(frame, verdict, false)
    }

    fn apply(
        &mut self,
        frame: Frame,
        verdict: Verdict,
        hash_here: bool,
    ) -> Result<Option<CopySummary>, FilesError> {
        match frame {
            Frame::Entry(e) if self.file.is_none() => self.entry(e, hash_here).map(|()| None),
            Frame::FileData(b) => match &mut self.file {
                Some(f) => f.write(&b).map(|()| None),
                None => Err(FilesError::bad_frame("FILE_DATA outside a file entry")),
            },
            Frame::EntryEnd { sha256 } => match self.file.take() {
                Some(f) => self.finish_file(f, &sha256, verdict).map(|()| None),
                None => Err(FilesError::bad_frame("ENTRY_END outside a file entry")),
            },
            Frame::CopyDone(sent) if self.file.is_none() => self.done(&sent).map(Some),
            f => Err(FilesError::bad_frame(format!(
                "{:?} frame out of place during a copy{}",
                f.kind(),
                if self.file.is_some() {
                    " (a file's ENTRY_END is due)"
                } else {
                    ""
                }
            ))),
        }
    }

    fn entry(&mut self, e: FileEntry, hash_here: bool) -> Result<(), FilesError> {
        let parts = entry_components(&e.path)?;
        let place = match &mut self.tree {
            None if parts.len() == 1 => {
                let (place, tree) = self.land(&e)?;
                self.tree = Some(tree);
                place
            }
            None => {
                return Err(FilesError::bad_frame(format!(
                    "entry {:?}: the first entry must be the copy's root, a single name",
                    e.path
                )))
            }
            Some(tree) => tree.place(&e.path, &parts, self.chown)?,
        };
        match e.kind {
            EntryKind::Dir => self.dir(e, place),
            EntryKind::File => self.start_file(e, place, hash_here),
            EntryKind::Symlink => self.symlink(e, place),
        }
    }

    /// Resolves the destination for the root entry `e`.
    fn land(&self, e: &FileEntry) -> Result<(Place, Tree), FilesError> {
        let shown = self.dest.display().to_string();
        let place = match self.root.open_dir(&self.dest) {
            Ok(fd) => Place {
                dir: Arc::new(fd),
                name: e.path.clone(),
                shown: display_join(&shown, &e.path),
            },
            Err(err @ (Errno::ENOENT | Errno::ENOTDIR)) => {
                if wants_dir(&self.dest) && e.kind != EntryKind::Dir {
                    return Err(FilesError::errno(&shown, err));
                }
                let (dir, name) = self.root.parent_of(&self.dest)?;
                Place {
                    dir: Arc::new(dir),
                    name,
                    shown,
                }
            }
            Err(err) => return Err(FilesError::errno(&shown, err)),
        };
        let tree = Tree {
            sender_root: e.path.clone(),
            dirs: Vec::new(),
        };
        Ok((place, tree))
    }

    fn dir(&mut self, e: FileEntry, place: Place) -> Result<(), FilesError> {
        // Owner-writable until its contents are in; its own mode comes after them.
        match mkdirat(
            place.dir.as_ref(),
            place.name.as_str(),
            Mode::from_bits_truncate(0o700),
        ) {
            Ok(()) | Err(Errno::EEXIST) => {}
            Err(err) => return Err(FilesError::errno(&place.shown, err)),
        }
        let flags = OFlag::O_RDONLY | OFlag::O_DIRECTORY | OFlag::O_NOFOLLOW | OFlag::O_CLOEXEC;
        let fd = openat(
            place.dir.as_ref(),
            place.name.as_str(),
            flags,
            Mode::empty(),
        )
        .map_err(|err| match err {
            Errno::ENOTDIR | Errno::ELOOP => FilesError::new(
                ErrorCode::Io,
                format!("{}: exists and is not a directory", place.shown),
            ),
            err => FilesError::errno(&place.shown, err),
        })?;
        self.summary.dirs += 1;
        let tree = self.tree.as_mut().expect("set by the root entry");
        tree.dirs.push(OpenDir {
            path: e.path.clone(),
            fd: Arc::new(fd),
            entry: e,
            shown: place.shown,
        });
        Ok(())
    }

    fn start_file(
        &mut self,
        e: FileEntry,
        place: Place,
        hash_here: bool,
    ) -> Result<(), FilesError> {
        let (temp, fd) = TempFile::create(&place.dir, &place.name)
            .map_err(|err| FilesError::errno(&place.shown, err))?;
        self.file = Some(Incoming {
            temp,
            file: std::fs::File::from(fd),
            entry: e,
            name: place.name,
            shown: place.shown,
            hash: hash_here.then(Sha256::new),
            got: 0,
        });
        Ok(())
    }

    fn finish_file(
        &mut self,
        f: Incoming,
        sha256: &[u8; 32],
        verdict: Verdict,
    ) -> Result<(), FilesError> {
        let matched = match (&f.hash, verdict) {
            (Some(h), _) => <[u8; 32]>::from(h.clone().finalize()) == *sha256,
            (None, Some(m)) => m,
            (None, None) => false,
        };
        if !matched {
            // Dropping `f.temp` removes the temporary.
            return Err(FilesError::new(
                ErrorCode::Checksum,
                format!(
                    "{}: the content received does not match the SHA-256 sent with it",
                    f.shown
                ),
            ));
        }
        let fail = |err| FilesError::errno(&f.shown, err);
        if self.chown {
            fchown(
                &f.file,
                Some(Uid::from_raw(f.entry.uid)),
                Some(Gid::from_raw(f.entry.gid)),
            )
            .map_err(fail)?;
        }
        fchmod(&f.file, mode(&f.entry)).map_err(fail)?;
        futimens(&f.file, &TimeSpec::UTIME_OMIT, &mtime(&f.entry)).map_err(fail)?;
        f.temp.commit(&f.file, &f.name).map_err(fail)?;
        drop(f.file);
        self.summary.files += 1;
        self.summary.bytes += f.got;
        Ok(())
    }

    fn symlink(&mut self, e: FileEntry, place: Place) -> Result<(), FilesError> {
        let target = match e.target.as_deref() {
            Some(t) if !t.is_empty() && !t.contains('\0') => t,
            _ => {
                return Err(FilesError::bad_frame(format!(
                    "symlink entry {:?} without a valid target",
                    e.path
                )))
            }
        };
        let fail = |err| FilesError::errno(&place.shown, err);
        let dir = place.dir.as_ref();
        let (temp, ()) =
            Temp::create(&place.dir, &place.name, |t| symlinkat(target, dir, t)).map_err(fail)?;
        if self.chown {
            fchownat(
                dir,
                temp.name.as_str(),
                Some(Uid::from_raw(e.uid)),
                Some(Gid::from_raw(e.gid)),
                AtFlags::AT_SYMLINK_NOFOLLOW,
            )
            .map_err(fail)?;
        }
        utimensat(
            dir,
            temp.name.as_str(),
            &TimeSpec::UTIME_OMIT,
            &mtime(&e),
            UtimensatFlags::NoFollowSymlink,
        )
        .map_err(fail)?;
        temp.commit(&place.name).map_err(fail)?;
        self.summary.symlinks += 1;
        Ok(())
    }

    fn done(&mut self, sent: &CopySummary) -> Result<CopySummary, FilesError> {
        let Some(tree) = &mut self.tree else {
            return Err(FilesError::bad_frame("COPY_DONE before any entry"));
        };
        while let Some(d) = tree.dirs.pop() {
            finish_dir(&d, self.chown)?;
        }
        let mut ours = self.summary.clone();
        ours.skipped = sent.skipped;
        if &ours != sent {
            return Err(FilesError::bad_frame(format!(
                "COPY_DONE counts {sent:?}, but {ours:?} arrived"
            )));
        }
        Ok(ours)
    }
}

impl Tree {
    /// Where entry `path` (already checked into `parts`) goes: its directory must be
    /// open. Directories the walk has left are finished on the way.
    fn place(&mut self, path: &str, parts: &[&str], chown: bool) -> Result<Place, FilesError> {
        if parts.len() < 2 || parts[0] != self.sender_root {
            return Err(FilesError::bad_frame(format!(
                "entry {path:?} is not under the copy's root {:?}",
                self.sender_root
            )));
        }
        let (parent, name) = path.rsplit_once('/').expect("two parts or more");
        while let Some(top) = self.dirs.last() {
            if top.path == parent {
                return Ok(Place {
                    dir: top.fd.clone(),
                    name: name.to_string(),
                    shown: display_join(&top.shown, name),
                });
            }
            let d = self.dirs.pop().expect("just seen");
            finish_dir(&d, chown)?;
        }
        Err(FilesError::bad_frame(format!(
            "entry {path:?} arrived without its directory right before it (entries go depth first, each directory before its contents)"
        )))
    }
}

impl Incoming {
    fn write(&mut self, b: &[u8]) -> Result<(), FilesError> {
        self.file
            .write_all(b)
            .map_err(|e| FilesError::io(&self.shown, &e))?;
        if let Some(h) = &mut self.hash {
            h.update(b);
        }
        self.got += b.len() as u64;
        Ok(())
    }
}

/// A directory's owner, mode and time, once its contents are in.
fn finish_dir(d: &OpenDir, chown: bool) -> Result<(), FilesError> {
    let fail = |err| FilesError::errno(&d.shown, err);
    if chown {
        fchown(
            d.fd.as_ref(),
            Some(Uid::from_raw(d.entry.uid)),
            Some(Gid::from_raw(d.entry.gid)),
        )
        .map_err(fail)?;
    }
    fchmod(d.fd.as_ref(), mode(&d.entry)).map_err(fail)?;
    futimens(d.fd.as_ref(), &TimeSpec::UTIME_OMIT, &mtime(&d.entry)).map_err(fail)
}

fn mode(e: &FileEntry) -> Mode {
    Mode::from_bits_truncate(e.mode & 0o7777)
}

fn mtime(e: &FileEntry) -> TimeSpec {
    TimeSpec::new(
        e.mtime_ns.div_euclid(1_000_000_000),
        e.mtime_ns.rem_euclid(1_000_000_000),
    )
}
