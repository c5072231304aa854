//! The byte-level test vectors of docs/protocol.md, round trips, and refusals.

use bytes::{Bytes, BytesMut};
use proptest::prelude::*;
use tether_proto::*;
use tokio_util::codec::Decoder;

fn enc(f: &Frame) -> Vec<u8> {
    let mut b = BytesMut::new();
    encode(f, &mut b).unwrap();
    b.to_vec()
}

fn dec(bytes: &[u8]) -> Result<Option<Frame>, ProtoError> {
    FrameCodec.decode(&mut BytesMut::from(bytes))
}

fn hex(s: &str) -> Vec<u8> {
    let s: String = s.split_whitespace().collect();
    (0..s.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(&s[i..i + 2], 16).unwrap())
        .collect()
}

/// Each vector as printed in docs/protocol.md.
#[test]
fn documented_vectors() {
    let hello = Frame::Hello(Hello {
        version: 1,
        features: Features(3),
        proof: Proof::default(),
    });
    let v = hex("01 42000000 54544852 0100 03000000 0000000000000000
         00000000000000000000000000000000
         0000000000000000000000000000000000000000000000000000000000000000");
    assert_eq!(enc(&hello), v);
    assert_eq!(dec(&v).unwrap(), Some(hello));

    let welcome = Frame::Welcome(Welcome {
        version: 1,
        features: Features(3),
    });
    assert_eq!(enc(&welcome), hex("02 06000000 0100 03000000"));

    let exec = Frame::Exec(Box::new(ExecRequest {
        argv: vec!["true".into()],
        ..Default::default()
    }));
    let mut v = hex("10 11000000");
    v.extend_from_slice(br#"{"argv":["true"]}"#);
    assert_eq!(enc(&exec), v);
    assert_eq!(dec(&v).unwrap(), Some(exec));

    assert_eq!(
        enc(&Frame::Stdout(Bytes::from_static(b"hi\n"))),
        hex("14 03000000 68690a")
    );
    assert_eq!(enc(&Frame::StdinEof), hex("13 00000000"));
    assert_eq!(
        enc(&Frame::Resize { rows: 24, cols: 80 }),
        hex("16 04000000 1800 5000")
    );
    assert_eq!(enc(&Frame::Signal(15)), hex("17 04000000 0f000000"));

    let mut v = hex("18 0a000000");
    v.extend_from_slice(br#"{"code":0}"#);
    assert_eq!(enc(&Frame::Exit(ExitStatus::exited(0))), v);
    let mut v = hex("18 0c000000");
    v.extend_from_slice(br#"{"signal":9}"#);
    assert_eq!(enc(&Frame::Exit(ExitStatus::signaled(9, false))), v);

    let mut v = hex("03 2d000000");
    v.extend_from_slice(br#"{"code":"unknown-kind","message":"kind 0x7f"}"#);
    let e = Frame::Error(ErrorMsg::new(ErrorCode::UnknownKind, "kind 0x7f"));
    assert_eq!(enc(&e), v);
    assert_eq!(dec(&v).unwrap(), Some(e));
}

/// The file-copy vectors of docs/protocol.md ("Files"), both ways.
#[test]
fn file_vectors() {
    let json = |head: &str, body: &[u8]| {
        let mut v = hex(head);
        v.extend_from_slice(body);
        v
    };
    let cases = [
        (
            Frame::CopyIn(CopyInRequest {
                dest: "/srv".into(),
            }),
            json("31 0f000000", br#"{"dest":"/srv"}"#),
        ),
        (
            Frame::Entry(FileEntry {
                path: "app.log".into(),
                kind: EntryKind::File,
                mode: 0o644,
                uid: 1000,
                gid: 1000,
                mtime_ns: 1_700_000_000_123_456_789,
                size: 3,
                target: None,
            }),
            json(
                "32 69000000",
                br#"{"path":"app.log","kind":"file","mode":420,"uid":1000,"gid":1000,"mtime_ns":1700000000123456789,"size":3}"#,
            ),
        ),
        (
            Frame::FileData(Bytes::from_static(b"hi\n")),
            hex("33 03000000 68690a"),
        ),
        (
            Frame::EntryEnd {
                sha256: hex("98ea6e4f216f2fb4b69fff9b3a44842c38686ca685f3f55dc48c5d3fb1107be4")
                    .try_into()
                    .unwrap(),
            },
            hex("34 20000000 98ea6e4f216f2fb4b69fff9b3a44842c38686ca685f3f55dc48c5d3fb1107be4"),
        ),
        (
            Frame::CopyDone(CopySummary {
                files: 1,
                bytes: 3,
                ..Default::default()
            }),
            json(
                "35 2b000000",
                br#"{"files":1,"dirs":0,"symlinks":0,"bytes":3}"#,
            ),
        ),
        (
            Frame::CopyOut(CopyOutRequest {
                path: "/var/log/app.log".into(),
            }),
            json("30 1b000000", br#"{"path":"/var/log/app.log"}"#),
        ),
    ];
    for (frame, wire) in cases {
        assert_eq!(enc(&frame), wire, "{frame:?}");
        assert_eq!(dec(&wire).unwrap(), Some(frame));
    }
    // The checksum is what ENTRY_END says it is: SHA-256 of the FILE_DATA bytes.
    use sha2::Digest;
    assert_eq!(
        sha2::Sha256::digest(b"hi\n").to_vec(),
        hex("98ea6e4f216f2fb4b69fff9b3a44842c38686ca685f3f55dc48c5d3fb1107be4")
    );
    let mut short = hex("34 1f000000");
    short.extend_from_slice(&[0u8; 31]);
    let e = dec(&short).unwrap_err();
    assert!(e.to_string().contains("31 payload bytes where 32"), "{e}");
}

/// The forwarding vectors of docs/protocol.md ("Forwarding"), both ways.
#[test]
fn forwarding_vectors() {
    let json = |head: &str, body: &[u8]| {
        let mut v = hex(head);
        v.extend_from_slice(body);
        v
    };
    let cases = [
        (
            Frame::Connect(ConnectRequest {
                target: "tcp://127.0.0.1:80".into(),
            }),
            json("40 1f000000", br#"{"target":"tcp://127.0.0.1:80"}"#),
        ),
        (Frame::Connected, hex("41 00000000")),
        (
            Frame::Listen(ListenRequest {
                bind: "tcp://127.0.0.1:0".into(),
            }),
            json("42 1c000000", br#"{"bind":"tcp://127.0.0.1:0"}"#),
        ),
        (
            Frame::Listening(Listening {
                bound: "tcp://127.0.0.1:40000".into(),
            }),
            json("43 21000000", br#"{"bound":"tcp://127.0.0.1:40000"}"#),
        ),
        (
            Frame::Accepted(Accepted {
                id: 7,
                peer: "tcp 127.0.0.1:41234".into(),
            }),
            json("44 25000000", br#"{"id":7,"peer":"tcp 127.0.0.1:41234"}"#),
        ),
        (Frame::Attach { id: 7 }, json("45 08000000", br#"{"id":7}"#)),
    ];
    for (frame, wire) in cases {
        assert_eq!(enc(&frame), wire, "{frame:?}");
        assert_eq!(dec(&wire).unwrap(), Some(frame));
    }
    // CONNECTED carries nothing: what follows it is raw data, never part of the frame.
    let mut v = hex("41 00000000");
    v.extend_from_slice(b"raw");
    let mut buf = BytesMut::from(&v[..]);
    assert_eq!(FrameCodec.decode(&mut buf).unwrap(), Some(Frame::Connected));
    assert_eq!(&buf[..], b"raw");
    let e = dec(&hex("41 01000000 00")).unwrap_err();
    assert!(e.to_string().contains("1 payload bytes where 0"), "{e}");
}

#[test]
fn refusals_name_what_was_wrong() {
    let e = dec(&hex("7f 00000000")).unwrap_err();
    assert_eq!(e.to_string(), "unknown frame kind 0x7f");
    // The length is judged from the header alone: no need to receive 16 MiB first.
    let e = dec(&hex("14 00000001")).unwrap_err();
    assert!(
        matches!(
            e,
            ProtoError::Oversize {
                len: 16_777_216,
                ..
            }
        ),
        "{e}"
    );
    let e = dec(&hex("16 03000000 010203")).unwrap_err();
    assert!(e.to_string().contains("3 payload bytes where 4"), "{e}");
    let mut v = hex("10 03000000");
    v.extend_from_slice(b"{x}");
    assert!(dec(&v)
        .unwrap_err()
        .to_string()
        .starts_with("bad Exec frame"));
    // A hello without the magic.
    let mut v = hex("01 42000000");
    v.extend_from_slice(&[0u8; 0x42]);
    assert!(dec(&v).unwrap_err().to_string().contains("magic"));
    // Incomplete input waits; at EOF it is an error.
    assert_eq!(dec(&hex("14 05000000 6869")).unwrap(), None);
    let mut b = BytesMut::from(&hex("14 05000000 6869")[..]);
    assert!(matches!(
        FrameCodec.decode_eof(&mut b),
        Err(ProtoError::Truncated(7))
    ));
}

#[test]
fn unknown_json_fields_are_ignored_for_forward_compatibility() {
    let mut v = hex("10 1e000000");
    v.extend_from_slice(br#"{"argv":["ls"],"future":[1,2]}"#);
    match dec(&v).unwrap() {
        Some(Frame::Exec(r)) => assert_eq!(r.argv, ["ls"]),
        other => panic!("{other:?}"),
    }
}

fn frame() -> impl Strategy<Value = Frame> {
    let bytes = proptest::collection::vec(any::<u8>(), 0..300).prop_map(Bytes::from);
    prop_oneof![
        (any::<u16>(), any::<u32>(), any::<u64>(), any::<[u8; 16]>()).prop_map(|(v, f, t, n)| {
            Frame::Hello(Hello {
                version: v,
                features: Features(f),
                proof: Proof::new(b"k", t, n),
            })
        }),
        (any::<u16>(), any::<u32>()).prop_map(|(v, f)| Frame::Welcome(Welcome {
            version: v,
            features: Features(f)
        })),
        (
            proptest::collection::vec(".*", 0..4),
            any::<bool>(),
            any::<u64>(),
            proptest::option::of(".*")
        )
            .prop_map(|(argv, stdin, t, user)| Frame::Exec(Box::new(ExecRequest {
                argv,
                stdin,
                timeout_ms: t,
                user,
                env: vec![("A".into(), "b=c".into())],
                tty: Some(Tty {
                    rows: 1,
                    cols: 2,
                    term: None
                }),
                ..Default::default()
            }))),
        any::<u32>().prop_map(|pid| Frame::Started { pid }),
        bytes.clone().prop_map(Frame::Stdin),
        bytes.clone().prop_map(Frame::Stdout),
        bytes.clone().prop_map(Frame::Stderr),
        bytes.clone().prop_map(Frame::Ping),
        bytes.prop_map(Frame::Pong),
        Just(Frame::StdinEof),
        Just(Frame::InfoRequest),
        (any::<u16>(), any::<u16>()).prop_map(|(rows, cols)| Frame::Resize { rows, cols }),
        any::<i32>().prop_map(Frame::Signal),
        (any::<i32>(), any::<bool>()).prop_map(|(c, t)| {
            let mut s = ExitStatus::exited(c);
            s.timed_out = t;
            Frame::Exit(s)
        }),
        (1..65i32, any::<bool>()).prop_map(|(s, c)| Frame::Exit(ExitStatus::signaled(s, c))),
        ".*".prop_map(|m| Frame::Error(ErrorMsg::new(ErrorCode::Spawn, m))),
        ".*".prop_map(|target| Frame::Connect(ConnectRequest { target })),
        Just(Frame::Connected),
        ".*".prop_map(|bind| Frame::Listen(ListenRequest { bind })),
        ".*".prop_map(|bound| Frame::Listening(Listening { bound })),
        (any::<u64>(), ".*").prop_map(|(id, peer)| Frame::Accepted(Accepted { id, peer })),
        any::<u64>().prop_map(|id| Frame::Attach { id }),
    ]
}

proptest! {
    /// Any sequence of frames, cut into arbitrary pieces, decodes to the same sequence.
    #[test]
    fn frames_survive_any_split(frames in proptest::collection::vec(frame(), 1..8), cuts in proptest::collection::vec(1usize..64, 1..50)) {
        let mut wire = BytesMut::new();
        for f in &frames {
            encode(f, &mut wire).unwrap();
        }
        let wire = wire.to_vec();
        let mut codec = FrameCodec;
        let mut buf = BytesMut::new();
        let mut got = Vec::new();
        let mut pos = 0;
        let mut cut = cuts.iter().cycle();
        while pos < wire.len() {
            let n = (*cut.next().unwrap()).min(wire.len() - pos);
            buf.extend_from_slice(&wire[pos..pos + n]);
            pos += n;
            while let Some(f) = codec.decode(&mut buf).unwrap() {
                got.push(f);
            }
        }
        prop_assert_eq!(got, frames);
    }

    /// Arbitrary bytes never panic the decoder; they decode, wait, or fail.
    #[test]
    fn garbage_never_panics(bytes in proptest::collection::vec(any::<u8>(), 0..2000)) {
        let mut buf = BytesMut::from(&bytes[..]);
        let mut codec = FrameCodec;
        while let Ok(Some(_)) = codec.decode(&mut buf) {}
    }
}
