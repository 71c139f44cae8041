//! The mesh root CA: creates it, stores it as PEM files, and issues short-lived
//! workload certificates (SVIDs) that carry a SPIFFE id.
//!
//! Directory layout (see the crate README):
//! - `ca.pem`: the current root certificate
//! - `ca-key.pem`: its private key (mode 0600)
//! - `bundle.pem`: the trust bundle, every root workloads accept (old and new during a rotation)
//! - `<service>.pem` / `<service>-key.pem`: workload certificates written by [`write_workload`]

use std::path::Path;
use std::time::{Duration, SystemTime};

use rcgen::string::Ia5String;
use rcgen::{
    BasicConstraints, CertificateParams, DistinguishedName, DnType, ExtendedKeyUsagePurpose, IsCa,
    Issuer, KeyPair, KeyUsagePurpose, PKCS_ECDSA_P256_SHA256, PublicKeyData, SanType,
};
use x509_parser::extensions::GeneralName;
use x509_parser::prelude::{FromDer, X509Certificate};

use crate::files::{CERT_MODE, KEY_MODE, read, write_atomic};
use crate::tls::IdentityPaths;
use crate::{CertError, SpiffeId};

/// File name of the current root certificate in a CA directory.
pub const CA_CERT_FILE: &str = "ca.pem";
/// File name of the root's private key in a CA directory.
pub const CA_KEY_FILE: &str = "ca-key.pem";
/// File name of the trust bundle (one or more roots) in a CA directory.
pub const BUNDLE_FILE: &str = "bundle.pem";

/// Lifetime of a newly generated root CA.
pub const CA_VALIDITY: Duration = Duration::from_secs(10 * 365 * 24 * 3600);
/// Default lifetime of a workload certificate.
pub const DEFAULT_WORKLOAD_VALIDITY: Duration = Duration::from_secs(24 * 3600);
/// Shortest workload lifetime [`CertAuthority::issue`] accepts.
pub const MIN_WORKLOAD_VALIDITY: Duration = Duration::from_secs(60);
/// Longest workload lifetime [`CertAuthority::issue`] accepts.
pub const MAX_WORKLOAD_VALIDITY: Duration = Duration::from_secs(90 * 24 * 3600);
/// Certificates start this much in the past, so small clock differences between
/// processes do not make a fresh certificate "not yet valid".
pub const CLOCK_SKEW_ALLOWANCE: Duration = Duration::from_secs(60);

/// A workload certificate and its key, as PEM, with its validity window.
#[derive(Clone)]
pub struct IssuedCert {
    /// The leaf certificate (PEM).
    pub cert_pem: String,
    /// The leaf's PKCS#8 private key (PEM).
    pub key_pem: String,
    /// Start of validity.
    pub not_before: SystemTime,
    /// End of validity.
    pub not_after: SystemTime,
}

impl std::fmt::Debug for IssuedCert {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("IssuedCert")
            .field("not_before", &self.not_before)
            .field("not_after", &self.not_after)
            .field("key_pem", &"[elided]")
            .finish_non_exhaustive()
    }
}

/// The mesh root CA: a self-signed ECDSA P-256 certificate and its key.
pub struct CertAuthority {
    trust_domain: String,
    issuer: Issuer<'static, KeyPair>,
    cert_pem: String,
}

impl std::fmt::Debug for CertAuthority {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("CertAuthority")
            .field("trust_domain", &self.trust_domain)
            .finish_non_exhaustive()
    }
}

impl CertAuthority {
    /// Generates a new root CA for `trust_domain` (in memory; see [`CertAuthority::save`]).
    pub fn generate(trust_domain: &str) -> Result<Self, CertError> {
        // Validates the trust domain with the same rules as workload ids.
        SpiffeId::new(trust_domain, "ca", "ca")?;
        let key = KeyPair::generate_for(&PKCS_ECDSA_P256_SHA256)?;
        let now = SystemTime::now();
        let mut params = CertificateParams::default();
        let mut dn = DistinguishedName::new();
        // The creation time tells old and new roots apart during a rotation.
        dn.push(
            DnType::CommonName,
            format!("Tally mesh root CA {}", crate::inspect::rfc3339(now)),
        );
        dn.push(DnType::OrganizationName, trust_domain);
        params.distinguished_name = dn;
        params.not_before = to_asn1_time(now - CLOCK_SKEW_ALLOWANCE);
        params.not_after = to_asn1_time(now + CA_VALIDITY);
        // Path length 0: this root signs workload certificates directly, nothing else.
        params.is_ca = IsCa::Ca(BasicConstraints::Constrained(0));
        params.key_usages = vec![
            KeyUsagePurpose::KeyCertSign,
            KeyUsagePurpose::CrlSign,
            KeyUsagePurpose::DigitalSignature,
        ];
        params.subject_alt_names = vec![SanType::URI(Ia5String::try_from(format!(
            "spiffe://{trust_domain}"
        ))?)];
        let cert = params.self_signed(&key)?;
        Ok(Self {
            trust_domain: trust_domain.to_owned(),
            issuer: Issuer::new(params, key),
            cert_pem: cert.pem(),
        })
    }

