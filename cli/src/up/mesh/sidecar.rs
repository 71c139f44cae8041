//! The sidecar beside every service instance: its spec for the platform and
//! the `tally-proxy` config it gets (admin with the token file, inbound with
//! the authorization rules, outbound with the routes, the mTLS identity).

use super::super::platform::{ConfigContext, SidecarSpec};
use super::{NAMESPACE, admin_token, certs, policy, routes, to_table};
use tally_proxy::config::{AdminConfig, Config, IdentityConfig, InboundConfig, OutboundConfig};

/// The sidecar beside every service.
pub fn sidecar() -> SidecarSpec {
    SidecarSpec {
        binary: "tally-proxy",
        env_prefix: "TALLY_PROXY_",
        ports: &["inbound", "outbound", "admin"],
        config: proxy_config,
        env: proxy_env,
    }
}

/// The proxy reads its log format from the environment; it follows
/// `--log-format` like the services.
fn proxy_env(ctx: &ConfigContext<'_>) -> Vec<(String, String)> {
    vec![("TALLY_LOG_FORMAT".into(), ctx.log_format.into())]
}

/// The loopback address of one of the instance's named ports.
pub(super) fn port(ctx: &ConfigContext<'_>, name: &str) -> Result<std::net::SocketAddr, String> {
    ctx.addr(name)
        .ok_or_else(|| format!("{} has no `{name}` port", ctx.instance))
}

/// The `[admin]` section: its listener, the token file every change
/// through it must present, and the instance's audit log.
pub(super) fn admin(ctx: &ConfigContext<'_>) -> Result<AdminConfig, String> {
    let mut a = AdminConfig::new(port(ctx, "admin")?);
    a.token_file = Some(admin_token::path(ctx.data_dir));
    a.audit_file = Some(crate::up::plan::audit_file(ctx.data_dir, ctx.instance));
    Ok(a)
}

/// The mesh identity of `ctx.service`, from `<data-dir>/mesh/certs`.
pub(super) fn identity(ctx: &ConfigContext<'_>) -> IdentityConfig {
    let dir = certs::certs_dir(ctx.data_dir);
    IdentityConfig {
        bundle: dir.join(tally_certs::ca::BUNDLE_FILE),
        cert: dir.join(format!("{}.pem", ctx.service)),
        key: dir.join(format!("{}-key.pem", ctx.service)),
        namespace: NAMESPACE.into(),
        service: ctx.service.into(),
    }
}

/// The sidecar config for one service instance.
fn proxy_config(ctx: &ConfigContext<'_>) -> Result<toml::Table, String> {
    let local_app = ctx
        .app_addr
        .ok_or_else(|| format!("{} fronts no service address", ctx.instance))?;
    let mut inbound = InboundConfig::new(port(ctx, "inbound")?, local_app);
    inbound.authz = policy::authz_rules(ctx.service);
    let cfg = Config {
        admin: admin(ctx)?,
        inbound: Some(inbound),
        outbound: Some(OutboundConfig::new(port(ctx, "outbound")?)),
        gateway: None,
        identity: Some(identity(ctx)),
        limits: Default::default(),
        services: routes::service_configs(ctx),
        telemetry: Default::default(),
    };
    to_table(&cfg)
}

#[cfg(test)]
mod tests {
    use crate::up::mesh::routes::UNARY_ROUTE_TIMEOUT_MS;
    use crate::up::mesh::test_plan::{plan, proxy};
    use crate::up::plan::{Options, ProbeKind, build};
    use crate::up::platform::platform;
    use std::path::{Path, PathBuf};

    #[test]
    fn every_instance_gets_a_valid_sidecar_config() {
        let plan = plan();
        let sidecars: Vec<&str> = plan
            .instances
            .iter()
            .filter(|i| i.sidecar_of.is_some())
            .map(|i| i.name.as_str())
            .collect();
        assert_eq!(
            sidecars,
            [
                "user-1-proxy",
                "user-2-proxy",
                "payment-proxy",
                "polling-proxy",
                "billing-proxy",
                "notification-proxy",
                "analytics-proxy"
            ]
        );
        for name in sidecars {
            let cfg = proxy(&plan, name);
            let id = cfg.identity.expect("mTLS identity");
            assert_eq!(id.namespace, "tally");
            assert_eq!(
                id.bundle,
                PathBuf::from("/tmp/t/mesh/certs/bundle.pem"),
                "{name}"
            );
        }
    }

