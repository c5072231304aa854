//! The guest API itself, against vhost-device-vsock: config, negotiation, raw packets,
//! timeouts and clean failure when there is no backend.

use std::io::Write;
use std::time::{Duration, Instant};
use tether_vhost_harness::frontend::FrontendError;
use tether_vhost_harness::{hybrid, Backend, ConnError, Guest, GuestError, GuestOptions, TxLayout};
use tether_vsock::{Header, Op, SocketType, HOST_CID};

fn backend() -> Backend {
    Backend::vhost_device_vsock().unwrap_or_else(|e| panic!("{e}"))
}

#[test]
fn the_guest_cid_comes_from_the_device_config() {
    let b = backend().with_guest_cid(42).spawn().unwrap();
    let g = Guest::start(b.socket_path(), GuestOptions::default()).unwrap();
    assert_eq!(g.cid(), 42);
    let n = g.negotiated();
    assert_ne!(n.acked_features & (1 << 32), 0, "VERSION_1 acked");
    assert!(n.event_idx(), "vhost-device-vsock offers EVENT_IDX");
}

#[test]
fn without_event_idx_data_still_flows() {
    let b = backend().spawn().unwrap();
    let mut opts = GuestOptions::default();
    opts.frontend.event_idx = false;
    opts.frontend.reply_ack = false;
    let g = Guest::start(b.socket_path(), opts).unwrap();
    assert!(!g.negotiated().event_idx());
    g.listen(9);
    let (mut host, _) = hybrid::connect(b.uds_path(), 9, Duration::from_secs(2)).unwrap();
    let c = g.accept(Duration::from_secs(2)).unwrap();
    let data = vec![7u8; 300_000];
    host.write_all(&data).unwrap();
    let mut got = vec![0u8; data.len()];
    c.read_exact(&mut got).unwrap();
    assert_eq!(got, data);
}

#[test]
fn reads_time_out_within_their_bound() {
    let b = backend().spawn().unwrap();
    let g = Guest::start(b.socket_path(), GuestOptions::default()).unwrap();
    g.listen(9);
    let (_host, _) = hybrid::connect(b.uds_path(), 9, Duration::from_secs(2)).unwrap();
    let mut c = g.accept(Duration::from_secs(2)).unwrap();
    c.set_timeout(Duration::from_millis(100));
    let start = Instant::now();
    let mut buf = [0u8; 4];
    assert!(matches!(c.read(&mut buf), Err(ConnError::TimedOut(_))));
    assert!(start.elapsed() < Duration::from_secs(1));
    assert!(g.accept(Duration::from_millis(50)).is_none());
}

#[test]
fn host_close_is_end_of_stream_in_the_guest() {
    let b = backend().spawn().unwrap();
    let g = Guest::start(b.socket_path(), GuestOptions::default()).unwrap();
    g.listen(9);
    let (mut host, _) = hybrid::connect(b.uds_path(), 9, Duration::from_secs(2)).unwrap();
    let c = g.accept(Duration::from_secs(2)).unwrap();
    host.write_all(b"bye").unwrap();
    drop(host);
    // The backend may end the stream by SHUTDOWN or by RST; the bytes come first either way.
    let mut got = [0u8; 3];
    c.read_exact(&mut got).unwrap();
    assert_eq!(&got, b"bye");
}

#[test]
fn raw_packets_are_logged_and_their_chains_tracked() {
    let b = backend().spawn().unwrap();
    let g = Guest::start(b.socket_path(), GuestOptions::default()).unwrap();
    let listener = std::os::unix::net::UnixListener::bind(b.host_listen_path(77)).unwrap();
    // A hand-made REQUEST: the backend dials the host and answers RESPONSE, which the
    // engine (knowing no such connection) answers with RST; the log shows the RESPONSE.
    let h = Header {
        src_cid: g.cid(),
        dst_cid: HOST_CID,
        src_port: 5555,
        dst_port: 77,
        len: 0,
        type_: SocketType::Stream.to_u16(),
        op: Op::Request.to_u16(),
        flags: 0,
        buf_alloc: 65536,
        fwd_cnt: 0,
    };
    let mark = g.rx_mark();
    let id = g.send_raw_packet(&h, &[], TxLayout::Split).unwrap();
    assert!(g.raw_returned(id, Duration::from_secs(2)).is_some());
    let reply = g
        .wait_rx(mark, Duration::from_secs(2), |r| r.header.dst_port == 5555)
        .expect("a reply to the raw REQUEST");
    assert_eq!(reply.header.op(), Some(Op::Response));
    assert!(
        reply.rejected.is_none(),
        "well-formed, for an unknown connection"
    );
    drop(listener);
    assert_eq!(g.stats().tx_raw, 1);
}

#[test]
fn no_backend_is_a_clear_error_within_the_timeout() {
    let mut opts = GuestOptions::default();
    opts.frontend.connect_timeout = Duration::from_millis(200);
    let start = Instant::now();
    let err = Guest::start(std::path::Path::new("/nonexistent/vhost.sock"), opts).unwrap_err();
    assert!(start.elapsed() < Duration::from_secs(2));
    assert!(
        matches!(err, GuestError::Frontend(FrontendError::Connect { .. })),
        "{err}"
    );
}
