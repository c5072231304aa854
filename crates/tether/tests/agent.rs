//! The agent end to end: `tether agent` on a Unix socket, spoken to frame by frame with
//! tether-proto (so these tests also pin the wire protocol, independent of the client).

use bytes::Bytes;
use futures::{SinkExt, StreamExt};
use sha2::{Digest, Sha256};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::OnceLock;
use std::time::{Duration, Instant};
use tether_proto::*;
use tokio::io::AsyncWriteExt;
use tokio::net::UnixStream;
use tokio_util::codec::Framed;

mod support;

/// An agent process, killed with the test binary however that ends.
struct AgentProc {
    socket: PathBuf,
    pid: u32,
    _child: Child,
}

fn scratch(tag: &str) -> PathBuf {
    tether_testkit::scratch_dir(&format!("agent-{tag}"))
}

fn start_agent(tag: &str, extra: &[&str]) -> AgentProc {
    let dir = scratch(tag);
    let socket = dir.join("agent.sock");
    let child = support::spawn_agent(&socket, extra);
    AgentProc {
        socket,
        pid: child.id(),
        _child: child,
    }
}

fn agent() -> &'static AgentProc {
    static AGENT: OnceLock<AgentProc> = OnceLock::new();
    AGENT.get_or_init(|| start_agent("shared", &[]))
}

type Conn = Framed<UnixStream, FrameCodec>;

async fn connect(sock: &Path) -> Conn {
    Framed::new(UnixStream::connect(sock).await.unwrap(), FrameCodec)
}

fn hello() -> Frame {
    Frame::Hello(Hello {
        version: PROTOCOL_VERSION,
        features: Features::ALL,
        proof: Proof::default(),
    })
}

/// Sends hello and request in one flush; checks WELCOME and STARTED.
async fn exec_on(sock: &Path, req: ExecRequest) -> Conn {
    let mut c = connect(sock).await;
    c.feed(hello()).await.unwrap();
    c.feed(Frame::Exec(Box::new(req))).await.unwrap();
    c.flush().await.unwrap();
    match c.next().await {
        Some(Ok(Frame::Welcome(w))) => assert_eq!(w.version, PROTOCOL_VERSION),
        other => panic!("expected WELCOME, got {other:?}"),
    }
    match c.next().await {
        Some(Ok(Frame::Started { pid })) => assert!(pid > 1),
        other => panic!("expected STARTED, got {other:?}"),
    }
    c
}

async fn exec(req: ExecRequest) -> Conn {
    exec_on(&agent().socket, req).await
}

fn argv(a: &[&str]) -> ExecRequest {
    ExecRequest {
        argv: a.iter().map(|s| s.to_string()).collect(),
        ..Default::default()
    }
}

fn sh(line: &str) -> ExecRequest {
    ExecRequest {
        argv: vec![line.into()],
        shell: true,
        ..Default::default()
    }
}

/// Everything until EXIT: (stdout, stderr, status). Asserts the connection then ends.
async fn collect(c: &mut Conn) -> (Vec<u8>, Vec<u8>, ExitStatus) {
    let (mut out, mut err) = (Vec::new(), Vec::new());
    loop {
        match c.next().await {
            Some(Ok(Frame::Stdout(b))) => out.extend_from_slice(&b),
            Some(Ok(Frame::Stderr(b))) => err.extend_from_slice(&b),
            Some(Ok(Frame::Exit(s))) => {
                assert!(c.next().await.is_none(), "nothing after EXIT");
                return (out, err, s);
            }
            other => panic!("unexpected {other:?}"),
        }
    }
}

async fn run(req: ExecRequest) -> (Vec<u8>, Vec<u8>, ExitStatus) {
    collect(&mut exec(req).await).await
}

#[tokio::test]
async fn exit_codes_and_signals_are_distinct() {
    assert_eq!(run(argv(&["true"])).await.2, ExitStatus::exited(0));
    assert_eq!(run(sh("exit 7")).await.2, ExitStatus::exited(7));
    let s = run(sh("kill -KILL $$")).await.2;
    assert_eq!((s.code, s.signal), (None, Some(9)));
    assert_eq!(s.shell_code(), 137);
}

