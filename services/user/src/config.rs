//! The `tally-user` configuration: one typed struct, loaded from an optional
//! TOML file plus `TALLY_USER_*` environment overrides, and validated before
//! anything starts. Every section has defaults, so the binary runs with no
//! file at all (listening on 127.0.0.1:50051, data in `.tally/user/user.redb`).

use crate::domain::login_throttle::{self as throttle, ThrottlePolicy};
use serde::Deserialize;
use std::net::IpAddr;
use std::path::PathBuf;
use std::time::Duration;
use tally_chassis::config::{
    Issue, OutboundSettings, ServerSettings, StorageSettings, TelemetrySettings, Validate,
};

/// Environment prefix for overrides, e.g. `TALLY_USER_USER__SESSION_TTL_SECS=3600`.
pub const ENV_PREFIX: &str = "TALLY_USER_";
/// Default listen address.
pub const DEFAULT_LISTEN: &str = "127.0.0.1:50051";
/// Default database file.
pub const DEFAULT_DB: &str = ".tally/user/user.redb";

const MIN_SESSION_TTL: u64 = 60;
const MAX_SESSION_TTL: u64 = 90 * 24 * 3600;
const MIN_ACCESS_TTL: u64 = 30;
const MAX_ACCESS_TTL: u64 = 24 * 3600;
/// Added to the access-token lifetime for the default signing-key overlap:
/// covers the verifiers' clock leeway (30 s) with room to spare.
pub const DEFAULT_OVERLAP_MARGIN: Duration = Duration::from_secs(60);
const MAX_TRACKED_KEYS: usize = 10_000_000;

/// Everything `tally-user` reads at start.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Config {
    /// `[server]`: where gRPC is served and how it shuts down.
    #[serde(default = "default_server")]
    pub server: ServerSettings,
    /// `[storage]`: the embedded file or the Scylla cluster holding users, keys and sessions.
    #[serde(default = "default_storage")]
    pub storage: StorageSettings,
    /// `[telemetry]`: log format and filter, metrics address.
    #[serde(default)]
    pub telemetry: TelemetrySettings,
    /// Accepted so launchers can write one config shape for every service;
    /// the user service calls no peers, so it is not used.
    #[serde(default)]
    pub outbound: OutboundSettings,
    /// `[user]`: token lifetimes, signing keys, sessions and login throttling.
    #[serde(default)]
    pub user: UserSettings,
    /// Event transport: embedded (consumers read the `EventFeedService` this
    /// service serves; default) or `transport = "redis"` (+ `url`), which also
    /// runs the outbox relay to Redis Streams.
    #[serde(default)]
    pub events: tally_chassis::events::EventBusSettings,
}

/// The `[user]` section.
#[derive(Debug, Clone, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct UserSettings {
    /// `redis://host:port[/db]`: keep sessions in Redis (shared by replicas).
    /// Unset: sessions live in the service's own store.
    #[serde(default)]
    pub redis_url: Option<String>,
    /// Session lifetime, seconds (default 24 h).
    #[serde(default = "default_session_ttl")]
    pub session_ttl_secs: u64,
    /// Access-token lifetime, seconds (default 15 min).
    #[serde(default = "default_access_ttl")]
    pub access_token_ttl_secs: u64,
    /// Rotate the signing key automatically when the active one is this old,
    /// seconds; 0 (default) rotates only on `tally keys rotate`.
    #[serde(default)]
    pub signing_key_rotation_secs: u64,
    /// How long a replaced signing key stays in the JWKS, seconds; at least
    /// the access-token lifetime (default: that lifetime plus 60 s).
    #[serde(default)]
    pub signing_key_overlap_secs: Option<u64>,
    /// File holding the token operator calls (`UserAdminService`) need,
    /// created (mode 0600) with a random token when missing. Unset: those
    /// calls are refused.
    #[serde(default)]
    pub admin_token_file: Option<PathBuf>,
    /// Throttling of failed logins (see `domain::login_throttle`).
    #[serde(default)]
    pub login_throttle: LoginThrottleSettings,
}

