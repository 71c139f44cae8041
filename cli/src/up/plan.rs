//! Turns the [`Platform`] description plus the command-line choices (replicas,
//! base port, data directory) into the concrete list of processes to run:
//! instance names, ports, config text, file paths and start order.
//!
//! Pure: no I/O, so every rule here is unit-tested.

use super::UpError;
use super::platform::{ConfigContext, HOST, Platform, ServiceSpec};
use std::collections::{BTreeMap, BTreeSet};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};

/// Most instances of one service `--replicas` may ask for.
pub const MAX_REPLICAS: u32 = 16;

/// One `--replicas` value: `N` for every service or `name=N` for one.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ReplicaArg {
    All(u32),
    One(String, u32),
}

/// Parses `--replicas 2` and `--replicas polling=2`.
pub fn parse_replicas(s: &str) -> Result<ReplicaArg, String> {
    let count = |n: &str| -> Result<u32, String> {
        let v: u32 = n
            .trim()
            .parse()
            .map_err(|_| format!("`{n}` is not a whole number of instances"))?;
        if v == 0 || v > MAX_REPLICAS {
            return Err(format!(
                "replicas must be between 1 and {MAX_REPLICAS}, got {v}"
            ));
        }
        Ok(v)
    };
    match s.split_once('=') {
        Some((name, n)) if !name.trim().is_empty() => {
            Ok(ReplicaArg::One(name.trim().to_string(), count(n)?))
        }
        Some(_) => Err(format!(
            "`{s}`: expected `N` or `SERVICE=N`, e.g. `polling=2`"
        )),
        None => Ok(ReplicaArg::All(count(s)?)),
    }
}

/// A health probe: the address and the gRPC service name to check.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Probe {
    pub addr: SocketAddr,
    /// The gRPC service name (for [`ProbeKind::Grpc`]) or the HTTP path
    /// (for [`ProbeKind::HttpReady`]).
    pub service: String,
    pub kind: ProbeKind,
}

impl Probe {
    /// How success is announced: services are SERVING, sidecars ready.
    pub fn ready_word(&self) -> &'static str {
        match self.kind {
            ProbeKind::Grpc => "SERVING",
            ProbeKind::HttpReady => "ready",
        }
    }
}

/// How an instance says it is ready.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ProbeKind {
    /// `grpc.health.v1` Check answers SERVING (the services).
    Grpc,
    /// An HTTP GET of the path answers 200 (the sidecar's admin `/ready`).
    HttpReady,
}

/// One process `tally up` runs.
#[derive(Debug, Clone)]
pub struct Instance {
    /// `user`, or `polling-1`, `polling-2` with replicas.
    pub name: String,
    /// The service it belongs to.
    pub service: String,
    pub binary: String,
    pub ports: BTreeMap<&'static str, u16>,
    /// The gRPC address clients use (the `grpc` port).
    pub addr: Option<SocketAddr>,
    pub probe: Option<Probe>,
    pub env_prefix: String,
    pub config_path: PathBuf,
    /// The config file's text.
    pub config: String,
    pub log_path: PathBuf,
    pub pid_path: PathBuf,
    /// Start stage: every instance of stage k starts after stage k-1 is SERVING.
    pub stage: usize,
    /// Extra environment variables for the process.
    pub env: Vec<(String, String)>,
    /// For a sidecar: the name of the service instance it runs beside.
    /// Within a stage sidecars start (and become ready) before services,
    /// and stop after them.
    pub sidecar_of: Option<String>,
}

/// Everything to run, in start order.
#[derive(Debug, Clone)]
pub struct Plan {
    pub instances: Vec<Instance>,
    pub data_dir: PathBuf,
}

impl Plan {
    /// Instances grouped by stage, in start order.
    pub fn stages(&self) -> Vec<Vec<&Instance>> {
        let max = self.instances.iter().map(|i| i.stage).max().unwrap_or(0);
        (0..=max)
            .map(|s| self.instances.iter().filter(|i| i.stage == s).collect())
            .filter(|v: &Vec<&Instance>| !v.is_empty())
            .collect()
    }

    /// Every allocated port with the instance that owns it.
    pub fn ports(&self) -> Vec<(u16, &str)> {
        let mut v: Vec<(u16, &str)> = self
            .instances
            .iter()
            .flat_map(|i| i.ports.values().map(move |p| (*p, i.name.as_str())))
            .collect();
        v.sort();
        v
    }
}

