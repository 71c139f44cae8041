//! Reading what a certificate says: SPIFFE id, names, validity. Used by the TLS
//! verifiers (peer identity), by rotation (when to renew) and by `tally certs inspect`.

use std::time::{Duration, SystemTime};

use rustls::pki_types::CertificateDer;
use x509_parser::extensions::GeneralName;
use x509_parser::prelude::{FromDer, X509Certificate};

use crate::{CertError, SpiffeId};

/// What one certificate says about itself.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CertSummary {
    /// The SPIFFE id, if the certificate has exactly one `spiffe://` URI SAN that parses.
    pub spiffe_id: Option<SpiffeId>,
    /// All URI SANs as written.
    pub uris: Vec<String>,
    /// All DNS SANs.
    pub dns_names: Vec<String>,
    /// The subject distinguished name, e.g. `CN=polling, O=tally.local`.
    pub subject: String,
    /// Start of validity.
    pub not_before: SystemTime,
    /// End of validity.
    pub not_after: SystemTime,
    /// Whether the certificate is a CA.
    pub is_ca: bool,
    /// The serial number, as colon-separated hex (as `openssl x509 -serial` groups it).
    pub serial: String,
}

impl CertSummary {
    /// Reads one DER certificate.
    pub fn from_der(der: &[u8]) -> Result<Self, CertError> {
        let (_, cert) = X509Certificate::from_der(der)
            .map_err(|e| CertError::invalid("certificate", format!("cannot parse X.509: {e}")))?;
        let (uris, dns_names) = sans(&cert);
        let spiffe_id = spiffe_from_uris(&uris);
        Ok(Self {
            spiffe_id,
            uris,
            dns_names,
            subject: cert.subject().to_string(),
            not_before: to_system_time(cert.validity().not_before.timestamp()),
            not_after: to_system_time(cert.validity().not_after.timestamp()),
            is_ca: cert.is_ca(),
            serial: cert.tbs_certificate.raw_serial_as_string(),
        })
    }
}

/// Reads every certificate in a PEM text (a leaf, a chain or a trust bundle).
pub fn inspect_pem(pem: &[u8]) -> Result<Vec<CertSummary>, CertError> {
    crate::pem::certs("PEM input", pem)?
        .iter()
        .map(|der| CertSummary::from_der(der))
        .collect()
}

/// The SPIFFE id of a presented certificate chain (its first, end-entity certificate).
///
/// `None` if the chain is empty, unparsable, or the leaf does not carry exactly one
/// `spiffe://` URI SAN of the form `spiffe://<td>/ns/<ns>/sa/<service>`.
pub fn peer_spiffe_id(chain: &[CertificateDer<'_>]) -> Option<SpiffeId> {
    let leaf = chain.first()?;
    let (_, cert) = X509Certificate::from_der(leaf).ok()?;
    let (uris, _) = sans(&cert);
    spiffe_from_uris(&uris)
}

/// Formats a time as RFC 3339 in UTC, e.g. `2025-01-31T12:00:00Z`.
pub fn rfc3339(t: SystemTime) -> String {
    // Whole seconds: that is the precision of certificate times.
    let dt = time::OffsetDateTime::from(t)
        .replace_nanosecond(0)
        .unwrap_or(time::OffsetDateTime::UNIX_EPOCH);
    dt.format(&time::format_description::well_known::Rfc3339)
        .unwrap_or_else(|_| format!("{dt}"))
}

fn sans(cert: &X509Certificate<'_>) -> (Vec<String>, Vec<String>) {
    let mut uris = Vec::new();
    let mut dns = Vec::new();
    if let Ok(Some(san)) = cert.subject_alternative_name() {
        for name in &san.value.general_names {
            match name {
                GeneralName::URI(u) => uris.push((*u).to_owned()),
                GeneralName::DNSName(d) => dns.push((*d).to_owned()),
                _ => {}
            }
        }
    }
    (uris, dns)
}

fn spiffe_from_uris(uris: &[String]) -> Option<SpiffeId> {
    let mut spiffe = uris.iter().filter(|u| u.starts_with("spiffe://"));
    let first = spiffe.next()?;
    if spiffe.next().is_some() {
        // SPIFFE allows exactly one id per certificate.
        return None;
    }
    first.parse().ok()
}

fn to_system_time(unix_secs: i64) -> SystemTime {
    if unix_secs >= 0 {
        SystemTime::UNIX_EPOCH + Duration::from_secs(unix_secs.unsigned_abs())
    } else {
        SystemTime::UNIX_EPOCH - Duration::from_secs(unix_secs.unsigned_abs())
    }
}
