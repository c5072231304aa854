//! `tether exec` beside `ssh localhost` and qemu-guest-agent on the same machine in the
//! same run: the round trip of running `true` (a fresh connection every time), stdout
//! throughput, and the agent's idle memory and start-up time, against the goals of
//! DESIGN.md.
//!
//! `cargo bench -p tether --bench exec`; `TETHER_BENCH_QUICK=1` for a short run. The agent
//! measured is the standalone static `tether-agent` a guest would run (`TETHER_AGENT_BIN`,
//! else built by scripts/build-agent); `tether agent`'s memory is printed beside it.
//! Needs openssh-server and qemu-guest-agent; run as root, the bench installs them with
//! apt-get when they are missing (otherwise it stops and names the command to run).
//! Everything talks over Unix sockets and loopback TCP; nothing here opens AF_VSOCK.

use std::io::{BufRead, BufReader, Read, Write};
use std::os::fd::OwnedFd;
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::thread;
use std::time::{Duration, Instant};
use tether_client::{Client, Endpoint, Peer};

mod support;
use support::{ensure_installed, start_sshd, wait_until, Proc, Scratch, Sshd, STEP};

const TETHER: &str = env!("CARGO_BIN_EXE_tether");
const QEMU_GA: &str = "/usr/sbin/qemu-ga";
const MIB: f64 = 1024.0 * 1024.0;
/// The most qemu-ga keeps of a command's output (GUEST_EXEC_MAX_OUTPUT in qga/commands.c).
const QGA_OUTPUT: u64 = 16 << 20;

// ---------------------------------------------------------------------------------------
// The tether agent

/// The PATH the agent gives itself as a guest's PID 1 (tether-agent's `Agent::new`): the
/// agent and the baselines look `true` up there, not in this machine's longer PATH.
const GUEST_PATH: &str = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin";

/// The agent measured: the standalone static `tether-agent` a guest would run, from
/// `TETHER_AGENT_BIN`, else built here by scripts/build-agent.
fn agent_binary() -> PathBuf {
    if let Some(p) = std::env::var_os("TETHER_AGENT_BIN") {
        return PathBuf::from(p);
    }
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../scripts/build-agent");
    let out = Command::new("bash")
        .arg(&script)
        .stderr(Stdio::inherit())
        .output()
        .expect("running scripts/build-agent");
    assert!(out.status.success(), "scripts/build-agent failed");
    PathBuf::from(String::from_utf8(out.stdout).unwrap().trim())
}

/// `AGENT --listen unix://SOCK` (the standalone agent, or `tether agent` when `agent`
/// is [`TETHER`]), in the environment the tests give it and a guest's PATH.
fn agent_command(agent: &Path, sock: &Path) -> Command {
    let mut cmd = Command::new(agent);
    if agent == Path::new(TETHER) {
        cmd.arg("agent");
    }
    cmd.env("HOME", "/nonexistent")
        .env("PATH", GUEST_PATH)
        .env_remove("TETHER_CONFIG")
        .args(["--listen", &format!("unix://{}", sock.display())])
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null());
    cmd
}

/// Starts an agent and waits until its socket accepts a connection.
fn start_agent(bin: &Path, sock: &Path) -> Proc {
    let _ = std::fs::remove_file(sock);
    let mut agent = Proc::spawn(&mut agent_command(bin, sock));
    wait_until("tether agent", STEP, || {
        agent.check_alive("tether agent", None);
        UnixStream::connect(sock).is_ok()
    });
    agent
}

/// Spawn to the first accepted connection, in ms: the agent is spawned, and its socket
/// is tried every 50 µs until a connect succeeds.
fn agent_start_time(bin: &Path, sock: &Path) -> f64 {
    let _ = std::fs::remove_file(sock);
    let mut cmd = agent_command(bin, sock);
    let t = Instant::now();
    let mut agent = Proc::spawn_fast(&mut cmd);
    loop {
        if UnixStream::connect(sock).is_ok() {
            break;
        }
        assert!(t.elapsed() < STEP, "tether agent did not start listening");
        agent.check_alive("tether agent", None);
        thread::sleep(Duration::from_micros(50));
    }
    t.elapsed().as_secs_f64() * 1e3
}

