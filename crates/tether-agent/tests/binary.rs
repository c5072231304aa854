//! The standalone `tether-agent` binary: it serves the same protocol as `tether agent`,
//! and refuses bad setups with a message that names what is wrong.
//!
//! scripts/test points `TETHER_AGENT_BIN` at the static build of scripts/build-agent (musl),
//! so these run against the binary a guest gets; without it, against cargo's own build.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};
use tether_client::{Client, Peer};

/// The agent binary under test.
fn agent() -> PathBuf {
    std::env::var_os("TETHER_AGENT_BIN")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(env!("CARGO_BIN_EXE_tether-agent")))
}

/// A directory of its own for each test, removed afterwards.
struct Dir(PathBuf);

impl Dir {
    fn new(name: &str) -> Dir {
        let p =
            std::env::temp_dir().join(format!("tether-agent-bin-{name}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&p);
        std::fs::create_dir_all(&p).unwrap();
        Dir(p)
    }
}

impl Drop for Dir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

struct Agent(Child);

impl Drop for Agent {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn start(sock: &Path) -> Agent {
    let child = Command::new(agent())
        .args(["--listen", &format!("unix://{}", sock.display())])
        .stdin(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("starting tether-agent");
    let mut agent = Agent(child);
    let deadline = Instant::now() + Duration::from_secs(10);
    while std::os::unix::net::UnixStream::connect(sock).is_err() {
        assert!(agent.0.try_wait().unwrap().is_none(), "tether-agent exited");
        assert!(Instant::now() < deadline, "tether-agent never listened");
        std::thread::sleep(Duration::from_millis(10));
    }
    agent
}

fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap()
}

fn client(sock: &Path) -> Client {
    Client::new(Peer::new([format!("unix://{}", sock.display())
        .parse()
        .unwrap()]))
}

#[test]
fn runs_a_command_with_its_output_apart_and_its_exit_code() {
    let dir = Dir::new("exec");
    let sock = dir.0.join("agent.sock");
    let _agent = start(&sock);
    let rt = runtime();
    let out = rt.block_on(async {
        let cmd = tether_client::Command::shell("echo out; echo err >&2; exit 3");
        client(&sock)
            .exec(&cmd)
            .await
            .unwrap()
            .output()
            .await
            .unwrap()
    });
    assert_eq!(out.stdout, b"out\n");
    assert_eq!(out.stderr, b"err\n");
    assert_eq!(out.status.code, Some(3));
}

#[test]
fn switches_to_a_user_by_name_and_opens_a_tty() {
    let dir = Dir::new("user-tty");
    let sock = dir.0.join("agent.sock");
    let _agent = start(&sock);
    let nobody = nix::unistd::User::from_name("nobody").unwrap().unwrap();
    let rt = runtime();
    let (user, tty) = rt.block_on(async {
        let c = client(&sock);
        let cmd = tether_client::Command::shell("id -u; id -g; echo $HOME").user("nobody");
        let user = c.exec(&cmd).await.unwrap().output().await.unwrap();
        let cmd = tether_client::Command::shell("stty size; test -t 0 && test -t 1 && echo tty")
            .tty(30, 100, None);
        let tty = c.exec(&cmd).await.unwrap().output().await.unwrap();
        (user, tty)
    });
    let expected = format!("{}\n{}\n{}\n", nobody.uid, nobody.gid, nobody.dir.display());
    assert_eq!(String::from_utf8_lossy(&user.stdout), expected);
    assert_eq!(user.status.code, Some(0));
    // A terminal turns each \n into \r\n.
    assert_eq!(String::from_utf8_lossy(&tty.stdout), "30 100\r\ntty\r\n");
    assert_eq!(tty.status.code, Some(0));
}

fn refusal(args: &[&str]) -> String {
    let out = Command::new(agent())
        .args(args)
        .stdin(Stdio::null())
        .output()
        .expect("running tether-agent");
    assert!(!out.status.success(), "tether-agent {args:?} should refuse");
    String::from_utf8_lossy(&out.stderr).into_owned()
}

#[test]
fn an_empty_token_file_is_refused_by_name() {
    let dir = Dir::new("token");
    let token = dir.0.join("token");
    std::fs::write(&token, "  \n").unwrap();
    let sock = format!("unix://{}", dir.0.join("a.sock").display());
    let err = refusal(&["--listen", &sock, "--token-file", token.to_str().unwrap()]);
    assert!(
        err.contains(&format!("token file {} is empty", token.display())),
        "{err}"
    );
}

#[test]
fn a_tcp_listener_without_a_token_is_refused() {
    // Even beside a good listener, and before either is bound.
    let dir = Dir::new("tcp-token");
    let unix = format!("unix://{}", dir.0.join("agent.sock").display());
    let err = refusal(&["--listen", &unix, "--listen", "tcp://127.0.0.1:0"]);
    assert!(
        err.contains("without a token") && err.contains("--token-file"),
        "{err}"
    );
    assert!(!err.contains("listening"), "{err}");
    assert!(!dir.0.join("agent.sock").exists());
}

#[test]
fn a_malformed_listen_uri_names_the_flag() {
    let err = refusal(&["--listen", "carrier-pigeon://x"]);
    assert!(err.contains("--listen"), "{err}");
}
