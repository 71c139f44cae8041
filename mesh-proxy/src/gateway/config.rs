//! The `[gateway]` section: the browser-facing listener, its routes from gRPC names to
//! `[services.<name>]`, edge authentication, rate limits and CORS. Validated with the rest
//! of the file so a bad gateway config fails at start naming the key and the fix.

use crate::config::{ConfigError, ServiceConfig};
use crate::defaults as d;
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

/// Largest gRPC-Web request body, counted after base64 decoding (gRPC's own default
/// receive limit). Enforced while the body arrives, before any of it goes upstream.
pub const DEFAULT_MAX_REQUEST_BYTES: usize = 4 * 1024 * 1024;
/// Time a client has to send a complete HTTP/1.1 request head, from its first byte.
pub const DEFAULT_HEADER_READ_TIMEOUT: Duration =
    Duration::from_millis(d::GATEWAY_HEADER_READ_TIMEOUT_MS);
/// A connection with no request in flight for this long is closed (HTTP/2: GOAWAY first).
/// Covers connections that never send a byte, and HTTP/2 connections that never finish a
/// request head.
pub const DEFAULT_IDLE_TIMEOUT: Duration = Duration::from_secs(60);
/// Time a gRPC-Web request body has to arrive in full (browsers send whole requests), on
/// every route, including routes whose `timeout_ms` is 0.
pub const DEFAULT_REQUEST_BODY_TIMEOUT: Duration = Duration::from_secs(30);
/// Plain gRPC request bodies (which may be client streams) end with an error when no frame
/// arrives for this long (Envoy's `stream_idle_timeout` default).
pub const DEFAULT_REQUEST_BODY_IDLE_TIMEOUT: Duration = Duration::from_secs(300);

/// The `[gateway]` section: the browser-facing listener, its bounds, edge auth, rate limits, CORS and routes.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct GatewayConfig {
    /// HTTP/1.1 and h2c (or TLS with `[gateway.tls]`).
    pub listen: SocketAddr,
    /// Connections served at once; further ones are refused.
    #[serde(default = "max_connections")]
    pub max_connections: usize,
    /// Largest gRPC-Web request body after base64 decoding, enforced as it streams in.
    /// (`max_text_request_bytes` is the older name.)
    #[serde(default = "max_request_bytes", alias = "max_text_request_bytes")]
    pub max_request_bytes: usize,
    /// Time allowed for an HTTP/1.1 request head, from its first byte.
    #[serde(default = "header_read_timeout")]
    pub header_read_timeout_ms: u64,
    /// Close a connection with no request in flight for this long.
    #[serde(default = "idle_timeout")]
    pub idle_timeout_ms: u64,
    /// Time allowed for a whole gRPC-Web request body.
    #[serde(default = "request_body_timeout")]
    pub request_body_timeout_ms: u64,
    /// Longest gap between two frames of a plain gRPC request body.
    #[serde(default = "request_body_idle_timeout")]
    pub request_body_idle_timeout_ms: u64,
    /// Absent: plaintext (keep the listener on loopback behind a TLS terminator).
    #[serde(default)]
    pub tls: Option<GatewayTls>,
    /// Which browser origins may call, and which headers they may send and read.
    #[serde(default)]
    pub cors: CorsConfig,
    /// Access-token and API-key checks at the edge; required when any route is `authenticated`.
    #[serde(default)]
    pub auth: Option<AuthConfig>,
    /// Per-client and global token buckets.
    #[serde(default)]
    pub rate_limit: RateLimitConfig,
    /// Longest prefix wins: `pkg`, `pkg.Service` or `pkg.Service/Method`.
    #[serde(default)]
    pub routes: Vec<RouteConfig>,
}

impl GatewayConfig {
    /// A gateway on `listen` with no routes, auth or CORS origins and every bound at its
    /// default: the same values a config file that names only `listen` gets.
    pub fn new(listen: SocketAddr) -> Self {
        Self {
            listen,
            max_connections: max_connections(),
            max_request_bytes: max_request_bytes(),
            header_read_timeout_ms: header_read_timeout(),
            idle_timeout_ms: idle_timeout(),
            request_body_timeout_ms: request_body_timeout(),
            request_body_idle_timeout_ms: request_body_idle_timeout(),
            tls: None,
            cors: CorsConfig::default(),
            auth: None,
            rate_limit: RateLimitConfig::default(),
            routes: Vec::new(),
        }
    }
}

/// The `[gateway.tls]` section: certificate the gateway serves browsers with.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct GatewayTls {
    /// PEM server certificate chain.
    pub cert: PathBuf,
    /// PEM private key (PKCS#8, PKCS#1 or SEC1).
    pub key: PathBuf,
}

