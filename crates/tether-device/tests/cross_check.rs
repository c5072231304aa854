//! The same TX chains parsed by tether's `virtq::read_packet` and by the rust-vmm
//! virtio-vsock crate's `VsockPacket`, which accepts only header and data in one
//! descriptor or in exactly two: where it can parse a chain, both must agree on every
//! header field and every payload byte.

mod support;

use support::{Driver, TxLayout};
use tether_vsock::{Header, Op, SocketType};
use vhost_user_backend::VringT;
use virtio_queue::QueueT;
use virtio_vsock::packet::VsockPacket;
use vm_memory::GuestAddressSpace;

fn header(len: u32) -> Header {
    Header {
        src_cid: support::GUEST_CID,
        dst_cid: 2,
        src_port: 5000,
        dst_port: 1234,
        len,
        type_: SocketType::Stream.to_u16(),
        op: Op::Rw.to_u16(),
        flags: 0,
        buf_alloc: 65536,
        fwd_cnt: 77,
    }
}

#[test]
fn tether_and_virtio_vsock_read_the_same_packets() {
    let payload: Vec<u8> = (0..3000u32).map(|i| (i * 7 % 251) as u8).collect();
    for layout in [TxLayout::Single, TxLayout::HeaderThenPayload] {
        let mut d = Driver::new();
        d.send(&header(payload.len() as u32), &payload, layout);
        let mem = d.mem.memory();
        let chain =
            d.tx.vring
                .get_mut()
                .get_queue_mut()
                .pop_descriptor_chain(&*mem)
                .expect("the posted chain");

        let (ours, data) =
            tether_device::virtq::read_packet(&*mem, chain.clone(), 64 * 1024).expect("tether");
        let mut theirs_chain = chain;
        let theirs = VsockPacket::from_tx_virtq_chain(&*mem, &mut theirs_chain, 64 * 1024)
            .expect("virtio-vsock");

        assert_eq!(ours, header(payload.len() as u32), "{layout:?}");
        assert_eq!(
            (
                theirs.src_cid(),
                theirs.dst_cid(),
                theirs.src_port(),
                theirs.dst_port()
            ),
            (ours.src_cid, ours.dst_cid, ours.src_port, ours.dst_port),
            "{layout:?}"
        );
        assert_eq!(
            (theirs.len(), theirs.type_(), theirs.op(), theirs.flags()),
            (ours.len, ours.type_, ours.op, ours.flags),
            "{layout:?}"
        );
        assert_eq!(
            (theirs.buf_alloc(), theirs.fwd_cnt()),
            (ours.buf_alloc, ours.fwd_cnt),
            "{layout:?}"
        );
        let slice = theirs.data_slice().expect("a data slice");
        let mut theirs_data = vec![0u8; slice.len()];
        slice.copy_to(&mut theirs_data[..]);
        assert_eq!(&theirs_data[..], &data[..], "{layout:?}");
        assert_eq!(&data[..], &payload[..], "{layout:?}");
    }
}
