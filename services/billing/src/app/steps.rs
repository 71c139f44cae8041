//! Carrying out one saga step: the local effects (seat reservation and
//! release) and the idempotent payment calls: a charge is tried once per
//! step run and parked on a transient failure; a refund is retried with
//! backoff and, failing that, left to the periodic sweep.

use super::{BillingError, Orchestrator, charge_key, refund_key};
use crate::domain::plans::CURRENCY;
use crate::domain::ride_out::Decision;
use crate::domain::saga::{Command, SagaEvent, Step};
use crate::store::{self, SubscriptionRecord};
use std::time::Duration;
use tally_api::payment::v1 as paypb;
use tally_chassis::storage::WriteBatch;

/// Longest pause between two refund attempts in one round.
const MAX_RETRY_BACKOFF: Duration = Duration::from_millis(5_000);
/// Step-log status of a step waiting to be tried again.
pub(super) const PARKED: &str = "parked";

/// The result of running one command.
pub(super) struct Outcome {
    pub(super) event: SagaEvent,
    /// Local effects to commit with the outcome.
    pub(super) writes: WriteBatch,
    pub(super) status: &'static str,
    pub(super) detail: String,
}

impl Orchestrator {
    pub(super) async fn execute(
        &self,
        rec: &SubscriptionRecord,
        command: &Command,
    ) -> Result<Outcome, BillingError> {
        let id = rec.subscription_id.as_str();
        let done = |event, writes, detail: String| Outcome {
            event,
            writes,
            status: "done",
            detail,
        };
        match command {
            Command::ReserveSeat => {
                let mut writes = WriteBatch::new();
                match self.records.seat(&rec.user_id).await? {
                    None => {
                        store::reserve_seat(&mut writes, &rec.user_id, id);
                        Ok(done(SagaEvent::SeatReserved, writes, String::new()))
                    }
                    Some(holder) if holder == id => {
                        Ok(done(SagaEvent::SeatReserved, writes, String::new()))
                    }
                    Some(holder) => {
                        let reason = format!(
                            "the user already holds subscription {holder}; cancel it first"
                        );
                        Ok(Outcome {
                            event: SagaEvent::SeatUnavailable {
                                reason: reason.clone(),
                            },
                            writes,
                            status: "failed",
                            detail: reason,
                        })
                    }
                }
            }
            Command::ChargePayment { amount_cents } => self.charge(rec, *amount_cents).await,
            Command::ActivateSubscription => Ok(done(
                SagaEvent::SubscriptionActivated,
                WriteBatch::new(),
                String::new(),
            )),
            Command::GrantLimits { plan } => Ok(done(
                SagaEvent::LimitsGranted,
                WriteBatch::new(),
                format!("max_open_polls = {}", plan.plan().max_open_polls),
            )),
            Command::RefundPayment { best_effort } => self.refund(rec, *best_effort).await,
            Command::ReleaseSeat => {
                let mut writes = WriteBatch::new();
                if self.records.seat(&rec.user_id).await?.as_deref() == Some(id) {
                    store::release_seat(&mut writes, &rec.user_id, id);
                }
                Ok(done(SagaEvent::SeatReleased, writes, String::new()))
            }
            Command::MarkFailed => Ok(done(
                SagaEvent::MarkedFailed,
                WriteBatch::new(),
                rec.saga.failure_reason.clone().unwrap_or_default(),
            )),
        }
    }

    fn backoff(&self, attempt: u32) -> Duration {
        let factor = 1u64 << attempt.min(10);
        let ms = (self.tuning.retry_backoff.as_millis() as u64).saturating_mul(factor);
        Duration::from_millis(ms).min(MAX_RETRY_BACKOFF)
    }

