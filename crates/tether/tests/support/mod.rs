//! What the CLI test files share: the tether command, a one-shot run with input, an
//! agent process that dies with the test binary, test data and checksummed echoes.

// Each test file compiles its own copy and uses a part of it.
#![allow(dead_code)]

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{Shutdown, TcpStream};
use std::path::Path;
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

/// `tether`, with no config file or home directory of the machine's leaking in.
pub fn tether() -> Command {
    let mut c = Command::new(env!("CARGO_BIN_EXE_tether"));
    c.env_remove("TETHER_CONFIG").env("HOME", "/nonexistent");
    c
}

/// Starts `cmd` with its stdio piped and `input` fed to its stdin from a thread (so a
/// command that writes before it reads cannot deadlock against us).
fn spawn_fed(cmd: &mut Command, input: &[u8]) -> (Child, std::thread::JoinHandle<()>) {
    let mut child = cmd
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut stdin = child.stdin.take().unwrap();
    let input = input.to_vec();
    let feeder = std::thread::spawn(move || {
        let _ = stdin.write_all(&input);
    });
    (child, feeder)
}

/// Runs a one-shot command with `input` on stdin; collects its output.
pub fn run_with_input(cmd: &mut Command, input: &[u8]) -> Output {
    let (child, feeder) = spawn_fed(cmd, input);
    let out = child.wait_with_output().unwrap();
    feeder.join().unwrap();
    out
}

/// [`run_with_input`] within `limit`: past it the command is killed and the test fails.
pub fn run_within(cmd: &mut Command, input: &[u8], limit: Duration) -> Output {
    let (mut child, feeder) = spawn_fed(cmd, input);
    let drain = |mut pipe: Box<dyn Read + Send>| {
        std::thread::spawn(move || {
            let mut v = Vec::new();
            let _ = pipe.read_to_end(&mut v);
            v
        })
    };
    let stdout = drain(Box::new(child.stdout.take().unwrap()));
    let stderr = drain(Box::new(child.stderr.take().unwrap()));
    let deadline = Instant::now() + limit;
    let status = loop {
        if let Some(s) = child.try_wait().unwrap() {
            break s;
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            panic!("{cmd:?} did not finish within {limit:?}");
        }
        std::thread::sleep(Duration::from_millis(10));
    };
    feeder.join().unwrap();
    Output {
        status,
        stdout: stdout.join().unwrap(),
        stderr: stderr.join().unwrap(),
    }
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

/// Deterministic test data, distinct per `seed`.
pub fn data(len: usize, seed: u64) -> Vec<u8> {
    tether_testkit::pattern(seed, len)
}

/// SHA-256 of `b`.
pub fn sha(b: &[u8]) -> Vec<u8> {
    tether_testkit::sha256(b)
}

/// `n` connections to 127.0.0.1:`port` at once, each sending its own data (`base_len`
/// bytes and a little more per connection), half-closing, and checking the echo's SHA-256.
/// Every read and write gives up after a minute, so a lost byte fails instead of hanging.
pub fn checksummed_echoes(port: u16, n: u64, base_len: usize) {
    let clients: Vec<_> = (0..n)
        .map(|i| {
            std::thread::spawn(move || {
                let input = data(base_len + i as usize * 97, i + 10);
                let mut c = TcpStream::connect(("127.0.0.1", port)).unwrap();
                c.set_read_timeout(Some(Duration::from_secs(60))).unwrap();
                c.set_write_timeout(Some(Duration::from_secs(60))).unwrap();
                let mut r = c.try_clone().unwrap();
                let reader = std::thread::spawn(move || {
                    let mut got = Vec::new();
                    r.read_to_end(&mut got).unwrap();
                    got
                });
                c.write_all(&input).unwrap();
                c.shutdown(Shutdown::Write).unwrap();
                let got = reader.join().unwrap();
                assert_eq!(got.len(), input.len(), "connection {i}");
                assert_eq!(sha(&got), sha(&input), "connection {i}");
            })
        })
        .collect();
    for c in clients {
        c.join().unwrap();
    }
}
