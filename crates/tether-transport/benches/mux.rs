//! Throughput and latency of tether's mux next to a raw Unix socketpair and yamux.
//!
//! Run with `cargo bench -p tether-transport --bench mux`; `TETHER_BENCH_QUICK=1` shrinks
//! every transfer and round-trip count 16x for a smoke run. Everything runs on a tokio
//! multi-thread runtime with 2 workers, over `UnixStream::pair()`:
//!
//! - throughput: one direction, 1 connection or 100 concurrent ones (one link carrying 100
//!   streams for tether and yamux), 4 KiB or 64 KiB writes, the receiver reading with a
//!   64 KiB buffer; each connection's received byte count is checked. "raw" is one
//!   socketpair moving the cell's bytes with one writer and one reader: what the link
//!   itself carries. For 100 connections the table also shows that socketpair with the
//!   memory 100 connections touch (its writer takes each write from the next of 100
//!   buffers, its reader reads into the next of 100), and 100 socketpairs in parallel,
//!   which no multiplexer over one link can match. Each cell runs 11 rounds of
//!   1 GiB per transport, the transports taking turns within a round so that the
//!   machine's slow and fast phases fall on all of them; the table shows the median
//!   MiB/s and the median (and range) of the per-round ratios;
//! - latency: a 1-byte ping-pong on one connection, p50 and p99.
//!
//! yamux runs with its `Config` defaults except for the receive window: its streams start
//! at 256 KiB (`yamux::DEFAULT_CREDIT`) and auto-tune upwards into a pool the connection
//! window leaves; that pool is set to what tether's `buf_alloc` (1 MiB) adds over 256
//! KiB for each stream of the run, so yamux's streams together can have the credit
//! tether's connections have.
//!
//! `TETHER_MUX_CELLS=1x64,100x4` runs only those throughput cells (connections x KiB
//! per write) and, unless the list also names `latency`, no ping-pong; naming `tether`,
//! `raw`, `rawbufs`, `raweach` or `yamux` as well measures only the transports named (for
//! profiling one).
//! `TETHER_MUX_WORKERS=1` runs everything on one tokio worker: CPU time per byte then
//! varies much less from run to run than throughput on two (compare with `perf stat`).
//!
//! `TETHER_MUX_LAYOUT=ends` puts the two ends of every transport in two runtimes of one
//! worker each, as a host and its guest are: the writing end (and, for tether and yamux,
//! its link driver) in one, the reading end in the other. Without it both ends share one
//! runtime of `TETHER_MUX_WORKERS` workers, as the bench asks.
//!
//! Markdown tables go to stdout, progress to stderr.

use std::collections::VecDeque;
use std::future::poll_fn;
use std::sync::OnceLock;
use std::task::Poll;
use std::time::{Duration, Instant};
use tether_transport::mux::{Mux, MuxConfig, MuxStream};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::UnixStream;
use tokio::sync::{mpsc, oneshot};
use tokio::task::JoinHandle;
use tokio_util::compat::{Compat, FuturesAsyncReadCompatExt, TokioAsyncReadCompatExt};

const KIB: usize = 1024;
const MIB: f64 = (1024 * 1024) as f64;
/// Bytes moved per throughput run (split evenly over its connections).
const CELL_BYTES: u64 = 1 << 30;
/// Runs per throughput cell; the table shows their median.
const REPEATS: usize = 11;
/// Ping-pong round trips measured, after the warm-up ones.
const ROUNDS: usize = 20_000;
const WARMUP_ROUNDS: usize = 2_000;
/// Divisor of the sizes above under `TETHER_BENCH_QUICK=1`.
const QUICK_DIVISOR: usize = 16;
/// The receiver's read buffer.
const READ_BUF: usize = 64 * KIB;
const PORT: u32 = 5000;
/// Streams per yamux connection (yamux's default), to size its connection window.
const YAMUX_MAX_STREAMS: usize = 512;

/// A byte stream the drivers below can use.
trait Stream: AsyncRead + AsyncWrite + Unpin + Send + 'static {}
impl<T: AsyncRead + AsyncWrite + Unpin + Send + 'static> Stream for T {}