    /// One try of the charge. A transient failure parks the step (the
    /// domain's [`crate::domain::ride_out::Policy`] decides for how long),
    /// so the subscription stays pending; the saga compensates only on a
    /// definite answer or when the policy gives up.
    async fn charge(
        &self,
        rec: &SubscriptionRecord,
        amount_cents: u64,
    ) -> Result<Outcome, BillingError> {
        let key = charge_key(&rec.subscription_id);
        let error = match self
            .payment
            .charge(&key, &rec.user_id, amount_cents, CURRENCY)
            .await
        {
            Ok(charge) => return Ok(charge_outcome(charge)),
            Err(error) => error,
        };
        let text = error.to_string();
        let Some(failure) = error.failure() else {
            // The provider refused the request itself: nothing was charged.
            return Ok(Outcome {
                event: SagaEvent::PaymentDeclined {
                    charge_id: String::new(),
                    reason: format!("rejected by the provider: {text}"),
                },
                writes: WriteBatch::new(),
                status: "failed",
                detail: text,
            });
        };
        let now_ms = self.tuning.clock.now_ms();
        let decision = self.tuning.ride_out.decide(
            rec.saga.parked.as_ref(),
            &failure,
            &text,
            now_ms,
            rand::random::<f64>(),
            rec.saga.cancel_requested,
        );
        match decision {
            Decision::Park(parked) => {
                let wait = parked.retry_at_ms.saturating_sub(now_ms);
                tracing::warn!(
                    subscription_id = %rec.subscription_id,
                    attempts = parked.attempts,
                    retry_in_ms = wait,
                    error = %text,
                    "saga step parked"
                );
                let detail = format!(
                    "try {} failed: {text}; next try in {wait} ms",
                    parked.attempts
                );
                Ok(Outcome {
                    event: SagaEvent::PaymentParked(parked),
                    writes: WriteBatch::new(),
                    status: PARKED,
                    detail,
                })
            }
            Decision::GiveUp {
                reason,
                processed_possibly,
            } => Ok(Outcome {
                event: SagaEvent::PaymentUnavailable {
                    reason: reason.clone(),
                    processed_possibly,
                },
                writes: WriteBatch::new(),
                status: "failed",
                detail: reason,
            }),
        }
    }

    async fn refund(
        &self,
        rec: &SubscriptionRecord,
        best_effort: bool,
    ) -> Result<Outcome, BillingError> {
        let id = &rec.subscription_id;
        let attempts = if best_effort {
            1
        } else {
            self.tuning.payment_attempts
        };
        let mut last = String::new();
        for attempt in 0..attempts {
            if attempt > 0 {
                tokio::time::sleep(self.backoff(attempt - 1)).await;
            }
            match self.payment.settle(&refund_key(id), &charge_key(id)).await {
                Ok(charge) => {
                    let status = paypb::ChargeStatus::try_from(charge.status)
                        .unwrap_or(paypb::ChargeStatus::Unspecified);
                    return Ok(Outcome {
                        event: SagaEvent::PaymentRefunded {
                            charge_id: charge.charge_id.clone(),
                        },
                        writes: WriteBatch::new(),
                        status: "done",
                        detail: format!("charge {} is {}", charge.charge_id, status.as_str_name()),
                    });
                }
                Err(error) => {
                    last = error.to_string();
                    tracing::warn!(subscription_id = %id, attempt, error = %last, "refund attempt failed");
                }
            }
        }
        if best_effort {
            return Ok(Outcome {
                event: SagaEvent::RefundSkipped,
                writes: WriteBatch::new(),
                status: "skipped",
                detail: format!("nothing was charged; void not confirmed ({last})"),
            });
        }
        Err(BillingError::Later {
            step: Step::RefundPayment.name(),
            reason: last,
        })
    }
}

fn charge_outcome(charge: paypb::Charge) -> Outcome {
    let status =
        paypb::ChargeStatus::try_from(charge.status).unwrap_or(paypb::ChargeStatus::Unspecified);
    match status {
        paypb::ChargeStatus::Succeeded => Outcome {
            detail: format!("charge {}", charge.charge_id),
            event: SagaEvent::PaymentCharged {
                charge_id: charge.charge_id,
            },
            writes: WriteBatch::new(),
            status: "done",
        },
        other => {
            let reason = if charge.decline_reason.is_empty() {
                format!("charge is {}", other.as_str_name())
            } else {
                charge.decline_reason.clone()
            };
            Outcome {
                detail: format!("charge {}: {reason}", charge.charge_id),
                event: SagaEvent::PaymentDeclined {
                    charge_id: charge.charge_id,
                    reason,
                },
                writes: WriteBatch::new(),
                status: "failed",
            }
        }
    }
}