/// The `[gateway.cors]` section: answers to browser preflights and CORS response headers.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct CorsConfig {
    /// Exact origins (`https://app.example`) or `*`. Empty: no CORS headers at all.
    pub allowed_origins: Vec<String>,
    /// Request headers a browser may send (`access-control-allow-headers`).
    pub allow_headers: Vec<String>,
    /// Response headers browser code may read (`access-control-expose-headers`).
    pub expose_headers: Vec<String>,
    /// How long a browser may cache a preflight answer, in seconds.
    pub max_age_s: u64,
}

impl Default for CorsConfig {
    fn default() -> Self {
        Self {
            allowed_origins: Vec::new(),
            allow_headers: d::GATEWAY_CORS_ALLOW_HEADERS
                .iter()
                .map(|s| s.to_string())
                .collect(),
            expose_headers: d::GATEWAY_CORS_EXPOSE_HEADERS
                .iter()
                .map(|s| s.to_string())
                .collect(),
            max_age_s: d::GATEWAY_CORS_MAX_AGE_S,
        }
    }
}

/// What a route asks of the caller before the call goes into the mesh.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Access {
    /// No credentials needed (sign-up, login, public keys).
    Public,
    /// A valid access token, or an `x-api-key` the user service confirms (then the service
    /// checks the key's scopes).
    Authenticated,
}

/// One `[[gateway.routes]]` entry: which gRPC names go to which service, and with what access.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RouteConfig {
    /// `tally.poll.v1`, `tally.poll.v1.PollService` or `tally.user.v1.UserService/Login`.
    pub prefix: String,
    /// A `[services.<name>]` table.
    pub service: String,
    /// Credentials the route requires; default `authenticated`.
    #[serde(default = "authenticated")]
    pub access: Access,
}

/// The `[gateway.auth]` section: how access tokens are verified and where the signing keys come from.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AuthConfig {
    /// Expected `iss`.
    #[serde(default = "issuer")]
    pub issuer: String,
    /// Expected `aud`.
    #[serde(default = "audience")]
    pub audience: String,
    /// Clock skew tolerated on `exp` / `nbf`.
    #[serde(default = "leeway")]
    pub leeway_s: u64,
    /// Fetch keys with `tally.user.v1.UserService/GetJwks`, and verify API keys with
    /// `VerifyApiKey`, through `[services.<this>]` (without it, API keys are refused).
    #[serde(default)]
    pub jwks_service: Option<String>,
    /// Or read a JWKS JSON document (RFC 7517) from this file.
    #[serde(default)]
    pub jwks_file: Option<PathBuf>,
    /// Refetch the key set this often (0 = only when a token names an unknown `kid`).
    #[serde(default = "jwks_refresh")]
    pub jwks_refresh_ms: u64,
    /// At most one fetch triggered by unknown `kid`s per this interval.
    #[serde(default = "jwks_min_refetch")]
    pub jwks_min_refetch_ms: u64,
}

/// The `[gateway.rate_limit]` section: token buckets per client and for the whole gateway.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct RateLimitConfig {
    /// Tokens per second for each client (its authenticated principal, else its IP); 0 = no
    /// per-client limit.
    pub per_client_per_second: f64,
    /// Tokens a client may spend at once above its steady rate.
    pub per_client_burst: u32,
    /// Tokens per second for the whole gateway; 0 = no global limit.
    pub global_per_second: f64,
    /// Tokens the gateway may spend at once above its steady rate.
    pub global_burst: u32,
    /// Most client buckets kept; idle (full) buckets are evicted first, and clients beyond
    /// this share one overflow bucket.
    pub max_clients: usize,
    /// Load balancers whose `x-forwarded-for` names the client: when the TCP peer is one of
    /// these, the client IP is the last address in that header not in this list. Only these
    /// peers may also hand in an `x-request-id` and a trace context (`traceparent`).
    pub trusted_proxies: Vec<std::net::IpAddr>,
}

impl Default for RateLimitConfig {
    fn default() -> Self {
        Self {
            per_client_per_second: d::GATEWAY_PER_CLIENT_PER_SECOND,
            per_client_burst: d::GATEWAY_PER_CLIENT_BURST,
            global_per_second: d::GATEWAY_GLOBAL_PER_SECOND,
            global_burst: d::GATEWAY_GLOBAL_BURST,
            max_clients: d::GATEWAY_MAX_CLIENTS,
            trusted_proxies: Vec::new(),
        }
    }
}

