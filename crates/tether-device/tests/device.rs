//! The device driven in-process by a fake guest driver (see `support`): every packet it
//! puts in an RX buffer is checked, and the host side is real Unix sockets.
//!
//! No vhost-user frontend and no VM: the tests call `process_tx`, `process_rx` and
//! `poll_host` as the vhost-user worker would, which makes each exchange deterministic
//! and lets a test see exactly what the device emits in one pass.

mod support;

use std::io::Write;
use std::net::Shutdown as NetShutdown;
use std::os::unix::net::UnixStream;
use support::*;
use tether_testkit::pattern;
use tether_vsock::header::shutdown;
use tether_vsock::{Header, Op, SocketType, EPHEMERAL_PORT_START, HEADER_LEN, HOST_CID};

const MIB: usize = 1 << 20;

/// Waits for the guest connection the device dialled to `port`'s listener.
fn accept_host(d: &mut Driver, l: &std::os::unix::net::UnixListener) -> UnixStream {
    let mut got = None;
    d.pump_until("the host listener to accept", |_| {
        match l.accept() {
            Ok((s, _)) => got = Some(s),
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {}
            Err(e) => panic!("accept: {e}"),
        }
        got.is_some()
    });
    let s = got.expect("accepted");
    s.set_nonblocking(true).expect("nonblocking");
    s
}

/// Every packet the device emits must fit its buffer and say how long it is.
fn check_packet_shape(conn: &GuestConn) {
    for p in &conn.packets {
        assert!(
            p.used_len <= p.capacity,
            "packet of {} bytes in a {}-byte buffer",
            p.used_len,
            p.capacity
        );
        assert_eq!(p.used_len as usize, HEADER_LEN + p.header.len as usize);
        assert_eq!(p.payload.len(), p.header.len as usize);
        assert_eq!((p.header.src_cid, p.header.dst_cid), (HOST_CID, GUEST_CID));
        assert_eq!(p.header.type_, SocketType::Stream.to_u16());
    }
}

/// Moves `up` from guest to host and `down` from host to guest at the same time, until
/// both arrived whole; returns what each side received.
fn exchange(
    d: &mut Driver,
    conn: &mut GuestConn,
    host: &mut UnixStream,
    up: &[u8],
    down: &[u8],
    layout: TxLayout,
) -> Vec<u8> {
    let (mut sent_up, mut sent_down) = (0, 0);
    let mut at_host = Vec::new();
    d.pump_until("both directions to complete", |d| {
        d.deliver(conn);
        assert!(!conn.reset, "connection reset mid-transfer");
        sent_up += d.guest_write(conn, &up[sent_up..], layout);
        sent_down += write_available(host, &down[sent_down..]).expect("host write");
        read_available(host, &mut at_host).expect("host read");
        at_host.len() >= up.len() && conn.received.len() >= down.len()
    });
    at_host
}

#[test]
fn guest_connection_carries_a_mebibyte_each_way_in_every_tx_layout() {
    let mut d = Driver::new();
    let rx_layouts = [
        RxLayout::Single(4096),
        RxLayout::HeaderThenData(4096),
        RxLayout::Indirect(4096),
        RxLayout::Single(64 * 1024 + HEADER_LEN as u32),
        RxLayout::Single(4096),
    ];
    for (i, (layout, rx)) in TX_LAYOUTS.into_iter().zip(rx_layouts).enumerate() {
        let port = 5000 + i as u32;
        // Buffers of the previous layout would otherwise carry the start of this round.
        d.use_up_rx_buffers();
        d.rx_layout = rx;
        d.rx_target = 64;
        let listener = d.host_listen(port);
        let mut conn = d.guest_connect(40_000 + i as u32, port);
        assert!(conn.established, "{layout:?}: guest connect refused");
        let mut host = accept_host(&mut d, &listener);

        let up = pattern(2 * i as u64, MIB);
        let down = pattern(2 * i as u64 + 1, MIB);
        let at_host = exchange(&mut d, &mut conn, &mut host, &up, &down, layout);
        assert!(at_host == up, "{layout:?}: guest-to-host bytes differ");
        assert!(
            conn.received == down,
            "{layout:?}, {rx:?}: host-to-guest bytes differ"
        );
        check_packet_shape(&conn);
        let max = conn.packets.iter().map(|p| p.used_len).max().unwrap_or(0);
        assert!(
            max > rx.capacity() / 2,
            "{rx:?}: largest packet {max} bytes: buffers are not being filled"
        );
    }
    let stats = d.device.stats();
    assert_eq!((stats.malformed, stats.rejected), (0, 0), "{stats:?}");
}

