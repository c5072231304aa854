//! `tether cp` against a real `tether agent` on a Unix socket: large files and many
//! files both ways, metadata and symlinks, copies killed midway, `--root` escapes, byte
//! streams, and errors. The "guest" is a directory on this machine.

use sha2::{Digest, Sha256};
use std::io::{Read, Write};
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::sync::OnceLock;
use std::time::{Duration, Instant};

mod support;

/// The most any one `tether cp` here may take (4 GiB on a 2-core machine included).
const LIMIT: Duration = Duration::from_secs(180);

struct Agent {
    socket: PathBuf,
    _child: Child,
}

/// This test binary's scratch directory under /tmp (a disk, not tmpfs: the 4 GiB copies
/// need the room).
fn base() -> &'static Path {
    static B: OnceLock<PathBuf> = OnceLock::new();
    B.get_or_init(|| {
        let b = PathBuf::from(format!("/tmp/tether-cp-test-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&b);
        std::fs::create_dir_all(&b).unwrap();
        b
    })
}

/// Removes a test's directories once it passed (a failed test leaves them to look at).
fn clean(dirs: &[&Path]) {
    for d in dirs {
        let _ = std::process::Command::new("chmod")
            .arg("-R")
            .arg("u+rwX")
            .arg(d)
            .status();
        let _ = std::fs::remove_dir_all(d);
    }
}

/// A fresh, empty directory for one test.
fn scratch(name: &str) -> PathBuf {
    let d = base().join(name);
    let _ = std::fs::remove_dir_all(&d);
    std::fs::create_dir_all(&d).unwrap();
    d
}

fn start_agent(name: &str, extra: &[&str]) -> Agent {
    let socket = base().join(format!("{name}.sock"));
    let child = support::spawn_agent(&socket, extra);
    Agent {
        socket,
        _child: child,
    }
}

/// An agent with plain paths.
fn uri() -> String {
    static A: OnceLock<Agent> = OnceLock::new();
    let a = A.get_or_init(|| start_agent("plain", &[]));
    format!("unix://{}", a.socket.display())
}

/// An agent confined beneath `root_dir()`.
fn rooted_uri() -> String {
    static A: OnceLock<Agent> = OnceLock::new();
    let a = A.get_or_init(|| {
        let root = root_dir();
        start_agent("rooted", &["--root", root.to_str().unwrap()])
    });
    format!("unix://{}", a.socket.display())
}

fn root_dir() -> PathBuf {
    static R: OnceLock<PathBuf> = OnceLock::new();
    R.get_or_init(|| scratch("root")).clone()
}

/// Runs a command to its end within `LIMIT` (killed and failed past it), `input` on
/// its stdin.
fn run(cmd: &mut Command, input: &[u8]) -> Output {
    support::run_within(cmd, input, LIMIT)
}

/// `tether cp ARGS...`.
fn cp(args: &[&str]) -> Output {
    cp_with_input(args, b"")
}

fn cp_with_input(args: &[&str], input: &[u8]) -> Output {
    let mut c = support::tether();
    c.arg("cp").args(args);
    run(&mut c, input)
}

/// Asserts success and returns the `--json` summary when there is one.
fn ok(out: &Output) -> serde_json::Value {
    assert!(
        out.status.success(),
        "{}: {}",
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_slice(&out.stdout).unwrap_or(serde_json::Value::Null)
}

/// Asserts failure with exit status 1 and returns stderr.
fn fails(out: &Output) -> String {
    let err = String::from_utf8_lossy(&out.stderr).into_owned();
    assert_eq!(out.status.code(), Some(1), "{err}");
    err
}

fn s(p: &Path) -> &str {
    p.to_str().unwrap()
}

fn guest(p: &Path) -> String {
    format!(":{}", p.display())
}

/// Writes `len` pseudo-random bytes (a counter through splitmix64) to `path`; their
/// SHA-256.
fn generate(path: &Path, len: u64, seed: u64) -> [u8; 32] {
    let mut f = std::io::BufWriter::with_capacity(1 << 20, std::fs::File::create(path).unwrap());
    let mut hash = Sha256::new();
    let mut block = vec![0u8; 1 << 20];
    let mut n = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15);
    let mut left = len;
    while left > 0 {
        for word in block.chunks_exact_mut(8) {
            n = n.wrapping_add(0x9E37_79B9_7F4A_7C15);
            let mut z = n;
            z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
            z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
            word.copy_from_slice(&(z ^ (z >> 31)).to_le_bytes());
        }
        let k = left.min(block.len() as u64) as usize;
        f.write_all(&block[..k]).unwrap();
        hash.update(&block[..k]);
        left -= k as u64;
    }
    f.flush().unwrap();
    hash.finalize().into()
}

fn sha256_file(path: &Path) -> [u8; 32] {
    let mut f = std::fs::File::open(path).unwrap();
    let mut hash = Sha256::new();
    let mut buf = vec![0u8; 1 << 20];
    loop {
        match f.read(&mut buf).unwrap() {
            0 => break,
            n => hash.update(&buf[..n]),
        }
    }
    hash.finalize().into()
}

/// Names in `dir`, sorted.
fn names(dir: &Path) -> Vec<String> {
    let mut v: Vec<String> = std::fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().file_name().into_string().unwrap())
        .collect();
    v.sort();
    v
}

