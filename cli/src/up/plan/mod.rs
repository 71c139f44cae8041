//! Turns the [`Platform`] description plus the command-line choices (replicas,
//! base port, data directory) into the concrete list of processes to run:
//! instance names, ports, config text, file paths and start order.
//!
//! Pure: no I/O, so every rule here is unit-tested. This module holds the
//! plan's types and [`build`], which puts the parts together: [`replicas`]
//! (how many of each), [`stages`] (start order), [`slots`] (ports) and
//! [`files`] (config text and directories); [`shared_state`] refuses replicas
//! that would each keep their own copy of a service's state.

mod files;
mod replicas;
mod shared_state;
mod slots;
mod stages;

pub use files::{AUDIT_DIR, audit_file, directories};
pub use replicas::{ReplicaArg, parse_replicas};
pub use shared_state::refuse_split_state;
pub use slots::METRICS_PORT;

use super::UpError;
use super::platform::{ConfigContext, Platform};
use files::{config_args, header, render, sidecar_header};
use replicas::replica_counts;
use slots::loopback;
use stages::stages;
use std::collections::BTreeMap;
use std::ffi::OsString;
use std::net::SocketAddr;
use std::path::PathBuf;

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
            ProbeKind::HttpReady | ProbeKind::RedisPing => "ready",
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
    /// A Redis `PING` answers `+PONG` (`tally up --redis`).
    RedisPing,
}

/// One process `tally up` runs.
#[derive(Debug, Clone)]
pub struct Instance {
    /// `user`, or `polling-1`, `polling-2` with replicas.
    pub name: String,
    /// The service it belongs to (`polling` for `polling-2` and its sidecar).
    pub service: String,
    pub binary: String,
    pub ports: BTreeMap<&'static str, u16>,
    /// The gRPC address clients use (the `grpc` port).
    pub addr: Option<SocketAddr>,
    pub probe: Option<Probe>,
    pub config_path: PathBuf,
    /// The config file's text.
    pub config: String,
    pub log_path: PathBuf,
    pub pid_path: PathBuf,
    /// Start stage: every instance of stage k starts after stage k-1 is SERVING.
    pub stage: usize,
    /// Extra environment variables for the process.
    pub env: Vec<(String, String)>,
    /// The process's arguments (`--config <config_path>` for Tally's binaries).
    pub args: Vec<OsString>,
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

    let slots = slots::allocate(platform, &counts, opts.base_port)?;
    let endpoints = slots::endpoints(&slots);
    let direct = slots::direct_addresses(&slots);

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
            args: config_args(&dir("config").join(format!("{}.toml", slot.name))),
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
                args: config_args(&dir("config").join(format!("{name}.toml"))),
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::up::platform::platform;
    use std::collections::BTreeSet;

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
                // Each instance's `/metrics`, after every other port.
                (50057, "user"),
                (50058, "polling"),
                (50059, "notification"),
                (50060, "analytics"),
                (50061, "billing"),
                (50062, "payment"),
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

    #[test]
    fn the_port_counts_the_tests_reserve_are_what_the_plan_takes() {
        let plan = build(&platform(), &opts(vec![])).expect("plan");
        assert_eq!(
            plan.ports().len(),
            usize::from(tally_testkit::TALLY_UP_PORTS)
        );
        let canary = crate::up::canary::with_canary_replica(&[], "analytics");
        let plan = build(&platform(), &opts(canary)).expect("plan");
        assert_eq!(
            plan.ports().len(),
            usize::from(
                tally_testkit::TALLY_UP_PORTS + tally_testkit::TALLY_UP_PORTS_PER_EXTRA_INSTANCE
            )
        );
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
        // Four gRPC ports, then four metrics ports.
        assert_eq!(ports, [6000, 6001, 6002, 6003, 6004, 6005, 6006, 6007]);
        // Outbound goes to the first user instance.
        let polling: toml::Table = plan.instances[2].config.parse().expect("toml");
        assert_eq!(
            polling["outbound"]["user"].as_str(),
            Some("http://127.0.0.1:6000")
        );
    }

    fn sidecar_config(ctx: &ConfigContext<'_>) -> Result<toml::Table, String> {
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
        Ok(t)
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
}
