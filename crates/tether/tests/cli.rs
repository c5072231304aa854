//! `tether cat`, `listen` and `forward` as users run them, against socat and fake VMM
//! sockets. Needs socat (scripts/test installs it).

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{Shutdown, TcpStream};
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::thread;
use std::time::{Duration, Instant};

mod support;
use support::{checksummed_echoes, data, run_with_input, sha, tether};

fn socat() -> Command {
    Command::new("socat")
}

/// A child process killed when the test ends, however it ends.
struct Proc(Child);

impl Drop for Proc {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// Starts a long-running tether command and waits for its "listening on"/"forwarding"
/// line; returns the process and the endpoint it reports listening on.
fn start(cmd: &mut Command) -> (Proc, String) {
    let mut child = cmd
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn tether");
    let stderr = child.stderr.take().unwrap();
    let mut lines = BufReader::new(stderr).lines();
    let first = lines.next().expect("a first line").unwrap();
    // Keep draining so the child never blocks on a full pipe.
    thread::spawn(move || for _ in lines {});
    let ep = first
        .strip_prefix("tether: listening on ")
        .or_else(|| first.strip_prefix("tether: forwarding "))
        .unwrap_or_else(|| panic!("unexpected first line: {first}"))
        .split(' ')
        .next()
        .unwrap()
        .to_string();
    (Proc(child), ep)
}

fn tmpdir(tag: &str) -> PathBuf {
    let d = std::env::temp_dir().join(format!("tether-cli-{tag}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&d);
    std::fs::create_dir_all(&d).unwrap();
    d
}

fn free_tcp_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

fn wait_for_tcp(port: u16) {
    for _ in 0..500 {
        if TcpStream::connect(("127.0.0.1", port)).is_ok() {
            return;
        }
        thread::sleep(Duration::from_millis(10));
    }
    panic!("nothing listens on port {port}");
}

fn wait_for_path(p: &Path) {
    for _ in 0..500 {
        if p.exists() {
            return;
        }
        thread::sleep(Duration::from_millis(10));
    }
    panic!("{} never appeared", p.display());
}

#[test]
fn cat_to_socat_tcp_echo_returns_every_byte() {
    let port = free_tcp_port();
    let _echo = Proc(
        socat()
            .arg(format!("TCP-LISTEN:{port},bind=127.0.0.1,reuseaddr"))
            .arg("EXEC:cat")
            .spawn()
            .unwrap(),
    );
    wait_for_tcp_once(port);
    let input = data(8 << 20, 1);
    let out = run_with_input(
        tether().args(["cat", &format!("tcp://127.0.0.1:{port}")]),
        &input,
    );
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(out.stdout.len(), input.len());
    assert_eq!(sha(&out.stdout), sha(&input));
}

/// socat without `fork` serves one connection; probing it would use that up, so wait for
/// the listening socket in /proc instead.
fn wait_for_tcp_once(port: u16) {
    let needle = format!(":{port:04X} 00000000:0000 0A");
    for _ in 0..500 {
        let tcp = std::fs::read_to_string("/proc/net/tcp").unwrap();
        if tcp.contains(&needle) {
            return;
        }
        thread::sleep(Duration::from_millis(10));
    }
    panic!("socat never listened on {port}");
}

#[test]
fn listen_exec_serves_a_socat_unix_client() {
    let dir = tmpdir("listen-exec");
    let sock = dir.join("l.sock");
    let (_l, ep) = start(tether().args([
        "listen",
        "--exec",
        "sha256sum",
        &format!("unix://{}", sock.display()),
    ]));
    assert_eq!(ep, format!("unix://{}", sock.display()));
    let input = data(3 << 20, 2);
    let out = run_with_input(
        socat()
            .arg("-")
            .arg(format!("UNIX-CONNECT:{}", sock.display())),
        &input,
    );
    assert!(out.status.success());
    let hex: String = sha(&input).iter().map(|b| format!("{b:02x}")).collect();
    assert_eq!(
        String::from_utf8_lossy(&out.stdout).trim(),
        format!("{hex}  -")
    );
}

#[test]
fn listen_exec_passes_the_exit_status_through() {
    let dir = tmpdir("listen-status");
    let sock = dir.join("s.sock");
    let (mut l, _) = start(tether().args([
        "listen",
        "--exec",
        "echo bye; exit 7",
        &format!("unix://{}", sock.display()),
    ]));
    let mut c = UnixStream::connect(&sock).unwrap();
    let mut got = String::new();
    c.read_to_string(&mut got).unwrap();
    assert_eq!(got, "bye\n");
    assert_eq!(l.0.wait().unwrap().code(), Some(7));
    assert!(!sock.exists(), "the socket file is removed on exit");
}

#[test]
fn listen_keep_collects_connections_in_turn() {
    let dir = tmpdir("listen-keep");
    let sock = dir.join("k.sock");
    let (mut l, _) =
        start(tether().args(["listen", "--keep", &format!("unix://{}", sock.display())]));
    let mut out = BufReader::new(l.0.stdout.take().unwrap()).lines();
    for word in ["one", "two", "three"] {
        let mut c = UnixStream::connect(&sock).unwrap();
        c.write_all(format!("{word}\n").as_bytes()).unwrap();
        c.shutdown(Shutdown::Write).unwrap();
        // The listener sends nothing: its side of each connection is closed at once.
        let mut rest = Vec::new();
        c.read_to_end(&mut rest).unwrap();
        assert!(rest.is_empty());
        assert_eq!(out.next().unwrap().unwrap(), word);
    }
}

#[test]
fn cat_retry_waits_for_a_late_listener() {
    let dir = tmpdir("retry");
    let sock = dir.join("late.sock");
    let uri = format!("unix://{}", sock.display());
    let s2 = sock.clone();
    let server = thread::spawn(move || {
        thread::sleep(Duration::from_millis(600));
        let l = UnixListener::bind(&s2).unwrap();
        let (mut c, _) = l.accept().unwrap();
        let mut got = Vec::new();
        c.read_to_end(&mut got).unwrap();
        c.write_all(&got).unwrap();
    });
    let t = Instant::now();
    let out = run_with_input(tether().args(["cat", "--retry", "10s", &uri]), b"ping");
    server.join().unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(out.stdout, b"ping");
    assert!(t.elapsed() >= Duration::from_millis(600));

    let out = run_with_input(
        tether().args(["cat", &format!("unix://{}/none.sock", dir.display())]),
        b"",
    );
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("connect to unix://") && err.contains("none.sock"),
        "{err}"
    );
}

#[test]
fn bad_uris_and_missing_peers_are_explained() {
    let out = tether().args(["cat", "vsock:3:1024"]).output().unwrap();
    assert_eq!(out.status.code(), Some(2));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("bad endpoint `vsock:3:1024`") && err.contains("vsock://CID:PORT"),
        "{err}"
    );

    let out = tether().args(["cat"]).output().unwrap();
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("no peer"));

