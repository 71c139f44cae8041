//! `tally up --canary SERVICE`: one more instance of a service (with its own sidecar) that
//! runs another binary or other settings, and that every caller's proxy lists as the
//! target's canary endpoint set (`[services.<name>.canary]`), at a weight `tally rollout`
//! then moves. Built on the replica machinery: the canary is the service's last instance,
//! taken out of the stable endpoints after the plan is built.

use super::UpError;
use super::plan::{Instance, Plan, ReplicaArg};
use std::path::PathBuf;

/// Weight the canary starts at: no calls until a rollout raises it.
pub const DEFAULT_START_WEIGHT: u8 = tally_proxy::split::DEFAULT_CANARY_WEIGHT;

/// The canary options of `tally up`.
#[derive(Debug, Clone, Default, clap::Args)]
pub struct CanaryArgs {
    /// Run one more instance of SERVICE as a canary (its own sidecar; callers' proxies split
    /// traffic to it by weight, starting at --canary-weight). Needs the mesh.
    #[arg(long, value_name = "SERVICE")]
    pub canary: Option<String>,
    /// The canary's binary (default: the service's own); a relative path is taken from the
    /// current directory.
    #[arg(long, value_name = "PATH", requires = "canary")]
    pub canary_bin: Option<PathBuf>,
    /// An environment variable for the canary only, e.g. `TALLY_ANALYTICS_...=...` (repeatable).
    #[arg(long, value_name = "KEY=VALUE", requires = "canary", value_parser = parse_env)]
    pub canary_env: Vec<(String, String)>,
    /// Percent of calls the canary gets at start (0-100).
    #[arg(long, default_value_t = DEFAULT_START_WEIGHT, requires = "canary",
          value_parser = clap::value_parser!(u8).range(0..=100))]
    pub canary_weight: u8,
}

fn parse_env(s: &str) -> Result<(String, String), String> {
    match s.split_once('=') {
        Some((k, v)) if !k.is_empty() => Ok((k.to_string(), v.to_string())),
        _ => Err(format!("`{s}`: expected KEY=VALUE")),
    }
}

/// The replica arguments with one more instance of the canary's service.
pub fn with_canary_replica(replicas: &[ReplicaArg], service: &str) -> Vec<ReplicaArg> {
    let mut count = 1;
    for r in replicas {
        match r {
            ReplicaArg::All(n) => count = *n,
            ReplicaArg::One(name, n) if name == service => count = *n,
            ReplicaArg::One(..) => {}
        }
    }
    let mut out = replicas.to_vec();
    out.push(ReplicaArg::One(service.to_string(), count + 1));
    out
}

/// Makes the last instance of `args.canary` the canary: its binary and environment, and
/// its inbound sidecar moved from every caller proxy's stable endpoints to the canary set.
/// Returns the canary instance's name.
pub fn apply(plan: &mut Plan, args: &CanaryArgs) -> Result<Option<String>, UpError> {
    let Some(service) = &args.canary else {
        return Ok(None);
    };
    let own: Vec<&Instance> = plan
        .instances
        .iter()
        .filter(|i| &i.service == service && i.sidecar_of.is_none() && i.addr.is_some())
        .collect();
    let (Some(canary), true) = (own.last(), own.len() >= 2) else {
        return Err(UpError::Usage(format!(
            "--canary {service}: there is no service `{service}` with a gRPC port"
        )));
    };
    let canary = canary.name.clone();
    let sidecar = plan
        .instances
        .iter()
        .find(|i| i.sidecar_of.as_deref() == Some(&canary))
        .ok_or_else(|| {
            UpError::Usage(format!(
                "--canary {service}: needs the mesh (the split happens in the callers' sidecars)"
            ))
        })?;
    let endpoint = sidecar
        .ports
        .get("inbound")
        .map(|p| format!("127.0.0.1:{p}"))
        .ok_or_else(|| UpError::Platform("the sidecar has no inbound port".into()))?;
    let mut callers = 0;
    for inst in plan.instances.iter_mut() {
        if inst.name == canary {
            if let Some(bin) = &args.canary_bin {
                let bin = std::path::absolute(bin)
                    .map_err(|e| UpError::Usage(format!("--canary-bin {}: {e}", bin.display())))?;
                inst.binary = bin.display().to_string();
            }
            inst.env.extend(args.canary_env.iter().cloned());
        } else if let Some(text) =
            split_config(&inst.config, service, &endpoint, args.canary_weight)
                .map_err(|e| UpError::Platform(format!("{}: {e}", inst.name)))?
        {
            inst.config = text;
            callers += 1;
        }
    }
    if callers == 0 {
        return Err(UpError::Usage(format!(
            "--canary {service}: no proxy routes to `{service}`, so nothing would reach the canary"
        )));
    }
    Ok(Some(canary))
}

