//! Checks that the Kubernetes manifests in `deploy/k8s/` carry the same
//! policy, routes, gateway and admin token file as the proxies `tally up` writes.

use super::gateway::{GATEWAY_TARGETS, auth, gateway_routes};
use super::policy::authz_rules;
use super::routes::service_config;
use super::{NAMESPACE, admin_token};
use crate::up::platform::platform;
use std::path::Path;

/// Where the manifests mount the admin token (the owner-only copy of the Secret).
const K8S_ADMIN_TOKEN: &str = "/etc/tally/admin/admin-token";
/// The gateway's listener in its pod (the `http` port of the Service `gateway`).
const K8S_GATEWAY_LISTEN: &str = "0.0.0.0:8080";

/// The text of `deploy/k8s/<file>.yaml`.
fn manifest(file: &str) -> String {
    let path = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../deploy/k8s")
        .join(format!("{file}.yaml"));
    std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

/// The `proxy.toml: |` block of a Kubernetes manifest, dedented.
fn k8s_proxy_toml(file: &str) -> String {
    let text = manifest(file);
    let mut lines = text.lines().skip_while(|l| l.trim() != "proxy.toml: |");
    lines.next().expect("a proxy.toml block");
    lines
        .take_while(|l| l.is_empty() || l.starts_with("    "))
        .map(|l| l.get(4..).unwrap_or(""))
        .collect::<Vec<_>>()
        .join("\n")
}

/// The proxy config of `deploy/k8s/<file>.yaml`, parsed and validated by
/// `tally-proxy` itself, with the identity and admin token checked.
fn k8s_proxy(file: &str, identity: &str) -> tally_proxy::config::Config {
    let cfg = tally_proxy::config::Config::parse(identity, &k8s_proxy_toml(file))
        .unwrap_or_else(|e| panic!("deploy/k8s/{file}.yaml: {e}"));
    cfg.validate(identity).expect("valid");
    let id = cfg.identity.as_ref().expect("mTLS");
    assert_eq!(
        (id.namespace.as_str(), id.service.as_str()),
        (NAMESPACE, identity)
    );
    assert_eq!(
        cfg.admin.token_file.as_deref(),
        Some(Path::new(K8S_ADMIN_TOKEN)),
        "deploy/k8s/{file}.yaml admin token"
    );
    cfg
}

/// Every `[services.<t>]` of a k8s proxy is what `tally up` writes for `t`,
/// with the target's Service as the one endpoint.
fn assert_same_routes(file: &str, cfg: &tally_proxy::config::Config, want: &[&str]) {
    let targets: Vec<&str> = cfg.services.keys().map(String::as_str).collect();
    let mut want = want.to_vec();
    want.sort();
    assert_eq!(targets, want, "deploy/k8s/{file}.yaml routes");
    for (t, s) in &cfg.services {
        let ours = service_config(t, vec![format!("{t}.tally.svc.cluster.local:4143")]);
        // A canary is the one thing Kubernetes adds (checked below).
        let s = tally_proxy::config::ServiceConfig {
            canary: None,
            ..s.clone()
        };
        assert_eq!(
            toml::to_string(&s).expect("toml"),
            toml::to_string(&ours).expect("toml"),
            "deploy/k8s/{file}.yaml [services.{t}]"
        );
    }
}

#[test]
fn kubernetes_sidecars_carry_the_same_policy_and_routes() {
    for spec in platform().services.into_iter().filter(|s| !s.mesh_only) {
        let name = spec.name;
        let cfg = k8s_proxy(name, name);
        assert_eq!(
            cfg.inbound.as_ref().expect("inbound").authz,
            authz_rules(name),
            "deploy/k8s/{name}.yaml authz (with the gateway's grants)"
        );
        assert_same_routes(name, &cfg, spec.outbound);
    }
}

#[test]
fn the_kubernetes_gateway_has_the_same_routes_auth_and_targets() {
    let cfg = k8s_proxy("gateway", "gateway");
    assert!(cfg.inbound.is_none() && cfg.outbound.is_none());
    let gw = cfg.gateway.as_ref().expect("[gateway]");
    assert_eq!(gw.listen.to_string(), K8S_GATEWAY_LISTEN);
    assert_eq!(
        format!("{:?}", gw.routes),
        format!("{:?}", gateway_routes()),
        "deploy/k8s/gateway.yaml routes"
    );
    assert_eq!(
        format!("{:?}", gw.auth),
        format!("{:?}", Some(auth())),
        "deploy/k8s/gateway.yaml [gateway.auth]"
    );
    let targets: Vec<&str> = GATEWAY_TARGETS.iter().map(|(t, _)| *t).collect();
    assert_same_routes("gateway", &cfg, &targets);
    // The Service exposes the gateway listener, never the admin port.
    let text = manifest("gateway");
    assert!(text.contains("containerPort: 8080") && text.contains("targetPort: http"));
}

#[test]
fn the_analytics_canary_is_a_second_deployment_behind_a_zero_weight() {
    let cfg = k8s_proxy("gateway", "gateway");
    let canary = cfg.services["analytics"].canary.as_ref().expect("canary");
    assert_eq!(
        canary.endpoints,
        ["analytics-canary.tally.svc.cluster.local:4143"]
    );
    assert_eq!(canary.weight, 0, "no traffic until a rollout");
    let others: Vec<&String> = cfg
        .services
        .iter()
        .filter(|(t, s)| *t != "analytics" && s.canary.is_some())
        .map(|(t, _)| t)
        .collect();
    assert!(others.is_empty(), "{others:?}");
    // Same sidecar config and identity as the stable pods, its own Service.
    let text = manifest("analytics-canary");
    assert!(text.contains("name: analytics-proxy\n"));
    assert!(text.contains("secretName: analytics-mesh-cert"));
    assert!(text.contains("  name: analytics-canary\n"));
    assert!(!text.contains("app.kubernetes.io/name: analytics\n"));
}

#[test]
fn every_proxy_in_kubernetes_reads_an_owner_only_token_copy() {
    // tally-proxy refuses a token file readable by group or others, and a
    // Secret volume's files belong to root: each pod copies the token first.
    for file in [
        "user",
        "polling",
        "notification",
        "analytics",
        "billing",
        "payment",
        "gateway",
    ] {
        let text = manifest(file);
        assert!(
            text.contains(r#"command: ["install", "-m", "0400", "/etc/tally/admin-secret/admin-token", "/etc/tally/admin/admin-token"]"#),
            "deploy/k8s/{file}.yaml copies the admin token owner-only"
        );
        assert!(text.contains("secretName: tally-proxy-admin-token"));
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
