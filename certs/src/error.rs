//! The one error type of this crate, so callers match on a single enum and every
//! message names the file or identity it is about.

use std::path::PathBuf;

use crate::SpiffeIdError;

/// Everything that can go wrong creating, loading or using mesh certificates.
#[derive(Debug, thiserror::Error)]
pub enum CertError {
    /// Reading or writing a file failed.
    #[error("{path}: {source}")]
    Io {
        /// The file or directory concerned.
        path: PathBuf,
        /// The underlying error.
        source: std::io::Error,
    },
    /// A PEM file or string could not be used.
    #[error("{what}: {reason}")]
    Pem {
        /// Which input (usually a path).
        what: String,
        /// What is wrong with it.
        reason: String,
    },
    /// A certificate is structurally unusable for the mesh (no SPIFFE id, wrong chain, ...).
    #[error("{what}: {reason}")]
    Invalid {
        /// Which certificate (usually a path).
        what: String,
        /// What is wrong with it.
        reason: String,
    },
    /// A SPIFFE id was malformed.
    #[error(transparent)]
    SpiffeId(#[from] SpiffeIdError),
    /// A requested validity period is not allowed.
    #[error("invalid validity: {0}")]
    Validity(String),
    /// The CA directory already holds a CA and overwriting was not asked for.
    #[error("{0}: a CA already exists there (pass force to replace it)")]
    CaExists(PathBuf),
    /// A service name would overwrite a CA file.
    #[error("service name {0:?} is reserved (it would overwrite a CA file)")]
    ReservedName(String),
    /// A background task was requested outside a tokio runtime.
    #[error("{0}")]
    Runtime(String),
    /// rcgen failed to build or sign a certificate.
    #[error("certificate generation failed: {0}")]
    Generate(#[from] rcgen::Error),
    /// rustls rejected the material while building a config.
    #[error("TLS configuration: {0}")]
    Tls(#[from] rustls::Error),
}

impl CertError {
    pub(crate) fn io(path: impl Into<PathBuf>, source: std::io::Error) -> Self {
        Self::Io {
            path: path.into(),
            source,
        }
    }

    pub(crate) fn pem(what: impl Into<String>, reason: impl ToString) -> Self {
        Self::Pem {
            what: what.into(),
            reason: reason.to_string(),
        }
    }

    pub(crate) fn invalid(what: impl Into<String>, reason: impl ToString) -> Self {
        Self::Invalid {
            what: what.into(),
            reason: reason.to_string(),
        }
    }
}
