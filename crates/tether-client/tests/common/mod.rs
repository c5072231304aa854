//! A scripted fake agent: a Unix listener in a temporary directory speaking tether-proto
//! through `FrameCodec`, each test scripting what it receives and answers.

#![allow(dead_code)]

use futures::{SinkExt, StreamExt};
use std::future::Future;
use std::path::PathBuf;
use std::time::Duration;
use tether_client::{Client, Endpoint, Peer};
use tether_proto::{ExecRequest, ExitStatus, Features, Frame, FrameCodec, Hello, Welcome};
use tokio::net::{UnixListener, UnixStream};
use tokio::task::JoinHandle;
use tokio_util::codec::Framed;

pub type Conn = Framed<UnixStream, FrameCodec>;

/// A fake agent's socket; the directory goes when this does.
pub struct Fake {
    pub dir: tempfile::TempDir,
    pub path: PathBuf,
}

impl Fake {
    /// A client for this fake.
    pub fn client(&self) -> Client {
        Client::new(Peer::new([Endpoint::Unix {
            path: self.path.clone(),
        }]))
    }
}

/// Binds a fake agent and runs `script` with its listener.
pub fn listen<F, Fut, T>(script: F) -> (Fake, JoinHandle<T>)
where
    F: FnOnce(UnixListener) -> Fut,
    Fut: Future<Output = T> + Send + 'static,
    T: Send + 'static,
{
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("agent.sock");
    let listener = UnixListener::bind(&path).unwrap();
    let task = tokio::spawn(script(listener));
    (Fake { dir, path }, task)
}

/// A fake agent that serves one connection with `script`.
pub fn agent<F, Fut, T>(script: F) -> (Fake, JoinHandle<T>)
where
    F: FnOnce(Conn) -> Fut + Send + 'static,
    Fut: Future<Output = T> + Send + 'static,
    T: Send + 'static,
{
    listen(|l| async move { script(accept(&l).await).await })
}

pub async fn accept(l: &UnixListener) -> Conn {
    let (s, _) = l.accept().await.unwrap();
    Framed::new(s, FrameCodec)
}

/// The next frame, which must decode.
pub async fn next(c: &mut Conn) -> Frame {
    c.next()
        .await
        .expect("a frame, not the end")
        .expect("a decodable frame")
}

pub async fn send(c: &mut Conn, f: Frame) {
    c.send(f).await.unwrap();
}

pub async fn hello(c: &mut Conn) -> Hello {
    match next(c).await {
        Frame::Hello(h) => h,
        other => panic!("expected HELLO, got {other:?}"),
    }
}

pub async fn exec(c: &mut Conn) -> ExecRequest {
    match next(c).await {
        Frame::Exec(r) => *r,
        other => panic!("expected EXEC, got {other:?}"),
    }
}

pub fn welcome() -> Frame {
    Frame::Welcome(Welcome {
        version: 1,
        features: Features::ALL,
    })
}

/// Reads HELLO and EXEC, answers WELCOME and STARTED.
pub async fn start(c: &mut Conn) -> (Hello, ExecRequest) {
    let h = hello(c).await;
    let r = exec(c).await;
    send(c, welcome()).await;
    send(c, Frame::Started { pid: 4242 }).await;
    (h, r)
}

pub async fn exit(c: &mut Conn, status: ExitStatus) {
    send(c, Frame::Exit(status)).await;
}

/// Bounds a test step: no test may hang.
pub async fn within<F: Future>(f: F) -> F::Output {
    tokio::time::timeout(Duration::from_secs(60), f)
        .await
        .expect("finished in time")
}

/// Deterministic pseudo-random bytes.
pub fn data(len: usize, seed: u64) -> Vec<u8> {
    tether_testkit::pattern(seed, len)
}

/// SHA-256 of `b`.
pub fn sha(b: &[u8]) -> Vec<u8> {
    tether_testkit::sha256(b)
}

pub fn now() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs()
}
