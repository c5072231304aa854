//! Every state transition of the engine, driven deterministically.
//!
//! Two kinds of tests: pairs of engines (host CID 2, guest CID 3) on a lossless link that
//! checks every packet (see `support`), and a single engine fed hand-built headers whose
//! output is inspected packet by packet.

mod support;

use bytes::Bytes;
use std::time::{Duration, Instant};
use support::{End, Pair, GUEST, HOST};
use tether_vsock::header::{seqpacket, shutdown, Op};
use tether_vsock::{
    CloseReason, Config, ConnId, Engine, Event, Header, Message, PacketError, SetupError, Shutdown,
    SocketType, StreamError, Transmit, EPHEMERAL_PORT_START,
};

const STREAM: SocketType = SocketType::Stream;
const SEQPACKET: SocketType = SocketType::SeqPacket;
const MS: Duration = Duration::from_millis(1);

// ---- single-engine helpers: the engine is CID 2, the test plays CID 3 ----

/// A header from the fake peer (CID 3) to the engine (CID 2).
fn from_peer(src_port: u32, dst_port: u32, op: Op, kind: SocketType) -> Header {
    Header {
        src_cid: GUEST,
        dst_cid: HOST,
        src_port,
        dst_port,
        len: 0,
        type_: kind.to_u16(),
        op: op.to_u16(),
        flags: 0,
        buf_alloc: 256 * 1024,
        fwd_cnt: 0,
    }
}

fn feed(engine: &mut Engine, now: Instant, hdr: Header, payload: &[u8]) {
    let hdr = Header {
        len: payload.len() as u32,
        ..hdr
    };
    engine
        .handle_packet(now, &hdr, Bytes::copy_from_slice(payload))
        .expect("well-formed packet");
}

/// Everything the engine has to send right now, each packet checked.
fn drain(engine: &mut Engine, limit: u32) -> Vec<Transmit> {
    let mut out = Vec::new();
    while let Some(t) = engine.poll_transmit(limit) {
        support::check_emitted(engine, &t, limit);
        out.push(t);
        assert!(out.len() < 1_000_000, "poll_transmit never runs dry");
    }
    out
}

fn events(engine: &mut Engine) -> Vec<Event> {
    std::iter::from_fn(|| engine.poll_event()).collect()
}

fn ops(out: &[Transmit]) -> Vec<Op> {
    out.iter().map(|t| t.header.op().unwrap()).collect()
}

fn host_engine(f: impl Fn(&mut Config)) -> Engine {
    let mut cfg = Config::new(HOST, GUEST);
    f(&mut cfg);
    Engine::new(cfg)
}

/// A host engine with one established stream connection to guest port 1024, the guest
/// advertising `peer_buf_alloc`. Returns the engine, the id and the host's local port.
fn connected(now: Instant, peer_buf_alloc: u32, f: impl Fn(&mut Config)) -> (Engine, ConnId, u32) {
    let mut host = host_engine(f);
    let id = host.connect(now, 1024, STREAM).unwrap();
    let out = drain(&mut host, u32::MAX);
    assert_eq!(ops(&out), [Op::Request]);
    let local = out[0].header.src_port;
    let resp = Header {
        buf_alloc: peer_buf_alloc,
        ..from_peer(1024, local, Op::Response, STREAM)
    };
    feed(&mut host, now, resp, &[]);
    assert_eq!(events(&mut host), [Event::Connected(id)]);
    (host, id, local)
}

/// A host engine listening on `port` that has accepted a connection from the peer's
/// `peer_port`; its RESPONSE not yet drained. Returns the engine and the id.
fn accepted(now: Instant, port: u32, peer_port: u32, kind: SocketType) -> (Engine, ConnId) {
    let mut host = host_engine(|_| {});
    host.listen(port, kind);
    feed(
        &mut host,
        now,
        from_peer(peer_port, port, Op::Request, kind),
        &[],
    );
    let Some(Event::Incoming { id, .. }) = host.poll_event() else {
        panic!("no Incoming");
    };
    host.accept(id).unwrap();
    (host, id)
}

fn rw_lens(out: &[Transmit]) -> Vec<usize> {
    out.iter()
        .filter(|t| t.header.op() == Some(Op::Rw))
        .map(|t| t.payload.len())
        .collect()
}

// ---- connection setup ----

#[test]
fn connect_and_accept() {
    let mut p = Pair::default();
    p.guest.engine.listen(1024, STREAM);
    let h = p.host.engine.connect(p.now, 1024, STREAM).unwrap();
    assert_eq!(p.host.engine.ports(h), Some((EPHEMERAL_PORT_START, 1024)));
    p.pump();
    let g = match p.guest.take_events().as_slice() {
        [Event::Incoming {
            id,
            local_port: 1024,
            peer_port,
        }] if *peer_port == EPHEMERAL_PORT_START => *id,
        other => panic!("{other:?}"),
    };
    assert!(p.host.events.is_empty(), "connected before accept");
    assert_eq!(p.ops(), [(HOST, Op::Request, 0)]);

    p.guest.engine.accept(g).unwrap();
    p.pump();
    assert_eq!(p.host.take_events(), [Event::Connected(h)]);
    assert_eq!(p.ops(), [(HOST, Op::Request, 0), (GUEST, Op::Response, 0)]);
    assert_eq!(
        p.log[1].buf_alloc,
        256 * 1024,
        "RESPONSE advertises the acceptor's buffer"
    );

    p.host.engine.send(h, b"ping").unwrap();
    p.guest.engine.send(g, b"pong").unwrap();
    p.pump();
    assert_eq!(p.read_stream(End::Guest, g, 64), (b"ping".to_vec(), false));
    assert_eq!(p.read_stream(End::Host, h, 64), (b"pong".to_vec(), false));
    assert_eq!(p.host.engine.stats().connections, 1);
    assert_eq!(p.guest.engine.stats().connections, 1);
}

#[test]
fn request_to_port_nobody_listens_on_is_refused() {
    let mut p = Pair::default();
    let h = p.host.engine.connect(p.now, 999, STREAM).unwrap();
    p.pump();
    assert_eq!(p.ops(), [(HOST, Op::Request, 0), (GUEST, Op::Rst, 0)]);
    assert_eq!(
        (p.log[1].src_port, p.log[1].dst_port),
        (999, EPHEMERAL_PORT_START)
    );
    assert_eq!(
        p.host.take_events(),
        [Event::Closed(h, CloseReason::Refused)]
    );
    assert_eq!(
        p.host.engine.send(h, b"x"),
        Err(StreamError::Closed(CloseReason::Refused))
    );
    assert_eq!(
        p.host.engine.recv(h, &mut [0; 4]),
        Err(StreamError::Closed(CloseReason::Refused))
    );
    assert!(p.guest.events.is_empty());
    assert_eq!(p.guest.engine.stats().connections, 0);
    assert_eq!(p.host.engine.stats().connections, 0);
    // The dead connection stays held until released, then its handle is gone.
    assert_eq!(p.host.engine.connections().collect::<Vec<_>>(), [h]);
    p.host.engine.close(p.now, h);
    assert_eq!(p.host.engine.connections().count(), 0);
    assert_eq!(
        p.host.engine.send(h, b"x"),
        Err(StreamError::UnknownConnection)
    );
}

#[test]
fn request_of_the_wrong_type_is_refused() {
    let mut p = Pair::default();
    p.guest.engine.listen(1024, SEQPACKET);
    let h = p.host.engine.connect(p.now, 1024, STREAM).unwrap();
    p.pump();
    assert_eq!(
        p.host.take_events(),
        [Event::Closed(h, CloseReason::Refused)]
    );
    assert!(p.guest.events.is_empty());
}

#[test]
fn closing_an_unaccepted_incoming_connection_refuses_it() {
    let mut p = Pair::default();
    p.guest.engine.listen(1024, STREAM);
    let h = p.host.engine.connect(p.now, 1024, STREAM).unwrap();
    p.pump();
    let Some(Event::Incoming { id: g, .. }) = p.guest.take_events().pop() else {
        panic!("no Incoming");
    };
    p.guest.engine.close(p.now, g);
    p.pump();
    assert_eq!(
        p.host.take_events(),
        [Event::Closed(h, CloseReason::Refused)]
    );
    assert_eq!(
        p.guest.engine.accept(g),
        Err(StreamError::UnknownConnection)
    );
    assert_eq!(p.guest.engine.stats().connections, 0);
}

