//! End to end in a real Linux guest: throwaway microVMs (QEMU, the host's kernel, the
//! static tether agent as PID 1, `tether device` as the vsock backend, or the mux over
//! virtio-serial), driven through the tether CLI as a user would. scripts/test installs QEMU, the kernel, busybox and vhost-device-vsock,
//! builds the static guest binary and names it in TETHER_GUEST_BIN.

use sha2::{Digest, Sha256};
use std::io::{BufRead, BufReader, Write};
use std::path::PathBuf;
use std::process::{Child, Output, Stdio};
use std::time::Duration;
use tether_vm::{Vm, VmConfig};

mod support;
use support::{run_with_input, tether};

fn run(args: &[&str], input: &[u8]) -> Output {
    run_with_input(tether().args(args), input)
}

struct Bg(Child);

impl Drop for Bg {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// Starts a long-running tether command; returns it with the first line of its stderr.
fn background(args: &[&str]) -> (Bg, String) {
    let mut child = tether()
        .args(args)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut lines = BufReader::new(child.stderr.take().unwrap()).lines();
    let first = lines.next().map(|l| l.unwrap()).unwrap_or_default();
    std::thread::spawn(move || for _ in lines {});
    (Bg(child), first)
}

/// Dials `ep` (retrying while the guest's listener comes up), sends `line` and returns
/// the reply line, without half-closing first.
async fn ask_line(ep: &tether_transport::Endpoint, line: &str) -> String {
    use tokio::io::{AsyncBufReadExt, AsyncWriteExt};
    let t = tether_transport::Transport::new(tether_transport::DialOptions {
        retry: Duration::from_secs(20),
        ..Default::default()
    });
    let mut s = tokio::io::BufReader::new(t.dial(ep).await.unwrap());
    s.get_mut().write_all(line.as_bytes()).await.unwrap();
    let mut reply = String::new();
    s.read_line(&mut reply).await.unwrap();
    reply
}

fn guest_binary() -> PathBuf {
    let p = std::env::var_os("TETHER_GUEST_BIN").map(PathBuf::from).expect(
        "TETHER_GUEST_BIN must name a static tether (scripts/test builds one: \
         RUSTFLAGS='-C target-feature=+crt-static' cargo build --release --target x86_64-unknown-linux-gnu -p tether)",
    );
    assert!(
        p.is_file(),
        "TETHER_GUEST_BIN={} does not exist",
        p.display()
    );
    p
}

/// The port of the first `tcp://` URI in a line such as `tether: forwarding URI ...` or
/// `tether: listening on URI`.
fn tcp_port_in(line: &str) -> u16 {
    line.split_whitespace()
        .find(|w| w.starts_with("tcp://"))
        .and_then(|ep| ep.rsplit_once(':'))
        .and_then(|(_, p)| p.parse().ok())
        .unwrap_or_else(|| panic!("no tcp:// URI in {line:?}"))
}

/// Lowercase text, different per seed: `tr a-z A-Z` in the guest turns it into its
/// uppercase, so every byte of a connection is checked.
fn lowercase_text(len: usize, seed: u64) -> Vec<u8> {
    let alphabet = b"abcdefghijklmnopqrstuvwxyz0123456789 \n";
    let mut rng = tether_testkit::XorShift::new(seed);
    (0..len)
        .map(|_| alphabet[(rng.next_u64() % alphabet.len() as u64) as usize])
        .collect()
}

fn sha256_hex(data: &[u8]) -> String {
    Sha256::digest(data)
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

/// `tether cp` both ways against the real guest's agent (kept modest: the guest runs
/// under TCG).
fn copy_through_the_agent(agent: &str) {
    use std::os::unix::fs::PermissionsExt;
    let host = std::env::temp_dir().join(format!("tether-vm-cp-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&host);
    std::fs::create_dir_all(&host).unwrap();
    let ok = |out: &Output| {
        assert!(
            out.status.success(),
            "{}: {}",
            out.status,
            String::from_utf8_lossy(&out.stderr)
        );
    };

    // A 20 MB file in, checksummed by the guest, and back out.
    let data: Vec<u8> = (0..20_000_000u32)
        .map(|i| (i.wrapping_mul(2_654_435_761) >> 13) as u8)
        .collect();
    let big = host.join("big.bin");
    std::fs::write(&big, &data).unwrap();
    let out = run(
        &["cp", "--json", agent, big.to_str().unwrap(), ":/tmp/"],
        b"",
    );
    ok(&out);
    let summary: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(summary["bytes"], 20_000_000);
    let out = run(&["exec", agent, "--", "sha256sum", "/tmp/big.bin"], b"");
    assert_eq!(
        String::from_utf8_lossy(&out.stdout),
        format!("{}  /tmp/big.bin\n", sha256_hex(&data))
    );
    let back = host.join("back.bin");
    ok(&run(
        &["cp", agent, ":/tmp/big.bin", back.to_str().unwrap()],
        b"",
    ));
    assert_eq!(
        sha256_hex(&std::fs::read(&back).unwrap()),
        sha256_hex(&data)
    );

    // A small tree with a mode, a relative symlink and one pointing out of the tree.
    let tree = host.join("tree");
    std::fs::create_dir_all(tree.join("sub")).unwrap();
    std::fs::write(tree.join("a.txt"), b"alpha\n").unwrap();
    std::fs::write(tree.join("sub/run.sh"), b"#!/bin/sh\necho ran\n").unwrap();
    std::fs::set_permissions(tree.join("sub/run.sh"), PermissionsExt::from_mode(0o750)).unwrap();
    std::os::unix::fs::symlink("../a.txt", tree.join("sub/link")).unwrap();
    std::os::unix::fs::symlink("/etc/hostname", tree.join("abs")).unwrap();
    ok(&run(&["cp", agent, tree.to_str().unwrap(), ":/tmp/"], b""));
    let out = run(
        &[
            "exec",
            agent,
            "--",
            "sh",
            "-c",
            "cat /tmp/tree/sub/link; readlink /tmp/tree/sub/link; readlink /tmp/tree/abs; \
             stat -c %a /tmp/tree/sub/run.sh; /tmp/tree/sub/run.sh",
        ],
        b"",
    );
    assert_eq!(
        String::from_utf8_lossy(&out.stdout),
        "alpha\n../a.txt\n/etc/hostname\n750\nran\n",
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let back = host.join("back-tree");
    ok(&run(
        &["cp", agent, ":/tmp/tree", back.to_str().unwrap()],
        b"",
    ));
    assert_eq!(std::fs::read(back.join("a.txt")).unwrap(), b"alpha\n");
    assert_eq!(
        std::fs::read(back.join("sub/run.sh")).unwrap(),
        b"#!/bin/sh\necho ran\n"
    );
    assert_eq!(
        std::fs::read_link(back.join("sub/link")).unwrap(),
        PathBuf::from("../a.txt")
    );
    assert_eq!(
        std::fs::read_link(back.join("abs")).unwrap(),
        PathBuf::from("/etc/hostname")
    );
    let mode = std::fs::metadata(back.join("sub/run.sh"))
        .unwrap()
        .permissions()
        .mode();
    assert_eq!(mode & 0o7777, 0o750);
    let _ = std::fs::remove_dir_all(&host);
}

/// `tether forward --via AGENT` both ways against the real guest's agent.
fn forward_through_the_agent(agent: &str) {
    // Into the guest: a listener on the guest's loopback, which only the agent can reach.
    let (_guest_service, first) = background(&[
        "exec",
        agent,
        "--",
        "tether",
        "listen",
        "--keep",
        "--exec",
        "tr a-z A-Z",
        "tcp://127.0.0.1:7777",
    ]);
    assert!(first.contains("listening on"), "{first}");
    let (_fwd, first) = background(&[
        "forward",
        "--via",
        agent,
        "tcp://127.0.0.1:0",
        "tcp://127.0.0.1:7777",
    ]);
    let port = tcp_port_in(&first);
    let clients: Vec<_> = (0..20u64)
        .map(|i| {
            std::thread::spawn(move || {
                let input = lowercase_text(32 * 1024 + i as usize * 101, i + 1);
                let mut c = std::net::TcpStream::connect(("127.0.0.1", port)).unwrap();
                c.set_read_timeout(Some(Duration::from_secs(120))).unwrap();
                let mut r = c.try_clone().unwrap();
                let reader = std::thread::spawn(move || {
                    let mut got = Vec::new();
                    std::io::Read::read_to_end(&mut r, &mut got).unwrap();
                    got
                });
                c.write_all(&input).unwrap();
                c.shutdown(std::net::Shutdown::Write).unwrap();
                let got = reader.join().unwrap();
                let want = input.to_ascii_uppercase();
                assert_eq!(got.len(), want.len(), "connection {i}");
                assert_eq!(
                    Sha256::digest(&got),
                    Sha256::digest(&want),
                    "connection {i}"
                );
            })
        })
        .collect();
    for c in clients {
        c.join().unwrap();
    }

    // Out of the guest: the agent listens on the guest's 127.0.0.1:7778, and a guest
    // program's connection there reaches a host service; its EOF and the reply pass.
    let (_host_service, first) = background(&[
        "listen",
        "--keep",
        "--exec",
        "tr a-z A-Z",
        "tcp://127.0.0.1:0",
    ]);
    let host_port = tcp_port_in(&first);
    let (_reverse, first) = background(&[
        "forward",
        "--via",
        agent,
        "--reverse",
        "tcp://127.0.0.1:7778",
        &format!("tcp://127.0.0.1:{host_port}"),
    ]);
    assert!(first.contains("in the guest"), "{first}");
    let out = run(
        &[
            "exec",
            "--timeout",
            "30s",
            agent,
            "--",
            "sh",
            "-c",
            "echo from-a-guest-program | tether cat tcp://127.0.0.1:7778",
        ],
        b"",
    );
    assert_eq!(
        String::from_utf8_lossy(&out.stdout),
        "FROM-A-GUEST-PROGRAM\n",
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}

#[test]
fn a_real_guest_runs_commands_and_carries_connections_both_ways() {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    let config = VmConfig {
        guest_binary: Some(guest_binary()),
        extra_programs: vec![PathBuf::from("/usr/bin/socat")],
        ..VmConfig::default()
    };
    let vm = rt.block_on(Vm::start(&config)).expect("the microVM boots");
    let agent = vm.endpoint().to_string();
    let uds = match vm.endpoint() {
        tether_transport::Endpoint::Hybrid { path, .. } => path.clone(),
        other => panic!("{other}"),
    };
    eprintln!("guest up under {:?} in {:?}", vm.accel(), vm.boot_time());

    // Exec: streams apart, exit codes, signals.
    let out = run(
        &[
            "exec",
            &agent,
            "--",
            "sh",
            "-c",
            "echo out; uname -r >&2; exit 7",
        ],
        b"",
    );
    assert_eq!(out.status.code(), Some(7));
    assert_eq!(out.stdout, b"out\n");
    let host_release = nix::sys::utsname::uname().unwrap();
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("-amd64"),
        "{:?} on {:?}",
        out.stderr,
        host_release.release()
    );
    let out = run(&["exec", &agent, "--", "sh", "-c", "kill -TERM $$"], b"");
    assert_eq!(out.status.code(), Some(143));
    let out = run(
        &["exec", "--timeout", "1s", &agent, "--", "sleep", "60"],
        b"",
    );
    assert_eq!(out.status.code(), Some(143));

    // Stdin with EOF, checksummed through the guest.
    let data: Vec<u8> = (0..3_000_000u32).map(|i| (i % 253) as u8).collect();
    let out = run(&["exec", "-i", &agent, "--", "sha256sum"], &data);
    let hex: String = Sha256::digest(&data)
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect();
    assert_eq!(String::from_utf8_lossy(&out.stdout), format!("{hex}  -\n"));

    // Output of many megabytes, whole.
    let out = run(
        &[
            "exec",
            &agent,
            "--",
            "sh",
            "-c",
            "head -c 50000000 /dev/zero",
        ],
        b"",
    );
    assert_eq!(out.stdout.len(), 50_000_000);

    // A terminal, and users.
    let out = run(
        &["exec", "-t", &agent, "--", "sh", "-c", "stty size; tty"],
        b"",
    );
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        text.starts_with("24 80") && text.contains("/dev/pts/"),
        "{text:?}"
    );
    let out = run(
        &["exec", "-u", "65534:65534", &agent, "--", "id", "-u"],
        b"",
    );
    assert_eq!(String::from_utf8_lossy(&out.stdout).trim(), "65534");
    let out = run(&["exec", "-u", "nobody", &agent, "--", "id", "-un"], b"");
    assert_eq!(
        String::from_utf8_lossy(&out.stdout).trim(),
        "nobody",
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );

    // Guest to host: the guest dials CID 2, the device connects to <uds>_<port>. The
    // guest's EOF reaches the host program as EOF, and its reply still flows back.
    let host_ep = format!("hybrid://{}:5000", uds.display());
    let (_host_listener, first) =
        background(&["listen", "--keep", "--exec", "tr a-z A-Z", &host_ep]);
    assert!(first.contains("listening"), "{first}");
    let out = run(
        &[
            "exec",
            "--timeout",
            "20s",
            &agent,
            "--",
            "sh",
            "-c",
            "echo from-the-guest | tether cat vsock://2:5000",
        ],
        b"",
    );
    assert_eq!(
        String::from_utf8_lossy(&out.stdout),
        "FROM-THE-GUEST\n",
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(out.status.code(), Some(0));
    // Nothing listens on host port 5999: the device answers RST, so the guest's connect
    // is refused rather than left to time out.
    let out = run(
        &["exec", &agent, "--", "tether", "cat", "vsock://2:5999"],
        b"",
    );
    let err = String::from_utf8_lossy(&out.stderr);
    assert_ne!(out.status.code(), Some(0));
    // Linux reports a RST to connect() as ECONNRESET.
    assert!(
        (err.contains("refused") || err.contains("reset")) && !err.contains("timed out"),
        "{err}"
    );

    // Host to guest: a tether listener in the guest, reached by hybrid dial and through
    // `tether forward` on the host (replies read before closing, for the same reason).
    let (_guest_listener, _) = background(&[
        "exec",
        &agent,
        "--",
        "tether",
        "listen",
        "--keep",
        "--exec",
        "tr a-z A-Z",
        "vsock://:6000",
    ]);
    let guest_port: tether_transport::Endpoint =
        format!("hybrid://{}:6000", uds.display()).parse().unwrap();
    let reply = rt.block_on(ask_line(&guest_port, "shout\n"));
    assert_eq!(reply, "SHOUT\n");
    // Half-close from the host: the guest program sees EOF and its output comes back.
    let out = run(&["cat", &guest_port.to_string()], b"half closed\n");
    assert_eq!(String::from_utf8_lossy(&out.stdout), "HALF CLOSED\n");
    assert_eq!(out.status.code(), Some(0));
    // Nothing listens on guest port 6999: the client's socket is closed, no OK.
    let out = run(&["cat", &format!("hybrid://{}:6999", uds.display())], b"");
    assert_ne!(out.status.code(), Some(0));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("closed the socket without a reply"), "{err}");
    let (_fwd, first) = background(&["forward", "tcp://127.0.0.1:0", &guest_port.to_string()]);
    let port: u16 = first
        .split_whitespace()
        .nth(2)
        .and_then(|ep| ep.rsplit_once(':'))
        .and_then(|(_, p)| p.parse().ok())
        .unwrap_or_else(|| panic!("{first}"));
    let c = std::net::TcpStream::connect(("127.0.0.1", port)).unwrap();
    c.set_read_timeout(Some(Duration::from_secs(30))).unwrap();
    (&c).write_all(b"through forward\n").unwrap();
    let mut reply = String::new();
    BufReader::new(&c).read_line(&mut reply).unwrap();
    assert_eq!(reply, "THROUGH FORWARD\n");

    // socat in the guest against tether on the host, both ways.
    let got = uds.with_file_name("from-socat.txt");
    let (_host_listener, _) = background(&[
        "listen",
        "--exec",
        &format!("head -n 1 > {}", got.display()),
        &format!("hybrid://{}:5001", uds.display()),
    ]);
    let out = run(
        &[
            "exec",
            "--timeout",
            "20s",
            &agent,
            "--",
            "sh",
            "-c",
            "echo via-socat | socat - VSOCK-CONNECT:2:5001",
        ],
        b"",
    );
    assert!(
        matches!(out.status.code(), Some(0 | 1)),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(std::fs::read_to_string(&got).unwrap(), "via-socat\n");
    // socat says nothing when it listens, so do not wait for a line from it.
    let _guest_socat = Bg(tether()
        .args([
            "exec",
            &agent,
            "--",
            "socat",
            "VSOCK-LISTEN:7000,fork",
            "EXEC:tr a-z A-Z",
        ])
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap());
    let socat_port: tether_transport::Endpoint =
        format!("hybrid://{}:7000", uds.display()).parse().unwrap();
    let reply = rt.block_on(ask_line(&socat_port, "to socat\n"));
    assert_eq!(reply, "TO SOCAT\n");

    // Port forwarding through the agent (tether vm's agent allows loopback TCP both
    // ways): a service on the guest's loopback only, reached from the host by 20
    // concurrent connections, and a host service reached from inside the guest.
    forward_through_the_agent(&agent);

    // File copies (`tether cp`) both ways through the guest's agent: a 20 MB file and a
    // small tree with symlinks, in and back out, compared by SHA-256 and content.
    copy_through_the_agent(&agent);

    rt.block_on(vm.stop());

    // The same agent reached through the mux over a virtio-serial port (no vsock device
    // at all), with the client on the VM's transport, which holds the one link.
    let config = VmConfig {
        serial: true,
        extra_programs: vec![],
        ..config
    };
    let vm = rt
        .block_on(Vm::start(&config))
        .expect("the serial microVM boots");
    assert!(matches!(
        vm.endpoint(),
        tether_transport::Endpoint::MuxUnix { .. }
    ));
    let client = tether_client::Client::with_transport(
        vm.transport().clone(),
        tether_transport::Peer::new([vm.endpoint().clone()]),
    );
    rt.block_on(async {
        let cmd = tether_client::Command::shell(
            "echo over-serial; echo err >&2; head -c 3000000 /dev/zero | wc -c; exit 4",
        );
        let out = client.exec(&cmd).await.unwrap().output().await.unwrap();
        assert_eq!(out.status.code, Some(4));
        assert_eq!(
            String::from_utf8_lossy(&out.stdout),
            "over-serial\n3000000\n"
        );
        assert_eq!(out.stderr, b"err\n");
        // Several sessions at once share the one serial line.
        let runs = (0..8).map(|i| {
            let client = &client;
            async move {
                let cmd = tether_client::Command::shell(format!("echo {i}"));
                client
                    .exec(&cmd)
                    .await
                    .unwrap()
                    .output()
                    .await
                    .unwrap()
                    .stdout
            }
        });
        let outs = futures::future::join_all(runs).await;
        for (i, o) in outs.iter().enumerate() {
            assert_eq!(String::from_utf8_lossy(o), format!("{i}\n"));
        }
    });
    rt.block_on(vm.stop());
}

#[test]
fn a_started_vm_serves_until_stopped() {
    let runtime = std::env::temp_dir().join(format!("tether-vm-state-{}", std::process::id()));
    std::fs::create_dir_all(&runtime).unwrap();
    let guest = guest_binary();
    let cmd = |args: &[&str]| {
        let mut c = tether();
        c.env("XDG_RUNTIME_DIR", &runtime).args(args);
        c.output().unwrap()
    };
    let out = cmd(&[
        "vm",
        "start",
        "--name",
        "t",
        "--guest-binary",
        guest.to_str().unwrap(),
    ]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let ep = String::from_utf8(out.stdout).unwrap().trim().to_string();
    assert_eq!(
        String::from_utf8(cmd(&["vm", "endpoint", "t"]).stdout)
            .unwrap()
            .trim(),
        ep
    );
    let out = cmd(&["exec", &ep, "--", "cat", "/proc/1/comm"]);
    assert_eq!(String::from_utf8_lossy(&out.stdout), "tether\n");
    let again = cmd(&[
        "vm",
        "start",
        "--name",
        "t",
        "--guest-binary",
        guest.to_str().unwrap(),
    ]);
    assert!(String::from_utf8_lossy(&again.stderr).contains("already started"));
    assert!(cmd(&["vm", "stop", "t"]).status.success());
    assert!(
        !runtime.join("tether-vms/t").exists(),
        "stop removes the VM's state"
    );
    let out = cmd(&["exec", &ep, "--", "true"]);
    assert_eq!(
        out.status.code(),
        Some(255),
        "the agent is gone with its VM"
    );
    let _ = std::fs::remove_dir_all(&runtime);
}

/// The guest's tether is stripped of its debug information in the initramfs, which is
/// what lets a 128 MiB guest (Firecracker's default size) boot at all; a guest too small
/// to hold its kernel and initramfs is refused at once, with the least that would do.
#[test]
fn a_128_mib_guest_boots_and_a_smaller_one_is_refused_with_what_it_needs() {
    let guest = guest_binary();
    let g = guest.to_str().unwrap();
    let out = run(
        &[
            "vm",
            "run",
            "--memory",
            "128",
            "--guest-binary",
            g,
            "--",
            "sh",
            "-c",
            "wc -c < /bin/tether",
        ],
        b"",
    );
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let in_guest: u64 = String::from_utf8_lossy(&out.stdout).trim().parse().unwrap();
    let on_host = std::fs::metadata(&guest).unwrap().len();
    assert!(
        in_guest < on_host,
        "the guest's copy ({in_guest} bytes) should be smaller than {on_host}"
    );

    // The kernel loads up to about 74 MiB and the initramfs takes 11 more: 96 and 64 MiB
    // are refused before QEMU starts (it would hang at 64, and run out at 96).
    for mib in ["96", "64"] {
        let args = [
            "vm",
            "run",
            "--memory",
            mib,
            "--guest-binary",
            g,
            "--",
            "true",
        ];
        let out = run(&args, b"");
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(!out.status.success());
        let said = format!("a guest of {mib} MiB cannot boot");
        assert!(err.contains(&said) && err.contains("at least"), "{err}");
    }
}
