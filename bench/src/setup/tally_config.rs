//! The Tally sidecar pair's config files, generated: the default pair the overhead
//! benchmark runs (one target service with one endpoint), and the shapes the scale
//! benchmark grows (many configured services, many endpoints of the target, a raised
//! connection bound for the idle-connection steps).

use crate::pki::TARGET_SERVICE;
use std::fmt::Write as _;
use std::net::{Ipv4Addr, SocketAddr};

/// Most services or endpoints a generated config may hold (the scale steps go to 1000).
pub const MAX_GENERATED: usize = 10_000;

/// What the generated pair holds besides the target service.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Shape {
    /// Services configured in the outbound sidecar, the target included; the others
    /// (`svc-1` ...) point at the same inbound sidecar and get no calls.
    pub services: usize,
    /// Endpoints of the target service: distinct loopback addresses (127.0.x.y) of the
    /// same inbound sidecar, which then listens on every address.
    pub endpoints: usize,
    /// The outbound listener's connection bound (`None`: the proxy's default).
    pub max_connections: Option<usize>,
}

impl Default for Shape {
    fn default() -> Self {
        Shape {
            services: 1,
            endpoints: 1,
            max_connections: None,
        }
    }
}

impl Shape {
    /// True when the inbound sidecar must accept on every loopback address.
    pub fn listens_on_all_addresses(&self) -> bool {
        self.endpoints > 1
    }
}

/// The inbound sidecar's config: mTLS listener in front of `app`. With several endpoints
/// it listens on `0.0.0.0` so that every 127.x address reaches it.
pub fn inbound(identity: &str, app: SocketAddr, shape: &Shape) -> String {
    let listen = if shape.listens_on_all_addresses() {
        "0.0.0.0:0"
    } else {
        "127.0.0.1:0"
    };
    format!(
        "[admin]\nlisten = \"127.0.0.1:0\"\n{identity}\n[inbound]\nlisten = \"{listen}\"\nlocal_app = \"{app}\"\n"
    )
}

/// The `i`-th (0-based) loopback address for an endpoint: 127.0.0.1, 127.0.0.2, ...,
/// skipping the .0 and .255 of each /24.
pub fn loopback(i: usize) -> Ipv4Addr {
    let n = i as u32;
    let (hi, lo) = (n / 254, n % 254 + 1);
    Ipv4Addr::new(127, ((hi >> 8) & 0xff) as u8, (hi & 0xff) as u8, lo as u8)
}

/// The outbound sidecar's config: the target service with `shape.endpoints` endpoints at
/// `inbound_port`, and `shape.services - 1` further services that point at the first one
/// and expect the target's SPIFFE id `target_id` (so that they could be called).
pub fn outbound(identity: &str, inbound_port: u16, target_id: &str, shape: &Shape) -> String {
    let mut s = format!(
        "[admin]\nlisten = \"127.0.0.1:0\"\n{identity}\n[outbound]\nlisten = \"127.0.0.1:0\"\n"
    );
    if let Some(max) = shape.max_connections {
        let _ = writeln!(s, "max_connections = {max}");
    }
    let endpoints: Vec<String> = (0..shape.endpoints.clamp(1, MAX_GENERATED))
        .map(|i| format!("\"{}:{inbound_port}\"", loopback(i)))
        .collect();
    let _ = write!(
        s,
        "\n[services.{TARGET_SERVICE}]\nendpoints = [{}]\n",
        endpoints.join(", ")
    );
    for i in 1..shape.services.clamp(1, MAX_GENERATED) {
        let _ = write!(
            s,
            "\n[services.svc-{i}]\nendpoints = [\"{}:{inbound_port}\"]\nidentity = \"{target_id}\"\n",
            loopback(0)
        );
    }
    s
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn default_shape_is_the_overhead_benchmarks_pair() {
        let o = outbound("[identity]\n", 4000, "spiffe://x", &Shape::default());
        assert!(
            o.contains("[services.echo]\nendpoints = [\"127.0.0.1:4000\"]\n"),
            "{o}"
        );
        assert_eq!(o.matches("[services.").count(), 1);
        assert!(!o.contains("max_connections"));
        let i = inbound(
            "[identity]\n",
            "127.0.0.1:9".parse().unwrap(),
            &Shape::default(),
        );
        assert!(
            i.contains("listen = \"127.0.0.1:0\"\nlocal_app = \"127.0.0.1:9\""),
            "{i}"
        );
    }

    #[test]
    fn loopback_addresses_are_distinct_and_skip_network_and_broadcast() {
        let all: std::collections::BTreeSet<_> = (0..1000).map(loopback).collect();
        assert_eq!(all.len(), 1000);
        assert_eq!(loopback(0), Ipv4Addr::new(127, 0, 0, 1));
        assert_eq!(loopback(253), Ipv4Addr::new(127, 0, 0, 254));
        assert_eq!(loopback(254), Ipv4Addr::new(127, 0, 1, 1));
        assert!(
            all.iter()
                .all(|a| a.octets()[3] != 0 && a.octets()[3] != 255)
        );
    }

    #[test]
    fn many_services_and_endpoints_are_generated_as_valid_toml() {
        let shape = Shape {
            services: 1000,
            endpoints: 300,
            max_connections: Some(20_000),
        };
        let o = outbound("", 4000, "spiffe://x", &shape);
        let v: toml_like::Doc = toml_like::parse(&o);
        assert_eq!(
            v.tables
                .iter()
                .filter(|t| t.starts_with("services."))
                .count(),
            1000
        );
        assert!(v.tables.contains(&"services.svc-999".to_string()));
        assert!(!v.tables.contains(&"services.svc-1000".to_string()));
        assert!(o.contains("max_connections = 20000"));
        let echo = o
            .split("[services.echo]")
            .nth(1)
            .unwrap()
            .lines()
            .nth(1)
            .unwrap();
        assert_eq!(echo.matches(":4000").count(), 300);
        assert!(inbound("", "127.0.0.1:9".parse().unwrap(), &shape).contains("0.0.0.0:0"));
    }

    /// Just enough TOML reading for the test: table headers, each seen once.
    mod toml_like {
        pub struct Doc {
            pub tables: Vec<String>,
        }
        pub fn parse(s: &str) -> Doc {
            let tables: Vec<String> = s
                .lines()
                .filter_map(|l| l.strip_prefix('[')?.strip_suffix(']').map(str::to_string))
                .collect();
            let unique: std::collections::BTreeSet<_> = tables.iter().collect();
            assert_eq!(unique.len(), tables.len(), "a table is declared twice");
            Doc { tables }
        }
    }
}
