//! The service mesh as `tally up` runs it: a `tally-proxy` sidecar beside
//! every service instance, the config each sidecar gets (listeners, identity,
//! routes with their resilience settings, the authorization policy), and the
//! certificates: a CA under `<data-dir>/mesh/ca`, created once and reused, and
//! one short-lived workload certificate per service, renewed in the
//! background while `tally up` runs. The proxies re-read renewed files
//! themselves.
//!
//! The policy ([`POLICY`]) and the routes ([`ROUTES`]) are data, so the
//! README table, the printed summary and the Kubernetes manifests in
//! `deploy/k8s/` can be checked against them.

use super::platform::{ConfigContext, ServiceSpec, SidecarSpec};
use super::{UpError, say};
use serde::Serialize;
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, SystemTime};
use tally_certs::{CertAuthority, Rotator, SpiffeId};

/// Trust domain of every identity in the mesh.
pub const TRUST_DOMAIN: &str = tally_certs::spiffe::DEFAULT_TRUST_DOMAIN;
/// Namespace of every identity `tally up` issues (and of `deploy/k8s/`).
pub const NAMESPACE: &str = "tally";
/// Default lifetime of a workload certificate (`--cert-validity`).
pub const DEFAULT_CERT_VALIDITY: &str = "24h";
/// Default deadline of a unary call that carries no `grpc-timeout`.
const UNARY_ROUTE_TIMEOUT_MS: u64 = 10_000;
/// Attempts (first included) for methods a route marks idempotent.
const READ_ATTEMPTS: u32 = 3;

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

/// The browser gateway: a `tally-proxy` with only a `[gateway]` listener
/// (gRPC-Web and gRPC), its own mesh identity `sa/gateway`, and a route per
/// public API, each to the target's inbound sidecars. Runs with the mesh
/// only.
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

#[derive(Serialize)]
struct GatewayProxyConfig {
    admin: Listen,
    gateway: GatewaySection,
    identity: Identity,
    services: BTreeMap<String, ServiceRoute>,
}

#[derive(Serialize)]
struct GatewaySection {
    listen: String,
    cors: GatewayCors,
    auth: GatewayAuth,
    routes: Vec<GatewayRoute>,
}

#[derive(Serialize)]
struct GatewayCors {
    allowed_origins: Vec<String>,
}

#[derive(Serialize)]
struct GatewayAuth {
    jwks_service: String,
    issuer: String,
    audience: String,
}

#[derive(Serialize)]
struct GatewayRoute {
    prefix: String,
    service: String,
    access: String,
}

/// The gateway's routes: the public user methods, then each target's
/// package, authenticated.
fn gateway_routes() -> Vec<GatewayRoute> {
    let mut routes: Vec<GatewayRoute> = GATEWAY_PUBLIC_METHODS
        .iter()
        .map(|m| GatewayRoute {
            prefix: format!("tally.user.v1.UserService/{m}"),
            service: "user".into(),
            access: "public".into(),
        })
        .collect();
    for (target, grpc_service) in GATEWAY_TARGETS {
        let package = grpc_service
            .rsplit_once('.')
            .map(|(p, _)| p)
            .unwrap_or(grpc_service);
        routes.push(GatewayRoute {
            prefix: package.into(),
            service: (*target).into(),
            access: "authenticated".into(),
        });
    }
    routes
}

/// The gateway's config: routes to the targets' inbound sidecars.
fn gateway_config(ctx: &ConfigContext) -> toml::Table {
    let addr = |port: &str| ctx.addr(port).map(|a| a.to_string()).unwrap_or_default();
    let cfg = GatewayProxyConfig {
        admin: Listen {
            listen: addr("admin"),
        },
        gateway: GatewaySection {
            listen: addr("gateway"),
            cors: GatewayCors {
                allowed_origins: GATEWAY_DEV_ORIGINS.iter().map(|o| (*o).into()).collect(),
            },
            auth: GatewayAuth {
                jwks_service: "user".into(),
                issuer: "tally-user".into(),
                audience: "tally".into(),
            },
            routes: gateway_routes(),
        },
        identity: identity(ctx),
        services: service_routes(ctx),
    };
    match toml::Value::try_from(&cfg) {
        Ok(toml::Value::Table(t)) => t,
        // Impossible for these plain structs; an empty file would make the
        // proxy exit naming the file.
        _ => toml::Table::new(),
    }
}

