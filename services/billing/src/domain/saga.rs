//! The subscription saga as a pure state machine.
//!
//! Forward steps: ReserveSeat → ChargePayment → ActivateSubscription →
//! GrantLimits. When a step fails the compensations run in reverse:
//! RefundPayment (undoes the charge) → ReleaseSeat (undoes the reservation)
//! → MarkFailed (records the end). Each transition is a pure function
//! `(saga, event) → (saga, next command, notices)`; the orchestrator runs the
//! command, turns its result into the next event, and persists every
//! transition, so the saga can be resumed from any step after a crash.

use super::plans::PlanId;
use super::ride_out::Parked;
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

impl Saga {
    /// A new saga for `plan` and its first command.
    pub fn start(plan: PlanId) -> (Saga, Command) {
        let saga = Saga {
            plan,
            phase: Phase::ReservingSeat,
            payment: Payment::NotAttempted,
            failure_reason: None,
            cancel_requested: false,
            parked: None,
        };
        (saga, Command::ReserveSeat)
    }

    /// The command the phase calls for; `None` once the saga has ended.
    /// Resuming after a crash re-issues it (every command is idempotent).
    pub fn next_command(&self) -> Option<Command> {
        match self.phase {
            Phase::ReservingSeat => Some(Command::ReserveSeat),
            Phase::Charging => Some(Command::ChargePayment {
                amount_cents: self.plan.plan().price_cents,
            }),
            Phase::Activating => Some(Command::ActivateSubscription),
            Phase::Granting => Some(Command::GrantLimits { plan: self.plan }),
            Phase::Refunding => Some(Command::RefundPayment {
                best_effort: matches!(self.payment, Payment::NotCharged { .. }),
            }),
            Phase::ReleasingSeat => Some(Command::ReleaseSeat),
            Phase::MarkingFailed => Some(Command::MarkFailed),
            Phase::Active | Phase::Failed | Phase::Cancelled => None,
        }
    }

    /// True when nothing is left to run.
    pub fn is_finished(&self) -> bool {
        self.next_command().is_none()
    }

    /// The client-facing state. Activation counts from the activate step on.
    pub fn state(&self) -> SubscriptionState {
        match self.phase {
            Phase::Granting | Phase::Active => SubscriptionState::Active,
            Phase::Failed => SubscriptionState::Failed,
            Phase::Cancelled => SubscriptionState::Cancelled,
            _ => SubscriptionState::Pending,
        }
    }

    /// The charge, if one exists (taken, declined, or settled).
    pub fn charge_id(&self) -> Option<&str> {
        match &self.payment {
            Payment::Charged { charge_id }
            | Payment::Declined { charge_id, .. }
            | Payment::Settled { charge_id } => Some(charge_id),
            _ => None,
        }
    }