#[tokio::test]
async fn a_missing_command_fails_fast_with_its_name() {
    let t = Instant::now();
    let mut c = connect(&agent().socket).await;
    c.send(hello()).await.unwrap();
    c.send(Frame::Exec(Box::new(argv(&["no-such-command-xyz"]))))
        .await
        .unwrap();
    assert!(matches!(c.next().await, Some(Ok(Frame::Welcome(_)))));
    match c.next().await {
        Some(Ok(Frame::Error(e))) => {
            assert_eq!(e.code, ErrorCode::Spawn);
            assert!(
                e.message.contains("no-such-command-xyz: command not found"),
                "{}",
                e.message
            );
        }
        other => panic!("{other:?}"),
    }
    assert!(c.next().await.is_none());
    assert!(t.elapsed() < Duration::from_secs(5));
}

/// The bytes `yes LINE | head -c N` produces.
fn yes_bytes(line: &str, n: usize) -> Vec<u8> {
    let unit = format!("{line}\n");
    unit.as_bytes().iter().copied().cycle().take(n).collect()
}

#[tokio::test]
async fn one_gib_of_stdout_arrives_whole() {
    let n = 1usize << 30;
    let mut c = exec(sh(&format!("yes tether-0123456789abcdef | head -c {n}"))).await;
    let mut h = Sha256::new();
    let mut len = 0usize;
    let status = loop {
        match c.next().await {
            Some(Ok(Frame::Stdout(b))) => {
                h.update(&b);
                len += b.len();
            }
            Some(Ok(Frame::Exit(s))) => break s,
            other => panic!("{other:?}"),
        }
    };
    assert!(status.success());
    assert_eq!(len, n);
    let mut want = Sha256::new();
    want.update(yes_bytes("tether-0123456789abcdef", n));
    assert_eq!(h.finalize(), want.finalize());
}

#[tokio::test]
async fn interleaved_stdout_and_stderr_each_complete_and_in_order() {
    let (out, err, s) = run(sh(
        "i=0; while [ $i -lt 3000 ]; do echo out$i; echo err$i >&2; i=$((i+1)); done",
    ))
    .await;
    assert!(s.success());
    let want = |p: &str| (0..3000).map(|i| format!("{p}{i}\n")).collect::<String>();
    assert_eq!(String::from_utf8(out).unwrap(), want("out"));
    assert_eq!(String::from_utf8(err).unwrap(), want("err"));
}

#[tokio::test]
async fn the_tail_written_just_before_exit_is_never_lost() {
    for _ in 0..20 {
        let (out, err, s) = run(sh(
            "head -c 300000 /dev/zero; printf END; printf ERR >&2; exit 3",
        ))
        .await;
        assert_eq!(s, ExitStatus::exited(3));
        assert_eq!(out.len(), 300_003);
        assert!(out.ends_with(b"END"));
        assert_eq!(err, b"ERR");
    }
}

#[tokio::test]
async fn stdin_streams_with_an_explicit_eof_and_defaults_to_dev_null() {
    let mut req = argv(&["sha256sum"]);
    req.stdin = true;
    let mut c = exec(req).await;
    let data = yes_bytes("stdin-data", 3 << 20);
    for chunk in data.chunks(60_000) {
        c.send(Frame::Stdin(Bytes::copy_from_slice(chunk)))
            .await
            .unwrap();
    }
    c.send(Frame::StdinEof).await.unwrap();
    let (out, _, s) = collect(&mut c).await;
    assert!(s.success());
    let hex: String = Sha256::digest(&data)
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect();
    assert_eq!(String::from_utf8(out).unwrap(), format!("{hex}  -\n"));
    // Without stdin the command reads /dev/null: EOF at once, no hang.
    let (out, _, _) = run(argv(&["wc", "-c"])).await;
    assert_eq!(String::from_utf8(out).unwrap().trim(), "0");
}

fn rss_kib(pid: u32) -> u64 {
    let s = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    s.lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches(" kB").trim().parse().ok())
        .unwrap()
}

#[tokio::test]
async fn a_slow_reader_gets_backpressure_not_loss() {
    let a = start_agent("slow", &[]);
    let n = 256usize << 20;
    let mut c = exec_on(&a.socket, sh(&format!("yes slow | head -c {n}"))).await;
    let before = rss_kib(a.pid);
    // Stall: the command keeps writing while nobody reads.
    tokio::time::sleep(Duration::from_millis(1500)).await;
    let stalled = rss_kib(a.pid);
    let mut h = Sha256::new();
    let mut len = 0;
    let mut frames = 0u32;
    loop {
        match c.next().await {
            Some(Ok(Frame::Stdout(b))) => {
                h.update(&b);
                len += b.len();
                frames += 1;
                if frames % 64 == 0 {
                    tokio::time::sleep(Duration::from_millis(5)).await;
                }
            }
            Some(Ok(Frame::Exit(s))) => {
                assert!(s.success());
                break;
            }
            other => panic!("{other:?}"),
        }
    }
    assert_eq!(len, n);
    assert_eq!(h.finalize(), Sha256::digest(yes_bytes("slow", n)));
    // Held per stalled session: a few frames and socket buffers, not the output.
    assert!(
        stalled < before + 16 * 1024,
        "agent grew from {before} KiB to {stalled} KiB while the reader stalled"
    );
}

