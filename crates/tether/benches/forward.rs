//! `tether forward` beside socat on the same machine in the same run: throughput of one
//! connection and the round trip a relay adds, TCP to TCP and Unix to Unix; and
//! forwarding through the agent (`tether forward --via` to `tether agent` on a Unix
//! socket, which connects to the TCP target) beside two socats with a Unix socket between
//! them, the same two hops.
//!
//! `cargo bench -p tether --bench forward`; `TETHER_BENCH_QUICK=1` for a short run.
//! Needs socat (`apt-get install socat`).

use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::thread;
use std::time::{Duration, Instant};

const CHUNK: usize = 64 * 1024;

/// A connected byte stream of either family.
trait Conn: Read + Write + Send + 'static {
    fn half_close(&self);
}
impl Conn for TcpStream {
    fn half_close(&self) {
        self.shutdown(std::net::Shutdown::Write).unwrap();
    }
}
impl Conn for UnixStream {
    fn half_close(&self) {
        self.shutdown(std::net::Shutdown::Write).unwrap();
    }
}

/// One family's addresses: where the servers listen and how to name them to the relays.
#[derive(Clone)]
enum Family {
    Tcp,
    Unix(PathBuf),
}

impl Family {
    fn name(&self) -> &'static str {
        match self {
            Family::Tcp => "tcp",
            Family::Unix(_) => "unix",
        }
    }

    /// Starts a server running `serve` per connection; returns its address.
    fn serve(&self, tag: &str, serve: fn(Box<dyn Conn>)) -> String {
        match self {
            Family::Tcp => {
                let l = TcpListener::bind("127.0.0.1:0").unwrap();
                let addr = l.local_addr().unwrap().to_string();
                thread::spawn(move || {
                    for c in l.incoming() {
                        let c = c.unwrap();
                        c.set_nodelay(true).unwrap();
                        thread::spawn(move || serve(Box::new(c)));
                    }
                });
                addr
            }
            Family::Unix(dir) => {
                let path = dir.join(format!("{tag}.sock"));
                let l = UnixListener::bind(&path).unwrap();
                thread::spawn(move || {
                    for c in l.incoming() {
                        let c = c.unwrap();
                        thread::spawn(move || serve(Box::new(c)));
                    }
                });
                path.display().to_string()
            }
        }
    }

    /// A free address for a relay to listen on.
    fn relay_addr(&self, tag: &str) -> String {
        match self {
            Family::Tcp => {
                let l = TcpListener::bind("127.0.0.1:0").unwrap();
                l.local_addr().unwrap().to_string()
            }
            Family::Unix(dir) => dir.join(format!("{tag}.sock")).display().to_string(),
        }
    }

    fn connect(&self, addr: &str) -> std::io::Result<Box<dyn Conn>> {
        Ok(match self {
            Family::Tcp => {
                let c = TcpStream::connect(addr)?;
                c.set_nodelay(true)?;
                Box::new(c)
            }
            Family::Unix(_) => Box::new(UnixStream::connect(addr)?),
        })
    }

    fn tether_uri(&self, addr: &str) -> String {
        match self {
            Family::Tcp => format!("tcp://{addr}"),
            Family::Unix(_) => format!("unix://{addr}"),
        }
    }

    fn socat_listen(&self, addr: &str) -> String {
        match self {
            Family::Tcp => format!("TCP-LISTEN:{},bind=127.0.0.1,reuseaddr,fork", port(addr)),
            Family::Unix(_) => format!("UNIX-LISTEN:{addr},fork"),
        }
    }

    fn socat_connect(&self, addr: &str) -> String {
        match self {
            Family::Tcp => format!("TCP:{addr}"),
            Family::Unix(_) => format!("UNIX-CONNECT:{addr}"),
        }
    }
}

fn port(addr: &str) -> &str {
    addr.rsplit_once(':').unwrap().1
}

/// Reads to EOF, then answers with the byte count.
fn sink(mut c: Box<dyn Conn>) {
    let mut buf = vec![0u8; 256 * 1024];
    let mut total = 0u64;
    loop {
        match c.read(&mut buf) {
            Ok(0) | Err(_) => break,
            Ok(n) => total += n as u64,
        }
    }
    let _ = c.write_all(&total.to_le_bytes());
}

fn echo(mut c: Box<dyn Conn>) {
    let mut buf = vec![0u8; 64 * 1024];
    loop {
        match c.read(&mut buf) {
            Ok(0) | Err(_) => return,
            Ok(n) => {
                if c.write_all(&buf[..n]).is_err() {
                    return;
                }
            }
        }
    }
}

/// A relay process, killed when dropped.
struct Relay(Child);