#[derive(Clone, Copy, Debug, PartialEq)]
enum Transport {
    /// One socketpair, whatever the connection count.
    Raw,
    /// A socketpair per connection (throughput with 100 connections only).
    RawEach,
    /// One socketpair whose writer takes its writes in turn from a buffer per connection
    /// and whose reader reads into a buffer per connection (100 connections only).
    RawBufs,
    Tether,
    Yamux,
}

impl Transport {
    /// Whether the transport is measured only with many connections.
    fn per_conn(self) -> bool {
        matches!(self, Transport::RawEach | Transport::RawBufs)
    }
}

const TRANSPORTS: [Transport; 5] = [
    Transport::Raw,
    Transport::RawEach,
    Transport::RawBufs,
    Transport::Tether,
    Transport::Yamux,
];

/// The transports of the ping-pong, where one connection is one socketpair anyway.
const LATENCY_TRANSPORTS: [Transport; 3] = [Transport::Raw, Transport::Tether, Transport::Yamux];

/// Sizes of one run.
struct Plan {
    cell_bytes: u64,
    rounds: usize,
    warmup: usize,
    /// The `TETHER_MUX_CELLS` list; `None` runs everything.
    cells: Option<Vec<String>>,
    /// Tokio workers (`TETHER_MUX_WORKERS`, 2 unless set; 1 per end with `ends`).
    workers: usize,
    /// Each end in its own runtime (`TETHER_MUX_LAYOUT=ends`).
    ends: bool,
}

impl Plan {
    fn from_env() -> Plan {
        let quick = std::env::var("TETHER_BENCH_QUICK").is_ok_and(|v| v == "1");
        let div = if quick { QUICK_DIVISOR } else { 1 };
        Plan {
            cell_bytes: CELL_BYTES / div as u64,
            rounds: ROUNDS / div,
            warmup: WARMUP_ROUNDS / div,
            cells: std::env::var("TETHER_MUX_CELLS")
                .ok()
                .map(|v| v.split(',').map(|c| c.trim().to_string()).collect()),
            workers: std::env::var("TETHER_MUX_WORKERS")
                .ok()
                .and_then(|v| v.parse().ok())
                .filter(|&n| n > 0)
                .unwrap_or(2),
            ends: std::env::var("TETHER_MUX_LAYOUT").is_ok_and(|v| v == "ends"),
        }
    }

    /// Whether the cell named `name` (`1x64`, `latency`) is to run.
    fn runs(&self, name: &str) -> bool {
        self.cells
            .as_ref()
            .is_none_or(|c| c.iter().any(|n| n == name))
    }

    /// Whether transport `t` is measured: all of them unless the list names some.
    fn measures(&self, t: Transport) -> bool {
        let name = format!("{t:?}").to_lowercase();
        let names = ["raw", "raweach", "rawbufs", "tether", "yamux"];
        match &self.cells {
            Some(c) if c.iter().any(|n| names.contains(&n.as_str())) => c.contains(&name),
            _ => true,
        }
    }
}

/// The reading end's runtime under `TETHER_MUX_LAYOUT=ends`.
static FAR: OnceLock<tokio::runtime::Runtime> = OnceLock::new();

fn runtime(workers: usize) -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(workers)
        .enable_all()
        .build()
        .expect("tokio runtime")
}

/// Runs `f` in the reading end's runtime: what it creates registers there and what it
/// spawns runs there.
fn at_far_end<T>(f: impl FnOnce() -> T) -> T {
    match FAR.get() {
        Some(far) => {
            let _guard = far.enter();
            f()
        }
        None => f(),
    }
}

/// Spawns a task of the reading end.
fn spawn_far<F>(task: F) -> JoinHandle<F::Output>
where
    F: std::future::Future + Send + 'static,
    F::Output: Send + 'static,
{
    at_far_end(|| tokio::spawn(task))
}

fn main() {
    let mut plan = Plan::from_env();
    if plan.ends {
        plan.workers = 1;
        FAR.set(runtime(1)).expect("set once");
    }
    let rt = runtime(plan.workers);
    // Spawned, so that the bench itself runs on the two workers and not on this thread.
    rt.block_on(async move { tokio::spawn(async move { run(&plan).await }).await })
        .expect("benchmark task panicked");
}

