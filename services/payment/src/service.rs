//! The `tally.payment.v1.PaymentService` handlers: fault injection first
//! (outage, latency, forced declines), then the ledger.

use crate::config::FaultSettings;
use crate::domain::{ChargeIntent, ChargeRecord, ChargeStatus};
use crate::ledger::Ledger;
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use std::sync::Mutex;
use std::time::Duration;
use tally_api::payment::v1 as pb;
use tally_api::payment::v1::payment_service_server::PaymentService;
use tonic::metadata::MetadataMap;
use tonic::{Request, Response, Status};

/// Metadata that injects a fault when `allow_fault_headers` is on.
pub const FAULT_HEADER: &str = "x-payment-fault";

/// The payment service.
pub struct PaymentApi {
    ledger: Ledger,
    faults: FaultSettings,
    rng: Mutex<StdRng>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Fault {
    None,
    Decline,
    Outage,
}

pub(crate) fn now_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as i64)
        .unwrap_or(0)
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

impl PaymentApi {
    pub fn new(ledger: Ledger, faults: FaultSettings) -> Self {
        let rng = match faults.seed {
            Some(seed) => StdRng::seed_from_u64(seed),
            None => StdRng::from_os_rng(),
        };
        Self {
            ledger,
            faults,
            rng: Mutex::new(rng),
        }
    }

    /// Applies latency and, for calls that move money, outage; returns the
    /// fault asked for by metadata. Reads (GetCharge, ListCharges) keep
    /// answering during an outage, like a provider's reporting side, so the
    /// books can be checked while charging is down.
    async fn inject(&self, metadata: &MetadataMap, moves_money: bool) -> Result<Fault, Status> {
        if self.faults.latency_ms > 0 {
            tokio::time::sleep(Duration::from_millis(self.faults.latency_ms)).await;
        }
        let asked = if self.faults.allow_fault_headers {
            match metadata.get(FAULT_HEADER).and_then(|v| v.to_str().ok()) {
                Some("decline") => Fault::Decline,
                Some("outage") => Fault::Outage,
                _ => Fault::None,
            }
        } else {
            Fault::None
        };
        if moves_money && (self.faults.outage || asked == Fault::Outage) {
            return Err(Status::unavailable(
                "payment provider outage (payment.outage is set); retry later",
            ));
        }
        Ok(asked)
    }

    fn roll(&self) -> f64 {
        let mut rng = match self.rng.lock() {
            Ok(g) => g,
            Err(poisoned) => poisoned.into_inner(),
        };
        rng.random::<f64>()
    }
}

#[tonic::async_trait]
impl PaymentService for PaymentApi {
    async fn charge(
        &self,
        request: Request<pb::ChargeRequest>,
    ) -> Result<Response<pb::ChargeResponse>, Status> {
        let fault = self.inject(request.metadata(), true).await?;
        let req = request.into_inner();
        let intent = ChargeIntent::new(
            &req.idempotency_key,
            &req.customer_id,
            req.amount_cents,
            &req.currency,
        )
        .map_err(|e| Status::invalid_argument(e.to_string()))?;
        let roll = self.roll();
        let rate = self.faults.decline_rate;
        let record = self
            .ledger
            .charge(&intent, |id| {
                intent.settle(id, rate, roll, fault == Fault::Decline, now_ms())
            })
            .await?;
        tracing::info!(
            charge_id = %record.charge_id,
            key = %record.idempotency_key,
            status = ?record.status,
            "charge"
        );
        Ok(Response::new(pb::ChargeResponse {
            charge: Some(to_pb(record)),
        }))
    }

    async fn refund(
        &self,
        request: Request<pb::RefundRequest>,
    ) -> Result<Response<pb::RefundResponse>, Status> {
        self.inject(request.metadata(), true).await?;
        let req = request.into_inner();
        if req.idempotency_key.is_empty() {
            return Err(Status::invalid_argument("idempotency_key is empty"));
        }
        let record = match (
            req.charge_id.is_empty(),
            req.charge_idempotency_key.is_empty(),
        ) {
            (false, true) => {
                self.ledger
                    .refund_by_id(&req.charge_id, &req.idempotency_key)
                    .await?
            }
            (true, false) => {
                self.ledger
                    .settle_by_charge_key(
                        &req.charge_idempotency_key,
                        &req.idempotency_key,
                        now_ms(),
                    )
                    .await?
            }
            _ => {
                return Err(Status::invalid_argument(
                    "set exactly one of charge_id and charge_idempotency_key",
                ));
            }
        };
        tracing::info!(charge_id = %record.charge_id, status = ?record.status, "refund");
        Ok(Response::new(pb::RefundResponse {
            charge: Some(to_pb(record)),
        }))
    }

    async fn get_charge(
        &self,
        request: Request<pb::GetChargeRequest>,
    ) -> Result<Response<pb::GetChargeResponse>, Status> {
        self.inject(request.metadata(), false).await?;
        let req = request.into_inner();
        if req.charge_id.is_empty() {
            return Err(Status::invalid_argument("charge_id is empty"));
        }
        let record = self.ledger.get(&req.charge_id).await?;
        Ok(Response::new(pb::GetChargeResponse {
            charge: Some(to_pb(record)),
        }))
    }

    async fn list_charges(
        &self,
        request: Request<pb::ListChargesRequest>,
    ) -> Result<Response<pb::ListChargesResponse>, Status> {
        self.inject(request.metadata(), false).await?;
        let req = request.into_inner();
        if req.customer_id.is_empty() {
            return Err(Status::invalid_argument("customer_id is empty"));
        }
        let charges = self.ledger.list(&req.customer_id).await?;
        Ok(Response::new(pb::ListChargesResponse {
            charges: charges.into_iter().map(to_pb).collect(),
        }))
    }
}
