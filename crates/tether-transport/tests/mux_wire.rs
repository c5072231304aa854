//! The mux wire format against the test vectors of docs/mux.md.

use tether_transport::mux::link::{Decoder, Frame, Hello, HELLO_LEN, VERSION};

const HELLO_VECTOR: [u8; HELLO_LEN] = [
    0x54, 0x45, 0x54, 0x48, 0x52, 0x4d, 0x55, 0x58, 0x01, 0x00, 0x00, 0x00, 0x03, 0x00, 0x00,
    0x00, //
    0x00, 0x00, 0x00, 0x00, 0xef, 0xcd, 0xab, 0x89, 0x67, 0x45, 0x23, 0x01, 0x00, 0x00, 0x01,
    0x00, //
    0xa4, 0x18, 0x28, 0x81,
];

fn vector_hello() -> Hello {
    Hello {
        version: VERSION,
        ack: false,
        cid: 3,
        nonce: 0x0123_4567_89ab_cdef,
        max_payload: 65536,
    }
}

#[test]
fn hello_encodes_to_the_documented_bytes() {
    assert_eq!(vector_hello().encode(), HELLO_VECTOR);
}

#[test]
fn documented_bytes_decode_to_the_hello() {
    assert_eq!(Hello::decode(&HELLO_VECTOR), Some(vector_hello()));
    let mut acked = HELLO_VECTOR;
    acked[10] = 1;
    assert_eq!(
        Hello::decode(&acked),
        None,
        "changing a byte without the CRC must fail"
    );
}

#[test]
fn a_packet_follows_the_hello_back_to_back() {
    // hello, then a REQUEST from CID 3 port 1234 to CID 2 port 1024 (stream, 256 KiB credit)
    let mut wire = HELLO_VECTOR.to_vec();
    wire.extend_from_slice(&[
        3, 0, 0, 0, 0, 0, 0, 0, // src_cid
        2, 0, 0, 0, 0, 0, 0, 0, // dst_cid
        0xd2, 0x04, 0, 0, // src_port 1234
        0x00, 0x04, 0, 0, // dst_port 1024
        0, 0, 0, 0, // len
        1, 0, // type STREAM
        1, 0, // op REQUEST
        0, 0, 0, 0, // flags
        0, 0, 4, 0, // buf_alloc 262144
        0, 0, 0, 0, // fwd_cnt
    ]);
    let mut d = Decoder::new(65536);
    d.extend(&wire);
    assert_eq!(d.next_frame(), Ok(Some(Frame::Hello(vector_hello()))));
    let Ok(Some(Frame::Packet(hdr, payload))) = d.next_frame() else {
        panic!("expected a packet");
    };
    assert_eq!(
        (hdr.src_cid, hdr.dst_cid, hdr.src_port, hdr.dst_port),
        (3, 2, 1234, 1024)
    );
    assert_eq!((hdr.type_, hdr.op, hdr.buf_alloc), (1, 1, 262_144));
    assert!(payload.is_empty());
    assert_eq!(d.next_frame(), Ok(None));
}
