//! The running platform as a chaos run sees it: the gateway address and the sidecars' admin
//! addresses from the proxy configs `tally up` wrote in `<data-dir>/config/`, the admin
//! token, fault changes through `PUT /faults` (each route's settings saved first and put back
//! afterwards), and signals to instances by the pid files in `<data-dir>/run/`.

use super::rotate;
use super::scenario::{Fault, Kill, Scenario, Signal};
use super::schedule::{Action, Control};
use super::verdict::Verdict;
use crate::rollout::admin;
use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use tally_proxy::config::{Config, FaultConfig};

/// The platform's handles for one scenario.
pub struct Platform {
    /// The gateway's gRPC address (`host:port`).
    pub gateway: String,
    token: String,
    run_dir: PathBuf,
    /// Admin address of each sidecar the scenario names.
    admins: BTreeMap<String, SocketAddr>,
    faults: Vec<Fault>,
    kills: Vec<Kill>,
    rotations: Vec<rotate::Target>,
    /// Each service's own gRPC address (`[server] listen_addr`), by service instance.
    pub services: BTreeMap<String, String>,
    /// Settings of each touched (sidecar, route) before the run.
    originals: BTreeMap<(String, String), FaultConfig>,
    /// Seed of the fault draws, sent with every fault so the run can be replayed.
    seed: u64,
}

fn proxy_config(data_dir: &Path, name: &str) -> Result<Config, String> {
    let path = data_dir.join("config").join(format!("{name}.toml"));
    let text = std::fs::read_to_string(&path).map_err(|e| {
        format!(
            "no instance `{name}` under {}: cannot read {}: {e}",
            data_dir.display(),
            path.display()
        )
    })?;
    Config::parse(&path.display().to_string(), &text)
        .map_err(|e| format!("`{name}` is not a proxy: {e}"))
}

/// Every service instance's own address: the configs in `<data-dir>/config/` with a
/// `[server] listen_addr` (proxies have none).
fn service_addresses(data_dir: &Path) -> Result<BTreeMap<String, String>, String> {
    let dir = data_dir.join("config");
    let entries =
        std::fs::read_dir(&dir).map_err(|e| format!("cannot list {}: {e}", dir.display()))?;
    let mut out = BTreeMap::new();
    for e in entries.flatten() {
        let path = e.path();
        let (Some(name), Some("toml")) = (
            path.file_stem().and_then(|s| s.to_str()),
            path.extension().and_then(|s| s.to_str()),
        ) else {
            continue;
        };
        let Ok(table) = std::fs::read_to_string(&path)
            .unwrap_or_default()
            .parse::<toml::Table>()
        else {
            continue;
        };
        if let Some(addr) = table
            .get("server")
            .and_then(|s| s.get("listen_addr"))
            .and_then(|a| a.as_str())
        {
            out.insert(name.to_string(), addr.to_string());
        }
    }
    Ok(out)
}

impl Platform {
    /// Finds everything `s` needs under `data_dir`, or says what is missing.
    pub fn open(data_dir: &Path, s: &Scenario, seed: u64) -> Result<Self, String> {
        for r in &s.requires {
            // `tally up` keeps a pid file for each instance it supervises, and removes it
            // when it stops supervising it.
            if !data_dir.join("run").join(format!("{r}.pid")).exists() {
                return Err(format!(
                    "scenario `{}` requires the `{r}` instance, but the `tally up` with data \
                     directory {} runs none: start it with `tally up --{r}`",
                    s.name,
                    data_dir.display()
                ));
            }
        }
        let gw = proxy_config(data_dir, "gateway")?;
        let gateway = gw
            .gateway
            .map(|g| g.listen.to_string())
            .ok_or("the `gateway` instance has no [gateway] listener")?;
        let token_path = crate::up::mesh::admin_token::path(data_dir);
        let token = std::fs::read_to_string(&token_path)
            .map_err(|e| format!("cannot read the admin token {}: {e}", token_path.display()))?
            .trim()
            .to_string();
        let mut admins = BTreeMap::new();
        for f in &s.faults {
            let cfg = proxy_config(data_dir, &f.sidecar)?;
            admins.insert(f.sidecar.clone(), cfg.admin.listen);
        }
        for k in &s.kills {
            let cfg = data_dir.join("config").join(format!("{}.toml", k.instance));
            if !cfg.exists() {
                return Err(format!(
                    "no instance `{}` under {}",
                    k.instance,
                    data_dir.display()
                ));
            }
        }
        let mut rotations = Vec::new();
        for r in &s.rotations {
            let cfg = proxy_config(data_dir, &r.instance)?;
            rotations.push(rotate::Target::of(data_dir, &r.instance, &cfg)?);
        }
        Ok(Self {
            gateway,
            token,
            run_dir: data_dir.join("run"),
            admins,
            faults: s.faults.clone(),
            kills: s.kills.clone(),
            rotations,
            services: service_addresses(data_dir)?,
            originals: BTreeMap::new(),
            seed,
        })
    }

    async fn current(&self, sidecar: &str) -> Result<BTreeMap<String, FaultConfig>, String> {
        let addr = self.admins[sidecar];
        let body = admin::request(addr, "GET", "/faults", None, "")
            .await
            .map_err(|e| e.to_string())?;
        serde_json::from_str(&body).map_err(|e| format!("{sidecar} GET /faults: {e}"))
    }