impl Default for UserSettings {
    fn default() -> Self {
        Self {
            redis_url: None,
            session_ttl_secs: default_session_ttl(),
            access_token_ttl_secs: default_access_ttl(),
            signing_key_rotation_secs: 0,
            signing_key_overlap_secs: None,
            admin_token_file: None,
            login_throttle: LoginThrottleSettings::default(),
        }
    }
}

impl UserSettings {
    /// How long a replaced signing key stays published.
    pub fn signing_key_overlap(&self) -> Duration {
        match self.signing_key_overlap_secs {
            Some(s) => Duration::from_secs(s),
            None => Duration::from_secs(self.access_token_ttl_secs) + DEFAULT_OVERLAP_MARGIN,
        }
    }
}

/// The `[user.login_throttle]` section; defaults in `domain::login_throttle`.
#[derive(Debug, Clone, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields, default)]
pub struct LoginThrottleSettings {
    /// Failures per (account, client address) before that pair is delayed.
    pub client_free_failures: u32,
    /// Failures per account from addresses it does not know before those are delayed.
    pub account_free_failures: u32,
    /// Failures are forgotten after this many quiet seconds.
    pub window_secs: u64,
    /// First delay past a budget, milliseconds; doubled per further failure.
    pub base_delay_ms: u64,
    /// Longest delay, seconds.
    pub max_delay_secs: u64,
    /// How long an address that logged in stays exempt from the account-wide delay, seconds.
    pub trusted_client_secs: u64,
    /// Most keys tracked per table.
    pub max_tracked_keys: usize,
    /// Peers (e.g. the local sidecar or a load balancer) whose `x-forwarded-for`
    /// names the client. Empty (default): the TCP peer is the client.
    pub trusted_proxies: Vec<IpAddr>,
}

impl Default for LoginThrottleSettings {
    fn default() -> Self {
        let p = ThrottlePolicy::default();
        Self {
            client_free_failures: p.client_free_failures,
            account_free_failures: p.account_free_failures,
            window_secs: p.window.as_secs(),
            base_delay_ms: u64::try_from(p.base_delay.as_millis()).unwrap_or(u64::MAX),
            max_delay_secs: p.max_delay.as_secs(),
            trusted_client_secs: p.trusted_for.as_secs(),
            max_tracked_keys: throttle::DEFAULT_MAX_TRACKED,
            trusted_proxies: Vec::new(),
        }
    }
}

impl LoginThrottleSettings {
    /// The throttle's tunables as the domain takes them.
    pub fn policy(&self) -> ThrottlePolicy {
        ThrottlePolicy {
            client_free_failures: self.client_free_failures,
            account_free_failures: self.account_free_failures,
            window: Duration::from_secs(self.window_secs),
            base_delay: Duration::from_millis(self.base_delay_ms),
            max_delay: Duration::from_secs(self.max_delay_secs),
            trusted_for: Duration::from_secs(self.trusted_client_secs),
            max_tracked: self.max_tracked_keys,
        }
    }

    fn issues(&self, out: &mut Vec<Issue>) {
        let key = |k: &str| format!("user.login_throttle.{k}");
        if self.client_free_failures == 0 {
            out.push(Issue::new(
                key("client_free_failures"),
                "is 0",
                "use 1 or more (default 5)",
            ));
        }
        if self.account_free_failures < self.client_free_failures {
            out.push(Issue::new(
                key("account_free_failures"),
                "is less than client_free_failures",
                "the account-wide budget must be at least the per-address one (default 20)",
            ));
        }
        if self.base_delay_ms == 0 || self.max_delay_secs.saturating_mul(1000) < self.base_delay_ms
        {
            out.push(Issue::new(
                key("base_delay_ms"),
                "is 0 or longer than max_delay_secs",
                "use 1 ms up to max_delay_secs (defaults 2000 ms and 300 s)",
            ));
        }
        if self.window_secs == 0 {
            out.push(Issue::new(
                key("window_secs"),
                "is 0",
                "use 1 or more (default 900)",
            ));
        }
        if !(1..=MAX_TRACKED_KEYS).contains(&self.max_tracked_keys) {
            out.push(Issue::new(
                key("max_tracked_keys"),
                format!("{} is out of range", self.max_tracked_keys),
                format!("use 1 to {MAX_TRACKED_KEYS} (default 100000)"),
            ));
        }
    }
}

