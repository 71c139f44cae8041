//! The payment port the saga charges through, and its gRPC adapter to
//! `tally.payment.v1.PaymentService` (reached via the outbound channel). The
//! adapter turns a failed call's status into a [`GatewayError`] that says
//! what the saga needs to know: was anything possibly charged?

use async_trait::async_trait;
use std::time::Duration;
use tally_api::payment::v1 as pb;
use tally_api::payment::v1::payment_service_client::PaymentServiceClient;
use tally_chassis::trace::client::ClientTraceService;
use tonic::transport::Channel;
use tonic::{Code, Status};

/// Why a payment call gave no answer, classified for the saga.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum GatewayError {
    /// The provider was not reached (or said it is down): nothing happened.
    #[error("{0}")]
    Unavailable(String),
    /// The call may have been processed (timeout, reset, internal error).
    #[error("{0}")]
    Uncertain(String),
    /// The provider refused the request itself: nothing was charged.
    #[error("{0}")]
    Rejected(String),
}

impl GatewayError {
    /// Classifies a failed call by its status code.
    pub fn from_status(status: &Status) -> Self {
        let text = format!("{:?}: {}", status.code(), status.message());
        match status.code() {
            Code::Unavailable => Self::Unavailable(text),
            Code::DeadlineExceeded
            | Code::Unknown
            | Code::Internal
            | Code::Cancelled
            | Code::Aborted
            | Code::ResourceExhausted => Self::Uncertain(text),
            _ => Self::Rejected(text),
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