impl Drop for Relay {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn start_relay(fam: &Family, cmd: &mut Command, listen: &str) -> Relay {
    let child = cmd
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap_or_else(|e| panic!("starting {cmd:?}: {e} (install socat: apt-get install socat)"));
    let relay = Relay(child);
    for _ in 0..500 {
        if fam.connect(listen).is_ok() {
            return relay;
        }
        thread::sleep(Duration::from_millis(10));
    }
    panic!("{cmd:?} did not start listening on {listen}");
}

fn tether(fam: &Family, listen: &str, target: &str) -> Relay {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_tether"));
    cmd.arg("forward")
        .arg(fam.tether_uri(listen))
        .arg(fam.tether_uri(target));
    start_relay(fam, &mut cmd, listen)
}

fn socat(fam: &Family, listen: &str, target: &str) -> Relay {
    let mut cmd = Command::new("socat");
    cmd.arg(fam.socat_listen(listen))
        .arg(fam.socat_connect(target));
    start_relay(fam, &mut cmd, listen)
}

/// MiB/s of `total` bytes sent over one connection to a sink at `addr`.
fn throughput(fam: &Family, addr: &str, total: u64) -> f64 {
    let mut c = fam.connect(addr).unwrap();
    let buf = vec![0x5au8; CHUNK];
    let start = Instant::now();
    let mut sent = 0u64;
    while sent < total {
        c.write_all(&buf).unwrap();
        sent += CHUNK as u64;
    }
    c.half_close();
    let mut count = [0u8; 8];
    c.read_exact(&mut count).unwrap();
    let secs = start.elapsed().as_secs_f64();
    assert_eq!(u64::from_le_bytes(count), sent, "the sink got every byte");
    sent as f64 / (1024.0 * 1024.0) / secs
}

/// Times `n` 1-byte round trips (after a tenth as many unrecorded), in µs.
fn round_trips(c: &mut dyn Conn, n: usize) -> Vec<f64> {
    let mut b = [7u8; 1];
    let mut samples = Vec::with_capacity(n);
    for i in 0..n + n / 10 {
        let t = Instant::now();
        c.write_all(&b).unwrap();
        c.read_exact(&mut b).unwrap();
        if i >= n / 10 {
            samples.push(t.elapsed().as_secs_f64() * 1e6);
        }
    }
    samples
}

/// p50 and p99.
fn percentiles(mut samples: Vec<f64>) -> (f64, f64) {
    samples.sort_by(f64::total_cmp);
    (
        samples[samples.len() / 2],
        samples[samples.len() * 99 / 100],
    )
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(f64::total_cmp);
    v[v.len() / 2]
}

struct Row {
    family: &'static str,
    direct: f64,
    socat: f64,
    tether: f64,
    rtt: [(f64, f64); 3],
}

fn measure(fam: &Family, total: u64, pings: usize, rounds: usize) -> Row {
    let sink_addr = fam.serve("sink", sink);
    let echo_addr = fam.serve("echo", echo);
    let relays = [
        ("socat", socat as fn(&Family, &str, &str) -> Relay),
        ("tether", tether),
    ];
    let mut addrs = vec![(sink_addr.clone(), echo_addr.clone())];
    let mut running = Vec::new();
    for (name, start) in relays {
        let s = fam.relay_addr(&format!("{name}-sink"));
        let e = fam.relay_addr(&format!("{name}-echo"));
        running.push((start(fam, &s, &sink_addr), start(fam, &e, &echo_addr)));
        addrs.push((s, e));
    }
    measure_paths(fam, fam.name(), &addrs, total, pings, rounds)
}

/// Throughput and round trips of the direct, socat and tether paths, each given as (sink
/// address, echo address).
fn measure_paths(
    fam: &Family,
    label: &'static str,
    addrs: &[(String, String)],
    total: u64,
    pings: usize,
    rounds: usize,
) -> Row {
    // Rounds interleave the three paths so drift in machine load hits all alike.
    let mut rates = vec![Vec::new(); addrs.len()];
    for _ in 0..rounds {
        for (i, (s, _)) in addrs.iter().enumerate() {
            rates[i].push(throughput(fam, s, total));
        }
    }
    // Round trips interleave the same way, on one connection per path.
    let mut conns: Vec<Box<dyn Conn>> =
        addrs.iter().map(|(_, e)| fam.connect(e).unwrap()).collect();
    let mut samples = vec![Vec::new(); addrs.len()];
    for _ in 0..10 {
        for (i, c) in conns.iter_mut().enumerate() {
            samples[i].extend(round_trips(c.as_mut(), pings / 10));
        }
    }
    let rtt: Vec<(f64, f64)> = samples.into_iter().map(percentiles).collect();
    let mut rates = rates.into_iter().map(median);
    Row {
        family: label,
        direct: rates.next().unwrap(),
        socat: rates.next().unwrap(),
        tether: rates.next().unwrap(),
        rtt: [rtt[0], rtt[1], rtt[2]],
    }
}

/// A `tether agent` on a Unix socket that may forward to loopback TCP, as a guest's agent
/// would to its services; killed when dropped.
fn agent(dir: &Path) -> (Relay, String) {
    let sock = dir.join("agent.sock");
    let child = Command::new(env!("CARGO_BIN_EXE_tether"))
        .arg("agent")
        .arg("--listen")
        .arg(format!("unix://{}", sock.display()))
        .arg("--allow-connect")
        .arg("tcp://127.0.0.1:*")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let agent = Relay(child);
    for _ in 0..500 {
        if UnixStream::connect(&sock).is_ok() {
            return (agent, format!("unix://{}", sock.display()));
        }
        thread::sleep(Duration::from_millis(10));
    }
    panic!("the agent did not start listening on {}", sock.display());
}

/// `tether forward --via AGENT tcp://LISTEN tcp://TARGET`.
fn tether_via(agent: &str, listen: &str, target: &str) -> Relay {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_tether"));
    cmd.arg("forward")
        .arg("--via")
        .arg(agent)
        .arg(format!("tcp://{listen}"))
        .arg(format!("tcp://{target}"));
    start_relay(&Family::Tcp, &mut cmd, listen)
}

/// Two socats, TCP to a Unix socket and that Unix socket to TCP: the hops of the agent
/// path.
fn socat_two_hops(dir: &Path, tag: &str, listen: &str, target: &str) -> (Relay, Relay) {
    let hop = dir.join(format!("{tag}-hop.sock"));
    let unix = Family::Unix(dir.to_path_buf());
    let mut inner = Command::new("socat");
    inner
        .arg(format!("UNIX-LISTEN:{},fork", hop.display()))
        .arg(format!("TCP:{target}"));
    let inner = start_relay(&unix, &mut inner, &hop.display().to_string());
    let mut outer = Command::new("socat");
    outer
        .arg(Family::Tcp.socat_listen(listen))
        .arg(format!("UNIX-CONNECT:{}", hop.display()));
    (inner, start_relay(&Family::Tcp, &mut outer, listen))
}

/// Host TCP → relay → Unix socket → agent (or second socat) → TCP target.
fn measure_via_agent(dir: &Path, total: u64, pings: usize, rounds: usize) -> Row {
    let fam = Family::Tcp;
    let sink_addr = fam.serve("sink", sink);
    let echo_addr = fam.serve("echo", echo);
    let (_agent, agent_uri) = agent(dir);
    let socat_sink = fam.relay_addr("socat2-sink");
    let socat_echo = fam.relay_addr("socat2-echo");
    let _socats = (
        socat_two_hops(dir, "sink", &socat_sink, &sink_addr),
        socat_two_hops(dir, "echo", &socat_echo, &echo_addr),
    );
    let via_sink = fam.relay_addr("via-sink");
    let via_echo = fam.relay_addr("via-echo");
    let _vias = (
        tether_via(&agent_uri, &via_sink, &sink_addr),
        tether_via(&agent_uri, &via_echo, &echo_addr),
    );
    let addrs = [
        (sink_addr, echo_addr),
        (socat_sink, socat_echo),
        (via_sink, via_echo),
    ];
    measure_paths(&fam, "tcp via agent, 2 hops", &addrs, total, pings, rounds)
}

fn print_row(r: &Row) {
    println!(
        "{:<22} {:>12.0} {:>12.0} {:>12.0} {:>8.2}x | {:>7.1}/{:<6.1}µs {:>13.1} µs {:>13.1} µs",
        r.family,
        r.direct,
        r.socat,
        r.tether,
        r.tether / r.socat,
        r.rtt[0].0,
        r.rtt[0].1,
        r.rtt[1].0 - r.rtt[0].0,
        r.rtt[2].0 - r.rtt[0].0,
    );
}

fn scratch_dir() -> PathBuf {
    let dir = std::env::temp_dir().join(format!("tether-bench-forward-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

fn main() {
    if std::env::args().any(|a| a == "--list") {
        println!("forward: bench");
        return;
    }
    let quick = std::env::var_os("TETHER_BENCH_QUICK").is_some();
    let (total, pings, rounds) = if quick {
        (256u64 << 20, 2_000, 1)
    } else {
        (2u64 << 30, 20_000, 3)
    };
    let dir = scratch_dir();
    println!(
        "tether forward vs socat: {} MiB per run over one connection in 64 KiB writes, \
         median of {rounds}; {pings} 1-byte round trips",
        total >> 20
    );
    println!(
        "{:<22} {:>12} {:>12} {:>12} {:>9} | {:>16} {:>16} {:>16}",
        "link",
        "direct MiB/s",
        "socat MiB/s",
        "tether MiB/s",
        "t/socat",
        "direct p50/p99",
        "socat +p50",
        "tether +p50"
    );
    for fam in [Family::Tcp, Family::Unix(dir.clone())] {
        print_row(&measure(&fam, total, pings, rounds));
    }
    // socat: two socats (TCP to Unix, Unix to TCP); tether: forward --via, then the agent.
    print_row(&measure_via_agent(&dir, total, pings, rounds));
    let _ = std::fs::remove_dir_all(Path::new(&dir));
}
