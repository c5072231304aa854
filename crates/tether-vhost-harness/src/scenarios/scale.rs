//! Many connections at once, and what happens beyond the backend's bound.

use super::basic::{guest_pair, host_pair};
use super::util::{accept_within, exchange, host_read_exact, host_write_all, ms, raise_fd_limit};
use super::{ensure, Check, Ctx, Fail, Scenario};
use crate::backend::BackendProcess;
use crate::guest::{Guest, GuestConn};
use crate::hybrid::{self, HandshakeError};
use std::os::unix::net::{UnixListener, UnixStream};
use std::time::{Duration, Instant};

pub(super) fn scenarios() -> Vec<Scenario> {
    vec![
        Scenario {
            name: "many-host-connections",
            about: "1023 concurrent host-to-guest connections, each carrying data both ways",
            run: many_host_connections,
        },
        Scenario {
            name: "many-guest-connections",
            about: "1023 concurrent guest-to-host connections, each carrying data both ways",
            run: many_guest_connections,
        },
        Scenario {
            name: "connection-limit",
            about: "beyond the backend's bound a clear refusal, and service afterwards",
            run: connection_limit,
        },
    ]
}

/// Sends an 8-byte tag each way on every pair, all connections open at once.
fn tag_each(pairs: &[(UnixStream, GuestConn)], t: Duration) -> Result<(), Fail> {
    for (i, (host, _)) in pairs.iter().enumerate() {
        host_write_all(host, &(i as u64).to_le_bytes(), t)?;
    }
    for (i, (_, conn)) in pairs.iter().enumerate() {
        let mut tag = [0u8; 8];
        conn.read_exact(&mut tag)
            .map_err(|e| Fail(format!("connection {i}: guest read: {e}")))?;
        ensure!(
            u64::from_le_bytes(tag) == i as u64,
            "connection {i}: the guest got tag {} (crossed connections)",
            u64::from_le_bytes(tag)
        );
        conn.write_all(&(!(i as u64)).to_le_bytes())
            .map_err(|e| Fail(format!("connection {i}: guest write: {e}")))?;
    }
    for (i, (host, _)) in pairs.iter().enumerate() {
        let back =
            host_read_exact(host, 8, t).map_err(|e| Fail(format!("connection {i}: {}", e.0)))?;
        let tag = u64::from_le_bytes(back.try_into().expect("8 bytes"));
        ensure!(
            tag == !(i as u64),
            "connection {i}: the host got tag {:#x} (crossed connections)",
            !tag
        );
    }
    Ok(())
}

/// Descriptors for `n` connections on both ends plus slack.
fn fds_for(n: usize) -> u64 {
    4 * n as u64 + 256
}

fn many_host_connections(ctx: &mut Ctx<'_>) -> Check {
    let n = ctx.settings.connections;
    raise_fd_limit(fds_for(n))?;
    let (backend, guest) = ctx.setup()?;
    let t = ctx.settings.timeout;
    guest.listen(1234);
    let start = Instant::now();
    let mut pairs = Vec::with_capacity(n);
    for i in 0..n {
        let (host, _) = hybrid::connect(backend.uds_path(), 1234, t)
            .map_err(|e| Fail(format!("connection {i} of {n}: {e}")))?;
        let conn = guest
            .accept_on(1234, t)
            .ok_or_else(|| Fail(format!("connection {i} of {n}: OK but nothing accepted")))?;
        pairs.push((host, conn));
    }
    let opened = start.elapsed();
    ensure!(
        guest.connections() >= n,
        "only {} connections live in the guest",
        guest.connections()
    );
    tag_each(&pairs, t)?;
    Ok(format!(
        "{n} open at once (opened in {}), a tag each way on every one",
        ms(opened)
    ))
}

