//! The proxy's one configuration file (TOML): typed, defaulted from `defaults`, and
//! validated at start so a bad file fails fast with the key and the fix.

use crate::defaults as d;
use crate::grpc::Code;
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};

/// A configuration problem, naming the file, the key and how to fix it.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("config {file}: cannot read: {source}")]
    Read {
        file: String,
        source: std::io::Error,
    },
    #[error("config {file}: {message}")]
    Parse { file: String, message: String },
    #[error("config {file}: key `{key}`: {problem}; fix: {fix}")]
    Invalid {
        file: String,
        key: String,
        problem: String,
        fix: String,
    },
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Config {
    pub admin: AdminConfig,
    #[serde(default)]
    pub inbound: Option<InboundConfig>,
    #[serde(default)]
    pub outbound: Option<OutboundConfig>,
    /// Browser-facing gRPC-Web / gRPC listener in front of the outbound routes.
    #[serde(default)]
    pub gateway: Option<crate::gateway::config::GatewayConfig>,
    /// Absent: plaintext between sidecars (development only; logged loudly).
    #[serde(default)]
    pub identity: Option<IdentityConfig>,
    #[serde(default)]
    pub limits: LimitsConfig,
    /// Target services this sidecar may call, by name (the `:authority` host the app uses).
    #[serde(default)]
    pub services: BTreeMap<String, ServiceConfig>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AdminConfig {
    pub listen: SocketAddr,
    /// File holding the bearer token that admin mutations (`PUT /faults`) must carry; must be
    /// mode 0600. Absent: every mutation is refused.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub token_file: Option<PathBuf>,
    /// Extra `Host` values (`name:port`) the admin API answers besides loopback with its port
    /// and the literal address a connection was made to.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub allowed_hosts: Vec<String>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct InboundConfig {
    pub listen: SocketAddr,
    /// Plaintext HTTP/2 address of the local application.
    pub local_app: SocketAddr,
    #[serde(default = "max_connections")]
    pub max_connections: usize,
    #[serde(default)]
    pub bulkhead: BulkheadConfig,
    #[serde(default)]
    pub faults: FaultConfig,
    /// Allow-lists of caller identities. When any entry exists, everything not allowed is denied.
    #[serde(default)]
    pub authz: Vec<AuthzRule>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AuthzRule {
    /// Fully qualified gRPC service, e.g. `tally.user.v1.UserService`, or `*`.
    pub service: String,
    /// Method name within the service; absent means every method.
    #[serde(default)]
    pub method: Option<String>,
    /// Allowed caller SPIFFE ids; `*` allows any authenticated caller.
    pub allow: Vec<String>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct OutboundConfig {
    pub listen: SocketAddr,
    #[serde(default = "max_connections")]
    pub max_connections: usize,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct IdentityConfig {
    /// PEM trust bundle (one or more mesh roots).
    pub bundle: PathBuf,
    pub cert: PathBuf,
    pub key: PathBuf,
    pub namespace: String,
    pub service: String,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct LimitsConfig {
    pub max_header_list_size: u32,
    pub max_retry_buffer_bytes: usize,
    pub http2_max_concurrent_streams: u32,
    pub http2_max_pending_accept_reset_streams: usize,
    pub http2_initial_stream_window_size: u32,
    pub http2_initial_connection_window_size: u32,
    pub http2_keepalive_interval_ms: u64,
    pub http2_keepalive_timeout_ms: u64,
    pub connect_timeout_ms: u64,
    pub tls_handshake_timeout_ms: u64,
    /// Time a mesh connection gets, after its handshake, to send the HTTP/2 preface.
    pub http2_preface_timeout_ms: u64,
}

impl Default for LimitsConfig {
    fn default() -> Self {
        Self {
            max_header_list_size: d::MAX_HEADER_LIST_SIZE,
            max_retry_buffer_bytes: d::MAX_RETRY_BUFFER_BYTES,
            http2_max_concurrent_streams: d::HTTP2_MAX_CONCURRENT_STREAMS,
            http2_max_pending_accept_reset_streams: d::HTTP2_MAX_PENDING_ACCEPT_RESET_STREAMS,
            http2_initial_stream_window_size: d::HTTP2_INITIAL_STREAM_WINDOW_SIZE,
            http2_initial_connection_window_size: d::HTTP2_INITIAL_CONNECTION_WINDOW_SIZE,
            http2_keepalive_interval_ms: d::HTTP2_KEEPALIVE_INTERVAL_MS,
            http2_keepalive_timeout_ms: d::HTTP2_KEEPALIVE_TIMEOUT_MS,
            connect_timeout_ms: d::CONNECT_TIMEOUT_MS,
            tls_handshake_timeout_ms: d::TLS_HANDSHAKE_TIMEOUT_MS,
            http2_preface_timeout_ms: ms(d::HTTP2_PREFACE_TIMEOUT),
        }
    }
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ServiceConfig {
    /// Addresses of the target's inbound sidecars.
    pub endpoints: Vec<String>,
    /// Expected SPIFFE id of the target; default `spiffe://tally.local/ns/<our namespace>/sa/<name>`.
    #[serde(default)]
    pub identity: Option<String>,
    /// Default deadline when the call has no `grpc-timeout`; 0 = none.
    #[serde(default = "route_timeout")]
    pub timeout_ms: u64,
    /// End a stream with no frame in either direction for this long; 0 = none.
    #[serde(default = "stream_idle_timeout")]
    pub stream_idle_timeout_ms: u64,
    #[serde(default)]
    pub retry: RetryConfig,
    #[serde(default)]
    pub breaker: BreakerConfig,
    #[serde(default)]
    pub bulkhead: BulkheadConfig,
    #[serde(default)]
    pub outlier: OutlierConfig,
    #[serde(default)]
    pub load_balancer: LoadBalancerConfig,
    #[serde(default)]
    pub faults: FaultConfig,
    /// Which outcomes count as endpoint failures (breaker, outlier ejection, EWMA penalty).
    #[serde(default)]
    pub failure: crate::classify::FailureConfig,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct LoadBalancerConfig {
    /// RTT assumed for an endpoint that has not answered yet.
    pub default_rtt_ms: u64,
    /// Decay time constant of the peak-EWMA estimate.
    pub decay_ms: u64,
    /// A failed call counts as at least this slow (0 = failures do not inflate the estimate).
    pub failure_penalty_ms: u64,
}

impl Default for LoadBalancerConfig {
    fn default() -> Self {
        Self {
            default_rtt_ms: d::EWMA_DEFAULT_RTT_MS,
            decay_ms: d::EWMA_DECAY_MS,
            failure_penalty_ms: d::EWMA_FAILURE_PENALTY_MS,
        }
    }
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct RetryConfig {
    /// Total attempts including the first; 1 disables retries.
    pub max_attempts: u32,
    /// gRPC status names (e.g. `UNAVAILABLE`) that may be retried.
    pub retryable_statuses: Vec<String>,
    /// Methods safe to repeat: `Method`, `pkg.Service/Method` or `*`.
    pub idempotent_methods: Vec<String>,
    pub backoff_base_ms: u64,
    pub backoff_max_ms: u64,
    pub budget_ratio: f64,
    pub budget_min_per_second: u32,
    pub budget_window_ms: u64,
}

impl Default for RetryConfig {
    fn default() -> Self {
        Self {
            max_attempts: d::RETRY_MAX_ATTEMPTS,
            retryable_statuses: d::RETRY_STATUSES.iter().map(|s| s.to_string()).collect(),
            idempotent_methods: Vec::new(),
            backoff_base_ms: d::RETRY_BACKOFF_BASE_MS,
            backoff_max_ms: d::RETRY_BACKOFF_MAX_MS,
            budget_ratio: d::RETRY_BUDGET_RATIO,
            budget_min_per_second: d::RETRY_BUDGET_MIN_PER_SECOND,
            budget_window_ms: d::RETRY_BUDGET_WINDOW_MS,
        }
    }
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct BreakerConfig {
    pub consecutive_failures: u32,
    pub failure_rate: f64,
    pub window: u32,
    pub min_calls: u32,
    pub open_ms: u64,
}

impl Default for BreakerConfig {
    fn default() -> Self {
        Self {
            consecutive_failures: d::BREAKER_CONSECUTIVE_FAILURES,
            failure_rate: d::BREAKER_FAILURE_RATE,
            window: d::BREAKER_WINDOW,
            min_calls: d::BREAKER_MIN_CALLS,
            open_ms: d::BREAKER_OPEN_MS,
        }
    }
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct BulkheadConfig {
    pub max_concurrent: usize,
    pub max_queue: usize,
}

impl Default for BulkheadConfig {
    fn default() -> Self {
        Self {
            max_concurrent: d::BULKHEAD_MAX_CONCURRENT,
            max_queue: d::BULKHEAD_MAX_QUEUE,
        }
    }
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct OutlierConfig {
    pub consecutive_5xx: u32,
    pub interval_ms: u64,
    pub base_ejection_time_ms: u64,
    pub max_ejection_percent: u32,
}

impl Default for OutlierConfig {
    fn default() -> Self {
        Self {
            consecutive_5xx: d::OUTLIER_CONSECUTIVE_5XX,
            interval_ms: d::OUTLIER_INTERVAL_MS,
            base_ejection_time_ms: d::OUTLIER_BASE_EJECTION_TIME_MS,
            max_ejection_percent: d::OUTLIER_MAX_EJECTION_PERCENT,
        }
    }
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct FaultConfig {
    pub delay_percent: f64,
    pub delay_ms: u64,
    pub abort_percent: f64,
    /// gRPC status code number used by aborts.
    pub abort_grpc_status: u16,
    /// Percentage of calls whose stream is reset.
    pub reset_percent: f64,
    /// Honour Envoy's `x-envoy-fault-*` request headers.
    pub allow_header_faults: bool,
    /// Cap on percentages requested by headers.
    pub header_max_percent: f64,
    /// Cap on any injected delay (config, admin API or header); longer delays are clamped.
    pub max_delay_ms: u64,
}

impl Default for FaultConfig {
    fn default() -> Self {
        Self {
            delay_percent: 0.0,
            delay_ms: 0,
            abort_percent: 0.0,
            abort_grpc_status: d::FAULT_ABORT_GRPC_STATUS,
            reset_percent: 0.0,
            allow_header_faults: false,
            header_max_percent: d::HEADER_FAULT_MAX_PERCENT,
            max_delay_ms: ms(d::FAULT_MAX_DELAY),
        }
    }
}

/// A default duration as the milliseconds the config file speaks.
fn ms(t: std::time::Duration) -> u64 {
    u64::try_from(t.as_millis()).unwrap_or(u64::MAX)
}

fn max_connections() -> usize {
    d::MAX_CONNECTIONS
}
fn route_timeout() -> u64 {
    d::ROUTE_TIMEOUT_MS
}
fn stream_idle_timeout() -> u64 {
    d::STREAM_IDLE_TIMEOUT_MS
}

impl Config {
    /// Reads, applies environment overrides, and validates.
    pub fn load(path: &Path) -> Result<Self, ConfigError> {
        let file = path.display().to_string();
        let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
            file: file.clone(),
            source,
        })?;
        let mut cfg = Self::parse(&file, &text)?;
        cfg.apply_env(&file)?;
        cfg.validate(&file)?;
        Ok(cfg)
    }

    pub fn parse(file: &str, text: &str) -> Result<Self, ConfigError> {
        toml::from_str(text).map_err(|e| ConfigError::Parse {
            file: file.to_string(),
            message: e.to_string(),
        })
    }

    /// `TALLY_PROXY_ADMIN_LISTEN`, `TALLY_PROXY_INBOUND_LISTEN`, `TALLY_PROXY_OUTBOUND_LISTEN`, `TALLY_PROXY_LOCAL_APP`,
    /// `TALLY_PROXY_GATEWAY_LISTEN`.
    fn apply_env(&mut self, file: &str) -> Result<(), ConfigError> {
        let addr = |var: &str, key: &str| -> Result<Option<SocketAddr>, ConfigError> {
            match std::env::var(var) {
                Ok(v) => v.parse().map(Some).map_err(|_| ConfigError::Invalid {
                    file: file.to_string(),
                    key: format!("{key} (env {var})"),
                    problem: format!("`{v}` is not a socket address"),
                    fix: "use host:port, e.g. 127.0.0.1:4140".into(),
                }),
                Err(_) => Ok(None),
            }
        };
        if let Some(a) = addr("TALLY_PROXY_ADMIN_LISTEN", "admin.listen")? {
            self.admin.listen = a;
        }
        if let Some(a) = addr("TALLY_PROXY_OUTBOUND_LISTEN", "outbound.listen")?
            && let Some(o) = self.outbound.as_mut()
        {
            o.listen = a;
        }
        if let Some(a) = addr("TALLY_PROXY_GATEWAY_LISTEN", "gateway.listen")?
            && let Some(g) = self.gateway.as_mut()
        {
            g.listen = a;
        }
        if let Some(a) = addr("TALLY_PROXY_INBOUND_LISTEN", "inbound.listen")?
            && let Some(i) = self.inbound.as_mut()
        {
            i.listen = a;
        }
        if let Some(a) = addr("TALLY_PROXY_LOCAL_APP", "inbound.local_app")?
            && let Some(i) = self.inbound.as_mut()
        {
            i.local_app = a;
        }
        Ok(())
    }

    pub fn validate(&self, file: &str) -> Result<(), ConfigError> {
        let bad = |key: String, problem: String, fix: &str| ConfigError::Invalid {
            file: file.to_string(),
            key,
            problem,
            fix: fix.to_string(),
        };
        if self.inbound.is_none() && self.outbound.is_none() && self.gateway.is_none() {
            return Err(bad(
                "inbound / outbound / gateway".into(),
                "no listener is configured".into(),
                "add an [inbound], [outbound] and/or [gateway] section",
            ));
        }
        if let Some(g) = &self.gateway {
            g.validate(file, &self.services)?;
        }
        if let Some(i) = &self.inbound {
            if i.max_connections == 0 || i.max_connections > MAX_LIMIT {
                return Err(bad(
                    "inbound.max_connections".into(),
                    format!("{} is out of range", i.max_connections),
                    "use a number from 1 to 1000000, or remove the key",
                ));
            }
            check_bulkhead(&i.bulkhead, "inbound.bulkhead", &bad)?;
            check_faults(&i.faults, "inbound.faults", &bad)?;
            for (n, rule) in i.authz.iter().enumerate() {
                let key = format!("inbound.authz[{n}]");
                if rule.service.is_empty() {
                    return Err(bad(
                        format!("{key}.service"),
                        "is empty".into(),
                        "name a gRPC service such as tally.user.v1.UserService, or `*`",
                    ));
                }
                for id in &rule.allow {
                    if id != "*" && !id.starts_with("spiffe://") {
                        return Err(bad(
                            format!("{key}.allow"),
                            format!("`{id}` is not a SPIFFE id"),
                            "use spiffe://tally.local/ns/<namespace>/sa/<service> or `*`",
                        ));
                    }
                }
            }
        }
        if let Some(o) = &self.outbound
            && (o.max_connections == 0 || o.max_connections > MAX_LIMIT)
        {
            return Err(bad(
                "outbound.max_connections".into(),
                format!("{} is out of range", o.max_connections),
                "use a number from 1 to 1000000, or remove the key",
            ));
        }
        if let Some(id) = &self.identity {
            for (k, v) in [("namespace", &id.namespace), ("service", &id.service)] {
                if v.is_empty() || v.contains('/') {
                    return Err(bad(
                        format!("identity.{k}"),
                        format!("`{v}` is empty or contains `/`"),
                        "use a plain name such as `tally` or `user`",
                    ));
                }
            }
        }
        let l = &self.limits;
        if l.max_header_list_size < 1024 {
            return Err(bad(
                "limits.max_header_list_size".into(),
                format!("{} is too small for gRPC", l.max_header_list_size),
                "use at least 1024 (default 16384)",
            ));
        }
        if l.http2_max_concurrent_streams == 0 {
            return Err(bad(
                "limits.http2_max_concurrent_streams".into(),
                "is 0".into(),
                "use a positive number",
            ));
        }
        if l.http2_initial_stream_window_size < 65_535
            || l.http2_initial_connection_window_size < 65_535
        {
            return Err(bad(
                "limits.http2_initial_*_window_size".into(),
                "below the HTTP/2 minimum of 65535".into(),
                "use at least 65535",
            ));
        }
        if l.connect_timeout_ms == 0
            || l.tls_handshake_timeout_ms == 0
            || l.http2_preface_timeout_ms == 0
        {
            return Err(bad(
                "limits.connect_timeout_ms / limits.tls_handshake_timeout_ms / limits.http2_preface_timeout_ms".into(),
                "is 0".into(),
                "use a positive number of milliseconds",
            ));
        }
        for (name, s) in &self.services {
            let key = format!("services.{name}");
            if name.is_empty() || name.contains(['/', ':', ' ']) {
                return Err(bad(
                    key,
                    "service names must be plain hostnames".into(),
                    "use the name the app dials, e.g. `user`",
                ));
            }
            if s.endpoints.is_empty() {
                return Err(bad(
                    format!("{key}.endpoints"),
                    "lists no address".into(),
                    "list the target's inbound sidecars, e.g. [\"127.0.0.1:4143\"]",
                ));
            }
            if let Some(dup) = crate::balance::duplicate_endpoint(&s.endpoints) {
                return Err(bad(
                    format!("{key}.endpoints"),
                    format!("`{dup}` is listed twice"),
                    "list each endpoint once",
                ));
            }
            if let Err(e) = s.failure.validate() {
                return Err(bad(
                    format!("{key}.failure.{}", e.key),
                    e.problem,
                    "see the failure classification defaults in mesh-proxy/README.md",
                ));
            }
            for ep in &s.endpoints {
                if ep.parse::<SocketAddr>().is_err() && !looks_like_host_port(ep) {
                    return Err(bad(
                        format!("{key}.endpoints"),
                        format!("`{ep}` is not host:port"),
                        "write endpoints as host:port",
                    ));
                }
            }
            if let Some(id) = &s.identity
                && !id.starts_with("spiffe://")
            {
                return Err(bad(
                    format!("{key}.identity"),
                    format!("`{id}` is not a SPIFFE id"),
                    "use spiffe://tally.local/ns/<namespace>/sa/<service>",
                ));
            }
            let r = &s.retry;
            if r.max_attempts == 0 {
                return Err(bad(
                    format!("{key}.retry.max_attempts"),
                    "is 0".into(),
                    "use 1 for no retries, or more",
                ));
            }
            for st in &r.retryable_statuses {
                if Code::from_name(st).is_none() {
                    return Err(bad(
                        format!("{key}.retry.retryable_statuses"),
                        format!("`{st}` is not a gRPC status name"),
                        "use names such as UNAVAILABLE, RESOURCE_EXHAUSTED",
                    ));
                }
            }
            if !(0.0..=10.0).contains(&r.budget_ratio) {
                return Err(bad(
                    format!("{key}.retry.budget_ratio"),
                    format!("{} is out of range", r.budget_ratio),
                    "use a fraction such as 0.2",
                ));
            }
            if r.budget_window_ms < 1000 {
                return Err(bad(
                    format!("{key}.retry.budget_window_ms"),
                    "is under one second".into(),
                    "use at least 1000",
                ));
            }
            if r.backoff_base_ms > r.backoff_max_ms {
                return Err(bad(
                    format!("{key}.retry.backoff_base_ms"),
                    "is above backoff_max_ms".into(),
                    "make backoff_base_ms <= backoff_max_ms",
                ));
            }
            let b = &s.breaker;
            if b.consecutive_failures == 0 || b.window == 0 || b.open_ms == 0 {
                return Err(bad(
                    format!("{key}.breaker"),
                    "consecutive_failures, window and open_ms must be positive".into(),
                    "set positive values or remove the section for defaults",
                ));
            }
            if !(0.0..=1.0).contains(&b.failure_rate) || b.failure_rate == 0.0 {
                return Err(bad(
                    format!("{key}.breaker.failure_rate"),
                    format!("{} is not in (0, 1]", b.failure_rate),
                    "use a fraction such as 0.5",
                ));
            }
            check_bulkhead(&s.bulkhead, &format!("{key}.bulkhead"), &bad)?;
            let o = &s.outlier;
            if o.consecutive_5xx == 0
                || o.base_ejection_time_ms == 0
                || o.max_ejection_percent > 100
            {
                return Err(bad(
                    format!("{key}.outlier"),
                    "consecutive_5xx and base_ejection_time_ms must be positive, max_ejection_percent <= 100".into(),
                    "use Envoy's defaults: 5, 30000, 10",
                ));
            }
            if s.load_balancer.decay_ms == 0 {
                return Err(bad(
                    format!("{key}.load_balancer.decay_ms"),
                    "is 0".into(),
                    "use a positive number of milliseconds (default 10000)",
                ));
            }
            check_faults(&s.faults, &format!("{key}.faults"), &bad)?;
        }
        Ok(())
    }

    /// The SPIFFE id expected of a target service's sidecars.
    pub fn target_identity(&self, name: &str) -> String {
        let configured = self.services.get(name).and_then(|s| s.identity.clone());
        configured.unwrap_or_else(|| {
            let ns = self
                .identity
                .as_ref()
                .map(|i| i.namespace.as_str())
                .unwrap_or("default");
            format!("spiffe://{}/ns/{ns}/sa/{name}", d::TRUST_DOMAIN)
        })
    }
}

/// Upper bound for connection and concurrency limits.
const MAX_LIMIT: usize = 1_000_000;

fn looks_like_host_port(s: &str) -> bool {
    match s.rsplit_once(':') {
        Some((host, port)) => !host.is_empty() && port.parse::<u16>().is_ok(),
        None => false,
    }
}

fn check_bulkhead(
    b: &BulkheadConfig,
    key: &str,
    bad: &dyn Fn(String, String, &str) -> ConfigError,
) -> Result<(), ConfigError> {
    if b.max_concurrent == 0 || b.max_concurrent > MAX_LIMIT || b.max_queue > MAX_LIMIT {
        return Err(bad(
            format!("{key}.max_concurrent / {key}.max_queue"),
            format!("{} / {} is out of range", b.max_concurrent, b.max_queue),
            "use max_concurrent from 1 and both at most 1000000",
        ));
    }
    Ok(())
}

/// Checks a fault setting; shared with the admin API.
pub fn check_faults(
    f: &FaultConfig,
    key: &str,
    bad: &dyn Fn(String, String, &str) -> ConfigError,
) -> Result<(), ConfigError> {
    for (k, v) in [
        ("delay_percent", f.delay_percent),
        ("abort_percent", f.abort_percent),
        ("reset_percent", f.reset_percent),
        ("header_max_percent", f.header_max_percent),
    ] {
        if !(0.0..=100.0).contains(&v) {
            return Err(bad(
                format!("{key}.{k}"),
                format!("{v} is not a percentage"),
                "use a number from 0 to 100",
            ));
        }
    }
    if f.abort_grpc_status == 0 || f.abort_grpc_status > 16 {
        return Err(bad(
            format!("{key}.abort_grpc_status"),
            format!("{} is not an error status code", f.abort_grpc_status),
            "use a gRPC code from 1 to 16, e.g. 14 (UNAVAILABLE)",
        ));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    const MINIMAL: &str = r#"
[admin]
listen = "127.0.0.1:9901"
[outbound]
listen = "127.0.0.1:4140"
[services.user]
endpoints = ["127.0.0.1:4143"]
"#;

    #[test]
    fn minimal_config_gets_defaults() {
        let c = Config::parse("t.toml", MINIMAL).unwrap();
        c.validate("t.toml").unwrap();
        let u = &c.services["user"];
        assert_eq!(u.retry.max_attempts, 1);
        assert_eq!(u.outlier.consecutive_5xx, 5);
        assert_eq!(u.outlier.base_ejection_time_ms, 30_000);
        assert_eq!(u.outlier.max_ejection_percent, 10);
        assert_eq!(u.retry.budget_ratio, 0.2);
        assert_eq!(
            c.target_identity("user"),
            "spiffe://tally.local/ns/default/sa/user"
        );
    }

    #[test]
    fn example_config_is_valid() {
        let c = Config::parse("proxy.toml", include_str!("../examples/proxy.toml")).unwrap();
        c.validate("proxy.toml").unwrap();
        assert_eq!(c.services["user"].retry.max_attempts, 3);
    }

    #[test]
    fn unknown_key_is_named() {
        let e = Config::parse("t.toml", &format!("{MINIMAL}\nbogus = 1\n")).unwrap_err();
        assert!(e.to_string().contains("bogus"), "{e}");
    }

    #[test]
    fn bad_status_names_key_and_fix() {
        let text = format!("{MINIMAL}[services.user.retry]\nretryable_statuses = [\"NOPE\"]\n");
        let c = Config::parse("t.toml", &text).unwrap();
        let e = c.validate("t.toml").unwrap_err().to_string();
        assert!(e.contains("services.user.retry.retryable_statuses"), "{e}");
        assert!(e.contains("fix:"), "{e}");
    }

    #[test]
    fn empty_endpoints_rejected() {
        let text = MINIMAL.replace("[\"127.0.0.1:4143\"]", "[]");
        let c = Config::parse("t.toml", &text).unwrap();
        let e = c.validate("t.toml").unwrap_err().to_string();
        assert!(e.contains("services.user.endpoints"), "{e}");
    }
}