#[test]
fn guest_connect_to_a_port_nobody_serves_is_reset_in_the_same_pass() {
    let mut d = Driver::new();
    let conn = GuestConn::new(1234, 4444);
    d.send(&conn.header(Op::Request, 0, 0), &[], TxLayout::Single);
    d.pump();
    let rst: Vec<_> = d.inbox.iter().map(|p| p.header).collect();
    assert_eq!(rst.len(), 1, "expected exactly one answer: {rst:?}");
    let h = rst[0];
    assert_eq!(h.op(), Some(Op::Rst), "{h:?}");
    assert_eq!((h.src_port, h.dst_port), (4444, 1234));
    assert_eq!((h.src_cid, h.dst_cid), (HOST_CID, GUEST_CID));
}

#[test]
fn hybrid_client_gets_ok_with_its_host_port_and_bytes_sent_early_are_kept() {
    let mut d = Driver::new();
    let mut client = d.host_connect(1234, b"sent-with-the-line");
    let mut conn = d.guest_accept(1234);
    let request = conn.packets[0].header;
    assert!(
        request.src_port >= EPHEMERAL_PORT_START,
        "host port {} below 2^30",
        request.src_port
    );
    assert_eq!((request.src_cid, request.dst_cid), (HOST_CID, GUEST_CID));

    let expected = format!("OK {}\n", request.src_port).into_bytes();
    let mut at_client = Vec::new();
    d.pump_until("OK line and early bytes", |d| {
        d.deliver(&mut conn);
        read_available(&mut client, &mut at_client).expect("client read");
        at_client.len() >= expected.len() && conn.received.len() >= 18
    });
    assert_eq!(
        String::from_utf8_lossy(&at_client),
        String::from_utf8_lossy(&expected),
        "the client must read exactly the OK line"
    );
    assert_eq!(conn.received, b"sent-with-the-line");

    // Afterwards raw bytes, both ways.
    d.guest_send(&mut conn, Op::Rw, 0, b"from guest", TxLayout::Single);
    client.write_all(b"from host").expect("client write");
    d.pump_until("raw bytes after OK", |d| {
        d.deliver(&mut conn);
        read_available(&mut client, &mut at_client).expect("client read");
        at_client.len() >= expected.len() + 10 && conn.received.len() >= 27
    });
    assert_eq!(&at_client[expected.len()..], b"from guest");
    assert_eq!(&conn.received[18..], b"from host");
    check_packet_shape(&conn);
}

/// Host data queued while the guest has no RX buffers, then delivered into 4 KiB ones:
/// every buffer must be used well. A device that emits one RW per host read would send a
/// stream of tiny packets, which patched guests count as a flood.
fn host_burst_into_small_buffers(rx: RxLayout) -> GuestConn {
    let mut d = Driver::new();
    d.rx_layout = rx;
    let listener = d.host_listen(7000);
    let mut conn = d.guest_connect(1025, 7000);
    let mut host = accept_host(&mut d, &listener);

    // The guest stops posting buffers; the host writes in small pieces, each read by
    // the device separately.
    d.use_up_rx_buffers();
    let data = pattern(9, 200 * 64 + 50_000);
    for piece in data[..200 * 64].chunks(200) {
        host.write_all(piece).expect("host write");
        d.pump();
    }
    host.write_all(&data[200 * 64..]).expect("host write");
    for _ in 0..5 {
        d.pump();
    }
    d.deliver(&mut conn);
    assert_eq!(conn.rw_bytes(), 0, "no RX buffers, yet data arrived");

    d.rx_target = 64;
    d.pump_until("the burst to arrive", |d| {
        d.deliver(&mut conn);
        conn.received.len() >= data.len()
    });
    assert!(conn.received == data, "bytes differ");
    conn
}

#[test]
fn host_burst_fills_4k_rx_buffers_without_overrunning_them() {
    for rx in [RxLayout::Single(4096), RxLayout::HeaderThenData(4096)] {
        let conn = host_burst_into_small_buffers(rx);
        check_packet_shape(&conn);
        let largest = conn.packets.iter().map(|p| p.used_len).max().unwrap_or(0);
        assert_eq!(largest, rx.capacity(), "{rx:?}: buffers never filled");
    }
}

