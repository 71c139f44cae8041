//! The mesh's certificates as `tally up` keeps them: a CA under
//! `<data-dir>/mesh/ca`, created once and reused, and one short-lived
//! workload certificate per identity in `<data-dir>/mesh/certs`, renewed in
//! the background while `tally up` runs. The proxies re-read renewed files
//! themselves.

use super::super::{UpError, say};
use super::{NAMESPACE, TRUST_DOMAIN};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, SystemTime};
use tally_certs::{CertAuthority, Rotator, SpiffeId};

/// Default lifetime of a workload certificate (`--cert-validity`).
pub const DEFAULT_CERT_VALIDITY: &str = "24h";

/// Where the CA lives: `<data-dir>/mesh/ca`.
pub fn ca_dir(data_dir: &Path) -> PathBuf {
    data_dir.join("mesh").join("ca")
}

/// Where workload certificates and the trust bundle live: `<data-dir>/mesh/certs`.
pub fn certs_dir(data_dir: &Path) -> PathBuf {
    data_dir.join("mesh").join("certs")
}

/// Parses `--cert-validity` (`24h`, `15m`, `90s`), within what the CA issues.
pub fn parse_validity(s: &str) -> Result<Duration, String> {
    use tally_certs::ca::{MAX_WORKLOAD_VALIDITY, MIN_WORKLOAD_VALIDITY};
    let d = tally_certs::parse_duration(s).map_err(|e| e.to_string())?;
    if d < MIN_WORKLOAD_VALIDITY || d > MAX_WORKLOAD_VALIDITY {
        return Err(format!(
            "certificate validity must be between {} and {}, got {s}",
            tally_certs::format_duration(MIN_WORKLOAD_VALIDITY),
            tally_certs::format_duration(MAX_WORKLOAD_VALIDITY)
        ));
    }
    Ok(d)
}

fn certs_err(e: impl std::fmt::Display) -> UpError {
    UpError::Mesh(e.to_string())
}

/// Loads the CA from `<data-dir>/mesh/ca`, creating it on the first run.
pub fn load_or_create_ca(data_dir: &Path) -> Result<CertAuthority, UpError> {
    let dir = ca_dir(data_dir);
    if dir.join(tally_certs::ca::CA_CERT_FILE).exists() {
        let ca = CertAuthority::load(&dir).map_err(certs_err)?;
        if ca.trust_domain() != TRUST_DOMAIN {
            return Err(UpError::Mesh(format!(
                "the CA in {} is for trust domain {:?}, not {TRUST_DOMAIN:?}; \
                 move the directory away to create a new one",
                dir.display(),
                ca.trust_domain()
            )));
        }
        Ok(ca)
    } else {
        say(&format!("creating the mesh CA in {}", dir.display()));
        CertAuthority::init(&dir, TRUST_DOMAIN, false).map_err(certs_err)
    }
}

/// Writes the trust bundle and a fresh certificate for each service into
/// `<data-dir>/mesh/certs`, and returns one [`Rotator`] per service to keep
/// them fresh. Fresh on every start, so a changed `--cert-validity` or a new
/// CA takes effect at once.
pub fn issue_certificates(
    data_dir: &Path,
    services: &[&str],
    validity: Duration,
) -> Result<Vec<(String, Rotator)>, UpError> {
    let ca = Arc::new(load_or_create_ca(data_dir)?);
    let dir = certs_dir(data_dir);
    std::fs::create_dir_all(&dir).map_err(|e| UpError::Io {
        what: format!("cannot create {}", dir.display()),
        source: e,
    })?;
    // The CA directory's bundle holds every root workloads must trust (two
    // during a CA rotation); workloads read their copy.
    let bundle = std::fs::read_to_string(ca_dir(data_dir).join(tally_certs::ca::BUNDLE_FILE))
        .unwrap_or_else(|_| ca.cert_pem().to_string());
    write_replacing(&dir.join(tally_certs::ca::BUNDLE_FILE), bundle.as_bytes())?;
    let mut rotators = Vec::new();
    for service in services {
        let id = SpiffeId::new(TRUST_DOMAIN, NAMESPACE, *service).map_err(certs_err)?;
        let issued = ca.issue(&id, validity).map_err(certs_err)?;
        tally_certs::write_workload(&dir, &id, &issued).map_err(certs_err)?;
        rotators.push((
            (*service).to_string(),
            Rotator::new(ca.clone(), dir.clone(), id, validity),
        ));
    }
    Ok(rotators)
}

/// Writes a file through a temporary file and a rename, so a proxy reading
/// it never sees half of it.
fn write_replacing(path: &Path, contents: &[u8]) -> Result<(), UpError> {
    let tmp = path.with_extension("pem.tmp");
    std::fs::write(&tmp, contents)
        .and_then(|()| std::fs::rename(&tmp, path))
        .map_err(|e| UpError::Io {
            what: format!("cannot write {}", path.display()),
            source: e,
        })
}

/// Renews one service's certificate at 70% of its lifetime, forever (abort
/// the task to stop). Says so on stdout, like the rest of `tally up`.
pub async fn renew(service: String, rotator: Rotator) {
    loop {
        let now = SystemTime::now();
        let wait = match rotator.rotate_if_due(now) {
            Ok(status) => {
                if status.renewed {
                    say(&format!(
                        "renewed the mesh certificate of {service} (valid until {})",
                        tally_certs::inspect::rfc3339(status.not_after)
                    ));
                }
                status
                    .renew_at
                    .duration_since(now)
                    .unwrap_or_default()
                    .max(Duration::from_secs(1))
            }
            Err(e) => {
                say(&format!(
                    "renewing the mesh certificate of {service} failed ({e}); retrying in {}s",
                    tally_certs::rotate::RETRY_AFTER_ERROR.as_secs()
                ));
                tally_certs::rotate::RETRY_AFTER_ERROR
            }
        };
        tokio::time::sleep(wait).await;
    }
}
#[cfg(test)]
mod tests {
    use super::*;
    use crate::up::mesh::spiffe_id;

    #[test]
    fn validity_flag_is_checked() {
        assert_eq!(parse_validity("24h"), Ok(Duration::from_secs(86_400)));
        assert_eq!(parse_validity("2m"), Ok(Duration::from_secs(120)));
        assert!(parse_validity("10s").is_err());
        assert!(parse_validity("1000d").is_err());
        assert!(parse_validity("soon").is_err());
    }

    #[test]
    fn certificates_are_issued_once_per_service_under_one_ca() {
        let dir = tempfile::tempdir().expect("tmp");
        let rot = issue_certificates(dir.path(), &["user", "polling"], Duration::from_secs(3600))
            .expect("issue");
        assert_eq!(rot.len(), 2);
        let ca_pem = std::fs::read_to_string(ca_dir(dir.path()).join("ca.pem")).expect("ca");
        for s in ["user", "polling"] {
            let pem = std::fs::read(certs_dir(dir.path()).join(format!("{s}.pem"))).expect("pem");
            let summary = tally_certs::inspect_pem(&pem).expect("inspect");
            assert_eq!(
                summary[0].spiffe_id.as_ref().map(|i| i.to_string()),
                Some(spiffe_id(s))
            );
        }
        // A second start reuses the CA.
        issue_certificates(dir.path(), &["user"], Duration::from_secs(3600)).expect("again");
        let again = std::fs::read_to_string(ca_dir(dir.path()).join("ca.pem")).expect("ca");
        assert_eq!(ca_pem, again);
        assert_eq!(
            std::fs::read_to_string(certs_dir(dir.path()).join("bundle.pem")).expect("bundle"),
            ca_pem
        );
    }
}
