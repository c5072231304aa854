//! The `header` fuzz target's body, shared with `tests/fuzz_regressions.rs` so a crash
//! input replays in an ordinary test run.
//!
//! Decodes arbitrary bytes as a header and as a whole packet under several payload
//! limits; whatever decodes must encode back to the same bytes.

use tether_vsock::header::{Header, HeaderError, Op, SocketType, HEADER_LEN};

/// Runs one input; panics on any broken property.
pub fn run(data: &[u8]) {
    match Header::decode(data) {
        Ok(hdr) => {
            assert!(data.len() >= HEADER_LEN);
            let wire = hdr.encode();
            assert_eq!(wire[..], data[..HEADER_LEN], "encode(decode(x)) != x");
            assert_eq!(Header::decode(&wire), Ok(hdr), "decode(encode(h)) != h");

            let mut buf = vec![0xa5u8; HEADER_LEN + 3];
            hdr.encode_into(&mut buf).expect("room for a header");
            assert_eq!(buf[..HEADER_LEN], data[..HEADER_LEN]);
            assert!(
                buf[HEADER_LEN..].iter().all(|&b| b == 0xa5),
                "encode_into wrote past the header"
            );
            let short = data.len() % HEADER_LEN;
            assert_eq!(
                hdr.encode_into(&mut buf[..short]),
                Err(HeaderError::Truncated { got: short })
            );

            match hdr.op() {
                Some(op) => assert_eq!(op.to_u16(), hdr.op),
                None => assert!(hdr.op == 0 || hdr.op > 7, "op {} undecoded", hdr.op),
            }
            assert_eq!(Op::from_u16(hdr.op), hdr.op());
            match hdr.socket_type() {
                Some(t) => assert_eq!(t.to_u16(), hdr.type_),
                None => assert!(hdr.type_ != 1 && hdr.type_ != 2),
            }
            assert_eq!(SocketType::from_u16(hdr.type_), hdr.socket_type());
        }
        Err(e) => {
            assert_eq!(e, HeaderError::Truncated { got: data.len() });
            assert!(!e.to_string().is_empty());
        }
    }

    let tail_limit = data
        .get(data.len().saturating_sub(4)..)
        .filter(|t| t.len() == 4)
        .map_or(7, |t| u32::from_le_bytes(t.try_into().expect("4 bytes")));
    for max in [0, 1, 4096, 64 * 1024, u32::MAX, tail_limit] {
        match Header::decode_packet(data, max) {
            Ok((hdr, payload)) => {
                assert!(hdr.len <= max);
                assert_eq!(payload.len(), hdr.len as usize);
                assert_eq!(payload, &data[HEADER_LEN..HEADER_LEN + payload.len()]);
                assert_eq!(Header::decode(data), Ok(hdr));
            }
            Err(HeaderError::Truncated { got }) => {
                assert_eq!(got, data.len());
                assert!(got < HEADER_LEN);
            }
            Err(HeaderError::PayloadTooLarge { declared, max: m }) => {
                assert_eq!(m, max);
                assert!(declared > max);
                assert_eq!(Header::decode(data).map(|h| h.len), Ok(declared));
            }
            Err(
                e @ HeaderError::PayloadTruncated {
                    declared,
                    available,
                },
            ) => {
                assert!(declared <= max);
                assert_eq!(available, data.len() - HEADER_LEN);
                assert!(declared as usize > available);
                assert!(!e.to_string().is_empty());
            }
        }
    }
}