    let out = tether().args(["cat", "hvsock:///1024"]).output().unwrap();
    assert!(String::from_utf8_lossy(&out.stderr).contains("vsock://2:1024"));
}

#[test]
fn config_file_names_the_peer_and_the_command_line_wins() {
    let dir = tmpdir("config");
    let good = dir.join("good.sock");
    let listener = UnixListener::bind(&good).unwrap();
    let server = thread::spawn(move || {
        for _ in 0..2 {
            let (mut c, _) = listener.accept().unwrap();
            c.write_all(b"served").unwrap();
        }
    });
    let cfg = dir.join("tether.toml");
    std::fs::write(
        &cfg,
        format!(
            "peers = [\"tcp://127.0.0.1:1\", \"unix://{}\"]\nretry = \"0s\"\n",
            good.display()
        ),
    )
    .unwrap();
    // The unix endpoint is cheaper than tcp, so it is dialed first.
    let out = run_with_input(tether().arg("--config").arg(&cfg).arg("cat"), b"");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(out.stdout, b"served");
    // --peer replaces the file's peers: a dead one fails even though the file has a good one.
    let out = run_with_input(
        tether().env("TETHER_CONFIG", &cfg).args([
            "cat",
            "--peer",
            &format!("unix://{}/dead.sock", dir.display()),
        ]),
        b"",
    );
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("dead.sock"));
    // The good peer still works through $TETHER_CONFIG.
    let out = run_with_input(tether().env("TETHER_CONFIG", &cfg).arg("cat"), b"");
    assert_eq!(out.stdout, b"served");
    server.join().unwrap();

    std::fs::write(&cfg, "peers = 3\nvsock_port = 1\n").unwrap();
    let out = tether()
        .arg("--config")
        .arg(&cfg)
        .arg("cat")
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("tether.toml"), "{err}");
}