/// The proxy reads its log format from the environment; it follows
/// `--log-format` like the services.
fn proxy_env(ctx: &ConfigContext) -> Vec<(String, String)> {
    vec![("TALLY_LOG_FORMAT".into(), ctx.log_format.into())]
}

/// `spiffe://tally.local/ns/tally/sa/<service>`.
pub fn spiffe_id(service: &str) -> String {
    format!("spiffe://{TRUST_DOMAIN}/ns/{NAMESPACE}/sa/{service}")
}

/// Where the CA lives: `<data-dir>/mesh/ca`.
pub fn ca_dir(data_dir: &Path) -> PathBuf {
    data_dir.join("mesh").join("ca")
}

/// Where workload certificates and the trust bundle live: `<data-dir>/mesh/certs`.
pub fn certs_dir(data_dir: &Path) -> PathBuf {
    data_dir.join("mesh").join("certs")
}

/// One entry of the authorization policy: which callers the `target`'s
/// inbound sidecar lets through to `grpc_service` (all methods when
/// `methods` is empty).
#[derive(Debug, Clone, Copy)]
pub struct Grant {
    pub target: &'static str,
    pub grpc_service: &'static str,
    pub methods: &'static [&'static str],
    pub callers: &'static [&'static str],
}

/// The services the browser gateway routes to, and the gRPC API each serves
/// to edge clients (the feeds, payment and admin services are not public).
pub const GATEWAY_TARGETS: &[(&str, &str)] = &[
    ("user", "tally.user.v1.UserService"),
    ("polling", "tally.poll.v1.PollService"),
    ("notification", "tally.notification.v1.NotificationService"),
    ("analytics", "tally.analytics.v1.AnalyticsService"),
    ("billing", "tally.billing.v1.BillingService"),
];

/// The authorization policy of the inbound sidecars. A call no grant allows
/// is denied with PERMISSION_DENIED; a sidecar whose service has no grant
/// denies every call (its service is reached by operators and clients on its
/// own port, not through the mesh). Health, reflection and
/// `ConsumerAdminService` are operator tools: they are on the service's own
/// port, not on the mesh, except the one health check billing makes.
pub const POLICY: &[Grant] = &[
    // Token verification: the JWKS and API-key lookups, nothing else. The
    // gateway verifies tokens and API keys at the edge too. (A method rule is
    // more specific than the gateway's service-wide grant below, so the
    // gateway must be named here.)
    Grant {
        target: "user",
        grpc_service: "tally.user.v1.UserService",
        methods: &["GetJwks"],
        callers: &["polling", "notification", "analytics", "billing", "gateway"],
    },
    Grant {
        target: "user",
        grpc_service: "tally.user.v1.UserService",
        methods: &["VerifyApiKey"],
        callers: &["polling", "notification", "analytics", "billing", "gateway"],
    },
    // Polling's event feed: its two consumers.
    Grant {
        target: "polling",
        grpc_service: "tally.events.v1.EventFeedService",
        methods: &[],
        callers: &["notification", "analytics"],
    },
    // Billing's event feed (PlanLimitsGranted): polling.
    Grant {
        target: "billing",
        grpc_service: "tally.events.v1.EventFeedService",
        methods: &[],
        callers: &["polling"],
    },
    // Payments: only billing's saga.
    Grant {
        target: "payment",
        grpc_service: "tally.payment.v1.PaymentService",
        methods: &[],
        callers: &["billing"],
    },
    // The browser gateway: the public API of each service it routes to.
    Grant {
        target: "user",
        grpc_service: "tally.user.v1.UserService",
        methods: &[],
        callers: &["gateway"],
    },
    Grant {
        target: "polling",
        grpc_service: "tally.poll.v1.PollService",
        methods: &[],
        callers: &["gateway"],
    },
    Grant {
        target: "notification",
        grpc_service: "tally.notification.v1.NotificationService",
        methods: &[],
        callers: &["gateway"],
    },
    Grant {
        target: "analytics",
        grpc_service: "tally.analytics.v1.AnalyticsService",
        methods: &[],
        callers: &["gateway"],
    },
    Grant {
        target: "billing",
        grpc_service: "tally.billing.v1.BillingService",
        methods: &[],
        callers: &["gateway"],
    },
    // Billing's health depends on payment's, checked through the mesh.
    Grant {
        target: "payment",
        grpc_service: "grpc.health.v1.Health",
        methods: &["Check"],
        callers: &["billing"],
    },
];