fn max_connections() -> usize {
    d::MAX_CONNECTIONS
}
fn max_request_bytes() -> usize {
    DEFAULT_MAX_REQUEST_BYTES
}
fn millis(d: Duration) -> u64 {
    u64::try_from(d.as_millis()).unwrap_or(u64::MAX)
}
fn header_read_timeout() -> u64 {
    millis(DEFAULT_HEADER_READ_TIMEOUT)
}
fn idle_timeout() -> u64 {
    millis(DEFAULT_IDLE_TIMEOUT)
}
fn request_body_timeout() -> u64 {
    millis(DEFAULT_REQUEST_BODY_TIMEOUT)
}
fn request_body_idle_timeout() -> u64 {
    millis(DEFAULT_REQUEST_BODY_IDLE_TIMEOUT)
}
fn authenticated() -> Access {
    Access::Authenticated
}
fn issuer() -> String {
    d::GATEWAY_JWT_ISSUER.into()
}
fn audience() -> String {
    d::GATEWAY_JWT_AUDIENCE.into()
}
fn leeway() -> u64 {
    d::GATEWAY_JWT_LEEWAY_S
}
fn jwks_refresh() -> u64 {
    d::GATEWAY_JWKS_REFRESH_MS
}
fn jwks_min_refetch() -> u64 {
    d::GATEWAY_JWKS_MIN_REFETCH_MS
}

/// The gateway's time and size bounds, typed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Bounds {
    pub(crate) max_request_bytes: usize,
    pub(crate) header_read_timeout: Duration,
    pub(crate) idle_timeout: Duration,
    pub(crate) request_body_timeout: Duration,
    pub(crate) request_body_idle_timeout: Duration,
}

impl Default for Bounds {
    fn default() -> Self {
        Self {
            max_request_bytes: DEFAULT_MAX_REQUEST_BYTES,
            header_read_timeout: DEFAULT_HEADER_READ_TIMEOUT,
            idle_timeout: DEFAULT_IDLE_TIMEOUT,
            request_body_timeout: DEFAULT_REQUEST_BODY_TIMEOUT,
            request_body_idle_timeout: DEFAULT_REQUEST_BODY_IDLE_TIMEOUT,
        }
    }
}

/// True when `prefix` is a dotted gRPC name, optionally followed by `/Method`.
fn is_route_prefix(prefix: &str) -> bool {
    let (name, method) = match prefix.split_once('/') {
        Some((n, m)) => (n, Some(m)),
        None => (prefix, None),
    };
    let ident = |s: &str| !s.is_empty() && s.chars().all(|c| c.is_ascii_alphanumeric() || c == '_');
    name.split('.').all(ident) && method.is_none_or(ident)
}

impl GatewayConfig {
    /// The configured bounds as typed values.
    pub(crate) fn bounds(&self) -> Bounds {
        Bounds {
            max_request_bytes: self.max_request_bytes,
            header_read_timeout: Duration::from_millis(self.header_read_timeout_ms),
            idle_timeout: Duration::from_millis(self.idle_timeout_ms),
            request_body_timeout: Duration::from_millis(self.request_body_timeout_ms),
            request_body_idle_timeout: Duration::from_millis(self.request_body_idle_timeout_ms),
        }
    }

