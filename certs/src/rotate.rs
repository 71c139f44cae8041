//! Renewal of workload certificates before they expire: a certificate is re-issued
//! once about 70% of its lifetime has passed, leaving 30% for retries and for
//! reloaders to pick the new files up. `tally up` runs one [`Rotator`] per workload.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use crate::ca::{BUNDLE_FILE, workload_paths, write_workload};
use crate::files::{CERT_MODE, write_atomic};
use crate::inspect::CertSummary;
use crate::tls::IdentityPaths;
use crate::{CertAuthority, CertError, SpiffeId};

/// Fraction of a certificate's lifetime after which it is renewed.
pub const RENEW_AT_FRACTION: f64 = 0.7;

/// How long [`Rotator::run`] waits before retrying after an error.
pub const RETRY_AFTER_ERROR: Duration = Duration::from_secs(10);

/// The moment a certificate valid from `not_before` to `not_after` should be renewed.
pub fn renewal_time(not_before: SystemTime, not_after: SystemTime) -> SystemTime {
    let lifetime = not_after.duration_since(not_before).unwrap_or_default();
    not_before + lifetime.mul_f64(RENEW_AT_FRACTION)
}

/// Outcome of one [`Rotator::rotate_if_due`] call.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RotationStatus {
    /// Whether a new certificate was written.
    pub renewed: bool,
    /// Expiry of the certificate now on disk.
    pub not_after: SystemTime,
    /// When the certificate now on disk should be renewed.
    pub renew_at: SystemTime,
}

/// Keeps one workload's certificate files fresh.
#[derive(Debug, Clone)]
pub struct Rotator {
    ca: Arc<CertAuthority>,
    dir: PathBuf,
    id: SpiffeId,
    validity: Duration,
}

impl Rotator {
    /// A rotator writing `id`'s certificate into `dir` with lifetime `validity`.
    pub fn new(
        ca: Arc<CertAuthority>,
        dir: impl Into<PathBuf>,
        id: SpiffeId,
        validity: Duration,
    ) -> Self {
        Self {
            ca,
            dir: dir.into(),
            id,
            validity,
        }
    }

    /// The files this rotator maintains.
    pub fn paths(&self) -> IdentityPaths {
        workload_paths(&self.dir, &self.id)
    }

    /// Issues and writes a new certificate if the one on disk is missing, unreadable,
    /// for another identity, or past [`RENEW_AT_FRACTION`] of its lifetime at `now`.
    /// Also writes `bundle.pem` (the CA's root) into the directory if it is missing.
    pub fn rotate_if_due(&self, now: SystemTime) -> Result<RotationStatus, CertError> {
        let paths = self.paths();
        std::fs::create_dir_all(&self.dir).map_err(|e| CertError::io(&self.dir, e))?;
        if !paths.bundle.exists() {
            write_atomic(
                &self.dir.join(BUNDLE_FILE),
                self.ca.cert_pem().as_bytes(),
                CERT_MODE,
            )?;
        }
        if let Some(current) = self.current_on_disk(&paths) {
            let renew_at = renewal_time(current.not_before, current.not_after);
            if now < renew_at {
                return Ok(RotationStatus {
                    renewed: false,
                    not_after: current.not_after,
                    renew_at,
                });
            }
        }
        let issued = self.ca.issue(&self.id, self.validity)?;
        write_workload(&self.dir, &self.id, &issued)?;
        tracing::info!(
            identity = %self.id,
            not_after = %crate::inspect::rfc3339(issued.not_after),
            "issued mesh workload certificate"
        );
        Ok(RotationStatus {
            renewed: true,
            not_after: issued.not_after,
            renew_at: renewal_time(issued.not_before, issued.not_after),
        })
    }

    /// Renews forever: checks now, then sleeps until the next renewal time.
    /// Errors are logged and retried after [`RETRY_AFTER_ERROR`]. Abort the task to stop.
    pub async fn run(self) {
        loop {
            let now = SystemTime::now();
            let wait = match self.rotate_if_due(now) {
                Ok(status) => status
                    .renew_at
                    .duration_since(now)
                    .unwrap_or_default()
                    .max(Duration::from_secs(1)),
                Err(e) => {
                    tracing::warn!(identity = %self.id, error = %e, "certificate renewal failed");
                    RETRY_AFTER_ERROR
                }
            };
            tokio::time::sleep(wait).await;
        }
    }

    fn current_on_disk(&self, paths: &IdentityPaths) -> Option<CertSummary> {
        if !paths.key.exists() {
            return None;
        }
        let pem = std::fs::read(&paths.cert).ok()?;
        let der = crate::pem::certs("cert", &pem).ok()?.into_iter().next()?;
        let summary = CertSummary::from_der(&der).ok()?;
        (summary.spiffe_id.as_ref() == Some(&self.id)).then_some(summary)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn renewal_is_at_seventy_percent_of_lifetime() {
        let nb = SystemTime::UNIX_EPOCH + Duration::from_secs(1_000);
        let na = nb + Duration::from_secs(1_000);
        assert_eq!(renewal_time(nb, na), nb + Duration::from_secs(700));
        // A reversed window renews immediately.
        assert_eq!(renewal_time(na, nb), na);
    }
}
