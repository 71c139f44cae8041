//! PEM decoding into rustls' DER types, with errors that name the input.

use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};

use crate::CertError;

/// All certificates in a PEM text, in order. Fails if there are none or one is cut short.
pub(crate) fn certs(what: &str, pem: &[u8]) -> Result<Vec<CertificateDer<'static>>, CertError> {
    let certs = CertificateDer::pem_slice_iter(pem)
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| CertError::pem(what, format!("cannot read certificates: {e}")))?;
    if certs.is_empty() {
        return Err(CertError::pem(what, "no CERTIFICATE block found"));
    }
    Ok(certs)
}

/// The first private key (PKCS#8, SEC1 or PKCS#1) in a PEM text.
pub(crate) fn private_key(what: &str, pem: &[u8]) -> Result<PrivateKeyDer<'static>, CertError> {
    PrivateKeyDer::from_pem_slice(pem)
        .map_err(|e| CertError::pem(what, format!("cannot read private key: {e}")))
}
