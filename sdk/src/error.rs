//! What can go wrong calling Tally: a bad address, no connection, or the
//! service's gRPC status, kept whole so callers can match on its code.

/// An SDK failure.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The address is not a valid URI.
    #[error("invalid address `{addr}`: {source}")]
    InvalidAddress {
        /// The address as given.
        addr: String,
        /// Why it is not a URI.
        source: tonic::transport::Error,
    },
    /// The service could not be reached (eager connect only).
    #[error("cannot connect to {addr}: {source}")]
    Connect {
        /// The address dialled.
        addr: String,
        /// The transport's reason.
        source: tonic::transport::Error,
    },
    /// A credential cannot be sent as gRPC metadata (e.g. it holds a newline).
    #[error("the {0} contains characters that cannot be sent as metadata")]
    InvalidCredentials(&'static str),
    /// The service answered with an error status.
    #[error("{}: {}", code_name(.0.code()), .0.message())]
    Status(#[from] tonic::Status),
    /// The service answered OK but left out a field the SDK needs.
    #[error("response from the service lacks `{0}`")]
    MissingField(&'static str),
}

impl Error {
    /// The gRPC code of this failure: the service's code for [`Error::Status`],
    /// UNAVAILABLE for connection problems, INVALID_ARGUMENT for bad input.
    pub fn code(&self) -> tonic::Code {
        match self {
            Error::Status(s) => s.code(),
            Error::Connect { .. } => tonic::Code::Unavailable,
            Error::InvalidAddress { .. } | Error::InvalidCredentials(_) => {
                tonic::Code::InvalidArgument
            }
            Error::MissingField(_) => tonic::Code::Internal,
        }
    }

    /// The service's status, when the failure came from the service.
    pub fn status(&self) -> Option<&tonic::Status> {
        match self {
            Error::Status(s) => Some(s),
            _ => None,
        }
    }
}

/// The canonical upper-case name of a gRPC code, e.g. `NOT_FOUND`.
pub fn code_name(code: tonic::Code) -> &'static str {
    use tonic::Code::*;
    match code {
        Ok => "OK",
        Cancelled => "CANCELLED",
        Unknown => "UNKNOWN",
        InvalidArgument => "INVALID_ARGUMENT",
        DeadlineExceeded => "DEADLINE_EXCEEDED",
        NotFound => "NOT_FOUND",
        AlreadyExists => "ALREADY_EXISTS",
        PermissionDenied => "PERMISSION_DENIED",
        ResourceExhausted => "RESOURCE_EXHAUSTED",
        FailedPrecondition => "FAILED_PRECONDITION",
        Aborted => "ABORTED",
        OutOfRange => "OUT_OF_RANGE",
        Unimplemented => "UNIMPLEMENTED",
        Internal => "INTERNAL",
        Unavailable => "UNAVAILABLE",
        DataLoss => "DATA_LOSS",
        Unauthenticated => "UNAUTHENTICATED",
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn status_errors_show_code_and_message() {
        let e = Error::from(tonic::Status::not_found("poll p1 does not exist"));
        assert_eq!(e.to_string(), "NOT_FOUND: poll p1 does not exist");
        assert_eq!(e.code(), tonic::Code::NotFound);
        assert!(e.status().is_some());
    }

    #[test]
    fn missing_field_is_internal() {
        assert_eq!(Error::MissingField("poll").code(), tonic::Code::Internal);
    }
}