/// How a caller's sidecar treats calls to one target service.
#[derive(Debug, Clone, Copy)]
pub struct Route {
    pub target: &'static str,
    /// Deadline for calls without `grpc-timeout`; 0 = none (streams).
    pub timeout_ms: u64,
    /// Methods retried on UNAVAILABLE (up to [`READ_ATTEMPTS`]), as
    /// `pkg.Service/Method`. Only reads: a call that may have changed
    /// something is never repeated by the mesh.
    pub idempotent: &'static [&'static str],
}

/// Outbound routes. Everything else (circuit breaker per endpoint, outlier
/// ejection, P2C load balancing over the target's replicas, bulkhead) uses
/// the proxy's defaults, listed in mesh-proxy/README.md.
pub const ROUTES: &[Route] = &[
    Route {
        target: "user",
        timeout_ms: UNARY_ROUTE_TIMEOUT_MS,
        idempotent: &[
            "tally.user.v1.UserService/GetJwks",
            "tally.user.v1.UserService/VerifyApiKey",
        ],
    },
    // Event feeds: `Subscribe` is a long-lived stream (no route deadline);
    // opening it again from the same cursor is safe, as is `GetHead`.
    Route {
        target: "polling",
        timeout_ms: 0,
        idempotent: &[
            "tally.events.v1.EventFeedService/Subscribe",
            "tally.events.v1.EventFeedService/GetHead",
        ],
    },
    Route {
        target: "billing",
        timeout_ms: 0,
        idempotent: &[
            "tally.events.v1.EventFeedService/Subscribe",
            "tally.events.v1.EventFeedService/GetHead",
        ],
    },
    // Charge and Refund carry idempotency keys, but billing's saga already
    // retries them with its own backoff and budget; the mesh adding attempts
    // would multiply them. Reads and the health check are retried.
    Route {
        target: "payment",
        timeout_ms: UNARY_ROUTE_TIMEOUT_MS,
        idempotent: &[
            "tally.payment.v1.PaymentService/GetCharge",
            "tally.payment.v1.PaymentService/ListCharges",
            "grpc.health.v1.Health/Check",
        ],
    },
];

/// The route for `target` (no retries and no deadline when unlisted).
pub fn route(target: &str) -> Route {
    ROUTES
        .iter()
        .find(|r| r.target == target)
        .copied()
        .unwrap_or(Route {
            target: "",
            timeout_ms: 0,
            idempotent: &[],
        })
}

// The subset of tally-proxy's config schema (mesh-proxy/README.md) that
// `tally up` sets; everything else keeps the proxy's defaults.

#[derive(Serialize)]
struct ProxyConfig {
    admin: Listen,
    inbound: Inbound,
    outbound: Listen,
    identity: Identity,
    services: BTreeMap<String, ServiceRoute>,
}

#[derive(Serialize)]
struct Listen {
    listen: String,
}

#[derive(Serialize)]
struct Inbound {
    listen: String,
    local_app: String,
    authz: Vec<AuthzRule>,
}

#[derive(Serialize, Debug, PartialEq)]
pub struct AuthzRule {
    pub service: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub method: Option<String>,
    pub allow: Vec<String>,
}

#[derive(Serialize)]
struct Identity {
    bundle: String,
    cert: String,
    key: String,
    namespace: String,
    service: String,
}

