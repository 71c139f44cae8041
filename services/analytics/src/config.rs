//! The analytics binary's configuration: the chassis sections, `[events]`
//! (which transport carries polling's events) and `[analytics]`, from an
//! optional TOML file and `TALLY_ANALYTICS_*` environment overrides. With no
//! file at all it runs locally next to user (:50051) and polling (:50052).

use serde::Deserialize;
use std::path::{Path, PathBuf};
use std::time::Duration;
use tally_chassis::auth::AuthOptions;
use tally_chassis::config::{
    ConfigError, Issue, OutboundSettings, ServerSettings, StorageSettings, TelemetrySettings,
    Validate,
};
use tally_chassis::events::{EventBusSettings, RetryPolicy};

/// Environment variable prefix of every override.
pub const ENV_PREFIX: &str = "TALLY_ANALYTICS_";

/// Everything `tally-analytics` reads at start.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Config {
    #[serde(default = "default_server")]
    pub server: ServerSettings,
    #[serde(default = "default_storage")]
    pub storage: StorageSettings,
    #[serde(default)]
    pub telemetry: TelemetrySettings,
    /// `user` (token checks) and, with the embedded transport, `polling` (its event feed).
    #[serde(default = "default_outbound")]
    pub outbound: OutboundSettings,
    /// `transport = "embedded"` (default: polling's feed) or `"redis"` (+ `url`).
    #[serde(default)]
    pub events: EventBusSettings,
    #[serde(default)]
    pub analytics: AnalyticsSettings,
}

/// The service's own knobs.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct AnalyticsSettings {
    /// This replica's name; part of the consumer name so replicas never share
    /// a consumer group. Default: `$HOSTNAME` (or `local`) and the listen port.
    pub instance: Option<String>,
    /// Page size when a request says 0.
    pub default_page_size: u32,
    /// Largest page returned.
    pub max_page_size: u32,
    /// How often health probes the store, the user service and the lag.
    pub health_interval_secs: u64,
    /// Health reports NOT_SERVING while the consumer lags more than this
    /// many events (or cannot reach the source); 0 leaves lag out of health.
    pub health_max_lag: u64,
    /// Attempts per event before it goes to the dead-letter queue.
    pub retry_max_attempts: u32,
    pub retry_initial_backoff_ms: u64,
    pub retry_max_backoff_ms: u64,
    /// Least time between JWKS refetches caused by unknown key ids.
    pub jwks_refetch_interval_secs: u64,
    /// How long a verified API key is trusted without asking again.
    pub api_key_cache_ttl_secs: u64,
    /// Deadline of each call to the user service.
    pub user_call_timeout_ms: u64,
    /// Expected `iss` of access tokens.
    pub token_issuer: String,
    /// Expected `aud` of access tokens.
    pub token_audience: String,
    /// Fault injection for DLQ drills: events of polls with one of these
    /// questions fail as a projector bug would (they go to the DLQ). Empty in
    /// production.
    pub reject_questions: Vec<String>,
}

impl Default for AnalyticsSettings {
    fn default() -> Self {
        Self {
            instance: None,
            default_page_size: 50,
            max_page_size: 500,
            health_interval_secs: 5,
            health_max_lag: 100_000,
            retry_max_attempts: 5,
            retry_initial_backoff_ms: 200,
            retry_max_backoff_ms: 10_000,
            jwks_refetch_interval_secs: 5,
            api_key_cache_ttl_secs: 30,
            user_call_timeout_ms: 5_000,
            token_issuer: "tally-user".into(),
            token_audience: "tally".into(),
            reject_questions: Vec::new(),
        }
    }
}

impl AnalyticsSettings {
    /// The verifier options these settings describe.
    pub fn auth_options(&self) -> AuthOptions {
        AuthOptions {
            issuer: self.token_issuer.clone(),
            audience: self.token_audience.clone(),
            jwks_refetch_interval: Duration::from_secs(self.jwks_refetch_interval_secs),
            api_key_cache_ttl: Duration::from_secs(self.api_key_cache_ttl_secs),
            call_timeout: Duration::from_millis(self.user_call_timeout_ms),
            ..AuthOptions::default()
        }
    }

    /// The consumer's retry policy.
    pub fn retry_policy(&self) -> RetryPolicy {
        RetryPolicy {
            max_attempts: self.retry_max_attempts,
            initial_backoff: Duration::from_millis(self.retry_initial_backoff_ms),
            max_backoff: Duration::from_millis(self.retry_max_backoff_ms),
            ..RetryPolicy::default()
        }
    }
}

impl Config {
    /// This replica's instance name (see [`AnalyticsSettings::instance`]).
    pub fn instance(&self) -> String {
        self.analytics.instance.clone().unwrap_or_else(|| {
            let host = std::env::var("HOSTNAME")
                .ok()
                .filter(|h| !h.trim().is_empty())
                .unwrap_or_else(|| "local".to_string());
            format!("{host}-{}", self.server.listen_addr.port())
        })
    }

    /// The consumer's name: `analytics-<instance>`.
    pub fn consumer_name(&self) -> String {
        format!("analytics-{}", self.instance())
    }

    /// The event transport settings, with the Redis group member named after
    /// this instance (stable across restarts, so a restarted replica takes
    /// back its own pending entries at once).
    pub fn event_bus(&self) -> EventBusSettings {
        let mut bus = self.events.clone();
        if let EventBusSettings::Redis(redis) = &mut bus
            && redis.instance.is_none()
        {
            redis.instance = Some(self.instance());
        }
        bus
    }
}

