//! Dialing and listening over loopback TCP, Unix sockets and a mux link on a Unix socket;
//! peers falling back from a refused endpoint; endpoints that cannot be dialed here.
//! No AF_VSOCK socket is ever opened.

#[path = "support/tmpdir.rs"]
mod tmpdir;

use std::io::ErrorKind;
use std::path::Path;
use std::time::{Duration, Instant};
use tether_transport::mux::{Mux, MuxConfig, MuxListener};
use tether_transport::{DialOptions, Endpoint, Peer, Remote, Stream, Transport, TransportError};
use tmpdir::TempDir;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::UnixListener;
use tokio::time::timeout;

const LIMIT: Duration = Duration::from_secs(10);

fn ep(s: &str) -> Endpoint {
    s.parse().unwrap()
}

fn unix(path: &Path) -> Endpoint {
    ep(&format!("unix://{}", path.display()))
}

async fn read_all(s: &mut Stream) -> Vec<u8> {
    let mut v = Vec::new();
    timeout(LIMIT, s.read_to_end(&mut v))
        .await
        .expect("EOF in time")
        .expect("read");
    v
}

/// `first` half-closes; `second` reads EOF and can still answer, then half-closes too.
async fn half_close(first: &mut Stream, second: &mut Stream, tag: &str) {
    let req = format!("{tag}: request");
    first.write_all(req.as_bytes()).await.unwrap();
    first.shutdown().await.unwrap();
    assert_eq!(read_all(second).await, req.as_bytes());
    let rep = format!("{tag}: reply after EOF");
    second.write_all(rep.as_bytes()).await.unwrap();
    second.shutdown().await.unwrap();
    assert_eq!(read_all(first).await, rep.as_bytes());
}

async fn connected_pair(t: &Transport, listen: &Endpoint) -> (Stream, Stream, Endpoint) {
    let mut l = t.bind(listen).await.unwrap();
    let local = l.local_endpoint().clone();
    let (dialed, accepted) =
        tokio::join!(timeout(LIMIT, t.dial(&local)), timeout(LIMIT, l.accept()));
    (dialed.unwrap().unwrap(), accepted.unwrap().unwrap(), local)
}

#[tokio::test]
async fn tcp_dial_listen_and_half_close_both_ways() {
    let t = Transport::default();
    let (mut d, mut a, local) = connected_pair(&t, &ep("tcp://127.0.0.1:0")).await;
    let Endpoint::Tcp { host, port } = &local else {
        panic!("{local}")
    };
    assert_eq!(host, "127.0.0.1");
    assert_ne!(*port, 0, "local_endpoint reports the chosen port");
    match d.remote() {
        Remote::Tcp(addr) => assert_eq!(addr.port(), *port),
        other => panic!("{other:?}"),
    }
    assert!(matches!(a.remote(), Remote::Tcp(_)));
    assert!(d.as_raw_fd().is_some());
    half_close(&mut d, &mut a, "dialer first").await;

    let (mut d, mut a, _) = connected_pair(&t, &local_any_port()).await;
    half_close(&mut a, &mut d, "acceptor first").await;
}

fn local_any_port() -> Endpoint {
    ep("tcp://127.0.0.1:0")
}

#[tokio::test]
async fn unix_dial_listen_and_half_close_both_ways() {
    let dir = TempDir::new("tr");
    let path = dir.join("s.sock");
    let t = Transport::default();
    {
        let uep = unix(&path);
        let mut l = t.bind(&uep).await.unwrap();
        assert_eq!(l.local_endpoint(), &uep);
        assert!(path.exists());
        for first_is_dialer in [true, false] {
            let (d, a) = tokio::join!(timeout(LIMIT, t.dial(&uep)), timeout(LIMIT, l.accept()));
            let (mut d, mut a) = (d.unwrap().unwrap(), a.unwrap().unwrap());
            assert_eq!(d.remote(), &Remote::Unix);
            assert_eq!(a.remote(), &Remote::Unix);
            if first_is_dialer {
                half_close(&mut d, &mut a, "dialer first").await;
            } else {
                half_close(&mut a, &mut d, "acceptor first").await;
            }
        }
    }
    assert!(!path.exists(), "socket file removed with the listener");
}

/// A socket file nobody listens on: connecting is refused.
fn stale_socket(path: &Path) {
    drop(std::os::unix::net::UnixListener::bind(path).unwrap());
}

