//! `tether exec`, `shell` and `ping` as users run them, against a scripted fake agent (a
//! Unix socket in a temporary directory speaking tether-proto). End-to-end tests
//! against the real agent live beside the agent's.

use futures::{SinkExt, StreamExt};
use std::future::Future;
use std::io::{BufRead, BufReader, Read, Write};
use std::path::PathBuf;
use std::process::{Command, Output, Stdio};
use std::thread;
use std::time::Duration;
use tether_proto::{
    ErrorCode, ErrorMsg, ExecRequest, ExitStatus, Features, Frame, FrameCodec, Hello, Welcome,
};
use tokio::net::{UnixListener, UnixStream};
use tokio_util::codec::Framed;

type Conn = Framed<UnixStream, FrameCodec>;

fn tether() -> Command {
    let mut c = Command::new(env!("CARGO_BIN_EXE_tether"));
    c.env_remove("TETHER_CONFIG")
        .env_remove("TETHER_TOKEN_FILE")
        .env("HOME", "/nonexistent");
    c
}

/// A temporary directory, removed on drop.
struct TmpDir(PathBuf);

impl TmpDir {
    fn new(tag: &str) -> TmpDir {
        use std::sync::atomic::{AtomicU32, Ordering};
        static N: AtomicU32 = AtomicU32::new(0);
        let d = std::env::temp_dir().join(format!(
            "tether-exec-{tag}-{}-{}",
            std::process::id(),
            N.fetch_add(1, Ordering::Relaxed)
        ));
        let _ = std::fs::remove_dir_all(&d);
        std::fs::create_dir_all(&d).unwrap();
        TmpDir(d)
    }
}

impl Drop for TmpDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// A fake agent serving `conns` connections in turn with `script`, on its own thread
/// and runtime; `join` returns what the script returned for each.
struct Fake<T> {
    dir: TmpDir,
    thread: thread::JoinHandle<Vec<T>>,
}

impl<T: Send + 'static> Fake<T> {
    fn start<F, Fut>(conns: usize, script: F) -> Fake<T>
    where
        F: Fn(Conn) -> Fut + Send + 'static,
        Fut: Future<Output = T>,
    {
        let dir = TmpDir::new("agent");
        let std_listener = std::os::unix::net::UnixListener::bind(dir.0.join("a.sock")).unwrap();
        std_listener.set_nonblocking(true).unwrap();
        let thread = thread::spawn(move || {
            let rt = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .unwrap();
            rt.block_on(async move {
                let l = UnixListener::from_std(std_listener).unwrap();
                let mut out = Vec::new();
                for _ in 0..conns {
                    let accepted = tokio::time::timeout(Duration::from_secs(60), l.accept());
                    let (s, _) = accepted.await.expect("a client came").unwrap();
                    let script = script(Framed::new(s, FrameCodec));
                    out.push(
                        tokio::time::timeout(Duration::from_secs(60), script)
                            .await
                            .expect("the script finished in time"),
                    );
                }
                out
            })
        });
        Fake { dir, thread }
    }

    fn uri(&self) -> String {
        format!("unix://{}", self.dir.0.join("a.sock").display())
    }

    fn join(self) -> Vec<T> {
        self.thread.join().expect("the fake agent's script passed")
    }
}

async fn next(c: &mut Conn) -> Frame {
    c.next().await.expect("a frame").expect("decodable")
}

async fn send(c: &mut Conn, f: Frame) {
    c.send(f).await.unwrap();
}

/// HELLO and EXEC in, WELCOME and STARTED out.
async fn start(c: &mut Conn) -> (Hello, ExecRequest) {
    let Frame::Hello(h) = next(c).await else {
        panic!("no hello")
    };
    let Frame::Exec(r) = next(c).await else {
        panic!("no exec")
    };
    send(
        c,
        Frame::Welcome(Welcome {
            version: 1,
            features: Features::ALL,
        }),
    )
    .await;
    send(c, Frame::Started { pid: 99 }).await;
    (h, *r)
}

fn run(cmd: &mut Command) -> Output {
    cmd.stdin(Stdio::null()).output().unwrap()
}

fn text(b: &[u8]) -> String {
    String::from_utf8_lossy(b).into_owned()
}

#[test]
fn exit_statuses_pass_through_like_ssh() {
    for (status, want) in [
        (ExitStatus::exited(0), 0),
        (ExitStatus::exited(7), 7),
        (ExitStatus::signaled(9, false), 128 + 9),
    ] {
        let fake = Fake::start(1, move |mut c| async move {
            start(&mut c).await;
            send(&mut c, Frame::Exit(status)).await;
        });
        let out = run(tether().args(["exec", &fake.uri(), "--", "x"]));
        fake.join();
        assert_eq!(
            out.status.code(),
            Some(want),
            "{status:?}: {}",
            text(&out.stderr)
        );
        assert!(out.stderr.is_empty(), "{}", text(&out.stderr));
    }
}