/// An echo server on a Unix socket in this process.
fn unix_echo(path: &Path) -> thread::JoinHandle<()> {
    let l = UnixListener::bind(path).unwrap();
    thread::spawn(move || {
        for c in l.incoming() {
            let mut c = c.unwrap();
            thread::spawn(move || {
                let mut r = c.try_clone().unwrap();
                let _ = std::io::copy(&mut r, &mut c);
                let _ = c.shutdown(Shutdown::Write);
            });
        }
    })
}

#[test]
fn forward_relays_200_concurrent_connections_intact() {
    let dir = tmpdir("fwd200");
    let target = dir.join("echo.sock");
    unix_echo(&target);
    let (_f, ep) = start(tether().args([
        "forward",
        "tcp://127.0.0.1:0",
        &format!("unix://{}", target.display()),
    ]));
    let port: u16 = ep.rsplit_once(':').unwrap().1.parse().unwrap();
    checksummed_echoes(port, 200, 128 * 1024);
}

#[test]
fn forward_passes_a_client_half_close_and_the_reply_still_flows() {
    let dir = tmpdir("fwd-half-a");
    let target = dir.join("t.sock");
    let l = UnixListener::bind(&target).unwrap();
    let server = thread::spawn(move || {
        let (mut c, _) = l.accept().unwrap();
        let mut got = Vec::new();
        c.read_to_end(&mut got).unwrap(); // ends only if the half-close came through
        c.write_all(format!("got {} bytes", got.len()).as_bytes())
            .unwrap();
    });
    let (_f, ep) = start(tether().args([
        "forward",
        "tcp://127.0.0.1:0",
        &format!("unix://{}", target.display()),
    ]));
    let port: u16 = ep.rsplit_once(':').unwrap().1.parse().unwrap();
    let mut c = TcpStream::connect(("127.0.0.1", port)).unwrap();
    c.write_all(&[1u8; 5000]).unwrap();
    c.shutdown(Shutdown::Write).unwrap();
    let mut reply = String::new();
    c.read_to_string(&mut reply).unwrap();
    assert_eq!(reply, "got 5000 bytes");
    server.join().unwrap();
}

#[test]
fn forward_passes_a_server_half_close_and_the_client_can_still_send() {
    let dir = tmpdir("fwd-half-b");
    let target = dir.join("t.sock");
    let l = UnixListener::bind(&target).unwrap();
    let server = thread::spawn(move || {
        let (mut c, _) = l.accept().unwrap();
        c.write_all(b"banner").unwrap();
        c.shutdown(Shutdown::Write).unwrap();
        let mut got = Vec::new();
        c.read_to_end(&mut got).unwrap();
        got
    });
    let (_f, ep) = start(tether().args([
        "forward",
        &format!("unix://{}/in.sock", dir.display()),
        &format!("unix://{}", target.display()),
    ]));
    let mut c = UnixStream::connect(ep.strip_prefix("unix://").unwrap()).unwrap();
    let mut banner = Vec::new();
    c.read_to_end(&mut banner).unwrap(); // EOF arrives while our side is still open
    assert_eq!(banner, b"banner");
    c.write_all(b"after your EOF").unwrap();
    c.shutdown(Shutdown::Write).unwrap();
    assert_eq!(server.join().unwrap(), b"after your EOF");
}

#[test]
fn forward_to_socat_unix_echo() {
    let dir = tmpdir("fwd-socat");
    let target = dir.join("socat.sock");
    let _echo = Proc(
        socat()
            .arg(format!("UNIX-LISTEN:{},fork", target.display()))
            .arg("EXEC:cat")
            .spawn()
            .unwrap(),
    );
    wait_for_path(&target);
    let (_f, ep) = start(tether().args([
        "forward",
        "tcp://127.0.0.1:0",
        &format!("unix://{}", target.display()),
    ]));
    let port: u16 = ep.rsplit_once(':').unwrap().1.parse().unwrap();
    wait_for_tcp(port);
    let input = data(2 << 20, 5);
    let out = run_with_input(
        socat().arg("-").arg(format!("TCP:127.0.0.1:{port}")),
        &input,
    );
    assert!(out.status.success());
    assert_eq!(sha(&out.stdout), sha(&input));
}