#[test]
fn connect_times_out_with_rst() {
    let t0 = Instant::now();
    let mut host = host_engine(|_| {});
    let id = host.connect(t0, 1024, STREAM).unwrap();
    assert_eq!(ops(&drain(&mut host, u32::MAX)), [Op::Request]);
    assert_eq!(host.poll_timeout(), Some(t0 + Duration::from_secs(2)));

    host.handle_timeout(t0 + Duration::from_secs(2) - MS);
    assert!(drain(&mut host, u32::MAX).is_empty());
    assert!(events(&mut host).is_empty());

    host.handle_timeout(t0 + Duration::from_secs(2));
    let out = drain(&mut host, u32::MAX);
    assert_eq!(ops(&out), [Op::Rst]);
    assert_eq!(
        (out[0].header.src_port, out[0].header.dst_port),
        (EPHEMERAL_PORT_START, 1024)
    );
    assert_eq!(
        events(&mut host),
        [Event::Closed(id, CloseReason::TimedOut)]
    );
    assert_eq!(host.poll_timeout(), None);
    assert_eq!(host.stats().connections, 0);

    // A RESPONSE arriving after the give-up revives nothing: it is an unknown connection.
    feed(
        &mut host,
        t0,
        from_peer(1024, EPHEMERAL_PORT_START, Op::Response, STREAM),
        &[],
    );
    assert_eq!(ops(&drain(&mut host, u32::MAX)), [Op::Rst]);
    assert!(events(&mut host).is_empty());
}

#[test]
fn unaccepted_incoming_connection_times_out() {
    let t0 = Instant::now();
    let mut host = host_engine(|_| {});
    host.listen(80, STREAM);
    feed(&mut host, t0, from_peer(5000, 80, Op::Request, STREAM), &[]);
    let id = match events(&mut host).as_slice() {
        [Event::Incoming {
            id,
            local_port: 80,
            peer_port: 5000,
        }] => *id,
        other => panic!("{other:?}"),
    };
    assert!(
        drain(&mut host, u32::MAX).is_empty(),
        "nothing goes out before accept"
    );

    host.handle_timeout(t0 + Duration::from_secs(2) - MS);
    assert!(drain(&mut host, u32::MAX).is_empty());
    host.handle_timeout(t0 + Duration::from_secs(2));
    let out = drain(&mut host, u32::MAX);
    assert_eq!(ops(&out), [Op::Rst]);
    assert_eq!((out[0].header.src_port, out[0].header.dst_port), (80, 5000));
    assert_eq!(
        events(&mut host),
        [Event::Closed(id, CloseReason::TimedOut)]
    );
    assert_eq!(
        host.accept(id),
        Err(StreamError::Closed(CloseReason::TimedOut))
    );
}

#[test]
fn data_sent_while_connecting_is_delivered_after_response() {
    let mut p = Pair::default();
    p.guest.engine.listen(1024, STREAM);
    let h = p.host.engine.connect(p.now, 1024, STREAM).unwrap();
    assert_eq!(p.host.engine.send(h, b"early bird"), Ok(10));
    assert_eq!(p.host.engine.send_queue_len(h), 10);
    p.pump();
    assert_eq!(p.ops(), [(HOST, Op::Request, 0)], "no data before RESPONSE");
    let Some(Event::Incoming { id: g, .. }) = p.guest.take_events().pop() else {
        panic!("no Incoming");
    };
    p.guest.engine.accept(g).unwrap();
    p.pump();
    assert_eq!(
        p.ops(),
        [
            (HOST, Op::Request, 0),
            (GUEST, Op::Response, 0),
            (HOST, Op::Rw, 0)
        ]
    );
    assert_eq!(p.read_stream(End::Guest, g, 64).0, b"early bird");
}

#[test]
fn connect_from_a_taken_port_pair_fails() {
    let now = Instant::now();
    let mut host = host_engine(|_| {});
    host.connect_from(now, 7, 1024, STREAM).unwrap();
    assert_eq!(
        host.connect_from(now, 7, 1024, STREAM),
        Err(SetupError::PortInUse(7))
    );
    // The same local port towards another peer port is a different connection.
    assert!(host.connect_from(now, 7, 1025, STREAM).is_ok());
}

// ---- half-close and close ----

#[test]
fn shutdown_write_gives_peer_eof_while_other_direction_flows() {
    let mut p = Pair::default();
    let (h, g) = p.establish(1024, STREAM);
    p.host.engine.send(h, b"request body").unwrap();
    p.host.engine.shutdown(h, Shutdown::Write).unwrap();
    p.pump();
    assert_eq!(
        p.guest.take_events(),
        [Event::Readable(g), Event::ReadClosed(g)]
    );
    let shut: Vec<_> = p
        .log
        .iter()
        .filter(|h| h.op() == Some(Op::Shutdown))
        .collect();
    assert_eq!(shut.len(), 1);
    assert_eq!(shut[0].flags, shutdown::SEND);

    assert_eq!(
        p.read_stream(End::Guest, g, 5),
        (b"request body".to_vec(), true)
    );
    assert_eq!(p.guest.engine.recv(g, &mut [0; 8]), Ok(0), "EOF is sticky");
    assert_eq!(p.host.engine.send(h, b"more"), Err(StreamError::BrokenPipe));

    // The guest-to-host direction is untouched, and keeps working repeatedly.
    for round in 0..3u8 {
        let msg = [round; 100];
        assert_eq!(p.guest.engine.send(g, &msg), Ok(100));
        p.pump();
        assert_eq!(p.read_stream(End::Host, h, 33), (msg.to_vec(), false));
    }
    assert!(p
        .host
        .take_events()
        .iter()
        .all(|e| matches!(e, Event::Readable(_))));

    // The guest finishes its side too: the host reads EOF, nobody was reset.
    p.guest.engine.shutdown(g, Shutdown::Write).unwrap();
    p.pump();
    assert_eq!(p.read_stream(End::Host, h, 8), (vec![], true));
    assert_eq!(p.count(HOST, Op::Rst) + p.count(GUEST, Op::Rst), 0);
}

#[test]
fn shutdown_read_discards_and_stops_the_peer_writing() {
    let mut p = Pair::default();
    let (h, g) = p.establish(1024, STREAM);
    p.host.engine.send(h, b"never read").unwrap();
    p.pump();
    assert_eq!(p.guest.engine.readable_len(g), 10);
    p.guest.engine.shutdown(g, Shutdown::Read).unwrap();
    assert_eq!(p.guest.engine.readable_len(g), 0);
    assert_eq!(p.guest.engine.recv(g, &mut [0; 8]), Ok(0));
    p.pump();
    let last = p.log.last().unwrap();
    assert_eq!((last.op(), last.flags), (Some(Op::Shutdown), shutdown::RCV));
    assert_eq!(last.fwd_cnt, 10, "discarded bytes count as consumed");
    assert_eq!(p.host.take_events(), [Event::WriteClosed(h)]);
    assert_eq!(p.host.engine.send(h, b"x"), Err(StreamError::BrokenPipe));

    // The other direction still carries data.
    p.guest.engine.send(g, b"still flowing").unwrap();
    p.pump();
    assert_eq!(
        p.read_stream(End::Host, h, 64),
        (b"still flowing".to_vec(), false)
    );
}

#[test]
fn shutdown_read_drops_data_queued_at_the_peer() {
    let mut p = Pair::with(|c| c.buf_alloc = 4096);
    let (h, g) = p.establish(1024, STREAM);
    assert_eq!(p.host.engine.send(h, &[1; 10_000]), Ok(10_000));
    p.pump();
    assert!(
        p.host.engine.send_queue_len(h) > 0,
        "credit holds data back"
    );
    p.guest.engine.shutdown(g, Shutdown::Read).unwrap();
    p.pump();
    assert_eq!(p.host.engine.send_queue_len(h), 0);
    assert!(p.host.take_events().contains(&Event::WriteClosed(h)));
}

#[test]
fn shutdown_send_goes_out_only_after_queued_data() {
    let now = Instant::now();
    let (mut host, id, local) = connected(now, 1000, |_| {});
    assert_eq!(host.send(id, &[7; 2500]), Ok(2500));
    host.shutdown(id, Shutdown::Write).unwrap();
    assert_eq!(host.send(id, b"x"), Err(StreamError::BrokenPipe));

    let out = drain(&mut host, u32::MAX);
    assert_eq!(rw_lens(&out), [1000]);
    assert!(
        !ops(&out).contains(&Op::Shutdown),
        "SHUTDOWN overtook data: {:?}",
        ops(&out)
    );

    let mut update = from_peer(1024, local, Op::CreditUpdate, STREAM);
    update.buf_alloc = 1000;
    update.fwd_cnt = 1000;
    feed(&mut host, now, update, &[]);
    let out = drain(&mut host, u32::MAX);
    assert_eq!(rw_lens(&out), [1000]);
    assert!(!ops(&out).contains(&Op::Shutdown));

    update.fwd_cnt = 2000;
    feed(&mut host, now, update, &[]);
    let out = drain(&mut host, u32::MAX);
    assert_eq!(ops(&out), [Op::Rw, Op::Shutdown]);
    assert_eq!(out[0].payload.len(), 500);
    assert_eq!(out[1].header.flags, shutdown::SEND);
}

