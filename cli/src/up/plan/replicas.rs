//! `--replicas`: parsing `N` / `SERVICE=N`, the count per service, and the
//! instance names that follow from it (`polling`, or `polling-1`, `polling-2`).

use super::super::UpError;
use super::super::platform::Platform;
use std::collections::BTreeMap;

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

pub(super) fn replica_counts(
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

pub(super) fn instance_name(service: &str, index: u32, count: u32) -> String {
    if count == 1 {
        service.to_string()
    } else {
        format!("{service}-{index}")
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::up::platform::platform;

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

    #[test]
    fn unknown_replica_service_is_a_usage_error() {
        let p = platform().without_mesh();
        let err = replica_counts(&p, &[ReplicaArg::One("pollnig".into(), 2)]).expect_err("unknown");
        let msg = err.to_string();
        assert!(
            msg.contains("pollnig") && msg.contains("user, polling"),
            "{msg}"
        );
    }

    #[test]
    fn the_last_flag_for_a_service_wins_and_names_follow_counts() {
        let p = platform().without_mesh();
        let counts = replica_counts(&p, &[ReplicaArg::All(2), ReplicaArg::One("user".into(), 3)])
            .expect("counts");
        assert_eq!((counts["user"], counts["polling"]), (3, 2));
        assert_eq!(instance_name("user", 1, 1), "user");
        assert_eq!(instance_name("user", 2, 3), "user-2");
    }
}
