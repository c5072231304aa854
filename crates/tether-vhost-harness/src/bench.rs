//! Throughput and latency of a backend, measured through the harness guest: host to guest
//! through the hybrid socket, guest to host through `<uds>_<port>`, 64 B, 4 KiB and 64 KiB
//! writes; and a 1-byte ping-pong. Both backends go through the same harness, so the
//! ratio compares the backends, while absolute figures include the harness's own cost.

use crate::backend::{Backend, BackendError, BackendProcess};
use crate::guest::{ConnError, ConnectError, Guest, GuestConn, GuestError, GuestOptions};
use crate::hybrid::{self, HandshakeError};
use crate::scenarios::util::accept_within;
use std::fmt::Write as _;
use std::io::{Read, Write};
use std::os::unix::net::{UnixListener, UnixStream};
use std::time::{Duration, Instant};
use thiserror::Error;

/// Why a measurement failed.
#[derive(Debug, Error)]
pub enum BenchError {
    /// The backend could not be started.
    #[error(transparent)]
    Backend(#[from] BackendError),
    /// The guest could not be started.
    #[error(transparent)]
    Guest(#[from] GuestError),
    /// The host-side handshake failed.
    #[error(transparent)]
    Handshake(#[from] HandshakeError),
    /// A guest connect failed.
    #[error(transparent)]
    Connect(#[from] ConnectError),
    /// A guest read or write failed.
    #[error("guest I/O: {0}")]
    Conn(#[from] ConnError),
    /// A host read or write failed.
    #[error("host I/O: {0}")]
    Io(#[from] std::io::Error),
    /// Something else went wrong (the text says what).
    #[error("{0}")]
    Other(String),
}

/// Which way the bytes go.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Direction {
    /// Host application to guest, through the hybrid socket.
    HostToGuest,
    /// Guest to host application, through `<uds>_<port>`.
    GuestToHost,
}

impl std::fmt::Display for Direction {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Direction::HostToGuest => "host to guest",
            Direction::GuestToHost => "guest to host",
        })
    }
}

/// What to measure.
#[derive(Clone, Debug)]
pub struct BenchSettings {
    /// Write sizes, one cell each per direction.
    pub write_sizes: Vec<usize>,
    /// Bytes moved per cell for a write size.
    pub bytes_for: fn(usize) -> usize,
    /// Round trips in the ping-pong (after a tenth as many for warm-up).
    pub round_trips: usize,
    /// Guest setup.
    pub guest: GuestOptions,
}

/// 8 MiB for 64-byte writes, 128 MiB for 4 KiB, 256 MiB for 64 KiB: a few hundred
/// milliseconds a cell on a small machine.
pub fn default_bytes_for(write_size: usize) -> usize {
    (write_size * 128 * 1024).clamp(8 << 20, 256 << 20)
}

impl Default for BenchSettings {
    fn default() -> Self {
        BenchSettings {
            write_sizes: vec![64, 4096, 65536],
            bytes_for: default_bytes_for,
            round_trips: 2000,
            guest: GuestOptions {
                io_timeout: Duration::from_secs(30),
                ..GuestOptions::default()
            },
        }
    }
}

/// One throughput cell.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Throughput {
    /// Which way.
    pub direction: Direction,
    /// Bytes per write.
    pub write_size: usize,
    /// Bytes moved.
    pub bytes: usize,
    /// From the first write to the last byte read.
    pub elapsed: Duration,
    /// RW packets the guest received (host to guest) or data packets it sent (guest to
    /// host) for the cell: bytes over packets is the mean packet size.
    pub packets: u64,
}

impl Throughput {
    /// Gigabits per second.
    pub fn gbps(&self) -> f64 {
        self.bytes as f64 * 8.0 / self.elapsed.as_secs_f64() / 1e9
    }
}

/// Round-trip times of 1-byte ping-pong, host to guest and back.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Latency {
    /// Round trips measured.
    pub samples: usize,
    /// Median.
    pub p50: Duration,
    /// 99th percentile.
    pub p99: Duration,
}

