//! `tether forward --via`: port forwarding through a real `tether agent` on a Unix socket,
//! to and from loopback TCP services standing in for guest and host services. The agent
//! runs on this machine, so "in the guest" is this machine's loopback here.
//!
//! The last tests speak the protocol frame by frame (CONNECT, LISTEN, ATTACH), for what
//! the CLI never does: bytes sent right behind a request, unknown ids, claim timeouts.

use futures::{SinkExt, StreamExt};
use std::io::{BufRead, BufReader, Read, Write};
use std::net::{Shutdown, TcpListener, TcpStream};
use std::path::PathBuf;
use std::process::{Child, Stdio};
use std::sync::mpsc;
use std::sync::OnceLock;
use std::thread;
use std::time::{Duration, Instant};
use tether_proto::*;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio_util::codec::Framed;

mod support;
use support::{checksummed_echoes, data};

/// Reads and writes on test sockets give up after this: no test hangs.
const IO_LIMIT: Duration = Duration::from_secs(60);

struct Agent {
    dir: PathBuf,
    socket: PathBuf,
    child: Child,
}

fn scratch(tag: &str) -> PathBuf {
    tether_testkit::scratch_dir(&format!("fwd-agent-{tag}"))
}

/// The agent most tests share: loopback TCP allowed both ways, and one Unix socket.
fn agent() -> &'static Agent {
    static A: OnceLock<Agent> = OnceLock::new();
    A.get_or_init(|| {
        let dir = scratch("shared");
        let socket = dir.join("agent.sock");
        let unix_target = format!("unix://{}", dir.join("svc.sock").display());
        let child = support::spawn_agent(
            &socket,
            &[
                "--allow-connect",
                "tcp://127.0.0.1:*",
                "--allow-listen",
                "tcp://127.0.0.1:*",
                "--allow-connect",
                &unix_target,
            ],
        );
        Agent { dir, socket, child }
    })
}

fn agent_uri() -> String {
    format!("unix://{}", agent().socket.display())
}

/// A child process killed when the test ends, however it ends.
struct Proc(Child);

impl Drop for Proc {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// A running `tether forward`: the endpoint it listens on (in the guest with --reverse)
/// and the lines it prints after its first.
struct Forward {
    proc: Proc,
    listening: String,
    lines: mpsc::Receiver<String>,
}

impl Forward {
    fn port(&self) -> u16 {
        self.listening.rsplit_once(':').unwrap().1.parse().unwrap()
    }

