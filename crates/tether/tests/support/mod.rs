//! What the CLI test files share: the tether command, a one-shot run with input, and an
//! agent process that dies with the test binary.

// Each test file compiles its own copy and uses a part of it.
#![allow(dead_code)]

use std::io::{BufRead, BufReader, Write};
use std::path::Path;
use std::process::{Child, Command, Output, Stdio};

/// `tether`, with no config file or home directory of the machine's leaking in.
pub fn tether() -> Command {
    let mut c = Command::new(env!("CARGO_BIN_EXE_tether"));
    c.env_remove("TETHER_CONFIG").env("HOME", "/nonexistent");
    c
}

/// Runs a one-shot command with `input` on stdin; collects its output.
pub fn run_with_input(cmd: &mut Command, input: &[u8]) -> Output {
    let mut child = cmd
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut stdin = child.stdin.take().unwrap();
    let input = input.to_vec();
    let writer = std::thread::spawn(move || {
        let _ = stdin.write_all(&input);
    });
    let out = child.wait_with_output().unwrap();
    writer.join().unwrap();
    out
}

/// Starts `tether agent --listen unix://SOCKET EXTRA...` and waits until it listens. It is
/// killed with the test binary (PR_SET_PDEATHSIG), however that ends.
pub fn spawn_agent(socket: &Path, extra: &[&str]) -> Child {
    let args: Vec<String> = ["agent", "--listen", &format!("unix://{}", socket.display())]
        .iter()
        .map(|s| s.to_string())
        .chain(extra.iter().map(|s| s.to_string()))
        .collect();
    // PR_SET_PDEATHSIG fires when the spawning *thread* ends, so spawn from a thread that
    // lives as long as the test binary.
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        let mut cmd = tether();
        // SAFETY: prctl only, between fork and exec.
        unsafe {
            std::os::unix::process::CommandExt::pre_exec(&mut cmd, || {
                nix::sys::prctl::set_pdeathsig(nix::sys::signal::Signal::SIGKILL)?;
                Ok(())
            });
        }
        let child = cmd
            .args(&args)
            .stdin(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        tx.send(child).unwrap();
        loop {
            std::thread::park();
        }
    });
    let mut child: Child = rx.recv().unwrap();
    let mut lines = BufReader::new(child.stderr.take().unwrap()).lines();
    let first = lines.next().unwrap().unwrap();
    assert!(first.contains("agent listening on"), "{first}");
    std::thread::spawn(move || for _ in lines {});
    child
}
