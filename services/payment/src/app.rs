//! Payment's use cases: charge, refund (by charge id or by the charge's
//! idempotency key), read and list charges, with the configured faults
//! (latency, outage, declines) applied first, as a real provider's failures
//! would be.

use crate::config::FaultSettings;
use crate::domain::{ChargeIntent, ChargeRecord};
use crate::store::{Ledger, LedgerError};
use parking_lot::Mutex;
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use std::time::Duration;

/// A fault a caller asked for (honoured only when `allow_fault_headers` is on).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Fault {
    None,
    Decline,
    Outage,
}

/// Use-case failures; the gRPC edge maps them to status codes.
#[derive(Debug, thiserror::Error)]
pub enum PaymentAppError {
    /// The provider is down (configured or asked-for outage).
    #[error("payment provider outage (payment.outage is set); retry later")]
    Outage,
    /// The request itself is malformed.
    #[error("{0}")]
    Invalid(String),
    #[error(transparent)]
    Ledger(#[from] LedgerError),
}

/// Which charge a refund names.
#[derive(Debug, Clone, Copy)]
pub enum RefundTarget<'a> {
    ChargeId(&'a str),
    ChargeKey(&'a str),
}

pub(crate) fn now_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as i64)
        .unwrap_or(0)
}

/// The provider's use cases over its ledger.
pub struct Payments {
    ledger: Ledger,
    faults: FaultSettings,
    rng: Mutex<StdRng>,
}

impl Payments {
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

    /// Whether callers may ask for faults (`x-payment-fault`).
    pub fn fault_requests_allowed(&self) -> bool {
        self.faults.allow_fault_headers
    }

    /// Applies latency and, for calls that move money, outage. Reads
    /// (GetCharge, ListCharges) keep answering during an outage, like a
    /// provider's reporting side, so the books can be checked while charging
    /// is down.
    async fn inject(&self, asked: Fault, moves_money: bool) -> Result<(), PaymentAppError> {
        if self.faults.latency_ms > 0 {
            tokio::time::sleep(Duration::from_millis(self.faults.latency_ms)).await;
        }
        if moves_money && (self.faults.outage || asked == Fault::Outage) {
            return Err(PaymentAppError::Outage);
        }
        Ok(())
    }

    fn roll(&self) -> f64 {
        let mut rng = self.rng.lock();
        rng.random::<f64>()
    }

    /// Charges once per idempotency key; a retry gets the first answer.
    pub async fn charge(
        &self,
        asked: Fault,
        idempotency_key: &str,
        customer_id: &str,
        amount_cents: u64,
        currency: &str,
    ) -> Result<ChargeRecord, PaymentAppError> {
        self.inject(asked, true).await?;
        let intent = ChargeIntent::new(idempotency_key, customer_id, amount_cents, currency)
            .map_err(|e| PaymentAppError::Invalid(e.to_string()))?;
        let roll = self.roll();
        let rate = self.faults.decline_rate;
        let record = self
            .ledger
            .charge(&intent, |id| {
                intent.settle(id, rate, roll, asked == Fault::Decline, now_ms())
            })
            .await?;
        tracing::info!(
            charge_id = %record.charge_id,
            key = %record.idempotency_key,
            status = ?record.status,
            "charge"
        );
        Ok(record)
    }

    /// Refunds a charge (or voids a charge key nothing was charged under).
    pub async fn refund(
        &self,
        asked: Fault,
        idempotency_key: &str,
        target: RefundTarget<'_>,
    ) -> Result<ChargeRecord, PaymentAppError> {
        self.inject(asked, true).await?;
        if idempotency_key.is_empty() {
            return Err(PaymentAppError::Invalid("idempotency_key is empty".into()));
        }
        let record = match target {
            RefundTarget::ChargeId(id) => self.ledger.refund_by_id(id, idempotency_key).await?,
            RefundTarget::ChargeKey(key) => {
                self.ledger
                    .settle_by_charge_key(key, idempotency_key, now_ms())
                    .await?
            }
        };
        tracing::info!(charge_id = %record.charge_id, status = ?record.status, "refund");
        Ok(record)
    }

    /// One charge.
    pub async fn get(
        &self,
        asked: Fault,
        charge_id: &str,
    ) -> Result<ChargeRecord, PaymentAppError> {
        self.inject(asked, false).await?;
        if charge_id.is_empty() {
            return Err(PaymentAppError::Invalid("charge_id is empty".into()));
        }
        Ok(self.ledger.get(charge_id).await?)
    }

    /// A customer's charges.
    pub async fn list(
        &self,
        asked: Fault,
        customer_id: &str,
    ) -> Result<Vec<ChargeRecord>, PaymentAppError> {
        self.inject(asked, false).await?;
        if customer_id.is_empty() {
            return Err(PaymentAppError::Invalid("customer_id is empty".into()));
        }
        Ok(self.ledger.list(customer_id).await?)
    }

    /// Whether the ledger's store answers, for health.
    pub async fn ping(&self) -> bool {
        self.ledger.ping().await
    }
}
