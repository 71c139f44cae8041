//! The `sessions_survive` invariant: every session the setup's logins wrote, before any
//! fault, still refreshes an access token after the run (say, after the redis-server that
//! holds them was killed and restarted). A refusal other than UNAUTHENTICATED (the session
//! is gone) is retried until [`SETTLE_WINDOW`] has passed.

use super::load::{Fixture, SETTLE_PAUSE, SETTLE_WINDOW, SETUP_PAUSE};
use super::verdict::Verdict;
use tally_sdk::code_name;
use tokio::time::Instant;

/// How each setup session fared after the run.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct Outcome {
    pub valid: usize,
    /// Refused with UNAUTHENTICATED: the session was lost.
    pub lost: Vec<String>,
    /// Still failing otherwise when the window closed: (email, last code).
    pub unknown: Vec<(String, String)>,
}

/// Refreshes every setup session once it answers definitely.
pub async fn check(fx: &Fixture) -> Outcome {
    let deadline = Instant::now() + SETTLE_WINDOW;
    let mut out = Outcome::default();
    for (email, session) in &fx.sessions {
        loop {
            match fx.anon.refresh_access_token(session).await {
                Ok(_) => out.valid += 1,
                Err(e) if e.code() == tonic::Code::Unauthenticated => out.lost.push(email.clone()),
                Err(_) if Instant::now() < deadline => {
                    tokio::time::sleep(SETTLE_PAUSE).await;
                    continue;
                }
                Err(e) => out
                    .unknown
                    .push((email.clone(), code_name(e.code()).to_string())),
            }
            break;
        }
        tokio::time::sleep(SETUP_PAUSE).await;
    }
    out
}

/// The verdict on an [`Outcome`].
pub fn survived(o: &Outcome) -> Verdict {
    let total = o.valid + o.lost.len() + o.unknown.len();
    let mut detail = format!(
        "{} of {total} session(s) from before the faults still refresh",
        o.valid
    );
    if !o.lost.is_empty() {
        detail.push_str(&format!("; lost (UNAUTHENTICATED): {}", o.lost.join(", ")));
    }
    if !o.unknown.is_empty() {
        let list: Vec<String> = o
            .unknown
            .iter()
            .map(|(e, c)| format!("{e} ({c})"))
            .collect();
        detail.push_str(&format!(
            "; still failing after {}s: {}",
            SETTLE_WINDOW.as_secs(),
            list.join(", ")
        ));
    }
    Verdict {
        name: "sessions from before the faults still valid".into(),
        met: total > 0 && o.valid == total,
        detail,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_lost_or_unanswered_session_fails_the_verdict_by_name() {
        let ok = Outcome {
            valid: 3,
            ..Outcome::default()
        };
        assert!(survived(&ok).met);
        let lost = Outcome {
            valid: 2,
            lost: vec!["a@example.com".into()],
            unknown: vec![],
        };
        let v = survived(&lost);
        assert!(!v.met && v.detail.contains("a@example.com"), "{}", v.detail);
        let unknown = Outcome {
            valid: 2,
            lost: vec![],
            unknown: vec![("b@example.com".into(), "UNAVAILABLE".into())],
        };
        let v = survived(&unknown);
        assert!(
            !v.met && v.detail.contains("b@example.com (UNAVAILABLE)"),
            "{}",
            v.detail
        );
        assert!(
            !survived(&Outcome::default()).met,
            "nothing checked is not a pass"
        );
    }
}
