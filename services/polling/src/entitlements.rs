//! Plan limits from billing: a consumer of billing's events that records, per
//! user, the limits of their latest `PlanLimitsGranted`, and the read side
//! CreatePoll asks for the open-poll limit of an owner.
//!
//! Only `PlanLimitsGranted` changes limits. Billing publishes one whenever a
//! user's plan changes, including `PlanLimitsGranted(free)` in the same commit
//! as `SubscriptionCancelled` when an active subscription ends, so the
//! cancellation itself carries nothing to apply (resetting to the configured
//! default on it would override the free plan's limit that was just granted).
//!
//! Table (in polling's own store, written by the consumer runtime in the same
//! batch as its processed row and offset): `plan_limits / users / <user_id>`
//! holds [`PlanLimits`]. One partition, so a rebuild can clear it with one
//! scan; reads are point lookups by user id.

use crate::domain::limits::{self, PlanLimits};
use async_trait::async_trait;
use std::sync::Arc;
use tally_api::events::v1::event_envelope::Payload;
use tally_chassis::events::consumer::clear_partition;
use tally_chassis::events::{Delivery, Handler, HandlerError};
use tally_chassis::storage::{Store, StoreError, WriteBatch, decode, encode};

/// The producer whose events carry plan limits (`[outbound] billing = ...`).
pub const PRODUCER: &str = "billing";
/// The consumer's name (offsets, processed rows, dead letters, admin).
pub const CONSUMER: &str = "plan-limits";
/// The one event type this consumer applies.
pub const PLAN_LIMITS_GRANTED: &str = "tally.events.v1.PlanLimitsGranted";

pub const PLAN_LIMITS: &str = "plan_limits";
const PARTITION: &str = "users";

/// The stored limits of `user_id` and the raw bytes (for an `expect` guard).
async fn read(
    store: &dyn Store,
    user_id: &str,
) -> Result<(Option<Vec<u8>>, Option<PlanLimits>), StoreError> {
    let raw = store.get(PLAN_LIMITS, PARTITION, user_id).await?;
    let value = raw.as_deref().map(decode).transpose()?;
    Ok((raw, value))
}

/// The consumer handler: `PlanLimitsGranted` → the user's row, newer grants only.
#[derive(Debug, Default, Clone, Copy)]
pub struct PlanLimitsHandler;

#[async_trait]
impl Handler for PlanLimitsHandler {
    fn name(&self) -> &str {
        CONSUMER
    }

    fn event_types(&self) -> Vec<String> {
        vec![PLAN_LIMITS_GRANTED.to_string()]
    }

    async fn handle(
        &self,
        delivery: &Delivery,
        batch: &mut WriteBatch,
        store: &dyn Store,
    ) -> Result<(), HandlerError> {
        let env = &delivery.envelope;
        let Some(Payload::PlanLimitsGranted(grant)) = &env.payload else {
            return Err(HandlerError::Skip(format!(
                "`{}` carries no plan limits",
                env.event_type
            )));
        };
        if grant.user_id.is_empty() {
            return Err(HandlerError::Permanent(format!(
                "PlanLimitsGranted {} has no user_id",
                env.event_id
            )));
        }
        let incoming = PlanLimits {
            plan: grant.plan.clone(),
            max_open_polls: grant.max_open_polls,
            sequence: env.sequence,
        };
        let (raw, current) = read(store, &grant.user_id).await?;
        if !PlanLimits::supersedes(&incoming, current.as_ref()) {
            tracing::info!(user_id = %grant.user_id, sequence = env.sequence, "older plan limits ignored");
            return Ok(());
        }
        batch
            .expect(PLAN_LIMITS, PARTITION, &grant.user_id, raw)
            .put(PLAN_LIMITS, PARTITION, &grant.user_id, encode(&incoming)?);
        Ok(())
    }

    async fn reset(&self, store: &dyn Store) -> Result<(), HandlerError> {
        clear_partition(store, PLAN_LIMITS, PARTITION).await?;
        Ok(())
    }

    async fn committed(&self, delivery: &Delivery) {
        if let Some(Payload::PlanLimitsGranted(g)) = &delivery.envelope.payload {
            tracing::info!(user_id = %g.user_id, plan = %g.plan, max_open_polls = g.max_open_polls, "plan limits recorded");
        }
    }
}

/// What CreatePoll asks: the open-poll limit of an owner.
#[derive(Clone)]
pub struct Entitlements {
    store: Arc<dyn Store>,
    default_max_open_polls: u32,
}

impl Entitlements {
    /// `default_max_open_polls` applies to users without a known grant (0 = unlimited).
    pub fn new(store: Arc<dyn Store>, default_max_open_polls: u32) -> Self {
        Self {
            store,
            default_max_open_polls,
        }
    }

    /// The latest limits billing granted `user_id`, if any reached polling.
    pub async fn granted(&self, user_id: &str) -> Result<Option<PlanLimits>, StoreError> {
        Ok(read(self.store.as_ref(), user_id).await?.1)
    }

    /// Most polls `user_id` may have open; `None` = unlimited.
    pub async fn open_poll_limit(&self, user_id: &str) -> Result<Option<u32>, StoreError> {
        let granted = self.granted(user_id).await?;
        Ok(limits::effective_limit(
            granted.as_ref(),
            self.default_max_open_polls,
        ))
    }
}

