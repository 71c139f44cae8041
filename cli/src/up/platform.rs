//! The platform as data: which services exist, which binary runs each, the
//! ports an instance needs, what it depends on and calls, and how its config
//! file is written. `tally up` derives everything else from this list, so a new
//! service (or a sidecar beside each service) is a new entry, not new code.

use std::collections::BTreeMap;
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::path::Path;

/// Every instance listens on loopback; `tally up` is a one-machine launcher.
pub const HOST: IpAddr = IpAddr::V4(Ipv4Addr::LOCALHOST);

/// First port handed out when `--base-port` is not given.
pub const DEFAULT_BASE_PORT: u16 = 50051;

/// Writes one instance's config as a TOML table, or says why it cannot.
pub type ConfigFn = fn(&ConfigContext<'_>) -> Result<toml::Table, String>;

/// One service of the platform.
#[derive(Debug, Clone)]
pub struct ServiceSpec {
    /// Short name: instance names, config and log files derive from it.
    pub name: &'static str,
    /// Binary next to the `tally` executable, e.g. `tally-user`.
    pub binary: &'static str,
    /// Fully-qualified gRPC service whose health must be SERVING.
    pub health_service: &'static str,
    /// Named ports each instance needs, allocated consecutively. `grpc` is the
    /// service's own listener.
    pub ports: &'static [&'static str],
    /// Prefix of the environment overrides the binary reads (`TALLY_USER_`).
    pub env_prefix: &'static str,
    /// Services that must be SERVING before this one starts.
    pub depends_on: &'static [&'static str],
    /// Services this one calls; each becomes an `[outbound]` entry.
    pub outbound: &'static [&'static str],
    /// Whether a mesh sidecar runs beside each instance: when
    /// [`Platform::sidecar`] is set, each instance gets one, its `[outbound]`
    /// addresses point at that sidecar's `outbound` port, and peers reach it
    /// through the sidecar's `inbound` port.
    pub sidecar: bool,
    /// Runs only with the mesh (the browser gateway): it gets a mesh
    /// identity, its config sees every outbound target's sidecar `inbound`
    /// endpoints, its ports come after the sidecars' (so theirs do not
    /// move), and [`Platform::without_mesh`] drops it. Without a `grpc` port
    /// it is ready when its `admin` port answers `/ready`.
    pub mesh_only: bool,
    /// Its embedded store holds only what it rebuilds from the event feed (a
    /// read model, consumer positions): every replica keeps a whole copy of
    /// its own, so replicas on embedded storage do not split its state.
    pub read_model: bool,
    /// Writes the instance's config file.
    pub config: ConfigFn,
}

/// The sidecar that runs beside every service with `sidecar: true`.
#[derive(Debug, Clone)]
pub struct SidecarSpec {
    pub binary: &'static str,
    /// Prefix of the sidecar's environment overrides.
    pub env_prefix: &'static str,
    /// Named ports each sidecar needs. `inbound` (peers' sidecars connect
    /// here) and `outbound` (the local service sends its calls here) are
    /// required; others such as `admin` are free to add.
    pub ports: &'static [&'static str],
    /// Writes the sidecar's config file for one service instance.
    pub config: ConfigFn,
    /// Environment variables the sidecar gets (settings it does not read
    /// from its file, such as the log format).
    pub env: fn(&ConfigContext<'_>) -> Vec<(String, String)>,
}

/// The whole platform.
#[derive(Debug, Clone)]
pub struct Platform {
    /// In port-allocation order; start order comes from `depends_on`.
    pub services: Vec<ServiceSpec>,
    /// The mesh sidecar; `None` runs services without a mesh, calling each
    /// other directly.
    pub sidecar: Option<SidecarSpec>,
}

impl Platform {
    /// The same platform without sidecars (`tally up --no-mesh`).
    pub fn without_mesh(mut self) -> Self {
        self.sidecar = None;
        self.services.retain(|s| !s.mesh_only);
        // No gateway: nobody the user service could trust sets `x-forwarded-for`.
        for s in &mut self.services {
            if s.name == "user" {
                s.config = user_config_without_gateway;
            }
        }
        self
    }
}

