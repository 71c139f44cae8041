//! Free TCP ports on loopback.

use std::net::TcpListener;

/// A port that was free a moment ago (the OS picked it).
pub fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("cannot bind an ephemeral port on 127.0.0.1")
}

/// The first of `n` consecutive ports that are all free right now, for
/// launchers such as `tally up --base-port` that allocate ports in a row.
pub fn free_port_range(n: u16) -> u16 {
    for _ in 0..200 {
        let base = free_port();
        if u32::from(base) + u32::from(n) > 65_000 {
            continue;
        }
        let all_free = (base..base + n).all(|p| TcpListener::bind(("127.0.0.1", p)).is_ok());
        if all_free {
            return base;
        }
    }
    panic!("no {n} consecutive free ports found on 127.0.0.1");
}