/// Memory of a process, in MiB.
struct Mem {
    rss: f64,
    anon: f64,
    file: f64,
    peak: f64,
}

fn rss(pid: u32) -> Mem {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    let field = |name: &str| {
        status
            .lines()
            .find_map(|l| l.strip_prefix(name))
            .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<f64>().ok())
            .unwrap_or_else(|| panic!("no {name} in /proc/{pid}/status"))
            / 1024.0
    };
    Mem {
        rss: field("VmRSS:"),
        anon: field("RssAnon:"),
        file: field("RssFile:"),
        peak: field("VmHWM:"),
    }
}

/// `true` through tether-client: dial, hello + EXEC in one write, WELCOME, STARTED,
/// EXIT. In ms.
async fn tether_lib_true(client: &Client) -> f64 {
    let t = Instant::now();
    let mut session = client
        .exec(&tether_client::Command::new("true"))
        .await
        .expect("tether exec true");
    let status = session.wait().await.expect("exit status of true");
    let ms = t.elapsed().as_secs_f64() * 1e3;
    assert!(status.success(), "true ended with {status}");
    ms
}

/// `tether exec unix://SOCK -- true` as a process, in ms.
fn tether_cli_true(sock: &Path) -> f64 {
    let mut cmd = Command::new(TETHER);
    cmd.env("HOME", "/nonexistent")
        .env_remove("TETHER_CONFIG")
        .args(["exec", &format!("unix://{}", sock.display()), "--", "true"])
        .stdin(Stdio::null())
        .stdout(Stdio::null());
    let t = Instant::now();
    let out = cmd.output().expect("running tether exec");
    let ms = t.elapsed().as_secs_f64() * 1e3;
    assert!(
        out.status.success(),
        "tether exec true: {}: {}",
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
    ms
}

/// Dial, HELLO, WELCOME through tether-client (`Client::pinger`): the part of an exec
/// that is not the command. In ms.
async fn tether_handshake(client: &Client) -> f64 {
    let pinger = client.pinger().await.expect("tether handshake");
    pinger.connect_time().as_secs_f64() * 1e3
}

/// Dial, HELLO + EXEC, WELCOME, STARTED through tether-client: everything up to the
/// command running (the agent answers STARTED once the command has been exec'd). The
/// rest of the session is waited for untimed. In ms.
async fn tether_to_started(client: &Client) -> f64 {
    let t = Instant::now();
    let mut session = client
        .exec(&tether_client::Command::new("true"))
        .await
        .expect("tether exec true");
    let ms = t.elapsed().as_secs_f64() * 1e3;
    assert!(session.wait().await.expect("exit status").success());
    ms
}

/// Spawn and wait of /usr/bin/true from the bench with std's posix_spawn (vfork-like)
/// path: what creating a process costs on this machine at the least. In ms.
fn spawn_true() -> f64 {
    let t = Instant::now();
    let status = Command::new("/usr/bin/true")
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .expect("spawning true");
    let ms = t.elapsed().as_secs_f64() * 1e3;
    assert!(status.success());
    ms
}

/// `tether --version` as a process: what the CLI costs before it does anything. In ms.
fn tether_version() -> f64 {
    let t = Instant::now();
    let status = Command::new(TETHER)
        .env("HOME", "/nonexistent")
        .env_remove("TETHER_CONFIG")
        .arg("--version")
        .stdout(Stdio::null())
        .status()
        .expect("running tether --version");
    let ms = t.elapsed().as_secs_f64() * 1e3;
    assert!(status.success());
    ms
}

/// A command writing N zero bytes to its stdout.
#[derive(Clone, Copy)]
enum Producer {
    /// `head -c N /dev/zero`: GNU head writes 4 KiB per call to a pipe or socket.
    Head,
    /// `dd if=/dev/zero bs=1M count=N/1M`: 1 MiB per write.
    Dd,
}

impl Producer {
    fn argv(self, n: u64) -> Vec<String> {
        match self {
            Producer::Head => vec![
                "head".into(),
                "-c".into(),
                n.to_string(),
                "/dev/zero".into(),
            ],
            Producer::Dd => vec![
                "dd".into(),
                "if=/dev/zero".into(),
                "bs=1M".into(),
                format!("count={}", n >> 20),
                "status=none".into(),
            ],
        }
    }

    fn name(self) -> &'static str {
        match self {
            Producer::Head => "head -c",
            Producer::Dd => "dd bs=1M",
        }
    }
}

