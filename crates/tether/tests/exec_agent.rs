//! `tether exec`, `shell` and `ping` against a real `tether agent`, with a real terminal
//! (tmux) for the TTY cases.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::sync::OnceLock;
use std::time::{Duration, Instant};

mod support;

struct Agent {
    socket: PathBuf,
    _child: Child,
}

fn agent() -> &'static Agent {
    static A: OnceLock<Agent> = OnceLock::new();
    A.get_or_init(|| {
        let dir = std::env::temp_dir().join(format!("tether-exec-agent-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        let socket = dir.join("a.sock");
        let child = support::spawn_agent(&socket, &[]);
        Agent {
            socket,
            _child: child,
        }
    })
}

fn uri() -> String {
    format!("unix://{}", agent().socket.display())
}

fn tether(args: &[&str]) -> Command {
    let mut c = support::tether();
    c.args(args);
    c
}

fn exec(args: &[&str], input: &[u8]) -> Output {
    support::run_with_input(&mut tether(args), input)
}

#[test]
fn exit_status_passes_through_like_ssh() {
    let u = uri();
    assert_eq!(
        exec(&["exec", &u, "--", "true"], b"").status.code(),
        Some(0)
    );
    assert_eq!(
        exec(&["exec", &u, "--", "sh", "-c", "exit 7"], b"")
            .status
            .code(),
        Some(7)
    );
    assert_eq!(
        exec(&["exec", &u, "--", "sh", "-c", "kill -TERM $$"], b"")
            .status
            .code(),
        Some(143)
    );
    let out = exec(
        &["exec", "--timeout", "300ms", &u, "--", "sleep", "100"],
        b"",
    );
    assert_eq!(out.status.code(), Some(143));
    let out = exec(&["exec", &u, "--", "no-such-cmd-here"], b"");
    assert_eq!(out.status.code(), Some(255));
    assert!(String::from_utf8_lossy(&out.stderr).contains("no-such-cmd-here: command not found"));
}

#[test]
fn streams_stay_separate_and_stdin_flows_with_i() {
    let u = uri();
    let out = exec(
        &["exec", &u, "--", "sh", "-c", "echo out; echo err >&2"],
        b"",
    );
    assert_eq!(out.stdout, b"out\n");
    assert_eq!(out.stderr, b"err\n");
    let data: Vec<u8> = (0..2_000_000u32).map(|i| (i * 7 % 251) as u8).collect();
    let out = exec(&["exec", "-i", &u, "--", "cat"], &data);
    assert!(out.status.success());
    assert!(
        out.stdout == data,
        "{} bytes back of {}",
        out.stdout.len(),
        data.len()
    );
    // Without -i the command reads /dev/null even when tether's stdin has data.
    let out = exec(&["exec", &u, "--", "wc", "-c"], b"ignored");
    assert_eq!(String::from_utf8_lossy(&out.stdout).trim(), "0");
    let out = exec(
        &[
            "exec",
            "-e",
            "A=1",
            "-w",
            "/tmp",
            &u,
            "--shell",
            "--",
            "echo $A; pwd",
        ],
        b"",
    );
    assert_eq!(String::from_utf8_lossy(&out.stdout), "1\n/tmp\n");
}

#[test]
fn ping_reports_round_trips() {
    let out = exec(&["ping", "-c", "50", "--json", &uri()], b"");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let text = v.to_string();
    assert!(text.contains("p50") && text.contains("p99"), "{text}");
}

/// A tmux session running one command, driven like a user at a terminal.
struct Tmux {
    name: String,
}

impl Tmux {
    fn start(name: &str, cols: u16, rows: u16, command: &str) -> Tmux {
        let name = format!("{name}-{}", std::process::id());
        let ok = Command::new("tmux")
            .args([
                "new-session",
                "-d",
                "-s",
                &name,
                "-x",
                &cols.to_string(),
                "-y",
                &rows.to_string(),
                command,
            ])
            .status()
            .expect("tmux is installed by scripts/test");
        assert!(ok.success());
        Tmux { name }
    }

    fn keys(&self, keys: &[&str]) {
        let mut c = Command::new("tmux");
        c.args(["send-keys", "-t", &self.name]).args(keys);
        assert!(c.status().unwrap().success());
    }

    fn screen(&self) -> String {
        let out = Command::new("tmux")
            .args(["capture-pane", "-p", "-t", &self.name])
            .output()
            .unwrap();
        String::from_utf8_lossy(&out.stdout).into_owned()
    }

    fn wait_for(&self, what: &str) -> String {
        let t = Instant::now();
        loop {
            let s = self.screen();
            if s.contains(what) {
                return s;
            }
            assert!(
                t.elapsed() < Duration::from_secs(15),
                "never saw {what:?}; screen:\n{s}"
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    fn resize(&self, cols: u16, rows: u16) {
        let ok = Command::new("tmux")
            .args([
                "resize-window",
                "-t",
                &self.name,
                "-x",
                &cols.to_string(),
                "-y",
                &rows.to_string(),
            ])
            .status()
            .unwrap();
        assert!(ok.success());
    }
}

impl Drop for Tmux {
    fn drop(&mut self) {
        let _ = Command::new("tmux")
            .args(["kill-session", "-t", &self.name])
            .stderr(Stdio::null())
            .status();
    }
}

fn wait_file(p: &Path) -> String {
    let t = Instant::now();
    loop {
        if let Ok(s) = std::fs::read_to_string(p) {
            if s.ends_with('\n') {
                return s;
            }
        }
        assert!(
            t.elapsed() < Duration::from_secs(15),
            "{} never written",
            p.display()
        );
        std::thread::sleep(Duration::from_millis(50));
    }
}

#[test]
fn a_tty_session_in_a_real_terminal_resizes_interrupts_and_does_job_control() {
    let rc = std::env::temp_dir().join(format!("tether-tty-rc-{}", std::process::id()));
    let _ = std::fs::remove_file(&rc);
    let cmd = format!(
        "{} exec -i -t -e 'PS1=tt> ' {} -- sh -i; echo rc=$? > {}",
        env!("CARGO_BIN_EXE_tether"),
        uri(),
        rc.display()
    );
    let t = Tmux::start("tether-tty", 80, 24, &cmd);
    t.wait_for("tt>");
    t.keys(&["stty size", "Enter"]);
    t.wait_for("24 80");
    t.resize(100, 40);
    std::thread::sleep(Duration::from_millis(300));
    t.keys(&["stty size", "Enter"]);
    t.wait_for("40 100");
    // ^C reaches the foreground job through the remote terminal, not tether.
    t.keys(&["sleep 100; echo slept", "Enter"]);
    std::thread::sleep(Duration::from_millis(500));
    t.keys(&["C-c"]);
    t.keys(&["echo after-int", "Enter"]);
    let s = t.wait_for("after-int\n");
    assert!(!s.lines().any(|l| l.trim() == "slept"), "{s}");
    // Job control: ^Z stops the foreground job, the shell lists it, kill ends it.
    t.keys(&["sleep 200", "Enter"]);
    std::thread::sleep(Duration::from_millis(500));
    t.keys(&["C-z"]);
    t.keys(&["jobs", "Enter"]);
    t.wait_for("Stopped");
    t.keys(&["kill -9 %1; sleep 0.2; jobs; echo killed", "Enter"]);
    t.wait_for("killed\n");
    t.keys(&["exit 5", "Enter"]);
    assert_eq!(wait_file(&rc), "rc=5\n");
}

#[test]
fn tether_shell_is_an_interactive_login_shell() {
    let rc = std::env::temp_dir().join(format!("tether-shell-rc-{}", std::process::id()));
    let _ = std::fs::remove_file(&rc);
    let cmd = format!(
        "TERM=xterm-256color {} shell {}; echo rc=$? > {}",
        env!("CARGO_BIN_EXE_tether"),
        uri(),
        rc.display()
    );
    let t = Tmux::start("tether-shell", 90, 30, &cmd);
    t.keys(&["echo \"$TERM $0\"; tty", "Enter"]);
    let s = t.wait_for("/dev/pts/");
    assert!(
        s.contains("xterm-256color -"),
        "a login shell's $0 starts with '-': {s}"
    );
    t.keys(&["exit 0", "Enter"]);
    assert_eq!(wait_file(&rc), "rc=0\n");
}