async fn run(plan: &Plan) {
    let mut rows = Vec::new();
    for conns in [1, 100] {
        for write_size in [4 * KIB, 64 * KIB] {
            if !plan.runs(&format!("{conns}x{}", write_size / KIB)) {
                continue;
            }
            rows.push(cell(plan, conns, write_size).await);
        }
    }
    let mut latencies = Vec::new();
    for t in LATENCY_TRANSPORTS
        .into_iter()
        .filter(|&t| plan.runs("latency") && plan.measures(t))
    {
        let lat = latency(t, plan).await;
        eprintln!(
            "latency {t:?}: p50 {:.1} µs, p99 {:.1} µs",
            lat.p50, lat.p99
        );
        latencies.push((t, lat));
    }
    if !rows.is_empty() {
        print_throughput(plan, &rows);
    }
    if !latencies.is_empty() {
        print_latency(plan, &latencies);
    }
}

// ---- connection setup, one per transport ---------------------------------------------

/// `n` raw socketpairs.
fn raw_pairs(n: usize) -> Vec<(UnixStream, UnixStream)> {
    (0..n).map(|_| pair()).collect()
}

/// A socketpair whose second end belongs to the reading end's runtime.
fn pair() -> (UnixStream, UnixStream) {
    let (a, b) = std::os::unix::net::UnixStream::pair().expect("socketpair");
    let tokio_end = |s: std::os::unix::net::UnixStream| {
        s.set_nonblocking(true).expect("nonblocking");
        UnixStream::from_std(s).expect("register socket")
    };
    (tokio_end(a), at_far_end(|| tokio_end(b)))
}

/// `n` tether connections over one mux link: (host end, guest end).
async fn tether_pairs(n: usize) -> Vec<(MuxStream, MuxStream)> {
    let (a, b) = pair();
    let ((ar, aw), (br, bw)) = (a.into_split(), b.into_split());
    let host = Mux::from_halves(ar, aw, MuxConfig::host());
    let guest = at_far_end(|| Mux::from_halves(br, bw, MuxConfig::guest(3)));
    let mut listener = guest.listen(PORT).expect("listen");
    let mut pairs = Vec::with_capacity(n);
    for _ in 0..n {
        let tx = host.connect(PORT).await.expect("tether connect");
        let rx = listener.accept().await.expect("tether accept");
        pairs.push((tx, rx));
    }
    // The streams keep the link alive; the handles can go.
    pairs
}

type YamuxStream = Compat<yamux::Stream>;

/// `n` yamux streams over one link: (client end, server end). The driver tasks stop
/// when the returned guard drops.
async fn yamux_pairs(n: usize) -> (Vec<(YamuxStream, YamuxStream)>, AbortOnDrop) {
    let (a, b) = pair();
    let (client, client_task) = YamuxLink::spawn(a, yamux::Mode::Client, n);
    let (mut server, server_task) = at_far_end(|| YamuxLink::spawn(b, yamux::Mode::Server, n));
    let mut pairs = Vec::with_capacity(n);
    for _ in 0..n {
        // A yamux stream reaches the peer with its first frame: send one byte to pair up.
        let mut tx = client.open().await.compat();
        tx.write_all(&[1]).await.expect("yamux hello write");
        tx.flush().await.expect("yamux hello flush");
        let mut rx = server.accept().await.compat();
        rx.read_exact(&mut [0]).await.expect("yamux hello read");
        pairs.push((tx, rx));
    }
    (pairs, AbortOnDrop(vec![client_task, server_task]))
}

/// yamux's settings for a link that will carry `streams` streams.
fn yamux_config(streams: usize) -> yamux::Config {
    let mut cfg = yamux::Config::default();
    cfg.set_max_num_streams(YAMUX_MAX_STREAMS);
    // Every stream is guaranteed 256 KiB; the pool its windows auto-tune into holds what
    // tether's credit adds over that for each stream of the run, so together they can
    // reach the credit tether's connections have (a single stream could take it all).
    let extra =
        (MuxConfig::host().buf_alloc as usize).saturating_sub(yamux::DEFAULT_CREDIT as usize);
    let window = YAMUX_MAX_STREAMS * yamux::DEFAULT_CREDIT as usize + streams * extra;
    cfg.set_max_connection_receive_window(Some(window));
    cfg
}

/// Aborts tasks when dropped.
struct AbortOnDrop(Vec<JoinHandle<()>>);