#[async_trait::async_trait]
impl crate::ports::PlanLimitsPort for Entitlements {
    async fn open_poll_limit(&self, user_id: &str) -> Result<Option<u32>, StoreError> {
        Entitlements::open_poll_limit(self, user_id).await
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use futures::stream;
    use tally_api::events::v1 as ev;
    use tally_chassis::events::consumer::Outcome;
    use tally_chassis::events::{
        BusError, Consumer, DeliveryStream, EventSource, RetryPolicy, Subscription,
    };
    use tally_chassis::storage::embedded::EmbeddedStore;

    /// A source with nothing to deliver: these tests hand deliveries to
    /// `Consumer::process` themselves.
    struct NoSource;

    #[async_trait]
    impl EventSource for NoSource {
        fn describe(&self) -> String {
            "none".into()
        }
        async fn subscribe(&self, _s: Subscription) -> Result<DeliveryStream, BusError> {
            Ok(Box::pin(stream::pending()))
        }
        async fn head(&self) -> Result<u64, BusError> {
            Ok(0)
        }
    }

    async fn setup(default: u32) -> (tempfile::TempDir, Consumer, Entitlements) {
        let dir = tempfile::tempdir().expect("tempdir");
        let store: Arc<dyn Store> = Arc::new(
            EmbeddedStore::open(&dir.path().join("e.redb"))
                .await
                .expect("open"),
        );
        let consumer = Consumer::new(
            Arc::new(PlanLimitsHandler),
            store.clone(),
            Arc::new(NoSource),
            RetryPolicy {
                max_attempts: 1,
                ..RetryPolicy::default()
            },
        );
        (dir, consumer, Entitlements::new(store, default))
    }

    fn delivery(position: u64, sequence: u64, payload: Payload) -> Delivery {
        let event_type = match &payload {
            Payload::PlanLimitsGranted(_) => PLAN_LIMITS_GRANTED,
            _ => "tally.events.v1.SubscriptionCancelled",
        };
        Delivery {
            position,
            envelope: ev::EventEnvelope {
                event_id: uuid::Uuid::now_v7().to_string(),
                event_type: event_type.into(),
                aggregate_id: "u1".into(),
                sequence,
                schema_version: 1,
                producer: PRODUCER.into(),
                payload: Some(payload),
                ..Default::default()
            },
        }
    }

    fn grant(user: &str, plan: &str, max: u32) -> Payload {
        Payload::PlanLimitsGranted(ev::PlanLimitsGranted {
            user_id: user.into(),
            plan: plan.into(),
            max_open_polls: max,
        })
    }

    #[tokio::test]
    async fn grants_set_the_limit_and_unknown_users_get_the_default() {
        let (_d, consumer, ent) = setup(2).await;
        assert_eq!(ent.open_poll_limit("u1").await.expect("limit"), Some(2));
        let pro = delivery(1, 1, grant("u1", "pro", 50));
        assert_eq!(
            consumer.process(&pro).await.expect("process"),
            Outcome::Applied
        );
        assert_eq!(ent.open_poll_limit("u1").await.expect("limit"), Some(50));
        assert_eq!(ent.open_poll_limit("u2").await.expect("limit"), Some(2));
        // Redelivery of the same event: no effect.
        assert_eq!(
            consumer.process(&pro).await.expect("process"),
            Outcome::Duplicate
        );
        // Cancelling: billing grants free in the same commit.
        let cancelled = delivery(
            2,
            2,
            Payload::SubscriptionCancelled(ev::SubscriptionCancelled {
                subscription_id: "s1".into(),
                user_id: "u1".into(),
                reason: "cancelled by the user".into(),
            }),
        );
        assert!(matches!(
            consumer.process(&cancelled).await.expect("process"),
            Outcome::Skipped(_)
        ));
        assert_eq!(ent.open_poll_limit("u1").await.expect("limit"), Some(50));
        let free = delivery(3, 2, grant("u1", "free", 3));
        consumer.process(&free).await.expect("process");
        let granted = ent.granted("u1").await.expect("read").expect("row");
        assert_eq!(
            (
                granted.plan.as_str(),
                granted.max_open_polls,
                granted.sequence
            ),
            ("free", 3, 2)
        );
        assert_eq!(consumer.offset().await.expect("offset"), 3);
    }

    #[tokio::test]
    async fn an_older_grant_arriving_late_does_not_undo_a_newer_one() {
        let (_d, consumer, ent) = setup(0).await;
        consumer
            .process(&delivery(2, 2, grant("u1", "team", 500)))
            .await
            .expect("newer");
        // e.g. a redriven dead letter of the earlier pro grant.
        assert_eq!(
            consumer
                .process(&delivery(1, 1, grant("u1", "pro", 50)))
                .await
                .expect("older"),
            Outcome::Applied
        );
        assert_eq!(ent.open_poll_limit("u1").await.expect("limit"), Some(500));
    }

    #[tokio::test]
    async fn a_grant_without_user_is_dead_lettered_and_zero_means_unlimited() {
        let (_d, consumer, ent) = setup(5).await;
        assert!(matches!(
            consumer
                .process(&delivery(1, 1, grant("", "pro", 50)))
                .await
                .expect("process"),
            Outcome::DeadLettered(_)
        ));
        consumer
            .process(&delivery(2, 1, grant("u1", "unlimited", 0)))
            .await
            .expect("process");
        assert_eq!(ent.open_poll_limit("u1").await.expect("limit"), None);
    }

    #[tokio::test]
    async fn a_rebuild_clears_the_limits() {
        let (_d, consumer, ent) = setup(4).await;
        consumer
            .process(&delivery(1, 1, grant("u1", "pro", 50)))
            .await
            .expect("process");
        consumer.replay(0, true).await.expect("rebuild");
        assert_eq!(ent.granted("u1").await.expect("read"), None);
        assert_eq!(ent.open_poll_limit("u1").await.expect("limit"), Some(4));
    }
}