#[tokio::test]
async fn peer_falls_back_from_a_refused_endpoint() {
    let dir = TempDir::new("tr");
    let stale = dir.join("stale.sock");
    stale_socket(&stale);
    let t = Transport::default();
    let mut tl = t.bind(&local_any_port()).await.unwrap();
    let tcp = tl.local_endpoint().clone();
    let peer = Peer::new([tcp.clone(), unix(&stale)]);
    assert_eq!(
        peer.endpoints(),
        [unix(&stale), tcp.clone()],
        "unix tried first"
    );

    let (d, a) = tokio::join!(
        timeout(LIMIT, t.dial_peer(&peer)),
        timeout(LIMIT, tl.accept())
    );
    let (mut d, mut a) = (d.unwrap().unwrap(), a.unwrap().unwrap());
    let Endpoint::Tcp { port, .. } = tcp else {
        unreachable!()
    };
    match d.remote() {
        Remote::Tcp(addr) => assert_eq!(addr.port(), port),
        other => panic!("fell back to {other:?}"),
    }
    half_close(&mut d, &mut a, "fallback").await;
}

#[tokio::test]
async fn peer_prefers_the_cheapest_working_endpoint() {
    let dir = TempDir::new("tr");
    let path = dir.join("ok.sock");
    let t = Transport::default();
    let mut ul = t.bind(&unix(&path)).await.unwrap();
    let tl = t.bind(&local_any_port()).await.unwrap();
    let peer = Peer::new([tl.local_endpoint().clone(), unix(&path)]);
    let (d, a) = tokio::join!(
        timeout(LIMIT, t.dial_peer(&peer)),
        timeout(LIMIT, ul.accept())
    );
    assert_eq!(d.unwrap().unwrap().remote(), &Remote::Unix);
    a.unwrap().unwrap();
}

/// A loopback TCP port nobody listens on (bound, then released).
fn closed_tcp_port() -> u16 {
    let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    l.local_addr().unwrap().port()
}

#[tokio::test]
async fn peer_where_all_fail_lists_every_attempt_in_order() {
    let dir = TempDir::new("tr");
    let stale = dir.join("stale.sock");
    stale_socket(&stale);
    let missing = dir.join("missing.sock");
    let tcp = ep(&format!("tcp://127.0.0.1:{}", closed_tcp_port()));
    let peer = Peer::new([tcp.clone(), unix(&stale), unix(&missing)]);
    let e = timeout(LIMIT, Transport::default().dial_peer(&peer))
        .await
        .unwrap()
        .unwrap_err();
    let TransportError::AllFailed(errors) = &e else {
        panic!("expected AllFailed, got {e:?}")
    };
    let want = [
        (unix(&stale), ErrorKind::ConnectionRefused),
        (unix(&missing), ErrorKind::NotFound),
        (tcp, ErrorKind::ConnectionRefused),
    ];
    assert_eq!(errors.len(), want.len(), "{e}");
    for (got, (endpoint, kind)) in errors.iter().zip(&want) {
        match got {
            TransportError::Io {
                op,
                endpoint: name,
                error,
            } => {
                assert_eq!(*op, "connect to");
                assert_eq!(name, &endpoint.to_string());
                assert_eq!(error.kind(), *kind, "{got}");
            }
            other => panic!("expected Io, got {other:?}"),
        }
    }
    let shown = e.to_string();
    let mut at = 0;
    for (endpoint, _) in &want {
        let i = shown[at..]
            .find(&endpoint.to_string())
            .unwrap_or_else(|| panic!("`{endpoint}` not listed in order: {shown}"));
        at += i + 1;
    }
    assert!(e.to_string().starts_with("no endpoint of the peer"), "{e}");
}

#[tokio::test]
async fn a_peer_without_endpoints_is_an_error() {
    let e = Transport::default()
        .dial_peer(&Peer::new(Vec::new()))
        .await
        .unwrap_err();
    assert!(matches!(e, TransportError::NoEndpoints), "{e:?}");
}

#[tokio::test]
async fn retries_refusals_until_the_window_closes() {
    let dir = TempDir::new("tr");
    let stale = dir.join("stale.sock");
    stale_socket(&stale);
    let t = Transport::new(DialOptions {
        timeout: Duration::from_secs(1),
        retry: Duration::from_millis(300),
        retry_interval: Duration::from_millis(50),
    });
    let start = Instant::now();
    let e = timeout(LIMIT, t.dial(&unix(&stale)))
        .await
        .unwrap()
        .unwrap_err();
    let took = start.elapsed();
    match &e {
        TransportError::Io { error, .. } => assert_eq!(error.kind(), ErrorKind::ConnectionRefused),
        other => panic!("one endpoint gives its own error, got {other:?}"),
    }
    assert!(took >= Duration::from_millis(200), "stopped after {took:?}");
}