fn default_server() -> ServerSettings {
    ServerSettings {
        listen_addr: std::net::SocketAddr::from(([127, 0, 0, 1], 50051)),
        drain_timeout_secs: 10,
    }
}

fn default_storage() -> StorageSettings {
    StorageSettings::Embedded {
        path: PathBuf::from(DEFAULT_DB),
    }
}

fn default_session_ttl() -> u64 {
    24 * 3600
}

fn default_access_ttl() -> u64 {
    15 * 60
}

impl Validate for Config {
    fn validate(&self) -> Vec<Issue> {
        let mut out = self.storage.issues("storage");
        out.extend(self.events.issues("events"));
        if self.server.drain_timeout_secs > 300 {
            out.push(Issue::new(
                "server.drain_timeout_secs",
                format!("{} is more than 300", self.server.drain_timeout_secs),
                "use a value from 0 to 300",
            ));
        }
        let u = &self.user;
        if let Some(url) = &u.redis_url
            && (!url.starts_with("redis://") || url.len() <= "redis://".len())
        {
            out.push(Issue::new(
                "user.redis_url",
                format!("`{url}` is not a redis:// URL"),
                "write it as `redis://host:port` (or remove it to keep sessions in the embedded store)",
            ));
        }
        if !(MIN_SESSION_TTL..=MAX_SESSION_TTL).contains(&u.session_ttl_secs) {
            out.push(Issue::new(
                "user.session_ttl_secs",
                format!("{} is out of range", u.session_ttl_secs),
                format!("use {MIN_SESSION_TTL} to {MAX_SESSION_TTL} seconds (default 86400)"),
            ));
        }
        if !(MIN_ACCESS_TTL..=MAX_ACCESS_TTL).contains(&u.access_token_ttl_secs) {
            out.push(Issue::new(
                "user.access_token_ttl_secs",
                format!("{} is out of range", u.access_token_ttl_secs),
                format!("use {MIN_ACCESS_TTL} to {MAX_ACCESS_TTL} seconds (default 900)"),
            ));
        } else if u.access_token_ttl_secs > u.session_ttl_secs {
            out.push(Issue::new(
                "user.access_token_ttl_secs",
                "is longer than user.session_ttl_secs",
                "make access tokens shorter-lived than sessions",
            ));
        }
        let overlap = u.signing_key_overlap().as_secs();
        if overlap < u.access_token_ttl_secs {
            out.push(Issue::new(
                "user.signing_key_overlap_secs",
                format!("{overlap} is shorter than user.access_token_ttl_secs"),
                "keep a replaced key published at least as long as the tokens it signed live",
            ));
        }
        if u.signing_key_rotation_secs != 0 && u.signing_key_rotation_secs < overlap {
            out.push(Issue::new(
                "user.signing_key_rotation_secs",
                format!(
                    "{} is shorter than the overlap ({overlap} s)",
                    u.signing_key_rotation_secs
                ),
                "rotate no more often than the overlap, or use 0 to rotate only on demand",
            ));
        }
        if u.admin_token_file
            .as_ref()
            .is_some_and(|p| p.as_os_str().is_empty())
        {
            out.push(Issue::new(
                "user.admin_token_file",
                "is empty",
                "name a file (created 0600 when missing) or remove the key",
            ));
        }
        u.login_throttle.issues(&mut out);
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tally_chassis::config::{ConfigError, load_from};

    fn env(pairs: &[(&str, &str)]) -> Vec<(String, String)> {
        pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }

    fn load_toml(text: &str, vars: &[(&str, &str)]) -> Result<Config, ConfigError> {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("user.toml");
        std::fs::write(&path, text).unwrap();
        load_from(Some(&path), ENV_PREFIX, &env(vars))
    }

    #[test]
    fn runs_with_no_file_on_defaults() {
        let c: Config = load_from(None, ENV_PREFIX, &[]).unwrap();
        assert_eq!(c.server.listen_addr.to_string(), DEFAULT_LISTEN);
        match &c.storage {
            StorageSettings::Embedded { path } => assert_eq!(path, &PathBuf::from(DEFAULT_DB)),
            other => panic!("{other:?}"),
        }
        assert_eq!(c.user, UserSettings::default());
        assert_eq!(c.user.session_ttl_secs, 86_400);
        assert_eq!(c.user.access_token_ttl_secs, 900);
        assert_eq!(c.user.signing_key_overlap(), Duration::from_secs(960));
        assert_eq!(c.user.login_throttle.policy(), ThrottlePolicy::default());
        assert!(matches!(
            c.events,
            tally_chassis::events::EventBusSettings::Embedded
        ));
    }

    #[test]
    fn events_section_selects_the_transport() {
        let c = load_toml(
            "[events]\ntransport = \"redis\"\nurl = \"redis://127.0.0.1:6379\"\n",
            &[],
        )
        .unwrap();
        assert!(matches!(
            c.events,
            tally_chassis::events::EventBusSettings::Redis(_)
        ));
        let e = load_toml("[events]\ntransport = \"nats\"\n", &[]).unwrap_err();
        assert!(e.to_string().contains("nats"), "{e}");
        let e = load_toml("[events]\ntransport = \"kafka\"\n", &[]).unwrap_err();
        assert!(e.to_string().contains("brokers"), "{e}");
    }

    #[test]
    fn file_and_env_overrides_apply() {
        let c = load_toml(
            r#"
            [server]
            listen_addr = "127.0.0.1:7001"
            [storage]
            backend = "embedded"
            path = "/tmp/x.redb"
            [user]
            session_ttl_secs = 3600
            "#,
            &[
                ("TALLY_USER_USER__ACCESS_TOKEN_TTL_SECS", "120"),
                ("TALLY_USER_USER__REDIS_URL", "redis://127.0.0.1:6379"),
            ],
        )
        .unwrap();
        assert_eq!(c.server.listen_addr.port(), 7001);
        assert_eq!(c.user.session_ttl_secs, 3600);
        assert_eq!(c.user.access_token_ttl_secs, 120);
        assert_eq!(c.user.redis_url.as_deref(), Some("redis://127.0.0.1:6379"));
    }

    #[test]
    fn bad_values_name_the_key() {
        let cases = [
            ("[user]\nredis_url = \"http://x\"", "user.redis_url"),
            ("[user]\nsession_ttl_secs = 5", "user.session_ttl_secs"),
            (
                "[user]\naccess_token_ttl_secs = 0",
                "user.access_token_ttl_secs",
            ),
            (
                "[user]\nsession_ttl_secs = 600\naccess_token_ttl_secs = 900",
                "user.access_token_ttl_secs",
            ),
            (
                "[storage]\nbackend = \"embedded\"\npath = \"\"",
                "storage.path",
            ),
            (
                "[user]\naccess_token_ttl_secs = 600\nsigning_key_overlap_secs = 60",
                "user.signing_key_overlap_secs",
            ),
            (
                "[user]\nsigning_key_rotation_secs = 100",
                "user.signing_key_rotation_secs",
            ),
            (
                "[user.login_throttle]\nclient_free_failures = 0",
                "user.login_throttle.client_free_failures",
            ),
            (
                "[user.login_throttle]\nmax_tracked_keys = 0",
                "user.login_throttle.max_tracked_keys",
            ),
            (
                "[server]\nlisten_addr = \"127.0.0.1:1\"\ndrain_timeout_secs = 1000",
                "server.drain_timeout_secs",
            ),
        ];
        for (text, key) in cases {
            match load_toml(text, &[]) {
                Err(ConfigError::Invalid { key: k, .. }) => assert_eq!(k, key, "{text}"),
                other => panic!("{text}: {other:?}"),
            }
        }
    }

    #[test]
    fn unknown_keys_and_bad_types_are_rejected() {
        let e = load_toml("[user]\nsesion_ttl_secs = 60", &[]).unwrap_err();
        assert!(e.to_string().contains("sesion_ttl_secs"), "{e}");
        let e = load_toml("[server]\nlisten_addr = \"nowhere\"", &[]).unwrap_err();
        assert!(matches!(e, ConfigError::Parse { .. }), "{e}");
        let e = load_toml("[bogus]\nx = 1", &[]).unwrap_err();
        assert!(e.to_string().contains("bogus"), "{e}");
    }
}
