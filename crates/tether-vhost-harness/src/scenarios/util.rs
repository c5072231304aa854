//! Helpers the scenarios share: test data, host-side socket calls with timeouts, and the
//! both-ways data exchange.

use super::Fail;
use crate::guest::GuestConn;
use std::io::{ErrorKind, Read, Write};
use std::os::unix::net::{UnixListener, UnixStream};
use std::time::{Duration, Instant};

/// Deterministic pseudo-random bytes (xorshift), different per `seed`.
pub fn pattern(len: usize, seed: u64) -> Vec<u8> {
    let mut x = seed.wrapping_mul(0x9e37_79b9_7f4a_7c15) | 1;
    let mut out = Vec::with_capacity(len + 8);
    while out.len() < len {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        out.extend_from_slice(&x.to_le_bytes());
    }
    out.truncate(len);
    out
}

/// FNV-1a, 64 bits: a checksum to name in reports.
pub fn fnv64(data: &[u8]) -> u64 {
    data.iter().fold(0xcbf2_9ce4_8422_2325, |h, b| {
        (h ^ u64::from(*b)).wrapping_mul(0x0100_0000_01b3)
    })
}

/// Accepts one connection within `timeout`.
pub fn accept_within(listener: &UnixListener, timeout: Duration) -> std::io::Result<UnixStream> {
    listener.set_nonblocking(true)?;
    let deadline = Instant::now() + timeout;
    loop {
        match listener.accept() {
            Ok((s, _)) => {
                s.set_nonblocking(false)?;
                return Ok(s);
            }
            Err(e) if e.kind() == ErrorKind::WouldBlock => {
                if Instant::now() >= deadline {
                    return Err(ErrorKind::TimedOut.into());
                }
                std::thread::sleep(Duration::from_millis(1));
            }
            Err(e) => return Err(e),
        }
    }
}

/// Reads exactly `n` bytes; each read may wait up to `timeout`.
pub fn host_read_exact(
    mut stream: &UnixStream,
    n: usize,
    timeout: Duration,
) -> Result<Vec<u8>, Fail> {
    stream.set_read_timeout(Some(timeout))?;
    let mut out = vec![0u8; n];
    let mut got = 0;
    while got < n {
        match stream.read(&mut out[got..]) {
            Ok(0) => return Err(Fail(format!("host read EOF after {got} of {n} bytes"))),
            Ok(k) => got += k,
            Err(e) if e.kind() == ErrorKind::Interrupted => {}
            Err(e) => return Err(Fail(format!("host read after {got} of {n} bytes: {e}"))),
        }
    }
    Ok(out)
}

/// Reads until EOF; each read may wait up to `timeout`.
pub fn host_read_to_end(mut stream: &UnixStream, timeout: Duration) -> Result<Vec<u8>, Fail> {
    stream.set_read_timeout(Some(timeout))?;
    let mut out = Vec::new();
    let mut buf = [0u8; 64 * 1024];
    loop {
        match stream.read(&mut buf) {
            Ok(0) => return Ok(out),
            Ok(k) => out.extend_from_slice(&buf[..k]),
            Err(e) if e.kind() == ErrorKind::Interrupted => {}
            Err(e) => {
                return Err(Fail(format!(
                    "host read after {} bytes, waiting for EOF: {e}",
                    out.len()
                )))
            }
        }
    }
}

/// Writes all of `data`; each write may wait up to `timeout`.
pub fn host_write_all(mut stream: &UnixStream, data: &[u8], timeout: Duration) -> Result<(), Fail> {
    stream.set_write_timeout(Some(timeout))?;
    stream
        .write_all(data)
        .map_err(|e| Fail(format!("host write of {} bytes: {e}", data.len())))
}

