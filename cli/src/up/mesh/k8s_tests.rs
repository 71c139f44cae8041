//! Checks that the Kubernetes manifests in `deploy/k8s/` carry the same
//! policy, routes and admin token file as the sidecars `tally up` writes.

use super::policy::authz_rules_without;
use super::routes::service_config;
use super::{NAMESPACE, admin_token};
use crate::up::platform::platform;
use std::path::Path;

/// Where the manifests mount the admin token Secret.
const K8S_ADMIN_TOKEN: &str = "/etc/tally/admin/admin-token";

/// The `proxy.toml: |` block of a Kubernetes manifest, dedented.
fn k8s_proxy_toml(service: &str) -> String {
    let path = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../deploy/k8s")
        .join(format!("{service}.yaml"));
    let text = std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    let mut lines = text.lines().skip_while(|l| l.trim() != "proxy.toml: |");
    lines.next().expect("a proxy.toml block");
    lines
        .take_while(|l| l.is_empty() || l.starts_with("    "))
        .map(|l| l.get(4..).unwrap_or(""))
        .collect::<Vec<_>>()
        .join("\n")
}

#[test]
fn kubernetes_sidecars_carry_the_same_policy_and_routes() {
    // deploy/k8s/ has no gateway yet: its grants are left out here.
    for spec in platform().services.into_iter().filter(|s| !s.mesh_only) {
        let name = spec.name;
        let cfg = tally_proxy::config::Config::parse(name, &k8s_proxy_toml(name))
            .unwrap_or_else(|e| panic!("deploy/k8s/{name}.yaml: {e}"));
        cfg.validate(name).expect("valid");
        let id = cfg.identity.as_ref().expect("mTLS");
        assert_eq!(
            (id.namespace.as_str(), id.service.as_str()),
            (NAMESPACE, name)
        );
        assert_eq!(
            cfg.admin.token_file.as_deref(),
            Some(Path::new(K8S_ADMIN_TOKEN)),
            "deploy/k8s/{name}.yaml admin token"
        );
        assert_eq!(
            cfg.inbound.as_ref().expect("inbound").authz,
            authz_rules_without(name, &["gateway"]),
            "deploy/k8s/{name}.yaml authz"
        );
        let targets: Vec<&str> = cfg.services.keys().map(String::as_str).collect();
        let mut want: Vec<&str> = spec.outbound.to_vec();
        want.sort();
        assert_eq!(targets, want, "deploy/k8s/{name}.yaml routes");
        for (t, s) in &cfg.services {
            let ours = service_config(t, vec![format!("{t}.tally.svc.cluster.local:4143")]);
            assert_eq!(
                toml::to_string(s).expect("toml"),
                toml::to_string(&ours).expect("toml"),
                "deploy/k8s/{name}.yaml [services.{t}]"
            );
        }
    }
}

#[test]
fn the_token_file_name_matches_tally_up() {
    let name = admin_token::path(Path::new("/x"));
    assert_eq!(
        name.file_name(),
        Path::new(K8S_ADMIN_TOKEN).file_name(),
        "the Secret key and tally up's file share a name"
    );
}