    /// Waits for a line of stderr containing `needle`; returns it.
    fn line_with(&self, needle: &str) -> String {
        let deadline = Instant::now() + Duration::from_secs(20);
        while let Some(left) = deadline.checked_duration_since(Instant::now()) {
            match self.lines.recv_timeout(left) {
                Ok(l) if l.contains(needle) => return l,
                Ok(_) => {}
                Err(_) => break,
            }
        }
        panic!("tether forward never printed a line with {needle:?}");
    }
}

/// Starts `tether forward ARGS` and waits for its "forwarding" line.
fn forward(args: &[&str]) -> Forward {
    let mut child = support::tether()
        .arg("forward")
        .args(args)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut lines = BufReader::new(child.stderr.take().unwrap()).lines();
    let first = lines.next().expect("a first line").unwrap();
    let listening = first
        .strip_prefix("tether: forwarding ")
        .unwrap_or_else(|| panic!("unexpected first line: {first}"))
        .split(' ')
        .next()
        .unwrap()
        .to_string();
    let (tx, rx) = mpsc::channel();
    thread::spawn(move || {
        for l in lines.map_while(Result::ok) {
            let _ = tx.send(l);
        }
    });
    Forward {
        proc: Proc(child),
        listening,
        lines: rx,
    }
}

/// `tether forward --via AGENT FROM TO` on any free host port.
fn into_guest(to: &str) -> Forward {
    forward(&["--via", &agent_uri(), "tcp://127.0.0.1:0", to])
}

/// `tether forward --via AGENT --reverse tcp://127.0.0.1:0 TO`.
fn out_of_guest(to: &str) -> Forward {
    forward(&["--via", &agent_uri(), "--reverse", "tcp://127.0.0.1:0", to])
}

fn tcp(port: u16) -> String {
    format!("tcp://127.0.0.1:{port}")
}

fn connect(port: u16) -> TcpStream {
    let c = TcpStream::connect(("127.0.0.1", port)).unwrap();
    c.set_read_timeout(Some(IO_LIMIT)).unwrap();
    c.set_write_timeout(Some(IO_LIMIT)).unwrap();
    c
}

/// A TCP echo service: each connection's bytes back, then a half-close when its input
/// ends. Returns its port.
fn tcp_echo() -> u16 {
    let l = TcpListener::bind("127.0.0.1:0").unwrap();
    let port = l.local_addr().unwrap().port();
    thread::spawn(move || {
        for c in l.incoming() {
            let mut c = c.unwrap();
            thread::spawn(move || {
                let mut r = c.try_clone().unwrap();
                let _ = std::io::copy(&mut r, &mut c);
                let _ = c.shutdown(Shutdown::Write);
            });
        }
    });
    port
}

/// One short echo exchange through `port`: the path works.
fn echo_once(port: u16, text: &[u8]) {
    let mut c = connect(port);
    c.write_all(text).unwrap();
    c.shutdown(Shutdown::Write).unwrap();
    let mut got = Vec::new();
    c.read_to_end(&mut got).unwrap();
    assert_eq!(got, text);
}

#[test]
fn two_hundred_concurrent_connections_into_the_guest_arrive_intact() {
    let f = into_guest(&tcp(tcp_echo()));
    checksummed_echoes(f.port(), 200, 128 * 1024);
}

#[test]
fn sixty_concurrent_guest_connections_reach_the_host_intact() {
    let f = out_of_guest(&tcp(tcp_echo()));
    checksummed_echoes(f.port(), 60, 256 * 1024);
}

/// The client half-closes; the server reads to EOF (only possible if the half-close came
/// through) and its reply still arrives.
fn client_half_close_case(connect_port: u16, server: TcpListener) {
    let s = thread::spawn(move || {
        let (mut c, _) = server.accept().unwrap();
        c.set_read_timeout(Some(IO_LIMIT)).unwrap();
        let mut got = Vec::new();
        c.read_to_end(&mut got).unwrap();
        c.write_all(format!("got {} bytes", got.len()).as_bytes())
            .unwrap();
    });
    let mut c = connect(connect_port);
    c.write_all(&[1u8; 70_000]).unwrap();
    c.shutdown(Shutdown::Write).unwrap();
    let mut reply = String::new();
    c.read_to_string(&mut reply).unwrap();
    assert_eq!(reply, "got 70000 bytes");
    s.join().unwrap();
}

/// The server half-closes after a banner; the client reads EOF and can still send.
fn server_half_close_case(connect_port: u16, server: TcpListener) {
    let s = thread::spawn(move || {
        let (mut c, _) = server.accept().unwrap();
        c.set_read_timeout(Some(IO_LIMIT)).unwrap();
        c.write_all(b"banner").unwrap();
        c.shutdown(Shutdown::Write).unwrap();
        let mut got = Vec::new();
        c.read_to_end(&mut got).unwrap();
        got
    });
    let mut c = connect(connect_port);
    let mut banner = Vec::new();
    c.read_to_end(&mut banner).unwrap(); // EOF arrives while this side is still open
    assert_eq!(banner, b"banner");
    c.write_all(b"after your EOF").unwrap();
    c.shutdown(Shutdown::Write).unwrap();
    assert_eq!(s.join().unwrap(), b"after your EOF");
}

fn server() -> (TcpListener, u16) {
    let l = TcpListener::bind("127.0.0.1:0").unwrap();
    let port = l.local_addr().unwrap().port();
    (l, port)
}

#[test]
fn half_close_passes_both_ways_into_the_guest() {
    let (l, port) = server();
    let f = into_guest(&tcp(port));
    client_half_close_case(f.port(), l);
    let (l, port) = server();
    let f = into_guest(&tcp(port));
    server_half_close_case(f.port(), l);
}

#[test]
fn half_close_passes_both_ways_out_of_the_guest() {
    let (l, port) = server();
    let f = out_of_guest(&tcp(port));
    client_half_close_case(f.port(), l);
    let (l, port) = server();
    let f = out_of_guest(&tcp(port));
    server_half_close_case(f.port(), l);
}

#[test]
fn a_unix_socket_in_the_guest_is_a_destination_too() {
    let path = agent().dir.join("svc.sock");
    let l = std::os::unix::net::UnixListener::bind(&path).unwrap();
    let s = thread::spawn(move || {
        let (mut c, _) = l.accept().unwrap();
        let mut got = Vec::new();
        c.read_to_end(&mut got).unwrap();
        c.write_all(&got).unwrap();
    });
    let f = into_guest(&format!("unix://{}", path.display()));
    echo_once(f.port(), b"over a unix socket");
    s.join().unwrap();
}

/// Waits until the agent process has not exited: it kept serving.
fn agent_alive() {
    let pid = nix::unistd::Pid::from_raw(agent().child.id() as i32);
    assert!(
        nix::sys::signal::kill(pid, None).is_ok(),
        "the agent is still running"
    );
}

/// Reads from `c` until EOF or reset; true when the connection ended without data.
fn closed_without_data(c: &mut TcpStream) -> bool {
    let mut buf = [0u8; 64];
    matches!(c.read(&mut buf), Ok(0) | Err(_))
}

#[test]
fn destinations_outside_the_policy_are_refused_by_name_and_the_agent_serves_on() {
    let echo = tcp_echo();
    // 127.0.0.2 is loopback too, but only 127.0.0.1 is allowed.
    let denied = format!("tcp://127.0.0.2:{echo}");
    let f = into_guest(&denied);
    let mut c = connect(f.port());
    c.write_all(b"never delivered").unwrap();
    assert!(closed_without_data(&mut c));
    let line = f.line_with("not allowed");
    assert!(
        line.contains(&format!("--allow-connect {denied}")) && line.contains("agent refused"),
        "{line}"
    );
    // A kind of endpoint the agent never forwards.
    let f = into_guest("hybrid:///run/v.sock:80");
    let mut c = connect(f.port());
    assert!(closed_without_data(&mut c));
    let line = f.line_with("only tcp://");
    assert!(line.contains("hybrid:///run/v.sock:80"), "{line}");
    // Listening outside the policy ends `--reverse` at once, with the flag to use.
    let out = bounded(support::tether().args([
        "forward",
        "--via",
        &agent_uri(),
        "--reverse",
        "tcp://127.0.0.2:0",
        &tcp(echo),
    ]));
    assert_eq!(out.status.code(), Some(1));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("--allow-listen tcp://127.0.0.2:0") && err.contains("not allowed"),
        "{err}"
    );
    agent_alive();
    let f = into_guest(&tcp(echo));
    echo_once(f.port(), b"still serving");
}

