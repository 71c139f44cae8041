//! The payment port the saga charges through, and its gRPC adapter to
//! `tally.payment.v1.PaymentService` (reached via the outbound channel). The
//! adapter turns a failed call's status into a [`GatewayError`] that says
//! what the saga needs to know: was anything possibly charged, and is it
//! worth waiting for (a mesh fast-fail, a pushback from the callee)?

use crate::domain::ride_out::Failure;
use async_trait::async_trait;
use std::time::Duration;
use tally_api::payment::v1 as pb;
use tally_api::payment::v1::payment_service_client::PaymentServiceClient;
use tally_chassis::trace::client::ClientTraceService;
use tonic::transport::Channel;
use tonic::{Code, Status};

/// Header a mesh proxy sets on an answer it made itself, naming why.
pub const PROXY_ERROR_HEADER: &str = "tally-proxy-error";
/// Header with which a callee asks for a pause before the next try.
pub const PUSHBACK_HEADER: &str = "grpc-retry-pushback-ms";
/// The message of the CANCELLED status tonic returns when the call's own
/// deadline passes on the client side (`tonic::TimeoutExpired`).
const CLIENT_TIMEOUT_MESSAGE: &str = "Timeout expired";
/// Proxy reasons meaning "refused without trying": no endpoint could take it.
pub const FAST_FAIL_REASONS: [&str; 2] = ["breaker-open", "no-endpoints"];

/// Why a payment call gave no answer, classified for the saga.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum GatewayError {
    /// The provider was not reached (or said it is down): nothing happened.
    #[error("{message}")]
    Unavailable {
        message: String,
        /// The mesh refused without trying (`breaker-open`, `no-endpoints`).
        fast_fail: bool,
        /// The callee's `grpc-retry-pushback-ms`, when it sent a valid one.
        pushback: Option<Duration>,
    },
    /// The deadline passed: the call may have been processed; worth waiting for.
    #[error("{0}")]
    TimedOut(String),
    /// The call may have been processed (reset, internal error, ...).
    #[error("{0}")]
    Uncertain(String),
    /// The provider refused the request itself: nothing was charged.
    #[error("{0}")]
    Rejected(String),
}

impl GatewayError {
    /// A plain UNAVAILABLE with `message`.
    #[cfg(test)]
    pub fn unavailable(message: impl Into<String>) -> Self {
        Self::Unavailable {
            message: message.into(),
            fast_fail: false,
            pushback: None,
        }
    }

    /// Classifies a failed call by its status code and the mesh's headers.
    pub fn from_status(status: &Status) -> Self {
        let meta = status.metadata();
        let proxy_reason = meta
            .get(PROXY_ERROR_HEADER)
            .and_then(|v| v.to_str().ok())
            .unwrap_or_default();
        let text = if proxy_reason.is_empty() {
            format!("{:?}: {}", status.code(), status.message())
        } else {
            format!(
                "{:?}: {} ({PROXY_ERROR_HEADER}: {proxy_reason})",
                status.code(),
                status.message()
            )
        };
        let pushback = meta
            .get(PUSHBACK_HEADER)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.trim().parse::<u64>().ok())
            .map(Duration::from_millis);
        let fast_fail = FAST_FAIL_REASONS.contains(&proxy_reason);
        match status.code() {
            Code::Unavailable => Self::Unavailable {
                message: text,
                fast_fail,
                pushback,
            },
            // A mesh refusal never reached the provider, whatever the code.
            _ if fast_fail => Self::Unavailable {
                message: text,
                fast_fail,
                pushback,
            },
            Code::DeadlineExceeded => Self::TimedOut(text),
            // tonic reports its own client-side deadline as CANCELLED.
            Code::Cancelled if status.message() == CLIENT_TIMEOUT_MESSAGE => Self::TimedOut(text),
            Code::Unknown
            | Code::Internal
            | Code::Cancelled
            | Code::Aborted
            | Code::ResourceExhausted => Self::Uncertain(text),
            _ => Self::Rejected(text),
        }
    }

    /// How the saga should treat it; `None` for a definite answer.
    pub fn failure(&self) -> Option<Failure> {
        match self {
            Self::Unavailable {
                fast_fail,
                pushback,
                ..
            } => Some(Failure::Transient {
                fast_fail: *fast_fail,
                pushback: *pushback,
                processed_possibly: false,
            }),
            Self::TimedOut(_) => Some(Failure::Transient {
                fast_fail: false,
                pushback: None,
                processed_possibly: true,
            }),
            Self::Uncertain(_) => Some(Failure::Doubtful),
            Self::Rejected(_) => None,
        }
    }
}