/// The choices that shape the plan.
#[derive(Debug, Clone)]
pub struct Options {
    pub data_dir: PathBuf,
    pub base_port: u16,
    pub replicas: Vec<ReplicaArg>,
    pub log_format: String,
}

/// Start stage per service: 0 for no dependencies, else one more than the
/// latest dependency. Unknown names and cycles are errors.
fn stages(services: &[ServiceSpec]) -> Result<BTreeMap<&'static str, usize>, UpError> {
    let names: BTreeSet<&str> = services.iter().map(|s| s.name).collect();
    for s in services {
        for d in s.depends_on.iter().chain(s.outbound) {
            if !names.contains(d) {
                return Err(UpError::Platform(format!(
                    "service `{}` refers to `{d}`, which the platform does not define",
                    s.name
                )));
            }
        }
    }
    let mut stage: BTreeMap<&'static str, usize> = BTreeMap::new();
    while stage.len() < services.len() {
        let before = stage.len();
        for s in services {
            if stage.contains_key(s.name) {
                continue;
            }
            if s.depends_on.iter().all(|d| stage.contains_key(d)) {
                let st = s
                    .depends_on
                    .iter()
                    .filter_map(|d| stage.get(d))
                    .map(|x| x + 1)
                    .max()
                    .unwrap_or(0);
                stage.insert(s.name, st);
            }
        }
        if stage.len() == before {
            let stuck: Vec<&str> = services
                .iter()
                .map(|s| s.name)
                .filter(|n| !stage.contains_key(n))
                .collect();
            return Err(UpError::Platform(format!(
                "dependency cycle among services: {}",
                stuck.join(", ")
            )));
        }
    }
    Ok(stage)
}

fn replica_counts(
    platform: &Platform,
    args: &[ReplicaArg],
) -> Result<BTreeMap<&'static str, u32>, UpError> {
    let mut counts: BTreeMap<&'static str, u32> =
        platform.services.iter().map(|s| (s.name, 1)).collect();
    for a in args {
        match a {
            ReplicaArg::All(n) => counts.values_mut().for_each(|c| *c = *n),
            ReplicaArg::One(name, n) => {
                let Some(c) = counts.get_mut(name.as_str()) else {
                    let known: Vec<&str> = platform.services.iter().map(|s| s.name).collect();
                    return Err(UpError::Usage(format!(
                        "--replicas {name}={n}: there is no service `{name}`; services: {}",
                        known.join(", ")
                    )));
                };
                *c = *n;
            }
        }
    }
    Ok(counts)
}

fn instance_name(service: &str, index: u32, count: u32) -> String {
    if count == 1 {
        service.to_string()
    } else {
        format!("{service}-{index}")
    }
}

/// A service instance with its allocated ports, before configs are written.
struct Slot<'p> {
    name: String,
    spec: &'p ServiceSpec,
    ports: BTreeMap<&'static str, u16>,
    /// The sidecar's name and ports, when it has one.
    sidecar: Option<(String, BTreeMap<&'static str, u16>)>,
}

struct Ports {
    next: u32,
    base: u16,
}

