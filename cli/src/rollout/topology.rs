//! Where a rollout's proxies are under `tally up`: read from the proxy configs it wrote in
//! `<data-dir>/config/`. Callers are the proxies whose route to the service has a canary
//! set; the target's sidecars are split into canary and stable by their inbound address.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};

/// The admin addresses a rollout of one service talks to.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Topology {
    /// Proxies that split calls to the service (their weights change).
    pub callers: Vec<SocketAddr>,
    /// Sidecars of the canary instances (their inbound metrics are the canary's evidence).
    pub canary: Vec<SocketAddr>,
    /// Sidecars of the stable instances.
    pub stable: Vec<SocketAddr>,
}

/// Why the topology could not be read.
#[derive(Debug, thiserror::Error)]
pub enum TopologyError {
    #[error("cannot read {path}: {source}")]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error(
        "no proxy in {0} routes to `{1}` with a canary; start the platform with `tally up --canary {1}`"
    )]
    NoCanary(PathBuf, String),
}

/// Reads the proxy configs in `<data_dir>/config/` (files that are not proxy configs are
/// skipped).
pub fn read(data_dir: &Path, service: &str) -> Result<Topology, TopologyError> {
    let dir = data_dir.join("config");
    let read_err = |path: &Path| {
        let path = path.to_path_buf();
        move |source| TopologyError::Read { path, source }
    };
    let mut configs = Vec::new();
    for entry in std::fs::read_dir(&dir).map_err(read_err(&dir))? {
        let path = entry.map_err(read_err(&dir))?.path();
        if path.extension().is_none_or(|e| e != "toml") {
            continue;
        }
        let text = std::fs::read_to_string(&path).map_err(read_err(&path))?;
        if let Ok(cfg) = tally_proxy::config::Config::parse(&path.display().to_string(), &text) {
            configs.push(cfg);
        }
    }
    configs.sort_by_key(|c| c.admin.listen);
    let mut canary_endpoints: Vec<String> = Vec::new();
    let mut callers = Vec::new();
    for cfg in &configs {
        if let Some(c) = cfg.services.get(service).and_then(|s| s.canary.as_ref()) {
            callers.push(cfg.admin.listen);
            canary_endpoints.extend(c.endpoints.iter().cloned());
        }
    }
    if callers.is_empty() {
        return Err(TopologyError::NoCanary(dir, service.to_string()));
    }
    let (mut canary, mut stable) = (Vec::new(), Vec::new());
    for cfg in &configs {
        let (Some(inb), Some(id)) = (&cfg.inbound, &cfg.identity) else {
            continue;
        };
        if id.service != service {
            continue;
        }
        if canary_endpoints.contains(&inb.listen.to_string()) {
            canary.push(cfg.admin.listen);
        } else {
            stable.push(cfg.admin.listen);
        }
    }
    Ok(Topology {
        callers,
        canary,
        stable,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::up::canary::{CanaryArgs, apply, with_canary_replica};
    use crate::up::plan::{Options, build};
    use crate::up::platform::platform;

    #[test]
    fn callers_canary_and_stable_sidecars_from_the_written_configs() {
        let dir = tempfile::tempdir().expect("tempdir");
        let mut plan = build(
            &platform(),
            &Options {
                data_dir: dir.path().to_path_buf(),
                base_port: 50051,
                replicas: with_canary_replica(&[], "analytics"),
                log_format: "pretty".into(),
            },
        )
        .expect("plan");
        let args = CanaryArgs {
            canary: Some("analytics".into()),
            ..CanaryArgs::default()
        };
        assert!(read(dir.path(), "analytics").is_err(), "no config dir yet");
        apply(&mut plan, &args).expect("canary");
        std::fs::create_dir_all(dir.path().join("config")).expect("mkdir");
        for i in &plan.instances {
            std::fs::write(&i.config_path, &i.config).expect("write");
        }
        let admin = |name: &str| {
            let i = plan.instances.iter().find(|i| i.name == name).expect(name);
            SocketAddr::from(([127, 0, 0, 1], i.ports["admin"]))
        };
        let t = read(dir.path(), "analytics").expect("topology");
        assert_eq!(t.callers, [admin("gateway")]);
        assert_eq!(t.canary, [admin("analytics-2-proxy")]);
        assert_eq!(t.stable, [admin("analytics-1-proxy")]);
        let e = read(dir.path(), "billing").expect_err("no canary");
        assert!(e.to_string().contains("tally up --canary billing"), "{e}");
    }
}
