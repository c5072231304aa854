//! hyperkit's virtio-sock host side against a fake hyperkit: the exact 18-byte connect
//! header on `DIR/connect`, and the listener at `DIR/00000002.<port %08x>`.

#[path = "support/tmpdir.rs"]
mod tmpdir;

use std::os::unix::fs::FileTypeExt;
use std::path::Path;
use std::time::Duration;
use tether_transport::{Endpoint, Remote, Transport, TransportError};
use tmpdir::TempDir;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{UnixListener, UnixStream};
use tokio::sync::oneshot;
use tokio::time::timeout;

const LIMIT: Duration = Duration::from_secs(10);

fn hyperkit(cid: Option<u32>, port: u32, dir: &Path) -> Endpoint {
    let cid = cid.map(|c| c.to_string()).unwrap_or_default();
    format!("hyperkit://{cid}:{port}{}", dir.display())
        .parse()
        .unwrap()
}

/// A fake hyperkit serving one connection on `DIR/connect`: reads exactly 18 bytes,
/// checks nothing more arrives unasked, hands the header over, then echoes until EOF and
/// half-closes.
struct FakeHyperkit {
    header: oneshot::Receiver<Vec<u8>>,
    task: tokio::task::JoinHandle<()>,
}

fn fake_hyperkit(dir: &Path) -> FakeHyperkit {
    let l = UnixListener::bind(dir.join("connect")).unwrap();
    let (tx, rx) = oneshot::channel();
    let task = tokio::spawn(async move {
        let (mut s, _) = timeout(LIMIT, l.accept()).await.unwrap().unwrap();
        let mut header = [0u8; 18];
        timeout(LIMIT, s.read_exact(&mut header))
            .await
            .unwrap()
            .unwrap();
        // No acknowledgement in this protocol; the client must not send more on its own
        // (the test writes its data only after it got the header from us).
        let mut extra = [0u8; 1];
        let more = timeout(Duration::from_millis(50), s.read(&mut extra)).await;
        assert!(more.is_err(), "client sent more than the header: {more:?}");
        tx.send(header.to_vec()).unwrap();
        let (mut rd, mut wr) = s.split();
        timeout(LIMIT, tokio::io::copy(&mut rd, &mut wr))
            .await
            .unwrap()
            .unwrap();
        wr.shutdown().await.unwrap();
    });
    FakeHyperkit { header: rx, task }
}

async fn dial_and_echo(ep: &Endpoint, fake: FakeHyperkit) -> Vec<u8> {
    let t = Transport::default();
    let mut s = timeout(LIMIT, t.dial(ep)).await.unwrap().unwrap();
    let header = timeout(LIMIT, fake.header).await.unwrap().unwrap();
    s.write_all(b"echo me").await.unwrap();
    s.shutdown().await.unwrap();
    let mut got = Vec::new();
    timeout(LIMIT, s.read_to_end(&mut got))
        .await
        .unwrap()
        .unwrap();
    assert_eq!(got, b"echo me");
    timeout(LIMIT, fake.task).await.unwrap().unwrap();
    let Endpoint::Hyperkit { cid, port, .. } = ep else {
        unreachable!()
    };
    assert_eq!(
        s.remote(),
        &Remote::Hyperkit {
            cid: cid.unwrap_or(3),
            port: *port
        }
    );
    header
}

#[tokio::test]
async fn header_defaults_to_cid_3() {
    let dir = TempDir::new("hk");
    let fake = fake_hyperkit(dir.path());
    let header = dial_and_echo(&hyperkit(None, 1024, dir.path()), fake).await;
    assert_eq!(header, b"00000003.00000400\n");
}

#[tokio::test]
async fn header_carries_an_explicit_cid() {
    let dir = TempDir::new("hk");
    let fake = fake_hyperkit(dir.path());
    let header = dial_and_echo(&hyperkit(Some(7), 1024, dir.path()), fake).await;
    assert_eq!(header, b"00000007.00000400\n");
}

#[tokio::test]
async fn header_hex_is_lowercase_and_zero_padded() {
    let dir = TempDir::new("hk");
    let fake = fake_hyperkit(dir.path());
    let header = dial_and_echo(&hyperkit(Some(0xabcdef01), 0xfe, dir.path()), fake).await;
    assert_eq!(header, b"abcdef01.000000fe\n");
}

#[tokio::test]
async fn no_hyperkit_is_a_retryable_io_error() {
    let dir = TempDir::new("hk");
    let e = timeout(
        LIMIT,
        Transport::default().dial(&hyperkit(None, 1024, dir.path())),
    )
    .await
    .unwrap()
    .unwrap_err();
    match &e {
        TransportError::Io { error, .. } => {
            assert_eq!(error.kind(), std::io::ErrorKind::NotFound)
        }
        other => panic!("expected Io, got {other:?}"),
    }
    assert!(e.is_retryable());
}

#[tokio::test]
async fn listen_binds_host_cid_dot_port_and_accepts() {
    let dir = TempDir::new("hk");
    let ep = hyperkit(None, 1024, dir.path());
    let path = dir.join("00000002.00000400");
    let mut l = Transport::default().bind(&ep).await.unwrap();
    assert_eq!(l.local_endpoint(), &ep);
    assert!(std::fs::symlink_metadata(&path)
        .unwrap()
        .file_type()
        .is_socket());
    assert!(!dir.join("connect").exists());

    // hyperkit connects there when the guest dials CID 2 port 1024.
    let mut hk = UnixStream::connect(&path).await.unwrap();
    let mut s = timeout(LIMIT, l.accept()).await.unwrap().unwrap();
    assert_eq!(s.remote(), &Remote::Unix);
    hk.write_all(b"guest says").await.unwrap();
    hk.shutdown().await.unwrap();
    let mut got = Vec::new();
    timeout(LIMIT, s.read_to_end(&mut got))
        .await
        .unwrap()
        .unwrap();
    assert_eq!(got, b"guest says");
    s.write_all(b"host says").await.unwrap();
    drop(s);
    let mut back = Vec::new();
    timeout(LIMIT, hk.read_to_end(&mut back))
        .await
        .unwrap()
        .unwrap();
    assert_eq!(back, b"host says");

    drop(l);
    assert!(
        !path.exists(),
        "socket file left after the listener was dropped"
    );
}

#[tokio::test]
async fn listen_path_uses_lowercase_hex_port() {
    let dir = TempDir::new("hk");
    let ep = hyperkit(Some(9), 0xbeef, dir.path());
    let l = Transport::default().bind(&ep).await.unwrap();
    // The CID in the URI is the guest's; the listener is always at the host CID.
    assert!(dir.join("00000002.0000beef").exists());
    drop(l);
    assert!(!dir.join("00000002.0000beef").exists());
}
