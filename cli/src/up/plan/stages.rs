//! Start order: a stage per service from its `depends_on` (0 without
//! dependencies, else one more than its latest dependency), refusing
//! unknown names and cycles.

use super::super::UpError;
use super::super::platform::ServiceSpec;
use std::collections::{BTreeMap, BTreeSet};

/// Start stage per service: 0 for no dependencies, else one more than the
/// latest dependency. Unknown names and cycles are errors.
pub(super) fn stages(services: &[ServiceSpec]) -> Result<BTreeMap<&'static str, usize>, UpError> {
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::up::platform::standard_config;

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
            read_model: false,
            config: standard_config,
        }
    }

    #[test]
    fn cycles_and_unknown_dependencies_are_reported() {
        let err = stages(&[spec("a", &["b"]), spec("b", &["a"])]).expect_err("cycle");
        assert!(err.to_string().contains("cycle"), "{err}");
        let err = stages(&[spec("a", &["zzz"])]).expect_err("unknown");
        assert!(err.to_string().contains("zzz"), "{err}");
    }

    #[test]
    fn stages_follow_the_longest_dependency_chain() {
        let got =
            stages(&[spec("c", &["a", "b"]), spec("b", &["a"]), spec("a", &[])]).expect("stages");
        assert_eq!(got, BTreeMap::from([("a", 0), ("b", 1), ("c", 2)]));
    }
}
