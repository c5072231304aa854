//! The walk and the receiver against each other on real directories, and the receiver
//! against frames no honest sender would send.

use bytes::Bytes;
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::Path;
use tether_files::{send_tree, FilesError, Receiver, Root};
use tether_proto::{CopySummary, EntryKind, ErrorCode, FileEntry, Frame};

fn copy(src: &Path, dest: &Path) -> Result<CopySummary, FilesError> {
    let mut rx = Receiver::new(Root::anywhere(), dest.to_path_buf());
    let mut done = None;
    let mut failed = None;
    send_tree(&Root::anywhere(), src, &mut |f| match rx.frame(f) {
        Ok(s) => {
            done = s.or(done.take());
            true
        }
        Err(e) => {
            failed = Some(e);
            false
        }
    })
    .map_err(|e| failed.clone().unwrap_or(e))?;
    Ok(done.expect("COPY_DONE applied"))
}

fn names(dir: &Path) -> Vec<String> {
    let mut v: Vec<String> = std::fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().file_name().into_string().unwrap())
        .collect();
    v.sort();
    v
}

fn set_mtime(p: &Path, secs: i64, nsecs: i64) {
    nix::sys::stat::utimensat(
        nix::fcntl::AT_FDCWD,
        p,
        &nix::sys::time::TimeSpec::new(secs, nsecs),
        &nix::sys::time::TimeSpec::new(secs, nsecs),
        nix::sys::stat::UtimensatFlags::NoFollowSymlink,
    )
    .unwrap();
}

#[test]
fn a_tree_arrives_whole_with_modes_times_and_links() {
    let t = tempfile::tempdir().unwrap();
    let src = t.path().join("src");
    std::fs::create_dir_all(src.join("sub/deeper")).unwrap();
    std::fs::write(src.join("a.txt"), b"alpha").unwrap();
    std::fs::write(src.join("sub/run.sh"), b"#!/bin/sh\n").unwrap();
    std::fs::write(src.join("sub/deeper/empty"), b"").unwrap();
    std::fs::set_permissions(src.join("sub/run.sh"), PermissionsExt::from_mode(0o750)).unwrap();
    std::os::unix::fs::symlink("/etc/passwd", src.join("out")).unwrap();
    std::os::unix::fs::symlink("sub/run.sh", src.join("in")).unwrap();
    set_mtime(&src.join("a.txt"), 1_000_000_000, 123_456_789);
    set_mtime(&src.join("out"), 1_100_000_000, 5);
    set_mtime(&src.join("sub/deeper"), 1_200_000_000, 0);
    std::fs::set_permissions(src.join("sub/deeper"), PermissionsExt::from_mode(0o555)).unwrap();
    set_mtime(&src.join("sub/deeper"), 1_200_000_000, 0);

    let dest = t.path().join("dest");
    std::fs::create_dir(&dest).unwrap();
    let s = copy(&src, &dest).unwrap();
    assert_eq!((s.files, s.dirs, s.symlinks, s.bytes), (3, 3, 2, 15));

    let got = dest.join("src");
    assert_eq!(std::fs::read(got.join("a.txt")).unwrap(), b"alpha");
    let m = std::fs::symlink_metadata(got.join("a.txt")).unwrap();
    assert_eq!((m.mtime(), m.mtime_nsec()), (1_000_000_000, 123_456_789));
    let m = std::fs::symlink_metadata(got.join("sub/run.sh")).unwrap();
    assert_eq!(m.mode() & 0o7777, 0o750);
    assert_eq!(
        std::fs::read_link(got.join("out")).unwrap(),
        Path::new("/etc/passwd")
    );
    let m = std::fs::symlink_metadata(got.join("out")).unwrap();
    assert!(m.file_type().is_symlink());
    assert_eq!((m.mtime(), m.mtime_nsec()), (1_100_000_000, 5));
    let m = std::fs::symlink_metadata(got.join("sub/deeper")).unwrap();
    assert_eq!(m.mode() & 0o7777, 0o555);
    assert_eq!(m.mtime(), 1_200_000_000, "applied after its contents");
    assert_eq!(names(&got), ["a.txt", "in", "out", "sub"]);

    // Into a new name, and a file over an existing file.
    copy(&src, &t.path().join("renamed")).unwrap();
    assert_eq!(
        names(&t.path().join("renamed")),
        ["a.txt", "in", "out", "sub"]
    );
    std::fs::write(t.path().join("old"), b"old content that is longer").unwrap();
    copy(&src.join("a.txt"), &t.path().join("old")).unwrap();
    assert_eq!(std::fs::read(t.path().join("old")).unwrap(), b"alpha");
    // A file where a directory is wanted, and a missing parent, are named.
    let e = copy(&src.join("a.txt"), &t.path().join("nowhere/")).unwrap_err();
    assert!(e.message.contains("nowhere"), "{e}");
    let e = copy(&src, &t.path().join("no/such/dir")).unwrap_err();
    assert_eq!(e.code, ErrorCode::NotFound);
    assert!(
        e.message.starts_with("no/such") || e.message.contains("/no/such:"),
        "{e}"
    );
    let e = copy(&t.path().join("missing"), &dest).unwrap_err();
    assert_eq!(e.code, ErrorCode::NotFound);
    assert!(
        e.message.ends_with("missing: No such file or directory"),
        "{e}"
    );
    let _ = std::fs::set_permissions(got.join("sub/deeper"), PermissionsExt::from_mode(0o755));
    let _ = std::fs::set_permissions(src.join("sub/deeper"), PermissionsExt::from_mode(0o755));
    let _ = std::fs::set_permissions(
        t.path().join("renamed/sub/deeper"),
        PermissionsExt::from_mode(0o755),
    );
}

