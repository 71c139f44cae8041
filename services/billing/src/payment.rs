//! The payment port the saga charges through, and its gRPC adapter to
//! `tally.payment.v1.PaymentService` (reached via the outbound channel).

use async_trait::async_trait;
use std::time::Duration;
use tally_api::payment::v1 as pb;
use tally_api::payment::v1::payment_service_client::PaymentServiceClient;
use tonic::Status;
use tonic::transport::Channel;

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
    ) -> Result<pb::Charge, Status>;

    /// Refunds the charge made with `charge_key`, or voids that key if no
    /// charge was made.
    async fn settle(&self, refund_key: &str, charge_key: &str) -> Result<pb::Charge, Status>;
}

/// The gRPC adapter.
#[derive(Clone)]
pub struct GrpcPayment {
    client: PaymentServiceClient<Channel>,
    timeout: Duration,
}

impl GrpcPayment {
    pub fn new(channel: Channel, timeout: Duration) -> Self {
        Self {
            client: PaymentServiceClient::new(channel),
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
    ) -> Result<pb::Charge, Status> {
        let mut client = self.client.clone();
        let resp = client
            .charge(self.request(pb::ChargeRequest {
                idempotency_key: idempotency_key.to_string(),
                customer_id: customer_id.to_string(),
                amount_cents,
                currency: currency.to_string(),
            }))
            .await?;
        resp.into_inner()
            .charge
            .ok_or_else(|| Status::internal("payment answered without a charge"))
    }

    async fn settle(&self, refund_key: &str, charge_key: &str) -> Result<pb::Charge, Status> {
        let mut client = self.client.clone();
        let resp = client
            .refund(self.request(pb::RefundRequest {
                idempotency_key: refund_key.to_string(),
                charge_id: String::new(),
                charge_idempotency_key: charge_key.to_string(),
            }))
            .await?;
        resp.into_inner()
            .charge
            .ok_or_else(|| Status::internal("payment answered without a charge"))
    }
}