#[test]
fn close_on_one_side_completes_with_one_rst() {
    let mut p = Pair::default();
    let (h, g) = p.establish(1024, STREAM);
    p.host.engine.send(h, b"last words").unwrap();
    p.host.engine.close(p.now, h);
    p.pump();
    let n = p.log.len();
    assert_eq!(
        p.ops()[n - 2..],
        [(HOST, Op::Rw, 0), (HOST, Op::Shutdown, shutdown::BOTH)][..],
        "queued data is flushed before SHUTDOWN"
    );
    assert_eq!(
        p.guest.take_events(),
        [
            Event::Readable(g),
            Event::WriteClosed(g),
            Event::ReadClosed(g)
        ]
    );
    // The guest still holds unread data, so it answers only once the reader is done.
    assert_eq!(p.count(GUEST, Op::Rst), 0);
    assert_eq!(
        p.read_stream(End::Guest, g, 64),
        (b"last words".to_vec(), true)
    );
    assert_eq!(p.ops().last(), Some(&(GUEST, Op::Rst, 0)));
    assert_eq!(
        p.guest.take_events(),
        [Event::Closed(g, CloseReason::Graceful)]
    );
    assert!(
        p.host.take_events().is_empty(),
        "a released handle gets no events"
    );
    assert_eq!(p.count(GUEST, Op::Rst), 1);
    assert_eq!(
        p.count(HOST, Op::Rst),
        0,
        "the closer never answers the RST"
    );
    p.guest.engine.close(p.now, g);
    p.pump();
    assert_eq!(p.host.engine.stats().connections, 0);
    assert_eq!(p.guest.engine.stats().connections, 0);
    assert_eq!(p.guest.engine.connections().count(), 0);
    assert_eq!(
        p.host.engine.poll_timeout(),
        None,
        "close timer cancelled by the RST"
    );
}

#[test]
fn close_on_both_sides_at_once_is_graceful_and_rsts_are_not_answered() {
    let mut p = Pair::default();
    let (h, g) = p.establish(1024, STREAM);
    let now = p.now;
    let (host, guest) = (&mut p.host.engine, &mut p.guest.engine);
    host.close(now, h);
    guest.close(now, g);
    // Both SHUTDOWNs are on the wire before either arrives.
    let (from_host, from_guest) = (drain(host, u32::MAX), drain(guest, u32::MAX));
    assert_eq!(ops(&from_host), [Op::Shutdown]);
    assert_eq!(ops(&from_guest), [Op::Shutdown]);
    for t in from_host {
        guest.handle_packet(now, &t.header, t.payload).unwrap();
    }
    for t in from_guest {
        host.handle_packet(now, &t.header, t.payload).unwrap();
    }
    // Each side ends its half with an RST; the RSTs cross and neither is answered.
    let (from_host, from_guest) = (drain(host, u32::MAX), drain(guest, u32::MAX));
    assert_eq!(ops(&from_host), [Op::Rst]);
    assert_eq!(ops(&from_guest), [Op::Rst]);
    for t in from_host {
        guest.handle_packet(now, &t.header, t.payload).unwrap();
    }
    for t in from_guest {
        host.handle_packet(now, &t.header, t.payload).unwrap();
    }
    assert!(drain(host, u32::MAX).is_empty() && drain(guest, u32::MAX).is_empty());
    assert!(events(host).is_empty() && events(guest).is_empty());
    assert_eq!(
        p.host.engine.stats().connections + p.guest.engine.stats().connections,
        0
    );
    assert_eq!(p.host.engine.poll_timeout(), None);
    assert_eq!(p.guest.engine.poll_timeout(), None);
}

#[test]
fn shutdown_both_then_peer_rst_is_graceful() {
    let mut p = Pair::default();
    let (h, g) = p.establish(1024, STREAM);
    p.host.engine.shutdown(h, Shutdown::Both).unwrap();
    p.pump();
    assert_eq!(p.count(GUEST, Op::Rst), 1);
    assert_eq!(
        p.guest.take_events().last(),
        Some(&Event::Closed(g, CloseReason::Graceful))
    );
    assert_eq!(
        p.host.take_events(),
        [Event::Closed(h, CloseReason::Graceful)]
    );
    assert_eq!(p.host.engine.recv(h, &mut [0; 4]), Ok(0));
}

#[test]
fn rst_on_established_connection_is_reset_and_data_stays_readable() {
    let now = Instant::now();
    let (mut host, id, local) = connected(now, 4096, |_| {});
    feed(
        &mut host,
        now,
        from_peer(1024, local, Op::Rw, STREAM),
        b"tail",
    );
    feed(&mut host, now, from_peer(1024, local, Op::Rst, STREAM), &[]);
    assert!(drain(&mut host, u32::MAX).is_empty(), "RST answered");
    assert_eq!(
        events(&mut host),
        [Event::Readable(id), Event::Closed(id, CloseReason::Reset)]
    );
    let mut buf = [0u8; 16];
    assert_eq!(host.recv(id, &mut buf), Ok(4));
    assert_eq!(&buf[..4], b"tail");
    assert_eq!(
        host.recv(id, &mut buf),
        Err(StreamError::Closed(CloseReason::Reset))
    );
    assert_eq!(
        host.send(id, b"x"),
        Err(StreamError::Closed(CloseReason::Reset))
    );
}

#[test]
fn rst_is_never_answered() {
    let now = Instant::now();
    let (mut host, _id, local) = connected(now, 4096, |_| {});
    host.listen(80, STREAM);
    // Unknown connection, unknown port, undefined socket type, a listener's port.
    for (src, dst, type_) in [
        (1, 2, 1),
        (1024, local + 1, 1),
        (1, 2, 99),
        (5000, 80, 1),
        (5000, 80, 2),
    ] {
        let hdr = Header {
            type_,
            ..from_peer(src, dst, Op::Rst, STREAM)
        };
        feed(&mut host, now, hdr, &[]);
        assert!(
            drain(&mut host, u32::MAX).is_empty(),
            "answered RST {hdr:?}"
        );
    }
    assert!(events(&mut host).is_empty());
    assert_eq!(host.stats().connections, 1);
}

#[test]
fn close_times_out_when_the_peer_never_answers() {
    let now = Instant::now();
    let (mut host, id, local) = connected(now, 4096, |c| c.close_timeout = Duration::from_secs(8));
    host.close(now, id);
    let out = drain(&mut host, u32::MAX);
    assert_eq!(ops(&out), [Op::Shutdown]);
    assert_eq!(out[0].header.flags, shutdown::BOTH);
    assert_eq!(host.poll_timeout(), Some(now + Duration::from_secs(8)));
    assert_eq!(host.stats().connections, 1, "still closing");

    host.handle_timeout(now + Duration::from_secs(8) - MS);
    assert!(drain(&mut host, u32::MAX).is_empty());
    host.handle_timeout(now + Duration::from_secs(8));
    let out = drain(&mut host, u32::MAX);
    assert_eq!(ops(&out), [Op::Rst]);
    assert_eq!(
        (out[0].header.src_port, out[0].header.dst_port),
        (local, 1024)
    );
    assert!(events(&mut host).is_empty(), "the handle was released");
    assert_eq!(host.stats().connections, 0);
    assert_eq!(host.poll_timeout(), None);
    // The peer's RST arriving late is just an unknown connection's RST.
    feed(&mut host, now, from_peer(1024, local, Op::Rst, STREAM), &[]);
    assert!(drain(&mut host, u32::MAX).is_empty());
}

#[test]
fn close_timeout_cuts_a_flush_the_peer_never_credits() {
    let now = Instant::now();
    let (mut host, id, _) = connected(now, 100, |_| {});
    host.send(id, &[0; 1000]).unwrap();
    host.close(now, id);
    let out = drain(&mut host, u32::MAX);
    assert_eq!(rw_lens(&out), [100]);
    assert!(!ops(&out).contains(&Op::Shutdown));
    host.handle_timeout(now + Duration::from_secs(8));
    assert_eq!(ops(&drain(&mut host, u32::MAX)), [Op::Rst]);
    assert_eq!(host.stats().connections, 0);
}

// ---- credit ----

