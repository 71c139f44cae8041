//! The proxy's one configuration file (TOML): the typed sections, each defaulted from
//! `defaults`. Reading the file and environment overrides are in [`load`], the checks that
//! make a bad file fail fast with the key and the fix in [`validate`]. Every section's
//! struct is defined here, in file order, except the resilience policy subsections a route
//! or listener carries (retry, breaker, bulkhead, outlier, load balancer, faults): those
//! are in [`policy`]. A new key is one field in one of the two files.

mod load;
mod policy;
mod validate;

pub use policy::{
    BreakerConfig, BulkheadConfig, FaultConfig, LoadBalancerConfig, OutlierConfig, RetryConfig,
};
pub use validate::check_faults;

use crate::defaults as d;
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::PathBuf;

/// A configuration problem, naming the file, the key and how to fix it.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    /// The file could not be read.
    #[error("config {file}: cannot read: {source}")]
    Read {
        /// Path of the config file.
        file: String,
        /// Why reading failed.
        source: std::io::Error,
    },
    /// The file could not be parsed as TOML or does not match the schema.
    #[error("config {file}: {message}")]
    Parse {
        /// Path of the config file.
        file: String,
        /// The parser's description, with the line and key.
        message: String,
    },
    /// A key has a value the proxy cannot run with.
    #[error("config {file}: key `{key}`: {problem}; fix: {fix}")]
    Invalid {
        /// Path of the config file (or the environment variable that overrode it).
        file: String,
        /// Dotted name of the offending key.
        key: String,
        /// What is wrong with the value.
        problem: String,
        /// What to write instead.
        fix: String,
    },
}

/// The whole proxy configuration, one section per TOML table.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Config {
    /// Admin API listener (metrics, health, faults).
    pub admin: AdminConfig,
    /// Listener for calls from peer sidecars to the local app; absent in gateway-only setups.
    #[serde(default)]
    pub inbound: Option<InboundConfig>,
    /// Listener for the local app's calls out to other services.
    #[serde(default)]
    pub outbound: Option<OutboundConfig>,
    /// Browser-facing gRPC-Web / gRPC listener in front of the outbound routes.
    #[serde(default)]
    pub gateway: Option<crate::gateway::config::GatewayConfig>,
    /// Absent: plaintext between sidecars (development only; logged loudly).
    #[serde(default)]
    pub identity: Option<IdentityConfig>,
    /// Connection and HTTP/2 bounds shared by every listener and client.
    #[serde(default)]
    pub limits: LimitsConfig,
    /// Target services this sidecar may call, by name (the `:authority` host the app uses).
    #[serde(default)]
    pub services: BTreeMap<String, ServiceConfig>,
    /// Trace export (`crate::trace`); off when `otlp_endpoint` is unset.
    #[serde(default)]
    pub telemetry: TelemetryConfig,
}

/// Trace export settings (`[telemetry]`).
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TelemetryConfig {
    /// OTLP/gRPC trace collector, e.g. `"http://127.0.0.1:4317"`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub otlp_endpoint: Option<String>,
    /// Share of new traces recorded (0.0..=1.0, parent-based); default 1.0.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub trace_sample_ratio: Option<f64>,
    /// `service.name` of this proxy's spans (default: `<service>-sidecar`, or `tally-gateway`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub service_name: Option<String>,
}

/// The `[admin]` section: where the admin API listens and how it is guarded.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AdminConfig {
    /// Address of the admin API (keep it on loopback).
    pub listen: SocketAddr,
    /// File holding the bearer token that admin mutations (`PUT /faults`) must carry; must be
    /// mode 0600. Absent: every mutation is refused.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub token_file: Option<PathBuf>,
    /// Extra `Host` values (`name:port`) the admin API answers besides loopback with its port
    /// and the literal address a connection was made to.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub allowed_hosts: Vec<String>,
    /// Append-only, hash-chained audit log (authorization denials and sampled allows, admin
    /// changes, certificate reloads); `tally audit verify` checks it. Absent: no audit log.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub audit_file: Option<PathBuf>,
}

