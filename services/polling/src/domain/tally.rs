//! The counts projection of a poll and how it follows from the vote log.
//!
//! The vote log (one record per accepted vote, numbered 1, 2, 3, ...) is the
//! source of truth. [`Tally`] is the projection kept next to it: counts per
//! option, the number of votes (= the last vote's number), and the poll's
//! version (= the sequence of its last event: created, each vote, closed).
//! [`recompute`] rebuilds the counts from the log alone.

use super::poll::Poll;
use super::vote::VoteRecord;
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;

/// Current counts of one poll.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Tally {
    /// Sequence of the poll's last event.
    pub version: u64,
    /// Votes recorded so far; also the number of the last vote.
    pub votes: u64,
    /// Votes per option id (options without votes may be absent).
    pub counts: BTreeMap<String, u64>,
}

/// What recording one vote assigns.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct VoteSlot {
    /// Position of the vote in the poll's vote log (1-based).
    pub vote_seq: u64,
    /// Sequence of the PollVoted event.
    pub event_seq: u64,
}

impl Tally {
    /// The projection right after PollCreated (event 1).
    pub fn created() -> Self {
        Tally {
            version: 1,
            votes: 0,
            counts: BTreeMap::new(),
        }
    }

    /// The projection after one more vote for `option_id`.
    pub fn with_vote(&self, option_id: &str) -> (Tally, VoteSlot) {
        let mut next = self.clone();
        next.version += 1;
        next.votes += 1;
        *next.counts.entry(option_id.to_string()).or_insert(0) += 1;
        let slot = VoteSlot {
            vote_seq: next.votes,
            event_seq: next.version,
        };
        (next, slot)
    }

    /// The projection after PollClosed; returns its event sequence.
    pub fn with_close(&self) -> (Tally, u64) {
        let mut next = self.clone();
        next.version += 1;
        let seq = next.version;
        (next, seq)
    }

    /// Votes for one option.
    pub fn count(&self, option_id: &str) -> u64 {
        self.counts.get(option_id).copied().unwrap_or(0)
    }

    /// Counts for every option of `poll`, in the poll's option order.
    pub fn results<'a>(&'a self, poll: &'a Poll) -> impl Iterator<Item = (&'a str, &'a str, u64)> {
        poll.options.iter().map(|o| {
            (
                o.option_id.as_str(),
                o.text.as_str(),
                self.count(&o.option_id),
            )
        })
    }
}

/// Counts per option rebuilt from the vote log alone (every option present).
pub fn recompute<'a>(
    poll: &Poll,
    log: impl IntoIterator<Item = &'a VoteRecord>,
) -> BTreeMap<String, u64> {
    let mut counts: BTreeMap<String, u64> = poll
        .options
        .iter()
        .map(|o| (o.option_id.clone(), 0))
        .collect();
    for vote in log {
        *counts.entry(vote.option_id.clone()).or_insert(0) += 1;
    }
    counts
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::domain::poll::NewPoll;

    fn poll() -> Poll {
        NewPoll {
            question: "q".into(),
            options: vec!["a".into(), "b".into(), "c".into()],
            closes_at: None,
        }
        .validate("p".into(), "o".into(), 0)
        .expect("valid")
    }

    fn vote(seq: u64, option: &str) -> VoteRecord {
        VoteRecord {
            vote_id: format!("v{seq}"),
            poll_id: "p".into(),
            option_id: option.into(),
            voter_id: format!("u{seq}"),
            cast_at: 0,
            idempotency_key: String::new(),
            seq,
        }
    }

    #[test]
    fn votes_and_close_advance_the_version() {
        let t = Tally::created();
        assert_eq!(t.version, 1);
        let (t, s1) = t.with_vote("opt-1");
        assert_eq!(
            s1,
            VoteSlot {
                vote_seq: 1,
                event_seq: 2
            }
        );
        let (t, s2) = t.with_vote("opt-1");
        assert_eq!(s2.vote_seq, 2);
        let (t, close_seq) = t.with_close();
        assert_eq!(close_seq, 4);
        assert_eq!(t.votes, 2);
        assert_eq!(t.count("opt-1"), 2);
        assert_eq!(t.count("opt-2"), 0);
    }

    #[test]
    fn projection_equals_recomputed_log() {
        let p = poll();
        let picks = ["opt-1", "opt-3", "opt-1", "opt-2", "opt-1"];
        let mut t = Tally::created();
        let mut log = Vec::new();
        for pick in picks {
            let (next, slot) = t.with_vote(pick);
            log.push(vote(slot.vote_seq, pick));
            t = next;
        }
        let rebuilt = recompute(&p, &log);
        let projected: BTreeMap<String, u64> = t
            .results(&p)
            .map(|(id, _, n)| (id.to_string(), n))
            .collect();
        assert_eq!(rebuilt, projected);
        assert_eq!(rebuilt["opt-1"], 3);
        assert_eq!(rebuilt["opt-2"], 1);
        assert_eq!(rebuilt.values().sum::<u64>(), t.votes);
    }
}