/// Everything measured for one backend.
#[derive(Clone, Debug)]
pub struct BenchReport {
    /// The backend's name.
    pub backend: String,
    /// Throughput cells: host to guest for each size, then guest to host.
    pub throughput: Vec<Throughput>,
    /// Ping-pong latency.
    pub latency: Latency,
}

/// A backend process with its harness guest, ready for connections.
pub struct Rig {
    backend: BackendProcess,
    guest: Guest,
}

impl Rig {
    /// Starts `spec` and a guest on it, and waits for its hybrid socket.
    pub fn start(spec: &Backend, settings: &BenchSettings) -> Result<Rig, BenchError> {
        let backend = spec.spawn()?;
        let guest = Guest::start(backend.socket_path(), settings.guest.clone())?;
        wait_for(&backend)?;
        Ok(Rig { backend, guest })
    }

    /// The backend's name.
    pub fn name(&self) -> &str {
        self.backend.name()
    }
}

/// 1-byte ping-pong through every rig at once, `slices` turns each of `round_trips /
/// slices` round trips, the rigs taking turns within each slice (after a warm-up turn),
/// so that whatever else the machine does in a moment weighs on all of them alike. One
/// [`Latency`] per rig, in order.
pub fn ping_pong_interleaved(
    rigs: &[Rig],
    round_trips: usize,
    slices: usize,
) -> Result<Vec<Latency>, BenchError> {
    let per_slice = (round_trips / slices.max(1)).max(1);
    let turns = slices.max(1) + 1;
    let mut pairs = Vec::new();
    for rig in rigs {
        let (host, conn) = host_pair(&rig.backend, &rig.guest, 3001)?;
        host.set_read_timeout(Some(Duration::from_secs(5)))?;
        pairs.push((host, conn));
    }
    std::thread::scope(|s| {
        let mut echoes = Vec::new();
        let mut hosts = Vec::new();
        for (host, conn) in pairs {
            hosts.push(host);
            echoes.push(s.spawn(move || -> Result<(), ConnError> {
                let mut b = [0u8; 1];
                for _ in 0..turns * per_slice {
                    conn.read_exact(&mut b)?;
                    conn.write_all(&b)?;
                }
                Ok(())
            }));
        }
        let mut samples = vec![Vec::with_capacity(per_slice * slices); hosts.len()];
        let mut b = [0u8; 1];
        for turn in 0..turns {
            for (host, samples) in hosts.iter_mut().zip(&mut samples) {
                for i in 0..per_slice {
                    let start = Instant::now();
                    host.write_all(&[i as u8])?;
                    host.read_exact(&mut b)?;
                    if turn > 0 {
                        samples.push(start.elapsed());
                    }
                }
            }
        }
        for echo in echoes {
            echo.join()
                .map_err(|_| BenchError::Other("echo panicked".into()))??;
        }
        Ok(samples.into_iter().map(latency_of).collect())
    })
}

/// Measures `spec`: one backend process and guest for all cells, a fresh connection each.
pub fn run(spec: &Backend, settings: &BenchSettings) -> Result<BenchReport, BenchError> {
    let Rig { backend, guest } = Rig::start(spec, settings)?;
    let mut throughput = Vec::new();
    for direction in [Direction::HostToGuest, Direction::GuestToHost] {
        for (i, &size) in settings.write_sizes.iter().enumerate() {
            let bytes = (settings.bytes_for)(size);
            let port = 2000 + i as u32 + 100 * (direction as u32);
            guest.reset_stats();
            let elapsed = match direction {
                Direction::HostToGuest => host_to_guest(&backend, &guest, port, size, bytes),
                Direction::GuestToHost => guest_to_host(&backend, &guest, port, size, bytes),
            }
            .map_err(|e| with_stderr(e, &backend))?;
            let stats = guest.stats();
            let packets = match direction {
                Direction::HostToGuest => stats.rx_rw_packets,
                // Control packets are few next to data here: the handshake and updates.
                Direction::GuestToHost => stats.tx_packets,
            };
            throughput.push(Throughput {
                direction,
                write_size: size,
                bytes,
                elapsed,
                packets,
            });
        }
    }
    let latency =
        ping_pong(&backend, &guest, settings.round_trips).map_err(|e| with_stderr(e, &backend))?;
    Ok(BenchReport {
        backend: spec.name().to_owned(),
        throughput,
        latency,
    })
}

