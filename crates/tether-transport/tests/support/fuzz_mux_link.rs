//! Body of the `mux_link` fuzz target, also replayed by the stable test suite.
//!
//! Input: byte 0 picks the read size, the rest is the link's byte stream. The decoder
//! must never panic, every packet it yields must be exactly what its header announces and
//! within the limit, and after an error it must keep going (scanning for a hello). Then
//! packets built from the input by a writer that follows the format (payloads up to the
//! 64 KiB limit, so large ones take the decoder's direct-read path) must decode to
//! exactly themselves, however the stream is split.

use tether_transport::mux::link::{Decoder, Frame, Hello, LinkError, VERSION};
use tether_vsock::Header;

const MAX_PAYLOAD: u32 = 65536;

pub fn run(data: &[u8]) {
    let Some((&step, stream)) = data.split_first() else {
        return;
    };
    // Read sizes from 1 byte to past a whole 64 KiB packet, most of them small.
    let step = usize::from(step).pow(2) + 1;
    decode_anything(stream, step);
    round_trip(stream, step);
}

fn decode_anything(stream: &[u8], step: usize) {
    let mut d = Decoder::new(MAX_PAYLOAD);
    for chunk in stream.chunks(step) {
        for frame in feed(&mut d, chunk) {
            if let Ok(Frame::Packet(hdr, payload)) = frame {
                assert_eq!(hdr.len as usize, payload.len());
                assert!(hdr.len <= MAX_PAYLOAD);
            }
        }
    }
}

/// Feeds a chunk as the driver does (into the direct payload buffer when the decoder
/// offers one) and returns every frame or error that became available. An error leaves
/// the decoder scanning, which always consumes or waits, so this ends.
fn feed(d: &mut Decoder, mut chunk: &[u8]) -> Vec<Result<Frame, LinkError>> {
    use bytes::BufMut;
    let mut out = Vec::new();
    loop {
        match d.direct_payload() {
            Some(mut target) if !chunk.is_empty() => {
                let n = target.remaining_mut().min(chunk.len());
                target.put_slice(&chunk[..n]);
                chunk = &chunk[n..];
            }
            Some(_) => return out,
            None => {
                d.extend(chunk);
                chunk = &[];
            }
        }
        loop {
            match d.next_frame() {
                Ok(None) => break,
                Ok(Some(f)) => out.push(Ok(f)),
                Err(e) => out.push(Err(e)),
            }
        }
        if chunk.is_empty() && d.direct_payload().is_none() {
            return out;
        }
    }
}

fn round_trip(stream: &[u8], step: usize) {
    let hello = Hello {
        version: VERSION,
        ack: true,
        cid: 3,
        nonce: 9,
        max_payload: MAX_PAYLOAD,
    };
    let mut wire = hello.encode().to_vec();
    let mut sent = Vec::new();
    // Bounded so one input stays cheap (the fuzzer's speed is its reach): at most 8
    // packets and 40 KiB of payload, still past the 16 KiB direct-read threshold.
    let mut budget = 40 * 1024;
    for (i, pair) in stream.chunks(2).take(8).enumerate() {
        let seed = pair.iter().fold(i, |a, &b| a * 257 + usize::from(b));
        let len = (seed * 7919 % (MAX_PAYLOAD as usize + 1)).min(budget);
        budget -= len;
        let payload = stream.repeat(len / stream.len().max(1) + 1)[..len].to_vec();
        let hdr = Header {
            src_cid: 3,
            dst_cid: 2,
            src_port: i as u32,
            len: len as u32,
            op: 5,
            type_: 1,
            ..Header::default()
        };
        wire.extend_from_slice(&hdr.encode());
        wire.extend_from_slice(&payload);
        sent.push(Frame::Packet(hdr, payload.into()));
    }
    let mut d = Decoder::new(MAX_PAYLOAD);
    let mut got = Vec::new();
    for chunk in wire.chunks(step) {
        got.extend(
            feed(&mut d, chunk)
                .into_iter()
                .map(|f| f.expect("well-formed stream")),
        );
    }
    assert_eq!(got.first(), Some(&Frame::Hello(hello)));
    assert_eq!(got[1..], sent[..]);
}