    /// Creates a CA in `dir` (ca.pem, ca-key.pem, bundle.pem), creating the directory.
    ///
    /// Refuses to replace an existing CA unless `force` is true.
    pub fn init(dir: &Path, trust_domain: &str, force: bool) -> Result<Self, CertError> {
        let ca = Self::generate(trust_domain)?;
        ca.save(dir, force)?;
        write_atomic(&dir.join(BUNDLE_FILE), ca.cert_pem.as_bytes(), CERT_MODE)?;
        Ok(ca)
    }

    /// Writes `ca.pem` and `ca-key.pem` (mode 0600) into `dir`, creating it.
    ///
    /// Does not touch `bundle.pem`. Refuses to replace an existing CA unless `overwrite`.
    pub fn save(&self, dir: &Path, overwrite: bool) -> Result<(), CertError> {
        std::fs::create_dir_all(dir).map_err(|e| CertError::io(dir, e))?;
        if !overwrite && (dir.join(CA_CERT_FILE).exists() || dir.join(CA_KEY_FILE).exists()) {
            return Err(CertError::CaExists(dir.to_path_buf()));
        }
        // Key first: a reader that finds ca.pem always finds its key.
        write_atomic(
            &dir.join(CA_KEY_FILE),
            self.issuer.key().serialize_pem().as_bytes(),
            KEY_MODE,
        )?;
        write_atomic(&dir.join(CA_CERT_FILE), self.cert_pem.as_bytes(), CERT_MODE)
    }

    /// Loads the CA from `dir/ca.pem` and `dir/ca-key.pem`.
    pub fn load(dir: &Path) -> Result<Self, CertError> {
        let cert_path = dir.join(CA_CERT_FILE);
        let key_path = dir.join(CA_KEY_FILE);
        let cert_pem = String::from_utf8(read(&cert_path)?)
            .map_err(|_| CertError::pem(cert_path.display().to_string(), "not UTF-8 text"))?;
        let key_pem = String::from_utf8(read(&key_path)?)
            .map_err(|_| CertError::pem(key_path.display().to_string(), "not UTF-8 text"))?;
        Self::from_pem(&cert_pem, &key_pem).map_err(|e| match e {
            CertError::Pem { reason, .. } | CertError::Invalid { reason, .. } => {
                CertError::invalid(cert_path.display().to_string(), reason)
            }
            other => other,
        })
    }

    /// Builds the CA from its certificate and key PEM.
    pub fn from_pem(cert_pem: &str, key_pem: &str) -> Result<Self, CertError> {
        let key = KeyPair::from_pem(key_pem)
            .map_err(|e| CertError::pem("CA key", format!("cannot read private key: {e}")))?;
        let ders = crate::pem::certs("CA certificate", cert_pem.as_bytes())?;
        let der = &ders[0];
        let (_, x509) = X509Certificate::from_der(der)
            .map_err(|e| CertError::invalid("CA certificate", format!("cannot parse: {e}")))?;
        if !x509.is_ca() {
            return Err(CertError::invalid(
                "CA certificate",
                "it is not a CA (basicConstraints cA is not set)",
            ));
        }
        if x509.public_key().subject_public_key.data.as_ref() != key.der_bytes() {
            return Err(CertError::invalid(
                "CA certificate",
                "the key file does not belong to this certificate",
            ));
        }
        let trust_domain = ca_trust_domain(&x509).ok_or_else(|| {
            CertError::invalid(
                "CA certificate",
                "it has no spiffe://<trust-domain> URI SAN; create it with `tally certs init`",
            )
        })?;
        let issuer = Issuer::from_ca_cert_der(der, key)?;
        Ok(Self {
            trust_domain,
            issuer,
            cert_pem: cert_pem.to_owned(),
        })
    }

    /// The trust domain this CA issues identities in.
    pub fn trust_domain(&self) -> &str {
        &self.trust_domain
    }

    /// The root certificate (PEM).
    pub fn cert_pem(&self) -> &str {
        &self.cert_pem
    }