    /// Applies `event`: the new saga, the next command and what to publish.
    pub fn apply(&self, event: SagaEvent) -> Result<Transition, SagaError> {
        let mut next = self.clone();
        // Any answer ends a park; a new park replaces it below.
        if !matches!(event, SagaEvent::CancelRequested) {
            next.parked = None;
        }
        let mut notices = Vec::new();
        match (&self.phase, event) {
            (Phase::ReservingSeat, SagaEvent::SeatReserved) => {
                if self.cancel_requested {
                    next.fail(CANCELLED_BEFORE_ACTIVATION);
                    next.phase = Phase::ReleasingSeat;
                } else if self.plan.plan().price_cents == 0 {
                    next.payment = Payment::Skipped;
                    next.phase = Phase::Activating;
                } else {
                    next.phase = Phase::Charging;
                }
            }
            (Phase::ReservingSeat, SagaEvent::SeatUnavailable { reason }) => {
                next.fail(&reason);
                next.phase = Phase::MarkingFailed;
            }
            (Phase::Charging, SagaEvent::PaymentCharged { charge_id }) => {
                next.payment = Payment::Charged { charge_id };
                if self.cancel_requested {
                    next.fail(CANCELLED_BEFORE_ACTIVATION);
                    next.phase = Phase::Refunding;
                } else {
                    next.phase = Phase::Activating;
                }
            }
            (Phase::Charging, SagaEvent::PaymentDeclined { charge_id, reason }) => {
                next.fail(&format!("payment declined: {reason}"));
                notices.push(Notice::PaymentFailed {
                    reason: reason.clone(),
                });
                next.payment = Payment::Declined { charge_id, reason };
                // Nothing was taken: skip the refund, release the seat.
                next.phase = Phase::ReleasingSeat;
            }
            (Phase::Charging, SagaEvent::PaymentParked(parked)) => {
                next.parked = Some(parked);
            }
            (
                Phase::Charging,
                SagaEvent::PaymentUnavailable {
                    reason,
                    processed_possibly,
                },
            ) => {
                if self.cancel_requested {
                    next.fail(CANCELLED_BEFORE_ACTIVATION);
                } else {
                    next.fail(&format!("payment unavailable: {reason}"));
                    notices.push(Notice::PaymentFailed {
                        reason: reason.clone(),
                    });
                }
                next.payment = if processed_possibly {
                    Payment::Uncertain { reason }
                } else {
                    Payment::NotCharged { reason }
                };
                next.phase = Phase::Refunding;
            }
            (Phase::Activating, SagaEvent::SubscriptionActivated) => {
                notices.push(Notice::SubscriptionActivated { plan: self.plan });
                next.phase = Phase::Granting;
            }
            (Phase::Granting, SagaEvent::LimitsGranted) => {
                notices.push(Notice::PlanLimitsGranted { plan: self.plan });
                next.phase = Phase::Active;
            }
            (Phase::Refunding, SagaEvent::PaymentRefunded { charge_id }) => {
                next.payment = Payment::Settled { charge_id };
                next.phase = Phase::ReleasingSeat;
            }
            (Phase::Refunding, SagaEvent::RefundSkipped)
                if matches!(self.payment, Payment::NotCharged { .. }) =>
            {
                next.phase = Phase::ReleasingSeat;
            }
            (Phase::ReleasingSeat, SagaEvent::SeatReleased) => {
                next.phase = Phase::MarkingFailed;
            }
            (Phase::MarkingFailed, SagaEvent::MarkedFailed) => {
                if self.cancel_requested {
                    notices.push(Notice::SubscriptionCancelled {
                        reason: CANCELLED_BEFORE_ACTIVATION.into(),
                    });
                    next.phase = Phase::Cancelled;
                } else {
                    next.phase = Phase::Failed;
                }
            }
            (Phase::Active, SagaEvent::CancelRequested) => {
                next.cancel_requested = true;
                next.failure_reason = Some("cancelled by the user".into());
                notices.push(Notice::SubscriptionCancelled {
                    reason: "cancelled by the user".into(),
                });
                notices.push(Notice::PlanLimitsGranted { plan: PlanId::Free });
                next.phase = Phase::Cancelled;
            }
            (
                Phase::ReservingSeat | Phase::Charging | Phase::Activating,
                SagaEvent::CancelRequested,
            ) => {
                next.cancel_requested = true;
                if self.phase == Phase::Activating {
                    // Nothing is in flight outside: compensate right away.
                    next.fail(CANCELLED_BEFORE_ACTIVATION);
                    next.phase = if matches!(self.payment, Payment::Charged { .. }) {
                        Phase::Refunding
                    } else {
                        Phase::ReleasingSeat
                    };
                }
            }
            (Phase::Granting, SagaEvent::CancelRequested) => return Err(SagaError::Busy),
            (Phase::Failed | Phase::Cancelled, SagaEvent::CancelRequested) => {
                return Err(SagaError::Ended(self.phase.clone()));
            }
            (
                Phase::Refunding | Phase::ReleasingSeat | Phase::MarkingFailed,
                SagaEvent::CancelRequested,
            ) => {
                // Already compensating; it will end as requested.
                next.cancel_requested = true;
            }
            (phase, event) => {
                return Err(SagaError::Unexpected {
                    phase: phase.clone(),
                    event: format!("{event:?}"),
                });
            }
        }
        let command = next.next_command();
        Ok(Transition {
            saga: next,
            command,
            notices,
        })
    }

