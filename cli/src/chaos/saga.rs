//! Subscriptions under chaos: the `StartSubscription` load (each call by a user of its own,
//! with an idempotency key so an unknown outcome can be learnt afterwards), and the saga
//! invariant: every saga ends (ACTIVE, FAILED or CANCELLED) and the ledger reconciles with
//! it (one kept charge, the subscription's own, per ACTIVE; none for the others; never two
//! charges taken for one user).

use super::verdict::Verdict;
use std::time::Duration;
use tally_api::billing::v1 as bpb;
use tally_api::billing::v1::billing_service_client::BillingServiceClient;
use tally_api::payment::v1 as ppb;
use tally_api::payment::v1::payment_service_client::PaymentServiceClient;
use tally_sdk::Client;
use tonic::transport::Channel;

/// Most subscribers (one sign-up each) a run creates.
pub const MAX_SUBSCRIBERS: usize = 200;
/// Deadline of one read of payment's ledger.
pub const LEDGER_TIMEOUT: Duration = Duration::from_secs(5);
/// Pause between two looks at a saga that has not ended yet.
pub const SAGA_POLL: Duration = Duration::from_millis(250);
/// Pause between two attempts to learn the subscription of a start whose answer was lost
/// (for up to [`super::load::SETTLE_WINDOW`] after the load).
pub const SETTLE_PAUSE: Duration = Duration::from_millis(500);

/// A user who starts one subscription.
pub struct Subscriber {
    pub client: Client,
    /// The gateway, which routes billing's API.
    pub gateway: Channel,
    pub user_id: String,
}

/// A subscription start and what is known of it.
#[derive(Debug, Clone)]
pub struct Started {
    pub subscriber: usize,
    pub key: String,
    /// The subscription id once an answer came back.
    pub id: Option<String>,
}

/// How many subscribers the load needs: one per `StartSubscription` call.
pub fn subscribers(rate: f64, duration: Duration) -> usize {
    (rate * duration.as_secs_f64()).ceil() as usize
}

/// Starts `s`'s Pro subscription with `key`.
pub async fn start(s: &Subscriber, key: &str) -> Result<String, tally_sdk::Error> {
    let req = s.client.request(bpb::StartSubscriptionRequest {
        plan_id: bpb::PlanId::Pro as i32,
        idempotency_key: key.to_string(),
    })?;
    let sub = BillingServiceClient::new(s.gateway.clone())
        .start_subscription(req)
        .await?
        .into_inner()
        .subscription
        .ok_or(tally_sdk::Error::MissingField("subscription"))?;
    Ok(sub.subscription_id)
}

async fn get(s: &Subscriber, id: &str) -> Result<bpb::Subscription, tally_sdk::Error> {
    let req = s.client.request(bpb::GetSubscriptionRequest {
        subscription_id: id.to_string(),
    })?;
    BillingServiceClient::new(s.gateway.clone())
        .get_subscription(req)
        .await?
        .into_inner()
        .subscription
        .ok_or(tally_sdk::Error::MissingField("subscription"))
}

/// Learns the id of every start whose answer was lost: the same key returns the same
/// subscription (or starts it now).
pub async fn settle(subs: &[Subscriber], started: &mut [Started]) {
    let deadline = tokio::time::Instant::now() + super::load::SETTLE_WINDOW;
    for s in started.iter_mut().filter(|s| s.id.is_none()) {
        loop {
            if let Ok(id) = start(&subs[s.subscriber], &s.key).await {
                s.id = Some(id);
                break;
            }
            if tokio::time::Instant::now() >= deadline {
                break;
            }
            tokio::time::sleep(SETTLE_PAUSE).await;
        }
    }
}

/// How one subscription ended, with its charges.
#[derive(Debug, Clone, PartialEq)]
pub struct Ended {
    pub id: String,
    /// `None` while the saga still runs.
    pub state: Option<bpb::SubscriptionState>,
    pub charge_id: String,
    /// The user's charges, or why the ledger could not be read.
    pub charges: Result<Vec<(String, ppb::ChargeStatus)>, String>,
}

/// Waits up to `wait` for every saga to end, then reads each user's charges from payment
/// (`payment` is its own address: the ledger is not routed through the gateway).
pub async fn observe(
    subs: &[Subscriber],
    started: &[Started],
    payment: &str,
    wait: Duration,
) -> Result<Vec<Ended>, String> {
    let deadline = tokio::time::Instant::now() + wait;
    let mut out = Vec::new();
    let channel = Channel::from_shared(format!("http://{payment}"))
        .map_err(|e| format!("payment address {payment}: {e}"))?
        .connect_lazy();
    let mut ledger = PaymentServiceClient::new(channel);
    for s in started {
        let Some(id) = &s.id else { continue };
        let sub = &subs[s.subscriber];
        let state = loop {
            let now = get(sub, id).await;
            match now {
                Ok(now) if now.saga_completed => break Some(now),
                _ if tokio::time::Instant::now() >= deadline => break now.ok(),
                _ => tokio::time::sleep(SAGA_POLL).await,
            }
        };
        let running = !state.as_ref().is_some_and(|s| s.saga_completed);
        let charges = if running {
            // Not judged while the saga runs; payment may well be the reason it runs.
            Ok(Vec::new())
        } else {
            let mut req = tonic::Request::new(ppb::ListChargesRequest {
                customer_id: sub.user_id.clone(),
            });
            req.set_timeout(LEDGER_TIMEOUT);
            match ledger.list_charges(req).await {
                Ok(r) => Ok(r
                    .into_inner()
                    .charges
                    .into_iter()
                    .map(|c| {
                        let status = ppb::ChargeStatus::try_from(c.status)
                            .unwrap_or(ppb::ChargeStatus::Unspecified);
                        (c.charge_id, status)
                    })
                    .collect()),
                Err(e) => Err(format!("{:?}: {}", e.code(), e.message())),
            }
        };
        out.push(Ended {
            id: id.clone(),
            state: state.as_ref().filter(|s| s.saga_completed).map(|s| {
                bpb::SubscriptionState::try_from(s.state)
                    .unwrap_or(bpb::SubscriptionState::Unspecified)
            }),
            charge_id: state.map(|s| s.charge_id).unwrap_or_default(),
            charges,
        });
    }
    Ok(out)
}

