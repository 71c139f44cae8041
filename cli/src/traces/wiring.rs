//! Points every instance `tally up` starts at one OTLP endpoint: `[telemetry]
//! otlp_endpoint` in each service's config and in each proxy's (rewritten through the
//! proxy's own config type, so a schema change breaks the build, not a running mesh).

use super::receiver::Bound;
use super::store::TraceStore;
use crate::up::UpError;
use crate::up::plan::Plan;
use std::path::Path;
use std::sync::Arc;

/// The binary whose configs are proxy configs.
const PROXY_BINARY: &str = "tally-proxy";

/// Binds the embedded receiver (unless `external` names a collector) and points every
/// instance of `plan` at it; returns the receiver to hand to [`serve`].
pub async fn start(plan: &mut Plan, external: Option<&str>) -> Result<Option<Bound>, UpError> {
    let (receiver, endpoint) = match external {
        Some(url) => (None, url.to_string()),
        None => {
            let bound = Bound::bind().await.map_err(|source| UpError::Io {
                what: format!(
                    "cannot bind the trace receiver on {}",
                    super::receiver::LISTEN
                ),
                source,
            })?;
            let endpoint = bound.endpoint();
            (Some(bound), endpoint)
        }
    };
    point_at(plan, &endpoint).map_err(UpError::Platform)?;
    Ok(receiver)
}

/// Starts serving the receiver and writes its address to `<data_dir>/traces.addr`
/// for `tally traces`. Without a receiver (an external collector) it removes a stale file.
pub fn serve(receiver: Option<Bound>, data_dir: &Path) -> Result<(), UpError> {
    let file = data_dir.join(super::ADDR_FILE);
    let Some(receiver) = receiver else {
        let _ = std::fs::remove_file(&file);
        return Ok(());
    };
    std::fs::write(&file, receiver.addr().to_string()).map_err(|source| UpError::Io {
        what: format!("cannot write {}", file.display()),
        source,
    })?;
    crate::up::say(&format!(
        "traces: OTLP receiver at {} keeps recent traces; see them with `tally traces`",
        receiver.endpoint()
    ));
    receiver.spawn(Arc::new(TraceStore::new()));
    Ok(())
}

/// Sets `otlp_endpoint` in the config text of every instance of `plan`.
pub fn point_at(plan: &mut Plan, endpoint: &str) -> Result<(), String> {
    for inst in &mut plan.instances {
        inst.config = if inst.binary == PROXY_BINARY {
            proxy(&inst.name, &inst.config, endpoint)?
        } else {
            service(&inst.name, &inst.config, endpoint)?
        };
    }
    Ok(())
}

fn proxy(name: &str, text: &str, endpoint: &str) -> Result<String, String> {
    let mut cfg = tally_proxy::config::Config::parse(name, text).map_err(|e| e.to_string())?;
    cfg.telemetry.otlp_endpoint = Some(endpoint.to_string());
    toml::to_string(&cfg).map_err(|e| format!("{name}: the proxy config does not serialise: {e}"))
}

/// Services read `[telemetry]` through the chassis; a config without that table is
/// not a chassis service's and is left alone.
fn service(name: &str, text: &str, endpoint: &str) -> Result<String, String> {
    let mut root: toml::Table = text.parse().map_err(|e| format!("{name}: {e}"))?;
    let Some(toml::Value::Table(telemetry)) = root.get_mut("telemetry") else {
        return Ok(text.to_string());
    };
    telemetry.insert("otlp_endpoint".into(), endpoint.into());
    toml::to_string(&root).map_err(|e| format!("{name}: {e}"))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::up::plan::{Options, build};
    use crate::up::platform::platform;

    #[test]
    fn every_service_and_proxy_exports_to_the_endpoint() {
        let dir = std::path::PathBuf::from("/tmp/tally-wiring-test");
        let mut plan = build(
            &platform(),
            &Options {
                data_dir: dir,
                base_port: 42000,
                replicas: vec![],
                log_format: "pretty".into(),
            },
        )
        .expect("plan");
        point_at(&mut plan, "http://127.0.0.1:4317").expect("rewrite");
        let mut proxies = 0;
        for inst in &plan.instances {
            if inst.binary == PROXY_BINARY {
                let cfg =
                    tally_proxy::config::Config::parse(&inst.name, &inst.config).expect("parses");
                assert_eq!(
                    cfg.telemetry.otlp_endpoint.as_deref(),
                    Some("http://127.0.0.1:4317")
                );
                proxies += 1;
            } else {
                let t: toml::Table = inst.config.parse().expect("toml");
                assert_eq!(
                    t["telemetry"]["otlp_endpoint"].as_str(),
                    Some("http://127.0.0.1:4317"),
                    "{}",
                    inst.name
                );
            }
        }
        assert!(proxies > 0);
    }
}
