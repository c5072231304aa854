//! The frontend side: a second frontend session on the same backend process, and the
//! descriptor layouts and queue sizes different guests and VMMs use.

use super::basic::{guest_pair, host_pair};
use super::util::exchange;
use super::{Check, Ctx, Fail, Scenario};
use crate::backend::BackendProcess;
use crate::guest::{Guest, GuestOptions, RxLayout, TxLayout};

pub(super) fn scenarios() -> Vec<Scenario> {
    vec![
        Scenario {
            name: "reconnect",
            about: "a frontend stops (GET_VRING_BASE) and disconnects; a fresh one works",
            run: reconnect,
        },
        Scenario {
            name: "reconnect-after-crash",
            about: "a frontend vanishes without stopping the rings; a fresh one works",
            run: reconnect_after_crash,
        },
        Scenario {
            name: "rx-split-layout",
            about: "receive buffers as a 44-byte header descriptor plus a 4 KiB data descriptor",
            run: rx_split,
        },
        Scenario {
            name: "tx-split-layout",
            about: "transmit chains as a header descriptor plus a data descriptor",
            run: tx_split,
        },
        Scenario {
            name: "tx-scattered-layout",
            about: "transmit chains as a header plus 4 KiB data descriptors (MSG_ZEROCOPY)",
            run: tx_scattered,
        },
        Scenario {
            name: "queue-size-1024",
            about: "1024-entry queues (the mmio device) instead of 128 (PCI)",
            run: queue_1024,
        },
    ]
}

/// A connection each way with data on a running guest.
fn both_ways(ctx: &Ctx<'_>, backend: &BackendProcess, guest: &Guest, base: u32) -> Check {
    let n = ctx.settings.data_bytes;
    let (h, _, c) = host_pair(ctx, backend, guest, base)
        .map_err(|e| Fail(format!("host to guest: {}", e.0)))?;
    let a = exchange(&h, &c, n).map_err(|e| Fail(format!("host to guest: {}", e.0)))?;
    let (_l, h, c) = guest_pair(ctx, backend, guest, base + 1)
        .map_err(|e| Fail(format!("guest to host: {}", e.0)))?;
    let b = exchange(&h, &c, n).map_err(|e| Fail(format!("guest to host: {}", e.0)))?;
    Ok(format!("host to guest: {a}; guest to host: {b}"))
}

fn reconnect_with(ctx: &mut Ctx<'_>, crash: bool) -> Check {
    let backend = ctx.spawn()?;
    let first = ctx.guest(&backend)?;
    both_ways(ctx, &backend, &first, 1234).map_err(|e| Fail(format!("first session: {}", e.0)))?;
    if crash {
        first.crash();
    } else {
        first.stop()?;
    }
    let second = ctx
        .guest(&backend)
        .map_err(|e| Fail(format!("second frontend could not set up: {}", e.0)))?;
    let detail = both_ways(ctx, &backend, &second, 2234)
        .map_err(|e| Fail(format!("second session: {}", e.0)))?;
    Ok(format!("second session: {detail}"))
}

fn reconnect(ctx: &mut Ctx<'_>) -> Check {
    reconnect_with(ctx, false)
}

fn reconnect_after_crash(ctx: &mut Ctx<'_>) -> Check {
    reconnect_with(ctx, true)
}

fn with_options(ctx: &mut Ctx<'_>, options: GuestOptions) -> Check {
    let backend = ctx.spawn()?;
    let guest = ctx.guest_with(&backend, options)?;
    both_ways(ctx, &backend, &guest, 1234).map_err(|e| {
        let stuck = guest.tx_outstanding();
        if stuck == 0 {
            return e;
        }
        Fail(format!(
            "{}; {stuck} tx chains still with the device (dropped without being returned?)",
            e.0
        ))
    })
}

fn rx_split(ctx: &mut Ctx<'_>) -> Check {
    let options = GuestOptions {
        rx_layout: RxLayout::Split,
        ..ctx.settings.guest.clone()
    };
    with_options(ctx, options)
}

fn tx_split(ctx: &mut Ctx<'_>) -> Check {
    let options = GuestOptions {
        tx_layout: TxLayout::Split,
        ..ctx.settings.guest.clone()
    };
    with_options(ctx, options)
}

fn tx_scattered(ctx: &mut Ctx<'_>) -> Check {
    let options = GuestOptions {
        tx_layout: TxLayout::Scattered { piece: 4096 },
        ..ctx.settings.guest.clone()
    };
    with_options(ctx, options)
}

fn queue_1024(ctx: &mut Ctx<'_>) -> Check {
    let options = GuestOptions {
        queue_size: 1024,
        ..ctx.settings.guest.clone()
    };
    with_options(ctx, options)
}