#[tokio::test]
async fn a_listener_appearing_during_the_retry_window_is_reached() {
    let dir = TempDir::new("tr");
    let path = dir.join("late.sock");
    let t = Transport::new(DialOptions {
        timeout: Duration::from_secs(1),
        retry: Duration::from_secs(5),
        retry_interval: Duration::from_millis(20),
    });
    let late = path.clone();
    let server = tokio::spawn(async move {
        tokio::time::sleep(Duration::from_millis(100)).await;
        let l = UnixListener::bind(&late).unwrap();
        let (mut s, _) = timeout(LIMIT, l.accept()).await.unwrap().unwrap();
        s.write_all(b"late").await.unwrap();
    });
    let mut s = timeout(LIMIT, t.dial(&unix(&path))).await.unwrap().unwrap();
    assert_eq!(read_all(&mut s).await, b"late");
    server.await.unwrap();
}

#[tokio::test]
async fn vsock_without_cid_is_a_listen_address() {
    // Rejected before any socket exists; a long retry window must not be waited out.
    let t = Transport::new(DialOptions {
        retry: Duration::from_secs(30),
        ..DialOptions::default()
    });
    let start = Instant::now();
    let e = timeout(LIMIT, t.dial(&ep("vsock://:1024")))
        .await
        .unwrap()
        .unwrap_err();
    assert!(start.elapsed() < Duration::from_secs(5));
    match &e {
        TransportError::Unsupported { endpoint, hint } => {
            assert_eq!(endpoint, "vsock://:1024");
            assert!(hint.contains("vsock://2:1024"), "{e}");
            assert!(hint.contains("listen"), "{e}");
        }
        other => panic!("expected Unsupported, got {other:?}"),
    }
    assert!(!e.is_retryable());
}

#[tokio::test]
async fn hvsock_is_unsupported_here_and_points_at_vsock() {
    let t = Transport::new(DialOptions {
        retry: Duration::from_secs(30),
        ..DialOptions::default()
    });
    for (uri, want) in [
        ("hvsock://parent/1024", "vsock://2:1024"),
        (
            "hvsock://0b3a2c8e-1f2d-4e5f-9a8b-7c6d5e4f3a2b/00000400-facb-11e6-bd58-64006a7986d3",
            "vsock://2:1024",
        ),
        (
            "hvsock://myvm/0b3a2c8e-1f2d-4e5f-9a8b-7c6d5e4f3a2b",
            "vsock://2:PORT",
        ),
    ] {
        let e = timeout(LIMIT, t.dial(&ep(uri))).await.unwrap().unwrap_err();
        match &e {
            TransportError::Unsupported { endpoint, hint } => {
                assert_eq!(endpoint, uri);
                assert!(hint.contains(want), "{e}");
            }
            other => panic!("expected Unsupported, got {other:?}"),
        }
        assert!(e.to_string().contains(want), "{e}");
    }
    let e = t.bind(&ep("hvsock:///1024")).await.unwrap_err();
    match &e {
        TransportError::Unsupported { hint, .. } => assert!(hint.contains("vsock://:1024"), "{e}"),
        other => panic!("expected Unsupported, got {other:?}"),
    }
}

#[test]
fn dial_options_defaults() {
    let o = DialOptions::default();
    assert_eq!(o.timeout, Duration::from_secs(10));
    assert_eq!(o.retry, Duration::ZERO);
    assert_eq!(o.retry_interval, Duration::from_millis(100));
    assert_eq!(Transport::default().options().timeout, o.timeout);
}

// ---- a mux link on a Unix socket, with the guest end played by the test ----

/// Accepts the link's one connection and starts the guest end of the mux on it,
/// listening on `port` before any task runs (so the host's connect finds the listener).
async fn guest_end(l: &UnixListener, port: u32) -> (Mux, MuxListener) {
    let (s, _) = timeout(LIMIT, l.accept()).await.unwrap().unwrap();
    let guest = Mux::new(s, MuxConfig::guest(3));
    let listener = guest.listen(port).unwrap();
    (guest, listener)
}

/// Echoes each connection with a prefix, after the host half-closes, then half-closes.
fn serve_echo(mut l: MuxListener) -> tokio::task::JoinHandle<()> {
    tokio::spawn(async move {
        while let Ok(mut c) = l.accept().await {
            tokio::spawn(async move {
                let mut req = Vec::new();
                c.read_to_end(&mut req).await.unwrap();
                c.write_all(b"echo:").await.unwrap();
                c.write_all(&req).await.unwrap();
                c.shutdown().await.unwrap();
            });
        }
    })
}

