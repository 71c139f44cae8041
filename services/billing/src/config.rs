//! The billing binary's configuration: chassis sections, outbound targets
//! (`payment`, `user`), `[saga]` tunables, and the test-only crash point.
//! Every field has a default, so the binary runs with no file.

use crate::domain::ride_out::{self, Policy};
use serde::Deserialize;
use std::collections::BTreeMap;
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::path::PathBuf;
use std::time::Duration;
use tally_chassis::config::{
    Issue, OutboundSettings, ServerSettings, StorageSettings, TelemetrySettings, Validate,
};

/// Environment prefix, e.g. `TALLY_BILLING_SAGA__CHARGE_ATTEMPTS=2`.
pub const ENV_PREFIX: &str = "TALLY_BILLING_";

/// Default listen address.
pub const DEFAULT_LISTEN: SocketAddr = SocketAddr::new(IpAddr::V4(Ipv4Addr::LOCALHOST), 50055);
/// Default embedded store file.
pub const DEFAULT_STORE_PATH: &str = ".tally/billing/billing.redb";
/// Default `outbound.payment`.
pub const DEFAULT_PAYMENT_ADDR: &str = "http://127.0.0.1:50056";
/// Default `outbound.user`.
pub const DEFAULT_USER_ADDR: &str = "http://127.0.0.1:50051";
/// Default `saga.payment_attempts`.
pub const DEFAULT_PAYMENT_ATTEMPTS: u32 = 4;
/// Default `saga.retry_backoff_ms`.
pub const DEFAULT_RETRY_BACKOFF_MS: u64 = 200;
/// Default `saga.payment_timeout_ms`.
pub const DEFAULT_PAYMENT_TIMEOUT_MS: u64 = 5_000;
/// Default `saga.start_wait_ms`.
pub const DEFAULT_START_WAIT_MS: u64 = 5_000;
/// Default `saga.resume_interval_secs`.
pub const DEFAULT_RESUME_INTERVAL_SECS: u64 = 5;
/// Default `saga.step_deadline_secs`: how long a charge may keep failing
/// transiently before the saga compensates.
pub const DEFAULT_STEP_DEADLINE_SECS: u64 = ride_out::DEFAULT_STEP_DEADLINE.as_secs();
/// Default `saga.max_backoff_ms`.
pub const DEFAULT_MAX_BACKOFF_MS: u64 = ride_out::DEFAULT_MAX_BACKOFF.as_millis() as u64;
/// Default `saga.fast_fail_backoff_ms`.
pub const DEFAULT_FAST_FAIL_BACKOFF_MS: u64 =
    ride_out::DEFAULT_FAST_FAIL_BACKOFF.as_millis() as u64;

/// Outbound targets billing calls.
pub const REQUIRED_TARGETS: [&str; 2] = ["payment", "user"];

/// The billing binary's configuration file, section by section.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct BillingConfig {
    /// `[server]`: where gRPC is served and how it shuts down.
    #[serde(default = "default_server")]
    pub server: ServerSettings,
    /// `[storage]`: the embedded file or the Scylla cluster holding sagas and entitlements.
    #[serde(default = "default_storage")]
    pub storage: StorageSettings,
    /// `[telemetry]`: log format and filter, metrics address.
    #[serde(default)]
    pub telemetry: TelemetrySettings,
    /// `[outbound]`: addresses of the payment and user services.
    #[serde(default = "default_outbound")]
    pub outbound: OutboundSettings,
    /// `[saga]`: retry and timeout bounds of the subscription saga.
    #[serde(default)]
    pub saga: SagaSettings,
    /// TESTING ONLY. `TALLY_BILLING_CRASH_AFTER=<point>` aborts the process
    /// right after the saga persists that point (see
    /// [`crate::app::CRASH_POINTS`]), to test crash recovery.
    /// Unset in every real deployment.
    #[serde(default)]
    pub crash_after: Option<String>,
}

/// How the orchestrator runs sagas.
#[derive(Debug, Clone, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct SagaSettings {
    /// Tries of a charge whose failure leaves its fate unknown (INTERNAL,
    /// UNKNOWN, ...), and attempts of each refund round (the first included).
    #[serde(default = "default_attempts")]
    pub payment_attempts: u32,
    /// First backoff between tries; doubles each time.
    #[serde(default = "default_backoff")]
    pub retry_backoff_ms: u64,
    /// Longest pause between two tries of a parked charge (and the cap on
    /// a callee's `grpc-retry-pushback-ms`).
    #[serde(default = "default_max_backoff")]
    pub max_backoff_ms: u64,
    /// Shortest pause after a mesh fast-fail (`breaker-open`,
    /// `no-endpoints`); keep it above the mesh breaker's open window.
    #[serde(default = "default_fast_fail_backoff")]
    pub fast_fail_backoff_ms: u64,
    /// How long a charge may keep failing transiently (UNAVAILABLE,
    /// DEADLINE_EXCEEDED, fast-fails) before the saga compensates.
    #[serde(default = "default_step_deadline")]
    pub step_deadline_secs: u64,
    /// Deadline of each payment call.
    #[serde(default = "default_call_timeout")]
    pub payment_timeout_ms: u64,
    /// How long StartSubscription waits for the saga before answering PENDING.
    #[serde(default = "default_start_wait")]
    pub start_wait_ms: u64,
    /// How often unfinished sagas are picked up again (after start-up).
    #[serde(default = "default_resume_interval")]
    pub resume_interval_secs: u64,
}

impl Default for SagaSettings {
    fn default() -> Self {
        Self {
            payment_attempts: default_attempts(),
            retry_backoff_ms: default_backoff(),
            max_backoff_ms: default_max_backoff(),
            fast_fail_backoff_ms: default_fast_fail_backoff(),
            step_deadline_secs: default_step_deadline(),
            payment_timeout_ms: default_call_timeout(),
            start_wait_ms: default_start_wait(),
            resume_interval_secs: default_resume_interval(),
        }
    }
}

