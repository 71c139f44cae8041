//! Typed configuration: a TOML file plus `TALLY_*` environment overrides,
//! deserialised into one struct per binary and validated before anything starts.
//!
//! Errors name the file, the key and the fix, so a bad deploy fails loudly at
//! start instead of misbehaving later.

mod shared;

pub use shared::{AuthSettings, RetrySettings, instance_issues, instance_name};

use serde::Deserialize;
use serde::de::DeserializeOwned;
use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};

/// A configuration problem found while loading or validating.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    /// The file could not be read.
    #[error("cannot read config file {file}: {source}")]
    Read {
        /// The file asked for.
        file: PathBuf,
        /// Why reading failed.
        source: std::io::Error,
    },
    /// The TOML (or an environment override) does not fit the typed config.
    #[error("config {file}: {message}")]
    Parse {
        /// The file (or `environment`) that did not parse.
        file: String,
        /// The parser's message, naming the key.
        message: String,
    },
    /// A value parsed but breaks a rule of [`Validate`].
    #[error("config {file}: key `{key}`: {problem}; fix: {fix}")]
    Invalid {
        /// The file (or `environment`) the value came from.
        file: String,
        /// The dotted key, e.g. `server.listen_addr`.
        key: String,
        /// What is wrong with the value.
        problem: String,
        /// What to write instead.
        fix: String,
    },
}

/// One problem found by [`Validate::validate`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Issue {
    /// The dotted key, e.g. `server.listen_addr`.
    pub key: String,
    /// What is wrong with the value.
    pub problem: String,
    /// What to write instead.
    pub fix: String,
}

impl Issue {
    /// An issue with `key`, saying the `problem` and the `fix`.
    pub fn new(key: impl Into<String>, problem: impl Into<String>, fix: impl Into<String>) -> Self {
        Self {
            key: key.into(),
            problem: problem.into(),
            fix: fix.into(),
        }
    }
}

/// An [`Issue`] for `key` when `value` lies outside `min..=max`; the fix names
/// the range and the default, e.g. "use 1 to 10000 (500 is the default)".
pub fn range_issue(
    key: &str,
    value: impl Into<u64>,
    min: impl Into<u64>,
    max: impl Into<u64>,
    default: impl Into<u64>,
) -> Option<Issue> {
    let (value, min, max) = (value.into(), min.into(), max.into());
    (value < min || value > max).then(|| {
        Issue::new(
            key,
            format!("is {value}"),
            format!("use {min} to {max} ({} is the default)", default.into()),
        )
    })
}

/// An [`Issue`] for an interval in whole seconds that is 0.
pub fn interval_issue(key: &str, secs: u64) -> Option<Issue> {
    (secs == 0).then(|| Issue::new(key, "is 0", "use at least 1 second"))
}

/// Semantic checks that serde cannot express (ranges, paths, combinations).
pub trait Validate {
    /// Every problem found; empty when the config is usable.
    fn validate(&self) -> Vec<Issue>;
}

/// Loads `T` from an optional TOML file, then applies environment overrides.
///
/// An override `TALLY_SERVER__LISTEN_ADDR=127.0.0.1:1` sets `server.listen_addr`:
/// after the prefix, `__` separates nested keys and names are lower-cased.
/// `<prefix>CONFIG` is left alone: binaries use it for the file's path.
/// Values are read as TOML scalars when they parse as such, else as strings.
pub fn load<T>(file: Option<&Path>, env_prefix: &str) -> Result<T, ConfigError>
where
    T: DeserializeOwned + Validate,
{
    let vars: Vec<(String, String)> = std::env::vars().collect();
    load_from(file, env_prefix, &vars)
}

/// [`load`] with explicit environment variables, for tests.
pub fn load_from<T>(
    file: Option<&Path>,
    env_prefix: &str,
    vars: &[(String, String)],
) -> Result<T, ConfigError>
where
    T: DeserializeOwned + Validate,
{
    let file_label = file
        .map(|f| f.display().to_string())
        .unwrap_or_else(|| "<defaults+env>".to_string());
    let mut root = match file {
        Some(path) => {
            let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
                file: path.to_path_buf(),
                source,
            })?;
            text.parse::<toml::Table>()
                .map_err(|e| ConfigError::Parse {
                    file: file_label.clone(),
                    message: e.to_string(),
                })?
        }
        None => toml::Table::new(),
    };
    for (name, value) in vars {
        let Some(rest) = name.strip_prefix(env_prefix) else {
            continue;
        };
        // `<PREFIX>CONFIG` names the config file itself, not a key in it.
        if rest == "CONFIG" {
            continue;
        }
        let path: Vec<String> = rest.split("__").map(|s| s.to_ascii_lowercase()).collect();
        if path.iter().any(|p| p.is_empty()) {
            continue;
        }
        set_path(&mut root, &path, parse_scalar(value));
    }
    let value: T = toml::Value::Table(root)
        .try_into()
        .map_err(|e: toml::de::Error| ConfigError::Parse {
            file: file_label.clone(),
            message: e.to_string().trim().to_string(),
        })?;
    if let Some(issue) = value.validate().into_iter().next() {
        return Err(ConfigError::Invalid {
            file: file_label,
            key: issue.key,
            problem: issue.problem,
            fix: issue.fix,
        });
    }
    Ok(value)
}

