//! RESOURCE_EXHAUSTED answers that tell the caller when to try again, in the
//! gRPC rich error model: a `google.rpc.Status` carrying a
//! `google.rpc.RetryInfo` in `grpc-status-details-bin`, plus the plain
//! `retry-after` header (seconds) for HTTP tooling.
//!
//! The two messages are written here with prost derives (a dozen lines)
//! because `tonic-types`, which has them, is not in the workspace's
//! dependency set.

use std::time::Duration;
use tonic::{Code, Status};

/// Type URL of `google.rpc.RetryInfo` inside a `google.protobuf.Any`.
pub const RETRY_INFO_TYPE_URL: &str = "type.googleapis.com/google.rpc.RetryInfo";
/// Header with the delay in whole seconds (rounded up).
pub const RETRY_AFTER: &str = "retry-after";

/// `google.rpc.Status`.
#[derive(Clone, PartialEq, prost::Message)]
pub struct RpcStatus {
    /// The gRPC status code.
    #[prost(int32, tag = "1")]
    pub code: i32,
    /// The developer-facing message.
    #[prost(string, tag = "2")]
    pub message: String,
    /// Typed details, e.g. a packed `RetryInfo`.
    #[prost(message, repeated, tag = "3")]
    pub details: Vec<prost_types::Any>,
}

/// `google.rpc.RetryInfo`.
#[derive(Clone, PartialEq, prost::Message)]
pub struct RetryInfo {
    /// How long the client should wait before retrying.
    #[prost(message, optional, tag = "1")]
    pub retry_delay: Option<prost_types::Duration>,
}

/// RESOURCE_EXHAUSTED with `message`, asking the caller to wait `retry_after`.
pub fn resource_exhausted(message: String, retry_after: Duration) -> Status {
    use prost::Message;
    let delay = prost_types::Duration {
        seconds: i64::try_from(retry_after.as_secs()).unwrap_or(i64::MAX),
        nanos: i32::try_from(retry_after.subsec_nanos()).unwrap_or(0),
    };
    let details = RpcStatus {
        code: Code::ResourceExhausted as i32,
        message: message.clone(),
        details: vec![prost_types::Any {
            type_url: RETRY_INFO_TYPE_URL.into(),
            value: RetryInfo {
                retry_delay: Some(delay),
            }
            .encode_to_vec(),
        }],
    };
    let mut status = Status::with_details(
        Code::ResourceExhausted,
        message,
        details.encode_to_vec().into(),
    );
    let secs = retry_after.as_secs() + u64::from(retry_after.subsec_nanos() > 0);
    if let Ok(v) = secs.to_string().parse() {
        status.metadata_mut().insert(RETRY_AFTER, v);
    }
    status
}

/// The delay a status asks for, from its `google.rpc.RetryInfo` detail.
pub fn retry_delay(status: &Status) -> Option<Duration> {
    use prost::Message;
    let rpc = RpcStatus::decode(status.details()).ok()?;
    let any = rpc
        .details
        .iter()
        .find(|d| d.type_url == RETRY_INFO_TYPE_URL)?;
    let d = RetryInfo::decode(any.value.as_slice()).ok()?.retry_delay?;
    Some(Duration::new(
        u64::try_from(d.seconds).ok()?,
        u32::try_from(d.nanos).ok()?,
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn retry_info_round_trips_and_sets_retry_after() {
        let s = resource_exhausted("slow down".into(), Duration::from_millis(2500));
        assert_eq!(s.code(), Code::ResourceExhausted);
        assert_eq!(s.message(), "slow down");
        assert_eq!(retry_delay(&s), Some(Duration::from_millis(2500)));
        assert_eq!(s.metadata().get(RETRY_AFTER).unwrap(), "3");
        assert_eq!(retry_delay(&Status::resource_exhausted("x")), None);
    }
}