    /// Saves the settings of every route the scenario touches.
    pub async fn snapshot(&mut self) -> Result<(), String> {
        for f in &self.faults {
            let now = self.current(&f.sidecar).await?;
            let key = (f.sidecar.clone(), f.route.clone());
            let original = now.get(&f.route).cloned().unwrap_or_default();
            self.originals.entry(key).or_insert(original);
        }
        Ok(())
    }

    async fn put(&self, sidecar: &str, route: &str, faults: &FaultConfig) -> Result<(), String> {
        let body = serde_json::json!({ "route": route, "faults": faults }).to_string();
        admin::request(
            self.admins[sidecar],
            "PUT",
            "/faults",
            Some(&self.token),
            &body,
        )
        .await
        .map(|_| ())
        .map_err(|e| e.to_string())
    }

    async fn restore(&self, sidecar: &str, route: &str) -> Result<(), String> {
        let key = (sidecar.to_string(), route.to_string());
        let original = self.originals.get(&key).cloned().unwrap_or_default();
        self.put(sidecar, route, &original).await
    }

    /// Puts every touched route back as it was; says how many.
    pub async fn restore_all(&self) -> Result<String, String> {
        let mut errors = Vec::new();
        for (sidecar, route) in self.originals.keys() {
            if let Err(e) = self.restore(sidecar, route).await {
                errors.push(e);
            }
        }
        if errors.is_empty() {
            Ok(format!(
                "fault settings of {} route(s) put back",
                self.originals.len()
            ))
        } else {
            Err(errors.join("; "))
        }
    }

    /// The invariant: every touched route has its original settings again.
    pub async fn faults_cleared(&self) -> Verdict {
        let mut left = Vec::new();
        for ((sidecar, route), original) in &self.originals {
            match self.current(sidecar).await {
                Ok(now) => {
                    let now = now.get(route).cloned().unwrap_or_default();
                    if now != *original {
                        left.push(format!("{sidecar} {route}: {now:?}"));
                    }
                }
                Err(e) => left.push(e),
            }
        }
        Verdict {
            name: "invariant faults cleared".into(),
            met: left.is_empty(),
            detail: if left.is_empty() {
                format!("{} route(s) back to their settings", self.originals.len())
            } else {
                left.join("; ")
            },
        }
    }

    async fn set_fault(&self, f: &Fault) -> Result<String, String> {
        let key = (f.sidecar.clone(), f.route.clone());
        let base = self.originals.get(&key).cloned().unwrap_or_default();
        let faults = FaultConfig {
            abort_percent: f.abort_percent,
            abort_grpc_status: f.abort_grpc_status,
            delay_percent: f.delay_percent,
            delay_ms: f.delay_ms,
            reset_percent: f.reset_percent,
            seed: Some(self.seed),
            ..base
        };
        self.put(&f.sidecar, &f.route, &faults).await?;
        Ok(format!(
            "{} {}: abort {}% (code {}), delay {}% by {}ms, reset {}%",
            f.sidecar,
            f.route,
            f.abort_percent,
            f.abort_grpc_status,
            f.delay_percent,
            f.delay_ms,
            f.reset_percent
        ))
    }

    fn kill(&self, k: &Kill) -> Result<String, String> {
        let path = self.run_dir.join(format!("{}.pid", k.instance));
        let text = std::fs::read_to_string(&path)
            .map_err(|e| format!("{}: no pid ({}: {e})", k.instance, path.display()))?;
        let pid: i32 = text
            .trim()
            .parse()
            .ok()
            .filter(|p| *p > 1)
            .ok_or_else(|| format!("{}: bad pid file {}", k.instance, path.display()))?;
        let (sig, name) = match k.signal {
            Signal::Kill => (libc::SIGKILL, "SIGKILL"),
            Signal::Term => (libc::SIGTERM, "SIGTERM"),
        };
        // SAFETY: kill(2) with a pid read from the instance's pid file that `tally up`
        // writes when it starts the process; no memory is shared.
        #[allow(unsafe_code)]
        let rc = unsafe { libc::kill(pid, sig) };
        if rc != 0 {
            return Err(format!(
                "{name} {} (pid {pid}): {}",
                k.instance,
                std::io::Error::last_os_error()
            ));
        }
        Ok(format!("{name} {} (pid {pid})", k.instance))
    }
}

impl Control for Platform {
    /// Does `action` and prints its line as it happens.
    async fn apply(&mut self, action: Action) -> Result<String, String> {
        let r = self.act(action).await;
        match &r {
            Ok(line) => println!("tally chaos: {line}"),
            Err(e) => println!("tally chaos: FAILED {e}"),
        }
        r
    }
}

impl Platform {
    async fn act(&self, action: Action) -> Result<String, String> {
        match action {
            Action::SetFault(i) => self
                .set_fault(&self.faults[i])
                .await
                .map(|l| format!("set {l}")),
            Action::ClearFault(i) => {
                let f = &self.faults[i];
                self.restore(&f.sidecar, &f.route).await?;
                Ok(format!("cleared {} {}", f.sidecar, f.route))
            }
            Action::Kill(i) => self.kill(&self.kills[i]),
            Action::RotateCert(i) => rotate::rotate(&self.rotations[i]).await,
        }
    }
}
