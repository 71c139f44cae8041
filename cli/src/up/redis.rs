//! `tally up --redis`: adds a supervised `redis-server` (from PATH) to the plan, on the
//! next port after every other instance's, persisting to an append-only file synced on
//! every write in its own 0700 directory, started before everything else; and points
//! the user service's sessions (`[user] redis_url`) and polling's read cache
//! (`[cache] backend = "redis"`) at it. redis-server reads its settings from its
//! command line, so the file `tally up` writes for it only records them.

use super::UpError;
use super::plan::{Instance, Plan, Probe, ProbeKind};
use super::platform::HOST;
use std::collections::BTreeMap;
use std::ffi::OsString;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};

/// The instance's name (and its service's).
pub const NAME: &str = "redis";
/// The program run, found on PATH.
pub const BINARY: &str = "redis-server";
/// The name of its one port.
pub const PORT: &str = "redis";
/// Memory redis-server may use; beyond it writes are refused (nothing is evicted, so
/// no session is dropped to make room): logins fail fast and cache fills are skipped.
pub const MAX_MEMORY: &str = "256mb";
/// Binaries whose config gets the Redis URL, and the table and keys they read it from.
const USER_BINARY: &str = "tally-user";
const POLLING_BINARY: &str = "tally-polling";

/// `redis://127.0.0.1:<port>`.
pub fn url(port: u16) -> String {
    format!("redis://{}", SocketAddr::new(HOST, port))
}

/// redis-server's arguments: loopback only, data in `dir`, every write appended to the
/// AOF and synced before it is acknowledged (sessions survive SIGKILL), no RDB snapshots.
fn args(port: u16, dir: &Path) -> Vec<OsString> {
    let mut v: Vec<OsString> = [
        "--port",
        &port.to_string(),
        "--bind",
        &HOST.to_string(),
        "--protected-mode",
        "yes",
        "--daemonize",
        "no",
        "--appendonly",
        "yes",
        "--appendfsync",
        "always",
        "--save",
        "",
        "--maxmemory",
        MAX_MEMORY,
        "--maxmemory-policy",
        "noeviction",
        "--dir",
    ]
    .iter()
    .map(OsString::from)
    .collect();
    v.push(dir.as_os_str().to_owned());
    v
}

/// Rewrites a service's config text (comment header, then TOML) with `edit` applied.
fn edit_config(
    inst: &mut Instance,
    edit: impl FnOnce(&mut toml::Table, &str),
    url: &str,
) -> Result<(), UpError> {
    let mut table: toml::Table = inst
        .config
        .parse()
        .map_err(|e| UpError::Platform(format!("config of {}: {e}", inst.name)))?;
    edit(&mut table, url);
    let header: String = inst
        .config
        .lines()
        .take_while(|l| l.starts_with('#'))
        .map(|l| format!("{l}\n"))
        .collect();
    let body = toml::to_string_pretty(&table)
        .map_err(|e| UpError::Platform(format!("config of {}: {e}", inst.name)))?;
    inst.config = format!("{header}\n{body}");
    Ok(())
}

/// Sets `pairs` in table `name` of `table`, keeping what else it holds.
fn set(table: &mut toml::Table, name: &str, pairs: &[(&str, &str)]) {
    let mut section = match table.remove(name) {
        Some(toml::Value::Table(t)) => t,
        _ => toml::Table::new(),
    };
    for (k, v) in pairs {
        section.insert((*k).into(), (*v).into());
    }
    table.insert(name.into(), section.into());
}

fn sessions(table: &mut toml::Table, url: &str) {
    set(table, "user", &[("redis_url", url)]);
}

fn cache(table: &mut toml::Table, url: &str) {
    set(table, "cache", &[("backend", "redis"), ("url", url)]);
}

/// Adds the `redis` instance to `plan` (stage 0, every other instance one stage later,
/// its port after every other, `base_port` in a plan without any) and points user and
/// polling instances at it.
pub fn add(plan: &mut Plan, base_port: u16) -> Result<(), UpError> {
    let port = plan
        .ports()
        .iter()
        .map(|(p, _)| *p)
        .max()
        .map_or(Some(base_port), |p| p.checked_add(1))
        .ok_or_else(|| {
            UpError::Usage(
                "--base-port leaves no port for redis below 65536; pick a lower one".into(),
            )
        })?;
    let url = url(port);
    for inst in &mut plan.instances {
        inst.stage += 1;
        match inst.binary.as_str() {
            USER_BINARY => edit_config(inst, sessions, &url)?,
            POLLING_BINARY => edit_config(inst, cache, &url)?,
            _ => {}
        }
    }
    let dir = |sub: &str| plan.data_dir.join(sub);
    let state: PathBuf = dir("data").join(NAME);
    let argv = args(port, &state);
    let shown: Vec<String> = argv
        .iter()
        .map(|a| match a.to_string_lossy() {
            s if s.is_empty() => "\"\"".to_string(),
            s => s.into_owned(),
        })
        .collect();
    let inst = Instance {
        name: NAME.into(),
        service: NAME.into(),
        binary: BINARY.into(),
        ports: BTreeMap::from([(PORT, port)]),
        addr: None,
        probe: Some(Probe {
            addr: SocketAddr::new(HOST, port),
            service: "PING".into(),
            kind: ProbeKind::RedisPing,
        }),
        config_path: dir("config").join(format!("{NAME}.toml")),
        config: format!(
            "# Written by `tally up --redis`; regenerated on every start.\n\
             # redis-server reads no file: it runs as\n#   {BINARY} {}\n\
             # Sessions of the user service and polling's read cache: {url}\n",
            shown.join(" ")
        ),
        log_path: dir("logs").join(format!("{NAME}.log")),
        pid_path: dir("run").join(format!("{NAME}.pid")),
        stage: 0,
        env: Vec::new(),
        args: argv,
        sidecar_of: None,
    };
    plan.instances.insert(0, inst);
    Ok(())
}

