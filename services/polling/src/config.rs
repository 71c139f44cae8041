//! The polling binary's configuration: the chassis sections plus `[polling]`,
//! from an optional TOML file and `TALLY_POLLING_*` environment overrides.
//! With no file at all it runs locally next to a user service on :50051.

use serde::Deserialize;
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::path::{Path, PathBuf};
use std::time::Duration;
use tally_chassis::config::{
    AuthSettings, ConfigError, Issue, OutboundSettings, ServerSettings, StorageSettings,
    TelemetrySettings, Validate, interval_issue, range_issue,
};

/// Environment variable prefix of every override.
pub const ENV_PREFIX: &str = "TALLY_POLLING_";
/// Default listen address.
pub const DEFAULT_LISTEN: SocketAddr = SocketAddr::new(IpAddr::V4(Ipv4Addr::LOCALHOST), 50052);
/// Default embedded store file.
pub const DEFAULT_STORE_PATH: &str = ".tally/polling/polling.redb";
/// Default `outbound.user`.
pub const DEFAULT_USER_ADDR: &str = "http://127.0.0.1:50051";
/// Default `polling.max_write_attempts`.
pub const DEFAULT_MAX_WRITE_ATTEMPTS: u32 = 32;
/// Largest `max_page_size` accepted.
pub const MAX_PAGE_SIZE_LIMIT: u32 = 10_000;
/// Largest `max_write_attempts` accepted.
pub const MAX_WRITE_ATTEMPTS_LIMIT: u32 = 1_000;
/// Default `polling.health_interval_secs`.
pub const DEFAULT_HEALTH_INTERVAL_SECS: u64 = 5;
/// Default `polling.default_max_open_polls` (0 = unlimited).
pub const DEFAULT_MAX_OPEN_POLLS: u32 = 0;
/// Default `cache.ttl_secs`: how long an entry lives without an invalidation.
pub const DEFAULT_CACHE_TTL: Duration = Duration::from_secs(60);
/// Longest `cache.ttl_secs` accepted (one day).
pub const MAX_CACHE_TTL_SECS: u64 = 86_400;
/// Default `cache.key_prefix`.
pub const DEFAULT_CACHE_KEY_PREFIX: &str = "tally:polling:cache:";
/// Longest `cache.key_prefix` accepted, in bytes.
pub const MAX_CACHE_KEY_PREFIX_LEN: usize = 64;
/// Default `cache.max_entry_bytes`: larger values are served but not cached.
pub const DEFAULT_CACHE_MAX_ENTRY_BYTES: u32 = 64 * 1024;
/// Largest `cache.max_entry_bytes` accepted.
pub const MAX_CACHE_ENTRY_BYTES_LIMIT: u32 = 4 * 1024 * 1024;
/// Default `cache.call_timeout_ms`: a slower cache call is given up and the store read.
pub const DEFAULT_CACHE_CALL_TIMEOUT: Duration = Duration::from_millis(100);
/// Longest `cache.call_timeout_ms` accepted.
pub const MAX_CACHE_CALL_TIMEOUT_MS: u64 = 5_000;
/// Default `cache.max_in_flight`: keys with a store read in flight at once.
pub const DEFAULT_CACHE_MAX_IN_FLIGHT: u32 = 10_000;
/// Largest `cache.max_in_flight` accepted.
pub const MAX_CACHE_MAX_IN_FLIGHT: u32 = 1_000_000;

/// Everything `tally-polling` reads at start.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Config {
    /// `[server]`: where gRPC is served and how it shuts down.
    #[serde(default = "default_server")]
    pub server: ServerSettings,
    /// `[storage]`: the embedded file or the Scylla cluster holding polls and votes.
    #[serde(default = "default_storage")]
    pub storage: StorageSettings,
    /// `[telemetry]`: log format and filter, metrics address.
    #[serde(default)]
    pub telemetry: TelemetrySettings,
    /// Must contain `user`: where the user service (or its sidecar) listens.
    /// Optional `billing`: with it, plan limits are consumed from billing's
    /// events (embedded transport: its event feed); without it, every owner
    /// gets `polling.default_max_open_polls`.
    #[serde(default = "default_outbound")]
    pub outbound: OutboundSettings,
    /// How callers' tokens and API keys are verified (shared chassis section).
    #[serde(default)]
    pub auth: AuthSettings,
    /// `[polling]`: page sizes, write retries, plan-limit default and health checks.
    #[serde(default)]
    pub polling: PollingSettings,
    /// Event transport: embedded (the feed serves the outbox; default) or
    /// `transport = "redis"` (+ `url`), which runs the outbox relay to Redis Streams.
    #[serde(default)]
    pub events: tally_chassis::events::EventBusSettings,
    /// `[cache]`: the read-through cache of GetPoll and GetResults (off by default).
    #[serde(default)]
    pub cache: CacheSettings,
}

