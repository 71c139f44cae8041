//! The service mesh as `tally up` runs it: a `tally-proxy` sidecar beside
//! every service instance and a browser gateway, each configured with
//! `tally-proxy`'s own config types (so a schema change breaks this build, not
//! a running mesh).
//!
//! - [`policy`]: who may call what (the inbound authorization rules);
//! - [`routes`]: how a caller's sidecar treats each target (deadlines, retries);
//! - [`sidecar`] and [`gateway`]: the config each proxy gets;
//! - [`certs`]: the mesh CA and the short-lived workload certificates;
//! - [`admin_token`]: the bearer token the proxies' admin APIs require for changes.
//!
//! The policy and the routes are data, so the README table, the printed
//! summary and the Kubernetes manifests in `deploy/k8s/` are checked against
//! them.

pub mod admin_token;
pub mod certs;
pub mod gateway;
pub mod policy;
pub mod routes;
pub mod sidecar;

#[cfg(test)]
mod k8s_tests;

pub use certs::{DEFAULT_CERT_VALIDITY, certs_dir, issue_certificates, parse_validity, renew};
pub use gateway::gateway;
pub use policy::policy_lines;
pub use sidecar::sidecar;

/// Trust domain of every identity in the mesh.
pub const TRUST_DOMAIN: &str = tally_certs::spiffe::DEFAULT_TRUST_DOMAIN;
/// Namespace of every identity `tally up` issues (and of `deploy/k8s/`).
pub const NAMESPACE: &str = "tally";

/// `spiffe://tally.local/ns/tally/sa/<service>`.
pub fn spiffe_id(service: &str) -> String {
    format!("spiffe://{TRUST_DOMAIN}/ns/{NAMESPACE}/sa/{service}")
}

/// A proxy config as the text table `tally up` writes to the proxy's file.
fn to_table(cfg: &tally_proxy::config::Config) -> Result<toml::Table, String> {
    toml::Table::try_from(cfg).map_err(|e| format!("the proxy config does not serialise: {e}"))
}

#[cfg(test)]
pub(crate) mod test_plan {
    //! The plan the mesh tests read: the real platform with two `user`
    //! replicas, and its proxy configs read back by `tally_proxy` itself.

    use crate::up::plan::{Options, Plan, ReplicaArg, build};
    use crate::up::platform::platform;
    use std::path::PathBuf;

    pub fn plan() -> Plan {
        build(
            &platform(),
            &Options {
                data_dir: PathBuf::from("/tmp/t"),
                base_port: 50051,
                replicas: vec![ReplicaArg::One("user".into(), 2)],
                log_format: "pretty".into(),
            },
        )
        .expect("plan")
    }

    /// The config file of instance `name`, through the proxy's own parser and
    /// validation: what `tally-proxy --config` would accept at start.
    pub fn proxy(plan: &Plan, name: &str) -> tally_proxy::config::Config {
        let inst = plan
            .instances
            .iter()
            .find(|i| i.name == name)
            .unwrap_or_else(|| panic!("no {name}"));
        let cfg = tally_proxy::config::Config::parse(name, &inst.config).expect("parses");
        cfg.validate(name).expect("valid");
        cfg
    }
}
