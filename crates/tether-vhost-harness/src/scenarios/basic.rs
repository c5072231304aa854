//! Connections both ways, refusals, half-close, credit and packet sizes.

use super::util::{
    accept_within, exchange, host_read_to_end, host_write_all, ms, packets_for, pattern, same, size,
};
use super::{ensure, Check, Ctx, Fail, Scenario};
use crate::backend::BackendProcess;
use crate::guest::{ConnectError, Guest, GuestConn, TINY_PACKET};
use crate::hybrid::{self, HandshakeError};
use std::os::unix::net::{UnixListener, UnixStream};
use std::time::{Duration, Instant};

/// Firecracker hands out host ports from here.
const HOST_PORT_BASE: u32 = 1 << 30;

pub(super) fn scenarios() -> Vec<Scenario> {
    vec![
        Scenario {
            name: "host-connect",
            about:
                "host to guest through the UDS: CONNECT line, byte-exact OK line, data both ways",
            run: host_connect,
        },
        Scenario {
            name: "host-port",
            about:
                "the OK line names a host port from 2^30 up, distinct per connection (Firecracker)",
            run: host_port,
        },
        Scenario {
            name: "connect-with-data",
            about: "bytes written in the same write as the CONNECT line reach the guest",
            run: connect_with_data,
        },
        Scenario {
            name: "guest-connect",
            about: "guest to host: the backend dials <uds>_<port>, data both ways",
            run: guest_connect,
        },
        Scenario {
            name: "host-connect-refused",
            about: "host to a guest port nobody listens on: the host socket is closed, no OK",
            run: host_connect_refused,
        },
        Scenario {
            name: "guest-connect-refused",
            about: "guest to a host port without <uds>_<port>: RST comes quickly",
            run: guest_connect_refused,
        },
        Scenario {
            name: "half-close-host",
            about: "host shutdown(SHUT_WR): the guest reads EOF and can still answer",
            run: half_close_host,
        },
        Scenario {
            name: "half-close-guest",
            about: "guest SHUTDOWN(SEND): the host reads EOF and can still answer",
            run: half_close_guest,
        },
        Scenario {
            name: "credit-recovery",
            about: "guest stops reading, host writes 8x buf_alloc, guest reads it all intact",
            run: credit_recovery,
        },
        Scenario {
            name: "packet-sizes",
            about: "1 MiB host to guest in 64 KiB writes arrives in large packets, not tiny ones",
            run: packet_sizes,
        },
    ]
}

/// Listens on `port` in the guest, connects from the host and accepts: the usual start.
pub(super) fn host_pair(
    ctx: &Ctx<'_>,
    backend: &BackendProcess,
    guest: &Guest,
    port: u32,
) -> Result<(UnixStream, u32, GuestConn), Fail> {
    guest.listen(port);
    let t = ctx.settings.timeout;
    let (host, ok_port) = hybrid::connect(backend.uds_path(), port, t)
        .map_err(|e| Fail(format!("host connect to guest port {port}: {e}")))?;
    let conn = guest.accept_on(port, t).ok_or_else(|| {
        Fail(format!(
            "OK arrived but the guest accepted nothing on {port}"
        ))
    })?;
    Ok((host, ok_port, conn))
}

/// Connects from the guest to a host listener at `<uds>_<port>` and accepts there.
pub(super) fn guest_pair(
    ctx: &Ctx<'_>,
    backend: &BackendProcess,
    guest: &Guest,
    port: u32,
) -> Result<(UnixListener, UnixStream, GuestConn), Fail> {
    let listener = UnixListener::bind(backend.host_listen_path(port))?;
    let t = ctx.settings.timeout;
    let conn = guest
        .connect(port, t)
        .map_err(|e| Fail(format!("guest connect to host port {port}: {e}")))?;
    let host = accept_within(&listener, t).map_err(|e| {
        Fail(format!(
            "connected, but nothing reached the host listener: {e}"
        ))
    })?;
    Ok((listener, host, conn))
}

fn host_connect(ctx: &mut Ctx<'_>) -> Check {
    let (backend, guest) = ctx.setup()?;
    let (host, ok_port, conn) = host_pair(ctx, &backend, &guest, 1234)?;
    let data = exchange(&host, &conn, ctx.settings.data_bytes)?;
    Ok(format!("`OK {ok_port}`; {data}"))
}