/// `producer` through tether-client, stdout read and counted. In MiB/s.
async fn tether_stdout(client: &Client, producer: Producer, n: u64) -> f64 {
    let t = Instant::now();
    let cmd = tether_client::Command::from(tether_proto::ExecRequest {
        argv: producer.argv(n),
        ..Default::default()
    });
    let mut session = client
        .exec(&cmd)
        .await
        .expect("tether exec of the producer");
    drop(session.stderr.take());
    let mut stdout = session.stdout.take().unwrap();
    let mut got = 0u64;
    while let Some(chunk) = stdout.chunk().await.expect("reading stdout") {
        got += chunk.len() as u64;
    }
    let status = session.wait().await.expect("exit status of the producer");
    let secs = t.elapsed().as_secs_f64();
    assert!(status.success(), "{} ended with {status}", producer.name());
    assert_eq!(got, n, "every byte of stdout arrived");
    n as f64 / MIB / secs
}

// ---------------------------------------------------------------------------------------
// The raw socket

/// `producer` writing straight into one end of a Unix socketpair, the bench reading the
/// other. In MiB/s.
fn raw_producer_socket(producer: Producer, n: u64) -> f64 {
    let (mut mine, theirs) = UnixStream::pair().unwrap();
    let t = Instant::now();
    let argv = producer.argv(n);
    let mut head = Proc::spawn_fast(
        Command::new(&argv[0])
            .args(&argv[1..])
            .stdin(Stdio::null())
            .stdout(Stdio::from(OwnedFd::from(theirs))),
    );
    let mut buf = vec![0u8; 256 * 1024];
    let mut got = 0u64;
    loop {
        match mine.read(&mut buf).unwrap() {
            0 => break,
            k => got += k as u64,
        }
    }
    let status = head.child.wait().unwrap();
    let secs = t.elapsed().as_secs_f64();
    assert!(status.success());
    assert_eq!(got, n);
    n as f64 / MIB / secs
}

/// N bytes through a Unix socketpair, 64 KiB writes in one thread and 256 KiB reads in
/// another: the ceiling of the link itself. In MiB/s.
fn raw_socketpair(n: u64) -> f64 {
    let (mut rd, mut wr) = UnixStream::pair().unwrap();
    let t = Instant::now();
    let writer = thread::spawn(move || {
        let buf = vec![0u8; 64 * 1024];
        let mut sent = 0u64;
        while sent < n {
            let k = (n - sent).min(buf.len() as u64) as usize;
            wr.write_all(&buf[..k]).unwrap();
            sent += k as u64;
        }
    });
    let mut buf = vec![0u8; 256 * 1024];
    let mut got = 0u64;
    loop {
        match rd.read(&mut buf).unwrap() {
            0 => break,
            k => got += k as u64,
        }
    }
    writer.join().unwrap();
    let secs = t.elapsed().as_secs_f64();
    assert_eq!(got, n);
    n as f64 / MIB / secs
}

// ---------------------------------------------------------------------------------------
// ssh

/// `ssh ... 127.0.0.1 true`: a full connection, key exchange and authentication every
/// time (no ControlMaster). In ms.
fn ssh_true(sshd: &mut Sshd) -> f64 {
    let mut cmd = sshd.ssh();
    cmd.arg("true").stdin(Stdio::null()).stdout(Stdio::null());
    let t = Instant::now();
    let out = cmd.output().expect("running ssh");
    let ms = t.elapsed().as_secs_f64() * 1e3;
    if !out.status.success() {
        sshd.proc.check_alive("sshd", Some(&sshd.log));
        panic!(
            "ssh 127.0.0.1 true: {}: {}\nsshd log:\n{}",
            out.status,
            String::from_utf8_lossy(&out.stderr),
            std::fs::read_to_string(&sshd.log).unwrap_or_default()
        );
    }
    ms
}

