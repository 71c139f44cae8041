//! Votes: when a vote counts, and how retries are recognised.
//!
//! Rules, checked in this order:
//! 1. unknown poll → NOT_FOUND;
//! 2. a retry (same voter, same idempotency key) of an accepted vote for the
//!    same poll and option → the original vote, flagged as replayed, whatever
//!    the poll's state now;
//! 3. the same idempotency key reused for a different poll or option →
//!    INVALID_ARGUMENT on `idempotency_key` (a key names one request);
//! 4. poll closed or past its deadline → FAILED_PRECONDITION;
//! 5. option not in the poll → INVALID_ARGUMENT on `option_id`;
//! 6. the voter already voted in this poll (another or no key) → ALREADY_EXISTS.
//!
//! Idempotency keys are scoped per voter, so two users may pick the same key.
//! An empty key means the request is not retry-safe: a second call then gets
//! ALREADY_EXISTS.

use super::poll::{Poll, PollStatus};
use super::{DomainError, Millis};
use serde::{Deserialize, Serialize};

/// Longest idempotency key, in bytes.
pub const MAX_IDEMPOTENCY_KEY_LEN: usize = 128;

/// One accepted vote: a row of the poll's vote log.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct VoteRecord {
    pub vote_id: String,
    pub poll_id: String,
    pub option_id: String,
    pub voter_id: String,
    pub cast_at: Millis,
    /// The key the vote was cast with (empty when none).
    pub idempotency_key: String,
    /// Position in the poll's vote log (1-based).
    pub seq: u64,
}

/// Where an idempotency key points: the vote it produced.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct IdempotencyRecord {
    pub poll_id: String,
    pub option_id: String,
    pub vote_seq: u64,
}

/// A vote as requested.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct VoteRequest {
    pub poll_id: String,
    pub option_id: String,
    pub voter_id: String,
    pub idempotency_key: String,
}

/// What to do with a vote request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum VoteDecision {
    /// Answer with this earlier vote (replayed = true).
    Replay(VoteRecord),
    /// Record a new vote.
    Cast,
}

impl VoteRequest {
    /// Field checks that need no stored state.
    pub fn check_fields(&self) -> Result<(), DomainError> {
        if self.option_id.is_empty() {
            return Err(DomainError::invalid("option_id", "must not be empty"));
        }
        if self.idempotency_key.len() > MAX_IDEMPOTENCY_KEY_LEN {
            return Err(DomainError::invalid(
                "idempotency_key",
                format!("is longer than {MAX_IDEMPOTENCY_KEY_LEN} bytes"),
            ));
        }
        if self.idempotency_key.chars().any(char::is_control) {
            return Err(DomainError::invalid(
                "idempotency_key",
                "must not contain control characters",
            ));
        }
        Ok(())
    }

    /// Rule 2/3 for a key found in the voter's idempotency records.
    pub fn replay_of(&self, earlier: &IdempotencyRecord) -> Result<(), DomainError> {
        if earlier.poll_id == self.poll_id && earlier.option_id == self.option_id {
            Ok(())
        } else {
            Err(key_reused())
        }
    }
}

fn key_reused() -> DomainError {
    DomainError::invalid(
        "idempotency_key",
        "was already used by this voter for a different vote; use a fresh key per vote",
    )
}