#[derive(Serialize)]
struct ServiceRoute {
    endpoints: Vec<String>,
    timeout_ms: u64,
    retry: Retry,
}

#[derive(Serialize)]
struct Retry {
    max_attempts: u32,
    retryable_statuses: Vec<String>,
    idempotent_methods: Vec<String>,
}

/// The inbound authorization rules of `target`'s sidecar, from [`POLICY`].
pub fn authz_rules(target: &str) -> Vec<AuthzRule> {
    authz_rules_without(target, &[])
}

/// [`authz_rules`] as if the `absent` callers did not exist (their grants
/// dropped), e.g. for a deployment without the gateway.
pub fn authz_rules_without(target: &str, absent: &[&str]) -> Vec<AuthzRule> {
    let mut rules = Vec::new();
    for g in POLICY.iter().filter(|g| g.target == target) {
        let allow: Vec<String> = g
            .callers
            .iter()
            .filter(|c| !absent.contains(c))
            .map(|c| spiffe_id(c))
            .collect();
        if allow.is_empty() {
            continue;
        }
        if g.methods.is_empty() {
            rules.push(AuthzRule {
                service: g.grpc_service.into(),
                method: None,
                allow,
            });
        } else {
            for m in g.methods {
                rules.push(AuthzRule {
                    service: g.grpc_service.into(),
                    method: Some((*m).into()),
                    allow: allow.clone(),
                });
            }
        }
    }
    if rules.is_empty() {
        // A rule that allows nobody: with any rule present the proxy denies
        // whatever is not allowed, so this sidecar lets nothing through.
        rules.push(AuthzRule {
            service: "*".into(),
            method: None,
            allow: Vec::new(),
        });
    }
    rules
}

fn path_text(p: &Path) -> String {
    p.display().to_string()
}

/// The mesh identity of `ctx.service`, from `<data-dir>/mesh/certs`.
fn identity(ctx: &ConfigContext) -> Identity {
    let certs = certs_dir(ctx.data_dir);
    Identity {
        bundle: path_text(&certs.join(tally_certs::ca::BUNDLE_FILE)),
        cert: path_text(&certs.join(format!("{}.pem", ctx.service))),
        key: path_text(&certs.join(format!("{}-key.pem", ctx.service))),
        namespace: NAMESPACE.into(),
        service: ctx.service.into(),
    }
}

/// A `[services.<target>]` table per target in `ctx.endpoints`.
fn service_routes(ctx: &ConfigContext) -> BTreeMap<String, ServiceRoute> {
    ctx.endpoints
        .iter()
        .map(|(target, eps)| {
            let r = route(target);
            let attempts = if r.idempotent.is_empty() {
                1
            } else {
                READ_ATTEMPTS
            };
            (
                target.clone(),
                ServiceRoute {
                    endpoints: eps.iter().map(|a| a.to_string()).collect(),
                    timeout_ms: r.timeout_ms,
                    retry: Retry {
                        max_attempts: attempts,
                        retryable_statuses: vec!["UNAVAILABLE".into()],
                        idempotent_methods: r.idempotent.iter().map(|m| (*m).into()).collect(),
                    },
                },
            )
        })
        .collect()
}

/// The sidecar config for one service instance.
fn proxy_config(ctx: &ConfigContext) -> toml::Table {
    let addr = |port: &str| ctx.addr(port).map(|a| a.to_string()).unwrap_or_default();
    let services = service_routes(ctx);
    let cfg = ProxyConfig {
        admin: Listen {
            listen: addr("admin"),
        },
        inbound: Inbound {
            listen: addr("inbound"),
            local_app: ctx.app_addr.map(|a| a.to_string()).unwrap_or_default(),
            authz: authz_rules(ctx.service),
        },
        outbound: Listen {
            listen: addr("outbound"),
        },
        identity: identity(ctx),
        services,
    };
    match toml::Value::try_from(&cfg) {
        Ok(toml::Value::Table(t)) => t,
        // Impossible for these plain structs (strings, numbers, lists and
        // tables); an empty file would make the proxy exit naming the file.
        _ => toml::Table::new(),
    }
}