/// Where cached reads live.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum CacheBackend {
    /// No cache: every read goes to the store.
    #[default]
    None,
    /// Redis at `cache.url`.
    Redis,
}

/// The `[cache]` section.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct CacheSettings {
    /// `none` (default) or `redis`.
    pub backend: CacheBackend,
    /// `redis://host:port[/db]`; required with `backend = "redis"`.
    pub url: Option<String>,
    /// Seconds an entry lives when no event invalidates it first.
    pub ttl_secs: u64,
    /// Prefix of every key the cache writes.
    pub key_prefix: String,
    /// Values larger than this are served but not cached.
    pub max_entry_bytes: u32,
    /// Deadline of one cache call; a slower call is given up and the store read.
    pub call_timeout_ms: u64,
    /// Keys with a store read in flight at once; beyond it reads are not coalesced.
    pub max_in_flight: u32,
    /// Also invalidate right after this process's own writes (the poll's
    /// events invalidate in any case).
    pub invalidate_on_write: bool,
}

impl Default for CacheSettings {
    fn default() -> Self {
        Self {
            backend: CacheBackend::None,
            url: None,
            ttl_secs: DEFAULT_CACHE_TTL.as_secs(),
            key_prefix: DEFAULT_CACHE_KEY_PREFIX.to_string(),
            max_entry_bytes: DEFAULT_CACHE_MAX_ENTRY_BYTES,
            call_timeout_ms: DEFAULT_CACHE_CALL_TIMEOUT.as_millis() as u64,
            max_in_flight: DEFAULT_CACHE_MAX_IN_FLIGHT,
            invalidate_on_write: true,
        }
    }
}

impl CacheSettings {
    /// `ttl_secs` as a duration.
    pub fn ttl(&self) -> Duration {
        Duration::from_secs(self.ttl_secs)
    }

    /// `call_timeout_ms` as a duration.
    pub fn call_timeout(&self) -> Duration {
        Duration::from_millis(self.call_timeout_ms)
    }

    fn issues(&self) -> Vec<Issue> {
        let mut out = Vec::new();
        if self.backend == CacheBackend::Redis {
            match self.url.as_deref() {
                None | Some("") => out.push(Issue::new(
                    "cache.url",
                    "is missing while cache.backend = \"redis\"",
                    "set url = \"redis://127.0.0.1:6379\" (or backend = \"none\")",
                )),
                Some(url) if !url.starts_with("redis://") && !url.starts_with("rediss://") => out
                    .push(Issue::new(
                        "cache.url",
                        format!("`{url}` is not a redis:// URL"),
                        "use redis://host:port[/db]",
                    )),
                Some(_) => {}
            }
        }
        out.extend(range_issue(
            "cache.ttl_secs",
            self.ttl_secs,
            1u64,
            MAX_CACHE_TTL_SECS,
            DEFAULT_CACHE_TTL.as_secs(),
        ));
        if self.key_prefix.is_empty() || self.key_prefix.len() > MAX_CACHE_KEY_PREFIX_LEN {
            out.push(Issue::new(
                "cache.key_prefix",
                format!("is {} bytes long", self.key_prefix.len()),
                format!(
                    "use 1 to {MAX_CACHE_KEY_PREFIX_LEN} bytes ({DEFAULT_CACHE_KEY_PREFIX:?} is the default)"
                ),
            ));
        }
        out.extend(range_issue(
            "cache.max_entry_bytes",
            self.max_entry_bytes,
            1u32,
            MAX_CACHE_ENTRY_BYTES_LIMIT,
            DEFAULT_CACHE_MAX_ENTRY_BYTES,
        ));
        out.extend(range_issue(
            "cache.call_timeout_ms",
            self.call_timeout_ms,
            1u64,
            MAX_CACHE_CALL_TIMEOUT_MS,
            DEFAULT_CACHE_CALL_TIMEOUT.as_millis() as u64,
        ));
        out.extend(range_issue(
            "cache.max_in_flight",
            self.max_in_flight,
            1u32,
            MAX_CACHE_MAX_IN_FLIGHT,
            DEFAULT_CACHE_MAX_IN_FLIGHT,
        ));
        out
    }
}

