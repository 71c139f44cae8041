//! rustls configurations for mesh mTLS, built from a workload's certificate files.
//!
//! - TLS 1.3 only, ring provider passed explicitly (never the process-wide default).
//! - Servers require a client certificate chained to the trust bundle; ALPN `h2`, `http/1.1`.
//! - Clients present their workload certificate and accept a server only if its chain
//!   verifies against the bundle **and** its SPIFFE id is the one the caller asked for.
//!   The caller names that identity through the TLS server name: connect with
//!   [`server_name_for`]`(&expected_id)` (`<service>.<namespace>.svc`).
//! - [`Reloader`] re-reads the files when they change and publishes new configs.

mod reload;
mod verifier;

use std::path::PathBuf;
use std::sync::{Arc, OnceLock};
use std::time::{Duration, SystemTime};

use rustls::crypto::CryptoProvider;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName, UnixTime};
use rustls::server::{NoServerSessionStorage, ParsedCertificate, WebPkiClientVerifier};
use rustls::{ClientConfig, RootCertStore, ServerConfig};

pub use crate::inspect::peer_spiffe_id;
pub use reload::{DEFAULT_POLL_INTERVAL, Reloader, TlsConfigs};
pub use verifier::IdentityMismatch;

use crate::files::read;
use crate::inspect::CertSummary;
use crate::{CertError, SpiffeId};

/// ALPN protocols a mesh server offers.
pub const SERVER_ALPN: [&[u8]; 2] = [b"h2", b"http/1.1"];
/// ALPN protocol a mesh client asks for.
pub const CLIENT_ALPN: &[u8] = b"h2";

/// Where a workload's trust bundle, certificate chain and private key live.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct IdentityPaths {
    /// PEM file with one or more trusted root certificates.
    pub bundle: PathBuf,
    /// PEM file with the workload certificate first, then any intermediates.
    pub cert: PathBuf,
    /// PEM file with the workload's private key.
    pub key: PathBuf,
}

impl IdentityPaths {
    /// The standard layout in a certificate directory: `bundle.pem`, `<service>.pem`,
    /// `<service>-key.pem` (as written by [`crate::write_workload`]).
    pub fn for_workload(dir: &std::path::Path, id: &SpiffeId) -> Self {
        crate::ca::workload_paths(dir, id)
    }
}

/// A workload's loaded TLS material: trust bundle, certificate chain and key.
///
/// Loading checks that the leaf carries a SPIFFE id, that the key belongs to the leaf and
/// that the leaf chains to the bundle (ignoring the current time, so an expired certificate
/// still loads; peers reject it).
pub struct Material {
    identity: SpiffeId,
    roots: Arc<RootCertStore>,
    chain: Vec<CertificateDer<'static>>,
    key: PrivateKeyDer<'static>,
    not_before: SystemTime,
    not_after: SystemTime,
}

impl std::fmt::Debug for Material {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Material")
            .field("identity", &self.identity.to_string())
            .field("roots", &self.roots.len())
            .field("chain", &self.chain.len())
            .field("not_after", &crate::inspect::rfc3339(self.not_after))
            .finish_non_exhaustive()
    }
}

impl Material {
    /// Loads and checks the three files.
    pub fn load(paths: &IdentityPaths) -> Result<Self, CertError> {
        let bundle = read(&paths.bundle)?;
        let cert = read(&paths.cert)?;
        let key = read(&paths.key)?;
        Self::from_pem_named(
            (&paths.bundle.display().to_string(), &bundle),
            (&paths.cert.display().to_string(), &cert),
            (&paths.key.display().to_string(), &key),
        )
    }

    /// Builds material from PEM texts (bundle of roots, leaf-first chain, private key).
    pub fn from_pem(bundle_pem: &[u8], cert_pem: &[u8], key_pem: &[u8]) -> Result<Self, CertError> {
        Self::from_pem_named(
            ("trust bundle", bundle_pem),
            ("certificate", cert_pem),
            ("private key", key_pem),
        )
    }

