//! A user's cancel request, in every phase of the saga: before activation it
//! compensates (at once, or once the step in flight has answered), after it it
//! ends the subscription and resets the plan limits.

use super::super::plans::PlanId;
use super::{CANCELLED_BEFORE_ACTIVATION, Notice, Payment, Phase, Saga, SagaError, Transition};

impl Saga {
    /// Applies a cancel request. Unlike a step's answer it keeps a park: the
    /// parked step still owes its answer.
    pub(super) fn cancel(&self) -> Result<Transition, SagaError> {
        let mut next = self.clone();
        let mut notices = Vec::new();
        match &self.phase {
            Phase::Active => {
                next.cancel_requested = true;
                next.failure_reason = Some("cancelled by the user".into());
                notices.push(Notice::SubscriptionCancelled {
                    reason: "cancelled by the user".into(),
                });
                notices.push(Notice::PlanLimitsGranted { plan: PlanId::Free });
                next.phase = Phase::Cancelled;
            }
            Phase::ReservingSeat | Phase::Charging | Phase::Activating => {
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
            Phase::Granting => return Err(SagaError::Busy),
            Phase::Failed | Phase::Cancelled => {
                return Err(SagaError::Ended(self.phase.clone()));
            }
            Phase::Refunding | Phase::ReleasingSeat | Phase::MarkingFailed => {
                // Already compensating; it will end as requested.
                next.cancel_requested = true;
            }
        }
        let command = next.next_command();
        Ok(Transition {
            saga: next,
            command,
            notices,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::super::tests::{charged, parked, run};
    use super::super::*;

    /// Runs the rest of the compensation after `settled` (the refund step's
    /// answer): the saga ends cancelled, with one notice saying so.
    fn ends_cancelled(saga: &Saga, settled: SagaEvent) {
        let (end, notices) = run(
            saga,
            vec![settled, SagaEvent::SeatReleased, SagaEvent::MarkedFailed],
        );
        assert_eq!(end.state(), SubscriptionState::Cancelled);
        assert!(matches!(
            notices.as_slice(),
            [Notice::SubscriptionCancelled { .. }]
        ));
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
        ends_cancelled(
            &t.saga,
            SagaEvent::PaymentRefunded {
                charge_id: "ch_1".into(),
            },
        );
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
        ends_cancelled(&t.saga, SagaEvent::RefundSkipped);
    }
}