fn temporaries(dir: &Path) -> Vec<String> {
    names(dir)
        .into_iter()
        .filter(|n| n.contains(".tether-"))
        .collect()
}

#[test]
fn a_4_gib_file_crosses_both_ways_with_its_checksum() {
    let host = scratch("big-host");
    let guest_dir = scratch("big-guest");
    let len = 4u64 << 30;
    let src = host.join("big.bin");
    let want = generate(&src, len, 7);
    let summary = ok(&cp(&["--json", &uri(), s(&src), &guest(&guest_dir)]));
    assert_eq!(summary["bytes"], len);
    assert_eq!(summary["files"], 1);
    std::fs::remove_file(&src).unwrap();
    let there = guest_dir.join("big.bin");
    assert_eq!(std::fs::metadata(&there).unwrap().len(), len);
    assert_eq!(sha256_file(&there), want, "host to guest");
    assert!(temporaries(&guest_dir).is_empty());

    let back = host.join("back.bin");
    ok(&cp(&[&uri(), &guest(&there), s(&back)]));
    std::fs::remove_file(&there).unwrap();
    assert_eq!(sha256_file(&back), want, "guest to host");
    assert_eq!(names(&host), ["back.bin"]);
    std::fs::remove_file(&back).unwrap();
    clean(&[&host, &guest_dir]);
}

/// The content of file `f` of directory `d` in the generated tree: sizes 0 to ~3 KiB.
fn small_content(d: usize, f: usize) -> Vec<u8> {
    format!("dir {d} file {f}\n")
        .repeat((d * 7 + f * 13) % 150)
        .into_bytes()
}

#[test]
fn a_tree_of_10000_small_files_arrives_complete_both_ways() {
    let host = scratch("tree-host");
    let guest_dir = scratch("tree-guest");
    let src = host.join("many");
    for d in 0..100 {
        let dir = src.join(format!("d{d:02}"));
        std::fs::create_dir_all(&dir).unwrap();
        for f in 0..100 {
            std::fs::write(dir.join(format!("f{f:03}")), small_content(d, f)).unwrap();
        }
    }
    let summary = ok(&cp(&["--json", &uri(), s(&src), &guest(&guest_dir)]));
    assert_eq!(
        (summary["files"].as_u64(), summary["dirs"].as_u64()),
        (Some(10_000), Some(101))
    );
    let back = host.join("back");
    let summary = ok(&cp(&[
        "--json",
        &uri(),
        &guest(&guest_dir.join("many")),
        s(&back),
    ]));
    assert_eq!(summary["files"], 10_000);
    for root in [guest_dir.join("many"), back] {
        let dirs = names(&root);
        assert_eq!(dirs.len(), 100, "{}", root.display());
        let mut count = 0;
        for (d, dn) in dirs.iter().enumerate() {
            let files = names(&root.join(dn));
            assert_eq!(files.len(), 100);
            for (f, fname) in files.iter().enumerate() {
                let got = std::fs::read(root.join(dn).join(fname)).unwrap();
                assert_eq!(
                    got,
                    small_content(d, f),
                    "{dn}/{fname} in {}",
                    root.display()
                );
                count += 1;
            }
        }
        assert_eq!(count, 10_000);
    }
    clean(&[&host, &guest_dir]);
}