// ---------------------------------------------------------------------------------------
// qemu-guest-agent

struct QemuGa {
    sock: PathBuf,
    log: PathBuf,
    proc: Proc,
}

fn start_qemu_ga(dir: &Scratch) -> QemuGa {
    ensure_installed(QEMU_GA, "qemu-guest-agent");
    let sock = dir.path("qga.sock");
    let state = dir.path("qga-state");
    std::fs::create_dir_all(&state).unwrap();
    let log = dir.path("qga.log");
    // Stays in the foreground (no -d); -t and -f keep its state and pid file out of /run.
    let mut proc = Proc::spawn(
        Command::new(QEMU_GA)
            .args(["-m", "unix-listen", "-p"])
            .arg(&sock)
            .arg("-t")
            .arg(&state)
            .arg("-f")
            .arg(dir.path("qga.pid"))
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(&log).unwrap()),
    );
    wait_until("qemu-ga", STEP, || {
        proc.check_alive("qemu-ga", Some(&log));
        sock.exists()
    });
    let mut ga = QemuGa { sock, log, proc };
    // One real command proves it answers.
    let v = ga.connect().call(r#"{"execute":"guest-info"}"#);
    assert!(v["version"].is_string(), "guest-info: {v}");
    ga
}

/// One connection to qemu-ga: line-delimited JSON, one command and one reply at a time.
struct QgaConn {
    rd: BufReader<UnixStream>,
    wr: UnixStream,
    line: Vec<u8>,
}

impl QemuGa {
    /// A fresh connection (qemu-ga serves one client at a time on unix-listen and starts
    /// afresh with the next, so no guest-sync is needed to skip stale replies).
    fn connect(&mut self) -> QgaConn {
        let deadline = Instant::now() + STEP;
        let s = loop {
            match UnixStream::connect(&self.sock) {
                Ok(s) => break s,
                Err(e) => {
                    self.proc.check_alive("qemu-ga", Some(&self.log));
                    assert!(Instant::now() < deadline, "connecting to qemu-ga: {e}");
                    thread::sleep(Duration::from_millis(1));
                }
            }
        };
        s.set_read_timeout(Some(STEP)).unwrap();
        s.set_write_timeout(Some(STEP)).unwrap();
        QgaConn {
            rd: BufReader::with_capacity(256 * 1024, s.try_clone().unwrap()),
            wr: s,
            line: Vec::new(),
        }
    }
}

impl QgaConn {
    /// Sends one command; returns its "return" value (panics on an "error" reply).
    fn call(&mut self, req: &str) -> serde_json::Value {
        self.wr.write_all(req.as_bytes()).unwrap();
        self.wr.write_all(b"\n").unwrap();
        self.line.clear();
        let n = self
            .rd
            .read_until(b'\n', &mut self.line)
            .unwrap_or_else(|e| panic!("qemu-ga reply to {req}: {e}"));
        assert!(n > 0, "qemu-ga closed the connection after {req}");
        let mut v: serde_json::Value = serde_json::from_slice(&self.line)
            .unwrap_or_else(|e| panic!("qemu-ga reply to {req} is not JSON: {e}"));
        if let Some(err) = v.get("error") {
            panic!("qemu-ga answered {req} with an error: {err}");
        }
        v["return"].take()
    }
}

/// What a guest-exec ended with.
struct QgaExit {
    polls: u32,
    exitcode: i64,
    out_data: Option<String>,
    truncated: bool,
}