impl Drop for AbortOnDrop {
    fn drop(&mut self) {
        for task in &self.0 {
            task.abort();
        }
    }
}

/// Handle to a task that owns a `yamux::Connection`, polls it, opens outbound streams on
/// request and forwards inbound ones.
struct YamuxLink {
    open: mpsc::UnboundedSender<oneshot::Sender<yamux::Stream>>,
    inbound: mpsc::UnboundedReceiver<yamux::Stream>,
}

impl YamuxLink {
    fn spawn(io: UnixStream, mode: yamux::Mode, streams: usize) -> (YamuxLink, JoinHandle<()>) {
        let conn = yamux::Connection::new(io.compat(), yamux_config(streams), mode);
        let (open, requests) = mpsc::unbounded_channel();
        let (inbound_tx, inbound) = mpsc::unbounded_channel();
        let task = tokio::spawn(drive_yamux(conn, requests, inbound_tx));
        (YamuxLink { open, inbound }, task)
    }

    async fn open(&self) -> yamux::Stream {
        let (tx, rx) = oneshot::channel();
        self.open.send(tx).expect("yamux driver gone");
        rx.await.expect("yamux driver dropped an open request")
    }

    async fn accept(&mut self) -> yamux::Stream {
        self.inbound.recv().await.expect("yamux driver gone")
    }
}

async fn drive_yamux(
    mut conn: yamux::Connection<Compat<UnixStream>>,
    mut requests: mpsc::UnboundedReceiver<oneshot::Sender<yamux::Stream>>,
    inbound: mpsc::UnboundedSender<yamux::Stream>,
) {
    let mut waiting = VecDeque::new();
    let mut requests_open = true;
    poll_fn(|cx| {
        while requests_open {
            match requests.poll_recv(cx) {
                Poll::Ready(Some(reply)) => waiting.push_back(reply),
                Poll::Ready(None) => requests_open = false,
                Poll::Pending => break,
            }
        }
        while !waiting.is_empty() {
            match conn.poll_new_outbound(cx) {
                Poll::Ready(Ok(stream)) => {
                    let reply = waiting.pop_front().expect("checked non-empty");
                    let _ = reply.send(stream);
                }
                Poll::Ready(Err(e)) => panic!("yamux: opening a stream failed: {e}"),
                Poll::Pending => break,
            }
        }
        // Drives the link's I/O as well.
        loop {
            match conn.poll_next_inbound(cx) {
                Poll::Ready(Some(Ok(stream))) => {
                    let _ = inbound.send(stream);
                }
                // The link ended (the peer's driver was aborted): nothing left to do.
                Poll::Ready(Some(Err(_)) | None) => return Poll::Ready(()),
                Poll::Pending => return Poll::Pending,
            }
        }
    })
    .await
}

// ---- throughput ----------------------------------------------------------------------

/// One throughput cell: MiB/s of every round, per transport (empty when not measured).
struct Cell {
    conns: usize,
    write_size: usize,
    mib_s: [Vec<f64>; 5],
    /// CPU time of the whole process per GiB moved, in ms, every round.
    cpu_ms: [Vec<f64>; 5],
}

impl Cell {
    fn runs(&self, t: Transport) -> &[f64] {
        &self.mib_s[TRANSPORTS.iter().position(|&x| x == t).expect("listed")]
    }

    fn median(&self, t: Transport) -> Option<f64> {
        median(self.runs(t).to_vec())
    }

    fn median_cpu(&self, t: Transport) -> Option<f64> {
        median(self.cpu_ms[TRANSPORTS.iter().position(|&x| x == t).expect("listed")].clone())
    }

    /// The median and range of `a`'s MiB/s over `b`'s, round by round.
    fn ratio(&self, a: Transport, b: Transport) -> Option<(f64, f64, f64)> {
        let ratios: Vec<f64> = self
            .runs(a)
            .iter()
            .zip(self.runs(b))
            .map(|(x, y)| x / y)
            .collect();
        let lo = ratios.iter().copied().reduce(f64::min)?;
        let hi = ratios.iter().copied().reduce(f64::max)?;
        Some((median(ratios)?, lo, hi))
    }
}

fn median(mut v: Vec<f64>) -> Option<f64> {
    v.sort_by(f64::total_cmp);
    v.get(v.len() / 2).copied()
}