    fn from_pem_named(
        (bundle_name, bundle_pem): (&str, &[u8]),
        (cert_name, cert_pem): (&str, &[u8]),
        (key_name, key_pem): (&str, &[u8]),
    ) -> Result<Self, CertError> {
        let bundle = crate::pem::certs(bundle_name, bundle_pem)?;
        let chain = crate::pem::certs(cert_name, cert_pem)?;
        let key = crate::pem::private_key(key_name, key_pem)?;

        let mut roots = RootCertStore::empty();
        for (i, root) in bundle.into_iter().enumerate() {
            roots.add(root).map_err(|e| {
                CertError::invalid(bundle_name, format!("certificate {} unusable: {e}", i + 1))
            })?;
        }

        let leaf = CertSummary::from_der(&chain[0])
            .map_err(|e| CertError::invalid(cert_name, e.to_string()))?;
        let identity = leaf.spiffe_id.clone().ok_or_else(|| {
            CertError::invalid(
                cert_name,
                "the certificate has no SPIFFE id (URI SAN spiffe://<td>/ns/<ns>/sa/<service>)",
            )
        })?;

        let p = provider();
        rustls::sign::CertifiedKey::from_der(chain.clone(), key.clone_key(), &p)
            .map_err(|e| CertError::invalid(key_name, format!("does not fit {cert_name}: {e}")))?;

        // Chain check at the middle of the leaf's lifetime: expiry is the peer's business,
        // but a certificate from a CA the bundle does not hold must not be loaded.
        let mid = leaf.not_before
            + leaf
                .not_after
                .duration_since(leaf.not_before)
                .unwrap_or_default()
                / 2;
        let at = UnixTime::since_unix_epoch(
            mid.duration_since(SystemTime::UNIX_EPOCH)
                .unwrap_or(Duration::ZERO),
        );
        let parsed = ParsedCertificate::try_from(&chain[0])
            .map_err(|e| CertError::invalid(cert_name, e.to_string()))?;
        rustls::client::verify_server_cert_signed_by_trust_anchor(
            &parsed,
            &roots,
            &chain[1..],
            at,
            p.signature_verification_algorithms.all,
        )
        .map_err(|e| {
            CertError::invalid(
                cert_name,
                format!("does not chain to a root in {bundle_name}: {e}"),
            )
        })?;

        Ok(Self {
            identity,
            roots: Arc::new(roots),
            chain,
            key,
            not_before: leaf.not_before,
            not_after: leaf.not_after,
        })
    }

    /// The workload's own SPIFFE id (from its certificate).
    pub fn identity(&self) -> &SpiffeId {
        &self.identity
    }

    /// When the workload certificate expires (for expiry metrics and warnings).
    pub fn not_after(&self) -> SystemTime {
        self.not_after
    }

    /// When the workload certificate became valid.
    pub fn not_before(&self) -> SystemTime {
        self.not_before
    }

    /// Time left until expiry at `now` (zero if already expired).
    pub fn remaining(&self, now: SystemTime) -> Duration {
        self.not_after.duration_since(now).unwrap_or(Duration::ZERO)
    }

    /// The certificate chain presented to peers (leaf first).
    pub fn chain(&self) -> &[CertificateDer<'static>] {
        &self.chain
    }

    /// Number of trusted roots in the bundle.
    pub fn root_count(&self) -> usize {
        self.roots.len()
    }
}

/// The ring crypto provider all mesh configs are built with.
pub fn provider() -> Arc<CryptoProvider> {
    static PROVIDER: OnceLock<Arc<CryptoProvider>> = OnceLock::new();
    PROVIDER
        .get_or_init(|| Arc::new(rustls::crypto::ring::default_provider()))
        .clone()
}

/// A TLS 1.3 server config that requires a client certificate chained to the bundle.
///
/// ALPN `h2` and `http/1.1`. Session resumption is off, so every connection runs the full
/// certificate checks (connections are long-lived HTTP/2, so this costs little).
/// Read the client's identity after the handshake with [`peer_spiffe_id`].
pub fn server_config(m: &Material) -> Result<Arc<ServerConfig>, CertError> {
    let p = provider();
    let verifier = WebPkiClientVerifier::builder_with_provider(m.roots.clone(), p.clone())
        .build()
        .map_err(|e| CertError::invalid("trust bundle", e))?;
    let mut cfg = ServerConfig::builder_with_provider(p)
        .with_protocol_versions(&[&rustls::version::TLS13])?
        .with_client_cert_verifier(verifier)
        .with_single_cert(m.chain.clone(), m.key.clone_key())?;
    cfg.alpn_protocols = SERVER_ALPN.iter().map(|p| p.to_vec()).collect();
    cfg.session_storage = Arc::new(NoServerSessionStorage {});
    cfg.send_tls13_tickets = 0;
    Ok(Arc::new(cfg))
}

/// A TLS 1.3 client config that presents the workload certificate and accepts only a
/// server whose chain verifies against the bundle and whose SPIFFE id matches the one
/// encoded in the server name (use [`server_name_for`]). ALPN `h2`.
///
/// The expected identity is taken in the client's own trust domain.
pub fn client_config(m: &Material) -> Result<Arc<ClientConfig>, CertError> {
    let p = provider();
    let verifier = Arc::new(verifier::SpiffeServerVerifier::new(
        m.roots.clone(),
        m.identity.trust_domain().to_owned(),
        p.clone(),
    ));
    let mut cfg = ClientConfig::builder_with_provider(p)
        .with_protocol_versions(&[&rustls::version::TLS13])?
        .dangerous()
        .with_custom_certificate_verifier(verifier)
        .with_client_auth_cert(m.chain.clone(), m.key.clone_key())?;
    cfg.alpn_protocols = vec![CLIENT_ALPN.to_vec()];
    Ok(Arc::new(cfg))
}

/// The TLS server name to connect with when the server must be `id`:
/// `<service>.<namespace>.svc`. The client verifier maps it back to the SPIFFE id.
pub fn server_name_for(id: &SpiffeId) -> ServerName<'static> {
    // A SpiffeId's namespace and service are validated DNS labels, so this name is always
    // valid. Should that ever not hold, an IP name is returned, which the verifier rejects
    // as "not a mesh name": the connection fails, nothing panics.
    ServerName::try_from(id.dns_name()).unwrap_or(ServerName::IpAddress(
        std::net::Ipv4Addr::UNSPECIFIED.into(),
    ))
}
