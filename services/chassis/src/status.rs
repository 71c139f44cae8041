//! How the chassis' port errors read on the wire: the one mapping from a
//! storage or consumer error to a `tonic::Status`, called only by gRPC edges
//! (the chassis' own event feed and consumer admin, and each service's
//! `grpc.rs`), so every service answers the same code for the same failure.

use crate::events::bus::BusError;
use crate::events::consumer::ConsumerError;
use crate::storage::StoreError;
use tonic::Status;

/// A storage failure as a status: a failed condition is ABORTED (the caller
/// may retry), an unreachable store UNAVAILABLE, a bad record INTERNAL.
pub fn store(e: StoreError) -> Status {
    match e {
        StoreError::ConditionFailed { .. } => Status::aborted(e.to_string()),
        StoreError::Unavailable(_) => Status::unavailable(e.to_string()),
        StoreError::Corrupt(_) => Status::internal(e.to_string()),
    }
}

/// A consumer runtime failure as a status.
pub fn consumer(e: ConsumerError) -> Status {
    match e {
        ConsumerError::Store(s) => store(s),
        ConsumerError::Bus(b @ BusError::Unavailable(_)) => Status::unavailable(b.to_string()),
        ConsumerError::Bus(b) => Status::failed_precondition(b.to_string()),
        ConsumerError::NotFound(m) => Status::not_found(format!("{m} not found")),
        ConsumerError::Invalid(m) => Status::invalid_argument(m),
        ConsumerError::Handler(m) => Status::internal(m),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tonic::Code;

    #[test]
    fn store_errors_map_to_retryable_or_internal_codes() {
        let failed = StoreError::ConditionFailed {
            index: 0,
            table: "t".into(),
            partition: "p".into(),
            key: "k".into(),
        };
        assert_eq!(store(failed).code(), Code::Aborted);
        assert_eq!(
            store(StoreError::Unavailable("down".into())).code(),
            Code::Unavailable
        );
        assert_eq!(
            store(StoreError::Corrupt("bad".into())).code(),
            Code::Internal
        );
    }

    #[test]
    fn consumer_errors_keep_their_meaning() {
        assert_eq!(
            consumer(ConsumerError::NotFound("dead letter x".into())).code(),
            Code::NotFound
        );
        assert_eq!(
            consumer(ConsumerError::Invalid("from 0".into())).code(),
            Code::InvalidArgument
        );
        assert_eq!(
            consumer(ConsumerError::Store(StoreError::Unavailable("down".into()))).code(),
            Code::Unavailable
        );
    }
}
