//! Plan limits: how many polls an owner may have open at once, which grant
//! wins when several arrive, and when a new poll is refused.
//!
//! The limit comes from the owner's latest `PlanLimitsGranted` (billing's
//! events), or from `polling.default_max_open_polls` when none is known.
//! In both, 0 means unlimited.

use super::{DomainError, Millis};
use serde::{Deserialize, Serialize};

/// The limits billing granted one user, as polling keeps them.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PlanLimits {
    /// The plan's name, e.g. `pro` (for operators; no rule depends on it).
    pub plan: String,
    /// Most polls open at once; 0 = unlimited.
    pub max_open_polls: u32,
    /// The grant's sequence within the user's billing aggregate: a grant
    /// with a sequence not above this one is older and ignored.
    pub sequence: u64,
}

impl PlanLimits {
    /// Whether `incoming` replaces `current` (a newer grant of the same user).
    /// Grants arrive in order, but a redriven dead letter or a replay may
    /// bring an older one back; it must not undo a newer plan.
    pub fn supersedes(incoming: &PlanLimits, current: Option<&PlanLimits>) -> bool {
        current.is_none_or(|c| incoming.sequence > c.sequence)
    }
}

/// The limit that applies to an owner: the granted one if known, else the
/// configured default. `None` = unlimited.
pub fn effective_limit(granted: Option<&PlanLimits>, default_max_open_polls: u32) -> Option<u32> {
    let max = granted.map_or(default_max_open_polls, |g| g.max_open_polls);
    (max > 0).then_some(max)
}

/// The refusal when `open` polls are already open and `limit` is the cap.
pub fn check_open_polls(open: u64, limit: Option<u32>) -> Result<(), DomainError> {
    match limit {
        Some(max) if open >= u64::from(max) => Err(DomainError::ResourceExhausted(format!(
            "plan limit: {max} open polls; upgrade or close a poll"
        ))),
        _ => Ok(()),
    }
}

/// Whether a poll indexed as open (not closed by its owner) with deadline
/// `closes_at` still counts against the limit at `now`.
pub fn still_open(closes_at: Option<Millis>, now: Millis) -> bool {
    closes_at.is_none_or(|deadline| now < deadline)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn grant(max: u32, sequence: u64) -> PlanLimits {
        PlanLimits {
            plan: "pro".into(),
            max_open_polls: max,
            sequence,
        }
    }

    #[test]
    fn granted_limits_win_over_the_default_and_zero_is_unlimited() {
        assert_eq!(effective_limit(None, 0), None);
        assert_eq!(effective_limit(None, 2), Some(2));
        assert_eq!(effective_limit(Some(&grant(50, 1)), 2), Some(50));
        assert_eq!(effective_limit(Some(&grant(3, 1)), 0), Some(3));
        assert_eq!(effective_limit(Some(&grant(0, 1)), 2), None);
    }

    #[test]
    fn refuses_at_the_limit_with_resource_exhausted() {
        assert!(check_open_polls(1, Some(2)).is_ok());
        assert!(check_open_polls(1_000_000, None).is_ok());
        let e = check_open_polls(2, Some(2)).expect_err("at the limit");
        assert_eq!(
            e,
            DomainError::ResourceExhausted(
                "plan limit: 2 open polls; upgrade or close a poll".into()
            )
        );
        assert!(
            check_open_polls(7, Some(3)).is_err(),
            "above after a downgrade"
        );
    }

    #[test]
    fn only_newer_grants_supersede() {
        assert!(PlanLimits::supersedes(&grant(50, 1), None));
        assert!(PlanLimits::supersedes(&grant(3, 2), Some(&grant(50, 1))));
        assert!(!PlanLimits::supersedes(&grant(50, 1), Some(&grant(3, 2))));
        assert!(!PlanLimits::supersedes(&grant(50, 2), Some(&grant(50, 2))));
    }

    #[test]
    fn deadline_passed_polls_stop_counting() {
        assert!(still_open(None, 10));
        assert!(still_open(Some(11), 10));
        assert!(!still_open(Some(10), 10));
    }
}
