//! `Client::exec` and `Session` against a scripted fake agent.

mod common;

use bytes::{BufMut, Bytes, BytesMut};
use common::*;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;
use tether_client::{ClientError, Command, ErrorCode, ExitStatus, STDIN_CHUNK};
use tether_proto::{ErrorMsg, Features, Frame, FrameCodec, Welcome};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio_util::codec::{Decoder, Encoder};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hello_and_exec_arrive_in_one_write_before_any_reply() {
    let (fake, agent) = listen(|l| async move {
        let (mut s, _) = l.accept().await.unwrap();
        // Nothing has been answered yet: the client must not wait for WELCOME.
        let mut buf = vec![0u8; 64 * 1024];
        let n = s.read(&mut buf).await.unwrap();
        let mut bytes = BytesMut::from(&buf[..n]);
        let mut frames = Vec::new();
        while let Some(f) = FrameCodec.decode(&mut bytes).unwrap() {
            frames.push(f);
        }
        assert!(bytes.is_empty(), "a partial frame in the first read");
        let mut out = BytesMut::new();
        for f in [
            welcome(),
            Frame::Started { pid: 7 },
            Frame::Exit(ExitStatus::exited(0)),
        ] {
            FrameCodec.encode(f, &mut out).unwrap();
        }
        s.write_all(&out).await.unwrap();
        frames
    });
    let client = fake.client();
    let mut session = within(client.exec(&Command::new("echo").args(["a b", "c"])))
        .await
        .unwrap();
    assert_eq!(session.pid(), 7);
    assert!(within(session.wait()).await.unwrap().success());

    let frames = agent.await.unwrap();
    assert_eq!(
        frames.len(),
        2,
        "hello and exec in the first read: {frames:?}"
    );
    let Frame::Hello(h) = &frames[0] else {
        panic!("first frame {:?}", frames[0])
    };
    assert_eq!(h.version, 1);
    assert!(h.features.contains(Features::EXEC) && !h.features.contains(Features::TTY));
    assert!(h.proof.is_none(), "no token, so an all-zero proof");
    let Frame::Exec(req) = &frames[1] else {
        panic!("second frame {:?}", frames[1])
    };
    assert_eq!(req.argv, ["echo", "a b", "c"]);
    assert!(!req.shell && !req.stdin && req.tty.is_none());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stdout_and_stderr_arrive_in_order_at_their_readers() {
    let (fake, agent) = agent(|mut c| async move {
        start(&mut c).await;
        let mut x = 12345u32;
        for i in 0..400 {
            x = x.wrapping_mul(1_103_515_245).wrapping_add(12345);
            let f = if x & 0x100 == 0 {
                Frame::Stdout(format!("out {i}\n").into())
            } else {
                Frame::Stderr(format!("err {i}\n").into())
            };
            send(&mut c, f).await;
        }
        send(&mut c, Frame::Stdout(Bytes::new())).await; // empty frames are not EOF
        send(&mut c, Frame::Stdout("tail\n".into())).await;
        exit(&mut c, ExitStatus::exited(0)).await;
        x
    });
    let mut s = within(fake.client().exec(&Command::new("x")))
        .await
        .unwrap();
    let (mut out, mut err) = (s.stdout.take().unwrap(), s.stderr.take().unwrap());
    let (o, e) = within(async {
        let (mut o, mut e) = (String::new(), String::new());
        let (ro, re) = tokio::join!(out.read_to_string(&mut o), err.read_to_string(&mut e));
        ro.unwrap();
        re.unwrap();
        (o, e)
    })
    .await;
    assert!(within(s.wait()).await.unwrap().success());
    agent.await.unwrap();

    // Replay the fake's choices to know what each stream should hold.
    let (mut want_o, mut want_e) = (String::new(), String::new());
    let mut x = 12345u32;
    for i in 0..400 {
        x = x.wrapping_mul(1_103_515_245).wrapping_add(12345);
        if x & 0x100 == 0 {
            want_o += &format!("out {i}\n");
        } else {
            want_e += &format!("err {i}\n");
        }
    }
    want_o += "tail\n";
    assert!(
        want_e.len() > 1000 && want_o.len() > 1000,
        "both streams used"
    );
    assert_eq!(o, want_o);
    assert_eq!(e, want_e);
}

async fn run_to_exit(status: ExitStatus) -> ExitStatus {
    let (fake, agent) = agent(move |mut c| async move {
        start(&mut c).await;
        exit(&mut c, status).await;
    });
    let mut s = within(fake.client().exec(&Command::new("x")))
        .await
        .unwrap();
    let got = within(s.wait()).await.unwrap();
    agent.await.unwrap();
    // Asking again gives the same answer.
    assert_eq!(within(s.wait()).await.unwrap(), got);
    got
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn exit_codes_and_signals_are_told_apart() {
    let code = run_to_exit(ExitStatus::exited(7)).await;
    assert_eq!((code.code, code.signal), (Some(7), None));
    assert_eq!(code.shell_code(), 7);
    assert!(!code.success());

    let killed = run_to_exit(ExitStatus::signaled(9, true)).await;
    assert_eq!((killed.code, killed.signal), (None, Some(9)));
    assert!(killed.core_dumped);
    assert_eq!(killed.shell_code(), 128 + 9);
    assert_eq!(killed.to_string(), "killed by signal 9 (core dumped)");

    let mut t = ExitStatus::signaled(15, false);
    t.timed_out = true;
    let timed = run_to_exit(t).await;
    assert!(timed.timed_out);
    assert_eq!(timed.shell_code(), 143);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_spawn_error_is_a_client_error_with_the_agents_message() {
    let (fake, agent) = agent(|mut c| async move {
        hello(&mut c).await;
        exec(&mut c).await;
        send(&mut c, welcome()).await;
        let msg = ErrorMsg::new(ErrorCode::Spawn, "no such command: nope");
        send(&mut c, Frame::Error(msg)).await;
    });
    let err = within(fake.client().exec(&Command::new("nope")))
        .await
        .unwrap_err();
    agent.await.unwrap();
    match &err {
        ClientError::Agent { code, message } => {
            assert_eq!(*code, ErrorCode::Spawn);
            assert_eq!(message, "no such command: nope");
        }
        other => panic!("expected an agent error, got {other:?}"),
    }
    assert_eq!(err.agent_code(), Some(ErrorCode::Spawn));
    assert!(err.to_string().contains("no such command: nope"), "{err}");
}

async fn handshake_error(reply: Frame) -> ClientError {
    let (fake, agent) = agent(move |mut c| async move {
        hello(&mut c).await;
        exec(&mut c).await;
        send(&mut c, reply).await;
    });
    let err = within(fake.client().exec(&Command::new("x")))
        .await
        .unwrap_err();
    agent.await.unwrap();
    err
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn auth_and_version_refusals_have_their_own_errors() {
    let e = handshake_error(Frame::Error(ErrorMsg::new(ErrorCode::Auth, "bad token"))).await;
    assert!(
        matches!(&e, ClientError::Auth(m) if m == "bad token"),
        "{e:?}"
    );
    assert!(e.to_string().contains("authentication"), "{e}");

    let e = handshake_error(Frame::Error(ErrorMsg::new(ErrorCode::Version, "v9 only"))).await;
    assert!(matches!(&e, ClientError::Version { ours: 1, .. }), "{e:?}");
    assert!(e.to_string().contains("v9 only"), "{e}");

    let e = handshake_error(Frame::Welcome(Welcome {
        version: 2,
        features: Features::ALL,
    }))
    .await;
    assert!(matches!(&e, ClientError::Version { .. }), "{e:?}");
    assert!(e.to_string().contains("answered version 2"), "{e}");

    let e = handshake_error(Frame::Pong("?".into())).await;
    assert!(matches!(&e, ClientError::Protocol(_)), "{e:?}");
    assert!(e.to_string().contains("WELCOME"), "{e}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_tty_session_asks_for_the_tty_feature_and_needs_the_agent_to_offer_it() {
    let (fake, agent) = agent(|mut c| async move {
        let h = hello(&mut c).await;
        let r = exec(&mut c).await;
        send(
            &mut c,
            Frame::Welcome(Welcome {
                version: 1,
                features: Features::EXEC,
            }),
        )
        .await;
        (h, r)
    });
    let cmd = Command::login_shell()
        .stdin(true)
        .tty(24, 80, Some("xterm-256color".into()));
    let err = within(fake.client().exec(&cmd)).await.unwrap_err();
    let (h, r) = agent.await.unwrap();
    assert!(h.features.contains(Features::EXEC) && h.features.contains(Features::TTY));
    assert!(r.argv.is_empty() && r.shell && r.stdin);
    let tty = r.tty.unwrap();
    assert_eq!(
        (tty.rows, tty.cols, tty.term.as_deref()),
        (24, 80, Some("xterm-256color"))
    );
    assert!(matches!(err, ClientError::Unsupported(_)), "{err:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_connection_closed_before_exit_is_connection_lost() {
    let (fake, agent) = agent(|mut c| async move {
        start(&mut c).await;
        send(&mut c, Frame::Stdout("partial".into())).await;
        // and the agent dies.
    });
    let mut s = within(fake.client().exec(&Command::new("x")))
        .await
        .unwrap();
    let mut out = s.stdout.take().unwrap();
    agent.await.unwrap();
    let mut got = vec![0u8; 100];
    let n = within(out.read(&mut got)).await.unwrap();
    assert_eq!(&got[..n], b"partial", "data before the loss is delivered");
    let read_err = within(out.read(&mut got)).await.unwrap_err();
    assert_eq!(read_err.kind(), std::io::ErrorKind::ConnectionAborted);
    let err = within(s.wait()).await.unwrap_err();
    assert!(matches!(err, ClientError::ConnectionLost { .. }), "{err:?}");
    let text = err.to_string();
    assert!(
        text.contains("connection lost before the command's exit status"),
        "{text}"
    );
    // After the failure, the status stays unknown.
    assert!(matches!(
        within(s.wait()).await,
        Err(ClientError::SessionEnded)
    ));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_connection_closed_during_the_handshake_is_connection_lost() {
    let (fake, agent) = agent(|mut c| async move {
        hello(&mut c).await;
    });
    let err = within(fake.client().exec(&Command::new("x")))
        .await
        .unwrap_err();
    agent.await.unwrap();
    assert!(
        err.to_string()
            .contains("connection lost during the handshake"),
        "{err}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_agent_error_mid_session_fails_wait_and_the_readers() {
    let (fake, agent) = agent(|mut c| async move {
        start(&mut c).await;
        send(&mut c, Frame::Stderr("x".into())).await;
        send(
            &mut c,
            Frame::Error(ErrorMsg::new(ErrorCode::Internal, "pty gone")),
        )
        .await;
    });
    let mut s = within(fake.client().exec(&Command::new("x")))
        .await
        .unwrap();
    let mut err_r = s.stderr.take().unwrap();
    let mut v = Vec::new();
    let e = within(err_r.read_to_end(&mut v)).await.unwrap_err();
    assert_eq!(v, b"x");
    assert!(e.to_string().contains("pty gone"), "{e}");
    let err = within(s.wait()).await.unwrap_err();
    assert_eq!(err.agent_code(), Some(ErrorCode::Internal));
    agent.await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_megabyte_of_stdin_goes_as_frames_of_at_most_64k_then_eof() {
    let input = data(1 << 20, 7);
    let want = sha(&input);
    let (fake, agent) = agent(|mut c| async move {
        let (_, req) = start(&mut c).await;
        assert!(req.stdin);
        let mut got = Vec::new();
        let mut frames = 0;
        loop {
            match next(&mut c).await {
                Frame::Stdin(b) => {
                    assert!(
                        !b.is_empty() && b.len() <= 64 * 1024,
                        "frame of {}",
                        b.len()
                    );
                    got.extend_from_slice(&b);
                    frames += 1;
                }
                Frame::StdinEof => break,
                other => panic!("unexpected {other:?}"),
            }
        }
        exit(&mut c, ExitStatus::exited(0)).await;
        (got, frames)
    });
    let mut s = within(fake.client().exec(&Command::new("cat").stdin(true)))
        .await
        .unwrap();
    let mut stdin = s.stdin.take().unwrap();
    within(stdin.write_all(&input)).await.unwrap();
    within(stdin.shutdown()).await.unwrap();
    // Shut down: further writes are refused; shutting down again is harmless.
    assert!(stdin.write_all(b"more").await.is_err());
    within(stdin.shutdown()).await.unwrap();
    assert!(within(s.wait()).await.unwrap().success());
    let (got, frames) = agent.await.unwrap();
    assert_eq!(got.len(), input.len());
    assert_eq!(sha(&got), want);
    assert!(frames >= (1 << 20) / STDIN_CHUNK, "{frames} frames");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dropping_stdin_sends_eof_after_the_data() {
    let (fake, agent) = agent(|mut c| async move {
        start(&mut c).await;
        let a = next(&mut c).await;
        let b = next(&mut c).await;
        exit(&mut c, ExitStatus::exited(0)).await;
        (a, b)
    });
    let mut s = within(fake.client().exec(&Command::new("cat").stdin(true)))
        .await
        .unwrap();
    let mut stdin = s.stdin.take().unwrap();
    within(stdin.write_all(b"abc")).await.unwrap();
    drop(stdin);
    assert!(within(s.wait()).await.unwrap().success());
    let (a, b) = agent.await.unwrap();
    assert_eq!(a, Frame::Stdin("abc".into()));
    assert_eq!(b, Frame::StdinEof);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn resize_and_signal_frames_have_the_documented_bytes() {
    let (fake, agent) = listen(|l| async move {
        let (mut s, _) = l.accept().await.unwrap();
        // Read hello and exec (they may come in pieces), then answer.
        let mut got = BytesMut::new();
        let mut frames = 0;
        while frames < 2 {
            let mut buf = [0u8; 4096];
            let n = s.read(&mut buf).await.unwrap();
            assert!(n > 0);
            got.put_slice(&buf[..n]);
            while FrameCodec.decode(&mut got).unwrap().is_some() {
                frames += 1;
            }
        }
        let mut out = BytesMut::new();
        FrameCodec.encode(welcome(), &mut out).unwrap();
        FrameCodec
            .encode(Frame::Started { pid: 1 }, &mut out)
            .unwrap();
        s.write_all(&out).await.unwrap();
        let mut raw = [0u8; 18];
        s.read_exact(&mut raw).await.unwrap();
        out.clear();
        FrameCodec
            .encode(Frame::Exit(ExitStatus::exited(0)), &mut out)
            .unwrap();
        s.write_all(&out).await.unwrap();
        raw
    });
    let mut s = within(fake.client().exec(&Command::new("vi").tty(1, 1, None)))
        .await
        .unwrap();
    within(s.resize(24, 80)).await.unwrap();
    within(s.control().signal(15)).await.unwrap();
    assert!(within(s.wait()).await.unwrap().success());
    let raw = agent.await.unwrap();
    // docs/protocol.md: RESIZE rows 24, cols 80; SIGNAL 15.
    assert_eq!(
        raw,
        [
            0x16, 4, 0, 0, 0, 0x18, 0, 0x50, 0, //
            0x17, 4, 0, 0, 0, 0x0f, 0, 0, 0
        ]
    );
    // The session is over: control frames are refused.
    assert!(matches!(
        within(s.signal(9)).await,
        Err(ClientError::SessionEnded)
    ));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stdin_resize_and_signal_from_many_tasks_never_interleave() {
    let input = data(3 << 20, 99);
    let want = sha(&input);
    let (fake, agent) = agent(|mut c| async move {
        start(&mut c).await;
        let (mut stdin, mut resizes, mut signals, mut eof) = (Vec::new(), 0, 0, false);
        // Control frames may come after STDIN_EOF: read until everything is in.
        while !(eof && resizes == 200 && signals == 200) {
            // Any interleaving of partial frames would fail to decode here.
            match next(&mut c).await {
                Frame::Stdin(b) => stdin.extend_from_slice(&b),
                Frame::Resize { rows, cols } => {
                    assert_eq!(u32::from(rows) * 2, u32::from(cols));
                    resizes += 1;
                }
                Frame::Signal(s) => {
                    assert!((1..=31).contains(&s));
                    signals += 1;
                }
                Frame::StdinEof => {
                    assert!(!eof, "one STDIN_EOF");
                    eof = true;
                }
                other => panic!("unexpected {other:?}"),
            }
        }
        exit(&mut c, ExitStatus::exited(0)).await;
        (stdin, resizes, signals)
    });
    let mut s = within(fake.client().exec(&Command::new("cat").stdin(true)))
        .await
        .unwrap();
    let mut stdin = s.stdin.take().unwrap();
    let writer = tokio::spawn(async move {
        // Uneven writes, some bigger than a frame.
        let mut rest = &input[..];
        let mut n = 1usize;
        while !rest.is_empty() {
            n = (n * 7 + 13) % 200_000 + 1;
            let k = n.min(rest.len());
            stdin.write_all(&rest[..k]).await.unwrap();
            rest = &rest[k..];
        }
        stdin.shutdown().await.unwrap();
    });
    let mut controls = Vec::new();
    for t in 0..4u16 {
        let control = s.control();
        controls.push(tokio::spawn(async move {
            for i in 0..50u16 {
                let rows = t * 100 + i + 1;
                control.resize(rows, rows * 2).await.unwrap();
                control.signal(i32::from(i % 31 + 1)).await.unwrap();
            }
        }));
    }
    within(writer).await.unwrap();
    for c in controls {
        within(c).await.unwrap();
    }
    assert!(within(s.wait()).await.unwrap().success());
    let (got, resizes, signals) = agent.await.unwrap();
    assert_eq!((resizes, signals), (200, 200));
    assert_eq!(sha(&got), want);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_token_gives_a_fresh_proof_that_verifies() {
    let (fake, agent) = listen(|l| async move {
        let mut hellos = Vec::new();
        for _ in 0..2 {
            let mut c = accept(&l).await;
            hellos.push(start(&mut c).await.0);
            exit(&mut c, ExitStatus::exited(0)).await;
        }
        hellos
    });
    let client = fake.client().token(b"s3cret token".to_vec());
    for _ in 0..2 {
        let mut s = within(client.exec(&Command::new("true"))).await.unwrap();
        within(s.wait()).await.unwrap();
    }
    let hellos = agent.await.unwrap();
    for h in &hellos {
        assert!(!h.proof.is_none());
        assert!(h.proof.verify(b"s3cret token", now()));
        assert!(!h.proof.verify(b"s3cret tokeN", now()));
        assert!(
            !h.proof.verify(b"s3cret token", now() + 3600),
            "time is in the proof"
        );
    }
    assert_ne!(
        hellos[0].proof.nonce, hellos[1].proof.nonce,
        "nonces are fresh"
    );
    assert_ne!(hellos[0].proof.nonce, [0; 16]);
    // The token never appears in the client's Debug output.
    assert!(!format!("{client:?}").contains("s3cret"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_slow_stdout_reader_loses_nothing_and_holds_the_agent_back() {
    const TOTAL: usize = 32 << 20;
    const FRAME: usize = 64 * 1024;
    let payload = Arc::new(data(TOTAL, 3));
    let want = sha(&payload);
    let sent = Arc::new(AtomicU64::new(0));
    let (fake, agent) = agent({
        let payload = payload.clone();
        let sent = sent.clone();
        move |mut c| async move {
            start(&mut c).await;
            for chunk in payload.chunks(FRAME) {
                send(&mut c, Frame::Stdout(Bytes::copy_from_slice(chunk))).await;
                sent.fetch_add(chunk.len() as u64, Ordering::SeqCst);
            }
            exit(&mut c, ExitStatus::exited(0)).await;
        }
    });
    let mut s = within(fake.client().exec(&Command::new("cat")))
        .await
        .unwrap();
    let mut out = s.stdout.take().unwrap();
    let mut got = Vec::with_capacity(TOTAL);
    let mut buf = vec![0u8; 32 * 1024];
    let mut checked = false;
    within(async {
        loop {
            let n = out.read(&mut buf).await.unwrap();
            if n == 0 {
                break;
            }
            got.extend_from_slice(&buf[..n]);
            if got.len() % (256 * 1024) < n {
                tokio::time::sleep(Duration::from_millis(2)).await;
            }
            if !checked && got.len() >= 4 << 20 {
                // Stop reading for a while: the fake must stall, not race ahead.
                tokio::time::sleep(Duration::from_millis(300)).await;
                let ahead = sent.load(Ordering::SeqCst) - got.len() as u64;
                assert!(
                    ahead < 8 << 20,
                    "the agent got {ahead} bytes ahead of a stalled reader"
                );
                checked = true;
            }
        }
    })
    .await;
    assert!(checked);
    assert_eq!(got.len(), TOTAL);
    assert_eq!(sha(&got), want, "checksums match");
    assert!(within(s.wait()).await.unwrap().success());
    agent.await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_dropped_reader_discards_its_stream_without_a_deadlock() {
    let (fake, agent) = agent(|mut c| async move {
        start(&mut c).await;
        for _ in 0..128 {
            send(&mut c, Frame::Stdout(vec![b'x'; 64 * 1024].into())).await;
        }
        send(&mut c, Frame::Stderr("done\n".into())).await;
        exit(&mut c, ExitStatus::exited(3)).await;
    });
    let mut s = within(fake.client().exec(&Command::new("x")))
        .await
        .unwrap();
    drop(s.stdout.take());
    let mut e = String::new();
    within(s.stderr.take().unwrap().read_to_string(&mut e))
        .await
        .unwrap();
    assert_eq!(e, "done\n");
    assert_eq!(within(s.wait()).await.unwrap().code, Some(3));
    agent.await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn wait_closes_an_untaken_stdin_and_discards_untaken_output() {
    let (fake, agent) = agent(|mut c| async move {
        start(&mut c).await;
        for _ in 0..64 {
            send(&mut c, Frame::Stdout(vec![b'y'; 64 * 1024].into())).await;
        }
        assert_eq!(next(&mut c).await, Frame::StdinEof);
        exit(&mut c, ExitStatus::exited(5)).await;
    });
    let mut s = within(fake.client().exec(&Command::new("x").stdin(true)))
        .await
        .unwrap();
    assert_eq!(within(s.wait()).await.unwrap().code, Some(5));
    agent.await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn output_collects_both_streams_and_the_status() {
    let (fake, agent) = agent(|mut c| async move {
        start(&mut c).await;
        // Like `cat`: nothing until stdin ends, which output() must see to.
        assert_eq!(next(&mut c).await, Frame::StdinEof);
        send(&mut c, Frame::Stdout("hi\n".into())).await;
        send(&mut c, Frame::Stderr("oops\n".into())).await;
        exit(&mut c, ExitStatus::exited(3)).await;
    });
    let cmd = Command::shell("cat >/dev/null; echo hi; echo oops >&2; exit 3").stdin(true);
    let s = within(fake.client().exec(&cmd)).await.unwrap();
    let out = within(s.output()).await.unwrap();
    assert_eq!(out.stdout, b"hi\n");
    assert_eq!(out.stderr, b"oops\n");
    assert_eq!(out.status.code, Some(3));
    agent.await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dropping_every_handle_closes_the_connection() {
    let (fake, agent) = agent(|mut c| async move {
        start(&mut c).await;
        send(&mut c, Frame::Stdout("x".into())).await;
        // The client goes away without a frame: the connection simply ends.
        futures::StreamExt::next(&mut c).await.map(|r| r.unwrap())
    });
    let s = within(fake.client().exec(&Command::new("sleep").arg("1000")))
        .await
        .unwrap();
    drop(s);
    assert_eq!(within(agent).await.unwrap(), None, "the fake saw the end");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_silent_agent_times_out_and_a_missing_one_is_a_transport_error() {
    let (fake, agent) = agent(|mut c| async move {
        hello(&mut c).await;
        tokio::time::sleep(Duration::from_secs(5)).await;
    });
    let err = within(
        fake.client()
            .reply_timeout(Duration::from_millis(200))
            .exec(&Command::new("x")),
    )
    .await
    .unwrap_err();
    assert!(matches!(err, ClientError::Timeout { .. }), "{err:?}");
    agent.abort();

    let gone = fake.dir.path().join("nobody.sock");
    let client =
        tether_client::Client::new(tether_client::Peer::new([tether_client::Endpoint::Unix {
            path: gone,
        }]));
    let err = within(client.exec(&Command::new("x"))).await.unwrap_err();
    assert!(matches!(err, ClientError::Transport(_)), "{err:?}");
    assert!(err.to_string().contains("nobody.sock"), "{err}");
}
