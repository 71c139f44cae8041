//! Charge rules without I/O: what a valid charge is, whether it is declined,
//! whether a retry matches the original, and what a refund does to a charge.

use serde::{Deserialize, Serialize};

/// Customers whose id starts with this are always declined (deterministic tests).
pub const DECLINE_PREFIX: &str = "decline-";

/// Where a charge stands.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ChargeStatus {
    Succeeded,
    Declined,
    Refunded,
    Voided,
}

/// A charge as stored.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ChargeRecord {
    pub charge_id: String,
    pub customer_id: String,
    pub amount_cents: u64,
    pub currency: String,
    pub status: ChargeStatus,
    pub idempotency_key: String,
    #[serde(default)]
    pub decline_reason: String,
    pub created_at_ms: i64,
    #[serde(default)]
    pub refund_key: String,
}

/// A charge request that passed validation.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ChargeIntent {
    pub idempotency_key: String,
    pub customer_id: String,
    pub amount_cents: u64,
    pub currency: String,
}

/// Rule violations, mapped to gRPC codes at the edge.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PaymentError {
    #[error("invalid {field}: {problem}")]
    Invalid {
        field: &'static str,
        problem: String,
    },
    #[error(
        "idempotency key `{0}` was used for a different charge (customer, amount or currency differ)"
    )]
    KeyReused(String),
    #[error("charge {0} was {1:?}; only a succeeded charge can be refunded")]
    NotRefundable(String, ChargeStatus),
}

const MAX_KEY: usize = 200;

fn check_key(field: &'static str, value: &str) -> Result<(), PaymentError> {
    if value.is_empty() {
        return Err(PaymentError::Invalid {
            field,
            problem: "is empty".into(),
        });
    }
    if value.len() > MAX_KEY || value.chars().any(char::is_control) {
        return Err(PaymentError::Invalid {
            field,
            problem: format!("must be 1..={MAX_KEY} printable characters"),
        });
    }
    Ok(())
}

impl ChargeIntent {
    /// Validates the raw request fields. Currency defaults to `usd`.
    pub fn new(
        idempotency_key: &str,
        customer_id: &str,
        amount_cents: u64,
        currency: &str,
    ) -> Result<Self, PaymentError> {
        check_key("idempotency_key", idempotency_key)?;
        check_key("customer_id", customer_id)?;
        if amount_cents == 0 {
            return Err(PaymentError::Invalid {
                field: "amount_cents",
                problem: "must be positive".into(),
            });
        }
        let currency = if currency.is_empty() {
            "usd".to_string()
        } else {
            currency.to_ascii_lowercase()
        };
        if currency.len() != 3 || !currency.chars().all(|c| c.is_ascii_lowercase()) {
            return Err(PaymentError::Invalid {
                field: "currency",
                problem: format!("`{currency}` is not a three-letter ISO code"),
            });
        }
        Ok(Self {
            idempotency_key: idempotency_key.to_string(),
            customer_id: customer_id.to_string(),
            amount_cents,
            currency,
        })
    }

    /// True when `record` was made by this same request (a retry).
    pub fn matches(&self, record: &ChargeRecord) -> bool {
        record.status == ChargeStatus::Voided
            || (record.customer_id == self.customer_id
                && record.amount_cents == self.amount_cents
                && record.currency == self.currency)
    }

    /// The charge this request creates. `roll` is a uniform draw in 0..1.
    pub fn settle(
        &self,
        charge_id: String,
        decline_rate: f64,
        roll: f64,
        forced_decline: bool,
        now_ms: i64,
    ) -> ChargeRecord {
        let reason = if forced_decline {
            Some("declined by fault injection")
        } else if self.customer_id.starts_with(DECLINE_PREFIX) {
            Some("card declined for this customer")
        } else if roll < decline_rate {
            Some("card declined")
        } else {
            None
        };
        ChargeRecord {
            charge_id,
            customer_id: self.customer_id.clone(),
            amount_cents: self.amount_cents,
            currency: self.currency.clone(),
            status: if reason.is_some() {
                ChargeStatus::Declined
            } else {
                ChargeStatus::Succeeded
            },
            idempotency_key: self.idempotency_key.clone(),
            decline_reason: reason.unwrap_or_default().to_string(),
            created_at_ms: now_ms,
            refund_key: String::new(),
        }
    }
}