#[test]
fn an_agent_without_allow_flags_forwards_nothing() {
    let dir = scratch("deny-all");
    let socket = dir.join("agent.sock");
    let _agent = Proc(support::spawn_agent(&socket, &[]));
    let via = format!("unix://{}", socket.display());
    let target = tcp(tcp_echo());
    let f = forward(&["--via", &via, "tcp://127.0.0.1:0", &target]);
    let mut c = connect(f.port());
    assert!(closed_without_data(&mut c));
    let line = f.line_with("not allowed");
    assert!(
        line.contains(&format!("--allow-connect {target}")),
        "{line}"
    );
    assert!(
        line.contains("tcp://127.0.0.1:*"),
        "the hint names a pattern: {line}"
    );
}

#[test]
fn a_guest_destination_that_refuses_gives_a_clear_error() {
    let free = server().1; // bound and closed again: nothing listens there now
    let f = into_guest(&tcp(free));
    let mut c = connect(f.port());
    assert!(closed_without_data(&mut c));
    let line = f.line_with("refused");
    assert!(
        line.contains("in the guest") && line.contains(&tcp(free)),
        "{line}"
    );
    agent_alive();
}

/// Runs a command that should end by itself, killing it after 30 s.
fn bounded(cmd: &mut std::process::Command) -> std::process::Output {
    let child = cmd
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let pid = child.id();
    let (tx, rx) = mpsc::channel();
    thread::spawn(move || tx.send(child.wait_with_output().unwrap()));
    rx.recv_timeout(Duration::from_secs(30))
        .unwrap_or_else(|_| {
            let _ = nix::sys::signal::kill(
                nix::unistd::Pid::from_raw(pid as i32),
                nix::sys::signal::Signal::SIGKILL,
            );
            panic!("the command did not end within 30 s");
        })
}