    /// Checks the section against the `[services]` it routes to; errors name the key and the fix.
    pub fn validate(
        &self,
        file: &str,
        services: &BTreeMap<String, ServiceConfig>,
    ) -> Result<(), ConfigError> {
        let bad = |key: &str, problem: String, fix: &str| ConfigError::Invalid {
            file: file.to_string(),
            key: format!("gateway.{key}"),
            problem,
            fix: fix.to_string(),
        };
        if self.max_connections == 0 || self.max_connections > 1_000_000 {
            return Err(bad(
                "max_connections",
                format!("{} is out of range", self.max_connections),
                "use a number from 1 to 1000000, or remove the key",
            ));
        }
        if !(1024..=1024 * 1024 * 1024).contains(&self.max_request_bytes) {
            return Err(bad(
                "max_request_bytes",
                format!("{} is out of range", self.max_request_bytes),
                "use 1024 to 1073741824 bytes (default 4194304)",
            ));
        }
        for (key, ms, default) in [
            (
                "header_read_timeout_ms",
                self.header_read_timeout_ms,
                DEFAULT_HEADER_READ_TIMEOUT,
            ),
            (
                "idle_timeout_ms",
                self.idle_timeout_ms,
                DEFAULT_IDLE_TIMEOUT,
            ),
            (
                "request_body_timeout_ms",
                self.request_body_timeout_ms,
                DEFAULT_REQUEST_BODY_TIMEOUT,
            ),
            (
                "request_body_idle_timeout_ms",
                self.request_body_idle_timeout_ms,
                DEFAULT_REQUEST_BODY_IDLE_TIMEOUT,
            ),
        ] {
            if ms == 0 {
                return Err(bad(
                    key,
                    "is 0, which would leave the gateway without this bound".into(),
                    &format!(
                        "use a positive number of milliseconds (default {})",
                        millis(default)
                    ),
                ));
            }
        }
        if self.routes.is_empty() {
            return Err(bad(
                "routes",
                "no route is configured".into(),
                "add [[gateway.routes]] with prefix = \"tally.poll.v1\" and service = \"polling\"",
            ));
        }
        for (n, r) in self.routes.iter().enumerate() {
            if !is_route_prefix(&r.prefix) {
                return Err(bad(
                    &format!("routes[{n}].prefix"),
                    format!("`{}` is not a gRPC package, service or method", r.prefix),
                    "use e.g. `tally.poll.v1`, `tally.poll.v1.PollService` or `tally.user.v1.UserService/Login`",
                ));
            }
            if !services.contains_key(&r.service) {
                return Err(bad(
                    &format!("routes[{n}].service"),
                    format!("`{}` has no [services.{}] table", r.service, r.service),
                    "name a service configured under [services]",
                ));
            }
            if self.routes[..n].iter().any(|o| o.prefix == r.prefix) {
                return Err(bad(
                    &format!("routes[{n}].prefix"),
                    format!("`{}` is listed twice", r.prefix),
                    "keep one route per prefix",
                ));
            }
        }
        let needs_auth = self
            .routes
            .iter()
            .any(|r| r.access == Access::Authenticated);
        match &self.auth {
            None if needs_auth => {
                return Err(bad(
                    "auth",
                    "routes require authentication but no [gateway.auth] is configured".into(),
                    "add [gateway.auth] with jwks_service = \"user\" (or jwks_file), or mark the routes access = \"public\"",
                ));
            }
            None => {}
            Some(a) => {
                match (&a.jwks_service, &a.jwks_file) {
                    (Some(_), Some(_)) | (None, None) => {
                        return Err(bad(
                            "auth",
                            "exactly one of jwks_service and jwks_file must be set".into(),
                            "set jwks_service = \"user\" to fetch keys with GetJwks, or jwks_file = \"jwks.json\"",
                        ));
                    }
                    (Some(s), None) if !services.contains_key(s) => {
                        return Err(bad(
                            "auth.jwks_service",
                            format!("`{s}` has no [services.{s}] table"),
                            "name the user service's [services] table",
                        ));
                    }
                    _ => {}
                }
                if a.issuer.is_empty() || a.audience.is_empty() {
                    return Err(bad(
                        "auth.issuer / auth.audience",
                        "is empty".into(),
                        "use the user service's values (defaults: tally-user / tally)",
                    ));
                }
                if a.jwks_min_refetch_ms == 0 {
                    return Err(bad(
                        "auth.jwks_min_refetch_ms",
                        "is 0".into(),
                        "use a positive number of milliseconds (default 5000)",
                    ));
                }
            }
        }
        let rl = &self.rate_limit;
        for (key, rate, burst) in [
            ("per_client", rl.per_client_per_second, rl.per_client_burst),
            ("global", rl.global_per_second, rl.global_burst),
        ] {
            if !rate.is_finite() || !(0.0..=1e9).contains(&rate) {
                return Err(bad(
                    &format!("rate_limit.{key}_per_second"),
                    format!("{rate} is out of range"),
                    "use 0 (no limit) or a positive rate",
                ));
            }
            if rate > 0.0 && burst == 0 {
                return Err(bad(
                    &format!("rate_limit.{key}_burst"),
                    "is 0 while a rate is set".into(),
                    "use a burst of at least 1",
                ));
            }
        }
        if rl.max_clients == 0 || rl.max_clients > 10_000_000 {
            return Err(bad(
                "rate_limit.max_clients",
                format!("{} is out of range", rl.max_clients),
                "use a number from 1 to 10000000",
            ));
        }
        for o in &self.cors.allowed_origins {
            if o != "*" && !(o.starts_with("http://") || o.starts_with("https://")) {
                return Err(bad(
                    "cors.allowed_origins",
                    format!("`{o}` is not an origin"),
                    "use scheme://host[:port], e.g. https://app.tally.example, or `*`",
                ));
            }
        }
        for h in self
            .cors
            .allow_headers
            .iter()
            .chain(&self.cors.expose_headers)
        {
            if http::HeaderName::from_bytes(h.as_bytes()).is_err() {
                return Err(bad(
                    "cors",
                    format!("`{h}` is not a header name"),
                    "list lowercase header names such as x-grpc-web",
                ));
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests;
