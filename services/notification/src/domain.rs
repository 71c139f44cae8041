//! Poll state as watchers see it, the updates it produces, and the rules for
//! resuming a watch and trimming the per-poll update log. Pure: no I/O.

use serde::{Deserialize, Serialize};
use tally_api::events::v1::PollCreated;

/// Milliseconds since the Unix epoch.
pub type Millis = i64;

/// An event that cannot be applied.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{0}")]
pub struct Inconsistent(pub String);

/// One poll's current counts, plus where its stored update log starts.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PollState {
    pub poll_id: String,
    pub owner_id: String,
    pub option_ids: Vec<String>,
    pub counts: Vec<u64>,
    pub total_votes: u64,
    pub closed: bool,
    /// Sequence of the last event applied.
    pub sequence: u64,
    pub at_ms: Millis,
    /// Oldest sequence still in the update log.
    pub log_first: u64,
}

/// The poll's absolute counts after one event.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Update {
    pub poll_id: String,
    pub sequence: u64,
    pub counts: Vec<(String, u64)>,
    pub total_votes: u64,
    pub closed: bool,
    pub at_ms: Millis,
}

impl PollState {
    /// The state a PollCreated starts (sequence `sequence`, all counts 0).
    pub fn created(ev: &PollCreated, sequence: u64, at_ms: Millis) -> Result<Self, Inconsistent> {
        if ev.poll_id.is_empty() || ev.owner_id.is_empty() || ev.option_ids.is_empty() {
            return Err(Inconsistent(format!(
                "PollCreated {:?} lacks its poll id, owner or options",
                ev.poll_id
            )));
        }
        if sequence == 0 {
            return Err(Inconsistent(format!(
                "PollCreated for {} has no sequence",
                ev.poll_id
            )));
        }
        Ok(Self {
            poll_id: ev.poll_id.clone(),
            owner_id: ev.owner_id.clone(),
            option_ids: ev.option_ids.clone(),
            counts: vec![0; ev.option_ids.len()],
            total_votes: 0,
            closed: false,
            sequence,
            at_ms,
            log_first: sequence,
        })
    }

    fn advance(&mut self, sequence: u64, at_ms: Millis) -> Result<(), Inconsistent> {
        if sequence <= self.sequence {
            return Err(Inconsistent(format!(
                "event sequence {sequence} of poll {} is not after {}",
                self.poll_id, self.sequence
            )));
        }
        self.sequence = sequence;
        self.at_ms = at_ms;
        Ok(())
    }

    /// Counts one vote.
    pub fn vote(
        &mut self,
        option_id: &str,
        sequence: u64,
        at_ms: Millis,
    ) -> Result<(), Inconsistent> {
        let index = self
            .option_ids
            .iter()
            .position(|o| o == option_id)
            .ok_or_else(|| {
                Inconsistent(format!(
                    "vote for unknown option `{option_id}` of poll {}",
                    self.poll_id
                ))
            })?;
        if self.counts.len() != self.option_ids.len() {
            return Err(Inconsistent(format!(
                "stored state of poll {} has {} counts for {} options",
                self.poll_id,
                self.counts.len(),
                self.option_ids.len()
            )));
        }
        self.advance(sequence, at_ms)?;
        if let Some(count) = self.counts.get_mut(index) {
            *count += 1;
        }
        self.total_votes += 1;
        Ok(())
    }

    /// Marks the poll closed.
    pub fn close(&mut self, sequence: u64, at_ms: Millis) -> Result<(), Inconsistent> {
        self.advance(sequence, at_ms)?;
        self.closed = true;
        Ok(())
    }

    /// The update describing the current state.
    pub fn update(&self) -> Update {
        Update {
            poll_id: self.poll_id.clone(),
            sequence: self.sequence,
            counts: self
                .option_ids
                .iter()
                .cloned()
                .zip(self.counts.iter().copied())
                .collect(),
            total_votes: self.total_votes,
            closed: self.closed,
            at_ms: self.at_ms,
        }
    }