/// Polls until nothing listens on `port` any more.
fn refused_soon(port: u16) -> bool {
    for _ in 0..200 {
        match TcpStream::connect(("127.0.0.1", port)) {
            Err(e) if e.kind() == std::io::ErrorKind::ConnectionRefused => return true,
            _ => thread::sleep(Duration::from_millis(25)),
        }
    }
    false
}

#[test]
fn the_guest_listener_ends_with_its_control_connection() {
    let f = out_of_guest(&tcp(tcp_echo()));
    let guest_port = f.port();
    echo_once(guest_port, b"while it lives");
    drop(f); // kills tether forward: its control connection to the agent ends
    assert!(
        refused_soon(guest_port),
        "the agent closed the guest listener"
    );
    agent_alive();
}

#[test]
fn a_client_killed_mid_stream_leaves_the_agent_serving_others() {
    // A sink that reports its first bytes (the path is up end to end) and its end.
    let (l, port) = server();
    let (events, seen) = mpsc::channel();
    thread::spawn(move || {
        let (mut c, _) = l.accept().unwrap();
        let mut buf = vec![0u8; 64 * 1024];
        let mut total = 0usize;
        while let Ok(n @ 1..) = c.read(&mut buf) {
            if total == 0 {
                let _ = events.send("flowing");
            }
            total += n;
        }
        let _ = events.send("ended");
    });
    let other = into_guest(&tcp(tcp_echo()));
    let mut doomed = into_guest(&tcp(port));
    let mut c = connect(doomed.port());
    c.write_all(&data(1 << 20, 1)).unwrap();
    let wait = |what| {
        let got = seen.recv_timeout(Duration::from_secs(20));
        assert_eq!(got, Ok(what), "the sink saw its connection {what} in time");
    };
    wait("flowing");
    // Mid-stream: the forward process dies without a goodbye.
    doomed.proc.0.kill().unwrap();
    // The agent notices and ends the guest side of that connection.
    wait("ended");
    agent_alive();
    checksummed_echoes(other.port(), 10, 32 * 1024);
}

// ---- frame by frame ----

type Conn = Framed<tokio::net::UnixStream, FrameCodec>;

fn hello() -> Frame {
    Frame::Hello(Hello {
        version: PROTOCOL_VERSION,
        features: Features::FORWARD,
        proof: Proof::default(),
    })
}

/// Opens an agent connection with hello and `request` in one write; checks WELCOME.
async fn open(request: Frame) -> Conn {
    let s = tokio::net::UnixStream::connect(&agent().socket)
        .await
        .unwrap();
    let mut c = Framed::new(s, FrameCodec);
    c.feed(hello()).await.unwrap();
    c.feed(request).await.unwrap();
    c.flush().await.unwrap();
    match next(&mut c).await {
        Frame::Welcome(w) => assert!(w.features.contains(Features::FORWARD)),
        other => panic!("expected WELCOME, got {other:?}"),
    }
    c
}

async fn next(c: &mut Conn) -> Frame {
    tokio::time::timeout(IO_LIMIT, c.next())
        .await
        .expect("a frame in time")
        .expect("a frame, not the end")
        .expect("a decodable frame")
}

fn error_code(f: Frame) -> ErrorCode {
    match f {
        Frame::Error(e) => e.code,
        other => panic!("expected ERROR, got {other:?}"),
    }
}

#[tokio::test]
async fn bytes_sent_right_behind_connect_reach_the_destination() {
    let echo = tcp_echo();
    let s = tokio::net::UnixStream::connect(&agent().socket)
        .await
        .unwrap();
    let mut c = Framed::new(s, FrameCodec);
    c.feed(hello()).await.unwrap();
    c.feed(Frame::Connect(ConnectRequest { target: tcp(echo) }))
        .await
        .unwrap();
    // Raw bytes in the same write as the frames: the agent reads them ahead and must
    // pass them on once connected.
    let mut parts = c.into_parts();
    let mut wire = parts.write_buf.split();
    wire.extend_from_slice(b"early bytes");
    parts.io.write_all(&wire).await.unwrap();
    let mut c = Framed::from_parts(parts);
    next(&mut c).await; // WELCOME
    assert_eq!(next(&mut c).await, Frame::Connected);
    let parts = c.into_parts();
    let mut got = parts.read_buf.to_vec();
    let mut s = parts.io;
    s.shutdown().await.unwrap();
    tokio::time::timeout(IO_LIMIT, s.read_to_end(&mut got))
        .await
        .unwrap()
        .unwrap();
    assert_eq!(got, b"early bytes");
}