/// The median of several rounds of one backend: per throughput cell, the round with the
/// median rate (its bytes, time and packets together); p50 and p99 each the median of the
/// rounds'. Rounds interleaved with another backend's make the ratio of medians robust
/// to a machine whose speed drifts. `None` for no rounds.
pub fn median(rounds: &[BenchReport]) -> Option<BenchReport> {
    let first = rounds.first()?;
    let throughput = (0..first.throughput.len())
        .map(|i| {
            let mut cells: Vec<Throughput> = rounds
                .iter()
                .filter_map(|r| r.throughput.get(i).copied())
                .collect();
            cells.sort_by(|a, b| a.gbps().total_cmp(&b.gbps()));
            cells[cells.len() / 2]
        })
        .collect();
    let middle = |pick: fn(&Latency) -> Duration| {
        let mut v: Vec<Duration> = rounds.iter().map(|r| pick(&r.latency)).collect();
        v.sort();
        v[v.len() / 2]
    };
    Some(BenchReport {
        backend: first.backend.clone(),
        throughput,
        latency: Latency {
            samples: rounds.iter().map(|r| r.latency.samples).sum(),
            p50: middle(|l| l.p50),
            p99: middle(|l| l.p99),
        },
    })
}

/// The ceiling of a host-to-guest cell: the same writer as [`run`]'s (`size`-byte writes
/// from a thread) into a Unix socket whose other end a thread drains in 256 KiB reads,
/// with no backend at all. In Gbps. A backend cannot beat this; when both backends reach
/// it, the cell measures the writer.
pub fn host_writer_ceiling(size: usize, bytes: usize) -> std::io::Result<f64> {
    let (mut writer, mut reader) = UnixStream::pair()?;
    let chunk = vec![0xa5u8; size];
    let writes = bytes / size;
    let start = Instant::now();
    std::thread::scope(|s| {
        let w = s.spawn(move || -> std::io::Result<()> {
            for _ in 0..writes {
                writer.write_all(&chunk)?;
            }
            Ok(())
        });
        let mut buf = vec![0u8; 256 * 1024];
        let mut got = 0;
        while got < writes * size {
            match reader.read(&mut buf)? {
                0 => break,
                n => got += n,
            }
        }
        w.join().expect("writer thread")
    })?;
    Ok((writes * size) as f64 * 8.0 / start.elapsed().as_secs_f64() / 1e9)
}

fn with_stderr(e: BenchError, backend: &BackendProcess) -> BenchError {
    let stderr = backend.stderr();
    let tail: Vec<&str> = stderr.lines().rev().take(5).collect();
    if tail.is_empty() {
        return e;
    }
    BenchError::Other(format!("{e}; backend stderr: {}", tail.join(" | ")))
}

fn wait_for(backend: &BackendProcess) -> Result<(), BenchError> {
    let deadline = Instant::now() + Duration::from_secs(5);
    while !backend.uds_path().exists() {
        if Instant::now() > deadline {
            return Err(BenchError::Other(
                "the backend made no hybrid socket".into(),
            ));
        }
        std::thread::sleep(Duration::from_millis(5));
    }
    Ok(())
}

