//! The saga's persisted state: its steps, phase and what is known about the payment.

use super::super::plans::PlanId;
use super::super::ride_out::Parked;
use serde::{Deserialize, Serialize};

/// A step of the saga, by the name used in records and crash points.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Step {
    ReserveSeat,
    ChargePayment,
    ActivateSubscription,
    GrantLimits,
    RefundPayment,
    ReleaseSeat,
    MarkFailed,
}

impl Step {
    /// Every step, forward ones first.
    #[cfg(test)]
    pub const ALL: [Step; 7] = [
        Step::ReserveSeat,
        Step::ChargePayment,
        Step::ActivateSubscription,
        Step::GrantLimits,
        Step::RefundPayment,
        Step::ReleaseSeat,
        Step::MarkFailed,
    ];

    /// `reserve_seat`, `charge_payment`, ...
    pub fn name(self) -> &'static str {
        match self {
            Step::ReserveSeat => "reserve_seat",
            Step::ChargePayment => "charge_payment",
            Step::ActivateSubscription => "activate_subscription",
            Step::GrantLimits => "grant_limits",
            Step::RefundPayment => "refund_payment",
            Step::ReleaseSeat => "release_seat",
            Step::MarkFailed => "mark_failed",
        }
    }

    /// True for the compensating steps.
    #[cfg(test)]
    pub fn is_compensation(self) -> bool {
        matches!(
            self,
            Step::RefundPayment | Step::ReleaseSeat | Step::MarkFailed
        )
    }
}

/// Where the saga is; each non-final phase has exactly one next command.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Phase {
    ReservingSeat,
    Charging,
    Activating,
    Granting,
    Active,
    Refunding,
    ReleasingSeat,
    MarkingFailed,
    Failed,
    Cancelled,
}

/// What is known about the payment.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case", tag = "kind")]
pub enum Payment {
    /// No charge attempted yet.
    NotAttempted,
    /// The plan is free; nothing to charge.
    Skipped,
    /// Money was taken.
    Charged { charge_id: String },
    /// The provider declined; no money was taken.
    Declined { charge_id: String, reason: String },
    /// Every attempt was refused before processing (UNAVAILABLE): nothing was
    /// charged, but a void by key is still tried once for good measure.
    NotCharged { reason: String },
    /// Some attempt may have been processed (timeout, lost response): the
    /// charge key must be settled (refund or void) before the saga can end.
    Uncertain { reason: String },
    /// Refunded, or voided, by the compensation.
    Settled { charge_id: String },
}

/// The saga's persisted state.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Saga {
    pub plan: PlanId,
    pub phase: Phase,
    pub payment: Payment,
    /// Why it failed (or was cancelled), once known.
    #[serde(default)]
    pub failure_reason: Option<String>,
    /// The user asked to cancel before activation.
    #[serde(default)]
    pub cancel_requested: bool,
    /// The current step failed transiently and waits to be tried again.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub parked: Option<Parked>,
}

/// Subscription state as clients see it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SubscriptionState {
    Pending,
    Active,
    Failed,
    Cancelled,
}

/// Why a cancel before activation stops the saga.
pub const CANCELLED_BEFORE_ACTIVATION: &str = "cancelled by the user before activation";