/// A fake Firecracker device socket: answers `CONNECT 80\n` with `OK 1073741824\n`, then
/// echoes.
fn fake_firecracker(path: &Path) -> thread::JoinHandle<()> {
    let l = UnixListener::bind(path).unwrap();
    thread::spawn(move || {
        for c in l.incoming() {
            let mut c = c.unwrap();
            thread::spawn(move || {
                let mut line = Vec::new();
                let mut b = [0u8; 1];
                while c.read(&mut b).unwrap() == 1 && b[0] != b'\n' {
                    line.push(b[0]);
                }
                assert_eq!(line, b"CONNECT 80");
                c.write_all(b"OK 1073741824\n").unwrap();
                let mut r = c.try_clone().unwrap();
                let _ = std::io::copy(&mut r, &mut c);
                let _ = c.shutdown(Shutdown::Write);
            });
        }
    })
}

#[test]
fn forward_tcp_to_a_hybrid_vsock_guest_port() {
    let dir = tmpdir("fwd-hybrid");
    let dev = dir.join("v.sock");
    fake_firecracker(&dev);
    let (_f, ep) = start(tether().args([
        "forward",
        "tcp://127.0.0.1:0",
        &format!("hybrid://{}:80", dev.display()),
    ]));
    let port: u16 = ep.rsplit_once(':').unwrap().1.parse().unwrap();
    let input = data(1 << 20, 9);
    let out = run_with_input(
        tether().args(["cat", &format!("tcp://127.0.0.1:{port}")]),
        &input,
    );
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(sha(&out.stdout), sha(&input));
}

/// Plays QEMU's `-chardev socket,server=on` with the guest's mux end behind it: accepts
/// one link and serves an echo on mux port 1024.
fn fake_serial_guest(path: &Path) -> thread::JoinHandle<()> {
    use tether_transport::mux::{Mux, MuxConfig};
    use tokio::io::AsyncWriteExt as _;
    let l = UnixListener::bind(path).unwrap();
    thread::spawn(move || {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        rt.block_on(async move {
            let (link, _) = l.accept().unwrap();
            link.set_nonblocking(true).unwrap();
            let link = tokio::net::UnixStream::from_std(link).unwrap();
            let guest = Mux::new(link, MuxConfig::guest(3));
            let mut listener = guest.listen(1024).unwrap();
            while let Ok(conn) = listener.accept().await {
                tokio::spawn(async move {
                    let (mut r, mut w) = tokio::io::split(conn);
                    let _ = tokio::io::copy(&mut r, &mut w).await;
                    let _ = w.shutdown().await;
                });
            }
        })
    })
}

#[test]
fn forward_many_connections_over_one_serial_mux_link() {
    let dir = tmpdir("fwd-mux");
    let chardev = dir.join("serial.sock");
    fake_serial_guest(&chardev);
    let (_f, ep) = start(tether().args([
        "forward",
        "tcp://127.0.0.1:0",
        &format!("mux+unix://{}:1024", chardev.display()),
    ]));
    let port: u16 = ep.rsplit_once(':').unwrap().1.parse().unwrap();
    // The fake accepts a single link, so every connection must share it.
    let clients: Vec<_> = (0..20u64)
        .map(|i| {
            thread::spawn(move || {
                let input = data(300_000 + i as usize, i + 100);
                let mut c = TcpStream::connect(("127.0.0.1", port)).unwrap();
                let mut r = c.try_clone().unwrap();
                let reader = thread::spawn(move || {
                    let mut got = Vec::new();
                    r.read_to_end(&mut got).unwrap();
                    got
                });
                c.write_all(&input).unwrap();
                c.shutdown(Shutdown::Write).unwrap();
                assert_eq!(sha(&reader.join().unwrap()), sha(&input), "connection {i}");
            })
        })
        .collect();
    for c in clients {
        c.join().unwrap();
    }
}