/// [`REPEATS`] rounds of [`throughput`], every measured transport once per round.
async fn cell(plan: &Plan, conns: usize, write_size: usize) -> Cell {
    let mut cell = Cell {
        conns,
        write_size,
        mib_s: Default::default(),
        cpu_ms: Default::default(),
    };
    for _ in 0..REPEATS {
        for (i, t) in TRANSPORTS.into_iter().enumerate() {
            if plan.measures(t) && (conns > 1 || !t.per_conn()) {
                let cpu = cpu_time();
                let mib_s = throughput(t, conns, write_size, plan.cell_bytes).await;
                let gib = (plan.cell_bytes / conns as u64 * conns as u64) as f64 / (MIB * 1024.0);
                cell.mib_s[i].push(mib_s);
                cell.cpu_ms[i].push((cpu_time() - cpu).as_secs_f64() * 1000.0 / gib);
            }
        }
    }
    for t in TRANSPORTS {
        let runs: Vec<String> = cell.runs(t).iter().map(|r| format!("{r:.0}")).collect();
        if !runs.is_empty() {
            eprintln!(
                "{conns} conn, {} KiB writes, {t:?}: {} MiB/s",
                write_size / KIB,
                runs.join(" / ")
            );
        }
    }
    cell
}

/// User and system CPU time of the whole process so far: both ends of every transport,
/// the runtime's workers and the kernel's work for their calls.
fn cpu_time() -> Duration {
    use nix::sys::resource::{getrusage, UsageWho};
    let usage = getrusage(UsageWho::RUSAGE_SELF).expect("getrusage");
    let d = |t: nix::sys::time::TimeVal| {
        Duration::from_secs(t.tv_sec() as u64) + Duration::from_micros(t.tv_usec() as u64)
    };
    d(usage.user_time()) + d(usage.system_time())
}

/// MiB/s of `cell_bytes` sent over `conns` connections of `t` in `write_size` writes.
async fn throughput(t: Transport, conns: usize, write_size: usize, cell_bytes: u64) -> f64 {
    let per_conn = cell_bytes / conns as u64;
    let elapsed = match t {
        Transport::Raw => transfer(raw_pairs(1), write_size, cell_bytes).await,
        Transport::RawEach => transfer(raw_pairs(conns), write_size, per_conn).await,
        Transport::RawBufs => transfer_spread(conns, write_size, cell_bytes).await,
        Transport::Tether => transfer(tether_pairs(conns).await, write_size, per_conn).await,
        Transport::Yamux => {
            let (pairs, _drivers) = yamux_pairs(conns).await;
            transfer(pairs, write_size, per_conn).await
        }
    };
    (per_conn * conns as u64) as f64 / MIB / elapsed.as_secs_f64()
}

/// Sends `per_conn` bytes one way on every pair at once; returns the time until every
/// receiver has read them all and seen EOF. Panics on a short or long count.
async fn transfer<S: Stream>(pairs: Vec<(S, S)>, write_size: usize, per_conn: u64) -> Duration {
    let start = Instant::now();
    let mut senders = Vec::with_capacity(pairs.len());
    let mut receivers = Vec::with_capacity(pairs.len());
    for (tx, rx) in pairs {
        senders.push(tokio::spawn(send(tx, write_size, per_conn)));
        receivers.push(spawn_far(receive(rx)));
    }
    let mut finished = Vec::with_capacity(receivers.len());
    for (i, r) in receivers.into_iter().enumerate() {
        let (got, rx) = r.await.expect("receiver panicked");
        assert_eq!(
            got, per_conn,
            "connection {i}: received {got} of {per_conn} bytes"
        );
        finished.push(rx);
    }
    let elapsed = start.elapsed();
    for s in senders {
        // Each sender's stream lives until its receiver is done, then both close.
        drop(s.await.expect("sender panicked"));
    }
    elapsed
}