fn host_pair(
    backend: &BackendProcess,
    guest: &Guest,
    port: u32,
) -> Result<(UnixStream, GuestConn), BenchError> {
    guest.listen(port);
    let (host, _) = hybrid::connect(backend.uds_path(), port, Duration::from_secs(5))?;
    let conn = guest
        .accept_on(port, Duration::from_secs(5))
        .ok_or_else(|| BenchError::Other("the guest accepted nothing".into()))?;
    Ok((host, conn))
}

fn host_to_guest(
    backend: &BackendProcess,
    guest: &Guest,
    port: u32,
    size: usize,
    bytes: usize,
) -> Result<Duration, BenchError> {
    let (mut host, conn) = host_pair(backend, guest, port)?;
    host.set_write_timeout(Some(Duration::from_secs(30)))?;
    let chunk = vec![0xa5u8; size];
    std::thread::scope(|s| {
        let start = Instant::now();
        let writer = s.spawn(move || -> std::io::Result<()> {
            for _ in 0..bytes / size {
                host.write_all(&chunk)?;
            }
            Ok(())
        });
        let mut buf = vec![0u8; 256 * 1024];
        let mut got = 0;
        while got < bytes / size * size {
            match conn.read(&mut buf)? {
                0 => return Err(BenchError::Other(format!("EOF after {got} bytes"))),
                n => got += n,
            }
        }
        let elapsed = start.elapsed();
        writer
            .join()
            .map_err(|_| BenchError::Other("writer panicked".into()))??;
        Ok(elapsed)
    })
}

fn guest_to_host(
    backend: &BackendProcess,
    guest: &Guest,
    port: u32,
    size: usize,
    bytes: usize,
) -> Result<Duration, BenchError> {
    let listener = UnixListener::bind(backend.host_listen_path(port))?;
    let conn = guest.connect(port, Duration::from_secs(5))?;
    let mut host = accept_within(&listener, Duration::from_secs(5))?;
    host.set_read_timeout(Some(Duration::from_secs(30)))?;
    let chunk = vec![0x5au8; size];
    let total = bytes / size * size;
    std::thread::scope(|s| {
        let start = Instant::now();
        let reader = s.spawn(move || -> std::io::Result<Duration> {
            let mut buf = vec![0u8; 256 * 1024];
            let mut got = 0;
            while got < total {
                match host.read(&mut buf)? {
                    0 => return Err(std::io::ErrorKind::UnexpectedEof.into()),
                    n => got += n,
                }
            }
            Ok(start.elapsed())
        });
        for _ in 0..bytes / size {
            conn.write_all(&chunk)?;
        }
        reader
            .join()
            .map_err(|_| BenchError::Other("reader panicked".into()))?
            .map_err(BenchError::from)
    })
}

fn ping_pong(
    backend: &BackendProcess,
    guest: &Guest,
    round_trips: usize,
) -> Result<Latency, BenchError> {
    let (mut host, conn) = host_pair(backend, guest, 3000)?;
    host.set_read_timeout(Some(Duration::from_secs(5)))?;
    let warmup = round_trips / 10;
    let total = warmup + round_trips;
    std::thread::scope(|s| {
        let echo = s.spawn(|| -> Result<(), ConnError> {
            let mut b = [0u8; 1];
            for _ in 0..total {
                conn.read_exact(&mut b)?;
                conn.write_all(&b)?;
            }
            Ok(())
        });
        let mut samples = Vec::with_capacity(round_trips);
        let mut b = [0u8; 1];
        for i in 0..total {
            let start = Instant::now();
            host.write_all(&[i as u8])?;
            host.read_exact(&mut b)?;
            if i >= warmup {
                samples.push(start.elapsed());
            }
        }
        echo.join()
            .map_err(|_| BenchError::Other("echo panicked".into()))??;
        Ok(latency_of(samples))
    })
}

fn latency_of(mut samples: Vec<Duration>) -> Latency {
    samples.sort();
    let at = |q: f64| {
        samples
            .get(((samples.len().max(1) - 1) as f64 * q).round() as usize)
            .copied()
            .unwrap_or_default()
    };
    Latency {
        samples: samples.len(),
        p50: at(0.5),
        p99: at(0.99),
    }
}