/// guest-exec of `path args` with capture-output, then guest-exec-status right away and
/// every 1 ms after until `exited` (bounded by STEP), on one fresh connection.
fn qga_exec(ga: &mut QemuGa, path: &str, args: &[&str]) -> QgaExit {
    let mut c = ga.connect();
    let req = serde_json::json!({
        "execute": "guest-exec",
        "arguments": {"path": path, "arg": args, "capture-output": true},
    })
    .to_string();
    let pid = c.call(&req)["pid"]
        .as_i64()
        .unwrap_or_else(|| panic!("guest-exec gave no pid"));
    let status = format!(r#"{{"execute":"guest-exec-status","arguments":{{"pid":{pid}}}}}"#);
    let deadline = Instant::now() + STEP;
    let mut polls = 0;
    loop {
        let mut r = c.call(&status);
        polls += 1;
        if r["exited"].as_bool() == Some(true) {
            return QgaExit {
                polls,
                exitcode: r["exitcode"].as_i64().unwrap_or(-1),
                out_data: r
                    .get_mut("out-data")
                    .and_then(|d| d.take().as_str().map(String::from)),
                truncated: r["out-truncated"].as_bool() == Some(true),
            };
        }
        assert!(
            Instant::now() < deadline,
            "{path} did not exit under qemu-ga"
        );
        thread::sleep(Duration::from_millis(1));
    }
}

/// `/bin/true` through qemu-ga. In ms, and the number of status polls.
fn qga_true(ga: &mut QemuGa) -> (f64, u32) {
    let t = Instant::now();
    let r = qga_exec(ga, "/bin/true", &[]);
    let ms = t.elapsed().as_secs_f64() * 1e3;
    assert_eq!(r.exitcode, 0);
    (ms, r.polls)
}

/// `head -c N /dev/zero` through qemu-ga, its base64 output decoded and counted. In
/// MiB/s, with the bytes received and whether qemu-ga said it truncated them.
fn qga_stdout(ga: &mut QemuGa, n: u64) -> (f64, u64, bool) {
    let t = Instant::now();
    let r = qga_exec(ga, "/usr/bin/head", &["-c", &n.to_string(), "/dev/zero"]);
    let data = base64_decode(r.out_data.as_deref().unwrap_or("").as_bytes());
    let secs = t.elapsed().as_secs_f64();
    assert_eq!(r.exitcode, 0);
    assert!(data.iter().all(|&b| b == 0));
    let got = data.len() as u64;
    (got as f64 / MIB / secs, got, r.truncated)
}

/// Standard base64 with padding (what qemu-ga's out-data is).
fn base64_decode(s: &[u8]) -> Vec<u8> {
    fn val(c: u8) -> u32 {
        (match c {
            b'A'..=b'Z' => c - b'A',
            b'a'..=b'z' => c - b'a' + 26,
            b'0'..=b'9' => c - b'0' + 52,
            b'+' => 62,
            b'/' => 63,
            _ => panic!("not base64: {c:#x}"),
        }) as u32
    }
    let s = s.strip_suffix(b"==").or(s.strip_suffix(b"=")).unwrap_or(s);
    let mut out = Vec::with_capacity(s.len() / 4 * 3 + 3);
    for quad in s.chunks(4) {
        let mut acc = 0u32;
        for (i, &c) in quad.iter().enumerate() {
            acc |= val(c) << (18 - 6 * i);
        }
        out.extend_from_slice(&acc.to_be_bytes()[1..quad.len()]);
    }
    out
}

// ---------------------------------------------------------------------------------------
// Figures

/// p50 and p99.
fn percentiles(mut samples: Vec<f64>) -> (f64, f64) {
    samples.sort_by(f64::total_cmp);
    (
        samples[samples.len() / 2],
        samples[(samples.len() * 99 / 100).min(samples.len() - 1)],
    )
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(f64::total_cmp);
    v[v.len() / 2]
}

fn verdict(met: bool) -> &'static str {
    if met {
        "met"
    } else {
        "MISSED"
    }
}

struct Sizes {
    lib: usize,
    cli: usize,
    ssh: usize,
    qga: usize,
    stdout: u64,
    rounds: usize,
    starts: usize,
}

/// One way of doing something, timed `n` times in ms.
struct Sampler<'a> {
    name: &'static str,
    n: usize,
    samples: Vec<f64>,
    run: Box<dyn FnMut() -> f64 + 'a>,
}

impl<'a> Sampler<'a> {
    fn new(name: &'static str, n: usize, run: impl FnMut() -> f64 + 'a) -> Sampler<'a> {
        Sampler {
            name,
            n,
            samples: Vec::with_capacity(n),
            run: Box::new(run),
        }
    }
}

