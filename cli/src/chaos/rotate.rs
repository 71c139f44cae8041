//! The certificate-rotation fault: a fresh workload certificate for one proxy instance,
//! issued by the mesh CA `tally up` keeps in `<data-dir>/mesh/ca` with the same lifetime as
//! the current one, written over the files the proxy watches (key first, then certificate,
//! each atomically, as `tally up`'s own renewal does); then it waits until the proxy has
//! loaded it, which its audit log records as `cert.reload`.

use std::path::{Path, PathBuf};
use std::time::Duration;
use tally_certs::{CertAuthority, SpiffeId, inspect_pem, write_workload};
use tally_proxy::config::Config;

/// How long a proxy may take to load a rotated certificate (it polls its files every 500 ms).
pub const PICKUP_TIMEOUT: Duration = Duration::from_secs(10);
/// Pause between two looks at the proxy's audit log.
pub const PICKUP_POLL: Duration = Duration::from_millis(100);

/// What a rotation needs to know about one proxy instance.
#[derive(Debug, Clone)]
pub struct Target {
    pub instance: String,
    cert: PathBuf,
    namespace: String,
    service: String,
    audit: PathBuf,
    ca_dir: PathBuf,
}

impl Target {
    /// The rotation target of proxy `instance` with config `cfg`, under `data_dir`.
    pub fn of(data_dir: &Path, instance: &str, cfg: &Config) -> Result<Self, String> {
        let id = cfg
            .identity
            .as_ref()
            .ok_or_else(|| format!("`{instance}` has no [identity]: it runs without mTLS"))?;
        let audit = cfg.admin.audit_file.clone().ok_or_else(|| {
            format!("`{instance}` keeps no audit log, so a reload cannot be seen")
        })?;
        Ok(Self {
            instance: instance.to_string(),
            cert: id.cert.clone(),
            namespace: id.namespace.clone(),
            service: id.service.clone(),
            audit,
            ca_dir: crate::up::mesh::certs::ca_dir(data_dir),
        })
    }
}

fn reloads(audit: &Path) -> usize {
    std::fs::read_to_string(audit)
        .map(|t| {
            t.lines()
                .filter(|l| l.contains("\"action\":\"cert.reload\""))
                .count()
        })
        .unwrap_or(0)
}

fn serial_and_lifetime(cert: &Path) -> Result<(String, Duration), String> {
    let pem = std::fs::read(cert).map_err(|e| format!("cannot read {}: {e}", cert.display()))?;
    let leaf = inspect_pem(&pem)
        .map_err(|e| format!("{}: {e}", cert.display()))?
        .into_iter()
        .next()
        .ok_or_else(|| format!("{} holds no certificate", cert.display()))?;
    // The CA starts every certificate a little in the past; the validity it was issued
    // with is what remains.
    let lifetime = leaf
        .not_after
        .duration_since(leaf.not_before)
        .map_err(|_| format!("{} ends before it starts", cert.display()))?
        .saturating_sub(tally_certs::ca::CLOCK_SKEW_ALLOWANCE);
    Ok((leaf.serial, lifetime))
}

/// Rotates `t`'s certificate and waits until the proxy loaded it; says which serials.
pub async fn rotate(t: &Target) -> Result<String, String> {
    let (old, lifetime) = serial_and_lifetime(&t.cert)?;
    let ca = CertAuthority::load(&t.ca_dir)
        .map_err(|e| format!("mesh CA {}: {e}", t.ca_dir.display()))?;
    let id = SpiffeId::new(ca.trust_domain(), &t.namespace, &t.service)
        .map_err(|e| format!("{}: {e}", t.instance))?;
    let dir = t
        .cert
        .parent()
        .ok_or_else(|| format!("{} has no directory", t.cert.display()))?;
    let before = reloads(&t.audit);
    let issued = ca
        .issue(&id, lifetime)
        .map_err(|e| format!("issue for {id}: {e}"))?;
    let paths = write_workload(dir, &id, &issued).map_err(|e| e.to_string())?;
    if paths.cert != t.cert {
        return Err(format!(
            "{} reads {}, but the CA writes {}",
            t.instance,
            t.cert.display(),
            paths.cert.display()
        ));
    }
    let (new, _) = serial_and_lifetime(&t.cert)?;
    let started = tokio::time::Instant::now();
    while reloads(&t.audit) <= before {
        if started.elapsed() >= PICKUP_TIMEOUT {
            return Err(format!(
                "rotated {}'s certificate (serial {old} -> {new}) but it was not loaded within {PICKUP_TIMEOUT:?}",
                t.instance
            ));
        }
        tokio::time::sleep(PICKUP_POLL).await;
    }
    Ok(format!(
        "rotated {}'s certificate: serial {old} -> {new}, loaded after {:.1}s",
        t.instance,
        started.elapsed().as_secs_f64()
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_certificate_reloads_are_counted() {
        let dir = tempfile::tempdir().expect("tmp");
        let audit = dir.path().join("audit.log");
        assert_eq!(reloads(&audit), 0, "no log yet");
        std::fs::write(
            &audit,
            "{\"seq\":1,\"action\":\"authz.allow\"}\n\
             {\"seq\":2,\"action\":\"cert.reload\",\"outcome\":\"ok\"}\n\
             {\"seq\":3,\"action\":\"admin.faults\"}\n\
             {\"seq\":4,\"action\":\"cert.reload\",\"outcome\":\"ok\"}\n",
        )
        .expect("write");
        assert_eq!(reloads(&audit), 2);
    }

    #[test]
    fn the_lifetime_and_serial_come_from_the_current_certificate() {
        let dir = tempfile::tempdir().expect("tmp");
        let ca = CertAuthority::generate("tally.local").expect("ca");
        let id = SpiffeId::new("tally.local", "tally", "polling").expect("id");
        let lifetime = Duration::from_secs(3600);
        let issued = ca.issue(&id, lifetime).expect("issue");
        let paths = write_workload(dir.path(), &id, &issued).expect("write");
        let (serial, seen) = serial_and_lifetime(&paths.cert).expect("read");
        assert_eq!(seen, lifetime);
        assert!(serial.contains(':'), "{serial}");
        let again = ca.issue(&id, lifetime).expect("issue");
        write_workload(dir.path(), &id, &again).expect("write");
        let (other, _) = serial_and_lifetime(&paths.cert).expect("read");
        assert_ne!(serial, other, "a new certificate has a new serial");
        let e = serial_and_lifetime(&dir.path().join("none.pem")).expect_err("missing");
        assert!(e.contains("cannot read"), "{e}");
    }
}
