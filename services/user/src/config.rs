//! The `tally-user` configuration: one typed struct, loaded from an optional
//! TOML file plus `TALLY_USER_*` environment overrides, and validated before
//! anything starts. Every section has defaults, so the binary runs with no
//! file at all (listening on 127.0.0.1:50051, data in `.tally/user/user.redb`).

use serde::Deserialize;
use std::path::PathBuf;
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

/// Everything `tally-user` reads at start.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Config {
    #[serde(default = "default_server")]
    pub server: ServerSettings,
    #[serde(default = "default_storage")]
    pub storage: StorageSettings,
    #[serde(default)]
    pub telemetry: TelemetrySettings,
    /// Accepted so launchers can write one config shape for every service;
    /// the user service calls no peers, so it is not used.
    #[serde(default)]
    pub outbound: OutboundSettings,
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
}

impl Default for UserSettings {
    fn default() -> Self {
        Self {
            redis_url: None,
            session_ttl_secs: default_session_ttl(),
            access_token_ttl_secs: default_access_ttl(),
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
        let e = load_toml("[events]\ntransport = \"kafka\"\n", &[]).unwrap_err();
        assert!(e.to_string().contains("kafka"), "{e}");
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