fn default_server() -> ServerSettings {
    ServerSettings {
        listen_addr: std::net::SocketAddr::from(([127, 0, 0, 1], 50054)),
        drain_timeout_secs: 10,
    }
}

fn default_storage() -> StorageSettings {
    StorageSettings::Embedded {
        path: PathBuf::from(".tally/analytics/analytics.redb"),
    }
}

fn default_outbound() -> OutboundSettings {
    let mut map = std::collections::BTreeMap::new();
    map.insert("user".to_string(), "http://127.0.0.1:50051".to_string());
    map.insert("polling".to_string(), "http://127.0.0.1:50052".to_string());
    OutboundSettings(map)
}

impl Validate for Config {
    fn validate(&self) -> Vec<Issue> {
        let mut out = self.storage.issues("storage");
        match self.events {
            EventBusSettings::Embedded => out.extend(self.outbound.issues(&["user", "polling"])),
            _ => out.extend(self.outbound.issues(&["user"])),
        }
        out.extend(self.events.issues("events"));
        let a = &self.analytics;
        if let Some(instance) = &a.instance
            && (instance.is_empty()
                || !instance
                    .chars()
                    .all(|c| c.is_ascii_alphanumeric() || "-_.".contains(c)))
        {
            out.push(Issue::new(
                "analytics.instance",
                format!("`{instance}` is not a plain name"),
                "use letters, digits, `-`, `_` and `.`, e.g. `analytics-1`",
            ));
        }
        if a.max_page_size == 0 || a.max_page_size > 10_000 {
            out.push(Issue::new(
                "analytics.max_page_size",
                format!("is {}", a.max_page_size),
                "use 1 to 10000 (500 is the default)",
            ));
        }
        if a.default_page_size == 0 || a.default_page_size > a.max_page_size {
            out.push(Issue::new(
                "analytics.default_page_size",
                format!("is {}", a.default_page_size),
                "use 1 to analytics.max_page_size (50 is the default)",
            ));
        }
        if a.health_interval_secs == 0 {
            out.push(Issue::new(
                "analytics.health_interval_secs",
                "is 0",
                "use at least 1 second",
            ));
        }
        if a.retry_max_attempts == 0 {
            out.push(Issue::new(
                "analytics.retry_max_attempts",
                "is 0",
                "use at least 1 (5 is the default)",
            ));
        }
        if a.user_call_timeout_ms == 0 {
            out.push(Issue::new(
                "analytics.user_call_timeout_ms",
                "is 0",
                "use a positive deadline such as 5000",
            ));
        }
        out
    }
}

/// Loads the configuration from `file` (if any) and the environment.
pub fn load(file: Option<&Path>) -> Result<Config, ConfigError> {
    tally_chassis::config::load(file, ENV_PREFIX)
}

#[cfg(test)]
mod tests {
    use super::*;
    use tally_chassis::config::load_from;

    fn load_text(text: &str, vars: &[(&str, &str)]) -> Result<Config, ConfigError> {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("analytics.toml");
        std::fs::write(&path, text).expect("write");
        let vars: Vec<(String, String)> = vars
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        load_from(Some(&path), ENV_PREFIX, &vars)
    }

    #[test]
    fn runs_with_no_file() {
        let cfg: Config = load_from(None, ENV_PREFIX, &[]).expect("defaults");
        assert_eq!(cfg.server.listen_addr.to_string(), "127.0.0.1:50054");
        assert_eq!(
            cfg.outbound.address("polling"),
            Some("http://127.0.0.1:50052")
        );
        assert!(matches!(cfg.events, EventBusSettings::Embedded));
        assert!(cfg.consumer_name().starts_with("analytics-"));
        assert!(cfg.consumer_name().ends_with("-50054"));
    }

    #[test]
    fn redis_transport_names_the_group_member_after_the_instance() {
        let cfg = load_text(
            "[events]\ntransport = \"redis\"\nurl = \"redis://127.0.0.1:6379\"\n[analytics]\ninstance = \"a1\"\n",
            &[],
        )
        .expect("load");
        assert_eq!(cfg.consumer_name(), "analytics-a1");
        match cfg.event_bus() {
            EventBusSettings::Redis(r) => assert_eq!(r.instance.as_deref(), Some("a1")),
            other => panic!("unexpected {other:?}"),
        }
    }

    #[test]
    fn bad_values_name_the_key() {
        let err = load_text("[analytics]\nmax_page_size = 0\n", &[]).expect_err("bad");
        assert!(err.to_string().contains("analytics.max_page_size"), "{err}");
        let err = load_text("[analytics]\ninstance = \"a b\"\n", &[]).expect_err("bad");
        assert!(err.to_string().contains("analytics.instance"), "{err}");
        let err =
            load_text("[outbound]\nuser = \"http://127.0.0.1:1\"\n", &[]).expect_err("no polling");
        assert!(err.to_string().contains("outbound.polling"), "{err}");
        let err = load_text("[analytics]\nnope = 1\n", &[]).expect_err("unknown");
        assert!(err.to_string().contains("nope"), "{err}");
    }

    #[test]
    fn env_overrides_apply() {
        let cfg =
            load_text("", &[("TALLY_ANALYTICS_ANALYTICS__DEFAULT_PAGE_SIZE", "7")]).expect("load");
        assert_eq!(cfg.analytics.default_page_size, 7);
    }
}