fn parse_scalar(raw: &str) -> toml::Value {
    let probe = format!("v = {raw}");
    match probe.parse::<toml::Table>() {
        Ok(mut t) => t
            .remove("v")
            .unwrap_or_else(|| toml::Value::String(raw.to_string())),
        Err(_) => toml::Value::String(raw.to_string()),
    }
}

fn set_path(table: &mut toml::Table, path: &[String], value: toml::Value) {
    match path {
        [] => {}
        [last] => {
            table.insert(last.clone(), value);
        }
        [head, rest @ ..] => {
            let entry = table
                .entry(head.clone())
                .or_insert_with(|| toml::Value::Table(toml::Table::new()));
            if !entry.is_table() {
                *entry = toml::Value::Table(toml::Table::new());
            }
            if let toml::Value::Table(t) = entry {
                set_path(t, rest, value);
            }
        }
    }
}

/// Where a service listens, shared by every binary.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ServerSettings {
    /// gRPC listen address, e.g. `127.0.0.1:50051`.
    pub listen_addr: SocketAddr,
    /// How long in-flight calls may take to drain on shutdown.
    #[serde(default = "default_drain_secs")]
    pub drain_timeout_secs: u64,
}

/// Default of `server.drain_timeout_secs`.
pub const DEFAULT_DRAIN_TIMEOUT_SECS: u64 = 10;

fn default_drain_secs() -> u64 {
    DEFAULT_DRAIN_TIMEOUT_SECS
}

impl ServerSettings {
    /// Settings listening on `listen_addr` with the default drain timeout.
    pub fn on(listen_addr: SocketAddr) -> Self {
        Self {
            listen_addr,
            drain_timeout_secs: DEFAULT_DRAIN_TIMEOUT_SECS,
        }
    }
}

/// Which storage adapter backs the service, chosen by config.
#[derive(Debug, Clone, Deserialize)]
#[serde(tag = "backend", rename_all = "snake_case", deny_unknown_fields)]
pub enum StorageSettings {
    /// The embedded redb file: the default, nothing else to run.
    Embedded {
        /// The service's own database file.
        path: PathBuf,
    },
    /// ScyllaDB, for production clusters.
    Scylla {
        /// Contact points, `host:port`.
        nodes: Vec<String>,
        /// The keyspace holding this service's tables (created if missing).
        keyspace: String,
        /// Replication factor used when the keyspace is created.
        #[serde(default = "default_replication")]
        replication_factor: u32,
    },
}

fn default_replication() -> u32 {
    1
}

impl StorageSettings {
    /// Validation issues, with keys prefixed by `prefix` (usually `storage`).
    pub fn issues(&self, prefix: &str) -> Vec<Issue> {
        let mut out = Vec::new();
        match self {
            StorageSettings::Embedded { path } => {
                if path.as_os_str().is_empty() {
                    out.push(Issue::new(
                        format!("{prefix}.path"),
                        "is empty",
                        "set it to a file such as `.tally/user/user.redb`",
                    ));
                }
            }
            StorageSettings::Scylla {
                nodes, keyspace, ..
            } => {
                if nodes.is_empty() {
                    out.push(Issue::new(
                        format!("{prefix}.nodes"),
                        "lists no ScyllaDB node",
                        "add at least one `host:9042`",
                    ));
                }
                if keyspace.is_empty()
                    || !keyspace
                        .chars()
                        .all(|c| c.is_ascii_alphanumeric() || c == '_')
                {
                    out.push(Issue::new(
                        format!("{prefix}.keyspace"),
                        "must be a non-empty identifier",
                        "use letters, digits and `_`, e.g. `tally_user`",
                    ));
                }
            }
        }
        out
    }
}

/// Log output settings.
#[derive(Debug, Clone, Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub struct TelemetrySettings {
    /// `pretty` (default) or `json`.
    #[serde(default)]
    pub log_format: crate::telemetry::LogFormat,
    /// An `EnvFilter` directive; `RUST_LOG` wins when set.
    #[serde(default)]
    pub log_level: Option<String>,
    /// Where to serve Prometheus metrics (`GET /metrics`), e.g.
    /// `"127.0.0.1:9464"`; no metrics endpoint when unset.
    #[serde(default)]
    pub metrics_addr: Option<SocketAddr>,
    /// Append-only, hash-chained audit log of operator actions (redrives,
    /// replays, key rotations); `tally audit verify` checks it. None when unset.
    #[serde(default)]
    pub audit_file: Option<std::path::PathBuf>,
    /// OTLP/gRPC trace collector, e.g. `"http://127.0.0.1:4317"`; traces are
    /// not exported when unset.
    #[serde(default)]
    pub otlp_endpoint: Option<String>,
    /// Share of new traces recorded (0.0..=1.0, parent-based); default 1.0.
    #[serde(default)]
    pub trace_sample_ratio: Option<f64>,
}