/// What a config template gets to know about the instance it configures.
#[derive(Debug, Clone)]
pub struct ConfigContext<'a> {
    /// The spec's name, e.g. `polling`.
    pub service: &'a str,
    /// The instance name, e.g. `polling` or `polling-2`.
    pub instance: &'a str,
    /// This instance's allocated ports by name.
    pub ports: &'a BTreeMap<&'static str, u16>,
    /// Directory owned by this instance alone (its database lives here).
    pub state_dir: &'a Path,
    /// The `--data-dir` of this run (shared files such as mesh certificates).
    pub data_dir: &'a Path,
    /// Address per outbound target, e.g. `user` → `http://127.0.0.1:50051`:
    /// the target itself without a mesh, the local sidecar with one.
    pub outbound: &'a BTreeMap<String, String>,
    /// For a sidecar: the local service instance it fronts.
    pub app_addr: Option<SocketAddr>,
    /// For a sidecar: every endpoint (`host:port`) per target service it
    /// routes to, i.e. the `inbound` ports of the target's sidecars.
    pub endpoints: &'a BTreeMap<String, Vec<SocketAddr>>,
    /// `pretty` or `json`.
    pub log_format: &'a str,
}

impl ConfigContext<'_> {
    /// The loopback address of the named port.
    pub fn addr(&self, port: &str) -> Option<SocketAddr> {
        self.ports.get(port).map(|p| SocketAddr::new(HOST, *p))
    }
}

/// The sections every Tally service reads through `tally_chassis::config`:
/// `[server]`, `[storage]` (embedded, in the instance's own directory),
/// `[telemetry]` and, when it calls anyone, `[outbound]`. Service-specific
/// sections are left out so the binary's defaults apply.
pub fn standard_config(ctx: &ConfigContext<'_>) -> Result<toml::Table, String> {
    let mut root = toml::Table::new();
    let mut server = toml::Table::new();
    if let Some(addr) = ctx.addr("grpc") {
        server.insert("listen_addr".into(), addr.to_string().into());
    }
    root.insert("server".into(), server.into());

    let mut storage = toml::Table::new();
    storage.insert("backend".into(), "embedded".into());
    storage.insert(
        "path".into(),
        ctx.state_dir
            .join(format!("{}.redb", ctx.service))
            .display()
            .to_string()
            .into(),
    );
    root.insert("storage".into(), storage.into());

    let mut telemetry = toml::Table::new();
    telemetry.insert("log_format".into(), ctx.log_format.into());
    if let Some(addr) = ctx.addr(super::plan::METRICS_PORT) {
        telemetry.insert("metrics_addr".into(), addr.to_string().into());
    }
    telemetry.insert(
        "audit_file".into(),
        super::plan::audit_file(ctx.data_dir, ctx.instance)
            .display()
            .to_string()
            .into(),
    );
    root.insert("telemetry".into(), telemetry.into());

    if !ctx.outbound.is_empty() {
        let outbound: toml::Table = ctx
            .outbound
            .iter()
            .map(|(k, v)| (k.clone(), toml::Value::from(v.as_str())))
            .collect();
        root.insert("outbound".into(), outbound.into());
    }
    Ok(root)
}

/// File (in the user instance's state directory) holding the admin token
/// `tally keys rotate` needs; the user service creates it 0600.
pub const USER_ADMIN_TOKEN_FILE: &str = "admin-token";

/// The peers from which the user service takes the client address from `x-forwarded-for`
/// (`[user.login_throttle] trusted_proxies`): the gateway reaches the user service through
/// the user's own sidecar, whose connection to the service comes from loopback, and the
/// gateway writes `x-forwarded-for` itself (a value a browser sent never gets through).
pub const GATEWAY_PATH_PEERS: [IpAddr; 1] = [HOST];

/// [`standard_config`] plus the user service's admin token file, trusting the gateway's
/// `x-forwarded-for` (see [`GATEWAY_PATH_PEERS`]).
pub fn user_config(ctx: &ConfigContext<'_>) -> Result<toml::Table, String> {
    user_config_trusting(ctx, &GATEWAY_PATH_PEERS)
}