    /// Moves `log_first` so the log keeps at most `capacity` sequences up to
    /// the current one; returns the sequences to delete (at most `max_deletes`,
    /// the oldest first).
    pub fn trim_log(&mut self, capacity: u64, max_deletes: u64) -> Vec<u64> {
        let capacity = capacity.max(1);
        let first = (self.sequence + 1)
            .saturating_sub(capacity)
            .max(self.log_first);
        let from = self.log_first.max(first.saturating_sub(max_deletes));
        self.log_first = first;
        (from..first).collect()
    }
}

/// How a watch starts.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ResumePlan {
    /// Send the current state first; `resume_unavailable` when a resume was
    /// asked for but the log no longer reaches back to it.
    Snapshot { resume_unavailable: bool },
    /// Send the logged updates after `after`, then live.
    FromLog { after: u64 },
    /// Nothing to catch up (the client is at or past this replica's state):
    /// live updates after `after`.
    Live { after: u64 },
}

/// Where a watch asking to resume after `resume_after` starts.
pub fn plan_resume(state: &PollState, resume_after: u64) -> ResumePlan {
    if resume_after == 0 {
        ResumePlan::Snapshot {
            resume_unavailable: false,
        }
    } else if resume_after >= state.sequence {
        ResumePlan::Live {
            after: resume_after,
        }
    } else if state.log_first <= resume_after + 1 {
        ResumePlan::FromLog {
            after: resume_after,
        }
    } else {
        ResumePlan::Snapshot {
            resume_unavailable: true,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn state() -> PollState {
        let ev = PollCreated {
            poll_id: "p".into(),
            owner_id: "u".into(),
            question: "q".into(),
            option_ids: vec!["opt-1".into(), "opt-2".into()],
            option_texts: vec!["a".into(), "b".into()],
            closes_at: None,
        };
        PollState::created(&ev, 1, 10).expect("created")
    }

    #[test]
    fn votes_and_close_advance_the_sequence() {
        let mut s = state();
        s.vote("opt-2", 2, 11).expect("vote");
        s.vote("opt-2", 3, 12).expect("vote");
        s.vote("opt-1", 4, 13).expect("vote");
        s.close(5, 14).expect("close");
        let u = s.update();
        assert_eq!(u.sequence, 5);
        assert_eq!(
            u.counts,
            vec![("opt-1".to_string(), 1), ("opt-2".to_string(), 2)]
        );
        assert_eq!(u.total_votes, 3);
        assert!(u.closed);
    }

    #[test]
    fn stale_sequences_and_unknown_options_are_inconsistent() {
        let mut s = state();
        s.vote("opt-1", 2, 0).expect("vote");
        assert!(s.vote("opt-1", 2, 0).is_err());
        assert!(s.vote("nope", 3, 0).is_err());
        assert_eq!(s.total_votes, 1);
    }

    #[test]
    fn trimming_keeps_the_last_capacity_sequences() {
        let mut s = state();
        for seq in 2..=5 {
            s.vote("opt-1", seq, 0).expect("vote");
            s.trim_log(3, 100);
        }
        assert_eq!(s.log_first, 3);
        s.vote("opt-1", 6, 0).expect("vote");
        assert_eq!(s.trim_log(3, 100), vec![3]);
        assert_eq!(s.log_first, 4);
        s.sequence = 100;
        assert_eq!(s.trim_log(3, 2), vec![96, 97]);
        assert_eq!(s.log_first, 98);
    }

    #[test]
    fn resume_plans() {
        let mut s = state();
        for seq in 2..=10 {
            s.vote("opt-1", seq, 0).expect("vote");
        }
        s.log_first = 5;
        assert_eq!(
            plan_resume(&s, 0),
            ResumePlan::Snapshot {
                resume_unavailable: false
            }
        );
        assert_eq!(plan_resume(&s, 10), ResumePlan::Live { after: 10 });
        assert_eq!(plan_resume(&s, 12), ResumePlan::Live { after: 12 });
        assert_eq!(plan_resume(&s, 4), ResumePlan::FromLog { after: 4 });
        assert_eq!(plan_resume(&s, 7), ResumePlan::FromLog { after: 7 });
        assert_eq!(
            plan_resume(&s, 3),
            ResumePlan::Snapshot {
                resume_unavailable: true
            }
        );
    }
}