fn many_guest_connections(ctx: &mut Ctx<'_>) -> Check {
    let n = ctx.settings.connections;
    raise_fd_limit(fds_for(n))?;
    let (backend, guest) = ctx.setup()?;
    let t = ctx.settings.timeout;
    let listener = UnixListener::bind(backend.host_listen_path(5000))?;
    let start = Instant::now();
    let (conns, hosts) = std::thread::scope(|s| {
        let acceptor = s.spawn(|| {
            (0..n)
                .map(|i| {
                    accept_within(&listener, t)
                        .map_err(|e| Fail(format!("host accept {i} of {n}: {e}")))
                })
                .collect::<Result<Vec<_>, _>>()
        });
        let conns = (0..n)
            .map(|i| {
                guest
                    .connect(5000, t)
                    .map_err(|e| Fail(format!("guest connect {i} of {n}: {e}")))
            })
            .collect::<Result<Vec<_>, _>>();
        let hosts = super::util::join(acceptor);
        Ok::<_, Fail>((conns?, hosts?))
    })?;
    let opened = start.elapsed();
    // Pair them up by a tag the guest sends first: accept order need not be connect order.
    for (i, conn) in conns.iter().enumerate() {
        conn.write_all(&(i as u64).to_le_bytes())
            .map_err(|e| Fail(format!("connection {i}: guest write: {e}")))?;
    }
    let mut by_tag: Vec<Option<UnixStream>> = (0..n).map(|_| None).collect();
    for host in hosts {
        let tag = host_read_exact(&host, 8, t)?;
        let i = u64::from_le_bytes(tag.try_into().expect("8 bytes")) as usize;
        ensure!(i < n && by_tag[i].is_none(), "bad or repeated tag {i}");
        by_tag[i] = Some(host);
    }
    let pairs: Vec<(UnixStream, GuestConn)> = by_tag
        .into_iter()
        .map(|h| h.expect("every tag seen once"))
        .zip(conns)
        .collect();
    tag_each(&pairs, t)?;
    Ok(format!(
        "{n} open at once (opened in {}), a tag each way on every one",
        ms(opened)
    ))
}

/// How the probe ended.
enum Probe {
    /// Every connection in the probe succeeded.
    NoBound,
    /// Connection `at` was refused this way.
    Refused { at: usize, how: String },
}

fn probe_bound(
    backend: &BackendProcess,
    guest: &Guest,
    max: usize,
    t: Duration,
    pairs: &mut Vec<(UnixStream, GuestConn)>,
) -> Result<Probe, Fail> {
    for i in 0..max {
        match hybrid::connect(backend.uds_path(), 1234, t) {
            Ok((host, _)) => {
                let conn = guest
                    .accept_on(1234, t)
                    .ok_or_else(|| Fail(format!("connection {i}: OK but nothing accepted")))?;
                pairs.push((host, conn));
            }
            Err(HandshakeError::Closed { .. }) => {
                return Ok(Probe::Refused {
                    at: i,
                    how: "host socket closed without OK".into(),
                })
            }
            Err(HandshakeError::Connect(e)) => {
                return Ok(Probe::Refused {
                    at: i,
                    how: format!("UDS connect failed: {e}"),
                })
            }
            Err(e) => {
                return Err(Fail(format!(
                    "connection {i}: {e}: neither OK nor a clear refusal"
                )))
            }
        }
    }
    Ok(Probe::NoBound)
}

/// After the probe's connections are gone, a fresh one must work (retrying briefly while
/// the backend reaps the old ones).
fn still_serving(ctx: &Ctx<'_>, backend: &BackendProcess, guest: &Guest) -> Result<(), Fail> {
    let deadline = Instant::now() + Duration::from_secs(3);
    loop {
        let attempt = host_pair(ctx, backend, guest, 4000)
            .and_then(|(h, _, c)| exchange(&h, &c, 64 * 1024).map(|_| ()));
        match attempt {
            Ok(()) => return Ok(()),
            Err(e) if Instant::now() >= deadline => {
                return Err(Fail(format!("no service after the probe: {}", e.0)))
            }
            Err(_) => std::thread::sleep(Duration::from_millis(100)),
        }
    }
}

fn connection_limit(ctx: &mut Ctx<'_>) -> Check {
    let max = ctx.settings.limit_probe;
    raise_fd_limit(fds_for(max))?;
    let (backend, guest) = ctx.setup()?;
    let t = ctx.settings.timeout;
    guest.listen(1234);
    let mut pairs = Vec::with_capacity(max);
    let probe = probe_bound(&backend, &guest, max, t, &mut pairs)?;
    let open = pairs.len();
    drop(pairs);
    still_serving(ctx, &backend, &guest)?;
    // The other direction must still work too.
    let (_l, h, c) = guest_pair(ctx, &backend, &guest, 5000)?;
    exchange(&h, &c, 64 * 1024)?;
    match probe {
        Probe::Refused { at, how } => Ok(format!(
            "bound at {at} connections ({how}); serving both ways afterwards"
        )),
        Probe::NoBound => Err(Fail(format!(
            "no bound: all {open} probe connections accepted; serving afterwards"
        ))),
    }
}