    /// Issues a workload certificate for `id`, valid from now (minus
    /// [`CLOCK_SKEW_ALLOWANCE`]) for `validity`.
    ///
    /// `validity` must lie between [`MIN_WORKLOAD_VALIDITY`] and [`MAX_WORKLOAD_VALIDITY`].
    pub fn issue(&self, id: &SpiffeId, validity: Duration) -> Result<IssuedCert, CertError> {
        use crate::duration::format_duration as fmt;
        if validity < MIN_WORKLOAD_VALIDITY {
            return Err(CertError::Validity(format!(
                "{} is shorter than the minimum {}",
                fmt(validity),
                fmt(MIN_WORKLOAD_VALIDITY)
            )));
        }
        if validity > MAX_WORKLOAD_VALIDITY {
            return Err(CertError::Validity(format!(
                "{} is longer than the maximum {}",
                fmt(validity),
                fmt(MAX_WORKLOAD_VALIDITY)
            )));
        }
        let now = SystemTime::now();
        self.issue_between(id, now - CLOCK_SKEW_ALLOWANCE, now + validity)
    }

    /// Issues a workload certificate with an explicit validity window (truncated to
    /// whole seconds). The window may lie in the past, which tests use for expired certs.
    pub fn issue_between(
        &self,
        id: &SpiffeId,
        not_before: SystemTime,
        not_after: SystemTime,
    ) -> Result<IssuedCert, CertError> {
        if id.trust_domain() != self.trust_domain {
            return Err(CertError::invalid(
                id.to_string(),
                format!(
                    "this CA issues identities in trust domain {:?} only",
                    self.trust_domain
                ),
            ));
        }
        let not_before = to_asn1_time(not_before);
        let not_after = to_asn1_time(not_after);
        if not_after <= not_before {
            return Err(CertError::Validity(
                "not_after must be later than not_before".into(),
            ));
        }
        let key = KeyPair::generate_for(&PKCS_ECDSA_P256_SHA256)?;
        let mut params = CertificateParams::default();
        let mut dn = DistinguishedName::new();
        dn.push(DnType::CommonName, id.service());
        dn.push(DnType::OrganizationalUnitName, id.namespace());
        dn.push(DnType::OrganizationName, id.trust_domain());
        params.distinguished_name = dn;
        params.not_before = not_before;
        params.not_after = not_after;
        params.is_ca = IsCa::ExplicitNoCa;
        params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
        params.extended_key_usages = vec![
            ExtendedKeyUsagePurpose::ServerAuth,
            ExtendedKeyUsagePurpose::ClientAuth,
        ];
        params.use_authority_key_identifier_extension = true;
        params.subject_alt_names = vec![
            SanType::URI(Ia5String::try_from(id.to_string())?),
            SanType::DnsName(Ia5String::try_from("localhost")?),
            SanType::DnsName(Ia5String::try_from(id.dns_name())?),
        ];
        let cert = params.signed_by(&key, &self.issuer)?;
        Ok(IssuedCert {
            cert_pem: cert.pem(),
            key_pem: key.serialize_pem(),
            not_before: not_before.into(),
            not_after: not_after.into(),
        })
    }
}

/// The files a workload's certificate is written to in `dir`:
/// `<service>.pem`, `<service>-key.pem`, and the bundle `bundle.pem`.
pub fn workload_paths(dir: &Path, id: &SpiffeId) -> IdentityPaths {
    IdentityPaths {
        bundle: dir.join(BUNDLE_FILE),
        cert: dir.join(format!("{}.pem", id.service())),
        key: dir.join(format!("{}-key.pem", id.service())),
    }
}

/// Writes an issued certificate to `dir/<service>.pem` and `dir/<service>-key.pem`
/// (mode 0600), each atomically (temporary file + rename), and returns the paths.
///
/// The key is written first, then the certificate; a watcher may briefly see a new key
/// with the old certificate, which [`crate::tls::Material`] rejects as a mismatch, so the
/// old configuration stays until both files are new.
pub fn write_workload(
    dir: &Path,
    id: &SpiffeId,
    cert: &IssuedCert,
) -> Result<IdentityPaths, CertError> {
    if matches!(id.service(), "ca" | "bundle") {
        return Err(CertError::ReservedName(id.service().to_owned()));
    }
    std::fs::create_dir_all(dir).map_err(|e| CertError::io(dir, e))?;
    let paths = workload_paths(dir, id);
    write_atomic(&paths.key, cert.key_pem.as_bytes(), KEY_MODE)?;
    write_atomic(&paths.cert, cert.cert_pem.as_bytes(), CERT_MODE)?;
    Ok(paths)
}

