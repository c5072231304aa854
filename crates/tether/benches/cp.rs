//! `tether cp` beside raw bytes over the same kind of link and beside scp and tar over
//! ssh, in one run: a large file both ways, and a tree of 10,000 small files both ways.
//!
//! `cargo bench -p tether --bench cp`; `TETHER_BENCH_QUICK=1` for a short run. The agent
//! listens on a Unix socket on this machine and the "guest" is a directory here, so the
//! figures compare the copy machinery, not a VM's device. The raw baseline is `tether cat`
//! into `tether listen --exec 'cat > FILE'` (and `--exec 'cat FILE'` back): the same
//! bytes, file to file, over the same kind of socket, with no framing, checksum or rename.
//! Needs openssh-server (installed with apt-get when running as root).

use std::io::Write;
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::Instant;

mod support;
use support::{start_sshd, wait_until, Proc, Scratch, Sshd, STEP};

const TETHER: &str = env!("CARGO_BIN_EXE_tether");
const MIB: f64 = 1024.0 * 1024.0;

/// `tether ARGS`, with no config file of the machine's.
fn tether() -> Command {
    let mut c = Command::new(TETHER);
    c.env("HOME", "/nonexistent").env_remove("TETHER_CONFIG");
    c
}

/// Runs `cmd` to its end; panics with its stderr when it fails. Its stdout is the
/// caller's to set.
fn check(cmd: &mut Command) {
    let out = cmd
        .stderr(Stdio::piped())
        .output()
        .unwrap_or_else(|e| panic!("{cmd:?}: {e}"));
    assert!(
        out.status.success(),
        "{cmd:?}: {}: {}",
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
}

/// Seconds `run` takes.
fn timed(run: impl FnOnce()) -> f64 {
    let t = Instant::now();
    run();
    t.elapsed().as_secs_f64()
}

/// `len` pseudo-random bytes (splitmix64 of a counter) at `path`.
fn generate(path: &Path, len: u64) {
    let mut f = std::io::BufWriter::with_capacity(1 << 20, std::fs::File::create(path).unwrap());
    let mut block = vec![0u8; 1 << 20];
    let mut n = 0u64;
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
        left -= k as u64;
    }
    f.flush().unwrap();
}

/// 100 directories of 100 files, 0 to ~2.5 KiB each; the bytes written.
fn generate_tree(root: &Path) -> u64 {
    let mut bytes = 0;
    for d in 0..100 {
        let dir = root.join(format!("d{d:02}"));
        std::fs::create_dir_all(&dir).unwrap();
        for f in 0..100 {
            let content = format!("dir {d} file {f}\n").repeat((d * 7 + f * 13) % 150);
            bytes += content.len() as u64;
            std::fs::write(dir.join(format!("f{f:03}")), content).unwrap();
        }
    }
    bytes
}

fn files_under(root: &Path) -> usize {
    std::fs::read_dir(root)
        .unwrap()
        .map(|e| {
            let e = e.unwrap();
            if e.file_type().unwrap().is_dir() {
                files_under(&e.path())
            } else {
                1
            }
        })
        .sum()
}

/// The bench's world: the agent, sshd, and where things are.
struct Rig {
    // Dropped in this order: sshd and the agent stop before their directory goes.
    sshd: Sshd,
    _agent: Proc,
    agent: String,
    dir: Scratch,
}

impl Rig {
    fn p(&self, name: &str) -> String {
        self.dir.path(name).display().to_string()
    }

    fn remove(&self, name: &str) {
        let p = self.dir.path(name);
        let _ = std::fs::remove_file(&p);
        let _ = std::fs::remove_dir_all(&p);
    }

    /// `tether cp AGENT SRC DEST`.
    fn cp(&self, src: &str, dest: &str) -> f64 {
        timed(|| {
            check(
                tether()
                    .args(["cp", &self.agent, src, dest])
                    .stdout(Stdio::null()),
            )
        })
    }

    /// The raw baseline: `tether cat < SRC` into `tether listen --exec 'cat > DEST'`, or
    /// `tether listen --exec 'cat SRC'` into `tether cat > DEST`; until both have exited.
    fn raw(&self, listener_cmd: &str, input: &Path, output: &Path) -> f64 {
        let sock = self.dir.path("raw.sock");
        let _ = std::fs::remove_file(&sock);
        let uri = format!("unix://{}", sock.display());
        let mut listener = Proc::spawn(
            tether()
                .args(["listen", "--exec", listener_cmd, &uri])
                .stdin(Stdio::null())
                .stdout(Stdio::null())
                .stderr(Stdio::null()),
        );
        wait_until("tether listen", STEP, || sock.exists());
        let secs = timed(|| {
            check(
                tether()
                    .args(["cat", &uri])
                    .stdin(std::fs::File::open(input).unwrap())
                    .stdout(std::fs::File::create(output).unwrap()),
            );
            let status = listener.child.wait().unwrap();
            assert!(status.success(), "tether listen --exec: {status}");
        });
        let _ = std::fs::remove_file(&sock);
        secs
    }

