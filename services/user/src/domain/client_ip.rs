//! Which address a call comes from, for the login throttle.
//!
//! The TCP peer is the only fact; a forwarded address is believed only when
//! the peer is a configured trusted proxy, and then only the rightmost
//! `x-forwarded-for` entry that is not itself a trusted proxy (entries left
//! of it were written by the caller and can be forged). This is the rule of
//! the gateway's `client_ip` and of Envoy's `xff_num_trusted_hops`.

use std::net::IpAddr;

/// The header a trusted proxy names the client in.
pub const FORWARDED_FOR: &str = "x-forwarded-for";

/// The caller's address: `peer`, or when `peer` is in `trusted`, the last
/// address in the `forwarded` header values that is not in `trusted`.
pub fn client_ip<'a>(
    forwarded: impl IntoIterator<Item = &'a str>,
    peer: IpAddr,
    trusted: &[IpAddr],
) -> IpAddr {
    if !trusted.contains(&peer) {
        return peer;
    }
    let hops: Vec<IpAddr> = forwarded
        .into_iter()
        .flat_map(|v| v.split(','))
        .filter_map(|s| s.trim().parse().ok())
        .collect();
    hops.into_iter()
        .rev()
        .find(|ip| !trusted.contains(ip))
        .unwrap_or(peer)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ip(s: &str) -> IpAddr {
        s.parse().unwrap()
    }

    #[test]
    fn forwarded_addresses_count_only_from_trusted_peers() {
        let lb = ip("10.0.0.1");
        let xff = ["6.6.6.6, 1.2.3.4"];
        assert_eq!(client_ip(xff, lb, &[lb]), ip("1.2.3.4"));
        // An untrusted peer cannot choose its address.
        assert_eq!(client_ip(xff, ip("9.9.9.9"), &[lb]), ip("9.9.9.9"));
        assert_eq!(client_ip(xff, lb, &[]), lb);
        // Trusted hops are skipped; garbage is ignored; none left means the peer.
        let chain = ["1.2.3.4", "10.0.0.2 , junk"];
        assert_eq!(client_ip(chain, lb, &[lb, ip("10.0.0.2")]), ip("1.2.3.4"));
        assert_eq!(client_ip(["junk"], lb, &[lb]), lb);
        assert_eq!(client_ip([], lb, &[lb]), lb);
    }
}