#[test]
fn bulk_transfer_never_exceeds_credit() {
    // Every RW the pump moves is checked against the receiver's advertised credit.
    let mut p = Pair::with(|c| {
        c.buf_alloc = 4096;
        c.max_payload = 1024;
    });
    let (h, g) = p.establish(1024, STREAM);
    let data = support::pattern(1, 100_000);
    let mut sent = 0;
    let mut got = Vec::new();
    while got.len() < data.len() {
        if sent < data.len() {
            sent += p.host.engine.send(h, &data[sent..]).unwrap_or(0);
        }
        p.pump();
        got.extend(p.read_stream(End::Guest, g, 700).0);
        assert!(p.guest.engine.readable_len(g) <= 4096);
    }
    assert_eq!(got, data);
    let rws = p.count(HOST, Op::Rw);
    assert!(rws >= 100_000 / 1024, "{rws} packets");
}

#[test]
fn credit_request_is_sent_once_when_starved_after_the_delay() {
    let now = Instant::now();
    let (mut host, id, local) = connected(now, 4096, |_| {});
    let delay = host.config().credit_request_delay;
    assert_eq!(host.send(id, &[9; 10_000]), Ok(10_000));
    let out = drain(&mut host, u32::MAX);
    assert_eq!(
        ops(&out),
        [Op::Rw],
        "the peer gets time to announce credit itself"
    );
    assert_eq!(out[0].payload.len(), 4096);
    assert_eq!(host.poll_timeout(), Some(now + delay));
    host.handle_timeout(now + delay - Duration::from_millis(1));
    assert!(drain(&mut host, u32::MAX).is_empty(), "asked early");
    host.handle_timeout(now + delay);
    assert_eq!(ops(&drain(&mut host, u32::MAX)), [Op::CreditRequest]);
    host.handle_timeout(now + 10 * delay);
    assert!(drain(&mut host, u32::MAX).is_empty(), "asked twice");

    // An answer that grants nothing does not start a request/update ping-pong.
    let later = now + 10 * delay;
    let mut update = Header {
        buf_alloc: 4096,
        ..from_peer(1024, local, Op::CreditUpdate, STREAM)
    };
    feed(&mut host, later, update, &[]);
    host.handle_timeout(later + 10 * delay);
    assert!(drain(&mut host, u32::MAX).is_empty());

    let later = later + 10 * delay;
    update.fwd_cnt = 4096;
    feed(&mut host, later, update, &[]);
    let out = drain(&mut host, u32::MAX);
    assert_eq!(ops(&out), [Op::Rw]);
    assert_eq!(out[0].payload.len(), 4096);
    host.handle_timeout(later + delay);
    assert_eq!(ops(&drain(&mut host, u32::MAX)), [Op::CreditRequest]);
    update.fwd_cnt = 8192;
    feed(&mut host, later + delay, update, &[]);
    let out = drain(&mut host, u32::MAX);
    assert_eq!(ops(&out), [Op::Rw], "not starved once everything is out");
    assert_eq!(out[0].payload.len(), 10_000 - 8192);
    assert_eq!(host.poll_timeout(), None, "no request armed");
}

#[test]
fn a_direct_writer_short_of_credit_is_told_when_credit_comes() {
    let now = Instant::now();
    let (mut host, id, local) = connected(now, 8192, |_| {});
    let (hdr, n) = host
        .send_now(id, 65536)
        .unwrap()
        .expect("credit for a first piece");
    assert_eq!((hdr.len, n), (8192, 8192));
    assert_eq!(host.send_now(id, 65536), Ok(None), "no credit left");
    host.wait_writable(id).unwrap();
    assert!(events(&mut host).is_empty());
    assert!(drain(&mut host, u32::MAX).is_empty(), "nothing was queued");
    let update = Header {
        buf_alloc: 8192,
        fwd_cnt: 8192,
        ..from_peer(1024, local, Op::CreditUpdate, STREAM)
    };
    feed(&mut host, now + MS, update, &[]);
    assert_eq!(events(&mut host), [Event::Writable(id)]);
    assert_eq!(
        host.send_now(id, 65536).unwrap().map(|(_, n)| n),
        Some(8192)
    );
    // Told once per wait: a second update with nobody waiting says nothing.
    let update = Header {
        fwd_cnt: 16384,
        ..update
    };
    feed(&mut host, now + 2 * MS, update, &[]);
    assert!(events(&mut host).is_empty());
}

#[test]
fn a_direct_writer_never_granted_credit_asks_for_it_after_the_delay() {
    let now = Instant::now();
    let (mut host, id, local) = connected(now, 4096, |_| {});
    let delay = host.config().credit_request_delay;
    assert!(host.send_now(id, 4096).unwrap().is_some());
    drain(&mut host, u32::MAX);
    assert_eq!(host.send_now(id, 4096), Ok(None));
    host.wait_writable(id).unwrap();
    assert_eq!(host.poll_timeout(), Some(now + delay));
    host.handle_timeout(now + delay);
    assert_eq!(ops(&drain(&mut host, u32::MAX)), [Op::CreditRequest]);
    host.wait_writable(id).unwrap();
    host.handle_timeout(now + 10 * delay);
    assert!(drain(&mut host, u32::MAX).is_empty(), "asked twice");
    let update = Header {
        buf_alloc: 4096,
        fwd_cnt: 4096,
        ..from_peer(1024, local, Op::CreditUpdate, STREAM)
    };
    feed(&mut host, now + 10 * delay, update, &[]);
    assert_eq!(events(&mut host), [Event::Writable(id)]);
}

#[test]
fn a_direct_writer_behind_queued_bytes_is_told_when_they_leave() {
    let now = Instant::now();
    let (mut host, id, _) = connected(now, 256 * 1024, |_| {});
    assert_eq!(host.send(id, &[1; 1000]), Ok(1000));
    assert_eq!(host.send_now(id, 65536), Ok(None), "queued bytes go first");
    host.wait_writable(id).unwrap();
    assert_eq!(
        host.poll_timeout(),
        None,
        "not short of credit: nothing to ask"
    );
    assert_eq!(rw_lens(&drain(&mut host, u32::MAX)), [1000]);
    assert_eq!(events(&mut host), [Event::Writable(id)]);
    assert!(host.send_now(id, 65536).unwrap().is_some());
}

#[test]
fn a_closed_handle_is_not_told_of_credit_it_waited_for() {
    // Found by the engine fuzz target: the wait outlived the handle.
    let now = Instant::now();
    let (mut host, id, local) = connected(now, 4096, |_| {});
    assert!(host.send_now(id, 4096).unwrap().is_some());
    assert_eq!(host.send_now(id, 4096), Ok(None));
    host.wait_writable(id).unwrap();
    host.close(now, id);
    let update = Header {
        buf_alloc: 4096,
        fwd_cnt: 4096,
        ..from_peer(1024, local, Op::CreditUpdate, STREAM)
    };
    feed(&mut host, now + MS, update, &[]);
    assert!(events(&mut host).is_empty());
}

#[test]
fn a_direct_write_never_overtakes_the_response() {
    // Found by the engine fuzz target: an RW written straight after accept went out
    // before the RESPONSE the engine still held.
    let (mut host, id) = accepted(Instant::now(), 80, 5000, STREAM);
    assert_eq!(host.send_now(id, 1000), Ok(None), "RESPONSE first");
    host.wait_writable(id).unwrap();
    assert_eq!(ops(&drain(&mut host, u32::MAX)), [Op::Response]);
    assert_eq!(events(&mut host), [Event::Writable(id)]);
    assert_eq!(host.send_now(id, 1000).unwrap().map(|(_, n)| n), Some(1000));
}

#[test]
fn waiting_to_write_on_a_closed_connection_is_an_error() {
    let now = Instant::now();
    let (mut host, id, _) = connected(now, 4096, |_| {});
    host.shutdown(id, tether_vsock::Shutdown::Write).unwrap();
    assert!(host.wait_writable(id).is_err());
}

#[test]
fn credit_announced_by_the_peer_in_time_cancels_the_request() {
    let now = Instant::now();
    let (mut host, id, local) = connected(now, 4096, |_| {});
    let delay = host.config().credit_request_delay;
    assert_eq!(host.send(id, &[9; 10_000]), Ok(10_000));
    assert_eq!(ops(&drain(&mut host, u32::MAX)), [Op::Rw]);
    let update = Header {
        buf_alloc: 4096,
        fwd_cnt: 4096,
        ..from_peer(1024, local, Op::CreditUpdate, STREAM)
    };
    feed(&mut host, now + delay / 2, update, &[]);
    assert_eq!(ops(&drain(&mut host, u32::MAX)), [Op::Rw]);
    // Starved again: the request is armed afresh from the update's time, not the first.
    host.handle_timeout(now + delay);
    assert!(drain(&mut host, u32::MAX).is_empty());
    host.handle_timeout(now + delay / 2 + delay);
    assert_eq!(ops(&drain(&mut host, u32::MAX)), [Op::CreditRequest]);
}

