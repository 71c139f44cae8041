//! What goes in and out of a saga transition: the commands the orchestrator runs, the events
//! that answer them, the notices to publish and the errors of an event that does not apply.

use super::super::plans::PlanId;
use super::super::ride_out::Parked;
use super::{Phase, Saga, Step};

/// What the orchestrator must do next.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Command {
    ReserveSeat,
    ChargePayment {
        amount_cents: u64,
    },
    ActivateSubscription,
    GrantLimits {
        plan: PlanId,
    },
    /// Refund (or void) the charge made with the saga's charge key.
    /// `best_effort`: nothing was charged, so a failure may be ignored.
    RefundPayment {
        best_effort: bool,
    },
    ReleaseSeat,
    MarkFailed,
}

impl Command {
    /// The step this command runs.
    pub fn step(&self) -> Step {
        match self {
            Command::ReserveSeat => Step::ReserveSeat,
            Command::ChargePayment { .. } => Step::ChargePayment,
            Command::ActivateSubscription => Step::ActivateSubscription,
            Command::GrantLimits { .. } => Step::GrantLimits,
            Command::RefundPayment { .. } => Step::RefundPayment,
            Command::ReleaseSeat => Step::ReleaseSeat,
            Command::MarkFailed => Step::MarkFailed,
        }
    }
}

/// The outcome of a command, or a request from outside.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SagaEvent {
    SeatReserved,
    SeatUnavailable {
        reason: String,
    },
    PaymentCharged {
        charge_id: String,
    },
    PaymentDeclined {
        charge_id: String,
        reason: String,
    },
    /// The charge failed transiently: try it again later, still pending.
    PaymentParked(Parked),
    /// Retries exhausted. `processed_possibly`: some attempt may have reached
    /// the provider (see [`Payment::Uncertain`]).
    PaymentUnavailable {
        reason: String,
        processed_possibly: bool,
    },
    SubscriptionActivated,
    LimitsGranted,
    /// The charge key is settled; `charge_id` is the refunded or voided charge.
    PaymentRefunded {
        charge_id: String,
    },
    /// A best-effort void could not be made; nothing was charged anyway.
    RefundSkipped,
    SeatReleased,
    MarkedFailed,
    CancelRequested,
}

/// Facts to publish as events, decided by the transition.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Notice {
    SubscriptionActivated { plan: PlanId },
    PlanLimitsGranted { plan: PlanId },
    PaymentFailed { reason: String },
    SubscriptionCancelled { reason: String },
}

/// The result of applying one event.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Transition {
    pub saga: Saga,
    pub command: Option<Command>,
    pub notices: Vec<Notice>,
}

/// An event that does not apply in the saga's phase.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SagaError {
    #[error("event {event} does not apply while the saga is {phase:?}")]
    Unexpected { phase: Phase, event: String },
    #[error("the subscription is being activated; retry in a moment")]
    Busy,
    #[error("the subscription already ended ({0:?})")]
    Ended(Phase),
}
