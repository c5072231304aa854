//! `connect_guest`, `listen_guest` and `attach` against a scripted fake agent: what goes
//! on the wire, how the connection turns raw after CONNECTED, and how refusals read.

mod common;

use common::*;
use tether_client::{ClientError, ErrorCode};
use tether_proto::{
    encode, Accepted, ConnectRequest, ErrorMsg, Features, Frame, ListenRequest, Listening, Welcome,
};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

/// The raw socket under a fake agent's framed connection, with what it read ahead.
fn raw(c: Conn) -> (tokio::net::UnixStream, Vec<u8>) {
    let parts = c.into_parts();
    (parts.io, parts.read_buf.to_vec())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn connect_turns_raw_and_keeps_bytes_that_follow_connected_in_one_write() {
    let (fake, agent) = agent(|mut c| async move {
        let h = hello(&mut c).await;
        let req = next(&mut c).await;
        // WELCOME, CONNECTED and the service's banner leave in one write, so the client
        // reads them together and must not lose the banner to its frame reader.
        let (mut s, ahead) = raw(c);
        assert!(ahead.is_empty(), "the client sent nothing before CONNECTED");
        let mut wire = bytes::BytesMut::new();
        encode(&welcome(), &mut wire).unwrap();
        encode(&Frame::Connected, &mut wire).unwrap();
        wire.extend_from_slice(b"banner\n");
        s.write_all(&wire).await.unwrap();
        let mut got = Vec::new();
        s.read_to_end(&mut got).await.unwrap(); // ends only with the client's half-close
        s.write_all(b"reply after your EOF").await.unwrap();
        (h, req, got)
    });
    let mut g = within(fake.client().connect_guest("tcp://127.0.0.1:80"))
        .await
        .unwrap();
    let mut banner = [0u8; 7];
    within(g.read_exact(&mut banner)).await.unwrap();
    assert_eq!(&banner, b"banner\n");
    let payload = data(300_000, 3);
    g.write_all(&payload).await.unwrap();
    g.shutdown().await.unwrap();
    let mut rest = Vec::new();
    within(g.read_to_end(&mut rest)).await.unwrap();
    assert_eq!(rest, b"reply after your EOF");
    let (h, req, got) = agent.await.unwrap();
    assert!(h.features.contains(Features::FORWARD));
    assert_eq!(
        req,
        Frame::Connect(ConnectRequest {
            target: "tcp://127.0.0.1:80".into()
        })
    );
    assert_eq!(sha(&got), sha(&payload));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn refusals_are_typed_and_name_the_target() {
    let (fake, _agent) = listen(|l| async move {
        for (code, msg) in [
            (
                ErrorCode::Denied,
                "connecting to tcp://10.0.0.1:22 is not allowed",
            ),
            (
                ErrorCode::NotFound,
                "connect to tcp://127.0.0.1:9: Connection refused",
            ),
        ] {
            let mut c = accept(&l).await;
            hello(&mut c).await;
            next(&mut c).await;
            send(&mut c, welcome()).await;
            send(&mut c, Frame::Error(ErrorMsg::new(code, msg))).await;
        }
    });
    let client = fake.client();
    let e = within(client.connect_guest("tcp://10.0.0.1:22"))
        .await
        .unwrap_err();
    assert_eq!(e.agent_code(), Some(ErrorCode::Denied));
    assert!(
        matches!(&e, ClientError::Forward { target, .. } if target == "tcp://10.0.0.1:22"),
        "{e:?}"
    );
    assert!(
        e.to_string()
            .starts_with("the agent refused: connecting to"),
        "{e}"
    );
    let e = within(client.connect_guest("tcp://127.0.0.1:9"))
        .await
        .unwrap_err();
    assert_eq!(e.agent_code(), Some(ErrorCode::NotFound));
    assert!(e.to_string().contains("Connection refused"), "{e}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_agent_without_forwarding_is_told_apart() {
    let (fake, _agent) = agent(|mut c| async move {
        hello(&mut c).await;
        next(&mut c).await;
        let old = Welcome {
            version: 1,
            features: Features(Features::EXEC.0 | Features::TTY.0),
        };
        send(&mut c, Frame::Welcome(old)).await;
        // An old agent does not know CONNECT; the client must not wait for it.
        let _ = futures::StreamExt::next(&mut c).await;
    });
    let e = within(fake.client().connect_guest("tcp://127.0.0.1:80"))
        .await
        .unwrap_err();
    assert!(matches!(e, ClientError::Unsupported(_)), "{e:?}");
    assert_eq!(e.to_string(), "the agent does not offer port forwarding");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_guest_listener_announces_and_each_accept_attaches_on_a_new_connection() {
    let (fake, agent) = listen(|l| async move {
        let mut control = accept(&l).await;
        hello(&mut control).await;
        let req = next(&mut control).await;
        send(&mut control, welcome()).await;
        let bound = "tcp://127.0.0.1:40000".to_string();
        send(&mut control, Frame::Listening(Listening { bound })).await;
        let mut attached = Vec::new();
        for id in [7u64, 9] {
            let peer = format!("tcp 127.0.0.1:5{id}");
            send(&mut control, Frame::Accepted(Accepted { id, peer })).await;
            let mut c = accept(&l).await;
            hello(&mut c).await;
            attached.push(next(&mut c).await);
            send(&mut c, welcome()).await;
            send(&mut c, Frame::Connected).await;
            let (mut s, _) = raw(c);
            s.write_all(format!("guest conn {id}").as_bytes())
                .await
                .unwrap();
        }
        // The client dropping its listener closes the control connection.
        let end = futures::StreamExt::next(&mut control).await;
        (req, attached, end.is_none())
    });
    let mut listener = within(fake.client().listen_guest("tcp://127.0.0.1:0"))
        .await
        .unwrap();
    assert_eq!(listener.bound(), "tcp://127.0.0.1:40000");
    let mut first = within(listener.accept()).await.unwrap();
    let incoming = within(listener.next()).await.unwrap();
    assert_eq!((incoming.id(), incoming.peer()), (9, "tcp 127.0.0.1:59"));
    let mut second = within(incoming.attach()).await.unwrap();
    for (s, want) in [(&mut first, "guest conn 7"), (&mut second, "guest conn 9")] {
        let mut got = String::new();
        within(s.read_to_string(&mut got)).await.unwrap();
        assert_eq!(got, want);
    }
    drop(listener);
    let (req, attached, closed) = agent.await.unwrap();
    assert_eq!(
        req,
        Frame::Listen(ListenRequest {
            bind: "tcp://127.0.0.1:0".into()
        })
    );
    assert_eq!(attached, [Frame::Attach { id: 7 }, Frame::Attach { id: 9 }]);
    assert!(
        closed,
        "dropping the listener closed its control connection"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_listener_whose_agent_goes_away_says_so() {
    let (fake, _agent) = agent(|mut c| async move {
        hello(&mut c).await;
        next(&mut c).await;
        send(&mut c, welcome()).await;
        let bound = "unix:///run/x.sock".to_string();
        send(&mut c, Frame::Listening(Listening { bound })).await;
        // Then the agent goes away.
    });
    let mut listener = within(fake.client().listen_guest("unix:///run/x.sock"))
        .await
        .unwrap();
    let e = within(listener.accept()).await.unwrap_err();
    assert!(
        matches!(&e, ClientError::ListenerEnded { bound, .. } if bound == "unix:///run/x.sock"),
        "{e:?}"
    );
}