/// Decides a vote given the poll (if any) and the voter's earlier vote in it
/// (if any). See the module docs for the order of the rules.
pub fn decide(
    poll: Option<&Poll>,
    req: &VoteRequest,
    earlier: Option<&VoteRecord>,
    now: Millis,
) -> Result<VoteDecision, DomainError> {
    let poll =
        poll.ok_or_else(|| DomainError::NotFound(format!("poll `{}` not found", req.poll_id)))?;
    if let Some(prev) = earlier
        && !req.idempotency_key.is_empty()
        && prev.idempotency_key == req.idempotency_key
    {
        if prev.option_id == req.option_id {
            return Ok(VoteDecision::Replay(prev.clone()));
        }
        return Err(key_reused());
    }
    if poll.status_at(now) == PollStatus::Closed {
        return Err(DomainError::FailedPrecondition(
            "the poll is closed and takes no more votes".into(),
        ));
    }
    if poll.option(&req.option_id).is_none() {
        return Err(DomainError::invalid(
            "option_id",
            format!("`{}` is not an option of this poll", req.option_id),
        ));
    }
    if earlier.is_some() {
        return Err(DomainError::AlreadyExists(
            "this voter already voted in this poll".into(),
        ));
    }
    Ok(VoteDecision::Cast)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::domain::poll::NewPoll;

    const NOW: Millis = 1_000_000;

    fn poll(closes_at: Option<Millis>) -> Poll {
        NewPoll {
            question: "q".into(),
            options: vec!["a".into(), "b".into()],
            closes_at,
        }
        .validate("p1".into(), "owner".into(), NOW - 10)
        .expect("valid")
    }

    fn req(option: &str, key: &str) -> VoteRequest {
        VoteRequest {
            poll_id: "p1".into(),
            option_id: option.into(),
            voter_id: "u1".into(),
            idempotency_key: key.into(),
        }
    }

    fn earlier(option: &str, key: &str) -> VoteRecord {
        VoteRecord {
            vote_id: "v1".into(),
            poll_id: "p1".into(),
            option_id: option.into(),
            voter_id: "u1".into(),
            cast_at: NOW - 5,
            idempotency_key: key.into(),
            seq: 1,
        }
    }

    #[test]
    fn first_vote_on_open_poll_is_cast() {
        let p = poll(None);
        assert_eq!(
            decide(Some(&p), &req("opt-1", "k"), None, NOW),
            Ok(VoteDecision::Cast)
        );
    }

    #[test]
    fn unknown_poll_is_not_found() {
        assert!(matches!(
            decide(None, &req("opt-1", "k"), None, NOW),
            Err(DomainError::NotFound(_))
        ));
    }

    #[test]
    fn closed_or_expired_poll_is_failed_precondition() {
        let p = poll(Some(NOW));
        assert!(matches!(
            decide(Some(&p), &req("opt-1", "k"), None, NOW),
            Err(DomainError::FailedPrecondition(_))
        ));
        let closed = poll(None).close("owner", NOW - 1).expect("close");
        assert!(matches!(
            decide(Some(&closed), &req("opt-1", "k"), None, NOW),
            Err(DomainError::FailedPrecondition(_))
        ));
    }

    #[test]
    fn unknown_option_is_invalid_argument() {
        let p = poll(None);
        match decide(Some(&p), &req("opt-9", "k"), None, NOW) {
            Err(DomainError::InvalidArgument { field, .. }) => assert_eq!(field, "option_id"),
            other => panic!("unexpected {other:?}"),
        }
    }

    #[test]
    fn second_vote_is_already_exists_unless_same_key() {
        let p = poll(None);
        let prev = earlier("opt-1", "k1");
        assert!(matches!(
            decide(Some(&p), &req("opt-2", "k2"), Some(&prev), NOW),
            Err(DomainError::AlreadyExists(_))
        ));
        assert!(matches!(
            decide(Some(&p), &req("opt-1", ""), Some(&prev), NOW),
            Err(DomainError::AlreadyExists(_))
        ));
        assert_eq!(
            decide(Some(&p), &req("opt-1", "k1"), Some(&prev), NOW),
            Ok(VoteDecision::Replay(prev.clone()))
        );
        // An empty key never replays.
        let keyless = earlier("opt-1", "");
        assert!(matches!(
            decide(Some(&p), &req("opt-1", ""), Some(&keyless), NOW),
            Err(DomainError::AlreadyExists(_))
        ));
    }

    #[test]
    fn retry_replays_even_after_the_poll_closed() {
        let closed = poll(None).close("owner", NOW - 1).expect("close");
        let prev = earlier("opt-1", "k1");
        assert_eq!(
            decide(Some(&closed), &req("opt-1", "k1"), Some(&prev), NOW),
            Ok(VoteDecision::Replay(prev))
        );
    }

    #[test]
    fn same_key_for_another_option_or_poll_is_invalid_argument() {
        let p = poll(None);
        let prev = earlier("opt-1", "k1");
        match decide(Some(&p), &req("opt-2", "k1"), Some(&prev), NOW) {
            Err(DomainError::InvalidArgument { field, .. }) => assert_eq!(field, "idempotency_key"),
            other => panic!("unexpected {other:?}"),
        }
        let record = IdempotencyRecord {
            poll_id: "p1".into(),
            option_id: "opt-1".into(),
            vote_seq: 1,
        };
        assert!(req("opt-1", "k1").replay_of(&record).is_ok());
        assert!(req("opt-2", "k1").replay_of(&record).is_err());
        let mut other_poll = req("opt-1", "k1");
        other_poll.poll_id = "p2".into();
        assert!(matches!(
            other_poll.replay_of(&record),
            Err(DomainError::InvalidArgument { .. })
        ));
    }

    #[test]
    fn field_checks() {
        assert!(req("opt-1", "k").check_fields().is_ok());
        assert!(req("opt-1", "").check_fields().is_ok());
        assert!(req("", "k").check_fields().is_err());
        assert!(
            req("opt-1", &"k".repeat(MAX_IDEMPOTENCY_KEY_LEN + 1))
                .check_fields()
                .is_err()
        );
        assert!(req("opt-1", "a\nb").check_fields().is_err());
    }
}