fn set_mtime(p: &Path, secs: i64, nsecs: i64) {
    let t = nix::sys::time::TimeSpec::new(secs, nsecs);
    nix::sys::stat::utimensat(
        nix::fcntl::AT_FDCWD,
        p,
        &t,
        &t,
        nix::sys::stat::UtimensatFlags::NoFollowSymlink,
    )
    .unwrap();
}

/// Mode, mtime (s, ns), owner and link target of each path under `root`.
fn describe(root: &Path, rels: &[&str]) -> Vec<String> {
    rels.iter()
        .map(|r| {
            let m = std::fs::symlink_metadata(root.join(r)).unwrap();
            let target = std::fs::read_link(root.join(r))
                .map(|t| t.display().to_string())
                .unwrap_or_default();
            format!(
                "{r}: {:o} {}.{:09} {}:{} {target}",
                m.mode(),
                m.mtime(),
                m.mtime_nsec(),
                m.uid(),
                m.gid()
            )
        })
        .collect()
}

#[test]
fn modes_times_owners_and_symlinks_survive_the_round_trip() {
    let host = scratch("meta-host");
    let guest_dir = scratch("meta-guest");
    let src = host.join("meta");
    std::fs::create_dir_all(src.join("ro")).unwrap();
    std::fs::create_dir_all(src.join("private")).unwrap();
    for (name, mode) in [
        ("secret", 0o600),
        ("tool", 0o755),
        ("suid", 0o4755),
        ("grp", 0o640),
    ] {
        std::fs::write(src.join(name), name).unwrap();
        std::fs::set_permissions(src.join(name), PermissionsExt::from_mode(mode)).unwrap();
    }
    std::fs::write(src.join("ro/inside"), b"in a read-only directory").unwrap();
    std::os::unix::fs::symlink("tool", src.join("to-tool")).unwrap();
    std::os::unix::fs::symlink("/etc/passwd", src.join("outside")).unwrap();
    std::os::unix::fs::symlink("../../nowhere", src.join("dangling")).unwrap();
    let root = nix::unistd::geteuid().is_root();
    if root {
        std::os::unix::fs::lchown(src.join("grp"), Some(1234), Some(5678)).unwrap();
        std::os::unix::fs::lchown(src.join("outside"), Some(4321), Some(8765)).unwrap();
        std::os::unix::fs::lchown(src.join("private"), Some(1111), Some(2222)).unwrap();
    }
    for (i, name) in [
        "secret",
        "tool",
        "suid",
        "grp",
        "ro/inside",
        "to-tool",
        "outside",
        "dangling",
    ]
    .iter()
    .enumerate()
    {
        set_mtime(
            &src.join(name),
            1_000_000_000 + i as i64 * 1000,
            123_456_789 + i as i64,
        );
    }
    std::fs::set_permissions(src.join("private"), PermissionsExt::from_mode(0o750)).unwrap();
    set_mtime(&src.join("private"), 1_300_000_000, 42);
    std::fs::set_permissions(src.join("ro"), PermissionsExt::from_mode(0o555)).unwrap();
    set_mtime(&src.join("ro"), 1_400_000_000, 7);
    set_mtime(&src, 1_500_000_000, 0);

    let rels = [
        ".",
        "secret",
        "tool",
        "suid",
        "grp",
        "ro",
        "ro/inside",
        "private",
        "to-tool",
        "outside",
        "dangling",
    ];
    let want = describe(&src, &rels);
    ok(&cp(&[&uri(), s(&src), &guest(&guest_dir)]));
    assert_eq!(
        describe(&guest_dir.join("meta"), &rels),
        want,
        "host to guest"
    );
    let back = host.join("back");
    ok(&cp(&[&uri(), &guest(&guest_dir.join("meta")), s(&back)]));
    assert_eq!(describe(&back, &rels), want, "guest to host");
    // The link to /etc/passwd is a link, not a copy of the file.
    assert!(std::fs::symlink_metadata(back.join("outside"))
        .unwrap()
        .file_type()
        .is_symlink());
    assert!(
        root || !want[4].contains("1234"),
        "ownership checked only as root"
    );
    clean(&[&host, &guest_dir]);
}