/// Joins several PEM certificate texts into one trust bundle, dropping duplicates.
///
/// Fails if any input holds no certificate.
pub fn join_bundle(pems: &[&str]) -> Result<String, CertError> {
    let mut seen = Vec::new();
    let mut out = String::new();
    for (i, pem) in pems.iter().enumerate() {
        let ders = crate::pem::certs(&format!("bundle input {}", i + 1), pem.as_bytes())?;
        for der in ders {
            if seen.contains(&der) {
                continue;
            }
            out.push_str(&pem_encode(&der));
            seen.push(der);
        }
    }
    Ok(out)
}

/// Rotates the root CA in `dir`: generates a new root for the same trust domain,
/// writes the bundle as new root + every root already in it, then replaces
/// `ca.pem`/`ca-key.pem`. Workloads that reload the bundle trust both roots, so
/// certificates from either keep working until the old ones expire; drop the old
/// root from `bundle.pem` once no workload uses it.
pub fn rotate_root(dir: &Path) -> Result<CertAuthority, CertError> {
    let old = CertAuthority::load(dir)?;
    let new = CertAuthority::generate(old.trust_domain())?;
    let bundle_path = dir.join(BUNDLE_FILE);
    let existing = match std::fs::read_to_string(&bundle_path) {
        Ok(s) => s,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => old.cert_pem().to_owned(),
        Err(e) => return Err(CertError::io(&bundle_path, e)),
    };
    let bundle = join_bundle(&[new.cert_pem(), &existing, old.cert_pem()])?;
    write_atomic(&bundle_path, bundle.as_bytes(), CERT_MODE)?;
    new.save(dir, true)?;
    Ok(new)
}

fn pem_encode(der: &[u8]) -> String {
    use base64::Engine as _;
    let b64 = base64::engine::general_purpose::STANDARD.encode(der);
    let mut out = String::from("-----BEGIN CERTIFICATE-----\n");
    let mut rest = b64.as_str();
    while !rest.is_empty() {
        // base64 is ASCII, so splitting at any index is a char boundary.
        let (line, tail) = rest.split_at(rest.len().min(64));
        out.push_str(line);
        out.push('\n');
        rest = tail;
    }
    out.push_str("-----END CERTIFICATE-----\n");
    out
}

fn ca_trust_domain(cert: &X509Certificate<'_>) -> Option<String> {
    let san = cert.subject_alternative_name().ok()??;
    san.value.general_names.iter().find_map(|n| match n {
        GeneralName::URI(u) => {
            let td = u.strip_prefix("spiffe://")?.trim_end_matches('/');
            (!td.is_empty() && !td.contains('/')).then(|| td.to_owned())
        }
        _ => None,
    })
}

/// Truncates to whole seconds (X.509 precision) and converts for rcgen.
fn to_asn1_time(t: SystemTime) -> time::OffsetDateTime {
    let secs = match t.duration_since(SystemTime::UNIX_EPOCH) {
        Ok(d) => d.as_secs() as i64,
        Err(e) => -(e.duration().as_secs_f64().ceil() as i64),
    };
    time::OffsetDateTime::from_unix_timestamp(secs).unwrap_or(time::OffsetDateTime::UNIX_EPOCH)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn join_bundle_deduplicates_and_round_trips() {
        let a = CertAuthority::generate("tally.local").unwrap();
        let b = CertAuthority::generate("tally.local").unwrap();
        let bundle = join_bundle(&[a.cert_pem(), b.cert_pem(), a.cert_pem()]).unwrap();
        let certs = crate::pem::certs("bundle", bundle.as_bytes()).unwrap();
        assert_eq!(certs.len(), 2);
        let a_der = crate::pem::certs("a", a.cert_pem().as_bytes()).unwrap();
        assert_eq!(certs[0], a_der[0]);
    }

    #[test]
    fn issue_rejects_out_of_range_validity_and_foreign_trust_domain() {
        let ca = CertAuthority::generate("tally.local").unwrap();
        let id = SpiffeId::local("default", "user").unwrap();
        assert!(matches!(
            ca.issue(&id, Duration::from_secs(30)),
            Err(CertError::Validity(_))
        ));
        assert!(matches!(
            ca.issue(&id, MAX_WORKLOAD_VALIDITY + Duration::from_secs(1)),
            Err(CertError::Validity(_))
        ));
        let other = SpiffeId::new("other.org", "default", "user").unwrap();
        let err = ca.issue(&other, Duration::from_secs(3600)).unwrap_err();
        assert!(err.to_string().contains("tally.local"), "{err}");
        let now = SystemTime::now();
        assert!(matches!(
            ca.issue_between(&id, now, now),
            Err(CertError::Validity(_))
        ));
    }

    #[test]
    fn asn1_time_truncates_to_seconds() {
        let t = SystemTime::UNIX_EPOCH + Duration::from_millis(1_700_000_000_999);
        assert_eq!(to_asn1_time(t).unix_timestamp(), 1_700_000_000);
    }
}
