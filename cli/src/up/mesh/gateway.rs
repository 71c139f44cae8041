//! The browser gateway: a `tally-proxy` with only a `[gateway]` listener
//! (gRPC-Web and gRPC), its own mesh identity `sa/gateway`, and a route per
//! public API to the target's inbound sidecars. Runs with the mesh only.

use super::super::platform::{ConfigContext, ServiceSpec};
use super::sidecar::{admin, identity, port};
use super::{routes, to_table};
use tally_proxy::config::Config;
use tally_proxy::defaults as d;
use tally_proxy::gateway::config::{Access, AuthConfig, CorsConfig, GatewayConfig, RouteConfig};

/// The gateway's place in the platform.
pub fn gateway() -> ServiceSpec {
    ServiceSpec {
        name: "gateway",
        binary: "tally-proxy",
        health_service: "",
        ports: &["gateway", "admin"],
        env_prefix: "TALLY_PROXY_",
        depends_on: &["user", "polling", "notification", "analytics", "billing"],
        outbound: &["user", "polling", "notification", "analytics", "billing"],
        sidecar: false,
        mesh_only: true,
        read_model: false,
        config: gateway_config,
    }
}

/// Methods of `tally.user.v1.UserService` a browser calls before it has a
/// token (and the key set the gateway itself fetches).
pub const GATEWAY_PUBLIC_METHODS: &[&str] = &["SignUp", "Login", "GetJwks", "RefreshAccessToken"];

/// Origins the gateway's CORS allows: the gateway matches origins exactly
/// (or `*`), so `http://localhost:*` is spelled out for the usual dev-server
/// ports.
pub const GATEWAY_DEV_ORIGINS: &[&str] = &[
    "http://localhost:3000",
    "http://localhost:4200",
    "http://localhost:5173",
    "http://localhost:8080",
    "http://127.0.0.1:3000",
    "http://127.0.0.1:5173",
];

/// The services the browser gateway routes to, and the gRPC API each serves
/// to edge clients (the feeds, payment and admin services are not public).
pub const GATEWAY_TARGETS: &[(&str, &str)] = &[
    ("user", "tally.user.v1.UserService"),
    ("polling", "tally.poll.v1.PollService"),
    ("notification", "tally.notification.v1.NotificationService"),
    ("analytics", "tally.analytics.v1.AnalyticsService"),
    ("billing", "tally.billing.v1.BillingService"),
];

/// The service whose `GetJwks` gives the gateway its token keys.
const JWKS_SERVICE: &str = "user";

/// The gateway's routes: the public user methods, then each target's
/// package, authenticated.
pub(super) fn gateway_routes() -> Vec<RouteConfig> {
    let mut routes: Vec<RouteConfig> = GATEWAY_PUBLIC_METHODS
        .iter()
        .map(|m| RouteConfig {
            prefix: format!("tally.user.v1.UserService/{m}"),
            service: JWKS_SERVICE.into(),
            access: Access::Public,
        })
        .collect();
    for (target, grpc_service) in GATEWAY_TARGETS {
        let package = grpc_service
            .rsplit_once('.')
            .map(|(p, _)| p)
            .unwrap_or(grpc_service);
        routes.push(RouteConfig {
            prefix: package.into(),
            service: (*target).into(),
            access: Access::Authenticated,
        });
    }
    routes
}

/// Edge token checks with the user service's keys, fetched through the mesh;
/// everything else at the proxy's defaults.
pub(super) fn auth() -> AuthConfig {
    AuthConfig {
        issuer: d::GATEWAY_JWT_ISSUER.into(),
        audience: d::GATEWAY_JWT_AUDIENCE.into(),
        leeway_s: d::GATEWAY_JWT_LEEWAY_S,
        jwks_service: Some(JWKS_SERVICE.into()),
        jwks_file: None,
        jwks_refresh_ms: d::GATEWAY_JWKS_REFRESH_MS,
        jwks_min_refetch_ms: d::GATEWAY_JWKS_MIN_REFETCH_MS,
    }
}