impl TelemetrySettings {
    /// The tracing part of these settings.
    pub fn trace(&self) -> crate::trace::TraceSettings {
        crate::trace::TraceSettings {
            otlp_endpoint: self.otlp_endpoint.clone(),
            trace_sample_ratio: self.trace_sample_ratio,
        }
    }
}

/// Outbound addresses per target service. Every call to a peer goes to the
/// address configured here (the local mesh sidecar, or the peer itself when
/// running without a mesh); nothing dials a hard-coded address.
#[derive(Debug, Clone, Deserialize, Default)]
#[serde(transparent)]
pub struct OutboundSettings(pub BTreeMap<String, String>);

impl OutboundSettings {
    /// The configured address for `target`.
    pub fn address(&self, target: &str) -> Option<&str> {
        self.0.get(target).map(String::as_str)
    }

    /// Checks that every target in `required` has a usable `http://` address.
    pub fn issues(&self, required: &[&str]) -> Vec<Issue> {
        let mut out = Vec::new();
        for target in required {
            match self.0.get(*target) {
                None => out.push(Issue::new(
                    format!("outbound.{target}"),
                    "is missing",
                    format!("set `outbound.{target} = \"http://127.0.0.1:PORT\"` (the sidecar or the {target} service)"),
                )),
                Some(addr) if addr.parse::<http::Uri>().map(|u| u.scheme().is_none() || u.host().is_none()).unwrap_or(true) => out.push(Issue::new(
                    format!("outbound.{target}"),
                    format!("`{addr}` is not an absolute URI"),
                    "write it as `http://host:port`",
                )),
                Some(_) => {}
            }
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(Debug, Deserialize)]
    #[serde(deny_unknown_fields)]
    struct Sample {
        server: ServerSettings,
        #[serde(default)]
        outbound: OutboundSettings,
        #[serde(default)]
        limit: u32,
    }

    impl Validate for Sample {
        fn validate(&self) -> Vec<Issue> {
            let mut out = self.outbound.issues(&["user"]);
            if self.limit > 10 {
                out.push(Issue::new(
                    "limit",
                    "is above 10",
                    "set `limit` to 10 or less",
                ));
            }
            out
        }
    }

    fn vars(pairs: &[(&str, &str)]) -> Vec<(String, String)> {
        pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }

    fn file(text: &str) -> tempfile::NamedTempFile {
        let f = tempfile::NamedTempFile::new().expect("temp file");
        std::fs::write(f.path(), text).expect("write");
        f
    }

    #[test]
    fn environment_overrides_nested_keys_and_scalars() {
        let f =
            file("[server]\nlisten_addr = \"127.0.0.1:1\"\n[outbound]\nuser = \"http://a:1\"\n");
        let cfg: Sample = load_from(
            Some(f.path()),
            "T_",
            &vars(&[
                ("T_SERVER__LISTEN_ADDR", "127.0.0.1:2"),
                ("T_LIMIT", "7"),
                ("T_CONFIG", "/ignored.toml"),
                ("OTHER_LIMIT", "99"),
            ]),
        )
        .expect("loads");
        assert_eq!(cfg.server.listen_addr.port(), 2);
        assert_eq!(cfg.limit, 7);
        assert_eq!(cfg.outbound.address("user"), Some("http://a:1"));
    }

    #[test]
    fn validation_errors_name_file_key_and_fix() {
        let f = file("[server]\nlisten_addr = \"127.0.0.1:1\"\nlimit = 3\n");
        let err = load_from::<Sample>(Some(f.path()), "T_", &[]).expect_err("unknown key");
        assert!(err.to_string().contains("limit"), "{err}");

        let f = file(
            "limit = 11\n[server]\nlisten_addr = \"127.0.0.1:1\"\n[outbound]\nuser = \"http://a:1\"\n",
        );
        let err = load_from::<Sample>(Some(f.path()), "T_", &[]).expect_err("invalid");
        let text = err.to_string();
        assert!(text.contains(&f.path().display().to_string()), "{text}");
        assert!(
            text.contains("key `limit`") && text.contains("fix:"),
            "{text}"
        );

        let f = file("[server]\nlisten_addr = \"127.0.0.1:1\"\n[outbound]\nuser = \"a:1\"\n");
        let err = load_from::<Sample>(Some(f.path()), "T_", &[]).expect_err("bad uri");
        assert!(err.to_string().contains("outbound.user"), "{err}");
    }

    #[test]
    fn unreadable_file_is_named() {
        let err = load_from::<Sample>(Some(Path::new("/nonexistent/tally.toml")), "T_", &[])
            .expect_err("missing file");
        assert!(err.to_string().contains("/nonexistent/tally.toml"), "{err}");
    }
}