/// The service's own knobs.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct PollingSettings {
    /// Page size when a list request says 0.
    pub default_page_size: u32,
    /// Largest page a list returns.
    pub max_page_size: u32,
    /// Attempts of one vote or close that loses optimistic-concurrency races.
    pub max_write_attempts: u32,
    /// Queue writes to the same poll inside this process before they race.
    pub local_write_lock: bool,
    /// How often health probes the store and the user service.
    pub health_interval_secs: u64,
    /// Open polls per owner when billing has granted that owner no plan
    /// limits (or no billing is configured); 0 = unlimited.
    pub default_max_open_polls: u32,
}

impl Default for PollingSettings {
    fn default() -> Self {
        Self {
            default_page_size: crate::domain::paging::DEFAULT_PAGE_SIZE,
            max_page_size: crate::domain::paging::MAX_PAGE_SIZE,
            max_write_attempts: DEFAULT_MAX_WRITE_ATTEMPTS,
            local_write_lock: true,
            health_interval_secs: DEFAULT_HEALTH_INTERVAL_SECS,
            default_max_open_polls: DEFAULT_MAX_OPEN_POLLS,
        }
    }
}

impl Config {
    /// Whether plan limits are consumed from billing (`[outbound] billing` set).
    pub fn consumes_billing(&self) -> bool {
        self.outbound
            .address(crate::entitlements::PRODUCER)
            .is_some()
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
    OutboundSettings(map)
}

impl Validate for Config {
    fn validate(&self) -> Vec<Issue> {
        let mut out = self.storage.issues("storage");
        out.extend(self.outbound.issues(&["user"]));
        if self.consumes_billing() {
            // Optional, but when given it must be usable.
            out.extend(self.outbound.issues(&[crate::entitlements::PRODUCER]));
        }
        out.extend(self.events.issues("events"));
        out.extend(self.auth.issues("auth"));
        out.extend(self.cache.issues());
        let p = &self.polling;
        out.extend(range_issue(
            "polling.max_page_size",
            p.max_page_size,
            1u32,
            MAX_PAGE_SIZE_LIMIT,
            crate::domain::paging::MAX_PAGE_SIZE,
        ));
        out.extend(range_issue(
            "polling.default_page_size",
            p.default_page_size,
            1u32,
            p.max_page_size,
            crate::domain::paging::DEFAULT_PAGE_SIZE,
        ));
        out.extend(range_issue(
            "polling.max_write_attempts",
            p.max_write_attempts,
            1u32,
            MAX_WRITE_ATTEMPTS_LIMIT,
            DEFAULT_MAX_WRITE_ATTEMPTS,
        ));
        out.extend(interval_issue(
            "polling.health_interval_secs",
            p.health_interval_secs,
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
        let path = dir.path().join("polling.toml");
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
        assert_eq!(cfg.server.listen_addr.to_string(), "127.0.0.1:50052");
        assert_eq!(cfg.outbound.address("user"), Some("http://127.0.0.1:50051"));
        match &cfg.storage {
            StorageSettings::Embedded { path } => {
                assert_eq!(path, &PathBuf::from(".tally/polling/polling.redb"))
            }
            other => panic!("unexpected {other:?}"),
        }
        assert_eq!(cfg.polling.default_page_size, 50);
        assert_eq!(cfg.polling.max_page_size, 500);
        assert_eq!(cfg.polling.default_max_open_polls, 0, "unlimited");
        assert!(!cfg.consumes_billing());
    }

    #[test]
    fn billing_is_optional_and_enables_plan_limits() {
        let cfg = load_text(
            "[outbound]\nuser = \"http://127.0.0.1:7000\"\nbilling = \"http://127.0.0.1:7001\"\n[polling]\ndefault_max_open_polls = 3\n",
            &[],
        )
        .expect("load");
        assert!(cfg.consumes_billing());
        assert_eq!(cfg.polling.default_max_open_polls, 3);
    }

    #[test]
    fn file_and_env_overrides() {
        let cfg = load_text(
            "[server]\nlisten_addr = \"127.0.0.1:6000\"\n[storage]\nbackend = \"embedded\"\npath = \"/tmp/x.redb\"\n[outbound]\nuser = \"http://127.0.0.1:7000\"\n[polling]\nmax_write_attempts = 5\n",
            &[("TALLY_POLLING_POLLING__DEFAULT_PAGE_SIZE", "20")],
        )
        .expect("load");
        assert_eq!(cfg.server.listen_addr.port(), 6000);
        assert_eq!(cfg.polling.max_write_attempts, 5);
        assert_eq!(cfg.polling.default_page_size, 20);
        assert_eq!(cfg.outbound.address("user"), Some("http://127.0.0.1:7000"));
    }

    #[test]
    fn outbound_user_is_required() {
        let err = load_text("[outbound]\nanalytics = \"http://127.0.0.1:1\"\n", &[])
            .expect_err("missing user");
        let text = err.to_string();
        assert!(text.contains("outbound.user"), "{text}");
        assert!(text.contains("fix"), "{text}");
    }

    #[test]
    fn the_cache_is_off_by_default_and_checked_when_on() {
        let cfg: Config = load_from(None, ENV_PREFIX, &[]).expect("defaults");
        assert_eq!(cfg.cache.backend, CacheBackend::None);
        assert_eq!(cfg.cache.ttl(), DEFAULT_CACHE_TTL);
        let cfg = load_text(
            "[cache]\nbackend = \"redis\"\nurl = \"redis://127.0.0.1:6379\"\nttl_secs = 5\nkey_prefix = \"t:\"\n",
            &[],
        )
        .expect("load");
        assert_eq!(cfg.cache.backend, CacheBackend::Redis);
        assert_eq!(cfg.cache.ttl(), Duration::from_secs(5));
        assert_eq!(cfg.cache.key_prefix, "t:");
        let err = load_text("[cache]\nbackend = \"redis\"\n", &[]).expect_err("no url");
        assert!(err.to_string().contains("cache.url"), "{err}");
        let err = load_text("[cache]\nttl_secs = 0\n", &[]).expect_err("ttl");
        assert!(err.to_string().contains("cache.ttl_secs"), "{err}");
        let err = load_text("[cache]\nttl = 5\n", &[]).expect_err("unknown");
        assert!(err.to_string().contains("unknown field `ttl`"), "{err}");
        // The environment turns it on too (`tally up` passes it to polling).
        let cfg = load_text(
            "",
            &[
                ("TALLY_POLLING_CACHE__BACKEND", "redis"),
                ("TALLY_POLLING_CACHE__URL", "redis://127.0.0.1:6379"),
            ],
        )
        .expect("env");
        assert_eq!(cfg.cache.backend, CacheBackend::Redis);
        assert_eq!(cfg.cache.url.as_deref(), Some("redis://127.0.0.1:6379"));
        let err = load_text("[cache]\nbackend = \"memcached\"\n", &[]).expect_err("backend");
        assert!(err.to_string().contains("memcached"), "{err}");
    }

    #[test]
    fn bad_values_name_the_key() {
        let err = load_text("[polling]\nmax_page_size = 0\n", &[]).expect_err("bad");
        assert!(err.to_string().contains("polling.max_page_size"), "{err}");
        let err = load_text("[polling]\nunknown_knob = 1\n", &[]).expect_err("unknown");
        assert!(err.to_string().contains("unknown_knob"), "{err}");
        // The shared section still refuses unknown keys by name.
        let err = load_text("[auth]\napi_key_ttl = 1\n", &[]).expect_err("unknown");
        assert!(
            err.to_string().contains("unknown field `api_key_ttl`"),
            "{err}"
        );
        // Token settings moved to [auth]; the old place is refused, not ignored.
        let err = load_text("[polling]\napi_key_cache_ttl_secs = 1\n", &[]).expect_err("moved");
        assert!(err.to_string().contains("api_key_cache_ttl_secs"), "{err}");
    }
}