#[test]
fn stdout_and_stderr_stay_separate_and_in_order() {
    let fake = Fake::start(1, |mut c| async move {
        start(&mut c).await;
        for i in 0..50 {
            send(&mut c, Frame::Stdout(format!("out {i}\n").into())).await;
            send(&mut c, Frame::Stderr(format!("err {i}\n").into())).await;
        }
        send(&mut c, Frame::Exit(ExitStatus::exited(0))).await;
    });
    let out = run(tether().args(["exec", &fake.uri(), "--", "x"]));
    fake.join();
    assert_eq!(out.status.code(), Some(0));
    let want_out: String = (0..50).map(|i| format!("out {i}\n")).collect();
    let want_err: String = (0..50).map(|i| format!("err {i}\n")).collect();
    assert_eq!(text(&out.stdout), want_out);
    assert_eq!(text(&out.stderr), want_err);
}

#[test]
fn an_agent_error_is_printed_and_exits_255() {
    let fake = Fake::start(1, |mut c| async move {
        let _ = next(&mut c).await;
        let _ = next(&mut c).await;
        send(
            &mut c,
            Frame::Welcome(Welcome {
                version: 1,
                features: Features::ALL,
            }),
        )
        .await;
        let msg = ErrorMsg::new(ErrorCode::Spawn, "nope: command not found");
        send(&mut c, Frame::Error(msg)).await;
    });
    let out = run(tether().args(["exec", &fake.uri(), "--", "nope"]));
    fake.join();
    assert_eq!(out.status.code(), Some(255));
    assert_eq!(
        text(&out.stderr).trim_end(),
        "tether: cannot start the command: nope: command not found"
    );
    assert!(out.stdout.is_empty());
}

#[test]
fn a_lost_connection_and_an_absent_agent_exit_255() {
    let fake = Fake::start(1, |mut c| async move {
        start(&mut c).await;
        send(&mut c, Frame::Stdout("partial\n".into())).await;
    });
    let out = run(tether().args(["exec", &fake.uri(), "--", "x"]));
    fake.join();
    assert_eq!(out.status.code(), Some(255));
    assert_eq!(text(&out.stdout), "partial\n");
    assert!(
        text(&out.stderr).contains("tether: connection lost before the command's exit status"),
        "{}",
        text(&out.stderr)
    );

    let dir = TmpDir::new("none");
    let uri = format!("unix://{}", dir.0.join("nobody.sock").display());
    let out = run(tether().args(["exec", &uri, "--", "x"]));
    assert_eq!(out.status.code(), Some(255));
    assert!(
        text(&out.stderr).starts_with("tether: "),
        "{}",
        text(&out.stderr)
    );
}

#[test]
fn flags_reach_the_exec_request() {
    let fake = Fake::start(2, |mut c| async move {
        let (h, r) = start(&mut c).await;
        send(&mut c, Frame::Exit(ExitStatus::exited(0))).await;
        (h, r)
    });
    let out = run(tether().env("TERM", "xterm-test").args([
        "exec",
        "-e",
        "A=1",
        "--env",
        "B=x=y",
        "-w",
        "/tmp",
        "-u",
        "1000:1000",
        "--timeout",
        "1500ms",
        "--kill-grace",
        "3s",
        "-t",
        &fake.uri(),
        "--",
        "prog",
        "a",
        "b c",
    ]));
    assert_eq!(out.status.code(), Some(0), "{}", text(&out.stderr));
    let out = run(tether().args([
        "exec",
        "--shell",
        &fake.uri(),
        "--",
        "echo $HOME",
        "|",
        "wc",
    ]));
    assert_eq!(out.status.code(), Some(0), "{}", text(&out.stderr));
    let got = fake.join();

    let (h, r) = &got[0];
    assert!(h.features.contains(Features::TTY));
    assert_eq!(r.argv, ["prog", "a", "b c"]);
    assert!(!r.shell);
    assert_eq!(
        r.env,
        [("A".into(), "1".into()), ("B".into(), "x=y".into())]
    );
    assert_eq!(r.cwd.as_deref(), Some("/tmp"));
    assert_eq!(r.user.as_deref(), Some("1000:1000"));
    assert_eq!((r.timeout_ms, r.kill_grace_ms), (1500, Some(3000)));
    assert!(!r.stdin, "no -i: stdin is /dev/null");
    let tty = r.tty.as_ref().expect("-t asks for a terminal");
    // No local terminal in a test: the default size.
    assert_eq!((tty.rows, tty.cols), (24, 80));
    assert_eq!(tty.term.as_deref(), Some("xterm-test"));

    let (h, r) = &got[1];
    assert!(!h.features.contains(Features::TTY));
    assert_eq!(
        (r.argv.as_slice(), r.shell),
        (&["echo $HOME | wc".to_string()][..], true)
    );
    assert!(r.tty.is_none() && r.env.is_empty() && r.timeout_ms == 0);
}