/// Sends `n` bytes each way at the same time and checks both arrive intact. Returns a
/// summary naming the checksums.
pub fn exchange(host: &UnixStream, guest: &GuestConn, n: usize) -> Result<String, Fail> {
    let to_guest = pattern(n, 1);
    let to_host = pattern(n, 2);
    let io = Duration::from_secs(10);
    std::thread::scope(|s| {
        let hw = s.spawn(|| host_write_all(host, &to_guest, io));
        let gw = s.spawn(|| {
            guest
                .write_all(&to_host)
                .map_err(|e| Fail(format!("guest write: {e}")))
        });
        let hr = s.spawn(|| host_read_exact(host, n, io));
        let mut got = vec![0u8; n];
        let gr = guest
            .read_exact(&mut got)
            .map_err(|e| Fail(format!("guest read: {e}")));
        join(hw)?;
        join(gw)?;
        let host_got = join(hr)?;
        gr?;
        same("host to guest", &to_guest, &got)?;
        same("guest to host", &to_host, &host_got)?;
        Ok(format!(
            "{} each way intact (fnv {:016x} / {:016x})",
            size(n),
            fnv64(&to_guest),
            fnv64(&to_host)
        ))
    })
}

/// Compares received data with what was sent, naming the first difference.
pub fn same(what: &str, sent: &[u8], got: &[u8]) -> Result<(), Fail> {
    if sent == got {
        return Ok(());
    }
    let at = sent.iter().zip(got).position(|(a, b)| a != b);
    Err(Fail(format!(
        "{what}: {} bytes sent, {} received, first difference at {:?} (fnv {:016x} vs {:016x})",
        sent.len(),
        got.len(),
        at,
        fnv64(sent),
        fnv64(got)
    )))
}

/// Joins a scoped thread, turning a panic into a failure.
pub fn join<T>(h: std::thread::ScopedJoinHandle<'_, Result<T, Fail>>) -> Result<T, Fail> {
    h.join()
        .unwrap_or_else(|_| Err(Fail("a helper thread panicked".into())))
}

/// A byte count in the unit that reads best.
pub fn size(n: usize) -> String {
    if n >= 1 << 20 && n % (1 << 20) == 0 {
        format!("{} MiB", n >> 20)
    } else if n >= 1 << 10 && n % (1 << 10) == 0 {
        format!("{} KiB", n >> 10)
    } else {
        format!("{n} B")
    }
}

/// A duration in milliseconds with one decimal.
pub fn ms(d: Duration) -> String {
    format!("{:.1} ms", d.as_secs_f64() * 1000.0)
}

/// The packets the guest received for its port `guest_port` since `mark`, as
/// `OP(flags)` words, to say what a backend did instead of what was expected.
pub fn packets_for(guest: &crate::guest::Guest, mark: u64, guest_port: u32) -> String {
    let ops: Vec<String> = guest
        .rx_since(mark)
        .iter()
        .filter(|r| r.header.dst_port == guest_port)
        .map(|r| {
            let name = r.header.op().map_or_else(
                || format!("op{}", r.header.op),
                |o| format!("{o:?}").to_uppercase(),
            );
            match r.header.op() {
                Some(tether_vsock::Op::Shutdown) => format!("{name}({})", r.header.flags),
                Some(tether_vsock::Op::Rw) => format!("{name}[{}]", r.header.len),
                _ => name,
            }
        })
        .collect();
    if ops.is_empty() {
        "nothing".into()
    } else {
        ops.join(" ")
    }
}

/// Raises this process's open-file limit to at least `want` (backends spawned afterwards
/// inherit it): a thousand connections take two thousand descriptors here.
pub fn raise_fd_limit(want: u64) -> Result<(), Fail> {
    use nix::sys::resource::{getrlimit, setrlimit, Resource};
    let (soft, hard) = getrlimit(Resource::RLIMIT_NOFILE)?;
    if soft >= want {
        return Ok(());
    }
    if hard < want {
        return Err(Fail(format!(
            "the open-file limit (hard {hard}) is below the {want} this scenario needs"
        )));
    }
    setrlimit(Resource::RLIMIT_NOFILE, want, hard)?;
    Ok(())
}
