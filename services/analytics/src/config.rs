//! The analytics binary's configuration: the chassis sections, `[events]`
//! (which transport carries polling's events) and `[analytics]`, from an
//! optional TOML file and `TALLY_ANALYTICS_*` environment overrides. With no
//! file at all it runs locally next to user (:50051) and polling (:50052).

use serde::Deserialize;
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::path::{Path, PathBuf};
use tally_chassis::config::{
    AuthSettings, ConfigError, Issue, OutboundSettings, RetrySettings, ServerSettings,
    StorageSettings, TelemetrySettings, Validate, interval_issue, range_issue,
};
use tally_chassis::events::EventBusSettings;

/// Environment variable prefix of every override.
pub const ENV_PREFIX: &str = "TALLY_ANALYTICS_";
/// Default listen address.
pub const DEFAULT_LISTEN: SocketAddr = SocketAddr::new(IpAddr::V4(Ipv4Addr::LOCALHOST), 50054);
/// Default embedded store file.
pub const DEFAULT_STORE_PATH: &str = ".tally/analytics/analytics.redb";
/// Default `outbound.user`.
pub const DEFAULT_USER_ADDR: &str = "http://127.0.0.1:50051";
/// Default `outbound.polling`.
pub const DEFAULT_POLLING_ADDR: &str = "http://127.0.0.1:50052";
/// Default `analytics.default_page_size`.
pub const DEFAULT_PAGE_SIZE: u32 = 50;
/// Default `analytics.max_page_size`.
pub const DEFAULT_MAX_PAGE_SIZE: u32 = 500;
/// Largest `max_page_size` accepted.
pub const MAX_PAGE_SIZE_LIMIT: u32 = 10_000;
/// Default `analytics.health_interval_secs`.
pub const DEFAULT_HEALTH_INTERVAL_SECS: u64 = 5;
/// Default `analytics.health_max_lag`.
pub const DEFAULT_HEALTH_MAX_LAG: u64 = 100_000;

/// Everything `tally-analytics` reads at start.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Config {
    /// `[server]`: where gRPC is served and how it shuts down.
    #[serde(default = "default_server")]
    pub server: ServerSettings,
    /// `[storage]`: the embedded file or the Scylla cluster holding the read model.
    #[serde(default = "default_storage")]
    pub storage: StorageSettings,
    /// `[telemetry]`: log format and filter, metrics address.
    #[serde(default)]
    pub telemetry: TelemetrySettings,
    /// `user` (token checks) and, with the embedded transport, `polling` (its event feed).
    #[serde(default = "default_outbound")]
    pub outbound: OutboundSettings,
    /// `transport = "embedded"` (default: polling's feed) or `"redis"` (+ `url`).
    #[serde(default)]
    pub events: EventBusSettings,
    /// How callers' tokens and API keys are verified (shared chassis section).
    #[serde(default)]
    pub auth: AuthSettings,
    /// How the event consumer retries before dead-lettering (shared chassis section).
    #[serde(default)]
    pub retry: RetrySettings,
    /// `[analytics]`: page sizes, health checks and the question filter.
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
    /// Fault injection for DLQ drills: events of polls with one of these
    /// questions fail as a projector bug would (they go to the DLQ). Empty in
    /// production.
    pub reject_questions: Vec<String>,
}

impl Default for AnalyticsSettings {
    fn default() -> Self {
        Self {
            instance: None,
            default_page_size: DEFAULT_PAGE_SIZE,
            max_page_size: DEFAULT_MAX_PAGE_SIZE,
            health_interval_secs: DEFAULT_HEALTH_INTERVAL_SECS,
            health_max_lag: DEFAULT_HEALTH_MAX_LAG,
            reject_questions: Vec::new(),
        }
    }
}

impl Config {
    /// This replica's instance name (see [`AnalyticsSettings::instance`]).
    pub fn instance(&self) -> String {
        tally_chassis::config::instance_name(
            self.analytics.instance.as_deref(),
            self.server.listen_addr.port(),
        )
    }

    /// The consumer's name: `analytics-<instance>`.
    pub fn consumer_name(&self) -> String {
        format!("analytics-{}", self.instance())
    }

    /// The event transport settings, with the Redis group member named after
    /// this instance (stable across restarts, so a restarted replica takes
    /// back its own pending entries at once).
    pub fn event_bus(&self) -> EventBusSettings {
        self.events.with_instance(&self.instance())
    }
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
    let mut map = std::collections::BTreeMap::new();
    map.insert("user".to_string(), DEFAULT_USER_ADDR.to_string());
    map.insert("polling".to_string(), DEFAULT_POLLING_ADDR.to_string());
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
        out.extend(self.auth.issues("auth"));
        out.extend(self.retry.issues("retry"));
        let a = &self.analytics;
        out.extend(tally_chassis::config::instance_issues(
            "analytics.instance",
            a.instance.as_deref(),
        ));
        out.extend(range_issue(
            "analytics.max_page_size",
            a.max_page_size,
            1u32,
            MAX_PAGE_SIZE_LIMIT,
            DEFAULT_MAX_PAGE_SIZE,
        ));
        out.extend(range_issue(
            "analytics.default_page_size",
            a.default_page_size,
            1u32,
            a.max_page_size,
            DEFAULT_PAGE_SIZE,
        ));
        out.extend(interval_issue(
            "analytics.health_interval_secs",
            a.health_interval_secs,
        ));
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