fn entry(path: &str, kind: EntryKind) -> Frame {
    Frame::Entry(FileEntry {
        path: path.into(),
        kind,
        mode: 0o644,
        uid: 0,
        gid: 0,
        mtime_ns: 0,
        size: 0,
        target: (kind == EntryKind::Symlink).then(|| "x".into()),
    })
}

/// Feeds `frames`; the first error.
fn feed(dest: &Path, frames: Vec<Frame>) -> Result<Option<CopySummary>, FilesError> {
    let mut rx = Receiver::new(Root::anywhere(), dest.to_path_buf());
    let mut last = None;
    for f in frames {
        last = rx.frame(f)?;
    }
    Ok(last)
}

#[test]
fn entries_that_break_the_rules_are_refused_before_touching_anything() {
    let t = tempfile::tempdir().unwrap();
    let d = t.path();
    let cases: Vec<(Vec<Frame>, &str)> = vec![
        (vec![entry("../up", EntryKind::Dir)], "`..`"),
        (vec![entry("/abs", EntryKind::Dir)], "absolute"),
        (vec![entry("r/x", EntryKind::File)], "first entry"),
        (
            vec![entry("r", EntryKind::Dir), entry("q/x", EntryKind::File)],
            "not under",
        ),
        (
            vec![entry("r", EntryKind::Dir), entry("r/a/b", EntryKind::File)],
            "without its directory",
        ),
        (
            vec![
                entry("r", EntryKind::Dir),
                entry("r/a/../../x", EntryKind::File),
            ],
            "`..`",
        ),
        (
            vec![entry("r", EntryKind::File), entry("r/x", EntryKind::File)],
            "Entry frame out of place during a copy (a file's ENTRY_END is due)",
        ),
        (
            vec![
                entry("r", EntryKind::Symlink),
                entry("r/x", EntryKind::File),
            ],
            "without its directory",
        ),
        (
            vec![
                entry("r", EntryKind::Dir),
                Frame::FileData(Bytes::from_static(b"x")),
            ],
            "outside a file",
        ),
        (
            vec![
                entry("r", EntryKind::Dir),
                entry("r/l", EntryKind::Symlink),
                entry("r/l/x", EntryKind::File),
            ],
            "without its directory",
        ),
        (
            vec![Frame::CopyDone(CopySummary::default())],
            "before any entry",
        ),
        (vec![Frame::Ping(Bytes::new())], "Ping frame out of place"),
    ];
    for (i, (frames, why)) in cases.into_iter().enumerate() {
        let d = d.join(i.to_string());
        std::fs::create_dir(&d).unwrap();
        let e = feed(&d, frames).unwrap_err();
        assert_eq!(e.code, ErrorCode::BadFrame, "{e}");
        assert!(e.message.contains(why), "{e} lacks {why}");
    }
    // Whatever was made before the refusal, nothing escaped the destination.
    assert!(!t.path().parent().unwrap().join("up").exists());
}