async fn echo_roundtrip(s: &mut Stream, msg: &[u8]) {
    s.write_all(msg).await.unwrap();
    s.shutdown().await.unwrap();
    let mut want = b"echo:".to_vec();
    want.extend_from_slice(msg);
    assert_eq!(read_all(s).await, want);
}

#[tokio::test]
async fn mux_unix_dials_share_one_link() {
    let dir = TempDir::new("tr");
    let sock = dir.join("serial.sock");
    let l = UnixListener::bind(&sock).unwrap();
    let mux_ep = ep(&format!("mux+unix://{}:1024", sock.display()));
    let t = Transport::new(DialOptions {
        timeout: Duration::from_secs(5),
        ..DialOptions::default()
    });

    let (first, (guest, gl)) = tokio::join!(timeout(LIMIT, t.dial(&mux_ep)), guest_end(&l, 1024));
    let mut first = first.unwrap().unwrap();
    let server = serve_echo(gl);
    assert_eq!(
        first.remote(),
        &Remote::Mux {
            peer_cid: 3,
            port: 1024
        }
    );
    assert!(first.as_raw_fd().is_none(), "a mux connection has no fd");

    // A second dial, and one from a clone of the transport, ride the same link.
    let mut second = timeout(LIMIT, t.dial(&mux_ep)).await.unwrap().unwrap();
    let mut third = timeout(LIMIT, t.clone().dial(&mux_ep))
        .await
        .unwrap()
        .unwrap();
    echo_roundtrip(&mut second, b"two").await;
    echo_roundtrip(&mut first, b"one").await;
    echo_roundtrip(&mut third, b"three").await;

    let again = timeout(Duration::from_millis(200), l.accept()).await;
    assert!(again.is_err(), "a second link was opened: {again:?}");
    drop((first, second, third));
    drop(guest);
    server.abort();
}

#[tokio::test]
async fn mux_unix_dial_to_a_port_nobody_listens_on_is_a_mux_error() {
    let dir = TempDir::new("tr");
    let sock = dir.join("serial.sock");
    let l = UnixListener::bind(&sock).unwrap();
    let t = Transport::new(DialOptions {
        timeout: Duration::from_secs(5),
        ..DialOptions::default()
    });
    let nobody = ep(&format!("mux+unix://{}:9", sock.display()));
    let (res, (_guest, _gl)) = tokio::join!(timeout(LIMIT, t.dial(&nobody)), guest_end(&l, 1024));
    let e = res.unwrap().unwrap_err();
    match &e {
        TransportError::Mux { endpoint, .. } => assert!(endpoint.ends_with(":9"), "{e}"),
        other => panic!("expected Mux, got {other:?}"),
    }
    assert!(e.is_retryable(), "the guest may listen later: {e}");
}

#[tokio::test]
async fn mux_unix_listener_accepts_guest_connections_on_the_same_link() {
    let dir = TempDir::new("tr");
    let sock = dir.join("serial.sock");
    let l = UnixListener::bind(&sock).unwrap();
    let t = Transport::default();
    let dial_ep = ep(&format!("mux+unix://{}:1024", sock.display()));
    let listen_ep = ep(&format!("mux+unix://{}:2000", sock.display()));

    let (first, (guest, gl)) = tokio::join!(timeout(LIMIT, t.dial(&dial_ep)), guest_end(&l, 1024));
    let mut first = first.unwrap().unwrap();
    let server = serve_echo(gl);

    let mut host_l = t.bind(&listen_ep).await.unwrap();
    assert_eq!(host_l.local_endpoint(), &listen_ep);
    let (c, a) = tokio::join!(
        timeout(LIMIT, guest.connect(2000)),
        timeout(LIMIT, host_l.accept())
    );
    let mut c = c.unwrap().unwrap();
    let mut a = a.unwrap().unwrap();
    assert_eq!(
        a.remote(),
        &Remote::Mux {
            peer_cid: 3,
            port: c.local_port()
        }
    );
    c.write_all(b"guest to host").await.unwrap();
    c.shutdown().await.unwrap();
    assert_eq!(read_all(&mut a).await, b"guest to host");
    a.write_all(b"host to guest").await.unwrap();
    a.shutdown().await.unwrap();
    let mut back = Vec::new();
    timeout(LIMIT, c.read_to_end(&mut back))
        .await
        .unwrap()
        .unwrap();
    assert_eq!(back, b"host to guest");

    echo_roundtrip(&mut first, b"still up").await;
    let again = timeout(Duration::from_millis(200), l.accept()).await;
    assert!(again.is_err(), "bind opened a second link: {again:?}");
    server.abort();
}