#[test]
fn interactive_stdin_is_copied_then_closed() {
    let input: Vec<u8> = (0..300_000u32).map(|i| (i * 31 % 251) as u8).collect();
    let fake = Fake::start(1, |mut c| async move {
        let (_, r) = start(&mut c).await;
        assert!(r.stdin);
        // Echo stdin to stdout until EOF, as `cat` would.
        loop {
            match next(&mut c).await {
                Frame::Stdin(b) => send(&mut c, Frame::Stdout(b)).await,
                Frame::StdinEof => break,
                other => panic!("unexpected {other:?}"),
            }
        }
        send(&mut c, Frame::Exit(ExitStatus::exited(0))).await;
    });
    let mut child = tether()
        .args(["exec", "-i", &fake.uri(), "--", "cat"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut stdin = child.stdin.take().unwrap();
    let feed = input.clone();
    let writer = thread::spawn(move || stdin.write_all(&feed).unwrap());
    let out = child.wait_with_output().unwrap();
    writer.join().unwrap();
    fake.join();
    assert_eq!(out.status.code(), Some(0), "{}", text(&out.stderr));
    assert_eq!(out.stdout.len(), input.len());
    assert!(out.stdout == input, "stdout differs from stdin");
}

/// Starts `tether exec` against a fake that waits for a SIGNAL frame and exits as if
/// killed by it; sends `sig` to tether once the command runs; returns tether's status
/// and the signal the fake got.
fn forwarded(sig: nix::sys::signal::Signal) -> (Option<i32>, i32) {
    let fake = Fake::start(1, |mut c| async move {
        start(&mut c).await;
        send(&mut c, Frame::Stdout("ready\n".into())).await;
        let got = match next(&mut c).await {
            Frame::Signal(s) => s,
            other => panic!("expected SIGNAL, got {other:?}"),
        };
        send(&mut c, Frame::Exit(ExitStatus::signaled(got, false))).await;
        got
    });
    let mut child = tether()
        .args(["exec", &fake.uri(), "--", "sleep", "100"])
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut lines = BufReader::new(child.stdout.take().unwrap());
    let mut first = String::new();
    lines.read_line(&mut first).unwrap();
    assert_eq!(first, "ready\n");
    let pid = nix::unistd::Pid::from_raw(child.id() as i32);
    nix::sys::signal::kill(pid, sig).unwrap();
    let status = child.wait().unwrap();
    let mut err = String::new();
    child
        .stderr
        .take()
        .unwrap()
        .read_to_string(&mut err)
        .unwrap();
    assert!(err.is_empty(), "{err}");
    (status.code(), fake.join()[0])
}

#[test]
fn sigint_sigterm_and_sighup_are_forwarded_to_the_command() {
    use nix::sys::signal::Signal;
    assert_eq!(forwarded(Signal::SIGTERM), (Some(128 + 15), 15));
    assert_eq!(forwarded(Signal::SIGINT), (Some(128 + 2), 2));
    assert_eq!(forwarded(Signal::SIGHUP), (Some(128 + 1), 1));
}

#[test]
fn a_signal_while_connecting_gives_up_with_128_plus_n() {
    let dir = TmpDir::new("retry");
    let uri = format!("unix://{}", dir.0.join("later.sock").display());
    let mut child = tether()
        .args(["exec", "--retry", "60s", &uri, "--", "true"])
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    // The dial keeps retrying (nothing listens); give it time to install its handlers.
    thread::sleep(Duration::from_millis(500));
    assert!(child.try_wait().unwrap().is_none(), "still retrying");
    let pid = nix::unistd::Pid::from_raw(child.id() as i32);
    nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGINT).unwrap();
    let started = std::time::Instant::now();
    let out = child.wait_with_output().unwrap();
    assert_eq!(out.status.code(), Some(130));
    assert!(
        started.elapsed() < Duration::from_secs(10),
        "gave up at once"
    );
}

#[test]
fn the_token_file_is_proven_and_never_needed_on_the_command_line() {
    let fake = Fake::start(2, |mut c| async move {
        let (h, _) = start(&mut c).await;
        send(&mut c, Frame::Exit(ExitStatus::exited(0))).await;
        h
    });
    let dir = TmpDir::new("token");
    let file = dir.0.join("token");
    std::fs::write(&file, "correct horse\n").unwrap();
    let out =
        run(tether()
            .env("TETHER_TOKEN_FILE", &file)
            .args(["exec", &fake.uri(), "--", "true"]));
    assert_eq!(out.status.code(), Some(0), "{}", text(&out.stderr));
    let out = run(tether().args([
        "exec",
        "--token-file",
        file.to_str().unwrap(),
        &fake.uri(),
        "--",
        "true",
    ]));
    assert_eq!(out.status.code(), Some(0), "{}", text(&out.stderr));
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs();
    for h in fake.join() {
        assert!(
            h.proof.verify(b"correct horse", now),
            "trimmed token proven"
        );
        assert!(!h.proof.verify(b"correct horse\n", now));
    }

    std::fs::write(&file, "\n").unwrap();
    let out = run(tether().args([
        "exec",
        "--token-file",
        file.to_str().unwrap(),
        "unix:///nonexistent",
        "--",
        "true",
    ]));
    assert_eq!(out.status.code(), Some(255));
    assert!(
        text(&out.stderr).contains("is empty"),
        "{}",
        text(&out.stderr)
    );
}

#[test]
fn shell_runs_a_login_shell_on_a_terminal_with_stdin() {
    let fake = Fake::start(1, |mut c| async move {
        let (h, r) = start(&mut c).await;
        send(&mut c, Frame::Stdout("$ ".into())).await;
        // stdin is /dev/null here, so EOF comes at once.
        assert_eq!(next(&mut c).await, Frame::StdinEof);
        send(&mut c, Frame::Exit(ExitStatus::exited(3))).await;
        (h, r)
    });
    let out = run(tether()
        .env("TERM", "vt220")
        .args(["shell", "-u", "root", &fake.uri()]));
    let (h, r) = fake.join().pop().unwrap();
    assert_eq!(out.status.code(), Some(3), "{}", text(&out.stderr));
    assert_eq!(text(&out.stdout), "$ ");
    assert!(h.features.contains(Features::TTY));
    assert!(r.argv.is_empty() && r.shell && r.stdin);
    assert_eq!(r.user.as_deref(), Some("root"));
    assert_eq!(r.tty.unwrap().term.as_deref(), Some("vt220"));
}

#[test]
fn ping_reports_round_trips_as_text_and_json() {
    let fake = Fake::start(2, |mut c| async move {
        let Frame::Hello(_) = next(&mut c).await else {
            panic!("no hello")
        };
        send(
            &mut c,
            Frame::Welcome(Welcome {
                version: 1,
                features: Features::ALL,
            }),
        )
        .await;
        let mut sizes = Vec::new();
        while let Some(f) = c.next().await {
            match f.unwrap() {
                Frame::Ping(p) => {
                    sizes.push(p.len());
                    send(&mut c, Frame::Pong(p)).await;
                }
                other => panic!("unexpected {other:?}"),
            }
        }
        sizes
    });
    let out = run(tether().args(["ping", "-c", "5", "-s", "100", "--json", &fake.uri()]));
    assert_eq!(out.status.code(), Some(0), "{}", text(&out.stderr));
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).expect("one JSON object");
    assert_eq!(v["count"], 5);
    assert_eq!(v["payload_bytes"], 100);
    let f = |k: &str| v[k].as_f64().unwrap_or_else(|| panic!("{k} in {v}"));
    assert!(f("connect_us") > 0.0);
    assert!(f("min_us") <= f("p50_us") && f("p50_us") <= f("p99_us") && f("p99_us") <= f("max_us"));

    let out = run(tether().args(["ping", "-c", "3", &fake.uri()]));
    assert_eq!(out.status.code(), Some(0), "{}", text(&out.stderr));
    let t = text(&out.stdout);
    assert!(t.starts_with("connected to "), "{t}");
    assert!(
        t.contains("3 round trips of 64 bytes") && t.contains("p50") && t.contains("p99"),
        "{t}"
    );
    let sizes = fake.join();
    assert_eq!(sizes, [vec![100; 5], vec![64; 3]]);
}

#[test]
fn help_shows_examples_and_the_renamed_dial_timeout() {
    for cmd in ["exec", "shell", "ping"] {
        let out = run(tether().args([cmd, "--help"]));
        let t = text(&out.stdout);
        assert!(
            t.contains("Examples:") && t.contains(&format!("tether {cmd} ")),
            "{t}"
        );
        assert!(
            t.contains("--connect-timeout") && t.contains("--token-file"),
            "{t}"
        );
    }
    let t = text(&run(tether().args(["cat", "--help"])).stdout);
    assert!(
        t.contains("--connect-timeout") && !t.contains("--timeout"),
        "{t}"
    );
    let out = run(tether().args(["exec", "unix:///x", "ls"]));
    assert_eq!(out.status.code(), Some(2), "a command needs `--` before it");
}
