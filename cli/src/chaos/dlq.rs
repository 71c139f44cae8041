//! The dead-letter invariant: the dead letters of every consuming service (read through
//! its `ConsumerAdminService` on the service's own address) before and after the run; each
//! one that appeared during the run must be explained by a scenario `[[poison]]`.

use super::scenario::Poison;
use super::verdict::Verdict;
use std::collections::{BTreeMap, BTreeSet};
use std::time::Duration;
use tally_api::events::v1 as epb;
use tally_api::events::v1::consumer_admin_service_client::ConsumerAdminServiceClient;
use tonic::transport::Channel;

/// Deadline of one `ListDeadLetters` call.
pub const ADMIN_TIMEOUT: Duration = Duration::from_secs(5);

/// One dead letter: where it sits and what it holds.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
pub struct DeadLetter {
    pub service: String,
    pub consumer: String,
    pub event_id: String,
    pub event_type: String,
    pub error: String,
}

/// Every dead letter of the services at `addrs` (service name → `host:port`); a service
/// without consumers (UNIMPLEMENTED) has none.
pub async fn list(addrs: &BTreeMap<String, String>) -> Result<BTreeSet<DeadLetter>, String> {
    let mut out = BTreeSet::new();
    for (service, addr) in addrs {
        let channel = Channel::from_shared(format!("http://{addr}"))
            .map_err(|e| format!("{service} address {addr}: {e}"))?
            .connect_lazy();
        let mut admin = ConsumerAdminServiceClient::new(channel);
        let mut req = tonic::Request::new(epb::ListDeadLettersRequest::default());
        req.set_timeout(ADMIN_TIMEOUT);
        let letters = match admin.list_dead_letters(req).await {
            Ok(r) => r.into_inner().dead_letters,
            Err(s) if s.code() == tonic::Code::Unimplemented => continue,
            Err(s) => return Err(format!("{service} ListDeadLetters: {}", s.message())),
        };
        for d in letters {
            out.insert(DeadLetter {
                service: service.clone(),
                consumer: d.consumer,
                event_id: d.event_id,
                event_type: d.event_type,
                error: d.error,
            });
        }
    }
    Ok(out)
}

fn explains(p: &Poison, d: &DeadLetter) -> bool {
    p.service == d.service
        && p.consumer.as_ref().is_none_or(|c| *c == d.consumer)
        && p.event_type.as_ref().is_none_or(|t| *t == d.event_type)
}

/// The verdict on the dead letters that are in `after` and were not in `before`.
pub fn explained(
    before: &BTreeSet<DeadLetter>,
    after: &BTreeSet<DeadLetter>,
    poison: &[Poison],
) -> Verdict {
    let mut budget: Vec<u32> = poison.iter().map(|p| p.max).collect();
    let mut unexplained = Vec::new();
    let mut new = 0;
    for d in after.difference(before) {
        new += 1;
        let slot = poison
            .iter()
            .enumerate()
            .position(|(i, p)| budget[i] > 0 && explains(p, d));
        match slot {
            Some(i) => budget[i] -= 1,
            None => unexplained.push(format!(
                "{} {} {} ({}): {}",
                d.service, d.consumer, d.event_type, d.event_id, d.error
            )),
        }
    }
    Verdict {
        name: "invariant no dead letters unexplained".into(),
        met: unexplained.is_empty(),
        detail: if unexplained.is_empty() {
            format!(
                "{new} new dead letter(s), {} explained by [[poison]]",
                new - unexplained.len()
            )
        } else {
            format!(
                "{new} new dead letter(s), {} unexplained: {}",
                unexplained.len(),
                unexplained.join("; ")
            )
        },
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn dl(service: &str, id: &str, ty: &str) -> DeadLetter {
        DeadLetter {
            service: service.into(),
            consumer: "votes".into(),
            event_id: id.into(),
            event_type: ty.into(),
            error: "boom".into(),
        }
    }

    fn poison(service: &str, ty: Option<&str>, max: u32) -> Poison {
        Poison {
            service: service.into(),
            consumer: None,
            event_type: ty.map(str::to_string),
            max,
        }
    }

    #[test]
    fn only_new_dead_letters_count_and_poison_explains_up_to_its_max() {
        let old = dl("analytics", "e0", "VoteCast");
        let before: BTreeSet<_> = [old.clone()].into();
        let after: BTreeSet<_> = [
            old,
            dl("analytics", "e1", "VoteCast"),
            dl("analytics", "e2", "VoteCast"),
        ]
        .into();
        let v = explained(&before, &before, &[]);
        assert!(v.met, "{v:?}");
        assert_eq!(v.detail, "0 new dead letter(s), 0 explained by [[poison]]");
        let v = explained(&before, &after, &[poison("analytics", Some("VoteCast"), 2)]);
        assert!(v.met, "{v:?}");
        let v = explained(&before, &after, &[poison("analytics", Some("VoteCast"), 1)]);
        assert!(
            !v.met
                && v.detail
                    .contains("1 unexplained: analytics votes VoteCast (e2)")
        );
        let v = explained(&before, &after, &[poison("notification", None, 5)]);
        assert!(!v.met && v.detail.contains("2 unexplained"), "{v:?}");
        let v = explained(
            &before,
            &after,
            &[poison("analytics", Some("PollClosed"), 5)],
        );
        assert!(!v.met, "{v:?}");
    }
}