/// A tenth of each sampler's runs in turn, ten times, so drift in the machine's load hits
/// all alike; a tenth of each first, unrecorded, as warm-up.
fn interleave(samplers: &mut [Sampler]) {
    for s in samplers.iter_mut() {
        for _ in 0..(s.n / 10).max(1) {
            (s.run)();
        }
    }
    for _ in 0..10 {
        for s in samplers.iter_mut() {
            for _ in 0..(s.n / 10).max(1) {
                let ms = (s.run)();
                s.samples.push(ms);
            }
        }
    }
}

fn main() {
    if std::env::args().any(|a| a == "--list") {
        println!("exec: bench");
        return;
    }
    let quick = std::env::var_os("TETHER_BENCH_QUICK").is_some();
    let n = if quick {
        Sizes {
            lib: 200,
            cli: 50,
            ssh: 10,
            qga: 50,
            stdout: 256 << 20,
            rounds: 1,
            starts: 20,
        }
    } else {
        Sizes {
            lib: 2000,
            cli: 500,
            ssh: 30,
            qga: 500,
            stdout: 1 << 30,
            rounds: 3,
            starts: 20,
        }
    };
    // Declared first, dropped last: after every process using it has been stopped.
    let dir = Scratch::new("exec");
    let ct = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let mt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();

    // The agent, and its memory before it has served anything.
    // The full CLI's `tether agent` for comparison, then the standalone agent measured.
    let bin = agent_binary();
    let cli_sock = dir.path("cli-agent.sock");
    let cli_agent = start_agent(Path::new(TETHER), &cli_sock);
    thread::sleep(Duration::from_millis(300));
    let mem_cli = rss(cli_agent.pid());
    drop(cli_agent);
    let sock = dir.path("agent.sock");
    let agent = start_agent(&bin, &sock);
    thread::sleep(Duration::from_millis(300));
    let mem_start = rss(agent.pid());
    let endpoint: Endpoint = format!("unix://{}", sock.display()).parse().unwrap();
    let client = Client::new(Peer::new([endpoint]));
    let mut sshd = start_sshd(&dir);
    let mut ga = start_qemu_ga(&dir);

    println!(
        "tether exec vs ssh and qemu-guest-agent: this machine ({} cores), one run; \
         the standalone `tether-agent --listen unix://..` with a guest's PATH",
        thread::available_parallelism().map_or(0, |n| n.get())
    );
    println!(
        "`true` round trips, each on a fresh connection, interleaved in 10 slices after a \
         warm-up slice. tether library: tether-client exec + wait; CLI: `tether exec \
         unix://.. -- true`, a process each; ssh: `ssh 127.0.0.1 true`, ed25519 user key, \
         no ControlMaster, sshd started by the bench; qemu-ga: guest-exec /bin/true with \
         capture-output, then guest-exec-status at once and every 1 ms until exited"
    );

    let polls = std::cell::Cell::new(0u64);
    let rows = {
        let mut samplers = [
            Sampler::new("tether exec, library, current-thread rt", n.lib, || {
                ct.block_on(tether_lib_true(&client))
            }),
            Sampler::new("tether exec, library, multi-thread rt", n.lib, || {
                mt.block_on(tether_lib_true(&client))
            }),
            Sampler::new("tether exec, CLI process", n.cli, || tether_cli_true(&sock)),
            Sampler::new("ssh 127.0.0.1 true", n.ssh, || ssh_true(&mut sshd)),
            Sampler::new("qemu-ga guest-exec + status polling", n.qga, || {
                let (ms, p) = qga_true(&mut ga);
                polls.set(polls.get() + u64::from(p));
                ms
            }),
            Sampler::new("tether connect + HELLO/WELCOME", n.lib, || {
                ct.block_on(tether_handshake(&client))
            }),
            Sampler::new("tether exec until STARTED", n.lib, || {
                ct.block_on(tether_to_started(&client))
            }),
            Sampler::new("spawn + wait /usr/bin/true, posix_spawn", n.cli, spawn_true),
            Sampler::new("`tether --version` process", n.cli, tether_version),
        ];
        interleave(&mut samplers);
        samplers.map(|s| (s.name, s.samples.len(), percentiles(s.samples)))
    };
    let qga_polls = polls.get() as f64 / (rows[4].1 + rows[4].1 / 10) as f64;
    let (lib_ct, lib_mt, cli, ssh, qga) = (
        rows[0].2 .0,
        rows[1].2 .0,
        rows[2].2 .0,
        rows[3].2 .0,
        rows[4].2 .0,
    );
    println!();
    println!(
        "{:<42} {:>6} {:>9} {:>9} {:>9} {:>12}",
        "exec `true` round trip", "runs", "p50 ms", "p99 ms", "ssh/this", "qemu-ga/this"
    );
    for (name, runs, (p50, p99)) in &rows[..5] {
        println!(
            "{name:<42} {runs:>6} {p50:>9.3} {p99:>9.3} {:>8.1}x {:>11.2}x",
            ssh / p50,
            qga / p50
        );
    }
    println!("where the time goes (same slices):");
    for (name, runs, (p50, p99)) in &rows[5..] {
        println!("  {name:<40} {runs:>6} {p50:>9.3} {p99:>9.3}");
    }
    println!(
        "  {:<40} {:>6} {:>9.3}",
        "STARTED to EXIT (difference of p50s)",
        "",
        lib_ct - rows[6].2 .0
    );
    println!(
        "  qemu-ga answered {qga_polls:.2} guest-exec-status calls per exec on average; \
         the p99 of {} ssh runs is about their maximum",
        rows[3].1
    );

    // Stdout throughput, the paths interleaved round by round.
    let mut paths: Vec<(String, f64, Vec<f64>)> = Vec::new();
    let mut qga_got = (0, false);
    for round in 0..n.rounds {
        let mut i = 0;
        let mut record = |name: String, size: f64, rate: f64| {
            if round == 0 {
                paths.push((name, size, Vec::new()));
            }
            paths[i].2.push(rate);
            i += 1;
        };
        let mib = (n.stdout >> 20) as f64;
        record(
            "raw: socketpair, 64 KiB writes, 2 threads".into(),
            mib,
            raw_socketpair(n.stdout),
        );
        for p in [Producer::Head, Producer::Dd] {
            let name = p.name();
            record(
                format!("raw: {name} -> socketpair -> bench"),
                mib,
                raw_producer_socket(p, n.stdout),
            );
            record(
                format!("tether exec {name}, library, ct rt"),
                mib,
                ct.block_on(tether_stdout(&client, p, n.stdout)),
            );
            record(
                format!("tether exec {name}, library, mt rt"),
                mib,
                mt.block_on(tether_stdout(&client, p, n.stdout)),
            );
        }
        let (rate, got, truncated) = qga_stdout(&mut ga, QGA_OUTPUT);
        qga_got = (got, truncated);
        record(
            "qemu-ga guest-exec head -c, capture-output".into(),
            got as f64 / MIB,
            rate,
        );
    }
    // What qemu-ga does with more than it keeps.
    let (_, over_got, over_truncated) = qga_stdout(&mut ga, QGA_OUTPUT + 1);
    let rates: Vec<(String, f64, f64)> = paths
        .into_iter()
        .map(|(name, size, r)| (name, size, median(r)))
        .collect();
    let rate = |prefix: &str| {
        rates
            .iter()
            .find(|r| r.0.starts_with(prefix))
            .map(|r| r.2)
            .unwrap()
    };
    let tether_head = rate("tether exec head -c, library, ct");
    let tether_head_mt = rate("tether exec head -c, library, mt");
    let tether_dd = rate("tether exec dd bs=1M, library, ct");
    let tether_dd_mt = rate("tether exec dd bs=1M, library, mt");
    println!();
    println!(
        "stdout throughput: N zero bytes written by the command, read to the end and counted; \
         median of {} rounds",
        n.rounds
    );
    println!(
        "{:<42} {:>6} {:>9} {:>12}",
        "path", "MiB", "MiB/s", "vs raw same"
    );
    let mut raw_same = f64::NAN;
    for (name, size, r) in &rates {
        let vs = if name.starts_with("raw: ") {
            raw_same = *r;
            String::new()
        } else if name.starts_with("tether") {
            format!("{:.0} %", r / raw_same * 100.0)
        } else {
            String::new()
        };
        println!("{name:<42} {size:>6.0} {r:>9.0} {vs:>12}");
    }
    println!(
        "  qemu-ga keeps output in memory until exit, then returns it base64 in one JSON \
         reply: {} MiB came back (out-truncated {}); of {} bytes it returned {} (out-truncated \
         {}); tether exec head -c is {:.0}x its rate",
        qga_got.0 >> 20,
        qga_got.1,
        QGA_OUTPUT + 1,
        over_got,
        over_truncated,
        tether_head / rate("qemu-ga")
    );

    // The agent after all that, idle again.
    thread::sleep(Duration::from_secs(1));
    let mem_after = rss(agent.pid());
    drop(agent);
    let mut starts = Vec::new();
    for i in 0..n.starts {
        starts.push(agent_start_time(
            &bin,
            &dir.path(&format!("start-{i}.sock")),
        ));
    }
    let (start_min, start_max) = (
        starts.iter().copied().fold(f64::INFINITY, f64::min),
        starts.iter().copied().fold(0.0, f64::max),
    );
    let start = median(starts);
    println!();
    let libc = if bin.to_string_lossy().contains("musl") {
        "musl"
    } else {
        "glibc"
    };
    println!(
        "agent: {} ({:.1} MB; scripts/build-agent: static {libc}, opt-level s, LTO)",
        bin.display(),
        std::fs::metadata(&bin).map_or(0.0, |m| m.len() as f64 / 1e6)
    );
    for (when, m) in [
        ("after start", &mem_start),
        ("idle after the runs", &mem_after),
        ("of `tether agent`", &mem_cli),
    ] {
        println!(
            "agent RSS {when:<20} {:>6.2} MiB (anonymous {:.2}, file-backed {:.2}: binary text \
             and shared libraries); peak so far {:.2} MiB",
            m.rss, m.anon, m.file, m.peak
        );
    }
    println!(
        "agent start to listening: p50 {start:.2} ms (min {start_min:.2}, max {start_max:.2}) \
         over {} starts, spawn to the first accepted connect, socket tried every 50 us",
        n.starts
    );

    println!();
    println!("goals (DESIGN.md)");
    let goals = [
        (
            "exec round trip >= 20x ssh, library (ct / mt)",
            format!("{:.1}x / {:.1}x", ssh / lib_ct, ssh / lib_mt),
            ssh / lib_ct >= 20.0,
        ),
        (
            "exec round trip >= 20x ssh, CLI",
            format!("{:.1}x", ssh / cli),
            ssh / cli >= 20.0,
        ),
        (
            "exec round trip >= 3x qemu-ga, library (ct / mt)",
            format!("{:.2}x / {:.2}x", qga / lib_ct, qga / lib_mt),
            qga / lib_ct >= 3.0,
        ),
        (
            "stdout >= 1 GiB/s, head -c (ct / mt)",
            format!("{tether_head:.0} / {tether_head_mt:.0} MiB/s"),
            tether_head >= 1024.0,
        ),
        (
            "stdout >= 1 GiB/s, dd bs=1M (ct / mt)",
            format!("{tether_dd:.0} / {tether_dd_mt:.0} MiB/s"),
            tether_dd >= 1024.0,
        ),
        (
            "agent idle RSS <= 2 MiB (after start / runs)",
            format!("{:.2} / {:.2} MiB", mem_start.rss, mem_after.rss),
            mem_start.rss.max(mem_after.rss) <= 2.0,
        ),
        (
            "agent start to listening <= 5 ms",
            format!("{start:.2} ms"),
            start <= 5.0,
        ),
    ];
    for (what, got, met) in goals {
        println!("{what:<50} {got:>20}  {}", verdict(met));
    }
    drop(ga);
    drop(sshd);
}
