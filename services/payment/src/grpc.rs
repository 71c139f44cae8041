//! The gRPC edge, `tally.payment.v1.PaymentService`: read the request (and
//! the fault header when allowed), call the use case ([`crate::app`]), map
//! the charge to its message; the only place a payment error becomes a
//! `tonic::Status`.

use crate::app::{Fault, PaymentAppError, Payments, RefundTarget};
use crate::domain::{ChargeRecord, ChargeStatus, PaymentError};
use crate::store::LedgerError;
use tally_api::payment::v1 as pb;
use tally_api::payment::v1::payment_service_server::PaymentService;
use tonic::metadata::MetadataMap;
use tonic::{Request, Response, Status};

/// Metadata that injects a fault when `allow_fault_headers` is on.
pub const FAULT_HEADER: &str = "x-payment-fault";

/// The payment service.
pub struct PaymentApi {
    app: std::sync::Arc<Payments>,
}

impl PaymentApi {
    pub fn new(app: std::sync::Arc<Payments>) -> Self {
        Self { app }
    }

    /// The fault the caller asked for, when such requests are allowed.
    fn asked(&self, metadata: &MetadataMap) -> Fault {
        if !self.app.fault_requests_allowed() {
            return Fault::None;
        }
        match metadata.get(FAULT_HEADER).and_then(|v| v.to_str().ok()) {
            Some("decline") => Fault::Decline,
            Some("outage") => Fault::Outage,
            _ => Fault::None,
        }
    }
}

/// The status a payment error answers with.
fn status(e: PaymentAppError) -> Status {
    let msg = e.to_string();
    match e {
        PaymentAppError::Outage => Status::unavailable(msg),
        PaymentAppError::Invalid(_) => Status::invalid_argument(msg),
        PaymentAppError::Ledger(LedgerError::Store(s)) => tally_chassis::status::store(s),
        PaymentAppError::Ledger(LedgerError::Rule(PaymentError::Invalid { .. })) => {
            Status::invalid_argument(msg)
        }
        PaymentAppError::Ledger(LedgerError::Rule(_)) => Status::failed_precondition(msg),
        PaymentAppError::Ledger(LedgerError::NotFound(_)) => Status::not_found(msg),
        PaymentAppError::Ledger(LedgerError::Contention(_)) => Status::aborted(msg),
    }
}

fn timestamp(ms: i64) -> prost_types::Timestamp {
    prost_types::Timestamp {
        seconds: ms.div_euclid(1000),
        nanos: (ms.rem_euclid(1000) * 1_000_000) as i32,
    }
}

fn to_pb(r: ChargeRecord) -> pb::Charge {
    let status = match r.status {
        ChargeStatus::Succeeded => pb::ChargeStatus::Succeeded,
        ChargeStatus::Declined => pb::ChargeStatus::Declined,
        ChargeStatus::Refunded => pb::ChargeStatus::Refunded,
        ChargeStatus::Voided => pb::ChargeStatus::Voided,
    };
    pb::Charge {
        charge_id: r.charge_id,
        customer_id: r.customer_id,
        amount_cents: r.amount_cents,
        currency: r.currency,
        status: status as i32,
        idempotency_key: r.idempotency_key,
        decline_reason: r.decline_reason,
        created_at: Some(timestamp(r.created_at_ms)),
        refund_idempotency_key: r.refund_key,
    }
}

#[tonic::async_trait]
impl PaymentService for PaymentApi {
    async fn charge(
        &self,
        request: Request<pb::ChargeRequest>,
    ) -> Result<Response<pb::ChargeResponse>, Status> {
        let asked = self.asked(request.metadata());
        let req = request.into_inner();
        let record = self
            .app
            .charge(
                asked,
                &req.idempotency_key,
                &req.customer_id,
                req.amount_cents,
                &req.currency,
            )
            .await
            .map_err(status)?;
        Ok(Response::new(pb::ChargeResponse {
            charge: Some(to_pb(record)),
        }))
    }

    async fn refund(
        &self,
        request: Request<pb::RefundRequest>,
    ) -> Result<Response<pb::RefundResponse>, Status> {
        let asked = self.asked(request.metadata());
        let req = request.into_inner();
        let target = match (
            req.charge_id.is_empty(),
            req.charge_idempotency_key.is_empty(),
        ) {
            (false, true) => RefundTarget::ChargeId(&req.charge_id),
            (true, false) => RefundTarget::ChargeKey(&req.charge_idempotency_key),
            _ => {
                return Err(Status::invalid_argument(
                    "set exactly one of charge_id and charge_idempotency_key",
                ));
            }
        };
        let record = self
            .app
            .refund(asked, &req.idempotency_key, target)
            .await
            .map_err(status)?;
        Ok(Response::new(pb::RefundResponse {
            charge: Some(to_pb(record)),
        }))
    }

    async fn get_charge(
        &self,
        request: Request<pb::GetChargeRequest>,
    ) -> Result<Response<pb::GetChargeResponse>, Status> {
        let asked = self.asked(request.metadata());
        let req = request.into_inner();
        let record = self.app.get(asked, &req.charge_id).await.map_err(status)?;
        Ok(Response::new(pb::GetChargeResponse {
            charge: Some(to_pb(record)),
        }))
    }

    async fn list_charges(
        &self,
        request: Request<pb::ListChargesRequest>,
    ) -> Result<Response<pb::ListChargesResponse>, Status> {
        let asked = self.asked(request.metadata());
        let req = request.into_inner();
        let charges = self
            .app
            .list(asked, &req.customer_id)
            .await
            .map_err(status)?;
        Ok(Response::new(pb::ListChargesResponse {
            charges: charges.into_iter().map(to_pb).collect(),
        }))
    }
}
