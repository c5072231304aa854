//! `tether demo`: the mux end to end in one process.

use anyhow::{bail, Context, Result};
use sha2::{Digest, Sha256};
use std::time::{Duration, Instant};
use tether_agent::{Agent, AgentConfig};
use tether_client::{Client, Command};
use tether_transport::mux::{CharDevice, Mux, MuxConfig, MuxListener};
use tether_transport::{Endpoint, Listener, Peer};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

/// The byte stream the two mux ends share.
#[derive(Clone, Copy, Debug, clap::ValueEnum)]
pub enum Link {
    /// A Unix socketpair.
    Socketpair,
    /// A pseudo-terminal in raw mode, as a virtio-serial line would be.
    Pty,
}

/// Options of `tether demo`.
#[derive(clap::Args, Debug)]
pub struct Args {
    /// Link between the two ends.
    #[arg(long, value_enum, default_value = "socketpair")]
    link: Link,
    /// Concurrent echo connections.
    #[arg(long, default_value_t = 8)]
    conns: usize,
    /// MiB sent (and echoed back) on each connection.
    #[arg(long, default_value_t = 64)]
    mib: usize,
    /// 1-byte round trips for the latency figure.
    #[arg(long, default_value_t = 10_000)]
    pings: usize,
}

const ECHO_PORT: u32 = 1024;
const PING_PORT: u32 = 1025;
const AGENT_PORT: u32 = 1024;

pub fn run(args: Args) -> Result<()> {
    let rt = crate::runtime()?;
    rt.block_on(demo(args))
}

async fn demo(args: Args) -> Result<()> {
    let (host, guest) = link(args.link)?;
    let peer = host.ready().await.context("mux handshake")?;
    println!("link {:?} up: host CID 2, guest CID {peer}", args.link);
    tokio::spawn(serve(guest.listen(ECHO_PORT)?, echo));
    tokio::spawn(serve(guest.listen(PING_PORT)?, echo));

    let start = Instant::now();
    let mut tasks = Vec::new();
    for i in 0..args.conns {
        let host = host.clone();
        tasks.push(tokio::spawn(echo_client(host, i as u64, args.mib << 20)));
    }
    for t in tasks {
        t.await??;
    }
    let secs = start.elapsed().as_secs_f64();
    let mib = (args.conns * args.mib * 2) as f64;
    println!(
        "{} connections echoed {} MiB each with half-close, SHA-256 verified: {:.0} MiB/s through the link",
        args.conns,
        args.mib,
        mib / secs
    );

    let (p50, p99) = ping(&host, args.pings).await?;
    println!(
        "1-byte round trip over {} pings: p50 {p50:?}, p99 {p99:?}",
        args.pings
    );
    exec_over_serial().await
}

/// The agent behind a mux link on a Unix socket (what a QEMU virtio-serial chardev
/// gives the host), and commands run through it with tether-client.
async fn exec_over_serial() -> Result<()> {
    let dir = std::env::temp_dir().join(format!("tether-demo-{}", std::process::id()));
    std::fs::create_dir_all(&dir)?;
    let chardev = dir.join("serial.sock");
    let endpoint: Endpoint = format!("mux+unix://{}:{AGENT_PORT}", chardev.display()).parse()?;
    let result = async {
        // The guest: accept the link, run the mux's guest end and the agent on it.
        let link = tokio::net::UnixListener::bind(&chardev)?;
        let agent = Agent::new(AgentConfig::default())?;
        let ep = endpoint.clone();
        tokio::spawn(async move {
            let (sock, _) = link.accept().await?;
            let (rd, wr) = sock.into_split();
            let guest = Mux::from_halves(rd, wr, MuxConfig::guest(3));
            agent.serve(Listener::from_mux(&guest, AGENT_PORT, ep)?).await?;
            anyhow::Ok(())
        });
        // The host: the client dials the agent by URI, as `tether exec` would.
        let client = Client::new(Peer::new([endpoint.clone()]));
        let t = Instant::now();
        let cmd = Command::shell("echo \"hello from pid $$ on $(uname -sr)\"; echo oops >&2; exit 3");
        let out = client.exec(&cmd).await?.output().await?;
        let first = t.elapsed();
        print!("exec through the agent over {endpoint}: {}", String::from_utf8_lossy(&out.stdout));
        if out.status.code != Some(3) || out.stderr != b"oops\n" {
            bail!("expected exit 3 and stderr \"oops\", got {} and {:?}", out.status, out.stderr);
        }
        let mut rtts = Vec::new();
        for _ in 0..50 {
            let t = Instant::now();
            let s = client.exec(&Command::new("true")).await?.output().await?.status;
            if !s.success() {
                bail!("`true` {s}");
            }
            rtts.push(t.elapsed());
        }
        rtts.sort();
        println!(
            "  stderr kept apart, {} (first exec {first:?}); `exec true` round trip p50 {:?} over 50",
            out.status,
            rtts[rtts.len() / 2]
        );
        anyhow::Ok(())
    }
    .await;
    let _ = std::fs::remove_dir_all(&dir);
    result
}

