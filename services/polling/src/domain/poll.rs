//! Polls: what a valid new poll is, when a poll is open, and who may close it.

use super::{DomainError, Millis};
use serde::{Deserialize, Serialize};
use std::collections::HashMap;

/// Longest question, in characters, after trimming.
pub const MAX_QUESTION_CHARS: usize = 500;
/// Fewest and most options per poll.
pub const MIN_OPTIONS: usize = 2;
pub const MAX_OPTIONS: usize = 20;
/// Longest option text, in characters, after trimming.
pub const MAX_OPTION_CHARS: usize = 200;

/// One choice of a poll.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PollOption {
    pub option_id: String,
    pub text: String,
}

/// A poll as stored.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Poll {
    pub poll_id: String,
    pub owner_id: String,
    pub question: String,
    pub options: Vec<PollOption>,
    pub created_at: Millis,
    /// The deadline; `None` when the poll stays open until closed.
    pub closes_at: Option<Millis>,
    /// Set when the owner closed the poll.
    pub closed_at: Option<Millis>,
}

/// Whether a poll takes votes at a given moment.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PollStatus {
    Open,
    Closed,
}

/// A create request as it arrives (untrimmed, unchecked).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NewPoll {
    pub question: String,
    pub options: Vec<String>,
    pub closes_at: Option<Millis>,
}

/// The id option `index` (0-based) gets: `opt-1`, `opt-2`, ...
pub fn option_id(index: usize) -> String {
    format!("opt-{}", index + 1)
}

impl NewPoll {
    /// Checks every rule and builds the poll; errors name the first bad field.
    pub fn validate(
        self,
        poll_id: String,
        owner_id: String,
        now: Millis,
    ) -> Result<Poll, DomainError> {
        let question = self.question.trim();
        let len = question.chars().count();
        if len == 0 {
            return Err(DomainError::invalid("question", "must not be empty"));
        }
        if len > MAX_QUESTION_CHARS {
            return Err(DomainError::invalid(
                "question",
                format!("is {len} characters; at most {MAX_QUESTION_CHARS} are allowed"),
            ));
        }
        let n = self.options.len();
        if !(MIN_OPTIONS..=MAX_OPTIONS).contains(&n) {
            return Err(DomainError::invalid(
                "options",
                format!("has {n} entries; a poll needs {MIN_OPTIONS} to {MAX_OPTIONS}"),
            ));
        }
        let mut seen: HashMap<String, usize> = HashMap::with_capacity(n);
        let mut options = Vec::with_capacity(n);
        for (i, raw) in self.options.iter().enumerate() {
            let field = format!("options[{i}]");
            let text = raw.trim();
            if text.is_empty() {
                return Err(DomainError::invalid(field, "must not be empty"));
            }
            let chars = text.chars().count();
            if chars > MAX_OPTION_CHARS {
                return Err(DomainError::invalid(
                    field,
                    format!("is {chars} characters; at most {MAX_OPTION_CHARS} are allowed"),
                ));
            }
            if let Some(first) = seen.insert(text.to_lowercase(), i) {
                return Err(DomainError::invalid(
                    field,
                    format!("duplicates options[{first}] (options must differ ignoring case)"),
                ));
            }
            options.push(PollOption {
                option_id: option_id(i),
                text: text.to_string(),
            });
        }
        if let Some(deadline) = self.closes_at
            && deadline <= now
        {
            return Err(DomainError::invalid("closes_at", "must be in the future"));
        }
        Ok(Poll {
            poll_id,
            owner_id,
            question: question.to_string(),
            options,
            created_at: now,
            closes_at: self.closes_at,
            closed_at: None,
        })
    }
}

impl Poll {
    /// Open until closed by its owner or until its deadline passes.
    pub fn status_at(&self, now: Millis) -> PollStatus {
        if self.closed_at.is_some() || self.closes_at.is_some_and(|d| now >= d) {
            PollStatus::Closed
        } else {
            PollStatus::Open
        }
    }

    pub fn is_open_at(&self, now: Millis) -> bool {
        self.status_at(now) == PollStatus::Open
    }

    /// The option with this id.
    pub fn option(&self, option_id: &str) -> Option<&PollOption> {
        self.options.iter().find(|o| o.option_id == option_id)
    }