/// [`user_config`] for a platform without the mesh (and so without a gateway).
fn user_config_without_gateway(ctx: &ConfigContext<'_>) -> Result<toml::Table, String> {
    user_config_trusting(ctx, &[])
}

fn user_config_trusting(
    ctx: &ConfigContext<'_>,
    proxies: &[IpAddr],
) -> Result<toml::Table, String> {
    let mut root = standard_config(ctx)?;
    let mut user = toml::Table::new();
    let token = ctx.state_dir.join(USER_ADMIN_TOKEN_FILE);
    user.insert(
        "admin_token_file".into(),
        token.display().to_string().into(),
    );
    if !proxies.is_empty() {
        let list: Vec<toml::Value> = proxies.iter().map(|ip| ip.to_string().into()).collect();
        let mut throttle = toml::Table::new();
        throttle.insert("trusted_proxies".into(), list.into());
        user.insert("login_throttle".into(), throttle.into());
    }
    root.insert("user".into(), user.into());
    Ok(root)
}

/// Tally as `tally up` runs it: every service with a `tally-proxy` sidecar
/// ([`super::mesh`]); [`Platform::without_mesh`] drops the sidecars.
pub fn platform() -> Platform {
    Platform {
        services: vec![
            ServiceSpec {
                name: "user",
                binary: "tally-user",
                health_service: "tally.user.v1.UserService",
                ports: &["grpc"],
                env_prefix: "TALLY_USER_",
                depends_on: &[],
                outbound: &[],
                sidecar: true,
                mesh_only: false,
                read_model: false,
                config: user_config,
            },
            ServiceSpec {
                name: "polling",
                binary: "tally-polling",
                health_service: "tally.poll.v1.PollService",
                ports: &["grpc"],
                env_prefix: "TALLY_POLLING_",
                // Polling verifies tokens with the user service's JWKS, and
                // follows billing's events for plan limits (lazily: billing
                // may start after it).
                depends_on: &["user"],
                outbound: &["user", "billing"],
                sidecar: true,
                mesh_only: false,
                read_model: false,
                config: standard_config,
            },
            ServiceSpec {
                name: "notification",
                binary: "tally-notification",
                health_service: "tally.notification.v1.NotificationService",
                ports: &["grpc"],
                env_prefix: "TALLY_NOTIFICATION_",
                // Follows polling's event feed; verifies tokens with user.
                depends_on: &["user", "polling"],
                outbound: &["user", "polling"],
                sidecar: true,
                mesh_only: false,
                read_model: true,
                config: standard_config,
            },
            ServiceSpec {
                name: "analytics",
                binary: "tally-analytics",
                health_service: "tally.analytics.v1.AnalyticsService",
                ports: &["grpc"],
                env_prefix: "TALLY_ANALYTICS_",
                depends_on: &["user", "polling"],
                outbound: &["user", "polling"],
                sidecar: true,
                mesh_only: false,
                read_model: true,
                config: standard_config,
            },
            ServiceSpec {
                name: "billing",
                binary: "tally-billing",
                health_service: "tally.billing.v1.BillingService",
                ports: &["grpc"],
                env_prefix: "TALLY_BILLING_",
                // Charges through payment; verifies tokens with user.
                depends_on: &["user", "payment"],
                outbound: &["payment", "user"],
                sidecar: true,
                mesh_only: false,
                read_model: false,
                config: standard_config,
            },
            ServiceSpec {
                name: "payment",
                binary: "tally-payment",
                health_service: "tally.payment.v1.PaymentService",
                ports: &["grpc"],
                env_prefix: "TALLY_PAYMENT_",
                depends_on: &[],
                outbound: &[],
                sidecar: true,
                mesh_only: false,
                read_model: false,
                config: standard_config,
            },
            // The browser entry point: gRPC-Web and gRPC with edge JWT
            // checks, routed through the mesh to the public APIs.
            super::mesh::gateway(),
        ],
        sidecar: Some(super::mesh::sidecar()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The user service's context with these ports and no peers.
    fn user_context<'a>(
        ports: &'a BTreeMap<&'static str, u16>,
        outbound: &'a BTreeMap<String, String>,
    ) -> ConfigContext<'a> {
        static NO_ENDPOINTS: BTreeMap<String, Vec<SocketAddr>> = BTreeMap::new();
        ConfigContext {
            service: "user",
            instance: "user",
            ports,
            state_dir: Path::new("/d"),
            data_dir: Path::new("/"),
            outbound,
            app_addr: None,
            endpoints: &NO_ENDPOINTS,
            log_format: "pretty",
        }
    }

    #[test]
    fn standard_config_has_every_chassis_section() {
        let ports = BTreeMap::from([("grpc", 50052u16), ("metrics", 50058u16)]);
        let outbound = BTreeMap::from([("user".to_string(), "http://127.0.0.1:50051".to_string())]);
        let ctx = ConfigContext {
            service: "polling",
            instance: "polling",
            ports: &ports,
            state_dir: Path::new("/data/polling"),
            data_dir: Path::new("/data"),
            outbound: &outbound,
            app_addr: None,
            endpoints: &BTreeMap::new(),
            log_format: "json",
        };
        let text = toml::to_string(&standard_config(&ctx).expect("config")).expect("serialises");
        let back: toml::Table = text.parse().expect("parses");
        assert_eq!(
            back["server"]["listen_addr"].as_str(),
            Some("127.0.0.1:50052")
        );
        assert_eq!(back["storage"]["backend"].as_str(), Some("embedded"));
        assert_eq!(
            back["storage"]["path"].as_str(),
            Some("/data/polling/polling.redb")
        );
        assert_eq!(back["telemetry"]["log_format"].as_str(), Some("json"));
        assert_eq!(
            back["telemetry"]["metrics_addr"].as_str(),
            Some("127.0.0.1:50058")
        );
        assert_eq!(
            back["outbound"]["user"].as_str(),
            Some("http://127.0.0.1:50051")
        );
    }

    #[test]
    fn services_without_peers_get_no_outbound_section() {
        let ports = BTreeMap::from([("grpc", 1u16)]);
        let outbound = BTreeMap::new();
        let ctx = user_context(&ports, &outbound);
        assert!(
            !standard_config(&ctx)
                .expect("config")
                .contains_key("outbound")
        );
    }

    #[test]
    fn the_user_service_trusts_the_gateways_forwarded_for_only_with_the_mesh() {
        let ports = BTreeMap::from([("grpc", 1u16)]);
        let outbound = BTreeMap::new();
        let ctx = user_context(&ports, &outbound);
        let config_of = |p: &Platform| {
            let user = p.services.iter().find(|s| s.name == "user").expect("user");
            (user.config)(&ctx).expect("config")
        };
        let with_mesh = config_of(&platform());
        let trusted = with_mesh["user"]["login_throttle"]["trusted_proxies"]
            .as_array()
            .expect("trusted_proxies");
        assert_eq!(trusted, &vec![toml::Value::from("127.0.0.1")]);
        assert!(with_mesh["user"]["admin_token_file"].is_str());
        let without = config_of(&platform().without_mesh());
        assert!(
            !without["user"]
                .as_table()
                .expect("user")
                .contains_key("login_throttle")
        );
        // It serialises as the `[user.login_throttle]` table the user service reads.
        let text = toml::to_string(&with_mesh).expect("toml");
        let parsed: toml::Table = toml::from_str(&text).expect("parses");
        assert_eq!(
            parsed["user"]["login_throttle"]["trusted_proxies"][0].as_str(),
            Some("127.0.0.1")
        );
    }

    #[test]
    fn every_dependency_and_outbound_target_exists() {
        let p = platform();
        let names: Vec<&str> = p.services.iter().map(|s| s.name).collect();
        for s in &p.services {
            for d in s.depends_on.iter().chain(s.outbound) {
                assert!(
                    names.contains(d),
                    "{} refers to unknown service {d}",
                    s.name
                );
            }
            assert!(
                s.ports.contains(&"grpc") || (s.mesh_only && s.ports.contains(&"admin")),
                "{} needs a grpc port (or, mesh-only, an admin port)",
                s.name
            );
            assert!(s.env_prefix.starts_with("TALLY_") && s.env_prefix.ends_with('_'));
        }
    }
}
