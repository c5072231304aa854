//! `Pinger`, `Client::ping` and `Client::info` against a scripted fake agent.

mod common;

use common::*;
use tether_client::ClientError;
use tether_proto::{Features, Frame, Info};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ping_measures_round_trips_on_one_connection() {
    let (fake, agent) = agent(|mut c| async move {
        let h = hello(&mut c).await;
        send(&mut c, welcome()).await;
        let mut payloads = Vec::new();
        while let Some(f) = futures::StreamExt::next(&mut c).await {
            match f.unwrap() {
                Frame::Ping(p) => {
                    payloads.push(p.clone());
                    send(&mut c, Frame::Pong(p)).await;
                }
                other => panic!("unexpected {other:?}"),
            }
        }
        (h, payloads)
    });
    let stats = within(fake.client().ping(20)).await.unwrap();
    let (h, payloads) = agent.await.unwrap();
    assert_eq!(h.features, Features(0), "ping asks for no features");
    assert_eq!(stats.round_trips.len(), 20);
    assert_eq!(stats.payload_len, 64);
    assert!(stats.connect > std::time::Duration::ZERO);
    let (min, p50, p99, max) = (
        stats.min().unwrap(),
        stats.p50().unwrap(),
        stats.p99().unwrap(),
        stats.max().unwrap(),
    );
    assert!(min <= p50 && p50 <= p99 && p99 <= max, "{stats:?}");
    assert_eq!(payloads.len(), 20, "one connection carried every ping");
    assert!(payloads.iter().all(|p| p.len() == 64));
    assert!(payloads.windows(2).all(|w| w[0] != w[1]), "payloads differ");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_wrong_pong_is_a_protocol_error() {
    let (fake, agent) = agent(|mut c| async move {
        hello(&mut c).await;
        send(&mut c, welcome()).await;
        let _ = next(&mut c).await;
        send(&mut c, Frame::Pong("not it".into())).await;
    });
    let mut pinger = within(fake.client().pinger()).await.unwrap();
    assert_eq!(pinger.welcome().version, 1);
    let err = within(pinger.ping(b"hello")).await.unwrap_err();
    assert!(matches!(err, ClientError::Protocol(_)), "{err:?}");
    agent.await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn info_is_pipelined_behind_the_hello() {
    let (fake, agent) = agent(|mut c| async move {
        hello(&mut c).await;
        assert_eq!(next(&mut c).await, Frame::InfoRequest);
        send(&mut c, welcome()).await;
        send(
            &mut c,
            Frame::Info(Info {
                version: "0.1.0".into(),
                hostname: "guest".into(),
                kernel: "6.1.0".into(),
                pid: 1,
                uptime_secs: 42,
            }),
        )
        .await;
    });
    let info = within(fake.client().info()).await.unwrap();
    agent.await.unwrap();
    assert_eq!(
        (info.hostname.as_str(), info.pid, info.uptime_secs),
        ("guest", 1, 42)
    );
}