#[test]
fn credit_request_is_answered_with_credit_update() {
    let now = Instant::now();
    let (mut host, id, local) = connected(now, 4096, |c| c.buf_alloc = 1000);
    feed(
        &mut host,
        now,
        from_peer(1024, local, Op::Rw, STREAM),
        &[5; 100],
    );
    assert_eq!(host.recv(id, &mut [0; 40]), Ok(40));
    assert!(
        drain(&mut host, u32::MAX).is_empty(),
        "40 bytes are not worth an update"
    );
    feed(
        &mut host,
        now,
        from_peer(1024, local, Op::CreditRequest, STREAM),
        &[],
    );
    let out = drain(&mut host, u32::MAX);
    assert_eq!(ops(&out), [Op::CreditUpdate]);
    assert_eq!((out[0].header.buf_alloc, out[0].header.fwd_cnt), (1000, 40));
}

#[test]
fn small_reads_do_not_each_send_a_credit_update() {
    let mut p = Pair::with(|c| c.buf_alloc = 64 * 1024);
    let (h, g) = p.establish(1024, STREAM);
    p.host
        .engine
        .send(h, &support::pattern(2, 48 * 1024))
        .unwrap();
    p.pump();
    let before = p.log.len();
    let mut total = 0;
    let mut buf = [0u8; 100];
    while let Ok(n @ 1..) = p.guest.engine.recv(g, &mut buf) {
        total += n;
        p.pump();
    }
    assert_eq!(total, 48 * 1024);
    let reads = total.div_ceil(100);
    let updates = p.log[before..]
        .iter()
        .filter(|h| h.op() == Some(Op::CreditUpdate))
        .count();
    assert_eq!(
        p.log.len() - before,
        updates,
        "only credit updates after the data"
    );
    // One update per quarter of the buffer consumed, not one per read.
    assert!(
        (2..=3).contains(&updates),
        "{updates} updates for {reads} reads"
    );
}

#[test]
fn starved_peer_gets_credit_update_after_a_read() {
    let mut p = Pair::with(|c| c.buf_alloc = 4096);
    let (h, g) = p.establish(1024, STREAM);
    p.host.engine.send(h, &support::pattern(3, 8192)).unwrap();
    p.pump();
    assert_eq!(p.guest.engine.readable_len(g), 4096);
    assert_eq!(p.host.engine.send_queue_len(h), 4096);
    assert_eq!(p.count(HOST, Op::CreditRequest), 0, "not before the delay");
    assert_eq!(p.count(GUEST, Op::CreditUpdate), 0);

    let before = p.log.len();
    assert_eq!(p.guest.engine.recv(g, &mut [0; 1]), Ok(1));
    p.pump();
    assert!(
        p.log[before..]
            .iter()
            .any(|h| h.src_cid == GUEST && h.op() == Some(Op::CreditUpdate)),
        "a peer stalled on zero credit must hear about freed room"
    );
    let (rest, _) = p.read_stream(End::Guest, g, 512);
    assert_eq!(rest.len(), 8191);
    assert_eq!(p.host.engine.send_queue_len(h), 0);
}

#[test]
fn rw_beyond_granted_credit_is_a_protocol_violation() {
    let now = Instant::now();
    let (mut host, id, local) = connected(now, 4096, |c| c.buf_alloc = 100);
    feed(
        &mut host,
        now,
        from_peer(1024, local, Op::Rw, STREAM),
        &[1; 60],
    );
    assert!(drain(&mut host, u32::MAX).is_empty());
    feed(
        &mut host,
        now,
        from_peer(1024, local, Op::Rw, STREAM),
        &[2; 41],
    );
    let out = drain(&mut host, u32::MAX);
    assert_eq!(ops(&out), [Op::Rst]);
    let evs = events(&mut host);
    assert!(matches!(
        evs.as_slice(),
        [Event::Readable(a), Event::Closed(b, CloseReason::ProtocolViolation(_))] if *a == id && *b == id
    ));
    assert_eq!(host.stats().violations, 1);
    assert_eq!(host.readable_len(id), 60, "accepted data stays readable");
    assert_eq!(host.recv(id, &mut [0; 100]), Ok(60));
    assert!(matches!(
        host.recv(id, &mut [0; 100]),
        Err(StreamError::Closed(CloseReason::ProtocolViolation(_)))
    ));
}

#[test]
fn credit_counters_wrap_around_u32() {
    use tether_vsock::credit::{RxCredit, TxCredit};
    let mut tx = TxCredit {
        tx_cnt: u32::MAX - 99,
        peer_buf_alloc: 300,
        peer_fwd_cnt: u32::MAX - 199,
    };
    assert_eq!(tx.available(), 200);
    tx.consume(200);
    assert_eq!(tx.tx_cnt, 100);
    assert_eq!(tx.available(), 0);
    tx.update(300, 50);
    assert_eq!(tx.available(), 250);
    // A fwd_cnt ahead of what was sent is nonsense and grants nothing.
    tx.update(300, 101);
    assert_eq!(tx.available(), 0);

    let mut rx = RxCredit::new(300);
    rx.rx_cnt = u32::MAX - 9;
    rx.fwd_cnt = u32::MAX - 9;
    rx.last_advertised = u32::MAX - 9;
    assert!(rx.receive(300));
    assert_eq!(rx.rx_cnt, 290);
    assert_eq!(rx.buffered(), 300);
    assert!(!rx.receive(1));
    rx.consume(20);
    assert_eq!(rx.fwd_cnt, 10);
    assert_eq!(rx.free(), 20);
    assert_eq!(rx.peer_visible_free(), 0);
    assert!(rx.update_worthwhile(1000), "stalled peer");
    rx.advertised();
    assert_eq!(rx.peer_visible_free(), 20);
}

#[test]
fn engine_counters_wrap_around_u32() {
    // Push a little over 4 GiB each way through one engine, by reference (no copying),
    // with the test playing the peer. Near the wrap both directions are filled to the
    // brim so the in-flight window straddles it.
    const CHUNK: usize = 64 * 1024;
    const WINDOW: u32 = 256 * 1024;
    let now = Instant::now();
    let (mut host, id, local) = connected(now, WINDOW, |c| c.send_buf = 2 * WINDOW);
    let chunk = Bytes::from(vec![0xa5u8; CHUNK]);
    let peer = |op: Op, fwd_cnt: u32| Header {
        fwd_cnt,
        buf_alloc: WINDOW,
        ..from_peer(1024, local, op, STREAM)
    };
    let mut sent: u32 = 0; // by the engine, acknowledged by the test at once
    let mut received: u32 = 0; // by the engine, and read by the application
    let mut last_fwd = 0;
    // Stop two chunks short of the wrap.
    for _ in 0..(1u64 << 32) / CHUNK as u64 - 2 {
        assert_eq!(host.send_bytes(id, chunk.clone()), Ok(CHUNK));
        let out = drain(&mut host, u32::MAX);
        let lens = rw_lens(&out);
        assert_eq!(lens.iter().sum::<usize>(), CHUNK, "{:?}", ops(&out));
        sent = sent.wrapping_add(CHUNK as u32);
        for t in out
            .iter()
            .filter(|t| t.header.op() == Some(Op::CreditUpdate))
        {
            last_fwd = t.header.fwd_cnt;
        }
        feed(
            &mut host,
            now,
            Header {
                len: 0,
                ..peer(Op::CreditUpdate, sent)
            },
            &[],
        );

        let mut hdr = peer(Op::Rw, sent);
        hdr.len = CHUNK as u32;
        host.handle_packet(now, &hdr, chunk.clone()).unwrap();
        received = received.wrapping_add(CHUNK as u32);
        assert_eq!(host.recv_bytes(id, CHUNK).unwrap().len(), CHUNK);
        events(&mut host);
    }
    assert_eq!(sent, u32::MAX - 2 * CHUNK as u32 + 1);
    let out = drain(&mut host, u32::MAX);
    if let Some(t) = out
        .iter()
        .rev()
        .find(|t| t.header.op() == Some(Op::CreditUpdate))
    {
        last_fwd = t.header.fwd_cnt;
    }
    assert_eq!(last_fwd, received, "every read was advertised");

    // Send side: no more acknowledgements; the engine fills exactly the window, which
    // crosses the wrap, then asks for credit.
    let more = 2 * WINDOW as usize;
    assert_eq!(host.send_bytes(id, Bytes::from(vec![1u8; more])), Ok(more));
    let out = drain(&mut host, u32::MAX);
    assert_eq!(rw_lens(&out).iter().sum::<usize>(), WINDOW as usize);
    host.handle_timeout(now + host.config().credit_request_delay);
    assert_eq!(ops(&drain(&mut host, u32::MAX)), [Op::CreditRequest]);
    let acked = sent;
    sent = sent.wrapping_add(WINDOW);
    assert!(sent < acked, "the window straddles the wrap");
    feed(
        &mut host,
        now,
        peer(Op::CreditUpdate, acked.wrapping_add(CHUNK as u32)),
        &[],
    );
    assert_eq!(rw_lens(&drain(&mut host, u32::MAX)), [CHUNK]);

    // Receive side: fill our whole buffer across the wrap without reading; one byte more
    // is beyond the credit granted.
    for _ in 0..WINDOW as usize / CHUNK {
        let mut hdr = peer(Op::Rw, sent);
        hdr.len = CHUNK as u32;
        host.handle_packet(now, &hdr, chunk.clone()).unwrap();
    }
    assert_eq!(host.readable_len(id), WINDOW as usize);
    assert!(drain(&mut host, u32::MAX)
        .iter()
        .all(|t| t.header.op() != Some(Op::Rst)));
    feed(&mut host, now, peer(Op::Rw, sent), &[0]);
    assert_eq!(ops(&drain(&mut host, u32::MAX)), [Op::Rst]);
    assert!(matches!(
        events(&mut host).last(),
        Some(Event::Closed(_, CloseReason::ProtocolViolation(_)))
    ));
    // What was accepted across the wrap is intact.
    let mut total = 0;
    while let Ok(b) = host.recv_bytes(id, usize::MAX) {
        if b.is_empty() {
            break;
        }
        assert!(b.iter().all(|&x| x == 0xa5));
        total += b.len();
    }
    assert_eq!(total, WINDOW as usize);
}

