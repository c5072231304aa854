//! The device out of file descriptors: waiting host clients are closed at once (they see
//! EOF instead of hanging, and the listener stops waking the worker), and the device
//! serves again as soon as descriptors free up.
//!
//! A test binary of its own, because it lowers the whole process's descriptor limit.

mod support;

use nix::sys::resource::{getrlimit, setrlimit, Resource};
use std::os::fd::AsRawFd;
use support::*;

#[test]
fn clients_beyond_the_descriptor_limit_are_closed_and_serving_resumes() {
    let mut d = Driver::new();
    let mut clients: Vec<_> = (0..5).map(|i| d.host_connect(60 + i, b"")).collect();

    // From here the next descriptor the process would get is past its limit.
    let (soft, hard) = getrlimit(Resource::RLIMIT_NOFILE).unwrap();
    let lowest_free = std::fs::File::open("/dev/null").unwrap().as_raw_fd() as u64;
    setrlimit(Resource::RLIMIT_NOFILE, lowest_free, hard).unwrap();
    let denied = std::fs::File::open("/dev/null").unwrap_err();
    assert_eq!(denied.raw_os_error(), Some(nix::libc::EMFILE));

    for (i, client) in clients.iter_mut().enumerate() {
        let mut got = Vec::new();
        d.pump_until(&format!("client {i} to be closed"), |_| {
            read_available(client, &mut got)
                .map(|r| r.is_none())
                .unwrap_or(true)
        });
        assert!(got.is_empty(), "client {i} read {got:?}");
    }
    assert_eq!(d.device.stats().refused_no_fds, 5);
    assert!(
        d.inbox.is_empty(),
        "no REQUEST may reach the guest for a closed client"
    );

    // Descriptors free up (the limit stays): the next client is served.
    drop(clients);
    let mut client = d.host_connect(70, b"");
    let _conn = d.guest_accept(70);
    let mut ok = Vec::new();
    d.pump_until("OK", |_| {
        read_available(&mut client, &mut ok).expect("client read");
        ok.ends_with(b"\n")
    });
    assert!(ok.starts_with(b"OK "), "{ok:?}");
    assert_eq!(d.device.stats().refused_no_fds, 5);
    setrlimit(Resource::RLIMIT_NOFILE, soft, hard).unwrap();
}
