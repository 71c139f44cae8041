//! The browser edges the `--edge` benchmark compares, each in front of the same echo
//! server over plaintext HTTP/2: `tally-proxy` in gateway mode (gRPC-Web binary and text,
//! CORS, access-token checks against a JWKS file, rate limits set far above the load so
//! they are checked on every call but never refuse one), and Envoy with its `grpc_web`
//! and `cors` filters (bench/envoy/edge.yaml), optionally also checking the same tokens
//! (`jwt_authn`) and keeping a non-binding `local_ratelimit` bucket, like the gateway.

use super::envoy::{free_port, render};
use super::{Programs, Running, path_str, proxy_log_filter};
use crate::edge::web::ORIGIN;
use crate::error::BenchError;
use std::net::SocketAddr;
use std::process::Stdio;

const EDGE_TEMPLATE: &str = include_str!("../../envoy/edge.yaml");

/// Token-bucket rates of the gateway's rate limits: on, far above any load the
/// benchmark makes (the buckets are still consulted on every call).
pub const NON_BINDING_RATE: f64 = 1e8;
/// Burst of those buckets.
pub const NON_BINDING_BURST: u32 = 100_000_000;

/// The gateway's config: gRPC-Web and CORS for `ORIGIN`, every `tally.poll.v1` call
/// authenticated with tokens verified against `jwks_file`, non-binding rate limits, and
/// the echo server as the only service (no `[identity]`: plaintext to it, like Envoy).
pub fn gateway_config(app: SocketAddr, jwks_file: &str) -> String {
    format!(
        r#"[admin]
listen = "127.0.0.1:0"

[gateway]
listen = "127.0.0.1:0"

[gateway.cors]
allowed_origins = ["{ORIGIN}"]

[gateway.auth]
jwks_file = {jwks_file:?}

[gateway.rate_limit]
per_client_per_second = {NON_BINDING_RATE:.1}
per_client_burst = {NON_BINDING_BURST}
global_per_second = {NON_BINDING_RATE:.1}
global_burst = {NON_BINDING_BURST}

[[gateway.routes]]
prefix = "tally.poll.v1"
service = "echo"

[services.echo]
endpoints = ["{app}"]
"#
    )
}

/// Envoy's `jwt_authn` (the same issuer, audience and JWKS as the gateway's, on the same
/// routes) and a non-binding `local_ratelimit`, for `--edge-envoy-auth`.
pub fn envoy_auth_filters(jwks_json: &str) -> String {
    use crate::edge::token::{AUDIENCE, ISSUER};
    format!(
        r#"          - name: envoy.filters.http.jwt_authn
            typed_config:
              "@type": type.googleapis.com/envoy.extensions.filters.http.jwt_authn.v3.JwtAuthentication
              providers:
                tally:
                  issuer: "{ISSUER}"
                  audiences: ["{AUDIENCE}"]
                  local_jwks:
                    inline_string: '{jwks_json}'
                  forward: true
              rules:
              - match: {{ prefix: "/tally.poll.v1." }}
                requires: {{ provider_name: tally }}
          - name: envoy.filters.http.local_ratelimit
            typed_config:
              "@type": type.googleapis.com/envoy.extensions.filters.http.local_ratelimit.v3.LocalRateLimit
              stat_prefix: edge_rate_limit
              token_bucket: {{ max_tokens: {NON_BINDING_BURST}, tokens_per_fill: {NON_BINDING_BURST}, fill_interval: 1s }}
              filter_enabled: {{ runtime_key: rl_enabled, default_value: {{ numerator: 100, denominator: HUNDRED }} }}
              filter_enforced: {{ runtime_key: rl_enforced, default_value: {{ numerator: 100, denominator: HUNDRED }} }}"#
    )
}

#[derive(serde::Deserialize)]
struct GatewayBound {
    admin: SocketAddr,
    gateway: Option<SocketAddr>,
}

impl Running {
    /// `tally-proxy` as the gateway in front of `upstream`; `jwks_json` is written to
    /// the work directory for `[gateway.auth] jwks_file`.
    pub(crate) async fn start_gateway(
        &mut self,
        upstream: SocketAddr,
        jwks_json: &str,
        programs: &Programs,
    ) -> Result<(), BenchError> {
        let jwks = self.dir.as_path().join("jwks.json");
        std::fs::write(&jwks, jwks_json)
            .map_err(|e| BenchError::io(format!("writing {}", jwks.display()), e))?;
        let path = self.dir.as_path().join("gateway.toml");
        let config = gateway_config(upstream, &path_str(&jwks));
        std::fs::write(&path, config)
            .map_err(|e| BenchError::io(format!("writing {}", path.display()), e))?;
        let mut cmd = Self::command(programs, &programs.tally_proxy);
        cmd.arg("--config")
            .arg(&path)
            .env("RUST_LOG", proxy_log_filter(programs.access_logs))
            .env("TOKIO_WORKER_THREADS", programs.proxy_threads.to_string())
            .stdout(Stdio::piped());
        self.spawn("tally-gateway", cmd)?;
        let line = self.start_line("tally-gateway").await?;
        let bound: GatewayBound =
            serde_json::from_str(line.trim()).map_err(|e| BenchError::NotReady {
                name: "tally-gateway".into(),
                detail: format!("unreadable start line {line:?}: {e}"),
            })?;
        self.wait_admin_ready("tally-gateway", bound.admin, "/ready")
            .await?;
        self.entry = bound.gateway.ok_or_else(|| BenchError::NotReady {
            name: "tally-gateway".into(),
            detail: "reported no gateway address".into(),
        })?;
        Ok(())
    }

