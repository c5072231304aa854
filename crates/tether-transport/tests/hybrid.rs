//! Hybrid vsock (Firecracker's convention) against a fake device muxer on a Unix socket:
//! the exact CONNECT bytes, the OK reply read without swallowing data, refusals, retries,
//! timeouts, garbled replies, half-close, and the listener at `PATH_PORT`.

#[path = "support/tmpdir.rs"]
mod tmpdir;

use std::os::unix::fs::FileTypeExt;
use std::path::Path;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};
use tether_transport::{DialOptions, Endpoint, Remote, Stream, Transport, TransportError};
use tmpdir::TempDir;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{UnixListener, UnixStream};
use tokio::time::timeout;

/// Every wait in these tests is bounded by this, so a broken dial fails instead of hanging.
const LIMIT: Duration = Duration::from_secs(10);

fn hybrid(path: &Path, port: u32) -> Endpoint {
    format!("hybrid://{}:{port}", path.display())
        .parse()
        .unwrap()
}

/// Reads what the client sends up to and including the first `\n`, in whatever chunks
/// arrive (so bytes sent after the line in the same write would show up too).
async fn read_request(s: &mut UnixStream) -> Vec<u8> {
    let mut got = Vec::new();
    let mut buf = [0u8; 256];
    while !got.contains(&b'\n') {
        let n = timeout(LIMIT, s.read(&mut buf))
            .await
            .expect("request in time")
            .expect("read request");
        assert!(n > 0, "client closed after {got:?}");
        got.extend_from_slice(&buf[..n]);
        assert!(got.len() < 256, "runaway request {got:?}");
    }
    got
}

/// A fake device that accepts one connection, checks the request line and runs `reply`.
fn fake_once<F, Fut>(listener: UnixListener, port: u32, reply: F) -> tokio::task::JoinHandle<()>
where
    F: FnOnce(UnixStream) -> Fut + Send + 'static,
    Fut: std::future::Future<Output = ()> + Send,
{
    tokio::spawn(async move {
        let (mut s, _) = timeout(LIMIT, listener.accept()).await.unwrap().unwrap();
        let req = read_request(&mut s).await;
        assert_eq!(req, format!("CONNECT {port}\n").as_bytes());
        reply(s).await;
    })
}

async fn dial(t: &Transport, ep: &Endpoint) -> Result<Stream, TransportError> {
    timeout(LIMIT, t.dial(ep)).await.expect("dial returns")
}

#[tokio::test]
async fn connect_line_is_exact_and_ok_gives_host_port() {
    let dir = TempDir::new("hy");
    let sock = dir.join("v.sock");
    let l = UnixListener::bind(&sock).unwrap();
    let fake = tokio::spawn(async move {
        let (mut s, _) = l.accept().await.unwrap();
        let req = read_request(&mut s).await;
        // Exactly the line, nothing after it before the reply.
        let mut extra = [0u8; 16];
        let more = timeout(Duration::from_millis(100), s.read(&mut extra)).await;
        assert!(more.is_err(), "client sent more before OK: {more:?}");
        s.write_all(b"OK 1073741824\n").await.unwrap();
        let mut rest = Vec::new();
        s.read_to_end(&mut rest).await.unwrap();
        (req, rest)
    });
    let t = Transport::default();
    let mut s = dial(&t, &hybrid(&sock, 1024)).await.unwrap();
    assert_eq!(
        s.remote(),
        &Remote::Hybrid {
            port: 1024,
            host_port: 1 << 30
        }
    );
    s.write_all(b"data").await.unwrap();
    s.shutdown().await.unwrap();
    let (req, rest) = timeout(LIMIT, fake).await.unwrap().unwrap();
    assert_eq!(req, b"CONNECT 1024\n");
    assert_eq!(rest, b"data");
}

#[tokio::test]
async fn no_byte_after_the_ok_line_is_swallowed() {
    let dir = TempDir::new("hy");
    let sock = dir.join("v.sock");
    let l = UnixListener::bind(&sock).unwrap();
    let fake = fake_once(l, 1024, |mut s| async move {
        // Reply and the connection's first bytes in one write, as a fast guest would.
        s.write_all(b"OK 1073741824\nHELLO").await.unwrap();
        s.shutdown().await.unwrap();
        let mut sink = Vec::new();
        let _ = s.read_to_end(&mut sink).await;
    });
    let t = Transport::default();
    let mut s = dial(&t, &hybrid(&sock, 1024)).await.unwrap();
    let mut got = Vec::new();
    timeout(LIMIT, s.read_to_end(&mut got))
        .await
        .unwrap()
        .unwrap();
    assert_eq!(got, b"HELLO");
    drop(s);
    timeout(LIMIT, fake).await.unwrap().unwrap();
}