/// What billing needs from a payment provider. Both calls are idempotent by
/// key, so the saga may repeat them after a crash or a lost answer.
#[async_trait]
pub trait PaymentGateway: Send + Sync + 'static {
    async fn charge(
        &self,
        idempotency_key: &str,
        customer_id: &str,
        amount_cents: u64,
        currency: &str,
    ) -> Result<pb::Charge, GatewayError>;

    /// Refunds the charge made with `charge_key`, or voids that key if no
    /// charge was made.
    async fn settle(&self, refund_key: &str, charge_key: &str) -> Result<pb::Charge, GatewayError>;
}

/// The gRPC adapter.
#[derive(Clone)]
pub struct GrpcPayment {
    client: PaymentServiceClient<ClientTraceService<Channel>>,
    timeout: Duration,
}

impl GrpcPayment {
    pub fn new(channel: Channel, timeout: Duration) -> Self {
        Self {
            client: PaymentServiceClient::new(ClientTraceService::new(channel)),
            timeout,
        }
    }

    fn request<T>(&self, msg: T) -> tonic::Request<T> {
        let mut req = tonic::Request::new(msg);
        req.set_timeout(self.timeout);
        req
    }
}

#[async_trait]
impl PaymentGateway for GrpcPayment {
    async fn charge(
        &self,
        idempotency_key: &str,
        customer_id: &str,
        amount_cents: u64,
        currency: &str,
    ) -> Result<pb::Charge, GatewayError> {
        let mut client = self.client.clone();
        let resp = client
            .charge(self.request(pb::ChargeRequest {
                idempotency_key: idempotency_key.to_string(),
                customer_id: customer_id.to_string(),
                amount_cents,
                currency: currency.to_string(),
            }))
            .await
            .map_err(|s| GatewayError::from_status(&s))?;
        resp.into_inner()
            .charge
            .ok_or_else(|| GatewayError::Uncertain("payment answered without a charge".into()))
    }

    async fn settle(&self, refund_key: &str, charge_key: &str) -> Result<pb::Charge, GatewayError> {
        let mut client = self.client.clone();
        let resp = client
            .refund(self.request(pb::RefundRequest {
                idempotency_key: refund_key.to_string(),
                charge_id: String::new(),
                charge_idempotency_key: charge_key.to_string(),
            }))
            .await
            .map_err(|s| GatewayError::from_status(&s))?;
        resp.into_inner()
            .charge
            .ok_or_else(|| GatewayError::Uncertain("payment answered without a charge".into()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn with(mut status: Status, headers: &[(&'static str, &'static str)]) -> Status {
        for (k, v) in headers {
            status
                .metadata_mut()
                .insert(*k, tonic::metadata::MetadataValue::from_static(v));
        }
        status
    }

    #[test]
    fn mesh_fast_fails_and_pushback_are_read_from_the_status() {
        let e = GatewayError::from_status(&with(
            Status::unavailable("circuit open"),
            &[
                (PROXY_ERROR_HEADER, "breaker-open"),
                (PUSHBACK_HEADER, "1500"),
            ],
        ));
        assert_eq!(
            e.failure(),
            Some(Failure::Transient {
                fast_fail: true,
                pushback: Some(Duration::from_millis(1500)),
                processed_possibly: false
            })
        );
        assert!(e.to_string().contains("breaker-open"), "{e}");
        let e = GatewayError::from_status(&with(
            Status::unavailable("none"),
            &[
                (PROXY_ERROR_HEADER, "no-endpoints"),
                (PUSHBACK_HEADER, "-1"),
            ],
        ));
        assert!(matches!(
            e,
            GatewayError::Unavailable {
                fast_fail: true,
                pushback: None,
                ..
            }
        ));
        let e = GatewayError::from_status(&with(
            Status::unavailable("fault"),
            &[(PROXY_ERROR_HEADER, "fault-abort")],
        ));
        assert!(matches!(
            e,
            GatewayError::Unavailable {
                fast_fail: false,
                ..
            }
        ));
    }

    #[test]
    fn codes_map_to_what_the_saga_needs() {
        let kind = |s: Status| GatewayError::from_status(&s).failure();
        assert!(matches!(
            kind(Status::deadline_exceeded("slow")),
            Some(Failure::Transient {
                processed_possibly: true,
                ..
            })
        ));
        assert!(matches!(
            kind(Status::cancelled("Timeout expired")),
            Some(Failure::Transient {
                processed_possibly: true,
                ..
            })
        ));
        assert_eq!(
            kind(Status::cancelled("by the caller")),
            Some(Failure::Doubtful)
        );
        assert_eq!(kind(Status::internal("boom")), Some(Failure::Doubtful));
        assert_eq!(kind(Status::invalid_argument("bad")), None);
        assert_eq!(kind(Status::failed_precondition("no")), None);
    }
}