#[test]
fn host_burst_in_small_writes_is_coalesced_into_full_packets() {
    for rx in [RxLayout::Single(4096), RxLayout::HeaderThenData(4096)] {
        let conn = host_burst_into_small_buffers(rx);
        let rw: Vec<usize> = conn
            .packets
            .iter()
            .filter(|p| p.header.op == Op::Rw.to_u16())
            .map(|p| p.payload.len())
            .collect();
        let small = rw[..rw.len() - 1].iter().filter(|&&n| n < 512).count();
        assert_eq!(
            small,
            0,
            "{rx:?}: {small} of {} RW packets under 512 bytes before the last; sizes {:?}",
            rw.len(),
            &rw[..rw.len().min(80)]
        );
    }
}

#[test]
fn host_half_close_reaches_the_guest_and_guest_data_still_flows() {
    let mut d = Driver::new();
    let listener = d.host_listen(7001);
    let mut conn = d.guest_connect(1026, 7001);
    let mut host = accept_host(&mut d, &listener);

    host.write_all(b"last words").expect("host write");
    host.shutdown(NetShutdown::Write).expect("shutdown");
    d.pump_until("SHUTDOWN from the host side", |d| {
        d.deliver(&mut conn);
        conn.peer_shut != 0 || conn.reset
    });
    assert!(!conn.reset);
    assert_eq!(
        conn.peer_shut,
        shutdown::SEND,
        "only the host's sending side ended"
    );
    assert_eq!(conn.received, b"last words", "data before the SHUTDOWN");

    // The guest can still talk to the host.
    let up = pattern(3, 300_000);
    let mut at_host = Vec::new();
    let mut sent = 0;
    d.pump_until("guest data after the host's half-close", |d| {
        d.deliver(&mut conn);
        sent += d.guest_write(&mut conn, &up[sent..], TxLayout::Scattered(3));
        read_available(&mut host, &mut at_host).expect("host read");
        at_host.len() >= up.len()
    });
    assert!(at_host == up);
    assert!(!conn.reset, "the connection must stay up");
}

#[test]
fn guest_half_close_gives_the_host_eof_and_host_data_still_flows() {
    let mut d = Driver::new();
    let listener = d.host_listen(7002);
    let mut conn = d.guest_connect(1027, 7002);
    let mut host = accept_host(&mut d, &listener);

    d.guest_send(&mut conn, Op::Rw, 0, b"bye", TxLayout::HeaderThenPayload);
    d.guest_send(
        &mut conn,
        Op::Shutdown,
        shutdown::SEND,
        &[],
        TxLayout::Single,
    );
    let mut at_host = Vec::new();
    let mut eof = false;
    d.pump_until("EOF on the host stream", |d| {
        d.deliver(&mut conn);
        eof = read_available(&mut host, &mut at_host)
            .expect("host read")
            .is_none();
        eof
    });
    assert_eq!(at_host, b"bye");

    let down = pattern(4, 300_000);
    let mut sent = 0;
    d.pump_until("host data after the guest's half-close", |d| {
        d.deliver(&mut conn);
        sent += write_available(&mut host, &down[sent..]).expect("host write");
        conn.received.len() >= down.len()
    });
    assert!(conn.received == down);
    assert!(!conn.reset);
    assert_eq!(
        conn.peer_shut, 0,
        "the host did not stop sending: no SHUTDOWN expected"
    );
}

#[test]
fn device_respects_the_credit_the_guest_grants() {
    const WINDOW: u32 = 16 * 1024;
    let mut d = Driver::new();
    let listener = d.host_listen(7003);
    let mut conn = GuestConn::new(1028, 7003);
    conn.buf_alloc = WINDOW;
    conn.auto_credit = false;
    d.guest_send(&mut conn, Op::Request, 0, &[], TxLayout::Single);
    d.pump_until("RESPONSE", |d| {
        d.deliver(&mut conn);
        conn.established
    });
    let mut host = accept_host(&mut d, &listener);
    let data = pattern(5, 64 * 1024);
    host.write_all(&data).expect("host write");

    let mut granted = WINDOW;
    while (granted as usize) < data.len() + WINDOW as usize {
        // Let the device run for a while: it must fill the window and stop there.
        for _ in 0..30 {
            if d.pump() == 0 {
                std::thread::sleep(std::time::Duration::from_millis(1));
            }
            d.deliver(&mut conn);
            assert!(
                conn.rw_bytes() <= granted as usize,
                "{} bytes sent with {granted} granted",
                conn.rw_bytes()
            );
        }
        // It may leave less than one packet of the window unused rather than send a
        // sliver (silly-window avoidance), but no more.
        let expected = (granted as usize).min(data.len());
        assert!(
            conn.rw_bytes() + 4096 > expected,
            "{} bytes sent with {expected} available: the window is not used",
            conn.rw_bytes()
        );
        // The guest reads everything and says so.
        conn.fwd_cnt = conn.received.len() as u32;
        d.guest_send(&mut conn, Op::CreditUpdate, 0, &[], TxLayout::Single);
        granted = conn.fwd_cnt + WINDOW;
    }
    assert!(conn.received == data, "bytes lost or reordered");
    assert!(!conn.reset);
    check_packet_shape(&conn);
}