fn link(kind: Link) -> Result<(Mux, Mux)> {
    Ok(match kind {
        Link::Socketpair => {
            let (a, b) = tokio::net::UnixStream::pair()?;
            let (a, b) = (a.into_split(), b.into_split());
            (
                Mux::from_halves(a.0, a.1, MuxConfig::host()),
                Mux::from_halves(b.0, b.1, MuxConfig::guest(3)),
            )
        }
        Link::Pty => {
            let pty = nix::pty::openpty(None, None).context("opening a pty")?;
            (
                Mux::new(CharDevice::from_fd(pty.master)?, MuxConfig::host()),
                Mux::new(CharDevice::from_fd(pty.slave)?, MuxConfig::guest(3)),
            )
        }
    })
}

async fn serve<F, Fut>(mut listener: MuxListener, handler: F)
where
    F: Fn(tether_transport::mux::MuxStream) -> Fut,
    Fut: std::future::Future<Output = std::io::Result<()>> + Send + 'static,
{
    while let Ok(stream) = listener.accept().await {
        let task = handler(stream);
        tokio::spawn(async move {
            if let Err(e) = task.await {
                tracing::warn!("echo connection failed: {e}");
            }
        });
    }
}

/// Echoes until the peer half-closes, then half-closes back.
async fn echo(stream: tether_transport::mux::MuxStream) -> std::io::Result<()> {
    let (mut rd, mut wr) = tokio::io::split(stream);
    tokio::io::copy(&mut rd, &mut wr).await?;
    wr.shutdown().await
}

async fn echo_client(host: Mux, seed: u64, len: usize) -> Result<()> {
    let stream = host.connect(ECHO_PORT).await?;
    let (mut rd, mut wr) = tokio::io::split(stream);
    let writer = tokio::spawn(async move {
        let mut sent = Sha256::new();
        let block: Vec<u8> = (0..64 * 1024)
            .map(|i| (i as u64 * 31 + seed) as u8)
            .collect();
        let mut left = len;
        while left > 0 {
            let n = left.min(block.len());
            wr.write_all(&block[..n]).await?;
            sent.update(&block[..n]);
            left -= n;
        }
        wr.shutdown().await?;
        anyhow::Ok(sent.finalize())
    });
    let mut got = Sha256::new();
    let mut buf = vec![0u8; 64 * 1024];
    let mut total = 0;
    loop {
        let n = rd.read(&mut buf).await?;
        if n == 0 {
            break;
        }
        got.update(&buf[..n]);
        total += n;
    }
    let sent = writer.await??;
    if total != len || got.finalize() != sent {
        bail!("connection {seed}: echo differs from what was sent ({total} of {len} bytes)");
    }
    Ok(())
}

async fn ping(host: &Mux, count: usize) -> Result<(Duration, Duration)> {
    let mut s = host.connect(PING_PORT).await?;
    let mut rtts = Vec::with_capacity(count);
    let mut b = [0u8; 1];
    for i in 0..count.max(1) {
        let t = Instant::now();
        s.write_all(&[i as u8]).await?;
        s.read_exact(&mut b).await?;
        if b[0] != i as u8 {
            bail!("ping {i} came back as {}", b[0]);
        }
        rtts.push(t.elapsed());
    }
    rtts.sort();
    Ok((rtts[rtts.len() / 2], rtts[rtts.len() * 99 / 100]))
}