    /// Envoy with `grpc_web` and `cors` in front of `upstream`; with `auth_jwks`, also
    /// `jwt_authn` against that JWKS and a non-binding `local_ratelimit`.
    pub(crate) async fn start_envoy_edge(
        &mut self,
        upstream: SocketAddr,
        programs: &Programs,
        auth_jwks: Option<&str>,
    ) -> Result<(), BenchError> {
        let admin = free_port()?;
        let listen = free_port()?;
        let config = render(
            EDGE_TEMPLATE,
            &[
                ("ADMIN_PORT", admin.to_string()),
                ("LISTEN_PORT", listen.to_string()),
                ("APP_PORT", upstream.port().to_string()),
                ("ORIGIN", ORIGIN.to_string()),
                ("ACCESS_LOG", self.envoy_access_log("envoy-edge", programs)),
                (
                    "AUTH_FILTERS",
                    auth_jwks.map(envoy_auth_filters).unwrap_or_default(),
                ),
            ],
        );
        let path = self.dir.as_path().join("envoy-edge.yaml");
        std::fs::write(&path, config)
            .map_err(|e| BenchError::io(format!("writing {}", path.display()), e))?;
        let mut cmd = Self::command(programs, &programs.envoy);
        cmd.arg("--config-path")
            .arg(&path)
            .arg("--concurrency")
            .arg(programs.proxy_threads.to_string())
            .arg("--disable-hot-restart")
            .arg("--log-level")
            .arg("warning")
            .stdout(Stdio::null());
        self.spawn("envoy-edge", cmd)?;
        self.wait_admin_ready(
            "envoy-edge",
            SocketAddr::from(([127, 0, 0, 1], admin)),
            "/ready",
        )
        .await?;
        self.entry = SocketAddr::from(([127, 0, 0, 1], listen));
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_edge_template_is_filled_completely() {
        let names = [
            "ADMIN_PORT",
            "LISTEN_PORT",
            "APP_PORT",
            "ORIGIN",
            "ACCESS_LOG",
            "AUTH_FILTERS",
        ];
        let values: Vec<(&str, String)> = names.iter().map(|n| (*n, "1".to_string())).collect();
        let out = render(EDGE_TEMPLATE, &values);
        assert!(!out.contains("{{"), "{out}");
        for filter in ["grpc_web", "filters.http.cors", "router"] {
            assert!(out.contains(filter), "{filter} missing");
        }
    }

    #[test]
    fn envoys_auth_filters_carry_the_jwks_and_go_before_the_router() {
        let jwks = r#"{"keys":[{"kty":"OKP","x":"abc"}]}"#;
        let values: Vec<(&str, String)> = vec![
            ("ADMIN_PORT", "1".into()),
            ("LISTEN_PORT", "2".into()),
            ("APP_PORT", "3".into()),
            ("ORIGIN", ORIGIN.into()),
            ("ACCESS_LOG", String::new()),
            ("AUTH_FILTERS", envoy_auth_filters(jwks)),
        ];
        let out = render(EDGE_TEMPLATE, &values);
        assert!(out.contains(&format!("inline_string: '{jwks}'")), "{out}");
        let jwt = out.find("jwt_authn").unwrap();
        let rl = out.find("local_ratelimit").unwrap();
        let router = out.find("filters.http.router").unwrap();
        assert!(jwt < router && rl < router, "{out}");
    }

    #[test]
    fn the_gateway_config_checks_tokens_and_limits_without_binding() {
        let c = gateway_config("127.0.0.1:9".parse().unwrap(), "/tmp/j.json");
        assert!(c.contains("jwks_file = \"/tmp/j.json\""), "{c}");
        assert!(c.contains("per_client_per_second = 100000000.0"), "{c}");
        assert!(c.contains("endpoints = [\"127.0.0.1:9\"]"), "{c}");
        assert!(!c.contains("[identity]"));
        assert!(
            !c.contains("access = \"public\""),
            "the route must be authenticated"
        );
    }
}
