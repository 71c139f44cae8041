//! Billing's outgoing events: domain notices turned into
//! `tally.events.v1.EventEnvelope`s for the outbox.

use crate::domain::plans::PlanId;
use crate::domain::saga::Notice;
use prost::Message;
use tally_api::events::v1 as ev;
use tally_api::events::v1::event_envelope::Payload;
use tally_chassis::storage::OutboxEvent;

/// The producer name in every envelope.
pub const PRODUCER: &str = "billing";

fn now() -> prost_types::Timestamp {
    prost_types::Timestamp::from(std::time::SystemTime::now())
}

/// An outbox row for `payload`, the `sequence`-th event of `aggregate_id`.
pub fn envelope(aggregate_id: &str, sequence: u64, payload: Payload) -> OutboxEvent {
    let event_type = match &payload {
        Payload::SubscriptionStarted(_) => "SubscriptionStarted",
        Payload::SubscriptionActivated(_) => "SubscriptionActivated",
        Payload::SubscriptionCancelled(_) => "SubscriptionCancelled",
        Payload::PaymentFailed(_) => "PaymentFailed",
        Payload::PlanLimitsGranted(_) => "PlanLimitsGranted",
        _ => "Unknown",
    };
    let event_type = format!("tally.events.v1.{event_type}");
    let env = ev::EventEnvelope {
        event_id: uuid::Uuid::now_v7().to_string(),
        event_type: event_type.clone(),
        aggregate_id: aggregate_id.to_string(),
        sequence,
        occurred_at: Some(now()),
        schema_version: 1,
        traceparent: tally_chassis::trace::events::publish(&event_type),
        producer: PRODUCER.to_string(),
        payload: Some(payload),
    };
    OutboxEvent {
        aggregate_id: aggregate_id.to_string(),
        event_type,
        payload: env.encode_to_vec(),
    }
}

/// SubscriptionStarted, the first event of a subscription.
pub fn started(subscription_id: &str, user_id: &str, plan: PlanId) -> Payload {
    Payload::SubscriptionStarted(ev::SubscriptionStarted {
        subscription_id: subscription_id.to_string(),
        user_id: user_id.to_string(),
        plan: plan.name().to_string(),
    })
}

/// PlanLimitsGranted; its aggregate is the user, not the subscription.
pub fn limits(user_id: &str, plan: PlanId) -> Payload {
    Payload::PlanLimitsGranted(ev::PlanLimitsGranted {
        user_id: user_id.to_string(),
        plan: plan.name().to_string(),
        max_open_polls: plan.plan().max_open_polls,
    })
}

/// The payload of a subscription-scoped notice; `None` for PlanLimitsGranted
/// (published on the user aggregate, see [`limits`]).
pub fn subscription_payload(
    subscription_id: &str,
    user_id: &str,
    notice: &Notice,
) -> Option<Payload> {
    let (sid, uid) = (subscription_id.to_string(), user_id.to_string());
    match notice {
        Notice::SubscriptionActivated { plan } => {
            Some(Payload::SubscriptionActivated(ev::SubscriptionActivated {
                subscription_id: sid,
                user_id: uid,
                plan: plan.name().to_string(),
            }))
        }
        Notice::PaymentFailed { reason } => Some(Payload::PaymentFailed(ev::PaymentFailed {
            subscription_id: sid,
            user_id: uid,
            reason: reason.clone(),
        })),
        Notice::SubscriptionCancelled { reason } => {
            Some(Payload::SubscriptionCancelled(ev::SubscriptionCancelled {
                subscription_id: sid,
                user_id: uid,
                reason: reason.clone(),
            }))
        }
        Notice::PlanLimitsGranted { .. } => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn envelope_round_trips_with_type_and_sequence() {
        let row = envelope("sub_1", 3, started("sub_1", "u1", PlanId::Pro));
        assert_eq!(row.event_type, "tally.events.v1.SubscriptionStarted");
        let env = ev::EventEnvelope::decode(row.payload.as_slice()).expect("decodes");
        assert_eq!(env.sequence, 3);
        assert_eq!(env.aggregate_id, "sub_1");
        assert_eq!(env.producer, PRODUCER);
        assert_eq!(env.schema_version, 1);
        assert!(
            matches!(env.payload, Some(Payload::SubscriptionStarted(ref s)) if s.plan == "pro")
        );
    }
}