/// A proxy config routing to `service` with `endpoint` moved into its canary set; `None`
/// when the config is not a proxy's or has no such route. Checked by `tally-proxy`'s parser.
fn split_config(
    text: &str,
    service: &str,
    endpoint: &str,
    weight: u8,
) -> Result<Option<String>, String> {
    let Ok(mut table) = text.parse::<toml::Table>() else {
        return Ok(None);
    };
    let Some(route) = table
        .get_mut("services")
        .and_then(|s| s.as_table_mut())
        .and_then(|s| s.get_mut(service))
        .and_then(|r| r.as_table_mut())
    else {
        return Ok(None);
    };
    let Some(endpoints) = route.get_mut("endpoints").and_then(|e| e.as_array_mut()) else {
        return Ok(None);
    };
    let before = endpoints.len();
    endpoints.retain(|e| e.as_str() != Some(endpoint));
    if endpoints.len() == before {
        return Ok(None);
    }
    let mut canary = toml::Table::new();
    canary.insert("endpoints".into(), vec![endpoint.to_string()].into());
    canary.insert("weight".into(), i64::from(weight).into());
    route.insert("canary".into(), canary.into());
    let body = toml::to_string(&table).map_err(|e| e.to_string())?;
    // Keep the header comment `tally up` wrote.
    let header: String = text
        .lines()
        .take_while(|l| l.starts_with('#') || l.is_empty())
        .map(|l| format!("{l}\n"))
        .collect();
    let out = header + &body;
    let cfg = tally_proxy::config::Config::parse("canary", &out).map_err(|e| e.to_string())?;
    cfg.validate("canary").map_err(|e| e.to_string())?;
    Ok(Some(out))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::up::mesh::test_plan::proxy;
    use crate::up::plan::{Options, build};
    use crate::up::platform::platform;

    fn plan_with(args: &CanaryArgs) -> (Plan, Option<String>) {
        let service = args.canary.clone().unwrap_or_default();
        let mut plan = build(
            &platform(),
            &Options {
                data_dir: PathBuf::from("/tmp/t"),
                base_port: 50051,
                replicas: with_canary_replica(&[], &service),
                log_format: "pretty".into(),
            },
        )
        .expect("plan");
        let name = apply(&mut plan, args).expect("canary");
        (plan, name)
    }

    #[test]
    fn the_last_instance_becomes_the_canary_of_every_caller() {
        let args = CanaryArgs {
            canary: Some("analytics".into()),
            canary_bin: Some(PathBuf::from("/opt/v2/tally-analytics")),
            canary_env: vec![("TALLY_ANALYTICS_X".into(), "1".into())],
            canary_weight: 5,
        };
        let (plan, name) = plan_with(&args);
        assert_eq!(name.as_deref(), Some("analytics-2"));
        let inst = plan
            .instances
            .iter()
            .find(|i| i.name == "analytics-2")
            .expect("canary");
        assert_eq!(inst.binary, "/opt/v2/tally-analytics");
        assert!(inst.env.contains(&("TALLY_ANALYTICS_X".into(), "1".into())));
        let stable = proxy(&plan, "analytics-1-proxy")
            .inbound
            .expect("in")
            .listen;
        let canary = proxy(&plan, "analytics-2-proxy")
            .inbound
            .expect("in")
            .listen;
        // The gateway is the one caller of analytics.
        let gw = proxy(&plan, "gateway");
        let route = &gw.services["analytics"];
        assert_eq!(route.endpoints, [stable.to_string()]);
        let c = route.canary.as_ref().expect("canary set");
        assert_eq!(c.endpoints, [canary.to_string()]);
        assert_eq!(c.weight, 5);
        let text = &plan
            .instances
            .iter()
            .find(|i| i.name == "gateway")
            .expect("gw")
            .config;
        assert!(text.starts_with("# Written by `tally up`"), "{text}");
    }

    #[test]
    fn callers_of_user_all_split() {
        let args = CanaryArgs {
            canary: Some("user".into()),
            ..CanaryArgs::default()
        };
        let (plan, _) = plan_with(&args);
        for caller in ["polling-proxy", "billing-proxy", "gateway"] {
            let c = proxy(&plan, caller).services["user"]
                .canary
                .clone()
                .expect("canary");
            assert_eq!(c.weight, 0, "{caller}");
        }
    }

    #[test]
    fn replicas_grow_by_one() {
        assert_eq!(
            with_canary_replica(&[ReplicaArg::All(2)], "user").last(),
            Some(&ReplicaArg::One("user".into(), 3))
        );
        assert_eq!(
            with_canary_replica(&[], "user"),
            [ReplicaArg::One("user".into(), 2)]
        );
    }

    #[test]
    fn a_canary_needs_the_mesh_and_a_known_service() {
        let mut plan = build(
            &platform().without_mesh(),
            &Options {
                data_dir: PathBuf::from("/tmp/t"),
                base_port: 50051,
                replicas: with_canary_replica(&[], "analytics"),
                log_format: "pretty".into(),
            },
        )
        .expect("plan");
        let args = CanaryArgs {
            canary: Some("analytics".into()),
            ..CanaryArgs::default()
        };
        let e = apply(&mut plan, &args).expect_err("no mesh");
        assert!(e.to_string().contains("needs the mesh"), "{e}");
        let args = CanaryArgs {
            canary: Some("nope".into()),
            ..CanaryArgs::default()
        };
        assert!(apply(&mut plan, &args).is_err());
    }
}
