//! Quick manual check against vhost-device-vsock.
use std::io::{Read, Write};
use std::time::Duration;
use tether_vhost_harness::{Backend, Guest, GuestOptions};

fn main() -> anyhow::Result<()> {
    let b = Backend::vhost_device_vsock()?.spawn()?;
    let g = Guest::start(b.socket_path(), GuestOptions::default())?;
    println!("cid {} negotiated {:?}", g.cid(), g.negotiated());
    g.listen(1234);
    let (mut host, port) =
        tether_vhost_harness::hybrid::connect(b.uds_path(), 1234, Duration::from_secs(2))?;
    println!("OK port {port}");
    let c = g.accept(Duration::from_secs(2)).expect("accept");
    host.write_all(b"hello guest")?;
    let mut buf = [0u8; 11];
    c.read_exact(&mut buf)?;
    println!("guest got {:?}", std::str::from_utf8(&buf));
    c.write_all(b"hello host")?;
    let mut buf = [0u8; 10];
    host.set_read_timeout(Some(Duration::from_secs(2)))?;
    host.read_exact(&mut buf)?;
    println!("host got {:?}", std::str::from_utf8(&buf));
    println!("stats {:?}", g.stats());
    println!("stderr: {}", b.stderr());
    Ok(())
}