fn host_port(ctx: &mut Ctx<'_>) -> Check {
    let (backend, guest) = ctx.setup()?;
    let (_h1, p1, c1) = host_pair(ctx, &backend, &guest, 1234)?;
    let (_h2, p2, c2) = host_pair(ctx, &backend, &guest, 1234)?;
    let seen: Vec<u32> = [&c1, &c2]
        .iter()
        .filter_map(|c| c.ports().map(|(_, host)| host))
        .collect();
    let detail = format!("OK lines name {p1} and {p2}; the guest saw host ports {seen:?}");
    ensure!(
        p1 >= HOST_PORT_BASE && p2 >= HOST_PORT_BASE,
        "{detail}: below 2^30 (the guest port echoed?)"
    );
    ensure!(p1 != p2, "{detail}: the same port twice");
    ensure!(
        seen == [p1, p2],
        "{detail}: the OK ports are not the connections' host ports"
    );
    Ok(detail)
}

fn connect_with_data(ctx: &mut Ctx<'_>) -> Check {
    let (backend, guest) = ctx.setup()?;
    guest.listen(1234);
    let early = b"early bytes in the CONNECT write";
    let t = ctx.settings.timeout;
    let (_host, ok_port) = hybrid::connect_with(backend.uds_path(), 1234, early, t)
        .map_err(|e| Fail(format!("host connect: {e}")))?;
    let mut conn = guest
        .accept_on(1234, t)
        .ok_or_else(|| Fail("OK arrived but the guest accepted nothing".into()))?;
    conn.set_timeout(Duration::from_secs(1));
    let mut got = vec![0u8; early.len()];
    match conn.read_exact(&mut got) {
        Ok(()) => {
            same("early bytes", early, &got)?;
            Ok(format!(
                "`OK {ok_port}`; {} early bytes arrived",
                early.len()
            ))
        }
        Err(e) => Err(Fail(format!(
            "the {} bytes sent with the CONNECT line never reached the guest ({e}): swallowed",
            early.len()
        ))),
    }
}

fn guest_connect(ctx: &mut Ctx<'_>) -> Check {
    let (backend, guest) = ctx.setup()?;
    let (_l, host, conn) = guest_pair(ctx, &backend, &guest, 5000)?;
    let ports = conn.ports().unwrap_or_default();
    let data = exchange(&host, &conn, ctx.settings.data_bytes)?;
    Ok(format!(
        "guest port {} to host port {}; {data}",
        ports.0, ports.1
    ))
}

fn host_connect_refused(ctx: &mut Ctx<'_>) -> Check {
    let (backend, guest) = ctx.setup()?;
    let mark = guest.rx_mark();
    let start = Instant::now();
    let r = hybrid::connect(backend.uds_path(), 4321, ctx.settings.timeout);
    let took = start.elapsed();
    let request_seen = guest
        .rx_since(mark)
        .iter()
        .any(|r| r.header.dst_port == 4321);
    match r {
        Err(HandshakeError::Closed { got }) if got.is_empty() => Ok(format!(
            "socket closed without a line after {} (REQUEST reached the guest: {request_seen})",
            ms(took)
        )),
        Err(HandshakeError::Closed { got }) => Err(Fail(format!(
            "closed, but only after sending {:?}",
            String::from_utf8_lossy(&got)
        ))),
        Ok((_, port)) => Err(Fail(format!("`OK {port}` for a port nobody listens on"))),
        Err(e) => Err(Fail(format!("{e} instead of a closed socket"))),
    }
}

fn guest_connect_refused(ctx: &mut Ctx<'_>) -> Check {
    let (_backend, guest) = ctx.setup()?;
    // Longer than the guest's own 2 s connect timeout, so a hang shows as its expiry.
    match guest.connect(5001, Duration::from_secs(3)) {
        Err(ConnectError::Refused(t)) if t < Duration::from_millis(500) => {
            Ok(format!("RST after {}", ms(t)))
        }
        Err(ConnectError::Refused(t)) => Err(Fail(format!("RST only after {}", ms(t)))),
        Err(ConnectError::TimedOut(t)) => Err(Fail(format!(
            "no RST: the guest connect hung until its timeout ({})",
            ms(t)
        ))),
        Ok(_) => Err(Fail(
            "connected although nothing listens at <uds>_5001".into(),
        )),
        Err(e) => Err(Fail(format!("{e}"))),
    }
}

fn half_close_host(ctx: &mut Ctx<'_>) -> Check {
    let (backend, guest) = ctx.setup()?;
    let (host, _, conn) = host_pair(ctx, &backend, &guest, 1234)?;
    let gport = conn.ports().map_or(0, |p| p.0);
    let mark = guest.rx_mark();
    let request = pattern(10_000, 3);
    let t = ctx.settings.timeout;
    host_write_all(&host, &request, t)?;
    host.shutdown(std::net::Shutdown::Write)?;
    let got = conn.read_to_end().map_err(|e| {
        Fail(format!(
            "guest waiting for EOF after the host's SHUT_WR: {e} (guest got {})",
            packets_for(&guest, mark, gport)
        ))
    })?;
    same("request", &request, &got)?;
    let response = pattern(20_000, 4);
    conn.write_all(&response).map_err(|e| {
        Fail(format!(
            "guest answering after reading EOF: {e}; for the host's SHUT_WR the guest got {}",
            packets_for(&guest, mark, gport)
        ))
    })?;
    conn.shutdown_write()
        .map_err(|e| Fail(format!("guest shutdown: {e}")))?;
    let back = host_read_to_end(&host, t)?;
    same("response after half-close", &response, &back)?;
    Ok(format!(
        "guest read {} then EOF, answered {} the host read in full",
        size(request.len()),
        size(response.len())
    ))
}

