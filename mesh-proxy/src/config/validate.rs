//! The checks run on a parsed [`Config`] before the proxy starts: one function per section,
//! each error naming the file, the key and the fix. The `[gateway]` section checks itself
//! (`gateway::config`).

use super::{
    AdminConfig, BreakerConfig, BulkheadConfig, Config, ConfigError, FaultConfig, IdentityConfig,
    InboundConfig, LimitsConfig, OutboundConfig, OutlierConfig, RetryConfig, ServiceConfig,
};
use crate::grpc::Code;
use std::net::SocketAddr;

/// Builds the error for one key: `(key, problem, fix)`.
type Bad<'a> = &'a dyn Fn(String, String, &str) -> ConfigError;

/// Upper bound for connection and concurrency limits.
const MAX_LIMIT: usize = 1_000_000;

impl Config {
    /// Checks every section; the first problem found is the error.
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
        check_admin(&self.admin, &bad)?;
        if let Some(g) = &self.gateway {
            g.validate(file, &self.services)?;
        }
        if let Some(i) = &self.inbound {
            check_inbound(i, &bad)?;
        }
        if let Some(o) = &self.outbound {
            check_outbound(o, &bad)?;
        }
        if let Some(id) = &self.identity {
            check_identity(id, &bad)?;
        }
        check_limits(&self.limits, &bad)?;
        if let Some(r) = self.telemetry.trace_sample_ratio
            && !(0.0..=1.0).contains(&r)
        {
            return Err(bad(
                "telemetry.trace_sample_ratio".into(),
                format!("{r} is not a share"),
                "use a number from 0.0 to 1.0",
            ));
        }
        for (name, s) in &self.services {
            check_service(name, s, &bad)?;
        }
        Ok(())
    }
}

fn check_admin(a: &AdminConfig, bad: Bad<'_>) -> Result<(), ConfigError> {
    if let Some(path) = &a.token_file
        && path.as_os_str().is_empty()
    {
        return Err(bad(
            "admin.token_file".into(),
            "is empty".into(),
            "name the file holding the admin bearer token, or remove the key",
        ));
    }
    Ok(())
}

fn check_max_connections(n: usize, key: &str, bad: Bad<'_>) -> Result<(), ConfigError> {
    if n == 0 || n > MAX_LIMIT {
        return Err(bad(
            key.into(),
            format!("{n} is out of range"),
            "use a number from 1 to 1000000, or remove the key",
        ));
    }
    Ok(())
}

fn check_inbound(i: &InboundConfig, bad: Bad<'_>) -> Result<(), ConfigError> {
    check_max_connections(i.max_connections, "inbound.max_connections", bad)?;
    check_bulkhead(&i.bulkhead, "inbound.bulkhead", bad)?;
    check_faults(&i.faults, "inbound.faults", bad)?;
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
    Ok(())
}

fn check_outbound(o: &OutboundConfig, bad: Bad<'_>) -> Result<(), ConfigError> {
    check_max_connections(o.max_connections, "outbound.max_connections", bad)
}

fn check_identity(id: &IdentityConfig, bad: Bad<'_>) -> Result<(), ConfigError> {
    for (k, v) in [("namespace", &id.namespace), ("service", &id.service)] {
        if v.is_empty() || v.contains('/') {
            return Err(bad(
                format!("identity.{k}"),
                format!("`{v}` is empty or contains `/`"),
                "use a plain name such as `tally` or `user`",
            ));
        }
    }
    Ok(())
}

/// Bound on `limits.http2_max_connections_per_endpoint`: every connection costs a TLS session.
const MAX_CONNECTIONS_PER_ENDPOINT: usize = 64;