    fn fail(&mut self, reason: &str) {
        if self.failure_reason.is_none() {
            self.failure_reason = Some(reason.to_string());
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn run(saga: &Saga, events: Vec<SagaEvent>) -> (Saga, Vec<Notice>) {
        let mut s = saga.clone();
        let mut all = Vec::new();
        for e in events {
            let t = s.apply(e).expect("transition applies");
            assert_eq!(t.command, t.saga.next_command());
            all.extend(t.notices);
            s = t.saga;
        }
        (s, all)
    }

    fn charged() -> SagaEvent {
        SagaEvent::PaymentCharged {
            charge_id: "ch_1".into(),
        }
    }

    #[test]
    fn happy_path_runs_every_forward_step_in_order() {
        let (mut s, first) = Saga::start(PlanId::Pro);
        assert_eq!(first, Command::ReserveSeat);
        let mut steps = vec![first.step()];
        for e in [
            SagaEvent::SeatReserved,
            charged(),
            SagaEvent::SubscriptionActivated,
            SagaEvent::LimitsGranted,
        ] {
            let t = s.apply(e).expect("applies");
            if let Some(c) = &t.command {
                steps.push(c.step());
            }
            s = t.saga;
        }
        assert_eq!(
            steps,
            [
                Step::ReserveSeat,
                Step::ChargePayment,
                Step::ActivateSubscription,
                Step::GrantLimits
            ]
        );
        assert_eq!(s.phase, Phase::Active);
        assert_eq!(s.state(), SubscriptionState::Active);
        assert_eq!(s.charge_id(), Some("ch_1"));
        assert!(s.is_finished());
    }

    #[test]
    fn charge_command_carries_the_plan_price() {
        let (s, _) = Saga::start(PlanId::Team);
        let t = s.apply(SagaEvent::SeatReserved).expect("applies");
        assert_eq!(
            t.command,
            Some(Command::ChargePayment {
                amount_cents: PlanId::Team.plan().price_cents
            })
        );
        assert_eq!(t.saga.state(), SubscriptionState::Pending);
    }

    #[test]
    fn activation_and_grant_publish_their_events() {
        let (s, _) = Saga::start(PlanId::Pro);
        let (s, notices) = run(
            &s,
            vec![
                SagaEvent::SeatReserved,
                charged(),
                SagaEvent::SubscriptionActivated,
                SagaEvent::LimitsGranted,
            ],
        );
        assert_eq!(s.phase, Phase::Active);
        assert_eq!(
            notices,
            [
                Notice::SubscriptionActivated { plan: PlanId::Pro },
                Notice::PlanLimitsGranted { plan: PlanId::Pro }
            ]
        );
    }

    #[test]
    fn free_plan_skips_the_charge() {
        let (s, _) = Saga::start(PlanId::Free);
        let t = s.apply(SagaEvent::SeatReserved).expect("applies");
        assert_eq!(t.saga.payment, Payment::Skipped);
        assert_eq!(t.command, Some(Command::ActivateSubscription));
    }

    #[test]
    fn decline_releases_seat_then_fails_without_refund() {
        let (s, _) = Saga::start(PlanId::Pro);
        let s = s.apply(SagaEvent::SeatReserved).expect("reserve").saga;
        let t = s
            .apply(SagaEvent::PaymentDeclined {
                charge_id: "ch_d".into(),
                reason: "card declined".into(),
            })
            .expect("decline");
        assert_eq!(t.command, Some(Command::ReleaseSeat));
        assert_eq!(
            t.notices,
            [Notice::PaymentFailed {
                reason: "card declined".into()
            }]
        );
        let (end, _) = run(
            &t.saga,
            vec![SagaEvent::SeatReleased, SagaEvent::MarkedFailed],
        );
        assert_eq!(end.phase, Phase::Failed);
        assert_eq!(end.state(), SubscriptionState::Failed);
        assert!(
            end.failure_reason
                .as_deref()
                .unwrap_or_default()
                .contains("declined")
        );
    }

    #[test]
    fn compensations_run_in_reverse_order() {
        let (s, _) = Saga::start(PlanId::Pro);
        let s = s.apply(SagaEvent::SeatReserved).expect("reserve").saga;
        let mut t = s
            .apply(SagaEvent::PaymentUnavailable {
                reason: "timeout".into(),
                processed_possibly: true,
            })
            .expect("unavailable");
        let mut order = Vec::new();
        while let Some(cmd) = t.command.clone() {
            order.push(cmd.step());
            let event = match cmd {
                Command::RefundPayment { best_effort } => {
                    assert!(!best_effort, "an uncertain charge must be settled");
                    SagaEvent::PaymentRefunded {
                        charge_id: "ch_v".into(),
                    }
                }
                Command::ReleaseSeat => SagaEvent::SeatReleased,
                Command::MarkFailed => SagaEvent::MarkedFailed,
                other => panic!("unexpected forward command {other:?}"),
            };
            t = t.saga.apply(event).expect("applies");
        }
        assert_eq!(
            order,
            [Step::RefundPayment, Step::ReleaseSeat, Step::MarkFailed]
        );
        assert!(order.iter().all(|s| s.is_compensation()));
        assert_eq!(t.saga.phase, Phase::Failed);
        assert_eq!(t.saga.charge_id(), Some("ch_v"));
    }

    #[test]
    fn refused_charge_voids_best_effort() {
        let (s, _) = Saga::start(PlanId::Pro);
        let s = s.apply(SagaEvent::SeatReserved).expect("reserve").saga;
        let t = s
            .apply(SagaEvent::PaymentUnavailable {
                reason: "outage".into(),
                processed_possibly: false,
            })
            .expect("unavailable");
        assert_eq!(
            t.command,
            Some(Command::RefundPayment { best_effort: true })
        );
        let t = t.saga.apply(SagaEvent::RefundSkipped).expect("skip");
        assert_eq!(t.command, Some(Command::ReleaseSeat));
    }

    #[test]
    fn an_uncertain_charge_cannot_skip_its_refund() {
        let (s, _) = Saga::start(PlanId::Pro);
        let s = s.apply(SagaEvent::SeatReserved).expect("reserve").saga;
        let s = s
            .apply(SagaEvent::PaymentUnavailable {
                reason: "timeout".into(),
                processed_possibly: true,
            })
            .expect("unavailable")
            .saga;
        assert!(matches!(
            s.apply(SagaEvent::RefundSkipped),
            Err(SagaError::Unexpected { .. })
        ));
    }

    #[test]
    fn seat_taken_fails_without_compensation() {
        let (s, _) = Saga::start(PlanId::Pro);
        let t = s
            .apply(SagaEvent::SeatUnavailable {
                reason: "already subscribed".into(),
            })
            .expect("applies");
        assert_eq!(t.command, Some(Command::MarkFailed));
        let t = t.saga.apply(SagaEvent::MarkedFailed).expect("applies");
        assert_eq!(t.saga.phase, Phase::Failed);
        assert_eq!(t.saga.failure_reason.as_deref(), Some("already subscribed"));
    }

    #[test]
    fn cancel_while_charging_refunds_and_ends_cancelled() {
        let (s, _) = Saga::start(PlanId::Pro);
        let s = s.apply(SagaEvent::SeatReserved).expect("reserve").saga;
        let s = s.apply(SagaEvent::CancelRequested).expect("cancel").saga;
        assert_eq!(
            s.phase,
            Phase::Charging,
            "the charge in flight finishes first"
        );
        let t = s.apply(charged()).expect("charged");
        assert_eq!(
            t.command,
            Some(Command::RefundPayment { best_effort: false })
        );
        let (end, notices) = run(
            &t.saga,
            vec![
                SagaEvent::PaymentRefunded {
                    charge_id: "ch_1".into(),
                },
                SagaEvent::SeatReleased,
                SagaEvent::MarkedFailed,
            ],
        );
        assert_eq!(end.state(), SubscriptionState::Cancelled);
        assert!(matches!(
            notices.as_slice(),
            [Notice::SubscriptionCancelled { .. }]
        ));
    }

    #[test]
    fn cancel_active_resets_limits() {
        let (s, _) = Saga::start(PlanId::Pro);
        let (s, _) = run(
            &s,
            vec![
                SagaEvent::SeatReserved,
                charged(),
                SagaEvent::SubscriptionActivated,
                SagaEvent::LimitsGranted,
            ],
        );
        let t = s.apply(SagaEvent::CancelRequested).expect("cancel");
        assert_eq!(t.saga.state(), SubscriptionState::Cancelled);
        assert!(
            t.notices
                .contains(&Notice::PlanLimitsGranted { plan: PlanId::Free })
        );
        assert_eq!(
            t.saga.apply(SagaEvent::CancelRequested),
            Err(SagaError::Ended(Phase::Cancelled))
        );
    }

    #[test]
    fn out_of_order_events_are_rejected() {
        let (s, _) = Saga::start(PlanId::Pro);
        assert!(matches!(
            s.apply(SagaEvent::LimitsGranted),
            Err(SagaError::Unexpected { .. })
        ));
        assert!(matches!(
            s.apply(charged()),
            Err(SagaError::Unexpected { .. })
        ));
    }

    #[test]
    fn every_unfinished_phase_has_a_command_to_resume_with() {
        for phase in [
            Phase::ReservingSeat,
            Phase::Charging,
            Phase::Activating,
            Phase::Granting,
            Phase::Refunding,
            Phase::ReleasingSeat,
            Phase::MarkingFailed,
        ] {
            let s = Saga {
                plan: PlanId::Pro,
                phase: phase.clone(),
                payment: Payment::NotAttempted,
                failure_reason: None,
                cancel_requested: false,
                parked: None,
            };
            assert!(s.next_command().is_some(), "{phase:?}");
        }
        let names: Vec<&str> = Step::ALL.iter().map(|s| s.name()).collect();
        assert_eq!(names.len(), 7);
    }

    fn parked(attempts: u32) -> Parked {
        Parked {
            attempts,
            since_ms: 1,
            retry_at_ms: 2,
            processed_possibly: false,
            last_error: "Unavailable: down".into(),
        }
    }

    #[test]
    fn a_parked_charge_stays_pending_and_is_tried_again() {
        let (s, _) = Saga::start(PlanId::Pro);
        let s = s.apply(SagaEvent::SeatReserved).expect("reserve").saga;
        let t = s
            .apply(SagaEvent::PaymentParked(parked(1)))
            .expect("parked");
        assert_eq!(t.saga.phase, Phase::Charging);
        assert_eq!(t.saga.state(), SubscriptionState::Pending);
        assert!(t.notices.is_empty());
        assert_eq!(
            t.command,
            Some(Command::ChargePayment {
                amount_cents: PlanId::Pro.plan().price_cents
            })
        );
        let t = t
            .saga
            .apply(SagaEvent::PaymentParked(parked(2)))
            .expect("parked again");
        assert_eq!(t.saga.parked.as_ref().map(|p| p.attempts), Some(2));
        // A cancel keeps the park; the next answer ends it.
        let t = t.saga.apply(SagaEvent::CancelRequested).expect("cancel");
        assert!(t.saga.parked.is_some());
        let t = t.saga.apply(charged()).expect("charged");
        assert_eq!(t.saga.parked, None);
        assert_eq!(
            t.command,
            Some(Command::RefundPayment { best_effort: false })
        );
    }

    #[test]
    fn giving_up_on_a_cancelled_parked_charge_ends_cancelled_without_payment_failed() {
        let (s, _) = Saga::start(PlanId::Pro);
        let s = s.apply(SagaEvent::SeatReserved).expect("reserve").saga;
        let s = s
            .apply(SagaEvent::PaymentParked(parked(1)))
            .expect("parked")
            .saga;
        let s = s.apply(SagaEvent::CancelRequested).expect("cancel").saga;
        let t = s
            .apply(SagaEvent::PaymentUnavailable {
                reason: "cancelled".into(),
                processed_possibly: false,
            })
            .expect("give up");
        assert!(t.notices.is_empty(), "{:?}", t.notices);
        let (end, notices) = run(
            &t.saga,
            vec![
                SagaEvent::RefundSkipped,
                SagaEvent::SeatReleased,
                SagaEvent::MarkedFailed,
            ],
        );
        assert_eq!(end.state(), SubscriptionState::Cancelled);
        assert!(matches!(
            notices.as_slice(),
            [Notice::SubscriptionCancelled { .. }]
        ));
    }

    #[test]
    fn a_park_is_refused_outside_the_charge() {
        let (s, _) = Saga::start(PlanId::Pro);
        assert!(matches!(
            s.apply(SagaEvent::PaymentParked(parked(1))),
            Err(SagaError::Unexpected { .. })
        ));
    }
}