#[tokio::test]
async fn lowercase_ok_and_crlf_are_accepted() {
    for (reply, host_port) in [(&b"ok 5\n"[..], 5u32), (&b"Ok 7\r\n"[..], 7)] {
        let dir = TempDir::new("hy");
        let sock = dir.join("v.sock");
        let l = UnixListener::bind(&sock).unwrap();
        let fake = fake_once(l, 80, move |mut s| async move {
            s.write_all(reply).await.unwrap();
            s.write_all(b"x").await.unwrap();
        });
        let t = Transport::default();
        let mut s = dial(&t, &hybrid(&sock, 80)).await.unwrap();
        assert_eq!(
            s.remote(),
            &Remote::Hybrid {
                port: 80,
                host_port
            }
        );
        let mut b = [0u8; 1];
        timeout(LIMIT, s.read_exact(&mut b)).await.unwrap().unwrap();
        assert_eq!(&b, b"x");
        fake.await.unwrap();
    }
}

fn assert_refused(e: &TransportError, sock: &Path) {
    match e {
        TransportError::Refused { endpoint, detail } => {
            assert!(endpoint.contains(&sock.display().to_string()), "{e}");
            assert!(detail.contains("no listener"), "{e}");
        }
        other => panic!("expected Refused, got {other:?}"),
    }
    assert!(e.is_retryable());
    assert!(e.to_string().contains("no listener"), "{e}");
}

#[tokio::test]
async fn close_after_the_request_is_a_refusal() {
    // Firecracker reads the CONNECT line, asks the guest, and closes the socket without a
    // word when the guest answers RST.
    let dir = TempDir::new("hy");
    let sock = dir.join("v.sock");
    let l = UnixListener::bind(&sock).unwrap();
    let fake = fake_once(l, 1024, |s| async move { drop(s) });
    let e = dial(&Transport::default(), &hybrid(&sock, 1024))
        .await
        .unwrap_err();
    assert_refused(&e, &sock);
    fake.await.unwrap();
}

#[tokio::test]
async fn close_at_once_is_a_refusal() {
    // A device that drops the socket without reading the request (at its connection
    // limit, say): the unread request makes the kernel report a reset rather than EOF.
    let dir = TempDir::new("hy");
    let sock = dir.join("v.sock");
    let l = UnixListener::bind(&sock).unwrap();
    let ep = hybrid(&sock, 1024);
    let t = Transport::default();
    let (res, _) = tokio::join!(dial(&t, &ep), async {
        let (s, _) = l.accept().await.unwrap();
        // Let the request arrive so it is unread when we close.
        tokio::time::sleep(Duration::from_millis(50)).await;
        drop(s);
    });
    assert_refused(&res.unwrap_err(), &sock);
}

#[tokio::test]
async fn retry_until_the_guest_listens() {
    let dir = TempDir::new("hy");
    let sock = dir.join("v.sock");
    let l = UnixListener::bind(&sock).unwrap();
    let attempts = Arc::new(AtomicUsize::new(0));
    let seen = attempts.clone();
    let fake = tokio::spawn(async move {
        loop {
            let (mut s, _) = l.accept().await.unwrap();
            let n = seen.fetch_add(1, Ordering::SeqCst) + 1;
            assert_eq!(read_request(&mut s).await, b"CONNECT 1024\n");
            if n <= 3 {
                drop(s); // the guest is not listening yet
                continue;
            }
            s.write_all(b"OK 1073741825\nready").await.unwrap();
            return s;
        }
    });
    let t = Transport::new(DialOptions {
        timeout: Duration::from_secs(2),
        retry: Duration::from_secs(8),
        retry_interval: Duration::from_millis(20),
    });
    let mut s = dial(&t, &hybrid(&sock, 1024)).await.unwrap();
    assert_eq!(attempts.load(Ordering::SeqCst), 4);
    assert_eq!(
        s.remote(),
        &Remote::Hybrid {
            port: 1024,
            host_port: (1 << 30) + 1
        }
    );
    let mut b = [0u8; 5];
    timeout(LIMIT, s.read_exact(&mut b)).await.unwrap().unwrap();
    assert_eq!(&b, b"ready");
    let _device_end = timeout(LIMIT, fake).await.unwrap().unwrap();
}