/// Files that some process on this machine holds open and that were made unnamed
/// (`O_TMPFILE`) in `dir`: the kernel shows them as `DIR/#INODE (deleted)`. Their
/// `/proc/PID/fd/N` paths.
fn unnamed_files_in(dir: &Path) -> Vec<PathBuf> {
    let prefix = format!("{}/#", dir.canonicalize().unwrap().display());
    let fds = std::fs::read_dir("/proc")
        .unwrap()
        .flatten()
        .filter_map(|p| std::fs::read_dir(p.path().join("fd")).ok())
        .flatten()
        .flatten();
    fds.map(|fd| fd.path())
        .filter(|fd| std::fs::read_link(fd).is_ok_and(|t| t.to_string_lossy().starts_with(&prefix)))
        .collect()
}

/// Waits until a copy is writing a file with data in it, unnamed, in `dir`.
fn wait_for_unnamed_file(dir: &Path, copier: &mut Child) {
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let written = |fd: &PathBuf| std::fs::metadata(fd).map_or(0, |m| m.len()) > 0;
        if unnamed_files_in(dir).iter().any(written) {
            return;
        }
        assert!(
            copier.try_wait().unwrap().is_none(),
            "the copy ended before it could be interrupted"
        );
        assert!(
            Instant::now() < deadline,
            "no unnamed file appeared in {}",
            dir.display()
        );
        std::thread::sleep(Duration::from_millis(2));
    }
}

fn wait_until(what: &str, mut done: impl FnMut() -> bool) {
    let deadline = Instant::now() + Duration::from_secs(20);
    while !done() {
        assert!(Instant::now() < deadline, "{what}");
        std::thread::sleep(Duration::from_millis(10));
    }
}

fn spawn_cp(args: &[&str]) -> Child {
    support::tether()
        .arg("cp")
        .args(args)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap()
}

#[test]
fn an_interrupted_copy_leaves_no_file_under_its_name() {
    let host = scratch("kill-host");
    let guest_dir = scratch("kill-guest");
    // Sparse: 4 GiB that cost no disk to make, and take seconds to copy.
    let src = host.join("sparse.img");
    std::fs::File::create(&src)
        .unwrap()
        .set_len(4 << 30)
        .unwrap();

    // Host to guest, the client killed outright: the file being written has no name
    // (O_TMPFILE) and the agent closes it, freeing it, when the connection drops.
    let mut c = spawn_cp(&[&uri(), s(&src), &guest(&guest_dir)]);
    wait_for_unnamed_file(&guest_dir, &mut c);
    assert!(names(&guest_dir).is_empty(), "{:?}", names(&guest_dir));
    c.kill().unwrap();
    c.wait().unwrap();
    wait_until("the agent closes the unnamed file", || {
        unnamed_files_in(&guest_dir).is_empty()
    });
    assert!(names(&guest_dir).is_empty(), "{:?}", names(&guest_dir));

    // Guest to host, the client stopped by SIGTERM: it removes its own temporary.
    let there = guest_dir.join("held.img");
    std::fs::File::create(&there)
        .unwrap()
        .set_len(4 << 30)
        .unwrap();
    let mut c = spawn_cp(&[&uri(), &guest(&there), s(&host)]);
    wait_for_unnamed_file(&host, &mut c);
    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(c.id() as i32),
        nix::sys::signal::Signal::SIGTERM,
    )
    .unwrap();
    let out = c.wait_with_output().unwrap();
    assert_eq!(out.status.code(), Some(143));
    assert!(String::from_utf8_lossy(&out.stderr).contains("interrupted by SIGTERM"));
    assert_eq!(names(&host), ["sparse.img"], "no temporary, no held.img");

    // Guest to host, killed outright: no destructor runs, and still nothing is left,
    // neither under the final name nor under a temporary one.
    let mut c = spawn_cp(&[&uri(), &guest(&there), s(&host)]);
    wait_for_unnamed_file(&host, &mut c);
    c.kill().unwrap();
    c.wait().unwrap();
    assert_eq!(names(&host), ["sparse.img"]);
    assert!(
        names(&guest_dir) == ["held.img"],
        "the agent's side is untouched"
    );
    clean(&[&host, &guest_dir]);
}