/// A header from the guest to host port 9 that the engine would accept as far as
/// addressing goes.
fn plain_header(op: Op, len: u32) -> Header {
    GuestConn::new(2000, 9).header(op, 0, len)
}

#[test]
fn malformed_chains_are_counted_answered_or_dropped_and_the_device_carries_on() {
    let mut d = Driver::new();
    let before = d.device.stats();

    // 1. Shorter than a header.
    d.send_bytes(&plain_header(Op::Rw, 0).encode()[..20], TxLayout::Single);
    // 2. `len` beyond what the chain holds.
    d.send(
        &plain_header(Op::Rw, 100),
        &[1; 10],
        TxLayout::HeaderThenPayload,
    );
    // 3. `len` above 64 KiB (with the bytes really there).
    d.send(
        &plain_header(Op::Rw, 70_000),
        &vec![2; 70_000],
        TxLayout::Single,
    );
    // 4. The header in a device-writable descriptor: invisible to a reader.
    let slot_addr = d.scratch().expect("free guest memory");
    d.write_mem(slot_addr, &plain_header(Op::Request, 0).encode());
    d.tx.post(
        &[Desc {
            addr: slot_addr,
            len: HEADER_LEN as u32,
            flags: F_WRITE,
            next: 0,
        }],
        None,
    )
    .expect("ring room");
    // 5. A descriptor pointing outside guest memory.
    d.tx.post(
        &[Desc {
            addr: 1 << 40,
            len: 64,
            flags: 0,
            next: 0,
        }],
        None,
    )
    .expect("ring room");
    d.pump();
    let s = d.device.stats();
    assert_eq!(s.malformed - before.malformed, 5, "{s:?}");
    assert_eq!(s.tx_packets - before.tx_packets, 5, "{s:?}");
    assert!(d.inbox.is_empty(), "malformed chains get no answer");
    assert_eq!(d.tx.outstanding(), 0, "every chain must be returned");

    // 6, 7. Wrong CIDs: not for this device at all; dropped without an answer.
    let mut h = plain_header(Op::Request, 0);
    h.src_cid = 4;
    d.send(&h, &[], TxLayout::Single);
    let mut h = plain_header(Op::Request, 0);
    h.dst_cid = 5;
    d.send(&h, &[], TxLayout::Single);
    d.pump();
    let s2 = d.device.stats();
    assert_eq!(s2.rejected - s.rejected, 2, "{s2:?}");
    assert!(d.inbox.is_empty(), "packets for someone else get no answer");

    // 8, 9. Undefined op and undefined type: answered with RST.
    let mut h = plain_header(Op::Rw, 0);
    h.op = 99;
    d.send(&h, &[], TxLayout::Single);
    let mut h = plain_header(Op::Request, 0);
    h.type_ = 7;
    h.src_port = 2001;
    d.send(&h, &[], TxLayout::Single);
    d.pump();
    let answers: Vec<Header> = d.inbox.drain(..).map(|p| p.header).collect();
    assert_eq!(answers.len(), 2, "{answers:?}");
    for (a, src) in answers.iter().zip([2000, 2001]) {
        assert_eq!(a.op(), Some(Op::Rst), "{a:?}");
        assert_eq!((a.src_port, a.dst_port), (9, src));
    }
    assert_eq!(answers[1].type_, 7, "the RST echoes the packet's type");

    // 10. An RX buffer too small for a header: handed back empty, and the packet waits
    // for the next buffer.
    d.use_up_rx_buffers();
    assert!(d.post_rx(RxLayout::Single(20)));
    let mut h = plain_header(Op::Rw, 0);
    h.op = 98;
    d.send(&h, &[], TxLayout::Single);
    d.pump();
    assert!(d.inbox.is_empty(), "no buffer can hold the RST yet");
    assert_eq!(
        d.short_rx_returns, 1,
        "the 20-byte buffer comes back unused"
    );
    d.rx_target = 64;
    d.pump_until("the RST after a short RX buffer", |d| !d.inbox.is_empty());
    assert_eq!(
        d.short_rx_returns, 1,
        "the 20-byte buffer comes back unused"
    );
    assert_eq!(d.inbox[0].header.op(), Some(Op::Rst));
    d.inbox.clear();

    // The device still works.
    let listener = d.host_listen(7004);
    let mut conn = d.guest_connect(3000, 7004);
    assert!(conn.established);
    let mut host = accept_host(&mut d, &listener);
    let at_host = exchange(
        &mut d,
        &mut conn,
        &mut host,
        &pattern(6, 100_000),
        &pattern(7, 100_000),
        TxLayout::Indirect(2),
    );
    assert!(at_host == pattern(6, 100_000));
    assert!(conn.received == pattern(7, 100_000));
}