/// Sends `total` bytes over one socketpair, writing from `bufs` buffers in turn and
/// reading into `bufs` others in turn; returns the time until the reader saw EOF.
async fn transfer_spread(bufs: usize, write_size: usize, total: u64) -> Duration {
    let (mut tx, mut rx) = pair();
    let start = Instant::now();
    let sender = tokio::spawn(async move {
        let chunks = vec![vec![0xa5u8; write_size]; bufs];
        let mut left = total;
        for chunk in chunks.iter().cycle() {
            let n = left.min(write_size as u64) as usize;
            if n == 0 {
                break;
            }
            tx.write_all(&chunk[..n]).await.expect("write");
            left -= n as u64;
        }
        tx.shutdown().await.expect("shutdown");
        tx
    });
    let got = spawn_far(async move {
        let mut targets = vec![vec![0u8; READ_BUF]; bufs];
        let mut got = 0u64;
        for i in (0..bufs).cycle() {
            match rx.read(&mut targets[i]).await.expect("read") {
                0 => break,
                n => got += n as u64,
            }
        }
        got
    })
    .await
    .expect("reader panicked");
    let elapsed = start.elapsed();
    assert_eq!(got, total, "received {got} of {total} bytes");
    drop(sender.await.expect("sender panicked"));
    elapsed
}

/// Writes `total` bytes in `write_size` chunks, then half-closes. Returns the stream so
/// that dropping it cannot race the bytes still in flight.
async fn send<S: Stream>(mut s: S, write_size: usize, total: u64) -> S {
    let chunk = vec![0xa5u8; write_size];
    let mut left = total;
    while left > 0 {
        let n = left.min(write_size as u64) as usize;
        s.write_all(&chunk[..n]).await.expect("write");
        left -= n as u64;
    }
    s.shutdown().await.expect("shutdown");
    s
}

/// Reads to EOF with a 64 KiB buffer; returns the byte count and the stream.
async fn receive<S: Stream>(mut s: S) -> (u64, S) {
    let mut buf = vec![0u8; READ_BUF];
    let mut total = 0u64;
    loop {
        match s.read(&mut buf).await.expect("read") {
            0 => return (total, s),
            n => total += n as u64,
        }
    }
}

// ---- latency -------------------------------------------------------------------------

/// Round-trip percentiles in microseconds.
struct Latency {
    p50: f64,
    p99: f64,
}

async fn latency(t: Transport, plan: &Plan) -> Latency {
    let samples = match t {
        Transport::Raw | Transport::RawEach | Transport::RawBufs => {
            let (a, b) = raw_pairs(1).pop().expect("one pair");
            ping_pong(a, b, plan).await
        }
        Transport::Tether => {
            let (a, b) = tether_pairs(1).await.pop().expect("one pair");
            ping_pong(a, b, plan).await
        }
        Transport::Yamux => {
            let (mut pairs, _drivers) = yamux_pairs(1).await;
            let (a, b) = pairs.pop().expect("one pair");
            ping_pong(a, b, plan).await
        }
    };
    percentiles(samples)
}

/// Sends one byte from `a`, echoed back by `b`, `warmup + rounds` times; returns the
/// round-trip time of the last `rounds`.
async fn ping_pong<S: Stream>(mut a: S, b: S, plan: &Plan) -> Vec<Duration> {
    let echo = spawn_far(echo(b));
    let mut samples = Vec::with_capacity(plan.rounds);
    for i in 0..plan.warmup + plan.rounds {
        let ping = [i as u8];
        let mut pong = [0u8];
        let start = Instant::now();
        a.write_all(&ping).await.expect("ping write");
        a.flush().await.expect("ping flush");
        a.read_exact(&mut pong).await.expect("pong read");
        let rtt = start.elapsed();
        assert_eq!(pong, ping, "round trip {i}: echo returned another byte");
        if i >= plan.warmup {
            samples.push(rtt);
        }
    }
    a.shutdown().await.expect("shutdown");
    drop(echo.await.expect("echo task panicked"));
    samples
}

/// Echoes every byte until EOF; returns the stream.
async fn echo<S: Stream>(mut s: S) -> S {
    let mut byte = [0u8];
    while s.read(&mut byte).await.expect("echo read") == 1 {
        s.write_all(&byte).await.expect("echo write");
        s.flush().await.expect("echo flush");
    }
    s
}

fn percentiles(mut samples: Vec<Duration>) -> Latency {
    samples.sort_unstable();
    let at = |q: usize| {
        let i = (samples.len() * q / 100).min(samples.len() - 1);
        samples[i].as_secs_f64() * 1e6
    };
    Latency {
        p50: at(50),
        p99: at(99),
    }
}