#[test]
fn the_root_confines_copies_both_ways() {
    let root = root_dir();
    let outside = scratch("outside");
    std::fs::write(outside.join("secret"), b"not for clients").unwrap();
    std::fs::create_dir_all(root.join("inside/deeper")).unwrap();
    std::fs::write(root.join("inside/f"), b"inside").unwrap();
    std::os::unix::fs::symlink(&outside, root.join("abs_out")).unwrap();
    std::os::unix::fs::symlink("../outside", root.join("rel_out")).unwrap();
    std::os::unix::fs::symlink("../../../outside", root.join("inside/deeper/parent")).unwrap();
    let host = scratch("confined-host");
    let file = host.join("upload");
    std::fs::write(&file, b"upload").unwrap();
    let u = rooted_uri();

    for dest in [
        ":../x",
        ":/../outside",
        ":/abs_out",
        ":/abs_out/x",
        ":/rel_out/",
        ":rel_out/x",
        ":/inside/deeper/parent/x",
        ":/inside/deeper/parent",
    ] {
        let err = fails(&cp(&[&u, s(&file), dest]));
        assert!(
            err.contains("the agent refused") && err.contains("outside the agent's root"),
            "{dest}: {err}"
        );
    }
    for src in [
        ":../outside/secret",
        ":/abs_out/secret",
        ":/rel_out/secret",
        ":/inside/deeper/parent/secret",
    ] {
        let err = fails(&cp(&[&u, src, s(&host)]));
        assert!(err.contains("outside the agent's root"), "{src}: {err}");
        let shown = src.trim_start_matches(':').rsplit_once('/').unwrap().0;
        assert!(err.contains(shown), "{src}: {err} does not name {shown}");
    }
    assert_eq!(names(&outside), ["secret"]);
    assert_eq!(names(&host), ["upload"]);

    // Inside, `/` is the root; a link that points out is copied as a link.
    ok(&cp(&[&u, s(&file), ":/inside/"]));
    assert_eq!(
        std::fs::read(root.join("inside/upload")).unwrap(),
        b"upload"
    );
    ok(&cp(&[&u, s(&file), ":/top"]));
    assert_eq!(std::fs::read(root.join("top")).unwrap(), b"upload");
    ok(&cp(&[&u, ":/abs_out", s(&host)]));
    assert_eq!(std::fs::read_link(host.join("abs_out")).unwrap(), outside);
    ok(&cp(&[&u, ":inside", s(&host.join("got"))]));
    assert_eq!(std::fs::read(host.join("got/f")).unwrap(), b"inside");
    assert_eq!(
        std::fs::read_link(host.join("got/deeper/parent")).unwrap(),
        Path::new("../../../outside")
    );
    clean(&[&host, &outside]);
}

