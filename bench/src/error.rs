//! Why a benchmark run could not go on: each error says what was being done, so a
//! failed run points at the setup step (certificates, a proxy that did not start,
//! Envoy missing) rather than at a number.

use std::path::PathBuf;

/// Why a run stopped; the message names the step and, where there is one, the fix.
#[derive(Debug, thiserror::Error)]
pub enum BenchError {
    /// A file or process operation failed.
    #[error("{what}: {source}")]
    Io {
        /// What was being done.
        what: String,
        /// The OS error.
        #[source]
        source: std::io::Error,
    },
    /// The benchmark's certificates could not be issued or written.
    #[error("certificates: {0}")]
    Certs(#[from] tally_certs::CertError),
    /// A SPIFFE id for the benchmark's certificates was invalid.
    #[error("certificates: {0}")]
    Spiffe(#[from] tally_certs::SpiffeIdError),
    /// A binary a setup needs is not where it was looked for.
    #[error("{program} not found at {path}; {fix}")]
    MissingProgram {
        /// Name of the program.
        program: String,
        /// Where it was looked for.
        path: PathBuf,
        /// How to provide it.
        fix: String,
    },
    /// A started process did not report ready in time or exited.
    #[error("{name} did not become ready: {detail}")]
    NotReady {
        /// The process.
        name: String,
        /// What was seen, with its log tail when it exited.
        detail: String,
    },
    /// The load generator could not connect to the setup's entry point.
    #[error("connecting the load generator to {target}: {detail}")]
    Connect {
        /// Address connected to.
        target: String,
        /// The connect error.
        detail: String,
    },
    /// The edge benchmark's signing key or token could not be made.
    #[error("edge credentials: {0}")]
    Credentials(String),
    /// The command-line options do not make a valid run.
    #[error("option {option}: {problem}")]
    Options {
        /// The offending option.
        option: String,
        /// What is wrong with it.
        problem: String,
    },
}

impl BenchError {
    pub(crate) fn io(what: impl Into<String>, source: std::io::Error) -> Self {
        BenchError::Io {
            what: what.into(),
            source,
        }
    }
}
