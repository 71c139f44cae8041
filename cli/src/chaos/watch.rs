//! The notification invariant: a watcher per load poll (a few of them) follows
//! `NotificationService/WatchPoll` through the gateway for the whole run; when its stream
//! breaks it watches again from the last sequence it saw. Every update must come in order
//! (each sequence the previous one plus one), no resume may fall back to a snapshot, and at
//! the end each watcher's counts must equal polling's results for its poll.

use super::verdict::{Counts, Verdict};
use std::collections::BTreeMap;
use std::time::Duration;
use tally_api::notification::v1 as npb;
use tally_api::notification::v1::notification_service_client::NotificationServiceClient;
use tally_sdk::Client;
use tokio::sync::watch;
use tonic::transport::Channel;

/// Most polls watched in one run.
pub const MAX_WATCHED: usize = 4;
/// First pause before watching again after a stream broke; it doubles while the watch keeps
/// failing (up to [`MAX_RESUME_PAUSE`]) and starts over after an update.
pub const RESUME_PAUSE: Duration = Duration::from_millis(100);
/// Longest pause between two watch attempts.
pub const MAX_RESUME_PAUSE: Duration = Duration::from_secs(1);
/// How long the watchers may take after the load to show polling's final results.
pub const CATCH_UP: Duration = Duration::from_secs(15);

/// What one watcher saw.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Seen {
    /// The last sequence received (0 before the first update).
    pub last: u64,
    pub updates: u64,
    /// Times the stream broke and was watched again.
    pub resumes: u64,
    /// Updates out of order, or resumes that fell back to a snapshot.
    pub gaps: Vec<String>,
    /// The poll's counts by option after the last update.
    pub counts: BTreeMap<String, u64>,
}

impl Seen {
    /// Takes one response of the stream.
    pub fn take(&mut self, r: &npb::WatchPollResponse) {
        let Some(u) = &r.update else { return };
        if r.resume_unavailable {
            self.gaps.push(format!(
                "resume after {} fell back to a snapshot at {}",
                self.last, u.sequence
            ));
        } else if self.last == 0 && r.snapshot {
            // The first state: nothing to compare with.
        } else if u.sequence != self.last + 1 {
            self.gaps
                .push(format!("{} after {}", u.sequence, self.last));
        }
        self.last = self.last.max(u.sequence);
        self.updates += 1;
        self.counts = u
            .counts
            .iter()
            .map(|c| (c.option_id.clone(), c.votes))
            .collect();
    }
}

/// Follows `poll` until `stop` turns true, publishing what it saw after each update.
pub async fn follow(
    gateway: Channel,
    user: Client,
    poll: String,
    seen: watch::Sender<Seen>,
    mut stop: watch::Receiver<bool>,
) {
    let mut client = NotificationServiceClient::new(gateway);
    let mut pause = RESUME_PAUSE;
    loop {
        let resume = seen.borrow().last;
        let req = user.request(npb::WatchPollRequest {
            poll_id: poll.clone(),
            resume_after_sequence: resume,
        });
        let Ok(mut req) = req else { return };
        // A stream has no deadline: the client's call timeout is for unary calls.
        req.metadata_mut().remove("grpc-timeout");
        let opened = tokio::select! {
            r = client.watch_poll(req) => r,
            _ = stop.wait_for(|s| *s) => return,
        };
        if let Ok(stream) = opened {
            let mut stream = stream.into_inner();
            loop {
                let next = tokio::select! {
                    m = stream.message() => m,
                    _ = stop.wait_for(|s| *s) => return,
                };
                match next {
                    Ok(Some(r)) => {
                        seen.send_modify(|s| s.take(&r));
                        pause = RESUME_PAUSE;
                    }
                    _ => break,
                }
            }
        }
        seen.send_modify(|s| s.resumes += 1);
        tokio::select! {
            _ = tokio::time::sleep(pause) => {}
            _ = stop.wait_for(|s| *s) => return,
        }
        pause = (pause * 2).min(MAX_RESUME_PAUSE);
    }
}