// ---- malformed and unexpected packets ----

#[test]
fn unknown_op_and_unknown_type_get_rst() {
    let now = Instant::now();
    let mut host = host_engine(|_| {});
    host.listen(80, STREAM);
    for (op, type_) in [
        (0u16, 1u16),
        (8, 1),
        (0xffff, 2),
        (1, 0),
        (1, 3),
        (5, 0xffff),
    ] {
        let hdr = Header {
            op,
            type_,
            ..from_peer(5000, 80, Op::Request, STREAM)
        };
        feed(&mut host, now, hdr, &[]);
        let out = drain(&mut host, u32::MAX);
        assert_eq!(ops(&out), [Op::Rst], "op {op} type {type_}");
        assert_eq!((out[0].header.src_port, out[0].header.dst_port), (80, 5000));
        assert!(
            events(&mut host).is_empty(),
            "op {op} type {type_} created a connection"
        );
    }
    assert_eq!(host.stats().connections, 0);
}

#[test]
fn unknown_op_on_a_live_connection_resets_it_on_both_ends() {
    let now = Instant::now();
    let (mut host, id, local) = connected(now, 4096, |_| {});
    let hdr = Header {
        op: 42,
        ..from_peer(1024, local, Op::Rw, STREAM)
    };
    feed(&mut host, now, hdr, &[]);
    assert_eq!(ops(&drain(&mut host, u32::MAX)), [Op::Rst]);
    // The peer drops its end on our RST, so ours must not linger as if established.
    assert!(matches!(
        events(&mut host).as_slice(),
        [Event::Closed(x, CloseReason::ProtocolViolation(_))] if *x == id
    ));
    assert!(matches!(host.send(id, b"x"), Err(StreamError::Closed(_))));
}

#[test]
fn packets_for_unknown_connections_get_rst() {
    let now = Instant::now();
    let mut host = host_engine(|_| {});
    for op in [
        Op::Response,
        Op::Shutdown,
        Op::Rw,
        Op::CreditUpdate,
        Op::CreditRequest,
    ] {
        let payload: &[u8] = if op == Op::Rw { b"stray" } else { b"" };
        feed(&mut host, now, from_peer(6, 7, op, STREAM), payload);
        let out = drain(&mut host, u32::MAX);
        assert_eq!(ops(&out), [Op::Rst], "{op:?}");
        assert_eq!((out[0].header.src_port, out[0].header.dst_port), (7, 6));
    }
    assert!(events(&mut host).is_empty());
}

#[test]
fn malformed_packets_are_rejected_and_change_nothing() {
    let now = Instant::now();
    let (mut host, id, local) = connected(now, 4096, |c| c.max_payload = 1024);
    host.listen(80, STREAM);
    feed(
        &mut host,
        now,
        from_peer(1024, local, Op::Rw, STREAM),
        b"abc",
    );
    assert_eq!(events(&mut host), [Event::Readable(id)]);
    let stats = host.stats();

    let rw = Header {
        len: 3,
        ..from_peer(1024, local, Op::Rw, STREAM)
    };
    let req = from_peer(5000, 80, Op::Request, STREAM);
    let rst = from_peer(1024, local, Op::Rst, STREAM);
    let cases: Vec<(Header, Bytes, PacketError)> = vec![
        (
            Header { dst_cid: 4, ..rw },
            Bytes::from_static(b"xyz"),
            PacketError::WrongDestination {
                expected: HOST,
                got: 4,
            },
        ),
        (
            Header { src_cid: 9, ..rst },
            Bytes::new(),
            PacketError::WrongSource {
                expected: GUEST,
                got: 9,
            },
        ),
        (
            Header { dst_cid: 3, ..req },
            Bytes::new(),
            PacketError::WrongDestination {
                expected: HOST,
                got: 3,
            },
        ),
        (
            rw,
            Bytes::from_static(b"xy"),
            PacketError::LengthMismatch {
                declared: 3,
                actual: 2,
            },
        ),
        (
            Header { len: 0, ..rst },
            Bytes::from_static(b"x"),
            PacketError::LengthMismatch {
                declared: 0,
                actual: 1,
            },
        ),
        (
            Header { len: 1025, ..rw },
            Bytes::from(vec![0; 1025]),
            PacketError::TooLarge {
                len: 1025,
                max: 1024,
            },
        ),
    ];
    for (hdr, payload, err) in cases {
        assert_eq!(host.handle_packet(now, &hdr, payload), Err(err));
        assert!(
            drain(&mut host, u32::MAX).is_empty(),
            "{hdr:?} drew a reply"
        );
        assert!(events(&mut host).is_empty(), "{hdr:?} raised an event");
        assert_eq!(host.readable_len(id), 3);
        assert_eq!(host.stats(), stats);
    }
    // The connection is as it was.
    let mut buf = [0u8; 8];
    assert_eq!(host.recv(id, &mut buf), Ok(3));
    assert_eq!(&buf[..3], b"abc");
    host.send(id, b"ok").unwrap();
    assert_eq!(rw_lens(&drain(&mut host, u32::MAX)), [2]);
}

#[test]
fn second_request_on_a_live_connection_is_a_violation() {
    let now = Instant::now();
    let (mut host, id, local) = connected(now, 4096, |_| {});
    feed(
        &mut host,
        now,
        from_peer(1024, local, Op::Request, STREAM),
        &[],
    );
    assert_eq!(ops(&drain(&mut host, u32::MAX)), [Op::Rst]);
    assert!(matches!(
        events(&mut host).as_slice(),
        [Event::Closed(x, CloseReason::ProtocolViolation(_))] if *x == id
    ));
}

#[test]
fn socket_type_change_mid_connection_is_a_violation() {
    let now = Instant::now();
    let (mut host, id, local) = connected(now, 4096, |_| {});
    feed(
        &mut host,
        now,
        from_peer(1024, local, Op::Rw, SEQPACKET),
        b"x",
    );
    assert_eq!(ops(&drain(&mut host, u32::MAX)), [Op::Rst]);
    assert!(matches!(
        events(&mut host).as_slice(),
        [Event::Closed(x, CloseReason::ProtocolViolation(_))] if *x == id
    ));
    assert_eq!(host.readable_len(id), 0);
}

// ---- table, handles, scheduling ----

#[test]
fn connection_table_is_bounded() {
    let mut host = Config::new(HOST, GUEST);
    host.max_connections = 2;
    let mut guest = Config::new(GUEST, HOST);
    guest.max_connections = 2;
    let mut p = Pair::new(host, guest);
    p.guest.engine.listen(1024, STREAM);
    p.host.engine.listen(1024, STREAM);
    let a = p.guest.engine.connect(p.now, 1024, STREAM).unwrap();
    let b = p.guest.engine.connect(p.now, 1024, STREAM).unwrap();
    assert_eq!(
        p.guest.engine.connect(p.now, 1024, STREAM),
        Err(SetupError::TableFull(2))
    );
    p.pump();
    let incoming: Vec<ConnId> = p
        .host
        .take_events()
        .into_iter()
        .map(|e| match e {
            Event::Incoming { id, .. } => id,
            other => panic!("{other:?}"),
        })
        .collect();
    assert_eq!(incoming.len(), 2);
    assert_eq!(p.host.engine.stats().connections, 2);

    // The host table is full too: a third REQUEST from anywhere is refused with RST.
    let mut guest2 = Engine::new(Config::new(GUEST, HOST));
    let c = guest2.connect_from(p.now, 7, 1024, STREAM).unwrap();
    for t in drain(&mut guest2, u32::MAX) {
        p.host
            .engine
            .handle_packet(p.now, &t.header, t.payload)
            .unwrap();
    }
    assert!(p.host.take_events().is_empty() && p.host.engine.poll_event().is_none());
    let out = drain(&mut p.host.engine, u32::MAX);
    assert_eq!(ops(&out), [Op::Rst]);
    for t in out {
        guest2.handle_packet(p.now, &t.header, t.payload).unwrap();
    }
    assert_eq!(
        events(&mut guest2),
        [Event::Closed(c, CloseReason::Refused)]
    );

    // Room comes back when a connection goes.
    p.guest.engine.close(p.now, a);
    p.pump();
    assert_eq!(p.guest.engine.stats().connections, 1);
    assert!(p.guest.engine.connect(p.now, 1024, STREAM).is_ok());
    let _ = b;
}