    /// Closes the poll for `caller`: only the owner may, and only once.
    ///
    /// A poll past its deadline is already closed, so closing it is also a
    /// FAILED_PRECONDITION.
    pub fn close(&self, caller: &str, now: Millis) -> Result<Poll, DomainError> {
        if caller != self.owner_id {
            return Err(DomainError::PermissionDenied(
                "only the poll's owner may close it".into(),
            ));
        }
        if self.closed_at.is_some() {
            return Err(DomainError::FailedPrecondition(
                "the poll is already closed".into(),
            ));
        }
        if self.status_at(now) == PollStatus::Closed {
            return Err(DomainError::FailedPrecondition(
                "the poll already closed at its deadline".into(),
            ));
        }
        let mut closed = self.clone();
        closed.closed_at = Some(now);
        Ok(closed)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const NOW: Millis = 1_700_000_000_000;

    fn new_poll(question: &str, options: &[&str]) -> NewPoll {
        NewPoll {
            question: question.into(),
            options: options.iter().map(|s| s.to_string()).collect(),
            closes_at: None,
        }
    }

    fn field_of(e: DomainError) -> String {
        match e {
            DomainError::InvalidArgument { field, .. } => field,
            other => panic!("expected INVALID_ARGUMENT, got {other:?}"),
        }
    }

    fn create(p: NewPoll) -> Result<Poll, DomainError> {
        p.validate("p1".into(), "owner".into(), NOW)
    }

    #[test]
    fn valid_poll_is_trimmed_and_gets_option_ids() {
        let p = create(new_poll("  Lunch?  ", [" Pizza ", "Soup"].as_ref())).expect("valid");
        assert_eq!(p.question, "Lunch?");
        assert_eq!(p.options[0].text, "Pizza");
        assert_eq!(p.options[0].option_id, "opt-1");
        assert_eq!(p.options[1].option_id, "opt-2");
        assert_eq!(p.created_at, NOW);
        assert_eq!(p.status_at(NOW), PollStatus::Open);
    }

    #[test]
    fn question_length_is_counted_in_characters_after_trim() {
        assert_eq!(
            field_of(create(new_poll("   ", &["a", "b"])).expect_err("blank")),
            "question"
        );
        let max = "é".repeat(MAX_QUESTION_CHARS);
        assert!(create(new_poll(&format!(" {max} "), &["a", "b"])).is_ok());
        let over = "x".repeat(MAX_QUESTION_CHARS + 1);
        assert_eq!(
            field_of(create(new_poll(&over, &["a", "b"])).expect_err("long")),
            "question"
        );
    }

    #[test]
    fn option_count_must_be_two_to_twenty() {
        assert_eq!(
            field_of(create(new_poll("q", &["only"])).expect_err("one")),
            "options"
        );
        let twenty: Vec<String> = (0..20).map(|i| format!("o{i}")).collect();
        let refs: Vec<&str> = twenty.iter().map(String::as_str).collect();
        assert!(create(new_poll("q", &refs)).is_ok());
        let twenty_one: Vec<String> = (0..21).map(|i| format!("o{i}")).collect();
        let refs: Vec<&str> = twenty_one.iter().map(String::as_str).collect();
        assert_eq!(
            field_of(create(new_poll("q", &refs)).expect_err("21")),
            "options"
        );
    }

    #[test]
    fn options_are_non_empty_short_and_distinct_ignoring_case() {
        assert_eq!(
            field_of(create(new_poll("q", &["a", "b", "c", "  "])).expect_err("empty")),
            "options[3]"
        );
        let long = "y".repeat(MAX_OPTION_CHARS + 1);
        assert_eq!(
            field_of(create(new_poll("q", &["a", &long])).expect_err("long")),
            "options[1]"
        );
        assert!(create(new_poll("q", &["a", &"y".repeat(MAX_OPTION_CHARS)])).is_ok());
        let e = create(new_poll("q", &["Yes", "No", " yes "])).expect_err("dup");
        assert!(e.to_string().contains("duplicates options[0]"), "{e}");
        assert_eq!(field_of(e), "options[2]");
    }

    #[test]
    fn deadline_must_be_in_the_future() {
        let mut p = new_poll("q", &["a", "b"]);
        p.closes_at = Some(NOW);
        assert_eq!(field_of(create(p.clone()).expect_err("now")), "closes_at");
        p.closes_at = Some(NOW - 1);
        assert_eq!(field_of(create(p.clone()).expect_err("past")), "closes_at");
        p.closes_at = Some(NOW + 1);
        let poll = create(p).expect("future");
        assert_eq!(poll.status_at(NOW), PollStatus::Open);
        assert_eq!(poll.status_at(NOW + 1), PollStatus::Closed);
    }

    #[test]
    fn only_the_owner_closes_and_only_once() {
        let poll = create(new_poll("q", &["a", "b"])).expect("valid");
        assert!(matches!(
            poll.close("someone-else", NOW),
            Err(DomainError::PermissionDenied(_))
        ));
        let closed = poll.close("owner", NOW + 5).expect("owner closes");
        assert_eq!(closed.closed_at, Some(NOW + 5));
        assert_eq!(closed.status_at(NOW + 5), PollStatus::Closed);
        assert!(matches!(
            closed.close("owner", NOW + 6),
            Err(DomainError::FailedPrecondition(_))
        ));
        // The owner check comes first: a stranger learns nothing about state.
        assert!(matches!(
            closed.close("someone-else", NOW + 6),
            Err(DomainError::PermissionDenied(_))
        ));
    }

    #[test]
    fn a_poll_past_its_deadline_cannot_be_closed_again() {
        let mut p = new_poll("q", &["a", "b"]);
        p.closes_at = Some(NOW + 10);
        let poll = create(p).expect("valid");
        assert!(matches!(
            poll.close("owner", NOW + 10),
            Err(DomainError::FailedPrecondition(_))
        ));
    }
}