fn check_limits(l: &LimitsConfig, bad: Bad<'_>) -> Result<(), ConfigError> {
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
    if !(1..=MAX_CONNECTIONS_PER_ENDPOINT).contains(&l.http2_max_connections_per_endpoint)
        || l.http2_streams_per_connection == 0
    {
        return Err(bad(
            "limits.http2_max_connections_per_endpoint / limits.http2_streams_per_connection"
                .into(),
            format!(
                "{} / {}",
                l.http2_max_connections_per_endpoint, l.http2_streams_per_connection
            ),
            "use 1 to 64 connections (default 1) and a positive stream count (default 100)",
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
    Ok(())
}

/// One `[services.<name>]` table and its sub-tables.
fn check_service(name: &str, s: &ServiceConfig, bad: Bad<'_>) -> Result<(), ConfigError> {
    let key = format!("services.{name}");
    if name.is_empty() || name.contains(['/', ':', ' ']) {
        return Err(bad(
            key,
            "service names must be plain hostnames".into(),
            "use the name the app dials, e.g. `user`",
        ));
    }
    check_endpoints(&s.endpoints, &key, bad)?;
    if let Some(c) = &s.canary {
        check_canary(c, &s.endpoints, &format!("{key}.canary"), bad)?;
    }
    if let Err(e) = s.failure.validate() {
        return Err(bad(
            format!("{key}.failure.{}", e.key),
            e.problem,
            "see the failure classification defaults in mesh-proxy/README.md",
        ));
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
    check_retry(&s.retry, &format!("{key}.retry"), bad)?;
    check_breaker(&s.breaker, &format!("{key}.breaker"), bad)?;
    check_bulkhead(&s.bulkhead, &format!("{key}.bulkhead"), bad)?;
    check_outlier(&s.outlier, &format!("{key}.outlier"), bad)?;
    if s.load_balancer.decay_ms == 0 {
        return Err(bad(
            format!("{key}.load_balancer.decay_ms"),
            "is 0".into(),
            "use a positive number of milliseconds (default 10000)",
        ));
    }
    check_faults(&s.faults, &format!("{key}.faults"), bad)
}

/// A canary has its own endpoints (none shared with the stable set) and a weight in percent.
fn check_canary(
    c: &crate::split::CanaryConfig,
    stable: &[String],
    key: &str,
    bad: Bad<'_>,
) -> Result<(), ConfigError> {
    check_endpoints(&c.endpoints, key, bad)?;
    if let Some(shared) = c.endpoints.iter().find(|e| stable.contains(e)) {
        return Err(bad(
            format!("{key}.endpoints"),
            format!("`{shared}` is also a stable endpoint"),
            "list each instance in one set only",
        ));
    }
    if let Err(e) = crate::split::check_weight(c.weight.into()) {
        return Err(bad(format!("{key}.weight"), e.to_string(), "use 0 to 100"));
    }
    Ok(())
}

fn check_endpoints(endpoints: &[String], key: &str, bad: Bad<'_>) -> Result<(), ConfigError> {
    if endpoints.is_empty() {
        return Err(bad(
            format!("{key}.endpoints"),
            "lists no address".into(),
            "list the target's inbound sidecars, e.g. [\"127.0.0.1:4143\"]",
        ));
    }
    if let Some(dup) = crate::balance::duplicate_endpoint(endpoints) {
        return Err(bad(
            format!("{key}.endpoints"),
            format!("`{dup}` is listed twice"),
            "list each endpoint once",
        ));
    }
    for ep in endpoints {
        if ep.parse::<SocketAddr>().is_err() && !looks_like_host_port(ep) {
            return Err(bad(
                format!("{key}.endpoints"),
                format!("`{ep}` is not host:port"),
                "write endpoints as host:port",
            ));
        }
    }
    Ok(())
}

fn looks_like_host_port(s: &str) -> bool {
    match s.rsplit_once(':') {
        Some((host, port)) => !host.is_empty() && port.parse::<u16>().is_ok(),
        None => false,
    }
}

fn check_retry(r: &RetryConfig, key: &str, bad: Bad<'_>) -> Result<(), ConfigError> {
    if r.max_attempts == 0 {
        return Err(bad(
            format!("{key}.max_attempts"),
            "is 0".into(),
            "use 1 for no retries, or more",
        ));
    }
    for st in &r.retryable_statuses {
        if Code::from_name(st).is_none() {
            return Err(bad(
                format!("{key}.retryable_statuses"),
                format!("`{st}` is not a gRPC status name"),
                "use names such as UNAVAILABLE, RESOURCE_EXHAUSTED",
            ));
        }
    }
    if !(0.0..=10.0).contains(&r.budget_ratio) {
        return Err(bad(
            format!("{key}.budget_ratio"),
            format!("{} is out of range", r.budget_ratio),
            "use a fraction such as 0.2",
        ));
    }
    if r.budget_window_ms < 1000 {
        return Err(bad(
            format!("{key}.budget_window_ms"),
            "is under one second".into(),
            "use at least 1000",
        ));
    }
    if r.backoff_base_ms > r.backoff_max_ms {
        return Err(bad(
            format!("{key}.backoff_base_ms"),
            "is above backoff_max_ms".into(),
            "make backoff_base_ms <= backoff_max_ms",
        ));
    }
    Ok(())
}

fn check_breaker(b: &BreakerConfig, key: &str, bad: Bad<'_>) -> Result<(), ConfigError> {
    if b.consecutive_failures == 0 || b.window == 0 || b.open_ms == 0 {
        return Err(bad(
            key.into(),
            "consecutive_failures, window and open_ms must be positive".into(),
            "set positive values or remove the section for defaults",
        ));
    }
    if !(0.0..=1.0).contains(&b.failure_rate) || b.failure_rate == 0.0 {
        return Err(bad(
            format!("{key}.failure_rate"),
            format!("{} is not in (0, 1]", b.failure_rate),
            "use a fraction such as 0.5",
        ));
    }
    Ok(())
}

fn check_outlier(o: &OutlierConfig, key: &str, bad: Bad<'_>) -> Result<(), ConfigError> {
    if o.consecutive_5xx == 0 || o.base_ejection_time_ms == 0 || o.max_ejection_percent > 100 {
        return Err(bad(
            key.into(),
            "consecutive_5xx and base_ejection_time_ms must be positive, max_ejection_percent <= 100".into(),
            "use Envoy's defaults: 5, 30000, 10",
        ));
    }
    Ok(())
}

fn check_bulkhead(b: &BulkheadConfig, key: &str, bad: Bad<'_>) -> Result<(), ConfigError> {
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

    fn error(text: &str) -> String {
        let c = Config::parse("t.toml", text).unwrap();
        c.validate("t.toml").unwrap_err().to_string()
    }

    #[test]
    fn bad_status_names_key_and_fix() {
        let e = error(&format!(
            "{MINIMAL}[services.user.retry]\nretryable_statuses = [\"NOPE\"]\n"
        ));
        assert!(e.contains("services.user.retry.retryable_statuses"), "{e}");
        assert!(e.contains("fix:"), "{e}");
    }

    #[test]
    fn connections_per_endpoint_are_bounded() {
        for bad in [
            "http2_max_connections_per_endpoint = 0",
            "http2_max_connections_per_endpoint = 65",
            "http2_streams_per_connection = 0",
        ] {
            let e = error(&format!("[limits]\n{bad}\n{MINIMAL}"));
            assert!(
                e.contains("limits.http2_max_connections_per_endpoint"),
                "{e}"
            );
        }
        let ok = format!("[limits]\nhttp2_max_connections_per_endpoint = 4\n{MINIMAL}");
        let c = Config::parse("t.toml", &ok).unwrap();
        assert!(c.validate("t.toml").is_ok());
        assert_eq!(c.limits.http2_max_connections_per_endpoint, 4);
        assert_eq!(c.limits.http2_streams_per_connection, 100);
    }

    #[test]
    fn empty_endpoints_rejected() {
        let e = error(&MINIMAL.replace("[\"127.0.0.1:4143\"]", "[]"));
        assert!(e.contains("services.user.endpoints"), "{e}");
        let e = error(&MINIMAL.replace("127.0.0.1:4143", "no-port"));
        assert!(e.contains("is not host:port"), "{e}");
    }

    #[test]
    fn each_section_names_its_key() {
        let cases = [
            (
                "[outbound]\n",
                "[outbound]\nmax_connections = 0\n",
                "outbound.max_connections",
            ),
            (
                "[outbound]\n",
                "[limits]\nmax_header_list_size = 10\n[outbound]\n",
                "limits.max_header_list_size",
            ),
            (
                "[outbound]\n",
                "[identity]\nbundle = \"b\"\ncert = \"c\"\nkey = \"k\"\nnamespace = \"a/b\"\nservice = \"s\"\n[outbound]\n",
                "identity.namespace",
            ),
            (
                "[admin]\n",
                "[admin]\ntoken_file = \"\"\n",
                "admin.token_file",
            ),
        ];
        for (from, to, key) in cases {
            let e = error(&MINIMAL.replacen(from, to, 1));
            assert!(e.contains(key), "{key}: {e}");
        }
        for (table, body, key) in [
            ("breaker", "open_ms = 0", "services.user.breaker"),
            (
                "breaker",
                "failure_rate = 1.5",
                "services.user.breaker.failure_rate",
            ),
            (
                "outlier",
                "max_ejection_percent = 101",
                "services.user.outlier",
            ),
            ("bulkhead", "max_concurrent = 0", "services.user.bulkhead"),
            (
                "faults",
                "abort_percent = 101.0",
                "services.user.faults.abort_percent",
            ),
            (
                "load_balancer",
                "decay_ms = 0",
                "services.user.load_balancer.decay_ms",
            ),
            (
                "retry",
                "backoff_base_ms = 10\nbackoff_max_ms = 1",
                "services.user.retry.backoff_base_ms",
            ),
        ] {
            let e = error(&format!("{MINIMAL}[services.user.{table}]\n{body}\n"));
            assert!(e.contains(key), "{key}: {e}");
        }
    }

    #[test]
    fn a_config_without_listeners_is_refused() {
        let e = error("[admin]\nlisten = \"127.0.0.1:9901\"\n");
        assert!(e.contains("no listener"), "{e}");
    }

    #[test]
    fn host_port_shapes() {
        assert!(looks_like_host_port("user.tally.svc:4143"));
        assert!(!looks_like_host_port(":4143"));
        assert!(!looks_like_host_port("user"));
        assert!(!looks_like_host_port("user:http"));
    }
}