/// `redis-server` on PATH, or a message saying how to install it.
pub fn locate() -> Result<PathBuf, UpError> {
    let path = std::env::var_os("PATH").unwrap_or_default();
    std::env::split_paths(&path)
        .map(|d| d.join(BINARY))
        .find(|p| p.is_file())
        .ok_or_else(|| {
            UpError::Usage(format!(
                "--redis needs `{BINARY}` on PATH; install it (e.g. `apt-get install -y redis-server`)"
            ))
        })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::up::plan::{Options, build};
    use crate::up::platform::platform;

    fn plan() -> Plan {
        build(
            &platform(),
            &Options {
                data_dir: PathBuf::from("/tmp/t"),
                base_port: 50051,
                replicas: vec![],
                log_format: "pretty".into(),
            },
        )
        .expect("plan")
    }

    #[test]
    fn redis_takes_the_next_port_starts_first_and_serves_sessions_and_cache() {
        let before = plan();
        let mut p = before.clone();
        add(&mut p, 50051).expect("redis");
        let redis = &p.instances[0];
        assert_eq!(redis.name, NAME);
        let port = 50051 + tally_testkit::TALLY_UP_PORTS;
        assert_eq!(redis.ports[PORT], port, "right after every other port");
        assert_eq!(
            p.ports().len(),
            usize::from(tally_testkit::TALLY_UP_PORTS + tally_testkit::TALLY_UP_REDIS_PORTS)
        );
        assert_eq!(redis.stage, 0);
        assert!(p.instances[1..].iter().all(|i| i.stage >= 1));
        assert_eq!(p.stages().len(), before.stages().len() + 1);
        let args: Vec<String> = redis
            .args
            .iter()
            .map(|a| a.to_string_lossy().into_owned())
            .collect();
        let at = |k: &str| {
            args.iter()
                .position(|a| a == k)
                .map(|i| args[i + 1].as_str())
        };
        assert_eq!(at("--appendonly"), Some("yes"));
        assert_eq!(at("--appendfsync"), Some("always"));
        assert_eq!(at("--dir"), Some("/tmp/t/data/redis"));
        assert_eq!(at("--bind"), Some("127.0.0.1"));
        assert_eq!(
            redis.probe.as_ref().map(|p| p.kind),
            Some(ProbeKind::RedisPing)
        );
        let url = format!("redis://127.0.0.1:{port}");
        let cfg = |name: &str| -> toml::Table {
            let i = p.instances.iter().find(|i| i.name == name).expect(name);
            assert!(
                i.config.starts_with("# Written by `tally up`"),
                "{}",
                i.config
            );
            i.config.parse().expect("toml")
        };
        assert_eq!(
            cfg("user")["user"]["redis_url"].as_str(),
            Some(url.as_str())
        );
        // What the user section held before is kept.
        assert!(cfg("user")["user"]["admin_token_file"].is_str());
        assert_eq!(cfg("polling")["cache"]["backend"].as_str(), Some("redis"));
        assert_eq!(cfg("polling")["cache"]["url"].as_str(), Some(url.as_str()));
        assert!(!cfg("analytics").contains_key("cache"));
        // The record of redis' settings is valid TOML with nothing in it (launchers and
        // `tally chaos` read every file in config/).
        let text: toml::Table = redis.config.parse().expect("comments only");
        assert!(text.is_empty() && redis.config.contains("--appendfsync always"));
    }

    #[test]
    fn without_redis_nothing_points_at_it() {
        for i in &plan().instances {
            assert!(!i.config.contains("redis"), "{}: {}", i.name, i.config);
            assert_ne!(i.binary, BINARY);
        }
    }

    #[test]
    fn no_port_left_is_refused() {
        let mut p = plan();
        if let Some(i) = p.instances.first_mut() {
            i.ports.insert("grpc", u16::MAX);
        }
        let err = add(&mut p, 50051).expect_err("no port");
        assert!(err.to_string().contains("--base-port"), "{err}");
    }
}