fn half_close_guest(ctx: &mut Ctx<'_>) -> Check {
    let (backend, guest) = ctx.setup()?;
    let (_l, host, conn) = guest_pair(ctx, &backend, &guest, 5000)?;
    let request = pattern(10_000, 5);
    conn.write_all(&request)
        .map_err(|e| Fail(format!("guest write: {e}")))?;
    conn.shutdown_write()
        .map_err(|e| Fail(format!("guest shutdown: {e}")))?;
    let t = ctx.settings.timeout;
    let got = host_read_to_end(&host, t).map_err(|e| {
        Fail(format!(
            "no EOF on the host within {t:?} of the guest's SHUTDOWN(SEND) ({})",
            e.0
        ))
    })?;
    same("request", &request, &got)?;
    let response = pattern(20_000, 6);
    host_write_all(&host, &response, t)?;
    host.shutdown(std::net::Shutdown::Write)?;
    let back = conn.read_to_end().map_err(|e| {
        Fail(format!(
            "guest reading the answer after its half-close: {e}"
        ))
    })?;
    same("response after half-close", &response, &back)?;
    Ok(format!(
        "host read {} then EOF, answered {} the guest read in full",
        size(request.len()),
        size(response.len())
    ))
}

fn credit_recovery(ctx: &mut Ctx<'_>) -> Check {
    let (backend, guest) = ctx.setup()?;
    let (host, _, conn) = host_pair(ctx, &backend, &guest, 1234)?;
    let buf_alloc = guest.options().buf_alloc as usize;
    let total = buf_alloc * 8;
    let data = pattern(total, 7);
    std::thread::scope(|s| {
        let writer = s.spawn(|| host_write_all(&host, &data, Duration::from_secs(20)));
        // Let the host push until the guest's credit is gone.
        std::thread::sleep(Duration::from_millis(500));
        let held = conn.readable_len();
        ensure!(
            held <= buf_alloc,
            "the guest holds {held} bytes, more than its buf_alloc {buf_alloc}"
        );
        // A backend may buffer a lot itself; what matters is that no byte is lost.
        let blocked = !writer.is_finished();
        let mut got = vec![0u8; total];
        conn.read_exact(&mut got)
            .map_err(|e| Fail(format!("guest reading after the stall: {e}")))?;
        super::util::join(writer)?;
        same("data after the stall", &data, &got)?;
        let writer_state = if blocked {
            "the host writer blocked"
        } else {
            "the host writer never blocked (the backend buffered the rest)"
        };
        Ok(format!(
            "guest held {} (buf_alloc {}) while {writer_state}; {} read intact",
            size(held),
            size(buf_alloc),
            size(total)
        ))
    })
}

fn packet_sizes(ctx: &mut Ctx<'_>) -> Check {
    let (backend, guest) = ctx.setup()?;
    let (host, _, conn) = host_pair(ctx, &backend, &guest, 1234)?;
    let total = 1 << 20;
    let data = pattern(total, 8);
    guest.reset_stats();
    std::thread::scope(|s| {
        let writer = s.spawn(|| {
            for chunk in data.chunks(64 * 1024) {
                host_write_all(&host, chunk, Duration::from_secs(10))?;
            }
            Ok(())
        });
        let got = guest_read(&conn, total)?;
        super::util::join(writer)?;
        same("data", &data, &got)
    })?;
    let st = guest.stats();
    let mean = total as u64 / st.rx_rw_packets.max(1);
    let detail = format!(
        "{} RW packets, mean {} B, {} below {} B (rx buffer room {} B)",
        st.rx_rw_packets,
        mean,
        st.rx_tiny_rw,
        TINY_PACKET,
        guest.rx_payload_room()
    );
    ensure!(
        st.rx_tiny_rw * 100 <= st.rx_rw_packets,
        "{detail}: more than 1% tiny packets"
    );
    ensure!(mean >= 1024, "{detail}: packets too small on average");
    Ok(detail)
}

/// Reads exactly `n` bytes on the guest side.
pub(super) fn guest_read(conn: &GuestConn, n: usize) -> Result<Vec<u8>, Fail> {
    let mut got = vec![0u8; n];
    conn.read_exact(&mut got)
        .map_err(|e| Fail(format!("guest read: {e}")))?;
    Ok(got)
}
