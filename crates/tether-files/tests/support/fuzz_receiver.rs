//! Fuzz body: arbitrary bytes, decoded as agent frames, fed to a copy `Receiver`
//! confined beneath a scratch directory. It must never panic, and nothing may appear
//! outside that directory: entry paths with `..`, absolute paths, symlinks pointing out
//! and entries under symlinks are all refused by the receiver or by the root.
//!
//! Shared by `fuzz/fuzz_targets/copy_receiver.rs` and the stable replay test.

use bytes::BytesMut;
use std::path::{Path, PathBuf};
use tether_files::{Receiver, Root};
use tether_proto::FrameCodec;
use tokio_util::codec::Decoder;

/// A directory of its own for this process, emptied before each input.
fn scratch() -> PathBuf {
    let dir = tether_testkit::scratch_dir("fuzz-receiver");
    std::fs::create_dir_all(dir.join("root/dest")).expect("scratch directory");
    std::fs::write(dir.join("outside"), b"sentinel").expect("sentinel");
    dir
}

/// Every name under `dir`, recursively, without following symlinks.
fn names(dir: &Path) -> Vec<PathBuf> {
    let mut out = vec![];
    let Ok(entries) = std::fs::read_dir(dir) else {
        return out;
    };
    for e in entries.flatten() {
        let p = e.path();
        let is_dir = e.file_type().is_ok_and(|t| t.is_dir());
        out.push(p.clone());
        if is_dir {
            out.extend(names(&p));
        }
    }
    out
}

/// Runs one input.
pub fn run(data: &[u8]) {
    let dir = scratch();
    let root = Root::beneath(&dir.join("root")).expect("root");
    let mut receiver = Receiver::new(root, PathBuf::from("dest"));
    let mut buf = BytesMut::from(data);
    let mut codec = FrameCodec;
    while let Ok(Some(frame)) = codec.decode(&mut buf) {
        if receiver.frame(frame).is_err() {
            break;
        }
    }
    drop(receiver);
    let top: Vec<PathBuf> = names(&dir)
        .into_iter()
        .filter(|p| p.parent() == Some(dir.as_path()))
        .collect();
    assert!(
        top.iter()
            .all(|p| p.ends_with("root") || p.ends_with("outside")),
        "something was written beside the root: {top:?}"
    );
    assert_eq!(
        std::fs::read(dir.join("outside")).ok().as_deref(),
        Some(&b"sentinel"[..])
    );
    let _ = std::fs::remove_dir_all(&dir);
}