/// The `[inbound]` section: the listener peers call and the local app behind it.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct InboundConfig {
    /// Address peer sidecars connect to (mTLS when `identity` is set).
    pub listen: SocketAddr,
    /// Plaintext HTTP/2 address of the local application.
    pub local_app: SocketAddr,
    /// Connections served at once; further ones are refused.
    #[serde(default = "max_connections")]
    pub max_connections: usize,
    /// Concurrency and queue bound for calls into the local app.
    #[serde(default)]
    pub bulkhead: BulkheadConfig,
    /// Faults injected into calls to the local app.
    #[serde(default)]
    pub faults: FaultConfig,
    /// Allow-lists of caller identities. When any entry exists, everything not allowed is denied.
    #[serde(default)]
    pub authz: Vec<AuthzRule>,
}

/// One allow-list entry of `[[inbound.authz]]`: which callers may call which methods.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
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

/// The `[outbound]` section: the listener the local app sends its calls to.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct OutboundConfig {
    /// Address the local app connects to (plaintext, loopback).
    pub listen: SocketAddr,
    /// Connections served at once; further ones are refused.
    #[serde(default = "max_connections")]
    pub max_connections: usize,
}

/// The `[identity]` section: this sidecar's mTLS certificate and SPIFFE name.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct IdentityConfig {
    /// PEM trust bundle (one or more mesh roots).
    pub bundle: PathBuf,
    /// PEM certificate chain presented to peers.
    pub cert: PathBuf,
    /// PEM private key of `cert` (mode 0600).
    pub key: PathBuf,
    /// Namespace part of the SPIFFE id, also the default namespace of targets.
    pub namespace: String,
    /// Service name part of this sidecar's SPIFFE id.
    pub service: String,
}

/// The `[limits]` section: bounds on headers, buffers, HTTP/2 and connection setup.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct LimitsConfig {
    /// Largest accepted header block in bytes; larger requests are refused.
    pub max_header_list_size: u32,
    /// Largest request body buffered for retries; larger calls are sent once.
    pub max_retry_buffer_bytes: usize,
    /// HTTP/2 streams a peer may open at once on one connection.
    pub http2_max_concurrent_streams: u32,
    /// Reset streams a peer may leave pending before it gets a GOAWAY (rapid-reset guard).
    pub http2_max_pending_accept_reset_streams: usize,
    /// HTTP/2 flow-control window per stream, in bytes.
    pub http2_initial_stream_window_size: u32,
    /// HTTP/2 flow-control window per connection, in bytes.
    pub http2_initial_connection_window_size: u32,
    /// Interval between HTTP/2 PINGs on an idle connection.
    pub http2_keepalive_interval_ms: u64,
    /// Time a PING may go unanswered before the connection is closed.
    pub http2_keepalive_timeout_ms: u64,
    /// Time allowed to open a TCP connection to an endpoint.
    pub connect_timeout_ms: u64,
    /// Time allowed for a TLS handshake on either side.
    pub tls_handshake_timeout_ms: u64,
    /// Time a mesh connection gets, after its handshake, to send the HTTP/2 preface.
    pub http2_preface_timeout_ms: u64,
    /// Most HTTP/2 connections the proxy opens to one endpoint.
    pub http2_max_connections_per_endpoint: usize,
    /// Streams in flight on every connection to an endpoint at which another is opened.
    pub http2_streams_per_connection: usize,
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
            http2_max_connections_per_endpoint: d::HTTP2_MAX_CONNECTIONS_PER_ENDPOINT,
            http2_streams_per_connection: d::HTTP2_STREAMS_PER_CONNECTION,
        }
    }
}