impl Ports {
    fn take(&mut self, names: &[&'static str]) -> Result<BTreeMap<&'static str, u16>, UpError> {
        let mut out = BTreeMap::new();
        for p in names {
            let port = u16::try_from(self.next).map_err(|_| {
                UpError::Usage(format!(
                    "--base-port {} leaves too few ports below 65536 for every instance; pick a lower one",
                    self.base
                ))
            })?;
            out.insert(*p, port);
            self.next += 1;
        }
        Ok(out)
    }
}

fn loopback(port: u16) -> SocketAddr {
    SocketAddr::new(HOST, port)
}

/// Builds the plan.
pub fn build(platform: &Platform, opts: &Options) -> Result<Plan, UpError> {
    let stage_of = stages(&platform.services)?;
    let counts = replica_counts(platform, &opts.replicas)?;
    if let Some(sc) = &platform.sidecar
        && !(sc.ports.contains(&"inbound") && sc.ports.contains(&"outbound"))
    {
        return Err(UpError::Platform(
            "the sidecar must declare `inbound` and `outbound` ports".into(),
        ));
    }

    // Service ports first, consecutively in platform order: with defaults
    // user gets the base port (50051) and polling the next (50052). Sidecar
    // ports come after all of them, so service addresses do not move when
    // the mesh is on.
    let mut ports = Ports {
        next: u32::from(opts.base_port),
        base: opts.base_port,
    };
    let mut slots: Vec<Slot> = Vec::new();
    for spec in platform.services.iter().filter(|s| !s.mesh_only) {
        let n = counts.get(spec.name).copied().unwrap_or(1);
        for i in 1..=n {
            slots.push(Slot {
                name: instance_name(spec.name, i, n),
                spec,
                ports: ports.take(spec.ports)?,
                sidecar: None,
            });
        }
    }
    if let Some(sc) = &platform.sidecar {
        for slot in slots.iter_mut().filter(|s| s.spec.sidecar) {
            slot.sidecar = Some((format!("{}-proxy", slot.name), ports.take(sc.ports)?));
        }
    }
    // Mesh-only processes (the gateway) last, so nothing else moves; one
    // instance each (`--replicas` scales services).
    for spec in platform.services.iter().filter(|s| s.mesh_only) {
        slots.push(Slot {
            name: spec.name.to_string(),
            spec,
            ports: ports.take(spec.ports)?,
            sidecar: None,
        });
    }

    // Where each service can be reached: its sidecars' inbound ports when it
    // has them, else its own gRPC ports.
    let mut endpoints: BTreeMap<String, Vec<SocketAddr>> = BTreeMap::new();
    for slot in &slots {
        let port = match &slot.sidecar {
            Some((_, sp)) => sp.get("inbound"),
            None => slot.ports.get("grpc"),
        };
        if let Some(p) = port {
            endpoints
                .entry(slot.spec.name.to_string())
                .or_default()
                .push(loopback(*p));
        }
    }
    // Without a mesh a caller's outbound address is the target's first
    // instance (no load balancing); with one it is the local sidecar.
    let direct: BTreeMap<&str, String> = slots
        .iter()
        .filter_map(|s| s.ports.get("grpc").map(|p| (s.spec.name, *p)))
        .fold(BTreeMap::new(), |mut m, (name, port)| {
            m.entry(name)
                .or_insert_with(|| format!("http://{}", loopback(port)));
            m
        });

    let dir = |sub: &str| opts.data_dir.join(sub);
    let mut instances = Vec::new();
    for slot in &slots {
        let spec = slot.spec;
        let outbound: BTreeMap<String, String> = spec
            .outbound
            .iter()
            .filter_map(|t| {
                let addr = match &slot.sidecar {
                    Some((_, sp)) => sp
                        .get("outbound")
                        .map(|p| format!("http://{}", loopback(*p))),
                    None => direct.get(t).cloned(),
                };
                addr.map(|a| (t.to_string(), a))
            })
            .collect();
        let addr = slot.ports.get("grpc").map(|p| loopback(*p));
        let stage = stage_of.get(spec.name).copied().unwrap_or(0);
        let targets: BTreeMap<String, Vec<SocketAddr>> = spec
            .outbound
            .iter()
            .filter_map(|t| endpoints.get(*t).map(|e| (t.to_string(), e.clone())))
            .collect();
        let no_endpoints = BTreeMap::new();
        let state_dir = dir("data").join(&slot.name);
        let ctx = ConfigContext {
            service: spec.name,
            instance: &slot.name,
            ports: &slot.ports,
            state_dir: &state_dir,
            data_dir: &opts.data_dir,
            outbound: &outbound,
            app_addr: None,
            endpoints: if spec.mesh_only {
                &targets
            } else {
                &no_endpoints
            },
            log_format: &opts.log_format,
        };
        instances.push(Instance {
            name: slot.name.clone(),
            service: spec.name.to_string(),
            binary: spec.binary.to_string(),
            ports: slot.ports.clone(),
            addr,
            // A service is ready when SERVING; a process without a gRPC
            // port (the gateway) when its admin `/ready` answers.
            probe: match addr {
                Some(addr) => Some(Probe {
                    addr,
                    service: spec.health_service.to_string(),
                    kind: ProbeKind::Grpc,
                }),
                None => slot.ports.get("admin").map(|p| Probe {
                    addr: loopback(*p),
                    service: "/ready".into(),
                    kind: ProbeKind::HttpReady,
                }),
            },
            env_prefix: spec.env_prefix.to_string(),
            config_path: dir("config").join(format!("{}.toml", slot.name)),
            config: header(&slot.name, spec.binary, spec.env_prefix)
                + &render(&slot.name, (spec.config)(&ctx))?,
            log_path: dir("logs").join(format!("{}.log", slot.name)),
            pid_path: dir("run").join(format!("{}.pid", slot.name)),
            stage,
            env: Vec::new(),
            sidecar_of: None,
        });

        if let (Some(sc), Some((name, sp))) = (&platform.sidecar, &slot.sidecar) {
            let state_dir = dir("data").join(name);
            let ctx = ConfigContext {
                service: spec.name,
                instance: name,
                ports: sp,
                state_dir: &state_dir,
                data_dir: &opts.data_dir,
                outbound: &BTreeMap::new(),
                app_addr: addr,
                endpoints: &targets,
                log_format: &opts.log_format,
            };
            instances.push(Instance {
                name: name.clone(),
                service: spec.name.to_string(),
                binary: sc.binary.to_string(),
                ports: sp.clone(),
                addr: None,
                // Started in the same stage as its service, just before it;
                // ready once its admin `/ready` says so (when it has an admin
                // port). The service only reports SERVING once its calls
                // through the sidecar work.
                probe: sp.get("admin").map(|p| Probe {
                    addr: loopback(*p),
                    service: "/ready".into(),
                    kind: ProbeKind::HttpReady,
                }),
                env_prefix: sc.env_prefix.to_string(),
                config_path: dir("config").join(format!("{name}.toml")),
                config: sidecar_header(name, sc.binary, sc.env_prefix)
                    + &render(name, (sc.config)(&ctx))?,
                log_path: dir("logs").join(format!("{name}.log")),
                pid_path: dir("run").join(format!("{name}.pid")),
                stage,
                env: (sc.env)(&ctx),
                sidecar_of: Some(slot.name.clone()),
            });
        }
    }
    instances.sort_by_key(|i| i.stage);
    Ok(Plan {
        instances,
        data_dir: opts.data_dir.clone(),
    })
}

fn render(name: &str, table: toml::Table) -> Result<String, UpError> {
    toml::to_string_pretty(&table)
        .map_err(|e| UpError::Platform(format!("config for {name} does not serialise: {e}")))
}

fn header(name: &str, binary: &str, env_prefix: &str) -> String {
    format!(
        "# Written by `tally up` for {name} ({binary}); regenerated on every start.\n\
         # Environment variables {env_prefix}<SECTION>__<KEY> override values here.\n\n"
    )
}

fn sidecar_header(name: &str, binary: &str, env_prefix: &str) -> String {
    format!(
        "# Written by `tally up` for {name} ({binary}); regenerated on every start.\n\
         # Schema: mesh-proxy/README.md; {env_prefix}* variables override the listen addresses.\n\n"
    )
}

/// The directories the plan writes into.
pub fn directories(data_dir: &Path) -> [PathBuf; 4] {
    ["config", "logs", "run", "data"].map(|d| data_dir.join(d))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::up::platform::{platform, standard_config};

    /// User and polling only, so these rules do not shift as services join.
    fn two() -> Platform {
        let mut p = platform().without_mesh();
        p.services
            .retain(|s| s.name == "user" || s.name == "polling");
        for s in &mut p.services {
            if s.name == "polling" {
                s.outbound = &["user"];
            }
        }
        p
    }

    #[test]
    fn the_real_platform_gets_the_documented_default_ports() {
        // Without the mesh; `mesh::tests` covers the sidecar ports.
        let plan = build(&platform().without_mesh(), &opts(vec![])).expect("plan");
        let mut got: Vec<(u16, &str)> = plan.ports();
        got.sort();
        assert_eq!(
            got,
            [
                (50051, "user"),
                (50052, "polling"),
                (50053, "notification"),
                (50054, "analytics"),
                (50055, "billing"),
                (50056, "payment"),
            ]
        );
        // Dependencies start first.
        let stage = |n: &str| plan.instances.iter().find(|i| i.name == n).map(|i| i.stage);
        assert!(stage("user") < stage("polling"));
        assert!(stage("payment") < stage("billing"));
        assert!(stage("polling") < stage("analytics"));
        assert!(stage("polling") < stage("notification"));
        let polling: toml::Table = plan
            .instances
            .iter()
            .find(|i| i.name == "polling")
            .expect("polling")
            .config
            .parse()
            .expect("toml");
        assert_eq!(
            polling["outbound"]["billing"].as_str(),
            Some("http://127.0.0.1:50055")
        );
    }

    fn opts(replicas: Vec<ReplicaArg>) -> Options {
        Options {
            data_dir: PathBuf::from("/tmp/t"),
            base_port: 50051,
            replicas,
            log_format: "pretty".into(),
        }
    }

    fn spec(name: &'static str, deps: &'static [&'static str]) -> ServiceSpec {
        ServiceSpec {
            name,
            binary: "x",
            health_service: "x.X",
            ports: &["grpc"],
            env_prefix: "TALLY_X_",
            depends_on: deps,
            outbound: deps,
            sidecar: false,
            mesh_only: false,
            config: standard_config,
        }
    }

    #[test]
    fn default_plan_puts_user_on_50051_and_polling_on_50052() {
        let plan = build(&two(), &opts(vec![])).expect("plan");
        let names: Vec<&str> = plan.instances.iter().map(|i| i.name.as_str()).collect();
        assert_eq!(names, ["user", "polling"]);
        assert_eq!(plan.instances[0].ports["grpc"], 50051);
        assert_eq!(plan.instances[1].ports["grpc"], 50052);
        assert_eq!(plan.stages().len(), 2, "polling waits for user");
        let polling: toml::Table = plan.instances[1].config.parse().expect("toml");
        assert_eq!(
            polling["outbound"]["user"].as_str(),
            Some("http://127.0.0.1:50051")
        );
        assert_eq!(
            polling["storage"]["path"].as_str(),
            Some("/tmp/t/data/polling/polling.redb")
        );
        assert_eq!(
            plan.instances[1].config_path,
            PathBuf::from("/tmp/t/config/polling.toml")
        );
        assert_eq!(
            plan.instances[1].log_path,
            PathBuf::from("/tmp/t/logs/polling.log")
        );
    }

    #[test]
    fn replicas_get_consecutive_ports_and_their_own_state() {
        let plan = build(&two(), &opts(vec![ReplicaArg::One("polling".into(), 3)])).expect("plan");
        let got: Vec<(&str, u16)> = plan
            .instances
            .iter()
            .map(|i| (i.name.as_str(), i.ports["grpc"]))
            .collect();
        assert_eq!(
            got,
            [
                ("user", 50051),
                ("polling-1", 50052),
                ("polling-2", 50053),
                ("polling-3", 50054)
            ]
        );
        let paths: BTreeSet<&str> = plan.instances.iter().map(|i| i.config.as_str()).collect();
        assert_eq!(paths.len(), 4, "every instance has its own config");
        assert!(
            plan.instances[3]
                .config
                .contains("/tmp/t/data/polling-3/polling.redb")
        );
    }

    #[test]
    fn replicas_for_all_services_and_base_port() {
        let mut o = opts(vec![ReplicaArg::All(2)]);
        o.base_port = 6000;
        let plan = build(&two(), &o).expect("plan");
        let ports: Vec<u16> = plan.ports().iter().map(|(p, _)| *p).collect();
        assert_eq!(ports, [6000, 6001, 6002, 6003]);
        // Outbound goes to the first user instance.
        let polling: toml::Table = plan.instances[2].config.parse().expect("toml");
        assert_eq!(
            polling["outbound"]["user"].as_str(),
            Some("http://127.0.0.1:6000")
        );
    }

    #[test]
    fn unknown_replica_service_is_a_usage_error() {
        let err =
            build(&two(), &opts(vec![ReplicaArg::One("pollnig".into(), 2)])).expect_err("unknown");
        let msg = err.to_string();
        assert!(
            msg.contains("pollnig") && msg.contains("user, polling"),
            "{msg}"
        );
    }

    #[test]
    fn ports_past_65535_are_refused() {
        let mut o = opts(vec![]);
        o.base_port = 65535;
        let err = build(&two(), &o).expect_err("overflow");
        assert!(err.to_string().contains("--base-port"), "{err}");
    }

    #[test]
    fn cycles_and_unknown_dependencies_are_reported() {
        let p = Platform {
            services: vec![spec("a", &["b"]), spec("b", &["a"])],
            sidecar: None,
        };
        assert!(
            build(&p, &opts(vec![]))
                .expect_err("cycle")
                .to_string()
                .contains("cycle")
        );
        let p = Platform {
            services: vec![spec("a", &["zzz"])],
            sidecar: None,
        };
        assert!(
            build(&p, &opts(vec![]))
                .expect_err("unknown")
                .to_string()
                .contains("zzz")
        );
    }

    #[test]
    fn stages_follow_the_longest_dependency_chain() {
        let p = Platform {
            services: vec![spec("c", &["a", "b"]), spec("b", &["a"]), spec("a", &[])],
            sidecar: None,
        };
        let plan = build(&p, &opts(vec![])).expect("plan");
        let order: Vec<(&str, usize)> = plan
            .instances
            .iter()
            .map(|i| (i.name.as_str(), i.stage))
            .collect();
        assert_eq!(order, [("a", 0), ("b", 1), ("c", 2)]);
    }

    fn sidecar_config(ctx: &ConfigContext) -> toml::Table {
        let mut t = toml::Table::new();
        t.insert(
            "inbound".into(),
            ctx.addr("inbound")
                .map(|a| a.to_string())
                .unwrap_or_default()
                .into(),
        );
        t.insert(
            "app".into(),
            ctx.app_addr
                .map(|a| a.to_string())
                .unwrap_or_default()
                .into(),
        );
        let routes: toml::Table = ctx
            .endpoints
            .iter()
            .map(|(k, v)| {
                (
                    k.clone(),
                    toml::Value::from(v.iter().map(|a| a.to_string()).collect::<Vec<_>>()),
                )
            })
            .collect();
        t.insert("routes".into(), routes.into());
        t
    }

    #[test]
    fn a_sidecar_spec_adds_one_proxy_per_instance_and_reroutes_outbound() {
        let mut p = two();
        p.sidecar = Some(crate::up::platform::SidecarSpec {
            binary: "tally-proxy",
            env_prefix: "TALLY_PROXY_",
            ports: &["inbound", "outbound"],
            config: sidecar_config,
            env: |_| Vec::new(),
        });
        let plan = build(&p, &opts(vec![ReplicaArg::One("user".into(), 2)])).expect("plan");
        let names: Vec<&str> = plan.instances.iter().map(|i| i.name.as_str()).collect();
        assert_eq!(
            names,
            [
                "user-1",
                "user-1-proxy",
                "user-2",
                "user-2-proxy",
                "polling",
                "polling-proxy"
            ]
        );
        // Service ports do not move; sidecar ports follow them.
        let polling = plan
            .instances
            .iter()
            .find(|i| i.name == "polling")
            .expect("polling");
        assert_eq!(polling.ports["grpc"], 50053);
        let user1_proxy = plan
            .instances
            .iter()
            .find(|i| i.name == "user-1-proxy")
            .expect("proxy");
        assert_eq!(user1_proxy.ports["inbound"], 50054);
        let polling_proxy = plan
            .instances
            .iter()
            .find(|i| i.name == "polling-proxy")
            .expect("proxy");
        // polling calls user through its own sidecar's outbound port...
        let cfg: toml::Table = polling.config.parse().expect("toml");
        assert_eq!(
            cfg["outbound"]["user"].as_str(),
            Some(format!("http://127.0.0.1:{}", polling_proxy.ports["outbound"]).as_str())
        );
        // ...which routes to both user sidecars' inbound ports and fronts polling.
        let pcfg: toml::Table = polling_proxy.config.parse().expect("toml");
        assert_eq!(pcfg["app"].as_str(), Some("127.0.0.1:50053"));
        let routes: Vec<&str> = pcfg["routes"]["user"]
            .as_array()
            .expect("array")
            .iter()
            .filter_map(|v| v.as_str())
            .collect();
        assert_eq!(routes, ["127.0.0.1:50054", "127.0.0.1:50056"]);
        assert!(polling_proxy.probe.is_none() && polling_proxy.binary == "tally-proxy");
    }

    #[test]
    fn replica_flags_parse() {
        assert_eq!(parse_replicas("2"), Ok(ReplicaArg::All(2)));
        assert_eq!(
            parse_replicas("polling=3"),
            Ok(ReplicaArg::One("polling".into(), 3))
        );
        assert!(parse_replicas("0").is_err());
        assert!(parse_replicas("polling=0").is_err());
        assert!(parse_replicas("=2").is_err());
        assert!(parse_replicas("two").is_err());
        assert!(parse_replicas("99").is_err());
    }
}
