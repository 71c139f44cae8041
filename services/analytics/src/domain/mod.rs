//! The read model's values and the rules that fold polling events into them.
//! Pure: no I/O, so every rule is unit-tested here.
//!
//! - [`PollView`]: one poll's results (option texts from PollCreated).
//! - [`OwnerTotals`]: polls and votes per owner.
//! - [`minute_of`]: the per-minute bucket of a vote.
//! - [`paging`]: page sizes, sort keys and opaque page tokens.

pub mod paging;

use serde::{Deserialize, Serialize};
use tally_api::events::v1::PollCreated;

/// Milliseconds since the Unix epoch.
pub type Millis = i64;

/// Why an event cannot be folded into the read model.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum DomainError {
    /// The event contradicts what the read model knows (or is malformed).
    #[error("{0}")]
    Inconsistent(String),
    /// A request value is wrong.
    #[error("{field}: {problem}")]
    InvalidArgument { field: String, problem: String },
}

impl DomainError {
    pub fn invalid(field: &str, problem: &str) -> Self {
        DomainError::InvalidArgument {
            field: field.to_string(),
            problem: problem.to_string(),
        }
    }
}

/// One option with its votes.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct OptionView {
    pub option_id: String,
    pub text: String,
    pub votes: u64,
}

/// One poll as the read model sees it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PollView {
    pub poll_id: String,
    pub owner_id: String,
    pub question: String,
    pub options: Vec<OptionView>,
    pub total_votes: u64,
    pub created_at_ms: Millis,
    pub closes_at_ms: Option<Millis>,
    pub closed: bool,
    /// Offset of the last event applied to this poll.
    pub last_offset: u64,
}

impl PollView {
    /// The view a PollCreated starts (every option at 0 votes).
    pub fn created(
        event: &PollCreated,
        created_at_ms: Millis,
        offset: u64,
    ) -> Result<Self, DomainError> {
        let poll_id = &event.poll_id;
        if poll_id.is_empty() || event.owner_id.is_empty() {
            return Err(DomainError::Inconsistent(
                "PollCreated without poll or owner id".into(),
            ));
        }
        if event.option_ids.is_empty() || event.option_ids.len() != event.option_texts.len() {
            return Err(DomainError::Inconsistent(format!(
                "PollCreated for {poll_id} has {} option ids and {} texts",
                event.option_ids.len(),
                event.option_texts.len()
            )));
        }
        Ok(Self {
            poll_id: poll_id.clone(),
            owner_id: event.owner_id.clone(),
            question: event.question.clone(),
            options: event
                .option_ids
                .iter()
                .zip(&event.option_texts)
                .map(|(id, text)| OptionView {
                    option_id: id.clone(),
                    text: text.clone(),
                    votes: 0,
                })
                .collect(),
            total_votes: 0,
            created_at_ms,
            closes_at_ms: event.closes_at.as_ref().map(millis),
            closed: false,
            last_offset: offset,
        })
    }

    /// Counts one vote for `option_id`.
    pub fn vote(&mut self, option_id: &str, offset: u64) -> Result<(), DomainError> {
        let option = self
            .options
            .iter_mut()
            .find(|o| o.option_id == option_id)
            .ok_or_else(|| {
                DomainError::Inconsistent(format!(
                    "vote for unknown option `{option_id}` of poll {}",
                    self.poll_id
                ))
            })?;
        option.votes += 1;
        self.total_votes += 1;
        self.last_offset = self.last_offset.max(offset);
        Ok(())
    }

    /// Marks the poll closed; false when it already was.
    pub fn close(&mut self, offset: u64) -> bool {
        self.last_offset = self.last_offset.max(offset);
        let changed = !self.closed;
        self.closed = true;
        changed
    }

    /// Closed explicitly, or past its deadline at `now`.
    pub fn is_closed_at(&self, now: Millis) -> bool {
        self.closed || self.closes_at_ms.is_some_and(|d| now >= d)
    }
}

/// What the owner index keeps per poll (enough to count open polls).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct OwnedPoll {
    pub closes_at_ms: Option<Millis>,
    pub closed: bool,
}

impl OwnedPoll {
    pub fn is_open_at(&self, now: Millis) -> bool {
        !self.closed && self.closes_at_ms.is_none_or(|d| now < d)
    }
}