#[tokio::test]
async fn without_retry_one_refusal_is_final() {
    let dir = TempDir::new("hy");
    let sock = dir.join("v.sock");
    let l = UnixListener::bind(&sock).unwrap();
    let attempts = Arc::new(AtomicUsize::new(0));
    let seen = attempts.clone();
    let _fake = tokio::spawn(async move {
        loop {
            let (mut s, _) = l.accept().await.unwrap();
            seen.fetch_add(1, Ordering::SeqCst);
            read_request(&mut s).await;
        }
    });
    let e = dial(&Transport::default(), &hybrid(&sock, 1024))
        .await
        .unwrap_err();
    assert!(matches!(e, TransportError::Refused { .. }), "{e:?}");
    tokio::time::sleep(Duration::from_millis(50)).await;
    assert_eq!(attempts.load(Ordering::SeqCst), 1);
}

#[tokio::test]
async fn silent_device_times_out() {
    let dir = TempDir::new("hy");
    let sock = dir.join("v.sock");
    let l = UnixListener::bind(&sock).unwrap();
    let (done_tx, done_rx) = tokio::sync::oneshot::channel::<()>();
    let fake = fake_once(l, 1024, |s| async move {
        // Never answer; hold the socket until the test is done.
        let _ = timeout(LIMIT, done_rx).await;
        drop(s);
    });
    let limit = Duration::from_millis(300);
    let t = Transport::new(DialOptions {
        timeout: limit,
        ..DialOptions::default()
    });
    let start = Instant::now();
    let e = dial(&t, &hybrid(&sock, 1024)).await.unwrap_err();
    let took = start.elapsed();
    match &e {
        TransportError::Timeout {
            endpoint, after, ..
        } => {
            assert_eq!(*after, limit);
            assert_eq!(endpoint, &hybrid(&sock, 1024).to_string());
        }
        other => panic!("expected Timeout, got {other:?}"),
    }
    assert!(!e.is_retryable());
    assert!(took >= limit, "gave up after {took:?}");
    assert!(took < LIMIT, "took {took:?}");
    let _ = done_tx.send(());
    fake.await.unwrap();
}

async fn garbled(reply: &'static [u8]) -> TransportError {
    let dir = TempDir::new("hy");
    let sock = dir.join("v.sock");
    let l = UnixListener::bind(&sock).unwrap();
    let (done_tx, done_rx) = tokio::sync::oneshot::channel::<()>();
    let fake = fake_once(l, 1024, move |mut s| async move {
        s.write_all(reply).await.unwrap();
        // Keep the socket open: the client must judge the bytes, not the close.
        let _ = timeout(LIMIT, done_rx).await;
    });
    // A long timeout, so a client that waited for more would show as Timeout.
    let t = Transport::new(DialOptions {
        timeout: Duration::from_secs(5),
        ..DialOptions::default()
    });
    let e = dial(&t, &hybrid(&sock, 1024)).await.unwrap_err();
    let _ = done_tx.send(());
    fake.await.unwrap();
    e
}

#[tokio::test]
async fn garbled_replies_are_protocol_errors() {
    let long: &'static [u8] = Box::leak(vec![b'x'; 100].into_boxed_slice());
    for reply in [
        &b"NOPE\n"[..],
        long,
        b"OK\n",
        b"OK x\n",
        b"OK 4294967296\n",
        b"OKAY 5\n",
    ] {
        let e = garbled(reply).await;
        match &e {
            TransportError::Protocol { detail, .. } => {
                assert!(detail.contains("`OK <port>`"), "{e}");
            }
            other => panic!("reply {reply:?}: expected Protocol, got {other:?}"),
        }
        assert!(e.to_string().contains("OK <port>"), "{e}");
        assert!(!e.is_retryable());
    }
    let e = garbled(b"NOPE\n").await;
    assert!(e.to_string().contains("NOPE"), "{e}");
}

#[tokio::test]
async fn data_flows_both_ways_and_half_close_works() {
    let dir = TempDir::new("hy");
    let sock = dir.join("v.sock");
    let l = UnixListener::bind(&sock).unwrap();
    let fake = fake_once(l, 1024, |mut s| async move {
        s.write_all(b"OK 1073741824\n").await.unwrap();
        let mut b = [0u8; 4];
        s.read_exact(&mut b).await.unwrap();
        assert_eq!(&b, b"ping");
        s.write_all(b"pong").await.unwrap();
        // The client half-closes: we read EOF...
        let mut rest = Vec::new();
        timeout(LIMIT, s.read_to_end(&mut rest))
            .await
            .unwrap()
            .unwrap();
        assert_eq!(rest, b"last words");
        // ...and can still send.
        s.write_all(b"after your EOF").await.unwrap();
        s.shutdown().await.unwrap();
    });
    let t = Transport::default();
    let mut s = dial(&t, &hybrid(&sock, 1024)).await.unwrap();
    s.write_all(b"ping").await.unwrap();
    let mut b = [0u8; 4];
    timeout(LIMIT, s.read_exact(&mut b)).await.unwrap().unwrap();
    assert_eq!(&b, b"pong");
    s.write_all(b"last words").await.unwrap();
    s.shutdown().await.unwrap();
    let mut got = Vec::new();
    timeout(LIMIT, s.read_to_end(&mut got))
        .await
        .unwrap()
        .unwrap();
    assert_eq!(got, b"after your EOF");
    timeout(LIMIT, fake).await.unwrap().unwrap();
}