/// One `[services.<name>]` section: a target service and the resilience policy for calls to it.
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
    /// Retry policy and retry budget.
    #[serde(default)]
    pub retry: RetryConfig,
    /// Circuit breaker kept per endpoint.
    #[serde(default)]
    pub breaker: BreakerConfig,
    /// Concurrency and queue bound for calls to this service.
    #[serde(default)]
    pub bulkhead: BulkheadConfig,
    /// Ejection of endpoints that keep failing.
    #[serde(default)]
    pub outlier: OutlierConfig,
    /// Peak-EWMA settings of the balancer.
    #[serde(default)]
    pub load_balancer: LoadBalancerConfig,
    /// Faults injected into calls to this service.
    #[serde(default)]
    pub faults: FaultConfig,
    /// Which outcomes count as endpoint failures (breaker, outlier ejection, EWMA penalty).
    #[serde(default)]
    pub failure: crate::classify::FailureConfig,
    /// A second endpoint set (a new version) and its share of calls (`split`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub canary: Option<crate::split::CanaryConfig>,
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

impl AdminConfig {
    /// An admin listener on `listen` with every other key at its default.
    pub fn new(listen: SocketAddr) -> Self {
        Self {
            listen,
            token_file: None,
            allowed_hosts: Vec::new(),
            audit_file: None,
        }
    }
}

impl InboundConfig {
    /// An inbound listener in front of `local_app` with every other key at its default.
    pub fn new(listen: SocketAddr, local_app: SocketAddr) -> Self {
        Self {
            listen,
            local_app,
            max_connections: max_connections(),
            bulkhead: BulkheadConfig::default(),
            faults: FaultConfig::default(),
            authz: Vec::new(),
        }
    }
}

impl OutboundConfig {
    /// An outbound listener with every other key at its default.
    pub fn new(listen: SocketAddr) -> Self {
        Self {
            listen,
            max_connections: max_connections(),
        }
    }
}

impl ServiceConfig {
    /// A target at `endpoints` with every other key at its default.
    pub fn new(endpoints: Vec<String>) -> Self {
        Self {
            endpoints,
            identity: None,
            timeout_ms: route_timeout(),
            stream_idle_timeout_ms: stream_idle_timeout(),
            retry: RetryConfig::default(),
            breaker: BreakerConfig::default(),
            bulkhead: BulkheadConfig::default(),
            outlier: OutlierConfig::default(),
            load_balancer: LoadBalancerConfig::default(),
            faults: FaultConfig::default(),
            failure: crate::classify::FailureConfig::default(),
            canary: None,
        }
    }
}

impl Config {
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

#[cfg(test)]
mod tests {
    use super::*;

    /// The constructors give what a file that names only the required keys gives.
    #[test]
    fn constructors_match_the_serde_defaults() {
        let parsed = Config::parse(
            "t.toml",
            r#"
[admin]
listen = "127.0.0.1:9901"
[inbound]
listen = "127.0.0.1:4143"
local_app = "127.0.0.1:50051"
[outbound]
listen = "127.0.0.1:4140"
[services.user]
endpoints = ["127.0.0.1:4243"]
"#,
        )
        .unwrap();
        let addr = |s: &str| s.parse::<SocketAddr>().unwrap();
        let built = Config {
            admin: AdminConfig::new(addr("127.0.0.1:9901")),
            inbound: Some(InboundConfig::new(
                addr("127.0.0.1:4143"),
                addr("127.0.0.1:50051"),
            )),
            outbound: Some(OutboundConfig::new(addr("127.0.0.1:4140"))),
            gateway: None,
            identity: None,
            limits: LimitsConfig::default(),
            services: BTreeMap::from([(
                "user".to_string(),
                ServiceConfig::new(vec!["127.0.0.1:4243".into()]),
            )]),
            telemetry: TelemetryConfig::default(),
        };
        assert_eq!(
            toml::to_string(&built).unwrap(),
            toml::to_string(&parsed).unwrap()
        );
    }
}