fn alive(pid: u32) -> bool {
    match std::fs::read_to_string(format!("/proc/{pid}/stat")) {
        Err(_) => false,
        Ok(s) => {
            let state = s
                .rsplit_once(") ")
                .map(|(_, r)| r.chars().next().unwrap())
                .unwrap();
            state != 'Z' && state != 'X'
        }
    }
}

fn gone_soon(pid: u32) -> bool {
    for _ in 0..100 {
        if !std::path::Path::new(&format!("/proc/{pid}")).exists() {
            return true;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    false
}

/// Reads stdout lines until `n` pids have been printed.
async fn read_pids(c: &mut Conn, n: usize) -> Vec<u32> {
    let mut text = String::new();
    while text.lines().count() < n || !text.ends_with('\n') {
        match c.next().await {
            Some(Ok(Frame::Stdout(b))) => text.push_str(&String::from_utf8_lossy(&b)),
            other => panic!("{other:?}"),
        }
    }
    text.lines().map(|l| l.trim().parse().unwrap()).collect()
}

#[tokio::test]
async fn signals_reach_the_whole_process_group() {
    let mut c = exec(sh("sleep 100 & echo $!; echo $$; wait")).await;
    let pids = read_pids(&mut c, 2).await;
    assert!(pids.iter().all(|p| alive(*p)));
    c.send(Frame::Signal(15)).await.unwrap();
    let (_, _, s) = collect(&mut c).await;
    assert_eq!(s.signal, Some(15));
    for p in pids {
        assert!(
            gone_soon(p),
            "pid {p} survived SIGTERM to its group (or was not reaped)"
        );
    }
}

#[tokio::test]
async fn timeouts_term_then_kill() {
    let mut req = argv(&["sleep", "100"]);
    req.timeout_ms = 300;
    let t = Instant::now();
    let (_, _, s) = run(req).await;
    assert_eq!((s.signal, s.timed_out), (Some(15), true));
    assert!(t.elapsed() >= Duration::from_millis(300));

    let mut req = sh("trap '' TERM; sleep 100");
    req.timeout_ms = 200;
    req.kill_grace_ms = Some(300);
    let t = Instant::now();
    let (_, _, s) = run(req).await;
    assert_eq!((s.signal, s.timed_out), (Some(9), true));
    assert!(t.elapsed() >= Duration::from_millis(500));
}

#[tokio::test]
async fn a_client_that_vanishes_leaves_no_process_or_zombie() {
    let mut c = exec(sh(
        "sleep 100 & echo $!; echo $$; yes > /dev/null & echo $!; wait",
    ))
    .await;
    let pids = read_pids(&mut c, 3).await;
    drop(c);
    for p in pids {
        assert!(gone_soon(p), "pid {p} outlived its client");
    }
}

#[tokio::test]
async fn orphans_are_reaped() {
    let a = agent();
    // The grandchild outlives its parent and is handed to the agent (subreaper).
    let (out, _, s) = run(sh("sh -c 'sleep 0.3 & echo $!'")).await;
    assert!(s.success());
    let orphan: u32 = String::from_utf8(out).unwrap().trim().parse().unwrap();
    assert!(gone_soon(orphan), "orphan {orphan} left as a zombie");
    let _ = a;
}

#[tokio::test]
async fn two_hundred_concurrent_execs() {
    let tasks: Vec<_> = (0..200)
        .map(|i| {
            tokio::spawn(async move {
                let (out, _, s) = run(sh(&format!(
                    "echo {i}; head -c {} /dev/zero | wc -c",
                    i * 1000
                )))
                .await;
                assert!(s.success());
                assert_eq!(
                    String::from_utf8(out).unwrap(),
                    format!("{i}\n{}\n", i * 1000)
                );
            })
        })
        .collect();
    for t in tasks {
        t.await.unwrap();
    }
}

#[tokio::test]
async fn env_cwd_and_users() {
    let mut req = sh("echo $GREETING; pwd");
    req.env = vec![("GREETING".into(), "hi there".into())];
    req.cwd = Some("/tmp".into());
    let (out, _, _) = run(req).await;
    assert_eq!(String::from_utf8(out).unwrap(), "hi there\n/tmp\n");

    let mut req = sh("pwd");
    req.cwd = Some("/no/such/dir".into());
    let mut c = connect(&agent().socket).await;
    c.send(hello()).await.unwrap();
    c.send(Frame::Exec(Box::new(req))).await.unwrap();
    c.next().await;
    match c.next().await {
        Some(Ok(Frame::Error(e))) => assert!(e.message.contains("/no/such/dir"), "{}", e.message),
        other => panic!("{other:?}"),
    }

    // A user made for the test, with a supplementary group.
    assert!(
        nix::unistd::geteuid().is_root(),
        "user switching tests run as root (CI does)"
    );
    let quiet = || Stdio::null();
    let _ = Command::new("groupadd")
        .arg("tetherextra")
        .stderr(quiet())
        .status();
    let _ = Command::new("useradd")
        .args(["-m", "-G", "tetherextra", "tetheruser"])
        .stderr(quiet())
        .status();
    let extra = nix::unistd::Group::from_name("tetherextra")
        .unwrap()
        .unwrap()
        .gid;
    let user = nix::unistd::User::from_name("tetheruser").unwrap().unwrap();
    let mut req = sh("id -u; id -g; id -G; echo $HOME; pwd");
    req.user = Some("tetheruser".into());
    let (out, _, s) = run(req).await;
    assert!(s.success());
    let out = String::from_utf8(out).unwrap();
    let lines: Vec<&str> = out.lines().collect();
    assert_eq!(lines[0], user.uid.to_string());
    assert_eq!(lines[1], user.gid.to_string());
    assert!(lines[2].split(' ').any(|g| g == extra.to_string()), "{out}");
    assert_eq!(lines[3], user.dir.display().to_string());
    assert_eq!(lines[4], user.dir.display().to_string());

    let mut req = sh("id -u; id -g");
    req.user = Some("4321:4322".into());
    let (out, _, _) = run(req).await;
    assert_eq!(String::from_utf8(out).unwrap(), "4321\n4322\n");

    let mut c = connect(&agent().socket).await;
    let mut req = argv(&["true"]);
    req.user = Some("nobody-such".into());
    c.send(hello()).await.unwrap();
    c.send(Frame::Exec(Box::new(req))).await.unwrap();
    c.next().await;
    match c.next().await {
        Some(Ok(Frame::Error(e))) => {
            assert!(e.message.contains("no user `nobody-such`"), "{}", e.message)
        }
        other => panic!("{other:?}"),
    }
}

#[tokio::test]
async fn a_tty_session_has_its_size_resize_and_ctrl_c() {
    let mut req = sh("stty size; tty; read x; stty size; trap 'echo got-int; exit 3' INT; echo ready; while :; do sleep 0.05; done");
    req.tty = Some(Tty {
        rows: 24,
        cols: 80,
        term: Some("xterm".into()),
    });
    req.stdin = true;
    let mut c = exec(req).await;
    let mut text = String::new();
    async fn until(c: &mut Conn, text: &mut String, what: &str) {
        while !text.contains(what) {
            match c.next().await {
                Some(Ok(Frame::Stdout(b))) => text.push_str(&String::from_utf8_lossy(&b)),
                other => panic!("waiting for {what:?} in {text:?}: {other:?}"),
            }
        }
    }
    until(&mut c, &mut text, "/dev/pts/").await;
    assert!(text.starts_with("24 80"), "{text:?}");
    c.send(Frame::Resize {
        rows: 40,
        cols: 100,
    })
    .await
    .unwrap();
    c.send(Frame::Stdin(Bytes::from_static(b"go\r")))
        .await
        .unwrap();
    until(&mut c, &mut text, "ready").await;
    assert!(text.contains("40 100"), "{text:?}");
    // ^C through the terminal's line discipline, as a keyboard sends it.
    c.send(Frame::Stdin(Bytes::from_static(&[0x03])))
        .await
        .unwrap();
    let (rest, err, s) = collect(&mut c).await;
    assert!(String::from_utf8_lossy(&rest).contains("got-int"));
    assert!(err.is_empty(), "a terminal session has no separate stderr");
    assert_eq!(s, ExitStatus::exited(3));
}

#[tokio::test]
async fn ping_and_info() {
    let mut c = connect(&agent().socket).await;
    c.send(hello()).await.unwrap();
    assert!(matches!(c.next().await, Some(Ok(Frame::Welcome(_)))));
    for i in 0..100u32 {
        c.send(Frame::Ping(Bytes::from(i.to_le_bytes().to_vec())))
            .await
            .unwrap();
        match c.next().await {
            Some(Ok(Frame::Pong(p))) => assert_eq!(&p[..], i.to_le_bytes()),
            other => panic!("{other:?}"),
        }
    }
    let mut c = connect(&agent().socket).await;
    c.send(hello()).await.unwrap();
    c.send(Frame::InfoRequest).await.unwrap();
    c.next().await;
    match c.next().await {
        Some(Ok(Frame::Info(i))) => assert_eq!(i.pid, agent().pid),
        other => panic!("{other:?}"),
    }
}

/// Sends raw bytes as a connection's opening and returns the agent's error, if any.
async fn raw_open(bytes: &[u8], close: bool) -> Option<ErrorMsg> {
    let mut s = UnixStream::connect(&agent().socket).await.unwrap();
    s.write_all(bytes).await.unwrap();
    if close {
        s.shutdown().await.unwrap();
    }
    let mut c = Framed::new(s, FrameCodec);
    let mut err = None;
    while let Some(f) = c.next().await {
        if let Ok(Frame::Error(e)) = f {
            err = Some(e);
        }
    }
    err
}

#[tokio::test]
async fn garbage_truncated_and_oversize_frames_close_only_their_connection() {
    let e = raw_open(b"GET / HTTP/1.1\r\n\r\n", false).await.unwrap();
    assert_eq!(e.code, ErrorCode::UnknownKind);
    let e = raw_open(&[0x14, 0, 0, 0, 0x10], false).await.unwrap();
    assert_eq!(e.code, ErrorCode::Oversize);
    assert!(e.message.contains("limit"));
    let e = raw_open(&[0x10, 3, 0, 0, 0, b'{', b'x', b'}'], false)
        .await
        .unwrap();
    assert_eq!(e.code, ErrorCode::BadFrame);
    // A hello, then an unknown kind where the request belongs.
    let mut b = bytes::BytesMut::new();
    encode(&hello(), &mut b).unwrap();
    b.extend_from_slice(&[0x7f, 0, 0, 0, 0]);
    let e = raw_open(&b, false).await.unwrap();
    assert_eq!(e.code, ErrorCode::UnknownKind);
    // Half a frame, then EOF: the connection just ends.
    let _ = raw_open(&[0x01, 66, 0, 0, 0, b'T', b'T'], true).await;
    // A frame cut short mid-exec.
    let mut c = exec(argv(&["sleep", "100"])).await;
    c.get_mut()
        .write_all(&[0x12, 100, 0, 0, 0, 1, 2])
        .await
        .unwrap();
    c.get_mut().shutdown().await.unwrap();
    while c.next().await.is_some() {}
    // Everyone else is still served.
    assert!(run(argv(&["true"])).await.2.success());
}

#[tokio::test]
async fn a_token_is_required_proven_and_never_replayable() {
    let dir = scratch("token");
    let tok = dir.join("token");
    std::fs::write(&tok, "s3cret\n").unwrap();
    let a = start_agent("tokened", &["--token-file", tok.to_str().unwrap()]);
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs();
    let attempt = |proof: Proof| {
        let sock = a.socket.clone();
        async move {
            let mut c = connect(&sock).await;
            c.send(Frame::Hello(Hello {
                version: 1,
                features: Features::ALL,
                proof,
            }))
            .await
            .unwrap();
            // A refused hello may close the connection before the pipelined EXEC is
            // written (EPIPE); the refusal is still there to read.
            let _ = c.send(Frame::Exec(Box::new(argv(&["true"])))).await;
            c.next().await.unwrap().unwrap()
        }
    };
    match attempt(Proof::default()).await {
        Frame::Error(e) => assert_eq!(e.code, ErrorCode::Auth),
        f => panic!("{f:?}"),
    }
    match attempt(Proof::new(b"wrong", now, [1; 16])).await {
        Frame::Error(e) => assert_eq!(e.code, ErrorCode::Auth),
        f => panic!("{f:?}"),
    }
    let good = Proof::new(b"s3cret", now, [2; 16]);
    assert!(matches!(attempt(good).await, Frame::Welcome(_)));
    match attempt(good).await {
        Frame::Error(e) => assert!(e.message.contains("replayed")),
        f => panic!("{f:?}"),
    }
}

#[test]
fn a_tcp_listener_needs_a_token() {
    let out = Command::new(env!("CARGO_BIN_EXE_tether"))
        .env_remove("TETHER_CONFIG")
        .args(["agent", "--listen", "tcp://127.0.0.1:0"])
        .output()
        .unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("without a token"), "{err}");
}
