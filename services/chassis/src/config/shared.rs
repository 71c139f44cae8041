//! Config sections that several services share, defined once: `[auth]`
//! (how callers' access tokens and API keys are verified) and `[retry]` (how
//! an event consumer retries before dead-lettering). Each is its own table,
//! not flattened into a service's section, so `deny_unknown_fields` keeps
//! refusing unknown keys with a message that names them.

use super::Issue;
use crate::auth::AuthOptions;
use crate::events::RetryPolicy;
use serde::Deserialize;
use std::time::Duration;

/// `[auth]`: verification of access tokens (JWKS from the user service) and
/// API keys (asked of the user service, cached).
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct AuthSettings {
    /// Expected `iss` of access tokens.
    pub token_issuer: String,
    /// Expected `aud` of access tokens.
    pub token_audience: String,
    /// Least time between JWKS refetches caused by unknown key ids.
    pub jwks_refetch_interval_secs: u64,
    /// How long a verified API key is trusted without asking again.
    pub api_key_cache_ttl_secs: u64,
    /// Deadline of each call to the user service.
    pub user_call_timeout_ms: u64,
}

impl Default for AuthSettings {
    /// The verifier's own defaults, so there is one source of them.
    fn default() -> Self {
        let d = AuthOptions::default();
        Self {
            token_issuer: d.issuer,
            token_audience: d.audience,
            jwks_refetch_interval_secs: d.jwks_refetch_interval.as_secs(),
            api_key_cache_ttl_secs: d.api_key_cache_ttl.as_secs(),
            user_call_timeout_ms: u64::try_from(d.call_timeout.as_millis()).unwrap_or(u64::MAX),
        }
    }
}

impl AuthSettings {
    /// The verifier options these settings describe.
    pub fn options(&self) -> AuthOptions {
        AuthOptions {
            issuer: self.token_issuer.clone(),
            audience: self.token_audience.clone(),
            jwks_refetch_interval: Duration::from_secs(self.jwks_refetch_interval_secs),
            api_key_cache_ttl: Duration::from_secs(self.api_key_cache_ttl_secs),
            call_timeout: Duration::from_millis(self.user_call_timeout_ms),
            ..AuthOptions::default()
        }
    }

    /// Validation issues, keys prefixed by `prefix` (usually `auth`).
    pub fn issues(&self, prefix: &str) -> Vec<Issue> {
        let mut out = Vec::new();
        if self.user_call_timeout_ms == 0 {
            out.push(Issue::new(
                format!("{prefix}.user_call_timeout_ms"),
                "is 0",
                "use a positive deadline such as 5000",
            ));
        }
        for (key, value) in [
            ("token_issuer", &self.token_issuer),
            ("token_audience", &self.token_audience),
        ] {
            if value.trim().is_empty() {
                out.push(Issue::new(
                    format!("{prefix}.{key}"),
                    "is empty",
                    "leave it unset for the default",
                ));
            }
        }
        out
    }
}

/// `[retry]`: how an event consumer retries a failing event before it goes
/// to the dead-letter queue.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct RetrySettings {
    /// Attempts per event (the first included) before dead-lettering.
    pub max_attempts: u32,
    /// First pause between attempts; doubles each time.
    pub initial_backoff_ms: u64,
    /// Longest pause between attempts.
    pub max_backoff_ms: u64,
}

impl Default for RetrySettings {
    /// The consumer runtime's own defaults, so there is one source of them.
    fn default() -> Self {
        let d = RetryPolicy::default();
        Self {
            max_attempts: d.max_attempts,
            initial_backoff_ms: millis(d.initial_backoff),
            max_backoff_ms: millis(d.max_backoff),
        }
    }
}

fn millis(d: Duration) -> u64 {
    u64::try_from(d.as_millis()).unwrap_or(u64::MAX)
}

impl RetrySettings {
    /// The consumer's retry policy.
    pub fn policy(&self) -> RetryPolicy {
        RetryPolicy {
            max_attempts: self.max_attempts,
            initial_backoff: Duration::from_millis(self.initial_backoff_ms),
            max_backoff: Duration::from_millis(self.max_backoff_ms),
            ..RetryPolicy::default()
        }
    }

    /// Validation issues, keys prefixed by `prefix` (usually `retry`).
    pub fn issues(&self, prefix: &str) -> Vec<Issue> {
        let mut out = Vec::new();
        if self.max_attempts == 0 {
            out.push(Issue::new(
                format!("{prefix}.max_attempts"),
                "is 0",
                "use at least 1 (5 is the default)",
            ));
        }
        if self.initial_backoff_ms > self.max_backoff_ms {
            out.push(Issue::new(
                format!("{prefix}.initial_backoff_ms"),
                format!(
                    "{} is above max_backoff_ms ({})",
                    self.initial_backoff_ms, self.max_backoff_ms
                ),
                "make initial_backoff_ms at most max_backoff_ms",
            ));
        }
        out
    }
}