fn default_attempts() -> u32 {
    DEFAULT_PAYMENT_ATTEMPTS
}
fn default_backoff() -> u64 {
    DEFAULT_RETRY_BACKOFF_MS
}
fn default_max_backoff() -> u64 {
    DEFAULT_MAX_BACKOFF_MS
}
fn default_fast_fail_backoff() -> u64 {
    DEFAULT_FAST_FAIL_BACKOFF_MS
}
fn default_step_deadline() -> u64 {
    DEFAULT_STEP_DEADLINE_SECS
}
fn default_call_timeout() -> u64 {
    DEFAULT_PAYMENT_TIMEOUT_MS
}
fn default_start_wait() -> u64 {
    DEFAULT_START_WAIT_MS
}
fn default_resume_interval() -> u64 {
    DEFAULT_RESUME_INTERVAL_SECS
}

fn default_server() -> ServerSettings {
    ServerSettings::on(DEFAULT_LISTEN)
}

fn default_storage() -> StorageSettings {
    StorageSettings::Embedded {
        path: PathBuf::from(DEFAULT_STORE_PATH),
    }
}

fn default_outbound() -> OutboundSettings {
    let mut m = BTreeMap::new();
    m.insert("payment".to_string(), DEFAULT_PAYMENT_ADDR.to_string());
    m.insert("user".to_string(), DEFAULT_USER_ADDR.to_string());
    OutboundSettings(m)
}

impl SagaSettings {
    /// The ride-out rules these settings describe.
    pub fn ride_out(&self) -> Policy {
        Policy {
            first_backoff: Duration::from_millis(self.retry_backoff_ms),
            max_backoff: Duration::from_millis(self.max_backoff_ms),
            fast_fail_backoff: Duration::from_millis(self.fast_fail_backoff_ms),
            step_deadline: Duration::from_secs(self.step_deadline_secs),
            doubtful_attempts: self.payment_attempts,
        }
    }
}

impl Validate for BillingConfig {
    fn validate(&self) -> Vec<Issue> {
        let mut out = self.storage.issues("storage");
        out.extend(self.outbound.issues(&REQUIRED_TARGETS));
        let s = &self.saga;
        if s.payment_attempts == 0 || s.payment_attempts > 20 {
            out.push(Issue::new(
                "saga.payment_attempts",
                format!("{} is outside 1..=20", s.payment_attempts),
                "use a small number such as 4",
            ));
        }
        if s.payment_timeout_ms == 0 {
            out.push(Issue::new(
                "saga.payment_timeout_ms",
                "is zero",
                "use a deadline such as 5000",
            ));
        }
        if s.step_deadline_secs == 0 {
            out.push(Issue::new(
                "saga.step_deadline_secs",
                "is zero",
                "use a deadline of minutes such as 300",
            ));
        }
        if s.max_backoff_ms < s.retry_backoff_ms {
            out.push(Issue::new(
                "saga.max_backoff_ms",
                format!(
                    "{} is below retry_backoff_ms ({})",
                    s.max_backoff_ms, s.retry_backoff_ms
                ),
                "make it at least retry_backoff_ms, e.g. 20000",
            ));
        }
        if s.resume_interval_secs == 0 {
            out.push(Issue::new(
                "saga.resume_interval_secs",
                "is zero",
                "use a period such as 5",
            ));
        }
        if let Some(point) = &self.crash_after
            && !crate::app::CRASH_POINTS.contains(&point.as_str())
        {
            out.push(Issue::new(
                "crash_after",
                format!("`{point}` is not a crash point"),
                format!(
                    "unset it, or use one of: {}",
                    crate::app::CRASH_POINTS.join(", ")
                ),
            ));
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tally_chassis::config::load_from;

    #[test]
    fn runs_with_no_file() {
        let cfg: BillingConfig = load_from(None, ENV_PREFIX, &[]).expect("defaults");
        assert_eq!(cfg.server.listen_addr, DEFAULT_LISTEN);
        assert!(cfg.outbound.address("payment").is_some());
        assert_eq!(cfg.crash_after, None);
    }

    #[test]
    fn ride_out_defaults_are_minutes_and_outlast_the_breaker() {
        let cfg: BillingConfig = load_from(None, ENV_PREFIX, &[]).expect("defaults");
        let policy = cfg.saga.ride_out();
        assert_eq!(policy, Policy::default());
        assert!(policy.step_deadline >= Duration::from_secs(60));
        assert!(policy.fast_fail_backoff > Duration::from_secs(5));
        let vars = vec![(
            "TALLY_BILLING_SAGA__STEP_DEADLINE_SECS".to_string(),
            "0".to_string(),
        )];
        let err = load_from::<BillingConfig>(None, ENV_PREFIX, &vars).expect_err("zero");
        assert!(err.to_string().contains("step_deadline_secs"), "{err}");
    }

    #[test]
    fn crash_point_comes_from_env_and_is_checked() {
        let vars = vec![(
            "TALLY_BILLING_CRASH_AFTER".to_string(),
            "charge_payment".to_string(),
        )];
        let cfg: BillingConfig = load_from(None, ENV_PREFIX, &vars).expect("env");
        assert_eq!(cfg.crash_after.as_deref(), Some("charge_payment"));
        let bad = vec![("TALLY_BILLING_CRASH_AFTER".to_string(), "nope".to_string())];
        let err = load_from::<BillingConfig>(None, ENV_PREFIX, &bad).expect_err("unknown");
        assert!(err.to_string().contains("crash_after"), "{err}");
    }
}
