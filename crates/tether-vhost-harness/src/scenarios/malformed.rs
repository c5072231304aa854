//! Malformed packets from the guest. Each goes to a fresh backend; the scenario records
//! whether it was answered by RST or dropped, whether the device gave the chain back and
//! what reached the host, then checks the backend still serves connections both ways.

use super::basic::{guest_pair, host_pair};
use super::util::{accept_within, exchange, ms};
use super::{ensure, Check, Ctx, Fail, Scenario};
use crate::backend::BackendProcess;
use crate::guest::{Guest, TxLayout};
use std::io::Read;
use std::os::unix::net::{UnixListener, UnixStream};
use std::time::{Duration, Instant};
use tether_vsock::{Header, Op, SocketType, HEADER_LEN, HOST_CID};

/// How long to watch for a reply to a malformed packet.
const WATCH: Duration = Duration::from_millis(500);

pub(super) fn scenarios() -> Vec<Scenario> {
    vec![
        Scenario {
            name: "malformed-bad-op",
            about: "a packet with op 99 for no connection",
            run: bad_op,
        },
        Scenario {
            name: "malformed-bad-type",
            about: "a REQUEST of socket type 7 to a listening host port",
            run: bad_type,
        },
        Scenario {
            name: "malformed-len-beyond-chain",
            about: "an RW whose len (1000) exceeds the 10 bytes in its descriptor, on a live connection",
            run: len_beyond_chain,
        },
        Scenario {
            name: "malformed-len-over-max",
            about: "an RW of 70000 bytes (over 64 KiB) on a live connection",
            run: len_over_max,
        },
        Scenario {
            name: "malformed-wrong-src-cid",
            about: "a REQUEST from CID 99 instead of the guest's CID to a listening host port",
            run: wrong_src_cid,
        },
        Scenario {
            name: "malformed-short-chain",
            about: "a chain of 20 bytes, shorter than the 44-byte header",
            run: short_chain,
        },
    ]
}

/// A header from the guest to the host with everything but the interesting fields sane.
fn header(guest: &Guest, src_port: u32, dst_port: u32, op: u16) -> Header {
    Header {
        src_cid: guest.cid(),
        dst_cid: HOST_CID,
        src_port,
        dst_port,
        len: 0,
        type_: SocketType::Stream.to_u16(),
        op,
        flags: 0,
        buf_alloc: 256 * 1024,
        fwd_cnt: 0,
    }
}

/// What happened to one raw packet.
struct Observed {
    rst: Option<Duration>,
    returned: Option<u32>,
}

impl Observed {
    fn describe(&self) -> String {
        let reply = match self.rst {
            Some(t) => format!("answered by RST after {}", ms(t)),
            None => format!("dropped (no RST within {})", ms(WATCH)),
        };
        let chain = match self.returned {
            Some(len) => format!("chain returned (used len {len})"),
            None => "chain never returned to the used ring".into(),
        };
        format!("{reply}; {chain}")
    }
}

/// Sends `bytes` raw and watches for an RST to `src_port` and for the chain's return.
fn send_and_watch(
    guest: &Guest,
    bytes: &[u8],
    layout: TxLayout,
    src_port: u32,
) -> Result<Observed, Fail> {
    let mark = guest.rx_mark();
    let start = Instant::now();
    let id = guest.send_raw(bytes, layout)?;
    let rst = guest
        .wait_rx(mark, WATCH, |r| {
            r.header.op() == Some(Op::Rst) && r.header.dst_port == src_port
        })
        .map(|r| r.at.saturating_duration_since(start));
    let returned = guest.raw_returned(id, WATCH);
    Ok(Observed { rst, returned })
}

/// Passes when the backend still serves; fails when it kept the chain (its descriptors
/// are lost to the guest for good), saying it still serves.
fn verdict(seen: &Observed, extra: &str) -> Check {
    let detail = format!("{}{extra}; still serving", seen.describe());
    ensure!(
        seen.returned.is_some(),
        "{detail}, but the device kept the chain: a driver never gets those descriptors back"
    );
    Ok(detail)
}

/// The backend must still be alive and serve a connection each way.
fn still_serving(ctx: &Ctx<'_>, backend: &mut BackendProcess, guest: &Guest) -> Result<(), Fail> {
    if let Some(status) = backend.exit_status() {
        return Err(Fail(format!("the backend exited ({status})")));
    }
    let (h, _, c) = host_pair(ctx, backend, guest, 4000)
        .map_err(|e| Fail(format!("afterwards, host to guest: {}", e.0)))?;
    exchange(&h, &c, 64 * 1024).map_err(|e| Fail(format!("afterwards, host to guest: {}", e.0)))?;
    let (_l, h, c) = guest_pair(ctx, backend, guest, 4001)
        .map_err(|e| Fail(format!("afterwards, guest to host: {}", e.0)))?;
    exchange(&h, &c, 64 * 1024).map_err(|e| Fail(format!("afterwards, guest to host: {}", e.0)))?;
    Ok(())
}

