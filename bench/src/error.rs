//! Why a benchmark run could not go on: each error says what was being done, so a
//! failed run points at the setup step (certificates, a proxy that did not start,
//! Envoy missing) rather than at a number.

use std::path::PathBuf;

#[derive(Debug, thiserror::Error)]
pub enum BenchError {
    #[error("{what}: {source}")]
    Io {
        what: String,
        #[source]
        source: std::io::Error,
    },
    #[error("certificates: {0}")]
    Certs(#[from] tally_certs::CertError),
    #[error("certificates: {0}")]
    Spiffe(#[from] tally_certs::SpiffeIdError),
    #[error("{program} not found at {path}; {fix}")]
    MissingProgram {
        program: String,
        path: PathBuf,
        fix: String,
    },
    #[error("{name} did not become ready: {detail}")]
    NotReady { name: String, detail: String },
    #[error("connecting the load generator to {target}: {detail}")]
    Connect { target: String, detail: String },
    #[error("option {option}: {problem}")]
    Options { option: String, problem: String },
}

impl BenchError {
    pub fn io(what: impl Into<String>, source: std::io::Error) -> Self {
        BenchError::Io {
            what: what.into(),
            source,
        }
    }
}