#[test]
fn stale_handle_is_unknown_even_when_its_slot_is_reused() {
    let now = Instant::now();
    let mut host = host_engine(|_| {});
    let old = host.connect(now, 1024, STREAM).unwrap();
    host.close(now, old);
    assert_eq!(ops(&drain(&mut host, u32::MAX)), [Op::Rst]);
    let new = host.connect(now, 1024, STREAM).unwrap();
    assert_ne!(old, new);
    // Same slot, next generation: the table did reuse the slot.
    assert_eq!(format!("{old:?}"), "ConnId { index: 0, generation: 0 }");
    assert_eq!(format!("{new:?}"), "ConnId { index: 0, generation: 1 }");

    assert_eq!(host.send(old, b"x"), Err(StreamError::UnknownConnection));
    assert_eq!(
        host.send_message(old, Bytes::new(), false),
        Err(StreamError::UnknownConnection)
    );
    assert_eq!(
        host.recv(old, &mut [0; 4]),
        Err(StreamError::UnknownConnection)
    );
    assert_eq!(host.recv_bytes(old, 4), Err(StreamError::UnknownConnection));
    assert_eq!(host.accept(old), Err(StreamError::UnknownConnection));
    assert_eq!(
        host.shutdown(old, Shutdown::Both),
        Err(StreamError::UnknownConnection)
    );
    assert_eq!(host.ports(old), None);
    assert_eq!(host.readable_len(old), 0);
    host.close(now, old);
    assert_eq!(host.connections().collect::<Vec<_>>(), [new]);
    assert_eq!(
        host.send(new, b"hi"),
        Ok(2),
        "the stale close did not reach the new connection"
    );
    assert_eq!(ops(&drain(&mut host, u32::MAX)), [Op::Request]);
}

#[test]
fn reset_all_reports_engine_reset_and_keeps_listeners() {
    let mut p = Pair::default();
    let (h1, g1) = p.establish(1024, STREAM);
    let (g2, h2) = p.establish_from(End::Guest, 2048, SEQPACKET);
    p.host.engine.send(h1, b"unsent").unwrap();
    let log_len = p.log.len();
    p.host.engine.reset_all(CloseReason::EngineReset);
    assert!(
        p.host.engine.poll_transmit(u32::MAX).is_none(),
        "reset_all is silent"
    );
    let mut evs = p.host.take_events();
    while let Some(e) = p.host.engine.poll_event() {
        evs.push(e);
    }
    evs.sort_by_key(|e| format!("{e:?}"));
    let mut want = vec![
        Event::Closed(h1, CloseReason::EngineReset),
        Event::Closed(h2, CloseReason::EngineReset),
    ];
    want.sort_by_key(|e| format!("{e:?}"));
    assert_eq!(evs, want);
    assert_eq!(p.host.engine.stats().connections, 0);
    assert_eq!(p.log.len(), log_len);
    assert_eq!(
        p.host.engine.send(h1, b"x"),
        Err(StreamError::Closed(CloseReason::EngineReset))
    );

    // The guest learns when it next speaks: the host no longer knows the connection.
    p.guest.engine.send(g1, b"hello?").unwrap();
    p.pump();
    assert!(p
        .guest
        .take_events()
        .contains(&Event::Closed(g1, CloseReason::Reset)));

    // The host's listener on 2048 survived.
    let g3 = p.guest.engine.connect(p.now, 2048, SEQPACKET).unwrap();
    p.pump();
    assert!(matches!(
        p.host.take_events().as_slice(),
        [Event::Incoming {
            local_port: 2048,
            ..
        }]
    ));
    assert_ne!(g3, g2);
}

#[test]
fn data_is_scheduled_round_robin_and_control_goes_first() {
    let now = Instant::now();
    let mut host = host_engine(|_| {});
    let a = host.connect(now, 1024, STREAM).unwrap();
    let b = host.connect(now, 1024, STREAM).unwrap();
    let out = drain(&mut host, u32::MAX);
    let (pa, pb) = (out[0].header.src_port, out[1].header.src_port);
    for port in [pa, pb] {
        feed(
            &mut host,
            now,
            from_peer(1024, port, Op::Response, STREAM),
            &[],
        );
    }
    events(&mut host);
    host.send(a, &[0xa; 8192]).unwrap();
    host.send(b, &[0xb; 8192]).unwrap();

    let mut order = Vec::new();
    for _ in 0..4 {
        let t = host.poll_transmit(1024).unwrap();
        assert_eq!(t.header.op(), Some(Op::Rw));
        order.push(t.header.src_port);
    }
    assert_eq!(order, [pa, pb, pa, pb]);

    // Control packets overtake queued data, and orphan RSTs go before anything.
    feed(
        &mut host,
        now,
        from_peer(1024, pb, Op::CreditRequest, STREAM),
        &[],
    );
    host.shutdown(a, Shutdown::Read).unwrap();
    feed(&mut host, now, from_peer(77, 88, Op::Rw, STREAM), b"?");
    let next: Vec<(Op, u32)> = (0..3)
        .map(|_| host.poll_transmit(1024).unwrap())
        .map(|t| (t.header.op().unwrap(), t.header.src_port))
        .collect();
    assert_eq!(next[0], (Op::Rst, 88));
    let mut ctrl = next[1..].to_vec();
    ctrl.sort_by_key(|(op, _)| op.to_u16());
    assert_eq!(ctrl, [(Op::Shutdown, pa), (Op::CreditUpdate, pb)]);

    let mut order = Vec::new();
    while let Some(t) = host.poll_transmit(1024) {
        order.push(t.header.src_port);
    }
    assert_eq!(order.len(), 12);
    assert!(order.chunks(2).all(|w| w[0] != w[1]), "{order:?}");
}

#[test]
fn poll_transmit_respects_the_payload_limit() {
    let now = Instant::now();
    let (mut host, id, local) = connected(now, 256 * 1024, |c| c.max_payload = 2000);
    host.send(id, &[1; 10_000]).unwrap();
    // No room for any payload: data waits, control packets still go.
    assert!(host.poll_transmit(0).is_none());
    feed(
        &mut host,
        now,
        from_peer(1024, local, Op::CreditRequest, STREAM),
        &[],
    );
    assert_eq!(
        host.poll_transmit(0).map(|t| t.header.op()),
        Some(Some(Op::CreditUpdate))
    );
    assert!(host.poll_transmit(0).is_none());

    for (limit, want) in [
        (1, 1),
        (700, 700),
        (1999, 1999),
        (u32::MAX, 2000),
        (2001, 2000),
    ] {
        let t = host.poll_transmit(limit).unwrap();
        assert_eq!(t.payload.len(), want, "limit {limit}");
        assert_eq!(t.header.len as usize, want);
    }
    let rest: usize = drain(&mut host, 333).iter().map(|t| t.payload.len()).sum();
    assert_eq!(rest, 10_000 - 1 - 700 - 1999 - 2000 - 2000);
}

#[test]
fn full_send_queue_takes_what_fits_then_reports_writable() {
    let mut p = Pair::with(|c| c.send_buf = 1000);
    let (h, g) = p.establish(1024, STREAM);
    assert_eq!(p.host.engine.send(h, &[3; 1500]), Ok(1000));
    assert_eq!(p.host.engine.send(h, b"x"), Err(StreamError::WouldBlock));
    p.pump();
    assert!(p.host.take_events().contains(&Event::Writable(h)));
    assert_eq!(p.host.engine.send(h, &[4; 500]), Ok(500));
    p.pump();
    let (got, _) = p.read_stream(End::Guest, g, 4096);
    assert_eq!(got.len(), 1500);
    assert!(got[..1000].iter().all(|&b| b == 3) && got[1000..].iter().all(|&b| b == 4));
}