    #[test]
    fn service_ports_stay_put_and_sidecars_follow() {
        let plan = build(
            &platform(),
            &Options {
                data_dir: PathBuf::from("/tmp/t"),
                base_port: 50051,
                replicas: vec![],
                log_format: "pretty".into(),
            },
        )
        .expect("plan");
        let port = |n: &str, p: &str| {
            plan.instances
                .iter()
                .find(|i| i.name == n)
                .map(|i| i.ports[p])
                .expect("instance")
        };
        assert_eq!(port("user", "grpc"), 50051);
        assert_eq!(port("payment", "grpc"), 50056);
        assert_eq!(port("user-proxy", "inbound"), 50057);
        assert_eq!(port("user-proxy", "outbound"), 50058);
        assert_eq!(port("user-proxy", "admin"), 50059);
        assert_eq!(port("polling-proxy", "inbound"), 50060);
        // The gateway's ports come after every sidecar's.
        assert_eq!(port("gateway", "gateway"), 50075);
        assert_eq!(port("gateway", "admin"), 50076);
        // Then each service's metrics listener.
        assert_eq!(port("user", "metrics"), 50077);
        assert_eq!(plan.ports().len(), 32);
        let probe = plan
            .instances
            .iter()
            .find(|i| i.name == "user-proxy")
            .and_then(|i| i.probe.clone())
            .expect("sidecar probe");
        assert_eq!(probe.kind, ProbeKind::HttpReady);
        assert_eq!(probe.addr.port(), 50059);
    }

    #[test]
    fn polling_calls_user_through_its_sidecar_to_both_user_sidecars() {
        let plan = plan();
        let polling: toml::Table = plan
            .instances
            .iter()
            .find(|i| i.name == "polling")
            .expect("polling")
            .config
            .parse()
            .expect("toml");
        let sidecar = proxy(&plan, "polling-proxy");
        let out = sidecar.outbound.as_ref().expect("outbound").listen;
        assert_eq!(
            polling["outbound"]["user"].as_str(),
            Some(format!("http://{out}").as_str())
        );
        assert_eq!(
            polling["outbound"]["billing"].as_str(),
            Some(format!("http://{out}").as_str())
        );
        let inbound = sidecar.inbound.as_ref().expect("inbound");
        assert_eq!(inbound.local_app.to_string(), "127.0.0.1:50053");
        let user_inbounds: Vec<String> = ["user-1-proxy", "user-2-proxy"]
            .iter()
            .map(|n| proxy(&plan, n).inbound.expect("inbound").listen.to_string())
            .collect();
        let user = &sidecar.services["user"];
        assert_eq!(user.endpoints, user_inbounds);
        assert_eq!(user.retry.max_attempts, 3);
        assert!(
            user.retry
                .idempotent_methods
                .contains(&"tally.user.v1.UserService/GetJwks".to_string())
        );
        assert_eq!(user.timeout_ms, UNARY_ROUTE_TIMEOUT_MS);
        // The feed is a long stream: no route deadline.
        assert_eq!(sidecar.services["billing"].timeout_ms, 0);
        assert_eq!(
            sidecar.services.keys().collect::<Vec<_>>(),
            ["billing", "user"],
            "a sidecar knows only the services its app calls"
        );
    }

    /// What `tally up` writes, `tally-proxy` accepts: every proxy config of
    /// the plan, as a file, through the proxy's own loader (parse,
    /// environment overrides, validation).
    #[test]
    fn every_written_proxy_config_loads_in_tally_proxy() {
        let plan = plan();
        let dir = tempfile::tempdir().expect("tmp");
        let mut proxies = 0;
        for inst in plan.instances.iter().filter(|i| i.binary == "tally-proxy") {
            let path = dir.path().join(format!("{}.toml", inst.name));
            std::fs::write(&path, &inst.config).expect("write");
            let cfg = tally_proxy::config::Config::load(&path)
                .unwrap_or_else(|e| panic!("{}: {e}\n{}", inst.name, inst.config));
            assert_eq!(
                cfg.admin.token_file.as_deref(),
                Some(Path::new("/tmp/t/admin-token")),
                "{}: the admin API needs the token",
                inst.name
            );
            // Serialising what was read gives the same config back.
            let again: toml::Table = toml::Table::try_from(&cfg).expect("serialise");
            let written: toml::Table = inst
                .config
                .parse()
                .unwrap_or_else(|e| panic!("{}: {e}", inst.name));
            assert_eq!(again, written, "{}", inst.name);
            proxies += 1;
        }
        // Seven sidecars (two user replicas) and the gateway.
        assert_eq!(proxies, 8);
    }
}