/// The invariant on what [`observe`] saw (`unknown`: starts whose outcome stayed unknown).
pub fn sagas_ended(ended: &[Ended], unknown: usize, wait: Duration) -> Verdict {
    use bpb::SubscriptionState as S;
    use ppb::ChargeStatus as C;
    let mut wrong = Vec::new();
    let (mut active, mut failed) = (0, 0);
    for e in ended {
        let Some(state) = e.state else {
            wrong.push(format!("{}: saga still running after {wait:?}", e.id));
            continue;
        };
        let charges = match &e.charges {
            Ok(c) => c,
            Err(why) => {
                wrong.push(format!("{}: ledger not readable ({why})", e.id));
                continue;
            }
        };
        let kept: Vec<&String> = charges
            .iter()
            .filter(|(_, s)| *s == C::Succeeded)
            .map(|(id, _)| id)
            .collect();
        let taken = charges
            .iter()
            .filter(|(_, s)| matches!(s, C::Succeeded | C::Refunded))
            .count();
        if taken > 1 {
            wrong.push(format!("{}: charged {taken} times", e.id));
        }
        match state {
            S::Active => {
                active += 1;
                if kept != [&e.charge_id] {
                    wrong.push(format!(
                        "{}: ACTIVE with kept charges {kept:?}, not its own {:?}",
                        e.id, e.charge_id
                    ));
                }
            }
            S::Failed | S::Cancelled => {
                failed += 1;
                if !kept.is_empty() {
                    wrong.push(format!(
                        "{}: ended without a plan but charged {kept:?}",
                        e.id
                    ));
                }
            }
            other => wrong.push(format!("{}: ended {other:?}", e.id)),
        }
    }
    if unknown > 0 {
        wrong.push(format!("{unknown} start(s) with an unknown outcome"));
    }
    let shown: Vec<String> = wrong.iter().take(MAX_SHOWN).cloned().collect();
    let more = wrong.len().saturating_sub(MAX_SHOWN);
    Verdict {
        name: "invariant every saga completed or compensated".into(),
        met: wrong.is_empty(),
        detail: format!(
            "{} subscriptions: {active} ACTIVE, {failed} FAILED/CANCELLED, ledger {}{}{}",
            ended.len(),
            if wrong.is_empty() {
                "reconciles"
            } else {
                "or sagas wrong: "
            },
            shown.join("; "),
            if more > 0 {
                format!("; and {more} more")
            } else {
                String::new()
            }
        ),
    }
}

/// Most problems a verdict line lists by name.
const MAX_SHOWN: usize = 5;

#[cfg(test)]
mod tests {
    use super::*;
    use bpb::SubscriptionState as S;
    use ppb::ChargeStatus as C;

    fn ended(state: Option<S>, charge: &str, charges: &[(&str, C)]) -> Ended {
        Ended {
            id: format!("sub-{charge}"),
            state,
            charge_id: charge.into(),
            charges: Ok(charges.iter().map(|(i, s)| (i.to_string(), *s)).collect()),
        }
    }

    const WAIT: Duration = Duration::from_secs(1);

    #[test]
    fn ended_sagas_with_a_reconciled_ledger_meet_it() {
        let v = sagas_ended(
            &[
                ended(Some(S::Active), "c1", &[("c1", C::Succeeded)]),
                ended(Some(S::Failed), "", &[("c2", C::Declined)]),
                ended(Some(S::Failed), "c3", &[("c3", C::Refunded)]),
            ],
            0,
            WAIT,
        );
        assert!(v.met, "{v:?}");
        assert_eq!(
            v.detail,
            "3 subscriptions: 1 ACTIVE, 2 FAILED/CANCELLED, ledger reconciles"
        );
    }

    #[test]
    fn a_running_saga_a_double_charge_or_a_kept_charge_without_plan_break_it() {
        for (e, why) in [
            (ended(None, "c1", &[]), "still running"),
            (
                ended(
                    Some(S::Active),
                    "c1",
                    &[("c1", C::Succeeded), ("c2", C::Succeeded)],
                ),
                "charged 2 times",
            ),
            (
                ended(Some(S::Active), "c1", &[("c9", C::Succeeded)]),
                "not its own",
            ),
            (ended(Some(S::Active), "c1", &[]), "not its own"),
            (
                ended(Some(S::Failed), "c1", &[("c1", C::Succeeded)]),
                "without a plan but charged",
            ),
            (ended(Some(S::Pending), "", &[]), "ended"),
        ] {
            let v = sagas_ended(&[e], 0, WAIT);
            assert!(!v.met && v.detail.contains(why), "{why}: {v:?}");
        }
        let mut unreadable = ended(Some(S::Active), "c1", &[]);
        unreadable.charges = Err("DeadlineExceeded".into());
        let v = sagas_ended(&[unreadable], 0, WAIT);
        assert!(!v.met && v.detail.contains("ledger not readable (DeadlineExceeded)"));
        let v = sagas_ended(&[], 2, WAIT);
        assert!(!v.met && v.detail.contains("2 start(s) with an unknown outcome"));
    }
}