// ---- seqpacket ----

#[test]
fn seqpacket_keeps_message_boundaries_across_packets() {
    let mut p = Pair {
        limit: 100,
        ..Pair::default()
    };
    let (h, g) = p.establish(2000, SEQPACKET);
    let m1 = support::pattern(10, 1000);
    let m2 = support::pattern(11, 250);
    let m3 = support::pattern(12, 100);
    p.host.engine.send_message(h, m1.clone(), true).unwrap();
    p.host.engine.send_message(h, m2.clone(), false).unwrap();
    p.host.engine.send_message(h, m3.clone(), true).unwrap();
    let before = p.log.len();
    p.pump();
    let rws: Vec<(u32, u32)> = p.log[before..]
        .iter()
        .filter(|h| h.op() == Some(Op::Rw))
        .map(|h| (h.len, h.flags))
        .collect();
    let eom_eor = seqpacket::EOM | seqpacket::EOR;
    let mut want = vec![(100, 0); 9];
    want.push((100, eom_eor));
    want.extend([(100, 0), (100, 0), (50, seqpacket::EOM), (100, eom_eor)]);
    assert_eq!(rws, want);

    let e = &mut p.guest.engine;
    assert_eq!(
        e.recv_message(g),
        Ok(Some(Message {
            data: m1,
            eor: true
        }))
    );
    assert_eq!(
        e.recv_message(g),
        Ok(Some(Message {
            data: m2,
            eor: false
        }))
    );
    assert_eq!(
        e.recv_message(g),
        Ok(Some(Message {
            data: m3,
            eor: true
        }))
    );
    assert_eq!(e.recv_message(g), Err(StreamError::WouldBlock));
    assert_eq!(
        e.recv(g, &mut [0; 4]),
        Err(StreamError::WrongType(SEQPACKET))
    );
    assert_eq!(
        p.host.engine.send(h, b"x"),
        Err(StreamError::WrongType(SEQPACKET))
    );

    p.host.engine.shutdown(h, Shutdown::Write).unwrap();
    p.pump();
    assert_eq!(p.guest.engine.recv_message(g), Ok(None), "end of stream");
}

#[test]
fn seqpacket_partial_message_is_not_readable() {
    let now = Instant::now();
    let (mut host, id) = accepted(now, 9, 500, SEQPACKET);
    drain(&mut host, u32::MAX);
    feed(
        &mut host,
        now,
        from_peer(500, 9, Op::Rw, SEQPACKET),
        b"part one, ",
    );
    assert_eq!(host.recv_message(id), Err(StreamError::WouldBlock));
    assert!(events(&mut host).is_empty(), "Readable for half a message");
    let mut last = from_peer(500, 9, Op::Rw, SEQPACKET);
    last.flags = seqpacket::EOM;
    feed(&mut host, now, last, b"part two");
    assert_eq!(events(&mut host), [Event::Readable(id)]);
    assert_eq!(
        host.recv_message(id),
        Ok(Some(Message {
            data: Bytes::from_static(b"part one, part two"),
            eor: false
        }))
    );
}

#[test]
fn seqpacket_message_too_large_for_the_peer_is_refused() {
    let mut p = Pair::with(|c| {
        c.buf_alloc = 4096;
        c.send_buf = 64 * 1024;
    });
    let (h, _) = p.establish(2000, SEQPACKET);
    assert_eq!(
        p.host
            .engine
            .send_message(h, Bytes::from(vec![0; 4097]), false),
        Err(StreamError::MessageTooLarge {
            len: 4097,
            max: 4096
        })
    );
    assert_eq!(
        p.host
            .engine
            .send_message(h, Bytes::from(vec![0; 4096]), false),
        Ok(())
    );
    assert_eq!(
        p.host
            .engine
            .send_message(h, Bytes::from(vec![0; 70_000]), false),
        Err(StreamError::MessageTooLarge {
            len: 70_000,
            max: 4096
        })
    );
}

#[test]
fn seqpacket_empty_message_is_delivered() {
    let mut p = Pair::default();
    let (h, g) = p.establish(2000, SEQPACKET);
    p.host.engine.send_message(h, Bytes::new(), true).unwrap();
    p.host
        .engine
        .send_message(h, Bytes::from_static(b"after"), false)
        .unwrap();
    p.pump();
    let e = &mut p.guest.engine;
    assert_eq!(
        e.recv_message(g),
        Ok(Some(Message {
            data: Bytes::new(),
            eor: true
        }))
    );
    assert_eq!(
        e.recv_message(g),
        Ok(Some(Message {
            data: Bytes::from_static(b"after"),
            eor: false
        }))
    );
}

#[test]
fn seqpacket_large_messages_behind_small_ones_do_not_stall() {
    // Small messages the reader can take, each followed by one nearly filling the
    // receive buffer: the sender stalls mid-message on a little credit while the reader
    // has only a partial message left.
    let mut p = Pair::with(|c| {
        c.buf_alloc = 4096;
        c.max_payload = 1024;
    });
    let (h, g) = p.establish(2000, SEQPACKET);
    let mut want = Vec::new();
    for i in 0..6u64 {
        want.push(support::pattern(i, 100));
        want.push(support::pattern(100 + i, 4000));
    }
    let mut queued = 0;
    let mut got = Vec::new();
    for _round in 0..1000 {
        while queued < want.len()
            && p.host
                .engine
                .send_message(h, want[queued].clone(), false)
                .is_ok()
        {
            queued += 1;
        }
        let moved = p.pump();
        let mut read = 0;
        while let Ok(Some(m)) = p.guest.engine.recv_message(g) {
            got.push(m.data);
            read += 1;
        }
        assert!(p.guest.engine.readable_len(g) <= 4096);
        if got.len() == want.len() || (moved == 0 && read == 0) {
            break;
        }
    }
    assert_eq!(
        got.len(),
        want.len(),
        "stalled with {} of {} messages",
        got.len(),
        want.len()
    );
    assert_eq!(got, want);
}

#[test]
fn rst_of_another_socket_type_is_ignored() {
    // Found by fuzzing: the type check reset the connection, answering the RST.
    let now = Instant::now();
    let (mut host, id, local) = connected(now, 4096, |_| {});
    feed(
        &mut host,
        now,
        from_peer(1024, local, Op::Rst, SEQPACKET),
        &[],
    );
    assert!(drain(&mut host, u32::MAX).is_empty(), "RST answered");
    assert!(events(&mut host).is_empty());
    assert_eq!(host.send(id, b"still here"), Ok(10));
    assert_eq!(rw_lens(&drain(&mut host, u32::MAX)), [10]);
}

#[test]
fn released_handle_is_unknown_while_the_close_handshake_runs() {
    let now = Instant::now();
    let (mut host, id, _) = connected(now, 4096, |_| {});
    host.close(now, id);
    assert_eq!(host.stats().connections, 1, "still closing");
    assert_eq!(host.send(id, b"x"), Err(StreamError::UnknownConnection));
    assert_eq!(
        host.recv(id, &mut [0; 4]),
        Err(StreamError::UnknownConnection)
    );
    assert_eq!(host.accept(id), Err(StreamError::UnknownConnection));
    assert_eq!(
        host.shutdown(id, Shutdown::Read),
        Err(StreamError::UnknownConnection)
    );
    assert_eq!(host.ports(id), None);
    assert_eq!(host.connections().count(), 0);
    assert_eq!(ops(&drain(&mut host, u32::MAX)), [Op::Shutdown]);
}

#[test]
fn seqpacket_message_waits_for_the_peer_buffer_size() {
    let now = std::time::Instant::now();
    let mut host = Engine::new(Config::new(2, 3));
    let mut guest = Engine::new(Config::new(3, 2));
    guest.listen(9, SocketType::SeqPacket);
    let id = host.connect(now, 9, SocketType::SeqPacket).unwrap();
    assert_eq!(
        host.send_message(id, bytes::Bytes::from_static(b"early"), false),
        Err(StreamError::WouldBlock),
        "the peer's buffer size is unknown before RESPONSE"
    );
    let request = host.poll_transmit(u32::MAX).unwrap();
    guest
        .handle_packet(now, &request.header, request.payload)
        .unwrap();
    let Some(Event::Incoming { id: gid, .. }) = guest.poll_event() else {
        panic!("expected Incoming");
    };
    guest.accept(gid).unwrap();
    let response = guest.poll_transmit(u32::MAX).unwrap();
    host.handle_packet(now, &response.header, response.payload)
        .unwrap();
    assert_eq!(host.poll_event(), Some(Event::Connected(id)));
    assert_eq!(host.poll_event(), Some(Event::Writable(id)));
    host.send_message(id, bytes::Bytes::from_static(b"now"), true)
        .unwrap();
}