    /// `scp FROM TO` (one side `127.0.0.1:PATH`).
    fn scp(&self, from: &str, to: &str) -> f64 {
        timed(|| {
            check(
                self.sshd
                    .scp()
                    .arg(from)
                    .arg(to)
                    .stdin(Stdio::null())
                    .stdout(Stdio::null()),
            )
        })
    }

    /// `tar c -C FROM NAME | ssh 127.0.0.1 tar x -C TO` (`push`), or the same with the
    /// tar that creates on the far side.
    fn tar_ssh(&self, from: &str, name: &str, to: &str, push: bool) -> f64 {
        let create = format!("tar c -C {from} {name}");
        let extract = format!("tar x -C {to}");
        let (local, remote) = if push {
            (create, extract)
        } else {
            (extract, create)
        };
        timed(|| {
            let ssh = self.sshd.ssh();
            let ssh_line = format!(
                "{} {}",
                std::iter::once(ssh.get_program())
                    .chain(ssh.get_args())
                    .map(|a| a.to_string_lossy().into_owned())
                    .collect::<Vec<_>>()
                    .join(" "),
                shell_quote(&remote)
            );
            let line = if push {
                format!("{local} | {ssh_line}")
            } else {
                format!("{ssh_line} | {local}")
            };
            check(Command::new("sh").arg("-c").arg(line).stdin(Stdio::null()));
        })
    }

    /// `tar c -C FROM NAME | tether exec -i AGENT -- tar x -C TO`.
    fn tar_tether(&self, from: &str, name: &str, to: &str) -> f64 {
        timed(|| {
            let line = format!(
                "tar c -C {from} {name} | {TETHER} exec -i {} -- tar x -C {to}",
                self.agent
            );
            check(
                Command::new("sh")
                    .arg("-c")
                    .arg(line)
                    .env("HOME", "/nonexistent")
                    .stdin(Stdio::null()),
            );
        })
    }
}

fn shell_quote(s: &str) -> String {
    format!("'{}'", s.replace('\'', r"'\''"))
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(f64::total_cmp);
    v[v.len() / 2]
}

/// A named way of doing something, returning the seconds it took.
type Way<'a> = (&'static str, Box<dyn FnMut() -> f64 + 'a>);

/// Each named way of doing one thing, timed once per round, rounds interleaved.
struct Race<'a> {
    ways: Vec<Way<'a>>,
}

impl<'a> Race<'a> {
    fn new() -> Race<'a> {
        Race { ways: Vec::new() }
    }

    fn way(mut self, name: &'static str, run: impl FnMut() -> f64 + 'a) -> Race<'a> {
        self.ways.push((name, Box::new(run)));
        self
    }

    /// Median seconds of each way over `rounds`.
    fn run(mut self, rounds: usize) -> Vec<(&'static str, f64)> {
        let mut times = vec![Vec::new(); self.ways.len()];
        for _ in 0..rounds {
            for (i, (_, run)) in self.ways.iter_mut().enumerate() {
                times[i].push(run());
            }
        }
        self.ways
            .iter()
            .zip(times)
            .map(|((name, _), t)| (*name, median(t)))
            .collect()
    }
}