#[test]
fn a_sender_that_breaks_the_path_rules_is_refused() {
    use futures::{SinkExt, StreamExt};
    use tether_proto::*;
    let dest = scratch("rules");
    let u = uri();
    let socket = u.trim_start_matches("unix://").to_string();
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let reply = rt.block_on(async {
        let s = tokio::net::UnixStream::connect(&socket).await.unwrap();
        let mut conn = tokio_util::codec::Framed::new(s, FrameCodec);
        let entry = |path: &str, kind| {
            Frame::Entry(FileEntry {
                path: path.into(),
                kind,
                mode: 0o644,
                uid: 0,
                gid: 0,
                mtime_ns: 0,
                size: 0,
                target: None,
            })
        };
        for f in [
            Frame::Hello(Hello {
                version: 1,
                features: Features::FILES,
                proof: Proof::default(),
            }),
            Frame::CopyIn(CopyInRequest {
                dest: dest.display().to_string(),
            }),
            entry("evil", EntryKind::Dir),
            entry("evil/../../escaped", EntryKind::File),
        ] {
            conn.send(f).await.unwrap();
        }
        let mut frames = Vec::new();
        while let Ok(Some(Ok(f))) = tokio::time::timeout(Duration::from_secs(10), conn.next()).await
        {
            frames.push(f);
        }
        frames
    });
    assert!(matches!(reply[0], Frame::Welcome(_)), "{reply:?}");
    match &reply[1] {
        Frame::Error(e) => {
            assert_eq!(e.code, ErrorCode::BadFrame);
            assert!(e.message.contains("`..`"), "{e:?}");
        }
        other => panic!("{other:?}"),
    }
    assert!(!base().join("escaped").exists() && !dest.parent().unwrap().join("escaped").exists());
    clean(&[&dest]);
}

#[test]
fn dash_streams_one_file_from_stdin_and_to_stdout() {
    let guest_dir = scratch("stream-guest");
    let data: Vec<u8> = (0..20_000_000u32).map(|i| (i % 251) as u8).collect();
    let target = guest_dir.join("from-stdin.bin");
    ok(&cp_with_input(&[&uri(), "-", &guest(&target)], &data));
    assert_eq!(std::fs::read(&target).unwrap(), data);
    let out = cp(&[&uri(), &guest(&target), "-"]);
    ok(&Output {
        stdout: Vec::new(),
        ..out.clone()
    });
    assert!(out.stdout == data, "stdout carries the file's bytes");
    let e = fails(&cp_with_input(
        &[&uri(), "-", &guest(&guest_dir.join("no-dir/x"))],
        b"x",
    ));
    assert!(e.contains("no-dir"), "{e}");
    let e = fails(&cp(&[&uri(), &guest(&guest_dir), "-"]));
    assert!(e.contains("is a directory"), "{e}");
    let e = fails(&cp(&["--json", &uri(), &guest(&target), "-"]));
    assert!(e.contains("--json"), "{e}");
    clean(&[&guest_dir]);
}

#[test]
fn missing_paths_and_bad_command_lines_are_named() {
    let host = scratch("errors-host");
    let guest_dir = scratch("errors-guest");
    let e = fails(&cp(&[&uri(), &guest(&guest_dir.join("nope")), s(&host)]));
    assert!(
        e.contains("in the guest:") && e.contains("/nope: No such file or directory"),
        "{e}"
    );
    let e = fails(&cp(&[&uri(), s(&host.join("absent")), &guest(&guest_dir)]));
    assert!(e.contains("absent: No such file or directory"), "{e}");
    let e = fails(&cp(&[
        &uri(),
        s(&host),
        &guest(&guest_dir.join("no/such/dir")),
    ]));
    assert!(e.contains("no/such: No such file or directory"), "{e}");
    let e = fails(&cp(&[&uri(), ":a", ":b"]));
    assert!(e.contains("both SRC and DEST are guest paths"), "{e}");
    let e = fails(&cp(&[&uri(), "a", "b"]));
    assert!(e.contains("leading ':'"), "{e}");
    // A local name with a colon is written ./:name.
    std::fs::write(guest_dir.join("plain"), b"p").unwrap();
    let mut c = support::tether();
    c.current_dir(&host)
        .args(["cp", &uri(), &guest(&guest_dir.join("plain")), "./:colon"]);
    ok(&run(&mut c, b""));
    assert_eq!(std::fs::read(host.join(":colon")).unwrap(), b"p");
    assert!(temporaries(&host).is_empty() && temporaries(&guest_dir).is_empty());
    clean(&[&host, &guest_dir]);
}