/// The gateway's config: routes to the targets' inbound sidecars.
fn gateway_config(ctx: &ConfigContext<'_>) -> Result<toml::Table, String> {
    let gateway = GatewayConfig {
        cors: CorsConfig {
            allowed_origins: GATEWAY_DEV_ORIGINS.iter().map(|o| (*o).into()).collect(),
            ..CorsConfig::default()
        },
        auth: Some(auth()),
        routes: gateway_routes(),
        ..GatewayConfig::new(port(ctx, "gateway")?)
    };
    let cfg = Config {
        admin: admin(ctx)?,
        inbound: None,
        outbound: None,
        gateway: Some(gateway),
        identity: Some(identity(ctx)),
        limits: Default::default(),
        services: routes::service_configs(ctx),
        telemetry: Default::default(),
    };
    to_table(&cfg)
}

#[cfg(test)]
mod tests {
    use crate::up::mesh::NAMESPACE;
    use crate::up::mesh::test_plan::{plan, proxy};
    use crate::up::plan::ProbeKind;
    use crate::up::platform::platform;
    use std::path::PathBuf;

    #[test]
    fn the_gateway_routes_public_apis_to_the_inbound_sidecars() {
        let plan = plan();
        let cfg = proxy(&plan, "gateway");
        assert!(cfg.inbound.is_none() && cfg.outbound.is_none());
        let id = cfg.identity.as_ref().expect("identity");
        assert_eq!(
            (id.namespace.as_str(), id.service.as_str()),
            (NAMESPACE, "gateway")
        );
        assert_eq!(id.cert, PathBuf::from("/tmp/t/mesh/certs/gateway.pem"));
        let gw = cfg.gateway.as_ref().expect("[gateway]");
        assert_eq!(gw.listen.to_string(), "127.0.0.1:50079");
        let auth = gw.auth.as_ref().expect("auth");
        assert_eq!(auth.jwks_service.as_deref(), Some("user"));
        assert!(
            gw.cors
                .allowed_origins
                .contains(&"http://localhost:5173".to_string())
        );
        let user_inbounds: Vec<String> = ["user-1-proxy", "user-2-proxy"]
            .iter()
            .map(|n| proxy(&plan, n).inbound.expect("inbound").listen.to_string())
            .collect();
        assert_eq!(cfg.services["user"].endpoints, user_inbounds);
        assert_eq!(
            cfg.services.keys().collect::<Vec<_>>(),
            ["analytics", "billing", "notification", "polling", "user"]
        );
        let access = |prefix: &str| {
            gw.routes
                .iter()
                .find(|r| r.prefix == prefix)
                .map(|r| (r.service.clone(), format!("{:?}", r.access)))
                .unwrap_or_else(|| panic!("no route {prefix}"))
        };
        for m in ["SignUp", "Login", "GetJwks", "RefreshAccessToken"] {
            assert_eq!(
                access(&format!("tally.user.v1.UserService/{m}")),
                ("user".into(), "Public".into())
            );
        }
        assert_eq!(
            access("tally.user.v1"),
            ("user".into(), "Authenticated".into())
        );
        assert_eq!(
            access("tally.poll.v1"),
            ("polling".into(), "Authenticated".into())
        );
        assert_eq!(
            access("tally.billing.v1"),
            ("billing".into(), "Authenticated".into())
        );
        assert_eq!(gw.routes.len(), 9);
        // Ready on its admin port; started after the services it routes to.
        let inst = plan
            .instances
            .iter()
            .find(|i| i.name == "gateway")
            .expect("gw");
        let probe = inst.probe.as_ref().expect("probe");
        assert_eq!(probe.kind, ProbeKind::HttpReady);
        let billing = plan
            .instances
            .iter()
            .find(|i| i.name == "billing")
            .expect("b");
        assert!(inst.stage > billing.stage);
    }

    #[test]
    fn no_mesh_means_no_gateway() {
        let p = platform().without_mesh();
        assert!(p.services.iter().all(|s| s.name != "gateway"));
    }
}