fn size_label(n: usize) -> String {
    crate::scenarios::util::size(n)
}

/// Formats reports side by side; with two or more, a ratio column compares the last with
/// the first (above 1 means the last is faster, for latency too).
pub fn format_reports(reports: &[&BenchReport]) -> String {
    let mut out = String::new();
    let col = reports
        .iter()
        .map(|r| r.backend.len())
        .max()
        .unwrap_or(0)
        .max(26);
    let _ = write!(out, "{:28}", "");
    for r in reports {
        let _ = write!(out, "  {:>col$}", r.backend);
    }
    if reports.len() > 1 {
        let _ = write!(out, "  {:>8}", "ratio");
    }
    out.push('\n');
    let Some(first) = reports.first() else {
        return out;
    };
    for (i, cell) in first.throughput.iter().enumerate() {
        let label = format!("{} {} writes", cell.direction, size_label(cell.write_size));
        let _ = write!(out, "{label:28}");
        let values: Vec<f64> = reports
            .iter()
            .map(|r| r.throughput.get(i).map_or(0.0, Throughput::gbps))
            .collect();
        for (v, r) in values.iter().zip(reports) {
            let mean = r
                .throughput
                .get(i)
                .map_or(0, |c| c.bytes as u64 / c.packets.max(1));
            let _ = write!(out, "  {:>col$}", format!("{v:.2} Gbps ({mean} B/pkt)"));
        }
        ratio(&mut out, values[0], values[values.len() - 1], reports.len());
        out.push('\n');
    }
    for (label, pick) in [
        (
            "1-byte round trip p50",
            (|l: &Latency| l.p50) as fn(&Latency) -> Duration,
        ),
        ("1-byte round trip p99", |l: &Latency| l.p99),
    ] {
        let _ = write!(out, "{label:28}");
        let values: Vec<f64> = reports
            .iter()
            .map(|r| pick(&r.latency).as_secs_f64() * 1e6)
            .collect();
        for v in &values {
            let _ = write!(out, "  {:>col$}", format!("{v:.1} us"));
        }
        // Lower is better: invert so that above 1 still means the last one wins.
        ratio(&mut out, values[values.len() - 1], values[0], reports.len());
        out.push('\n');
    }
    out
}

fn ratio(out: &mut String, base: f64, other: f64, n: usize) {
    if n > 1 && base > 0.0 {
        let _ = write!(out, "  {:>7.2}x", other / base);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn report(gbps_64: f64, p50_us: u64) -> BenchReport {
        let cell = |write_size, gbps: f64| Throughput {
            direction: Direction::HostToGuest,
            write_size,
            bytes: 1_000_000_000,
            elapsed: Duration::from_secs_f64(8.0 / gbps),
            packets: (gbps * 1000.0) as u64,
        };
        BenchReport {
            backend: "b".into(),
            throughput: vec![cell(64, gbps_64), cell(4096, 10.0 - gbps_64)],
            latency: Latency {
                samples: 10,
                p50: Duration::from_micros(p50_us),
                p99: Duration::from_micros(p50_us * 3),
            },
        }
    }

    #[test]
    fn the_median_takes_each_cell_and_percentile_on_its_own() {
        let m = median(&[report(1.0, 90), report(3.0, 50), report(2.0, 70)]).unwrap();
        assert!((m.throughput[0].gbps() - 2.0).abs() < 1e-9);
        // The second cell's median comes from another round: 10 - 2 = 8.
        assert!((m.throughput[1].gbps() - 8.0).abs() < 1e-9);
        // Bytes, time and packets stay those of one round.
        assert_eq!(m.throughput[0].packets, 2000);
        assert_eq!(m.latency.p50, Duration::from_micros(70));
        assert_eq!(m.latency.p99, Duration::from_micros(210));
        assert_eq!(m.latency.samples, 30);
        assert!(median(&[]).is_none());
    }
}