fn main() {
    if std::env::args().any(|a| a == "--list") {
        println!("cp: bench");
        return;
    }
    let quick = std::env::var_os("TETHER_BENCH_QUICK").is_some();
    let (file_len, rounds) = if quick {
        (256u64 << 20, 1)
    } else {
        (1u64 << 30, 3)
    };
    // In memory (tmpfs) where there is one: the figures are then the copy machinery's,
    // not this machine's disk journal's.
    let shm = Path::new("/dev/shm");
    let dir = if shm.is_dir() {
        Scratch::in_dir(shm, "cp")
    } else {
        Scratch::new("cp")
    };
    let sock = dir.path("agent.sock");
    let agent_proc = Proc::spawn(
        tether()
            .args(["agent", "--listen", &format!("unix://{}", sock.display())])
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null()),
    );
    wait_until("tether agent", STEP, || {
        std::os::unix::net::UnixStream::connect(&sock).is_ok()
    });
    let sshd = start_sshd(&dir);
    let rig = Rig {
        agent: format!("unix://{}", sock.display()),
        sshd,
        _agent: agent_proc,
        dir,
    };
    for d in ["host", "guest"] {
        std::fs::create_dir_all(rig.dir.path(d)).unwrap();
    }
    let src = rig.dir.path("src.bin");
    generate(&src, file_len);
    let tree_bytes = generate_tree(&rig.dir.path("tree"));

    println!(
        "tether cp beside raw tether cat and scp/tar over ssh: this machine ({} cores), one run, \
         median of {rounds} interleaved rounds; agent `tether agent --listen unix://..`, the \
         \"guest\" a directory here; files in {}",
        std::thread::available_parallelism().map_or(0, |n| n.get()),
        rig.dir.0.parent().unwrap().display()
    );

    // One large file, each way.
    let s = |p: &str| rig.p(p);
    let g = |p: &str| format!(":{}", rig.p(p));
    let remote = |p: &str| format!("127.0.0.1:{}", rig.p(p));
    let check_len = |p: &str| {
        assert_eq!(
            std::fs::metadata(rig.dir.path(p)).unwrap().len(),
            file_len,
            "{p}"
        );
        rig.remove(p);
    };
    let file = Race::new()
        .way("tether cp, host to guest", || {
            let t = rig.cp(&s("src.bin"), &g("guest/cp.bin"));
            check_len("guest/cp.bin");
            t
        })
        .way("raw: tether cat | listen --exec 'cat > F'", || {
            let out = rig.dir.path("host/cat.out");
            let t = rig.raw(&format!("cat > {}", s("guest/raw.bin")), &src, &out);
            check_len("guest/raw.bin");
            t
        })
        .way("scp, host to guest", || {
            let t = rig.scp(&s("src.bin"), &remote("guest/scp.bin"));
            check_len("guest/scp.bin");
            t
        })
        .way("tether cp, guest to host", || {
            let t = rig.cp(&g("src.bin"), &s("host/cp.bin"));
            check_len("host/cp.bin");
            t
        })
        .way("raw: listen --exec 'cat F' | tether cat", || {
            let t = rig.raw(
                &format!("cat {}", s("src.bin")),
                Path::new("/dev/null"),
                &rig.dir.path("host/raw.bin"),
            );
            check_len("host/raw.bin");
            t
        })
        .way("scp, guest to host", || {
            let t = rig.scp(&remote("src.bin"), &s("host/scp.bin"));
            check_len("host/scp.bin");
            t
        })
        .run(rounds);
    let mib = file_len as f64 / MIB;
    println!();
    println!(
        "{:<44} {:>6} {:>9} {:>8} {:>8}",
        format!("one file of {mib:.0} MiB"),
        "s",
        "MiB/s",
        "vs raw",
        "vs scp"
    );
    for dir_rows in file.chunks(3) {
        let (raw, scp) = (dir_rows[1].1, dir_rows[2].1);
        for (name, secs) in dir_rows {
            println!(
                "{name:<44} {secs:>6.2} {:>9.0} {:>7.0} % {:>7.2}x",
                mib / secs,
                raw / secs * 100.0,
                scp / secs
            );
        }
    }

    // The tree, each way.
    let tree_mib = tree_bytes as f64 / MIB;
    let check_tree = |p: &str| {
        assert_eq!(files_under(&rig.dir.path(p)), 10_000, "{p}");
        rig.remove(p);
    };
    let fresh = |p: &str| {
        rig.remove(p);
        std::fs::create_dir_all(rig.dir.path(p)).unwrap();
    };
    let tree = Race::new()
        .way("tether cp, host to guest", || {
            let t = rig.cp(&s("tree"), &g("guest/cp-tree"));
            check_tree("guest/cp-tree");
            t
        })
        .way("tar c | ssh 127.0.0.1 tar x", || {
            fresh("guest/tar");
            let t = rig.tar_ssh(&rig.p(""), "tree", &s("guest/tar"), true);
            check_tree("guest/tar");
            t
        })
        .way("tar c | tether exec -i -- tar x", || {
            fresh("guest/tar-exec");
            let t = rig.tar_tether(&rig.p(""), "tree", &s("guest/tar-exec"));
            check_tree("guest/tar-exec");
            t
        })
        .way("tether cp, guest to host", || {
            let t = rig.cp(&g("tree"), &s("host/cp-tree"));
            check_tree("host/cp-tree");
            t
        })
        .way("ssh 127.0.0.1 tar c | tar x", || {
            fresh("host/tar");
            let t = rig.tar_ssh(&rig.p(""), "tree", &s("host/tar"), false);
            check_tree("host/tar");
            t
        })
        .run(rounds);
    println!();
    println!(
        "{:<44} {:>6} {:>9} {:>8} {:>8}",
        format!("10,000 files, {tree_mib:.1} MiB, 101 dirs"),
        "s",
        "files/s",
        "MiB/s",
        "vs tar"
    );
    let rows = [
        (&tree[0], tree[1].1),
        (&tree[1], tree[1].1),
        (&tree[2], tree[1].1),
        (&tree[3], tree[4].1),
        (&tree[4], tree[4].1),
    ];
    for ((name, secs), tar) in rows {
        println!(
            "{name:<44} {secs:>6.2} {:>9.0} {:>8.1} {:>7.2}x",
            10_000.0 / secs,
            tree_mib / secs,
            tar / secs
        );
    }

    println!();
    println!("goals (DESIGN.md: file copy >= 80 % of raw tether cat on the same link)");
    for (i, way) in [(0, "host to guest"), (3, "guest to host")] {
        let share = file[i + 1].1 / file[i].1 * 100.0;
        println!(
            "  tether cp {way}: {share:.0} % of raw  {}",
            if share >= 80.0 { "met" } else { "MISSED" }
        );
    }
}