#[test]
fn a_bad_checksum_or_a_cut_off_copy_leaves_no_file_and_no_temporary() {
    let t = tempfile::tempdir().unwrap();
    let d = t.path();
    let e = feed(
        d,
        vec![
            entry("f", EntryKind::File),
            Frame::FileData(Bytes::from_static(b"data")),
            Frame::EntryEnd { sha256: [0; 32] },
        ],
    )
    .unwrap_err();
    assert_eq!(e.code, ErrorCode::Checksum);
    assert!(e.message.contains("/f: the content received"), "{e}");
    assert!(names(d).is_empty(), "{:?}", names(d));

    let mut rx = Receiver::new(Root::anywhere(), d.to_path_buf());
    rx.frame(entry("g", EntryKind::File)).unwrap();
    rx.frame(Frame::FileData(Bytes::from_static(b"half")))
        .unwrap();
    // The half file is unnamed (O_TMPFILE, which the test's filesystem offers).
    assert!(names(d).is_empty(), "{:?}", names(d));
    drop(rx);
    assert!(names(d).is_empty(), "{:?}", names(d));

    // A receiver killed outright runs no destructor, and leaves nothing either.
    let mut rx = Receiver::new(Root::anywhere(), d.to_path_buf());
    rx.frame(entry("k", EntryKind::File)).unwrap();
    rx.frame(Frame::FileData(Bytes::from_static(b"half")))
        .unwrap();
    std::mem::forget(rx);
    assert!(names(d).is_empty(), "{:?}", names(d));

    // Counts that disagree with what arrived.
    let e = feed(
        d,
        vec![
            entry("h", EntryKind::Symlink),
            Frame::CopyDone(CopySummary {
                files: 1,
                ..Default::default()
            }),
        ],
    )
    .unwrap_err();
    assert!(e.message.contains("COPY_DONE counts"), "{e}");
}

#[test]
fn confined_receivers_refuse_destinations_outside_their_root() {
    let t = tempfile::tempdir().unwrap();
    let root = t.path().join("root");
    let outside = t.path().join("outside");
    std::fs::create_dir_all(root.join("in")).unwrap();
    std::fs::create_dir_all(&outside).unwrap();
    std::os::unix::fs::symlink(&outside, root.join("abs")).unwrap();
    std::os::unix::fs::symlink("../outside", root.join("rel")).unwrap();
    let r = Root::beneath(&root).unwrap();
    for dest in [
        "/abs",
        "/rel",
        "/abs/x",
        "/rel/x",
        "../outside",
        "/in/../../outside/x",
    ] {
        let mut rx = Receiver::new(r.clone(), dest.into());
        let e = rx.frame(entry("f", EntryKind::File)).unwrap_err();
        assert_eq!(e.code, ErrorCode::Denied, "{dest}: {e}");
        assert!(e.message.contains("outside the agent's root"), "{e}");
    }
    assert!(names(&outside).is_empty());
    // Inside, `/` is the root.
    let mut rx = Receiver::new(r, "/in".into());
    rx.frame(entry("f", EntryKind::Symlink)).unwrap();
    assert_eq!(
        std::fs::read_link(root.join("in/f")).unwrap(),
        Path::new("x")
    );
}

#[test]
fn the_two_stage_receiver_refuses_a_bad_checksum_and_keeps_a_good_one() {
    let t = tempfile::tempdir().unwrap();
    let rt = tokio::runtime::Builder::new_current_thread()
        .build()
        .unwrap();
    let good: [u8; 32] = {
        use sha2::Digest;
        sha2::Sha256::digest(b"data").into()
    };
    for (sha, name) in [([0u8; 32], "bad"), (good, "good")] {
        let dest = t.path().to_path_buf();
        let result = rt.block_on(async move {
            let (sink, received) = tether_files::spawn_receive(Root::anywhere(), dest);
            for f in [
                entry(name, EntryKind::File),
                Frame::FileData(Bytes::from_static(b"data")),
                Frame::EntryEnd { sha256: sha },
                Frame::CopyDone(CopySummary {
                    files: 1,
                    bytes: 4,
                    ..Default::default()
                }),
            ] {
                if sink.send(f).await.is_err() {
                    break;
                }
            }
            drop(sink);
            received.wait().await
        });
        match name {
            "bad" => assert_eq!(result.unwrap_err().code, ErrorCode::Checksum),
            _ => assert_eq!(result.unwrap().bytes, 4),
        }
    }
    assert_eq!(names(t.path()), ["good"]);
}