/// Parses `--cert-validity` (`24h`, `15m`, `90s`), within what the CA issues.
pub fn parse_validity(s: &str) -> Result<Duration, String> {
    use tally_certs::ca::{MAX_WORKLOAD_VALIDITY, MIN_WORKLOAD_VALIDITY};
    let d = tally_certs::parse_duration(s).map_err(|e| e.to_string())?;
    if d < MIN_WORKLOAD_VALIDITY || d > MAX_WORKLOAD_VALIDITY {
        return Err(format!(
            "certificate validity must be between {} and {}, got {s}",
            tally_certs::format_duration(MIN_WORKLOAD_VALIDITY),
            tally_certs::format_duration(MAX_WORKLOAD_VALIDITY)
        ));
    }
    Ok(d)
}

fn certs_err(e: impl std::fmt::Display) -> UpError {
    UpError::Mesh(e.to_string())
}

/// Loads the CA from `<data-dir>/mesh/ca`, creating it on the first run.
pub fn load_or_create_ca(data_dir: &Path) -> Result<CertAuthority, UpError> {
    let dir = ca_dir(data_dir);
    if dir.join(tally_certs::ca::CA_CERT_FILE).exists() {
        let ca = CertAuthority::load(&dir).map_err(certs_err)?;
        if ca.trust_domain() != TRUST_DOMAIN {
            return Err(UpError::Mesh(format!(
                "the CA in {} is for trust domain {:?}, not {TRUST_DOMAIN:?}; \
                 move the directory away to create a new one",
                dir.display(),
                ca.trust_domain()
            )));
        }
        Ok(ca)
    } else {
        say(&format!("creating the mesh CA in {}", dir.display()));
        CertAuthority::init(&dir, TRUST_DOMAIN, false).map_err(certs_err)
    }
}

/// Writes the trust bundle and a fresh certificate for each service into
/// `<data-dir>/mesh/certs`, and returns one [`Rotator`] per service to keep
/// them fresh. Fresh on every start, so a changed `--cert-validity` or a new
/// CA takes effect at once.
pub fn issue_certificates(
    data_dir: &Path,
    services: &[&str],
    validity: Duration,
) -> Result<Vec<(String, Rotator)>, UpError> {
    let ca = Arc::new(load_or_create_ca(data_dir)?);
    let dir = certs_dir(data_dir);
    std::fs::create_dir_all(&dir).map_err(|e| UpError::Io {
        what: format!("cannot create {}", dir.display()),
        source: e,
    })?;
    // The CA directory's bundle holds every root workloads must trust (two
    // during a CA rotation); workloads read their copy.
    let bundle = std::fs::read_to_string(ca_dir(data_dir).join(tally_certs::ca::BUNDLE_FILE))
        .unwrap_or_else(|_| ca.cert_pem().to_string());
    write_replacing(&dir.join(tally_certs::ca::BUNDLE_FILE), bundle.as_bytes())?;
    let mut rotators = Vec::new();
    for service in services {
        let id = SpiffeId::new(TRUST_DOMAIN, NAMESPACE, *service).map_err(certs_err)?;
        let issued = ca.issue(&id, validity).map_err(certs_err)?;
        tally_certs::write_workload(&dir, &id, &issued).map_err(certs_err)?;
        rotators.push((
            (*service).to_string(),
            Rotator::new(ca.clone(), dir.clone(), id, validity),
        ));
    }
    Ok(rotators)
}

/// Writes a file through a temporary file and a rename, so a proxy reading
/// it never sees half of it.
fn write_replacing(path: &Path, contents: &[u8]) -> Result<(), UpError> {
    let tmp = path.with_extension("pem.tmp");
    std::fs::write(&tmp, contents)
        .and_then(|()| std::fs::rename(&tmp, path))
        .map_err(|e| UpError::Io {
            what: format!("cannot write {}", path.display()),
            source: e,
        })
}

