//! Where Prometheus finds the platform's metrics: each instance's `/metrics`
//! address (a service's own metrics listener, a sidecar's or the gateway's
//! admin listener) and the scrape config `tally up` writes to
//! `<data-dir>/prometheus.yml`. The YAML is written by hand: it is a fixed,
//! small shape, and every string in it is emitted double-quoted with JSON
//! escapes, which YAML reads unchanged.

use super::plan::{Instance, METRICS_PORT, Plan};
use super::platform::HOST;
use std::fmt::Write as _;
use std::net::SocketAddr;
use std::time::Duration;

/// File name of the scrape config, in the data directory.
pub const FILE: &str = "prometheus.yml";
/// How often Prometheus scrapes every target.
pub const SCRAPE_INTERVAL: Duration = Duration::from_secs(15);
/// Path every target serves its metrics on.
pub const METRICS_PATH: &str = "/metrics";
/// Job of the services' own metrics listeners.
pub const SERVICES_JOB: &str = "tally-services";
/// Job of the sidecars' admin listeners.
pub const SIDECARS_JOB: &str = "tally-sidecars";
/// Job of the browser gateway's admin listener.
pub const GATEWAY_JOB: &str = "tally-gateway";

/// One scrape target: the job it belongs to and its `/metrics` address.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Target {
    /// The Prometheus job (service or sidecar kind) it is scraped under.
    pub job: &'static str,
    /// Where its `/metrics` endpoint listens.
    pub addr: SocketAddr,
}

/// Where `inst` serves its metrics, if it does.
pub fn target(inst: &Instance) -> Option<Target> {
    let at = |port: &str, job| {
        inst.ports.get(port).map(|p| Target {
            job,
            addr: SocketAddr::new(HOST, *p),
        })
    };
    if inst.sidecar_of.is_some() {
        at("admin", SIDECARS_JOB)
    } else if inst.ports.contains_key(METRICS_PORT) {
        at(METRICS_PORT, SERVICES_JOB)
    } else if inst.binary == "tally-proxy" {
        at("admin", GATEWAY_JOB)
    } else {
        None
    }
}

/// `http://host:port/metrics` of `inst`, for the status table.
pub fn url(inst: &Instance) -> Option<String> {
    target(inst).map(|t| format!("http://{}{METRICS_PATH}", t.addr))
}

fn quoted(s: &str) -> String {
    serde_json::Value::from(s).to_string()
}

/// The scrape config: one job per kind of target, one static config per
/// instance labelled with its `instance` name and `service`.
pub fn render(plan: &Plan) -> String {
    let secs = SCRAPE_INTERVAL.as_secs();
    let mut out = String::new();
    let _ = writeln!(
        out,
        "# Written by `tally up`; regenerated on every start.\n\
         # Run: prometheus --config.file={}\n\
         global:\n  scrape_interval: {secs}s\n  evaluation_interval: {secs}s\n\
         scrape_configs:",
        plan.data_dir.join(FILE).display()
    );
    for job in [SERVICES_JOB, SIDECARS_JOB, GATEWAY_JOB] {
        let targets: Vec<(&Instance, Target)> = plan
            .instances
            .iter()
            .filter_map(|i| target(i).map(|t| (i, t)))
            .filter(|(_, t)| t.job == job)
            .collect();
        if targets.is_empty() {
            continue;
        }
        let _ = writeln!(
            out,
            "  - job_name: {}\n    metrics_path: {}\n    static_configs:",
            quoted(job),
            quoted(METRICS_PATH)
        );
        for (inst, t) in targets {
            let _ = writeln!(
                out,
                "      - targets: [{}]\n        labels:\n          instance: {}\n          service: {}",
                quoted(&t.addr.to_string()),
                quoted(&inst.name),
                quoted(&inst.service)
            );
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::up::mesh::test_plan::plan;

    #[test]
    fn every_service_sidecar_and_the_gateway_is_a_target() {
        let plan = plan();
        let text = render(&plan);
        let targets: Vec<Target> = plan.instances.iter().filter_map(target).collect();
        assert_eq!(targets.len(), plan.instances.len(), "every instance");
        let count = |job| targets.iter().filter(|t| t.job == job).count();
        assert_eq!(count(SERVICES_JOB), 7, "six services, two user replicas");
        assert_eq!(count(SIDECARS_JOB), 7);
        assert_eq!(count(GATEWAY_JOB), 1);
        for t in &targets {
            assert!(text.contains(&format!("[\"{}\"]", t.addr)), "{t:?}");
        }
        assert!(text.contains("instance: \"user-2-proxy\""));
        assert!(text.contains(&format!("scrape_interval: {}s", SCRAPE_INTERVAL.as_secs())));
        let user = plan
            .instances
            .iter()
            .find(|i| i.name == "user-1")
            .expect("user-1");
        let cfg: toml::Table = user.config.parse().expect("toml");
        assert_eq!(
            cfg["telemetry"]["metrics_addr"]
                .as_str()
                .map(|a| format!("http://{a}/metrics")),
            url(user),
            "the service serves metrics where Prometheus looks"
        );
    }
}
