//! Free TCP ports on loopback.

use std::net::TcpListener;
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::{SystemTime, UNIX_EPOCH};

/// A port for a child process to listen on: free right now and outside the
/// kernel's ephemeral range (see [`free_port_range`]).
///
/// A port the OS picked with `:0` and released would be in the ephemeral
/// range, where any outgoing connection may take it before the child binds
/// it; a port below that range can only be taken by another explicit bind.
pub fn free_port() -> u16 {
    free_port_range(1)
}

/// Ports `tally up` (with the mesh) takes in a row from `--base-port`: six
/// service ports, inbound, outbound and admin for each sidecar, the
/// gateway's two, then a metrics port per service. The CLI's plan tests
/// check this figure against the plan `tally up` builds.
pub const TALLY_UP_PORTS: u16 = 6 + 6 * 3 + 2 + 6;

/// Ports `tally up --redis` takes beyond [`TALLY_UP_PORTS`]: redis-server's, after
/// every other port.
pub const TALLY_UP_REDIS_PORTS: u16 = 1;

/// Ports each extra service instance (a replica or a canary) adds to
/// [`TALLY_UP_PORTS`]: its gRPC and metrics ports and its sidecar's three.
pub const TALLY_UP_PORTS_PER_EXTRA_INSTANCE: u16 = 5;

/// The first of `n` consecutive ports that are all free right now, for
/// launchers such as `tally up --base-port` that allocate ports in a row.
///
/// Ranges lie below the kernel's ephemeral range, so the ports the OS hands
/// to clients and to `:0` listeners (other tests, sidecars) never land in
/// them; calls in one process get disjoint ranges.
pub fn free_port_range(n: u16) -> u16 {
    static NEXT: AtomicU32 = AtomicU32::new(0);
    let lo: u32 = 10_000;
    let hi = ephemeral_start().max(lo + 2_000);
    let span = hi - lo;
    // A different starting point per process, so concurrent test binaries
    // rarely probe the same ranges.
    let seed = std::process::id().wrapping_mul(7_919)
        ^ SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map(|d| d.subsec_nanos())
            .unwrap_or(0);
    let n32 = u32::from(n);
    for _ in 0..400 {
        let step = NEXT.fetch_add(n32, Ordering::SeqCst);
        let base = lo + (seed.wrapping_add(step) % span);
        if base + n32 > hi {
            continue;
        }
        let base = u16::try_from(base).expect("below 65536");
        let all_free = (base..base + n).all(|p| TcpListener::bind(("127.0.0.1", p)).is_ok());
        if all_free {
            return base;
        }
    }
    panic!("no {n} consecutive free ports found on 127.0.0.1");
}

/// First port of the kernel's ephemeral range (Linux default 32768).
fn ephemeral_start() -> u32 {
    std::fs::read_to_string("/proc/sys/net/ipv4/ip_local_port_range")
        .ok()
        .and_then(|s| s.split_whitespace().next()?.parse().ok())
        .unwrap_or(32_768)
}
