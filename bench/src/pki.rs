//! The mesh certificates for one benchmark run, made by tally-certs: a root CA and
//! two SPIFFE workload identities (the caller and the echo service). Tally's and
//! Envoy's sidecar pairs use the very same files, so both do the same TLS work.

use crate::error::BenchError;
use std::path::{Path, PathBuf};
use std::time::Duration;
use tally_certs::{CertAuthority, SpiffeId};

pub const NAMESPACE: &str = "bench";
pub const CLIENT_SERVICE: &str = "client";
/// The target service name: the `:authority` the load generator sends, and the SPIFFE
/// service of the callee's certificate.
pub const TARGET_SERVICE: &str = "echo";
const VALIDITY: Duration = Duration::from_secs(24 * 3600);

/// One workload's files.
#[derive(Debug, Clone)]
pub struct Identity {
    pub bundle: PathBuf,
    pub cert: PathBuf,
    pub key: PathBuf,
    pub id: SpiffeId,
}

/// Root CA plus the caller's and the callee's identities, written under `dir`.
#[derive(Debug, Clone)]
pub struct Pki {
    pub client: Identity,
    pub server: Identity,
}

impl Pki {
    pub fn create(dir: &Path) -> Result<Pki, BenchError> {
        let ca = CertAuthority::generate("tally.local")?;
        let bundle = dir.join("bundle.pem");
        std::fs::write(&bundle, ca.cert_pem())
            .map_err(|e| BenchError::io("writing bundle.pem", e))?;
        let make = |service: &str| -> Result<Identity, BenchError> {
            let id = SpiffeId::local(NAMESPACE, service)?;
            let issued = ca.issue(&id, VALIDITY)?;
            let paths = tally_certs::write_workload(&dir.join(service), &id, &issued)?;
            Ok(Identity {
                bundle: bundle.clone(),
                cert: paths.cert,
                key: paths.key,
                id,
            })
        };
        Ok(Pki {
            client: make(CLIENT_SERVICE)?,
            server: make(TARGET_SERVICE)?,
        })
    }
}
