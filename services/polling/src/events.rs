//! The events polling publishes (PollCreated, PollVoted, PollClosed), wrapped
//! in the shared envelope and ready to go into the outbox with the state
//! change that caused them.

use crate::domain::Millis;
use crate::domain::poll::Poll;
use crate::domain::vote::VoteRecord;
use prost::Message;
use tally_api::events::v1 as ev;
use tally_chassis::storage::OutboxEvent;

/// The `producer` of every polling event.
pub const PRODUCER: &str = "polling";
/// Payload schema version written by this build.
pub const SCHEMA_VERSION: u32 = 1;

pub const POLL_CREATED: &str = "tally.events.v1.PollCreated";
pub const POLL_VOTED: &str = "tally.events.v1.PollVoted";
pub const POLL_CLOSED: &str = "tally.events.v1.PollClosed";

/// A protobuf timestamp for `ms`.
pub fn timestamp(ms: Millis) -> prost_types::Timestamp {
    prost_types::Timestamp {
        seconds: ms.div_euclid(1000),
        nanos: (ms.rem_euclid(1000) * 1_000_000) as i32,
    }
}

fn envelope(
    event_type: &str,
    poll_id: &str,
    sequence: u64,
    at: Millis,
    payload: ev::event_envelope::Payload,
) -> OutboxEvent {
    let envelope = ev::EventEnvelope {
        event_id: uuid::Uuid::now_v7().to_string(),
        event_type: event_type.to_string(),
        aggregate_id: poll_id.to_string(),
        sequence,
        occurred_at: Some(timestamp(at)),
        schema_version: SCHEMA_VERSION,
        traceparent: tally_chassis::trace::events::publish(event_type),
        producer: PRODUCER.to_string(),
        payload: Some(payload),
    };
    OutboxEvent {
        aggregate_id: poll_id.to_string(),
        event_type: event_type.to_string(),
        payload: envelope.encode_to_vec(),
    }
}

/// PollCreated, always sequence 1.
pub fn poll_created(poll: &Poll) -> OutboxEvent {
    envelope(
        POLL_CREATED,
        &poll.poll_id,
        1,
        poll.created_at,
        ev::event_envelope::Payload::PollCreated(ev::PollCreated {
            poll_id: poll.poll_id.clone(),
            owner_id: poll.owner_id.clone(),
            question: poll.question.clone(),
            option_ids: poll.options.iter().map(|o| o.option_id.clone()).collect(),
            option_texts: poll.options.iter().map(|o| o.text.clone()).collect(),
            closes_at: poll.closes_at.map(timestamp),
        }),
    )
}

/// PollVoted at the poll's new version.
pub fn poll_voted(vote: &VoteRecord, sequence: u64) -> OutboxEvent {
    envelope(
        POLL_VOTED,
        &vote.poll_id,
        sequence,
        vote.cast_at,
        ev::event_envelope::Payload::PollVoted(ev::PollVoted {
            poll_id: vote.poll_id.clone(),
            vote_id: vote.vote_id.clone(),
            option_id: vote.option_id.clone(),
            voter_id: vote.voter_id.clone(),
            cast_at: Some(timestamp(vote.cast_at)),
        }),
    )
}

/// PollClosed at the poll's new version.
pub fn poll_closed(poll: &Poll, closed_by: &str, at: Millis, sequence: u64) -> OutboxEvent {
    envelope(
        POLL_CLOSED,
        &poll.poll_id,
        sequence,
        at,
        ev::event_envelope::Payload::PollClosed(ev::PollClosed {
            poll_id: poll.poll_id.clone(),
            closed_by: closed_by.to_string(),
            closed_at: Some(timestamp(at)),
        }),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn timestamps_split_millis() {
        assert_eq!(
            timestamp(1_500),
            prost_types::Timestamp {
                seconds: 1,
                nanos: 500_000_000
            }
        );
        assert_eq!(
            timestamp(-1),
            prost_types::Timestamp {
                seconds: -1,
                nanos: 999_000_000
            }
        );
    }

    #[test]
    fn envelope_round_trips() {
        let vote = VoteRecord {
            vote_id: "v".into(),
            poll_id: "p".into(),
            option_id: "opt-1".into(),
            voter_id: "u".into(),
            cast_at: 42,
            idempotency_key: String::new(),
            seq: 3,
        };
        let out = poll_voted(&vote, 4);
        assert_eq!(out.aggregate_id, "p");
        assert_eq!(out.event_type, POLL_VOTED);
        let env = ev::EventEnvelope::decode(out.payload.as_slice()).expect("decode");
        assert_eq!(env.sequence, 4);
        assert_eq!(env.producer, "polling");
        assert_eq!(env.schema_version, 1);
        assert!(uuid::Uuid::parse_str(&env.event_id).is_ok());
        match env.payload {
            Some(ev::event_envelope::Payload::PollVoted(v)) => assert_eq!(v.option_id, "opt-1"),
            other => panic!("unexpected {other:?}"),
        }
    }
}
