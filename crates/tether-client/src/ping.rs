//! Round trips on one connection: PING, PONG, and their statistics.

use crate::client::{next_frame, unexpected, FrameReader, FrameWriter};
use crate::error::ClientError;
use bytes::{Bytes, BytesMut};
use std::fmt;
use std::time::{Duration, Instant};
use tether_proto::{encode, Frame, Welcome};
use tether_transport::Remote;
use tokio::io::AsyncWriteExt;

/// A connection to the agent kept open for PING/PONG round trips, from
/// [`Client::pinger`](crate::Client::pinger).
///
/// ```no_run
/// # async fn demo(client: tether_client::Client) -> Result<(), tether_client::ClientError> {
/// let mut pinger = client.pinger().await?;
/// println!("connected in {:?}", pinger.connect_time());
/// let one = pinger.ping(b"hello").await?;
/// let stats = pinger.round_trips(1000, 64).await?;
/// println!("one {one:?}; p50 {:?} p99 {:?}", stats.p50(), stats.p99());
/// # Ok(()) }
/// ```
pub struct Pinger {
    rd: FrameReader,
    wr: FrameWriter,
    connect_time: Duration,
    remote: Remote,
    welcome: Welcome,
    seq: u64,
    buf: BytesMut,
}

impl fmt::Debug for Pinger {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Pinger")
            .field("remote", &self.remote)
            .field("connect_time", &self.connect_time)
            .field("welcome", &self.welcome)
            .finish_non_exhaustive()
    }
}

impl Pinger {
    pub(crate) fn new(
        rd: FrameReader,
        wr: FrameWriter,
        connect_time: Duration,
        remote: Remote,
        welcome: Welcome,
    ) -> Pinger {
        Pinger {
            rd,
            wr,
            connect_time,
            remote,
            welcome,
            seq: 0,
            buf: BytesMut::new(),
        }
    }

    /// How long connecting took: the dial, the hello and the WELCOME.
    pub fn connect_time(&self) -> Duration {
        self.connect_time
    }

    /// Which endpoint the connection runs over.
    pub fn remote(&self) -> &Remote {
        &self.remote
    }

    /// The agent's WELCOME: the version spoken and the agent's features.
    pub fn welcome(&self) -> &Welcome {
        &self.welcome
    }

    /// One round trip with `payload` (at most [`tether_proto::MAX_PAYLOAD`] bytes),
    /// checking that the PONG carries the same bytes.
    pub async fn ping(&mut self, payload: &[u8]) -> Result<Duration, ClientError> {
        self.buf.clear();
        encode(&Frame::Ping(Bytes::copy_from_slice(payload)), &mut self.buf)
            .map_err(|e| ClientError::Protocol(e.to_string()))?;
        let start = Instant::now();
        self.wr
            .write_all(&self.buf)
            .await
            .map_err(|e| ClientError::ConnectionLost {
                during: "sending a PING",
                detail: e.to_string(),
            })?;
        match next_frame(&mut self.rd, "waiting for a PONG").await? {
            Frame::Pong(p) if p == payload => Ok(start.elapsed()),
            Frame::Pong(p) => Err(ClientError::Protocol(format!(
                "a PONG of {} bytes that differs from its PING of {} bytes",
                p.len(),
                payload.len()
            ))),
            Frame::Error(e) => Err(ClientError::from_agent(e)),
            other => Err(unexpected(&other, "PONG")),
        }
    }

    /// `count` round trips with payloads of `payload_len` bytes, each payload different
    /// from the last (so a stale PONG cannot pass for a fresh one).
    pub async fn round_trips(
        &mut self,
        count: usize,
        payload_len: usize,
    ) -> Result<PingStats, ClientError> {
        let mut payload = vec![0u8; payload_len];
        let mut round_trips = Vec::with_capacity(count);
        for _ in 0..count {
            self.seq += 1;
            let stamp = self.seq.to_le_bytes();
            for (i, b) in payload.iter_mut().enumerate() {
                *b = stamp[i % 8] ^ (i as u8);
            }
            round_trips.push(self.ping(&payload).await?);
        }
        Ok(PingStats {
            connect: self.connect_time,
            payload_len,
            round_trips,
        })
    }
}

/// Round-trip times from [`Pinger::round_trips`] or [`Client::ping`](crate::Client::ping).
///
/// ```
/// use std::time::Duration;
/// use tether_client::PingStats;
/// let us = Duration::from_micros;
/// let stats = PingStats {
///     connect: us(300),
///     payload_len: 64,
///     round_trips: vec![us(40), us(10), us(30), us(20)],
/// };
/// assert_eq!(stats.min(), Some(us(10)));
/// assert_eq!(stats.p50(), Some(us(20)));
/// assert_eq!(stats.p99(), Some(us(40)));
/// assert_eq!(stats.max(), Some(us(40)));
/// assert_eq!(stats.mean(), Some(us(25)));
/// ```
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PingStats {
    /// How long connecting took (dial, hello, WELCOME).
    pub connect: Duration,
    /// The bytes in each PING.
    pub payload_len: usize,
    /// Every round trip, in the order measured.
    pub round_trips: Vec<Duration>,
}

impl PingStats {
    /// The `q`-th percentile (0 to 100) by nearest rank; `None` without round trips.
    pub fn percentile(&self, q: f64) -> Option<Duration> {
        let mut sorted = self.round_trips.clone();
        sorted.sort_unstable();
        let n = sorted.len();
        if n == 0 {
            return None;
        }
        let rank = ((q.clamp(0.0, 100.0) / 100.0) * n as f64).ceil() as usize;
        Some(sorted[rank.clamp(1, n) - 1])
    }

    /// The median.
    pub fn p50(&self) -> Option<Duration> {
        self.percentile(50.0)
    }

    /// The 99th percentile.
    pub fn p99(&self) -> Option<Duration> {
        self.percentile(99.0)
    }

    /// The fastest round trip.
    pub fn min(&self) -> Option<Duration> {
        self.round_trips.iter().min().copied()
    }

    /// The slowest round trip.
    pub fn max(&self) -> Option<Duration> {
        self.round_trips.iter().max().copied()
    }

    /// The average round trip.
    pub fn mean(&self) -> Option<Duration> {
        let n = u32::try_from(self.round_trips.len())
            .ok()
            .filter(|n| *n > 0)?;
        Some(self.round_trips.iter().sum::<Duration>() / n)
    }
}