/// A consuming replica's instance name: `configured`, else `$HOSTNAME` (or
/// `local`) and the listen port. It names the replica's consumer, so
/// replicas never share one, and it must stay stable across restarts.
pub fn instance_name(configured: Option<&str>, listen_port: u16) -> String {
    match configured {
        Some(name) => name.to_string(),
        None => {
            let host = std::env::var("HOSTNAME")
                .ok()
                .filter(|h| !h.trim().is_empty())
                .unwrap_or_else(|| "local".to_string());
            format!("{host}-{listen_port}")
        }
    }
}

/// Checks a configured instance name (`key`) is a plain name.
pub fn instance_issues(key: &str, configured: Option<&str>) -> Vec<Issue> {
    match configured {
        Some(name)
            if name.is_empty()
                || !name
                    .chars()
                    .all(|c| c.is_ascii_alphanumeric() || "-_.".contains(c)) =>
        {
            vec![Issue::new(
                key,
                format!("`{name}` is not a plain name"),
                "use letters, digits, `-`, `_` and `.`, e.g. `replica-1`",
            )]
        }
        _ => Vec::new(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::{ConfigError, Validate, load_from};

    #[derive(Debug, Deserialize)]
    #[serde(deny_unknown_fields)]
    struct Sample {
        #[serde(default)]
        auth: AuthSettings,
        #[serde(default)]
        retry: RetrySettings,
    }

    impl Validate for Sample {
        fn validate(&self) -> Vec<Issue> {
            let mut out = self.auth.issues("auth");
            out.extend(self.retry.issues("retry"));
            out
        }
    }

    fn load(text: &str, vars: &[(&str, &str)]) -> Result<Sample, ConfigError> {
        let f = tempfile::NamedTempFile::new().expect("temp file");
        std::fs::write(f.path(), text).expect("write");
        let vars: Vec<(String, String)> = vars
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        load_from(Some(f.path()), "T_", &vars)
    }

    #[test]
    fn defaults_are_the_verifier_and_consumer_defaults() {
        let cfg = load("", &[]).expect("defaults");
        let options = cfg.auth.options();
        let defaults = AuthOptions::default();
        assert_eq!(options.issuer, defaults.issuer);
        assert_eq!(options.audience, defaults.audience);
        assert_eq!(options.call_timeout, defaults.call_timeout);
        assert_eq!(options.api_key_cache_ttl, defaults.api_key_cache_ttl);
        let policy = cfg.retry.policy();
        assert_eq!(policy.max_attempts, RetryPolicy::default().max_attempts);
        assert_eq!(policy.max_backoff, RetryPolicy::default().max_backoff);
    }

    #[test]
    fn tables_and_env_overrides_set_values() {
        let cfg = load(
            "[auth]\napi_key_cache_ttl_secs = 0\n[retry]\nmax_attempts = 2\n",
            &[("T_AUTH__TOKEN_AUDIENCE", "other")],
        )
        .expect("load");
        assert_eq!(cfg.auth.api_key_cache_ttl_secs, 0);
        assert_eq!(cfg.auth.token_audience, "other");
        assert_eq!(cfg.retry.max_attempts, 2);
    }

    #[test]
    fn unknown_keys_in_shared_tables_are_refused_by_name() {
        let err = load("[auth]\ntoken_isuer = \"x\"\n", &[]).expect_err("typo");
        let text = err.to_string();
        assert!(text.contains("unknown field `token_isuer`"), "{text}");
        assert!(
            text.contains("token_issuer"),
            "suggests the known keys: {text}"
        );
        let err = load("[retry]\nattempts = 3\n", &[]).expect_err("typo");
        assert!(
            err.to_string().contains("unknown field `attempts`"),
            "{err}"
        );
    }

    #[test]
    fn instance_names_are_plain_and_default_to_host_and_port() {
        assert_eq!(instance_name(Some("a1"), 1), "a1");
        assert!(instance_name(None, 50054).ends_with("-50054"));
        assert!(instance_issues("x.instance", Some("a1")).is_empty());
        assert!(instance_issues("x.instance", None).is_empty());
        let issues = instance_issues("x.instance", Some("a b"));
        assert_eq!(issues.len(), 1);
        assert_eq!(issues[0].key, "x.instance");
    }

    #[test]
    fn bad_values_name_the_key() {
        let err = load("[auth]\nuser_call_timeout_ms = 0\n", &[]).expect_err("zero");
        assert!(
            err.to_string().contains("auth.user_call_timeout_ms"),
            "{err}"
        );
        let err = load("[retry]\nmax_attempts = 0\n", &[]).expect_err("zero");
        assert!(err.to_string().contains("retry.max_attempts"), "{err}");
        let err = load("[retry]\ninitial_backoff_ms = 20000\n", &[]).expect_err("order");
        assert!(
            err.to_string().contains("retry.initial_backoff_ms"),
            "{err}"
        );
    }
}
