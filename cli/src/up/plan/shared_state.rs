//! Replicas that do not lie: several instances of a service are only run
//! when they share its state. A service whose config keeps its data in an
//! embedded database file (`[storage] backend = "embedded"`) would get one
//! file per replica: each would hold a different part of the data, and
//! user replicas would each sign tokens with their own key (the signing-key
//! ring lives in the service's store, so replicas on a shared store share
//! it). Such a plan is refused with the reason and the fix. Read models
//! (analytics, notification) are exempt: each replica rebuilds a whole copy
//! from the event feed, which is also what lets `tally up --canary analytics`
//! run a second analytics instance.

use super::super::UpError;
use super::super::platform::Platform;
use super::Plan;
use std::collections::BTreeMap;

/// The storage backend that keeps one file per instance.
const EMBEDDED_BACKEND: &str = "embedded";

/// Refuses `plan` when a service of `platform` that is not a read model runs
/// more than one instance on embedded storage.
pub fn refuse_split_state(plan: &Plan, platform: &Platform) -> Result<(), UpError> {
    let read_model = |service: &str| {
        platform
            .services
            .iter()
            .any(|s| s.name == service && s.read_model)
    };
    let mut embedded: BTreeMap<&str, u32> = BTreeMap::new();
    for inst in plan
        .instances
        .iter()
        .filter(|i| i.sidecar_of.is_none() && !read_model(&i.service))
    {
        let backend = inst.config.parse::<toml::Table>().ok().and_then(|t| {
            t.get("storage")?
                .get("backend")?
                .as_str()
                .map(str::to_string)
        });
        if backend.as_deref() == Some(EMBEDDED_BACKEND) {
            *embedded.entry(inst.service.as_str()).or_default() += 1;
        }
    }
    let split: Vec<String> = embedded
        .into_iter()
        .filter(|(_, n)| *n > 1)
        .map(|(service, n)| message(service, n))
        .collect();
    if split.is_empty() {
        Ok(())
    } else {
        Err(UpError::Usage(split.join("\n")))
    }
}

fn message(service: &str, n: u32) -> String {
    let key = if service == "user" {
        " and each would sign tokens with its own key, so a token from one replica fails on another"
    } else {
        ""
    };
    format!(
        "--replicas {service}={n} refused: {service} keeps its state in an embedded database file \
         (storage.backend = \"{EMBEDDED_BACKEND}\"), one per instance, so {n} replicas would each hold \
         a different part of the data{key}. Fix: run one instance of {service}, or give every replica \
         one shared store: [storage] backend = \"scylla\" with the same nodes and keyspace (and \
         Redis for sessions), then run the replicas from those configs; `tally up` itself starts \
         embedded storage only."
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::up::plan::{Options, ReplicaArg, build};
    use crate::up::platform::{ConfigContext, platform};
    use std::path::PathBuf;

    fn opts(replicas: Vec<ReplicaArg>) -> Options {
        Options {
            data_dir: PathBuf::from("/tmp/t"),
            base_port: 50051,
            replicas,
            log_format: "pretty".into(),
        }
    }

    #[test]
    fn one_instance_each_is_fine_with_or_without_the_mesh() {
        for p in [platform(), platform().without_mesh()] {
            let plan = build(&p, &opts(vec![])).expect("plan");
            refuse_split_state(&plan, &p).expect("one instance each");
        }
    }

    #[test]
    fn replicas_of_a_service_on_embedded_storage_are_refused_with_the_fix() {
        let p = platform();
        let plan = build(&p, &opts(vec![ReplicaArg::One("polling".into(), 2)])).expect("plan");
        let msg = refuse_split_state(&plan, &p)
            .expect_err("split")
            .to_string();
        assert!(msg.contains("--replicas polling=2 refused"), "{msg}");
        assert!(msg.contains("embedded database file"), "{msg}");
        assert!(msg.contains("different part of the data"), "{msg}");
        assert!(msg.contains("backend = \"scylla\""), "{msg}");
        assert!(msg.contains("run one instance of polling"), "{msg}");
    }

    #[test]
    fn user_replicas_name_the_signing_key_and_every_split_service_is_listed() {
        let p = platform().without_mesh();
        let plan = build(&p, &opts(vec![ReplicaArg::All(3)])).expect("plan");
        let msg = refuse_split_state(&plan, &p)
            .expect_err("split")
            .to_string();
        for s in ["user", "polling", "billing", "payment"] {
            assert!(
                msg.contains(&format!("--replicas {s}=3 refused")),
                "{s}: {msg}"
            );
        }
        // Read models keep a whole copy per replica: not refused.
        for s in ["notification", "analytics"] {
            assert!(!msg.contains(&format!("--replicas {s}=")), "{s}: {msg}");
        }
        assert!(msg.contains("sign tokens with its own key"), "{msg}");
    }

    fn shared_store(ctx: &ConfigContext<'_>) -> Result<toml::Table, String> {
        let mut t = crate::up::platform::standard_config(ctx)?;
        let storage: toml::Table = toml::from_str(
            "backend = \"scylla\"\nnodes = [\"10.0.0.1:9042\"]\nkeyspace = \"tally_polling\"",
        )
        .map_err(|e| e.to_string())?;
        t.insert("storage".into(), storage.into());
        Ok(t)
    }

    #[test]
    fn replicas_on_a_shared_store_and_stateless_instances_run() {
        let mut p = platform();
        for s in &mut p.services {
            if s.name == "polling" {
                s.config = shared_store;
            }
        }
        // Polling on a shared store, and the gateway, which keeps no state.
        let plan = build(
            &p,
            &opts(vec![
                ReplicaArg::One("polling".into(), 2),
                ReplicaArg::One("gateway".into(), 2),
            ]),
        )
        .expect("plan");
        refuse_split_state(&plan, &p).expect("shared store");
    }

    #[test]
    fn a_canary_of_a_read_model_runs_on_embedded_storage() {
        let p = platform();
        let replicas = crate::up::canary::with_canary_replica(&[], "analytics");
        let plan = build(&p, &opts(replicas)).expect("plan");
        refuse_split_state(&plan, &p).expect("analytics rebuilds from the feed");
    }
}