// ---- report --------------------------------------------------------------------------

fn print_throughput(plan: &Plan, cells: &[Cell]) {
    println!(
        "Throughput, one direction over a Unix socketpair, {}: {REPEATS} \
         rounds of {} MiB per transport (split over the connections), transports taking \
         turns, 64 KiB reads. MiB/s are medians; ratios are the median (range) of the \
         rounds' ratios. raw: one socketpair, one writer and one reader, each with one \
         buffer; raw, 100 buffers: the same, but writing from and reading into a buffer \
         per connection in turn (the memory the connections touch); 100 pairs: a \
         socketpair per connection.\n",
        layout(plan),
        plan.cell_bytes >> 20
    );
    println!(
        "| case | raw MiB/s | raw, 100 buffers MiB/s | 100 pairs MiB/s | tether MiB/s | yamux MiB/s \
         | tether/raw | tether/raw, 100 buffers | tether/yamux |"
    );
    println!("|---|---:|---:|---:|---:|---:|---:|---:|---:|");
    let mib_s = |v: Option<f64>| v.map_or("-".into(), |x| format!("{x:.0}"));
    let ratio = |r: Option<(f64, f64, f64)>| {
        r.map_or("-".into(), |(m, lo, hi)| {
            format!("{m:.2} ({lo:.2}–{hi:.2})")
        })
    };
    for c in cells {
        let plural = if c.conns == 1 { "" } else { "s" };
        println!(
            "| {} conn{plural}, {} KiB writes | {} | {} | {} | {} | {} | {} | {} | {} |",
            c.conns,
            c.write_size / KIB,
            mib_s(c.median(Transport::Raw)),
            mib_s(c.median(Transport::RawBufs)),
            mib_s(c.median(Transport::RawEach)),
            mib_s(c.median(Transport::Tether)),
            mib_s(c.median(Transport::Yamux)),
            ratio(c.ratio(Transport::Tether, Transport::Raw)),
            ratio(c.ratio(Transport::Tether, Transport::RawBufs)),
            ratio(c.ratio(Transport::Tether, Transport::Yamux)),
        );
    }
    println!();
    println!(
        "CPU time per GiB moved, both ends and the kernel's work for them (ms, medians; \
         connection setup included):\n"
    );
    println!("| case | raw | raw, 100 buffers | 100 pairs | tether | yamux | tether/raw |");
    println!("|---|---:|---:|---:|---:|---:|---:|");
    for c in cells {
        let plural = if c.conns == 1 { "" } else { "s" };
        let [raw, each, bufs, tether, yamux] = TRANSPORTS.map(|t| c.median_cpu(t));
        let per = match (tether, raw) {
            (Some(t), Some(r)) => format!("{:.2}", t / r),
            _ => "-".into(),
        };
        println!(
            "| {} conn{plural}, {} KiB writes | {} | {} | {} | {} | {} | {per} |",
            c.conns,
            c.write_size / KIB,
            mib_s(raw),
            mib_s(bufs),
            mib_s(each),
            mib_s(tether),
            mib_s(yamux),
        );
    }
    println!();
}

/// Where the two ends ran, for the tables' captions.
fn layout(plan: &Plan) -> String {
    if plan.ends {
        "each end in its own tokio runtime of 1 worker".into()
    } else {
        format!(
            "both ends in one tokio runtime of {} worker(s)",
            plan.workers
        )
    }
}

fn print_latency(plan: &Plan, rows: &[(Transport, Latency)]) {
    println!(
        "Round trip of a 1-byte ping-pong on one connection, {}, {} round trips after {} \
         warm-up.\n",
        layout(plan),
        plan.rounds,
        plan.warmup
    );
    let raw_p50 = rows
        .iter()
        .find(|(t, _)| matches!(t, Transport::Raw))
        .map_or(0.0, |(_, l)| l.p50);
    println!("| transport | p50 µs | p99 µs | p50 over raw µs |");
    println!("|---|---:|---:|---:|");
    for (t, lat) in rows {
        let name = format!("{t:?}").to_lowercase();
        println!(
            "| {name} | {:.1} | {:.1} | {:+.1} |",
            lat.p50,
            lat.p99,
            lat.p50 - raw_p50
        );
    }
}
