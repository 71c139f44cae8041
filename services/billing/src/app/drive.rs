//! Driving one saga: write the step's intent, run the step, then write its
//! outcome with the new saga state, the local effects and the events in one
//! batch; repeat until the saga ends or a step must wait.

use super::steps::PARKED;
use super::{BillingError, Orchestrator, RunningGuard, now_ms};
use crate::domain::plans::PlanId;
use crate::domain::saga::{Notice, Step};
use crate::events;
use crate::store::{self, Entitlement, StepLog, SubscriptionRecord};
use std::time::Duration;
use tally_chassis::storage::{StoreError, WriteBatch};

impl Orchestrator {
    /// Runs the saga from its recorded phase until it ends or a step must
    /// wait. Only one driver runs per saga in this process.
    pub async fn drive(&self, id: &str) -> Result<(), BillingError> {
        if !self.running.lock().insert(id.to_string()) {
            return Ok(());
        }
        let _guard = RunningGuard {
            set: self.running.clone(),
            id: id.to_string(),
        };
        loop {
            let current = self
                .records
                .subscription(id)
                .await?
                .ok_or_else(|| BillingError::NotFound(id.to_string()))?;
            let Some(command) = current.value.saga.next_command() else {
                return Ok(());
            };
            let Some(prev) = current.raw else {
                return Err(BillingError::NotFound(id.to_string()));
            };
            let step = command.step();

            // 0. A parked step waits for its next try (bounded, in case the
            // clock moved while the process was down).
            if let Some(parked) = &current.value.saga.parked {
                let wait_ms = parked
                    .retry_at_ms
                    .saturating_sub(self.tuning.clock.now_ms());
                if wait_ms > 0 {
                    let wait = Duration::from_millis(u64::try_from(wait_ms).unwrap_or(0))
                        .min(self.tuning.ride_out.longest_pause());
                    tokio::time::sleep(wait).await;
                    // A cancel may have arrived meanwhile: read again.
                    continue;
                }
            }

            // 1. Intent, before anything runs.
            let mut rec = current.value;
            record_intent(&mut rec, step);
            let intent_raw = match self
                .records
                .save(&prev, &rec, WriteBatch::new(), vec![])
                .await
            {
                Ok(raw) => raw,
                Err(StoreError::ConditionFailed { .. }) => continue,
                Err(e) => return Err(e.into()),
            };
            self.crash_point(&format!("{}:intent", step.name()));

            // 2. The step itself.
            let outcome = tracing::Instrument::instrument(
                self.execute(&rec, &command),
                tally_chassis::trace::saga::step(step.name()),
            )
            .await?;
            if matches!(step, Step::ChargePayment | Step::RefundPayment) {
                self.crash_point(&format!("{}:called", step.name()));
            }

            // 3. Outcome, new state, local effects and events together.
            let transition = rec.saga.apply(outcome.event)?;
            let mut events_out = Vec::new();
            let mut writes = outcome.writes;
            for notice in &transition.notices {
                if let Notice::PlanLimitsGranted { plan } = notice {
                    self.grant_writes(&mut writes, &rec, *plan).await?;
                } else if let Some(payload) =
                    events::subscription_payload(&rec.subscription_id, &rec.user_id, notice)
                {
                    rec.event_seq += 1;
                    events_out.push(events::envelope(
                        &rec.subscription_id,
                        rec.event_seq,
                        payload,
                    ));
                }
            }
            rec.saga = transition.saga;
            record_outcome(&mut rec, step, outcome.status, &outcome.detail);
            match self
                .records
                .save(&intent_raw, &rec, writes, events_out)
                .await
            {
                Ok(_) => {}
                // Someone changed the saga (a cancel) or a guarded row moved:
                // read again and repeat the step; every step is idempotent.
                Err(StoreError::ConditionFailed { .. }) => continue,
                Err(e) => return Err(e.into()),
            }
            tracing::info!(subscription_id = %id, step = step.name(), status = outcome.status, phase = ?rec.saga.phase, "saga step");
            self.crash_point(step.name());
        }
    }

    /// Writes and the event that set `plan`'s limits for the record's user.
    pub(super) async fn grant_writes(
        &self,
        writes: &mut WriteBatch,
        rec: &SubscriptionRecord,
        plan: PlanId,
    ) -> Result<(), BillingError> {
        let prev = self.records.entitlement(&rec.user_id).await?;
        let next = Entitlement {
            plan,
            max_open_polls: plan.plan().max_open_polls,
            subscription_id: if plan == PlanId::Free {
                String::new()
            } else {
                rec.subscription_id.clone()
            },
            event_seq: prev.value.event_seq + 1,
        };
        store::set_entitlement(writes, &rec.user_id, &prev, &next)?;
        writes.emit(events::envelope(
            &rec.user_id,
            next.event_seq,
            events::limits(&rec.user_id, plan),
        ));
        Ok(())
    }
}

/// Appends the step's intent, or marks a resumed or parked intent as such
/// (so a step tried many times keeps one entry in the log).
fn record_intent(rec: &mut SubscriptionRecord, step: Step) {
    let at_ms = now_ms();
    if let Some(last) = rec.steps.last_mut()
        && last.name == step.name()
        && (last.status == "started" || last.status == PARKED)
    {
        last.detail = match &rec.saga.parked {
            Some(p) if last.status == PARKED => format!("try {}", p.attempts + 1),
            _ => "resumed".into(),
        };
        last.status = "started".into();
        last.at_ms = at_ms;
        return;
    }
    rec.steps.push(StepLog {
        name: step.name().into(),
        status: "started".into(),
        detail: String::new(),
        at_ms,
    });
}

fn record_outcome(rec: &mut SubscriptionRecord, step: Step, status: &str, detail: &str) {
    let entry = StepLog {
        name: step.name().into(),
        status: status.into(),
        detail: detail.into(),
        at_ms: now_ms(),
    };
    match rec.steps.last_mut() {
        Some(last) if last.name == step.name() && last.status == "started" => *last = entry,
        _ => rec.steps.push(entry),
    }
}
