//! Building and reading `tally.events.v1.EventEnvelope`s, so producers, the
//! feed and consumers agree on type names and on how an outbox row is encoded.

use crate::storage::OutboxEvent;
use prost::Message;
use tally_api::events::v1::EventEnvelope;
use tally_api::events::v1::event_envelope::Payload;

/// The schema version this build writes (and fully understands).
pub const SCHEMA_VERSION: u32 = 1;

/// The fully qualified type name of a payload, e.g. `tally.events.v1.PollVoted`.
pub fn event_type(payload: &Payload) -> &'static str {
    match payload {
        Payload::UserRegistered(_) => "tally.events.v1.UserRegistered",
        Payload::PollCreated(_) => "tally.events.v1.PollCreated",
        Payload::PollVoted(_) => "tally.events.v1.PollVoted",
        Payload::PollClosed(_) => "tally.events.v1.PollClosed",
        Payload::SubscriptionStarted(_) => "tally.events.v1.SubscriptionStarted",
        Payload::SubscriptionActivated(_) => "tally.events.v1.SubscriptionActivated",
        Payload::SubscriptionCancelled(_) => "tally.events.v1.SubscriptionCancelled",
        Payload::PaymentFailed(_) => "tally.events.v1.PaymentFailed",
        Payload::PlanLimitsGranted(_) => "tally.events.v1.PlanLimitsGranted",
    }
}

/// A new envelope: fresh UUIDv7 id, `occurred_at` now, this build's schema version.
pub fn new_envelope(
    producer: &str,
    aggregate_id: &str,
    sequence: u64,
    payload: Payload,
) -> EventEnvelope {
    let event_type = event_type(&payload).to_string();
    EventEnvelope {
        event_id: uuid::Uuid::now_v7().to_string(),
        traceparent: crate::trace::events::publish(&event_type),
        event_type,
        aggregate_id: aggregate_id.to_string(),
        sequence,
        occurred_at: Some(prost_types::Timestamp::from(std::time::SystemTime::now())),
        schema_version: SCHEMA_VERSION,
        producer: producer.to_string(),
        payload: Some(payload),
    }
}

/// The outbox row for an envelope (type and aggregate copied out for filtering).
pub fn outbox_event(envelope: &EventEnvelope) -> OutboxEvent {
    OutboxEvent {
        aggregate_id: envelope.aggregate_id.clone(),
        event_type: envelope.event_type.clone(),
        payload: envelope.encode_to_vec(),
    }
}

/// Decodes an outbox payload. Unknown fields and unknown payload variants
/// decode fine (the payload is then `None`); only malformed bytes fail.
pub fn decode(bytes: &[u8]) -> Result<EventEnvelope, prost::DecodeError> {
    EventEnvelope::decode(bytes)
}

#[cfg(test)]
mod tests {
    use super::*;
    use tally_api::events::v1::PollVoted;

    #[test]
    fn round_trips_through_the_outbox_row() {
        let env = new_envelope(
            "polling",
            "poll-1",
            3,
            Payload::PollVoted(PollVoted {
                poll_id: "poll-1".into(),
                option_id: "a".into(),
                ..Default::default()
            }),
        );
        let row = outbox_event(&env);
        assert_eq!(row.event_type, "tally.events.v1.PollVoted");
        assert_eq!(row.aggregate_id, "poll-1");
        assert_eq!(decode(&row.payload).expect("decode"), env);
    }

    #[test]
    fn unknown_payload_variant_decodes_without_payload() {
        // Field 99 (length-delimited) is a variant this build does not know.
        let mut bytes = EventEnvelope {
            event_id: "e".into(),
            ..Default::default()
        }
        .encode_to_vec();
        bytes.extend_from_slice(&[0x9a, 0x06, 0x02, 0x08, 0x01]);
        let env = decode(&bytes).expect("unknown fields are ignored");
        assert_eq!(env.event_id, "e");
        assert!(env.payload.is_none());
    }

    #[test]
    fn garbage_is_an_error_not_a_panic() {
        assert!(decode(&[0xff, 0xff, 0xff]).is_err());
    }
}