#[test]
fn connection_table_bound_refuses_guests_with_rst_and_host_clients_with_silence() {
    let mut d = Driver::with(32 << 20, 256, 256, |c| c.max_connections = 4);
    let listener = d.host_listen(7005);
    let mut guests = Vec::new();
    let mut hosts = Vec::new();
    for i in 0..2 {
        let conn = d.guest_connect(4000 + i, 7005);
        assert!(conn.established, "connection {i} refused");
        hosts.push(accept_host(&mut d, &listener));
        guests.push(conn);
    }
    let mut clients = Vec::new();
    for port in [50, 51] {
        let mut client = d.host_connect(port, b"");
        let conn = d.guest_accept(port);
        let mut ok = Vec::new();
        d.pump_until("OK", |_| {
            read_available(&mut client, &mut ok).expect("client read");
            ok.ends_with(b"\n")
        });
        guests.push(conn);
        clients.push(client);
    }

    // The table holds 4: a fifth guest connect is reset...
    let fifth = d.guest_connect(4999, 7005);
    assert!(
        fifth.reset && !fifth.established,
        "fifth guest connect accepted"
    );
    // ...and a fifth host client is closed without a word.
    let refused_before = d.device.stats().refused_full;
    let mut client = d.host_connect(52, b"");
    let mut got = Vec::new();
    let mut eof = false;
    d.pump_until("the refused client's socket to close", |_| {
        eof = read_available(&mut client, &mut got)
            .map(|r| r.is_none())
            .unwrap_or(true);
        eof
    });
    assert!(got.is_empty(), "refused client read {got:?}");
    assert_eq!(d.device.stats().refused_full, refused_before + 1);
    assert!(
        !d.inbox.iter().any(|p| p.header.dst_port == 52),
        "no REQUEST may reach the guest for a refused client"
    );

    // Freeing one entry lets the next connection in.
    let mut first = guests.remove(0);
    d.guest_send(&mut first, Op::Rst, 0, &[], TxLayout::Single);
    d.pump();
    let again = d.guest_connect(4998, 7005);
    assert!(again.established, "a freed entry must be reusable");
}

/// Runs `f` on its own thread; `false` if it has not finished within `limit` (the thread
/// is then left spinning until the test binary exits).
fn finishes_within(limit: std::time::Duration, f: impl FnOnce() + Send + 'static) -> bool {
    let (done, finished) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        f();
        let _ = done.send(());
    });
    finished.recv_timeout(limit).is_ok()
}

#[test]
fn avail_index_beyond_the_ring_does_not_hang_the_device() {
    let limit = std::time::Duration::from_secs(2);
    let tx_done = finishes_within(limit, || {
        let mut d = Driver::new();
        let lie = d.tx.size + 1;
        d.tx.set_avail_idx_raw(lie);
        d.device.process_tx(&d.tx.vring);
    });
    let rx_done = finishes_within(limit, || {
        let mut d = Driver::new();
        d.rx_target = 0;
        // Something for the RX queue: the RST for a connect to a port nobody serves.
        d.send(&plain_header(Op::Request, 0), &[], TxLayout::Single);
        d.device.process_tx(&d.tx.vring);
        let lie = d.rx.size + 1;
        d.rx.set_avail_idx_raw(lie);
        d.device.process_rx(&d.rx.vring);
        assert!(d.device.stats().broken_rings >= 1);
    });
    assert!(
        tx_done && rx_done,
        "hangs on an avail index a ring ahead: process_tx {}, process_rx {}",
        if tx_done { "returns" } else { "hangs" },
        if rx_done { "returns" } else { "hangs" },
    );
}