/// Renews one service's certificate at 70% of its lifetime, forever (abort
/// the task to stop). Says so on stdout, like the rest of `tally up`.
pub async fn renew(service: String, rotator: Rotator) {
    loop {
        let now = SystemTime::now();
        let wait = match rotator.rotate_if_due(now) {
            Ok(status) => {
                if status.renewed {
                    say(&format!(
                        "renewed the mesh certificate of {service} (valid until {})",
                        tally_certs::inspect::rfc3339(status.not_after)
                    ));
                }
                status
                    .renew_at
                    .duration_since(now)
                    .unwrap_or_default()
                    .max(Duration::from_secs(1))
            }
            Err(e) => {
                say(&format!(
                    "renewing the mesh certificate of {service} failed ({e}); retrying in {}s",
                    tally_certs::rotate::RETRY_AFTER_ERROR.as_secs()
                ));
                tally_certs::rotate::RETRY_AFTER_ERROR
            }
        };
        tokio::time::sleep(wait).await;
    }
}

/// The policy in words, one line per service with a sidecar, for the
/// summary `tally up` prints.
pub fn policy_lines(services: &[&str]) -> Vec<String> {
    services
        .iter()
        .map(|target| {
            let grants: Vec<String> = POLICY
                .iter()
                .filter(|g| g.target == *target)
                .map(|g| {
                    let short = g.grpc_service.rsplit('.').next().unwrap_or(g.grpc_service);
                    let what = if g.methods.is_empty() {
                        short.to_string()
                    } else {
                        format!("{short}/{}", g.methods.join(","))
                    };
                    format!("{what} <- {}", g.callers.join(", "))
                })
                .collect();
            if grants.is_empty() {
                format!("{target}: no caller through the mesh")
            } else {
                format!("{target}: {}", grants.join("; "))
            }
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::up::plan::{Options, ProbeKind, build};
    use crate::up::platform::platform;

    fn plan() -> crate::up::plan::Plan {
        build(
            &platform(),
            &Options {
                data_dir: PathBuf::from("/tmp/t"),
                base_port: 50051,
                replicas: vec![crate::up::plan::ReplicaArg::One("user".into(), 2)],
                log_format: "pretty".into(),
            },
        )
        .expect("plan")
    }

    fn proxy(plan: &crate::up::plan::Plan, name: &str) -> tally_proxy::config::Config {
        let inst = plan
            .instances
            .iter()
            .find(|i| i.name == name)
            .unwrap_or_else(|| panic!("no {name}"));
        let cfg = tally_proxy::config::Config::parse(name, &inst.config).expect("parses");
        cfg.validate(name).expect("valid");
        cfg
    }

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
        assert_eq!(plan.ports().len(), 26);
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

    #[test]
    fn payment_writes_are_never_retried_by_the_mesh() {
        let plan = plan();
        let billing = proxy(&plan, "billing-proxy");
        let payment = &billing.services["payment"];
        for m in &payment.retry.idempotent_methods {
            assert!(
                !m.ends_with("/Charge") && !m.ends_with("/Refund") && m != "*",
                "{m}"
            );
        }
        for r in ROUTES {
            for m in r.idempotent {
                assert!(m.contains('/'), "{m}: use pkg.Service/Method");
            }
        }
    }

    #[test]
    fn policy_lets_each_caller_reach_exactly_what_it_calls() {
        // Every outbound edge of the platform has a grant, and every grant's
        // caller really calls the target.
        let p = platform();
        for s in &p.services {
            for target in s.outbound {
                assert!(
                    POLICY
                        .iter()
                        .any(|g| g.target == *target && g.callers.contains(&s.name)),
                    "{} calls {target} but the policy lets it reach nothing there",
                    s.name
                );
            }
        }
        for g in POLICY {
            for c in g.callers {
                let caller = p
                    .services
                    .iter()
                    .find(|s| s.name == *c)
                    .unwrap_or_else(|| panic!("unknown caller {c}"));
                assert!(caller.outbound.contains(&g.target), "{c} -> {}", g.target);
            }
        }
        // User: token verification from the four verifiers, and its public
        // API from the gateway.
        let rules = authz_rules("user");
        assert_eq!(rules.len(), 3);
        assert_eq!(rules[0].method.as_deref(), Some("GetJwks"));
        assert_eq!(rules[0].allow.len(), 5);
        assert!(!rules[0].allow.contains(&spiffe_id("payment")));
        assert!(rules[0].allow.contains(&spiffe_id("gateway")));
        assert_eq!(rules[1].method.as_deref(), Some("VerifyApiKey"));
        assert!(rules[1].allow.contains(&spiffe_id("gateway")));
        assert!(!rules[1].allow.contains(&spiffe_id("payment")));
        assert_eq!(
            rules[2],
            AuthzRule {
                service: "tally.user.v1.UserService".into(),
                method: None,
                allow: vec![spiffe_id("gateway")]
            }
        );
        // The gateway reaches the public APIs only: never payment, never a
        // feed or an admin service.
        for g in POLICY.iter().filter(|g| g.callers.contains(&"gateway")) {
            assert!(
                GATEWAY_TARGETS.contains(&(g.target, g.grpc_service)),
                "{} {}",
                g.target,
                g.grpc_service
            );
        }
        assert!(
            authz_rules("payment")
                .iter()
                .all(|r| !r.allow.contains(&spiffe_id("gateway")))
        );
        // Analytics: only the gateway calls it.
        assert_eq!(
            authz_rules("analytics"),
            [AuthzRule {
                service: "tally.analytics.v1.AnalyticsService".into(),
                method: None,
                allow: vec![spiffe_id("gateway")]
            }]
        );
        // Without the gateway, services nobody calls deny everything.
        assert_eq!(
            authz_rules_without("analytics", &["gateway"]),
            [AuthzRule {
                service: "*".into(),
                method: None,
                allow: vec![]
            }]
        );
    }

    #[test]
    fn the_policy_decides_like_the_proxy_would() {
        let user = tally_proxy::authz::Policy::new(
            proxy(&plan(), "user-1-proxy")
                .inbound
                .expect("inbound")
                .authz,
        );
        let jwks = "/tally.user.v1.UserService/GetJwks";
        assert!(user.check(jwks, Some(&spiffe_id("polling"))).is_ok());
        assert!(user.check(jwks, Some(&spiffe_id("payment"))).is_err());
        assert!(
            user.check(
                "/tally.user.v1.UserService/Login",
                Some(&spiffe_id("polling"))
            )
            .is_err()
        );
        assert!(
            user.check("/grpc.health.v1.Health/Check", Some(&spiffe_id("polling")))
                .is_err()
        );
        let analytics = tally_proxy::authz::Policy::new(
            proxy(&plan(), "analytics-proxy")
                .inbound
                .expect("inbound")
                .authz,
        );
        assert!(
            analytics
                .check(
                    "/tally.analytics.v1.AnalyticsService/GetPollResults",
                    Some(&spiffe_id("polling"))
                )
                .is_err()
        );
        let gw = Some(spiffe_id("gateway"));
        // The gateway fetches the keys and verifies API keys at the edge.
        assert!(user.check(jwks, gw.as_deref()).is_ok());
        assert!(
            user.check("/tally.user.v1.UserService/VerifyApiKey", gw.as_deref())
                .is_ok()
        );
        assert!(
            user.check(
                "/tally.user.v1.UserService/VerifyApiKey",
                Some(&spiffe_id("payment"))
            )
            .is_err()
        );
        assert!(
            user.check("/tally.user.v1.UserService/Login", gw.as_deref())
                .is_ok()
        );
        assert!(
            analytics
                .check(
                    "/tally.analytics.v1.AnalyticsService/GetPollResults",
                    gw.as_deref()
                )
                .is_ok()
        );
        let polling = tally_proxy::authz::Policy::new(
            proxy(&plan(), "polling-proxy")
                .inbound
                .expect("inbound")
                .authz,
        );
        assert!(
            polling
                .check("/tally.poll.v1.PollService/CreatePoll", gw.as_deref())
                .is_ok()
        );
        assert!(
            polling
                .check("/tally.events.v1.EventFeedService/Subscribe", gw.as_deref())
                .is_err()
        );
        assert!(
            polling
                .check(
                    "/tally.events.v1.ConsumerAdminService/ListConsumers",
                    gw.as_deref()
                )
                .is_err()
        );
    }

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

    #[test]
    fn validity_flag_is_checked() {
        assert_eq!(parse_validity("24h"), Ok(Duration::from_secs(86_400)));
        assert_eq!(parse_validity("2m"), Ok(Duration::from_secs(120)));
        assert!(parse_validity("10s").is_err());
        assert!(parse_validity("1000d").is_err());
        assert!(parse_validity("soon").is_err());
    }

    #[test]
    fn certificates_are_issued_once_per_service_under_one_ca() {
        let dir = tempfile::tempdir().expect("tmp");
        let rot = issue_certificates(dir.path(), &["user", "polling"], Duration::from_secs(3600))
            .expect("issue");
        assert_eq!(rot.len(), 2);
        let ca_pem = std::fs::read_to_string(ca_dir(dir.path()).join("ca.pem")).expect("ca");
        for s in ["user", "polling"] {
            let pem = std::fs::read(certs_dir(dir.path()).join(format!("{s}.pem"))).expect("pem");
            let summary = tally_certs::inspect_pem(&pem).expect("inspect");
            assert_eq!(
                summary[0].spiffe_id.as_ref().map(|i| i.to_string()),
                Some(spiffe_id(s))
            );
        }
        // A second start reuses the CA.
        issue_certificates(dir.path(), &["user"], Duration::from_secs(3600)).expect("again");
        let again = std::fs::read_to_string(ca_dir(dir.path()).join("ca.pem")).expect("ca");
        assert_eq!(ca_pem, again);
        assert_eq!(
            std::fs::read_to_string(certs_dir(dir.path()).join("bundle.pem")).expect("bundle"),
            ca_pem
        );
    }

    /// The `proxy.toml: |` block of a Kubernetes manifest, dedented.
    fn k8s_proxy_toml(service: &str) -> String {
        let path = Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("deploy/k8s")
            .join(format!("{service}.yaml"));
        let text = std::fs::read_to_string(&path).expect("manifest");
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
            let rules: Vec<AuthzRule> = cfg
                .inbound
                .as_ref()
                .expect("inbound")
                .authz
                .iter()
                .map(|r| AuthzRule {
                    service: r.service.clone(),
                    method: r.method.clone(),
                    allow: r.allow.clone(),
                })
                .collect();
            assert_eq!(
                rules,
                authz_rules_without(name, &["gateway"]),
                "deploy/k8s/{name}.yaml authz"
            );
            let targets: Vec<&str> = cfg.services.keys().map(String::as_str).collect();
            let mut want: Vec<&str> = spec.outbound.to_vec();
            want.sort();
            assert_eq!(targets, want, "deploy/k8s/{name}.yaml routes");
            for (t, s) in &cfg.services {
                let r = route(t);
                assert_eq!(s.timeout_ms, r.timeout_ms, "{name} -> {t}");
                let idem: Vec<&str> = s
                    .retry
                    .idempotent_methods
                    .iter()
                    .map(String::as_str)
                    .collect();
                assert_eq!(idem, r.idempotent, "{name} -> {t}");
                assert_eq!(s.endpoints, [format!("{t}.tally.svc.cluster.local:4143")]);
            }
        }
    }

    #[test]
    fn policy_lines_name_callers() {
        let lines = policy_lines(&["user", "analytics"]);
        assert_eq!(
            lines[0],
            "user: UserService/GetJwks <- polling, notification, analytics, billing, gateway; \
             UserService/VerifyApiKey <- polling, notification, analytics, billing, gateway; \
             UserService <- gateway"
        );
        assert_eq!(lines[1], "analytics: AnalyticsService <- gateway");
        assert_eq!(
            policy_lines(&["payment"])[0],
            "payment: PaymentService <- billing; Health/Check <- billing"
        );
    }
}
