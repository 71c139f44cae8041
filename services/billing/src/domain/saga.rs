//! The subscription saga as a pure state machine.
//!
//! Forward steps: ReserveSeat → ChargePayment → ActivateSubscription →
//! GrantLimits. When a step fails the compensations run in reverse:
//! RefundPayment (undoes the charge) → ReleaseSeat (undoes the reservation)
//! → MarkFailed (records the end). Each transition is a pure function
//! `(saga, event) → (saga, next command, notices)`; the orchestrator runs the
//! command, turns its result into the next event, and persists every
//! transition, so the saga can be resumed from any step after a crash.

mod cancel;
mod messages;
mod state;

pub use messages::{Command, Notice, SagaError, SagaEvent, Transition};
pub use state::{CANCELLED_BEFORE_ACTIVATION, Payment, Phase, Saga, Step, SubscriptionState};

use super::plans::PlanId;

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
        if matches!(event, SagaEvent::CancelRequested) {
            return self.cancel();
        }
        let mut next = self.clone();
        // Any answer ends a park; a new park replaces it below.
        next.parked = None;
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
    use super::super::ride_out::Parked;
    use super::*;

    pub(super) fn run(saga: &Saga, events: Vec<SagaEvent>) -> (Saga, Vec<Notice>) {
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

    pub(super) fn charged() -> SagaEvent {
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

    pub(super) fn parked(attempts: u32) -> Parked {
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
    fn a_park_is_refused_outside_the_charge() {
        let (s, _) = Saga::start(PlanId::Pro);
        assert!(matches!(
            s.apply(SagaEvent::PaymentParked(parked(1))),
            Err(SagaError::Unexpected { .. })
        ));
    }
}