/// Waits (up to [`CATCH_UP`]) for each watcher to show `results` of its poll, then judges.
pub async fn gapless(
    watchers: &mut [(String, watch::Receiver<Seen>)],
    results: &Counts,
) -> Verdict {
    let deadline = tokio::time::Instant::now() + CATCH_UP;
    let want = |poll: &str| {
        results
            .get(poll)
            .map(|o| {
                o.iter()
                    .filter(|(_, n)| **n > 0)
                    .map(|(k, n)| (k.clone(), *n))
                    .collect::<BTreeMap<_, _>>()
            })
            .unwrap_or_default()
    };
    let nonzero = |c: &BTreeMap<String, u64>| {
        c.iter()
            .filter(|(_, n)| **n > 0)
            .map(|(k, n)| (k.clone(), *n))
            .collect::<BTreeMap<_, _>>()
    };
    for (poll, rx) in watchers.iter_mut() {
        let target = want(poll);
        let _ =
            tokio::time::timeout_at(deadline, rx.wait_for(|s| nonzero(&s.counts) == target)).await;
    }
    let mut wrong = Vec::new();
    let (mut updates, mut resumes) = (0, 0);
    for (poll, rx) in watchers.iter() {
        let s = rx.borrow().clone();
        updates += s.updates;
        resumes += s.resumes;
        for g in &s.gaps {
            wrong.push(format!("poll {poll}: {g}"));
        }
        let target = want(poll);
        if nonzero(&s.counts) != target {
            wrong.push(format!(
                "poll {poll}: watcher ended at {:?}, polling counts {target:?}",
                s.counts
            ));
        }
    }
    Verdict {
        name: "invariant notification streams resumed without gaps".into(),
        met: wrong.is_empty(),
        detail: format!(
            "{} poll(s) watched: {updates} updates, {resumes} resume(s){}",
            watchers.len(),
            if wrong.is_empty() {
                ", every update in order, final counts match".to_string()
            } else {
                format!("; {}", wrong.join("; "))
            }
        ),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn resp(seq: u64, red: u64, snapshot: bool, unavailable: bool) -> npb::WatchPollResponse {
        npb::WatchPollResponse {
            update: Some(npb::PollUpdate {
                poll_id: "p".into(),
                sequence: seq,
                counts: vec![npb::OptionCount {
                    option_id: "red".into(),
                    votes: red,
                }],
                total_votes: red,
                ..Default::default()
            }),
            snapshot,
            resume_unavailable: unavailable,
        }
    }

    #[test]
    fn updates_in_order_across_a_resume_have_no_gap() {
        let mut s = Seen::default();
        s.take(&resp(1, 0, true, false));
        s.take(&resp(2, 1, false, false));
        s.resumes += 1;
        s.take(&resp(3, 2, false, false));
        assert!(s.gaps.is_empty(), "{s:?}");
        assert_eq!(s.counts["red"], 2);
        assert_eq!((s.last, s.updates), (3, 3));
    }

    #[test]
    fn a_skipped_or_repeated_sequence_or_a_lost_resume_is_a_gap() {
        let mut s = Seen::default();
        s.take(&resp(4, 0, true, false));
        s.take(&resp(6, 2, false, false));
        s.take(&resp(6, 2, false, false));
        s.take(&resp(9, 3, true, true));
        assert_eq!(
            s.gaps,
            [
                "6 after 4",
                "6 after 6",
                "resume after 6 fell back to a snapshot at 9"
            ]
        );
    }

    #[tokio::test(start_paused = true)]
    async fn final_counts_must_match_polling_within_the_catch_up() {
        let mut seen = Seen::default();
        seen.take(&resp(1, 0, true, false));
        seen.take(&resp(2, 1, false, false));
        let (_tx, rx) = watch::channel(seen);
        let mut results = Counts::new();
        results
            .entry("p".into())
            .or_default()
            .extend([("red".to_string(), 1), ("blue".to_string(), 0)]);
        let mut w = vec![("p".to_string(), rx)];
        let v = gapless(&mut w, &results).await;
        assert!(v.met, "{v:?}");
        results.get_mut("p").map(|o| o.insert("red".into(), 2));
        let started = tokio::time::Instant::now();
        let v = gapless(&mut w, &results).await;
        assert!(!v.met && v.detail.contains("polling counts"), "{v:?}");
        assert_eq!(started.elapsed(), CATCH_UP, "waits exactly the catch-up");
    }
}