/// Whether the backend dialed `listener` within the watch time.
fn dialed(listener: &UnixListener) -> bool {
    accept_within(listener, WATCH).is_ok()
}

/// Bytes that reached the host side of a live connection within the watch time.
fn forwarded(host: &UnixStream) -> Result<usize, Fail> {
    host.set_read_timeout(Some(WATCH))?;
    let mut buf = vec![0u8; 256 * 1024];
    let mut total = 0;
    let deadline = Instant::now() + WATCH;
    while Instant::now() < deadline {
        match (&*host).read(&mut buf) {
            Ok(0) | Err(_) => break,
            Ok(n) => total += n,
        }
    }
    Ok(total)
}

fn bad_op(ctx: &mut Ctx<'_>) -> Check {
    let (mut backend, guest) = ctx.setup()?;
    let h = header(&guest, 7000, 7001, 99);
    let seen = send_and_watch(&guest, &h.encode(), TxLayout::Single, 7000)?;
    still_serving(ctx, &mut backend, &guest)?;
    verdict(&seen, "")
}

fn bad_type(ctx: &mut Ctx<'_>) -> Check {
    let (mut backend, guest) = ctx.setup()?;
    let listener = UnixListener::bind(backend.host_listen_path(7001))?;
    let mut h = header(&guest, 7000, 7001, Op::Request.to_u16());
    h.type_ = 7;
    let seen = send_and_watch(&guest, &h.encode(), TxLayout::Single, 7000)?;
    let dial = dialed(&listener);
    still_serving(ctx, &mut backend, &guest)?;
    verdict(&seen, &format!("; host port dialed anyway: {dial}"))
}

/// A live guest-to-host connection for the data-carrying malformed packets.
fn live(
    ctx: &Ctx<'_>,
    backend: &BackendProcess,
    guest: &Guest,
) -> Result<
    (
        UnixListener,
        UnixStream,
        crate::guest::GuestConn,
        (u32, u32),
    ),
    Fail,
> {
    let (l, host, conn) = guest_pair(ctx, backend, guest, 7001)?;
    let ports = conn
        .ports()
        .ok_or_else(|| Fail("connection vanished".into()))?;
    Ok((l, host, conn, ports))
}

fn rw_on_live(ctx: &mut Ctx<'_>, declared: u32, carried: usize) -> Check {
    let (mut backend, guest) = ctx.setup()?;
    let (_l, host, _conn, (gport, hport)) = live(ctx, &backend, &guest)?;
    let mut h = header(&guest, gport, hport, Op::Rw.to_u16());
    h.len = declared;
    let mut bytes = h.encode().to_vec();
    bytes.extend(std::iter::repeat_n(0x5a, carried));
    let seen = send_and_watch(&guest, &bytes, TxLayout::Single, gport)?;
    let got = forwarded(&host)?;
    still_serving(ctx, &mut backend, &guest)?;
    ensure!(
        got <= carried,
        "{}; {got} bytes reached the host, more than the {carried} the chain carried",
        seen.describe()
    );
    verdict(&seen, &format!("; {got} bytes reached the host"))
}

fn len_beyond_chain(ctx: &mut Ctx<'_>) -> Check {
    rw_on_live(ctx, 1000, 10)
}

fn len_over_max(ctx: &mut Ctx<'_>) -> Check {
    rw_on_live(ctx, 70_000, 70_000)
}

fn wrong_src_cid(ctx: &mut Ctx<'_>) -> Check {
    let (mut backend, guest) = ctx.setup()?;
    let listener = UnixListener::bind(backend.host_listen_path(7001))?;
    let mut h = header(&guest, 7000, 7001, Op::Request.to_u16());
    h.src_cid = 99;
    let seen = send_and_watch(&guest, &h.encode(), TxLayout::Single, 7000)?;
    let dial = dialed(&listener);
    still_serving(ctx, &mut backend, &guest)?;
    verdict(&seen, &format!("; host port dialed anyway: {dial}"))
}

fn short_chain(ctx: &mut Ctx<'_>) -> Check {
    let (mut backend, guest) = ctx.setup()?;
    let h = header(&guest, 7000, 7001, Op::Request.to_u16());
    let bytes = &h.encode()[..20];
    debug_assert!(bytes.len() < HEADER_LEN);
    let seen = send_and_watch(&guest, bytes, TxLayout::Single, 7000)?;
    still_serving(ctx, &mut backend, &guest)?;
    verdict(&seen, "")
}
