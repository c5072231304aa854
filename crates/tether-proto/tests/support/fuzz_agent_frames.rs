//! Fuzz body: arbitrary bytes, fed in chunks whose sizes the first byte picks, never
//! panic the frame decoder; every frame it yields encodes and decodes back to itself.

use bytes::BytesMut;
use tether_proto::{encode, FrameCodec};
use tokio_util::codec::Decoder;

pub fn run(data: &[u8]) {
    let Some((&step, rest)) = data.split_first() else {
        return;
    };
    let step = usize::from(step % 64) + 1;
    let mut codec = FrameCodec;
    let mut buf = BytesMut::new();
    for chunk in rest.chunks(step) {
        buf.extend_from_slice(chunk);
        loop {
            match codec.decode(&mut buf) {
                Ok(Some(frame)) => {
                    let mut again = BytesMut::new();
                    encode(&frame, &mut again).expect("a decoded frame fits the cap");
                    let back = FrameCodec.decode(&mut again).expect("re-decodes");
                    assert_eq!(back.as_ref(), Some(&frame));
                }
                Ok(None) => break,
                // A refused frame ends the connection; so does this input.
                Err(_) => return,
            }
        }
    }
}
