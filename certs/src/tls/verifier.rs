//! The client-side server certificate check: chain to the trust bundle, then the
//! server's SPIFFE id must equal the identity the caller expected (named through the
//! TLS server name `<service>.<namespace>.svc`). DNS SANs are not what is trusted.

use std::sync::Arc;

use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::crypto::{CryptoProvider, verify_tls12_signature, verify_tls13_signature};
use rustls::pki_types::{CertificateDer, ServerName, UnixTime};
use rustls::server::ParsedCertificate;
use rustls::{CertificateError, DigitallySignedStruct, OtherError, RootCertStore, SignatureScheme};

use crate::SpiffeId;
use crate::inspect::peer_spiffe_id;

/// The server presented a valid certificate for a different identity than expected.
///
/// Reaches callers inside `rustls::Error::InvalidCertificate(CertificateError::Other(..))`;
/// downcast the inner error to get both ids.
#[derive(Clone, PartialEq, Eq, thiserror::Error)]
#[error("server identity mismatch: expected {expected}, server presented {presented}")]
pub struct IdentityMismatch {
    /// The identity the caller asked for.
    pub expected: SpiffeId,
    /// What the server's certificate says (its SPIFFE id, or a note that it has none).
    pub presented: String,
}

// rustls prints certificate errors with `Debug`; make that the readable message.
impl std::fmt::Debug for IdentityMismatch {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{self}")
    }
}

/// The server name does not encode a mesh identity.
#[derive(thiserror::Error)]
#[error(
    "server name {0} is not a mesh name: connect with server_name_for(&SpiffeId), i.e. <service>.<namespace>.svc"
)]
struct NotAMeshName(String);

impl std::fmt::Debug for NotAMeshName {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{self}")
    }
}

#[derive(Debug)]
pub(crate) struct SpiffeServerVerifier {
    roots: Arc<RootCertStore>,
    trust_domain: String,
    provider: Arc<CryptoProvider>,
}

impl SpiffeServerVerifier {
    pub(crate) fn new(
        roots: Arc<RootCertStore>,
        trust_domain: String,
        provider: Arc<CryptoProvider>,
    ) -> Self {
        Self {
            roots,
            trust_domain,
            provider,
        }
    }
}

fn other(e: impl std::error::Error + Send + Sync + 'static) -> rustls::Error {
    rustls::Error::InvalidCertificate(CertificateError::Other(OtherError(Arc::new(e))))
}

impl ServerCertVerifier for SpiffeServerVerifier {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        server_name: &ServerName<'_>,
        _ocsp_response: &[u8],
        now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        let expected = match server_name {
            ServerName::DnsName(name) => SpiffeId::from_dns_name(&self.trust_domain, name.as_ref()),
            _ => None,
        }
        .ok_or_else(|| other(NotAMeshName(server_name.to_str().into_owned())))?;

        let cert = ParsedCertificate::try_from(end_entity)?;
        rustls::client::verify_server_cert_signed_by_trust_anchor(
            &cert,
            &self.roots,
            intermediates,
            now,
            self.provider.signature_verification_algorithms.all,
        )?;

        match peer_spiffe_id(std::slice::from_ref(end_entity)) {
            Some(actual) if actual == expected => Ok(ServerCertVerified::assertion()),
            Some(actual) => Err(other(IdentityMismatch {
                expected,
                presented: actual.to_string(),
            })),
            None => Err(other(IdentityMismatch {
                expected,
                presented: "a certificate without a SPIFFE id".into(),
            })),
        }
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        verify_tls12_signature(
            message,
            cert,
            dss,
            &self.provider.signature_verification_algorithms,
        )
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        verify_tls13_signature(
            message,
            cert,
            dss,
            &self.provider.signature_verification_algorithms,
        )
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.provider
            .signature_verification_algorithms
            .supported_schemes()
    }
}