#[tokio::test]
async fn attach_claims_once_and_unknown_ids_are_not_found() {
    let mut c = open(Frame::Attach { id: u64::MAX }).await;
    assert_eq!(error_code(next(&mut c).await), ErrorCode::NotFound);

    let mut control = open(Frame::Listen(ListenRequest {
        bind: "tcp://127.0.0.1:0".into(),
    }))
    .await;
    let bound = match next(&mut control).await {
        Frame::Listening(l) => l.bound,
        other => panic!("expected LISTENING, got {other:?}"),
    };
    let port: u16 = bound.rsplit_once(':').unwrap().1.parse().unwrap();
    let mut guest = tokio::net::TcpStream::connect(("127.0.0.1", port))
        .await
        .unwrap();
    let id = match next(&mut control).await {
        Frame::Accepted(a) => a.id,
        other => panic!("expected ACCEPTED, got {other:?}"),
    };
    let mut first = open(Frame::Attach { id }).await;
    assert_eq!(next(&mut first).await, Frame::Connected);
    let mut second = open(Frame::Attach { id }).await;
    assert_eq!(error_code(next(&mut second).await), ErrorCode::NotFound);
    // The claimed connection carries bytes from the guest program to the client.
    guest.write_all(b"from the guest").await.unwrap();
    guest.shutdown().await.unwrap();
    let parts = first.into_parts();
    let mut got = parts.read_buf.to_vec();
    let mut s = parts.io;
    tokio::time::timeout(IO_LIMIT, s.read_to_end(&mut got))
        .await
        .unwrap()
        .unwrap();
    assert_eq!(got, b"from the guest");
}

/// LISTEN on a free loopback port; returns the control connection and the port.
async fn guest_listener() -> (Conn, u16) {
    let mut control = open(Frame::Listen(ListenRequest {
        bind: "tcp://127.0.0.1:0".into(),
    }))
    .await;
    match next(&mut control).await {
        Frame::Listening(l) => {
            let port = l.bound.rsplit_once(':').unwrap().1.parse().unwrap();
            (control, port)
        }
        other => panic!("expected LISTENING, got {other:?}"),
    }
}

/// Waits for `guest` to be closed by the agent; how long that took.
async fn closed_after(guest: &mut tokio::net::TcpStream) -> Duration {
    let start = Instant::now();
    let mut buf = [0u8; 16];
    let r = tokio::time::timeout(IO_LIMIT, guest.read(&mut buf))
        .await
        .expect("closed in time");
    assert!(matches!(r, Ok(0) | Err(_)), "{r:?}");
    start.elapsed()
}

#[tokio::test]
async fn unclaimed_connections_close_with_their_listener_or_after_the_claim_timeout() {
    // Never claimed: closed once the claim timeout has passed, not before.
    let (mut control, port) = guest_listener().await;
    let mut guest = tokio::net::TcpStream::connect(("127.0.0.1", port))
        .await
        .unwrap();
    assert!(matches!(next(&mut control).await, Frame::Accepted(_)));
    let waited = closed_after(&mut guest).await;
    assert!(
        waited >= Duration::from_secs(9) && waited < Duration::from_secs(30),
        "{waited:?}"
    );
    // The control connection ends: the listener and its unclaimed connection go at once.
    let mut guest = tokio::net::TcpStream::connect(("127.0.0.1", port))
        .await
        .unwrap();
    assert!(matches!(next(&mut control).await, Frame::Accepted(_)));
    drop(control);
    assert!(closed_after(&mut guest).await < Duration::from_secs(5));
    let refused = tokio::net::TcpStream::connect(("127.0.0.1", port)).await;
    assert!(refused.is_err(), "the guest listener is closed");
}

#[tokio::test]
async fn a_frame_after_listen_ends_the_listener_with_bad_frame() {
    let (mut control, port) = guest_listener().await;
    control.send(Frame::Ping(Default::default())).await.unwrap();
    assert_eq!(error_code(next(&mut control).await), ErrorCode::BadFrame);
    let mut refused = false;
    for _ in 0..100 {
        if tokio::net::TcpStream::connect(("127.0.0.1", port))
            .await
            .is_err()
        {
            refused = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert!(refused, "the guest listener closed");
}
