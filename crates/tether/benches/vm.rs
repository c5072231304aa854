//! Figures of a real guest, vsock through `tether device`, vsock through vhost-device-vsock
//! and the serial mux side by side in one run: boot to the agent, first exec, `exec true` round trip, stdout throughput.
//!
//! `TETHER_GUEST_BIN=… cargo bench -p tether --bench vm` (scripts/test shows how to build the
//! static guest binary); `TETHER_BENCH_QUICK=1` for a short run.

use std::time::{Duration, Instant};
use tether_client::{Client, Command};
use tether_transport::Peer;
use tether_vm::{Vm, VmConfig, VsockDevice};

struct Row {
    name: &'static str,
    boot: Duration,
    first_exec: Duration,
    p50: Duration,
    p99: Duration,
    mib_s: f64,
}

/// How the guest is reached.
#[derive(Clone, Copy)]
enum Link {
    Vsock(VsockDevice),
    Serial,
}

async fn measure(name: &'static str, link: Link, runs: usize, mib: usize) -> Row {
    let guest =
        std::env::var_os("TETHER_GUEST_BIN").expect("TETHER_GUEST_BIN names a static tether");
    let config = VmConfig {
        guest_binary: Some(guest.into()),
        serial: matches!(link, Link::Serial),
        vsock: match link {
            Link::Vsock(device) => device,
            Link::Serial => VsockDevice::default(),
        },
        ..VmConfig::default()
    };
    let vm = Vm::start(&config).await.expect("boot");
    let client = Client::with_transport(vm.transport().clone(), Peer::new([vm.endpoint().clone()]));
    let t = Instant::now();
    let s = client
        .exec(&Command::new("true"))
        .await
        .unwrap()
        .output()
        .await
        .unwrap()
        .status;
    assert!(s.success());
    let first_exec = t.elapsed();
    let mut rtts = Vec::new();
    for _ in 0..runs {
        let t = Instant::now();
        client
            .exec(&Command::new("true"))
            .await
            .unwrap()
            .output()
            .await
            .unwrap();
        rtts.push(t.elapsed());
    }
    rtts.sort();
    let cmd = Command::shell(format!("head -c {} /dev/zero", mib << 20));
    let mut session = client.exec(&cmd).await.unwrap();
    let mut out = session.stdout.take().unwrap();
    let t = Instant::now();
    let mut n = 0usize;
    while let Some(chunk) = out.chunk().await.unwrap() {
        n += chunk.len();
    }
    let secs = t.elapsed().as_secs_f64();
    assert_eq!(n, mib << 20);
    assert!(session.wait().await.unwrap().success());
    let row = Row {
        name,
        boot: vm.boot_time(),
        first_exec,
        p50: rtts[rtts.len() / 2],
        p99: rtts[rtts.len() * 99 / 100],
        mib_s: n as f64 / (1 << 20) as f64 / secs,
    };
    vm.stop().await;
    row
}

fn main() {
    if std::env::args().any(|a| a == "--list") {
        println!("vm: bench");
        return;
    }
    let quick = std::env::var_os("TETHER_BENCH_QUICK").is_some();
    let (runs, mib) = if quick { (20, 64) } else { (100, 512) };
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    let rows = rt.block_on(async {
        vec![
            measure(
                "vsock (tether device)",
                Link::Vsock(VsockDevice::Tether),
                runs,
                mib,
            )
            .await,
            measure(
                "vsock (vhost-device-vsock)",
                Link::Vsock(VsockDevice::VhostDeviceVsock),
                runs,
                mib,
            )
            .await,
            measure("serial mux (virtio-serial)", Link::Serial, runs, mib).await,
        ]
    });
    println!("microVM under TCG: {runs} `exec true` round trips, {mib} MiB of stdout");
    println!(
        "{:<28} {:>10} {:>12} {:>12} {:>12} {:>12}",
        "device", "boot s", "first exec", "exec p50", "exec p99", "stdout MiB/s"
    );
    for r in rows {
        println!(
            "{:<28} {:>10.2} {:>9.1} ms {:>9.1} ms {:>9.1} ms {:>12.0}",
            r.name,
            r.boot.as_secs_f64(),
            r.first_exec.as_secs_f64() * 1e3,
            r.p50.as_secs_f64() * 1e3,
            r.p99.as_secs_f64() * 1e3,
            r.mib_s
        );
    }
}