/// Totals per poll owner.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct OwnerTotals {
    pub polls: u64,
    pub total_votes: u64,
}

/// A row of the "top polls" ranking.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PollSummary {
    pub poll_id: String,
    pub owner_id: String,
    pub question: String,
    pub total_votes: u64,
}

impl From<&PollView> for PollSummary {
    fn from(p: &PollView) -> Self {
        Self {
            poll_id: p.poll_id.clone(),
            owner_id: p.owner_id.clone(),
            question: p.question.clone(),
            total_votes: p.total_votes,
        }
    }
}

/// A protobuf timestamp in milliseconds (saturating).
pub fn millis(ts: &prost_types::Timestamp) -> Millis {
    ts.seconds
        .saturating_mul(1000)
        .saturating_add(i64::from(ts.nanos.clamp(0, 999_999_999)) / 1_000_000)
}

/// The protobuf timestamp of `ms`.
pub fn timestamp(ms: Millis) -> prost_types::Timestamp {
    prost_types::Timestamp {
        seconds: ms.div_euclid(1000),
        nanos: (ms.rem_euclid(1000) * 1_000_000) as i32,
    }
}

/// The start of the minute `ms` falls in, in seconds since the epoch.
pub fn minute_of(ms: Millis) -> i64 {
    ms.div_euclid(60_000) * 60
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ids(v: &[&str]) -> Vec<String> {
        v.iter().map(|s| s.to_string()).collect()
    }

    fn created(poll_id: &str, option_ids: &[&str], texts: &[&str]) -> PollCreated {
        PollCreated {
            poll_id: poll_id.into(),
            owner_id: "u1".into(),
            question: "Tea?".into(),
            option_ids: ids(option_ids),
            option_texts: ids(texts),
            closes_at: None,
        }
    }

    fn poll() -> PollView {
        PollView::created(
            &created("p1", &["opt-1", "opt-2"], &["tea", "coffee"]),
            1_000,
            1,
        )
        .expect("valid")
    }

    #[test]
    fn created_has_texts_and_zero_votes() {
        let p = poll();
        assert_eq!(p.options[1].text, "coffee");
        assert_eq!(p.total_votes, 0);
        assert!(!p.closed);
    }

    #[test]
    fn mismatched_options_are_inconsistent() {
        let err = PollView::created(&created("p", &["a"], &[]), 0, 1).expect_err("mismatch");
        assert!(matches!(err, DomainError::Inconsistent(_)));
        assert!(PollView::created(&created("", &["a"], &["a"]), 0, 1).is_err());
    }

    #[test]
    fn votes_count_per_option_and_unknown_options_fail() {
        let mut p = poll();
        p.vote("opt-2", 5).expect("vote");
        p.vote("opt-2", 6).expect("vote");
        p.vote("opt-1", 7).expect("vote");
        assert_eq!(
            (p.options[0].votes, p.options[1].votes, p.total_votes),
            (1, 2, 3)
        );
        assert_eq!(p.last_offset, 7);
        assert!(p.vote("opt-9", 8).is_err());
        assert_eq!(p.total_votes, 3);
    }

    #[test]
    fn close_once_and_deadlines() {
        let mut p = poll();
        assert!(p.close(3));
        assert!(!p.close(4));
        assert!(p.is_closed_at(0));
        let mut q = poll();
        q.closes_at_ms = Some(10);
        assert!(!q.is_closed_at(9));
        assert!(q.is_closed_at(10));
        let owned = OwnedPoll {
            closes_at_ms: Some(10),
            closed: false,
        };
        assert!(owned.is_open_at(9));
        assert!(!owned.is_open_at(10));
    }

    #[test]
    fn timestamps_round_trip() {
        for ms in [0i64, 1_500, -1, 1_700_000_000_123] {
            assert_eq!(millis(&timestamp(ms)), ms);
        }
    }

    #[test]
    fn minutes_floor_even_before_the_epoch() {
        assert_eq!(minute_of(0), 0);
        assert_eq!(minute_of(59_999), 0);
        assert_eq!(minute_of(60_000), 60);
        assert_eq!(minute_of(-1), -60);
    }
}