#[tokio::test]
async fn missing_device_socket_is_an_io_error() {
    let dir = TempDir::new("hy");
    let sock = dir.join("absent.sock");
    let e = dial(&Transport::default(), &hybrid(&sock, 1024))
        .await
        .unwrap_err();
    match &e {
        TransportError::Io { error, .. } => {
            assert_eq!(error.kind(), std::io::ErrorKind::NotFound)
        }
        other => panic!("expected Io, got {other:?}"),
    }
    assert!(e.is_retryable());
}

// ---- listening for guest-initiated connections ----

fn is_socket(p: &Path) -> bool {
    std::fs::symlink_metadata(p)
        .map(|m| m.file_type().is_socket())
        .unwrap_or(false)
}

#[tokio::test]
async fn listen_binds_path_underscore_port() {
    let dir = TempDir::new("hy");
    let ep = hybrid(&dir.join("v.sock"), 52);
    let want = dir.join("v.sock_52");
    let t = Transport::default();
    let mut l = t.bind(&ep).await.unwrap();
    assert_eq!(l.local_endpoint(), &ep);
    assert!(is_socket(&want), "{want:?} is not a socket");
    assert!(
        !dir.join("v.sock").exists(),
        "the device's own path is not ours"
    );

    // The device connects there when the guest dials CID 2 port 52.
    let mut device = UnixStream::connect(&want).await.unwrap();
    let mut s = timeout(LIMIT, l.accept()).await.unwrap().unwrap();
    assert_eq!(s.remote(), &Remote::Unix);
    device.write_all(b"from guest").await.unwrap();
    let mut b = [0u8; 10];
    timeout(LIMIT, s.read_exact(&mut b)).await.unwrap().unwrap();
    assert_eq!(&b, b"from guest");
    s.write_all(b"to guest").await.unwrap();
    s.shutdown().await.unwrap();
    let mut got = Vec::new();
    timeout(LIMIT, device.read_to_end(&mut got))
        .await
        .unwrap()
        .unwrap();
    assert_eq!(got, b"to guest");

    drop(s);
    drop(l);
    assert!(
        !want.exists(),
        "socket file left after the listener was dropped"
    );
}

#[tokio::test]
async fn listen_replaces_a_stale_socket_file() {
    let dir = TempDir::new("hy");
    let ep = hybrid(&dir.join("v.sock"), 52);
    let path = dir.join("v.sock_52");
    drop(std::os::unix::net::UnixListener::bind(&path).unwrap());
    assert!(is_socket(&path), "a dropped std listener leaves its file");

    let t = Transport::default();
    let mut l = t.bind(&ep).await.unwrap();
    let mut device = UnixStream::connect(&path).await.unwrap();
    let mut s = timeout(LIMIT, l.accept()).await.unwrap().unwrap();
    device.write_all(b"x").await.unwrap();
    let mut b = [0u8; 1];
    timeout(LIMIT, s.read_exact(&mut b)).await.unwrap().unwrap();
    assert_eq!(&b, b"x");
    drop(l);
    assert!(!path.exists());
}

#[tokio::test]
async fn listen_never_displaces_a_live_listener() {
    let dir = TempDir::new("hy");
    let ep = hybrid(&dir.join("v.sock"), 52);
    let path = dir.join("v.sock_52");
    let live = std::os::unix::net::UnixListener::bind(&path).unwrap();

    let e = Transport::default().bind(&ep).await.unwrap_err();
    match &e {
        TransportError::Io { op, error, .. } => {
            assert_eq!(*op, "listen on");
            assert_eq!(error.kind(), std::io::ErrorKind::AddrInUse);
        }
        other => panic!("expected Io(AddrInUse), got {other:?}"),
    }
    assert!(e.to_string().contains(&ep.to_string()), "{e}");
    // The live listener still owns the path and still accepts.
    assert!(is_socket(&path));
    live.set_nonblocking(true).unwrap();
    let _c = std::os::unix::net::UnixStream::connect(&path).unwrap();
    let mut accepted = 0;
    for _ in 0..100 {
        if live.accept().is_ok() {
            accepted += 1;
            if accepted == 2 {
                break; // the bind's own probe, then ours
            }
        } else {
            std::thread::sleep(Duration::from_millis(5));
        }
    }
    assert_eq!(accepted, 2, "the live listener lost its path");
}
