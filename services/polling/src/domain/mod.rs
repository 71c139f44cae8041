//! The polling rules, free of I/O: what a valid poll is, who may close it,
//! when a vote counts, how counts follow from the vote log, how list
//! pages are addressed, and how many polls a plan lets an owner keep open.
//! Time is passed in (`now`), never read here.

pub mod limits;
pub mod paging;
pub mod poll;
pub mod tally;
pub mod vote;

/// Milliseconds since the Unix epoch, the domain's only notion of time.
pub type Millis = i64;

/// A broken rule, mapped to a gRPC status at the edge.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum DomainError {
    /// A request field is wrong; `field` is its path, e.g. `options[3]`.
    #[error("{field}: {reason}")]
    InvalidArgument { field: String, reason: String },
    #[error("{0}")]
    NotFound(String),
    #[error("{0}")]
    FailedPrecondition(String),
    #[error("{0}")]
    PermissionDenied(String),
    #[error("{0}")]
    AlreadyExists(String),
    /// A per-user quota (the plan's open-poll limit) is used up.
    #[error("{0}")]
    ResourceExhausted(String),
}

impl DomainError {
    pub fn invalid(field: impl Into<String>, reason: impl Into<String>) -> Self {
        DomainError::InvalidArgument {
            field: field.into(),
            reason: reason.into(),
        }
    }
}