/// A tombstone for a charge that was never made, so a late charge with the
/// same key charges nothing.
pub fn voided(charge_id: String, charge_key: &str, refund_key: &str, now_ms: i64) -> ChargeRecord {
    ChargeRecord {
        charge_id,
        customer_id: String::new(),
        amount_cents: 0,
        currency: String::new(),
        status: ChargeStatus::Voided,
        idempotency_key: charge_key.to_string(),
        decline_reason: "voided before it was made".into(),
        created_at_ms: now_ms,
        refund_key: refund_key.to_string(),
    }
}

/// What refunding `record` does.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RefundEffect {
    /// The charge becomes refunded; store this record.
    Refund(ChargeRecord),
    /// Nothing to change (already refunded, or nothing was charged).
    Unchanged,
}

/// Refund rule. `lenient` (addressed by the charge key) accepts charges that
/// took no money and leaves them as they are; by charge id they are an error.
pub fn refund(
    record: &ChargeRecord,
    refund_key: &str,
    lenient: bool,
) -> Result<RefundEffect, PaymentError> {
    check_key("idempotency_key", refund_key)?;
    match record.status {
        ChargeStatus::Succeeded => {
            let mut next = record.clone();
            next.status = ChargeStatus::Refunded;
            next.refund_key = refund_key.to_string();
            Ok(RefundEffect::Refund(next))
        }
        ChargeStatus::Refunded => Ok(RefundEffect::Unchanged),
        ChargeStatus::Declined | ChargeStatus::Voided if lenient => Ok(RefundEffect::Unchanged),
        other => Err(PaymentError::NotRefundable(record.charge_id.clone(), other)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn intent(customer: &str) -> ChargeIntent {
        ChargeIntent::new("k1", customer, 900, "USD").expect("valid")
    }

    #[test]
    fn validation_names_the_field() {
        let err = ChargeIntent::new("", "c", 1, "usd").expect_err("empty key");
        assert!(err.to_string().contains("idempotency_key"));
        let err = ChargeIntent::new("k", "c", 0, "usd").expect_err("zero");
        assert!(err.to_string().contains("amount_cents"));
        let err = ChargeIntent::new("k", "c", 1, "dollars").expect_err("currency");
        assert!(err.to_string().contains("currency"));
        assert_eq!(intent("c").currency, "usd");
    }

    #[test]
    fn declines_by_rate_prefix_and_fault() {
        let ok = intent("alice").settle("c1".into(), 0.25, 0.5, false, 0);
        assert_eq!(ok.status, ChargeStatus::Succeeded);
        let by_rate = intent("alice").settle("c1".into(), 0.25, 0.1, false, 0);
        assert_eq!(by_rate.status, ChargeStatus::Declined);
        let by_prefix = intent("decline-bob").settle("c1".into(), 0.0, 0.9, false, 0);
        assert_eq!(by_prefix.status, ChargeStatus::Declined);
        let forced = intent("alice").settle("c1".into(), 0.0, 0.9, true, 0);
        assert_eq!(forced.status, ChargeStatus::Declined);
        let always = intent("alice").settle("c1".into(), 1.0, 0.999, false, 0);
        assert_eq!(always.status, ChargeStatus::Declined);
    }

    #[test]
    fn retry_must_match_original() {
        let rec = intent("alice").settle("c1".into(), 0.0, 0.5, false, 0);
        assert!(intent("alice").matches(&rec));
        assert!(!intent("eve").matches(&rec));
        let void = voided("c2".into(), "k1", "r1", 0);
        assert!(intent("anyone").matches(&void));
    }

    #[test]
    fn refund_rules() {
        let rec = intent("alice").settle("c1".into(), 0.0, 0.5, false, 0);
        let RefundEffect::Refund(done) = refund(&rec, "r1", false).expect("refund") else {
            panic!("expected a refund");
        };
        assert_eq!(done.status, ChargeStatus::Refunded);
        assert_eq!(done.refund_key, "r1");
        assert_eq!(refund(&done, "r2", false), Ok(RefundEffect::Unchanged));
        let declined = intent("decline-x").settle("c2".into(), 0.0, 0.5, false, 0);
        assert!(matches!(
            refund(&declined, "r3", false),
            Err(PaymentError::NotRefundable(..))
        ));
        assert_eq!(refund(&declined, "r3", true), Ok(RefundEffect::Unchanged));
    }
}
