//! Readiness that reflects upstreams, for probes that should take a proxy out
//! of rotation when it cannot carry calls: admin `GET /ready/upstreams`.
//!
//! `/ready` says the proxy listens (what start ordering needs: a sidecar is
//! ready before the service it fronts starts). `/ready/upstreams` also
//! needs what calls through it need: a sidecar's local service, and for the
//! gateway at least one reachable endpoint of every service it routes to.
//! A sidecar's outbound targets are left out on purpose, so one service
//! being down does not take every caller's sidecar out of rotation.
//! Reachable means a TCP connection opens within [`CONNECT_TIMEOUT`].

use crate::config::Config;
use std::time::Duration;

/// How long one reachability check may take per endpoint.
pub const CONNECT_TIMEOUT: Duration = Duration::from_secs(1);

/// A group of endpoints of which at least one must be reachable.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Upstream {
    /// `local_app`, or the service name a gateway routes to.
    pub name: String,
    pub endpoints: Vec<String>,
}

/// The upstreams of a proxy with `cfg`.
pub fn upstreams(cfg: &Config) -> Vec<Upstream> {
    let mut out = Vec::new();
    if let Some(inbound) = &cfg.inbound {
        out.push(Upstream {
            name: "local_app".into(),
            endpoints: vec![inbound.local_app.to_string()],
        });
    }
    if cfg.gateway.is_some() {
        out.extend(cfg.services.iter().map(|(name, svc)| Upstream {
            name: name.clone(),
            endpoints: svc.endpoints.clone(),
        }));
    }
    out
}

async fn reachable(endpoint: &str) -> bool {
    matches!(
        tokio::time::timeout(CONNECT_TIMEOUT, tokio::net::TcpStream::connect(endpoint)).await,
        Ok(Ok(_))
    )
}

/// The names of the upstreams with no reachable endpoint.
pub async fn unreachable(upstreams: &[Upstream]) -> Vec<String> {
    let mut down = Vec::new();
    for u in upstreams {
        let mut any = false;
        for e in &u.endpoints {
            if reachable(e).await {
                any = true;
                break;
            }
        }
        if !any {
            down.push(u.name.clone());
        }
    }
    down
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn an_upstream_is_up_while_one_endpoint_accepts() {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind");
        let open = listener.local_addr().expect("addr").to_string();
        // Port 0 cannot be connected to: always refused.
        let closed = "127.0.0.1:0".to_string();
        let ups = vec![
            Upstream {
                name: "polling".into(),
                endpoints: vec![closed.clone(), open.clone()],
            },
            Upstream {
                name: "user".into(),
                endpoints: vec![closed],
            },
        ];
        assert_eq!(unreachable(&ups).await, ["user"]);
        assert!(unreachable(&ups[..1]).await.is_empty());
    }

    #[test]
    fn a_sidecar_needs_its_app_and_a_gateway_its_routes() {
        let sidecar = Config::parse(
            "sidecar.toml",
            "[admin]\nlisten = \"127.0.0.1:1\"\n[inbound]\nlisten = \"127.0.0.1:2\"\nlocal_app = \"127.0.0.1:3\"\n\
             [services.user]\nendpoints = [\"127.0.0.1:4\"]\n",
        )
        .expect("config");
        assert_eq!(
            upstreams(&sidecar),
            [Upstream {
                name: "local_app".into(),
                endpoints: vec!["127.0.0.1:3".into()]
            }],
            "outbound targets do not count"
        );
    }
}
