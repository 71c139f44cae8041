//! The load of a run, through the gateway with the SDK: a few users and polls set up first,
//! then each method called at its rate (open loop: a call starts every tick whether or not
//! the previous ones answered), every outcome and latency recorded; votes are kept with their
//! idempotency keys so that unknown outcomes can be settled after the faults are cleared.

use super::saga::{self, Started, Subscriber};
use super::scenario::{Load, Method};
use super::verdict::{Call, Counts};
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tally_sdk::{Client, Credentials, code_name};
use tokio::task::JoinSet;
use tokio::time::{Instant, MissedTickBehavior};

/// Calls per second one load user makes at most (the gateway limits each user to 20).
pub const PER_USER_RATE: f64 = 8.0;
/// Most load users (and the pause between setup calls keeps sign-ups under the IP limit).
pub const MAX_USERS: usize = 50;
/// Pause between two setup calls.
pub const SETUP_PAUSE: Duration = Duration::from_millis(110);
/// Most polls a run creates.
pub const MAX_POLLS: usize = 500;
/// Most calls in flight at once; a tick finding none free waits for one.
pub const MAX_IN_FLIGHT: usize = 512;
/// How long after the load a vote that failed during the run may take to settle (and a
/// results read to succeed): long enough for a restarted service and an opened breaker.
pub const SETTLE_WINDOW: Duration = Duration::from_secs(30);
/// Pause between two settle attempts.
pub const SETTLE_PAUSE: Duration = Duration::from_millis(300);
/// The options of every load poll.
const OPTIONS: [&str; 2] = ["red", "blue"];
/// Password of the load users.
const PASSWORD: &str = "chaos load password 1";

/// A cast vote and what is known of it.
#[derive(Debug, Clone)]
pub struct Vote {
    pub voter: usize,
    pub poll: String,
    pub option: String,
    pub key: String,
    /// `Some(true)` accepted, `Some(false)` refused, `None` unknown.
    pub accepted: Option<bool>,
}

/// What the load recorded.
#[derive(Debug, Default)]
pub struct Recording {
    pub calls: Vec<Call>,
    pub votes: Vec<Vote>,
    pub started: Vec<Started>,
}

/// The users and polls the load uses.
pub struct Fixture {
    pub users: Vec<Client>,
    /// Each load user's email and the session its setup login wrote (same order as `users`).
    pub sessions: Vec<(String, String)>,
    /// A client without credentials, for `Login` and `RefreshAccessToken`.
    pub anon: Client,
    /// Poll ids and their option ids.
    pub polls: Vec<(String, Vec<String>)>,
    /// One user per subscription the load starts.
    pub subscribers: Vec<Subscriber>,
}

/// How many users and polls a load needs: enough users for the rate limit, enough polls
/// that every vote is a first vote of its user in its poll.
pub fn sizes(load: &Load) -> Sizes {
    let users = ((load.rate.total() / PER_USER_RATE).ceil() as usize).clamp(1, MAX_USERS);
    let votes = (load.rate.cast_vote * load.duration.as_secs_f64()).ceil() as usize;
    let polls = votes.div_ceil(users).max(1);
    let subscribers = saga::subscribers(load.rate.start_subscription, load.duration);
    Sizes {
        users,
        polls,
        subscribers,
    }
}

/// How many of each the load needs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Sizes {
    pub users: usize,
    pub polls: usize,
    pub subscribers: usize,
}

/// Signs up a user named `email` and logs in: (client with its token, user id, session).
async fn account(anon: &Client, email: &str) -> Result<(Client, String, String), String> {
    anon.sign_up(email, PASSWORD, "chaos load")
        .await
        .map_err(|e| format!("sign up {email}: {e}"))?;
    tokio::time::sleep(SETUP_PAUSE).await;
    let login = anon
        .login(email, PASSWORD)
        .await
        .map_err(|e| format!("login {email}: {e}"))?;
    tokio::time::sleep(SETUP_PAUSE).await;
    let id = login.user.map(|u| u.user_id).unwrap_or_default();
    Ok((
        anon.with_credentials(Credentials::Bearer(login.access_token)),
        id,
        login.session_token,
    ))
}

/// Signs up the users and subscribers of `sizes` (named after `run`) and creates the polls,
/// through the gateway at `gateway`.
pub async fn setup(
    gateway: &str,
    run: &str,
    sizes: Sizes,
    timeout: Duration,
) -> Result<Fixture, String> {
    let Sizes {
        users,
        polls,
        subscribers,
    } = sizes;
    if polls > MAX_POLLS {
        return Err(format!(
            "the load needs {polls} polls (CastVote rate x duration / users); at most {MAX_POLLS}"
        ));
    }
    if subscribers > saga::MAX_SUBSCRIBERS {
        return Err(format!(
            "the load needs {subscribers} subscribers (StartSubscription rate x duration); at most {}",
            saga::MAX_SUBSCRIBERS
        ));
    }
    let channel = tonic::transport::Endpoint::from_shared(tally_sdk::normalize_addr(gateway))
        .map_err(|e| format!("gateway {gateway}: {e}"))?
        .connect_lazy();
    let anon = Client::from_channels(channel.clone(), channel.clone()).with_timeout(timeout);
    let mut fx = Fixture {
        users: Vec::new(),
        sessions: Vec::new(),
        anon: anon.clone(),
        polls: Vec::new(),
        subscribers: Vec::new(),
    };
    for i in 0..users {
        let email = format!("chaos-{run}-{i}@example.com");
        let (client, _, session) = account(&anon, &email).await?;
        fx.users.push(client);
        fx.sessions.push((email, session));
    }
    for i in 0..subscribers {
        let (client, user_id, _) =
            account(&anon, &format!("chaos-{run}-sub-{i}@example.com")).await?;
        fx.subscribers.push(Subscriber {
            client,
            gateway: channel.clone(),
            user_id,
        });
    }
    for p in 0..polls {
        let owner = &fx.users[p % users];
        let poll = owner
            .create_poll(&format!("chaos {run} #{p}"), OPTIONS, None)
            .await
            .map_err(|e| format!("create poll: {e}"))?;
        let options = poll.options.iter().map(|o| o.option_id.clone()).collect();
        fx.polls.push((poll.poll_id, options));
        tokio::time::sleep(SETUP_PAUSE / 2).await;
    }
    Ok(fx)
}

/// Calls `method` at `rate` per second until `until`.
pub async fn drive(
    method: Method,
    rate: f64,
    until: Instant,
    fx: Arc<Fixture>,
    rec: Arc<Mutex<Recording>>,
) {
    if rate <= 0.0 {
        return;
    }
    let permits = Arc::new(tokio::sync::Semaphore::new(MAX_IN_FLIGHT));
    let mut tick = tokio::time::interval(Duration::from_secs_f64(1.0 / rate));
    tick.set_missed_tick_behavior(MissedTickBehavior::Skip);
    let mut calls = JoinSet::new();
    let mut n = 0usize;
    loop {
        tick.tick().await;
        if Instant::now() >= until {
            break;
        }
        let Ok(permit) = permits.clone().acquire_owned().await else {
            break;
        };
        let (fx, rec) = (fx.clone(), rec.clone());
        calls.spawn(async move {
            call(method, n, &fx, &rec).await;
            drop(permit);
        });
        n += 1;
    }
    while calls.join_next().await.is_some() {}
}

/// One call; the `n`th of its method.
async fn call(method: Method, n: usize, fx: &Fixture, rec: &Mutex<Recording>) {
    let users = fx.users.len();
    let started = Instant::now();
    let (result, vote) = match method {
        Method::GetPoll => {
            let (poll, _) = &fx.polls[n % fx.polls.len()];
            (fx.users[n % users].get_poll(poll).await.map(|_| ()), None)
        }
        Method::GetResults => {
            let (poll, _) = &fx.polls[n % fx.polls.len()];
            (
                fx.users[n % users].get_results(poll).await.map(|_| ()),
                None,
            )
        }
        Method::CastVote => {
            let Some((poll, options)) = fx.polls.get(n / users) else {
                return; // every pair used: sizes() made enough for the declared load
            };
            let option = options[n % options.len()].clone();
            let key = uuid::Uuid::new_v4().to_string();
            let voter = n % users;
            let r = fx.users[voter].cast_vote(poll, &option, &key).await;
            let vote = Vote {
                voter,
                poll: poll.clone(),
                option,
                key,
                accepted: r.is_ok().then_some(true),
            };
            (r.map(|_| ()), Some(vote))
        }
        Method::Login => {
            let (email, _) = &fx.sessions[n % fx.sessions.len()];
            (fx.anon.login(email, PASSWORD).await.map(|_| ()), None)
        }
        Method::RefreshAccessToken => {
            let (_, session) = &fx.sessions[n % fx.sessions.len()];
            (
                fx.anon.refresh_access_token(session).await.map(|_| ()),
                None,
            )
        }
        Method::StartSubscription => {
            let Some(sub) = fx.subscribers.get(n) else {
                return; // one subscriber per call of the declared load
            };
            let key = uuid::Uuid::new_v4().to_string();
            let r = saga::start(sub, &key).await;
            let id = r.as_ref().ok().cloned();
            if let Ok(mut rec) = rec.lock() {
                rec.started.push(Started {
                    subscriber: n,
                    key,
                    id,
                });
            }
            (r.map(|_| ()), None)
        }
    };
    let latency = started.elapsed();
    let error = result.err().map(|e| code_name(e.code()));
    if let Ok(mut r) = rec.lock() {
        r.calls.push(Call {
            method,
            latency,
            error,
        });
        r.votes.extend(vote);
    }
}

/// Learns the outcome of every vote that failed: sending it again with the same key
/// returns the first vote if it was taken, or takes it now (at the setup pace).
pub async fn settle(fx: &Fixture, votes: &mut [Vote]) {
    let deadline = Instant::now() + SETTLE_WINDOW;
    for v in votes.iter_mut().filter(|v| v.accepted.is_none()) {
        loop {
            match fx.users[v.voter]
                .cast_vote(&v.poll, &v.option, &v.key)
                .await
            {
                Ok(_) => v.accepted = Some(true),
                Err(e) if definite(e.code()) => v.accepted = Some(false),
                Err(_) if Instant::now() < deadline => {
                    tokio::time::sleep(SETTLE_PAUSE).await;
                    continue;
                }
                Err(_) => {}
            }
            break;
        }
        tokio::time::sleep(SETUP_PAUSE).await;
    }
}

/// A refusal that says the vote was not and will not be taken.
fn definite(code: tonic::Code) -> bool {
    use tonic::Code::*;
    matches!(
        code,
        InvalidArgument | NotFound | AlreadyExists | PermissionDenied | FailedPrecondition
    )
}

/// Accepted votes per poll and option.
pub fn accepted(votes: &[Vote]) -> Counts {
    let mut c = Counts::new();
    for v in votes.iter().filter(|v| v.accepted == Some(true)) {
        *c.entry(v.poll.clone())
            .or_default()
            .entry(v.option.clone())
            .or_insert(0) += 1;
    }
    c
}

/// Polling's results for every load poll, read at the setup pace (under the rate limit),
/// each read tried again a few times.
pub async fn results(fx: &Fixture) -> Result<Counts, String> {
    let mut c = Counts::new();
    let deadline = Instant::now() + SETTLE_WINDOW;
    for (i, (poll, _)) in fx.polls.iter().enumerate() {
        let user = &fx.users[i % fx.users.len()];
        let r = loop {
            match user.get_results(poll).await {
                Ok(r) => break r,
                Err(_) if Instant::now() < deadline => {
                    tokio::time::sleep(SETTLE_PAUSE).await;
                }
                Err(e) => return Err(format!("results of {poll}: {e}")),
            }
        };
        tokio::time::sleep(SETUP_PAUSE / fx.users.len().max(1) as u32).await;
        let per = c.entry(poll.clone()).or_default();
        for o in r.results {
            per.insert(o.option_id, o.votes);
        }
    }
    Ok(c)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::chaos::scenario::Rates;

    fn load(secs: u64, get_poll: f64, cast_vote: f64) -> Load {
        Load {
            duration: Duration::from_secs(secs),
            timeout: Duration::from_secs(1),
            rate: Rates {
                get_poll,
                get_results: 0.0,
                cast_vote,
                ..Rates::default()
            },
        }
    }

    #[test]
    fn enough_users_for_the_rate_limit_and_polls_for_first_votes() {
        let s = |l: Load| {
            let s = sizes(&l);
            (s.users, s.polls)
        };
        assert_eq!(s(load(10, 5.0, 0.0)), (1, 1));
        assert_eq!(s(load(10, 15.0, 5.0)), (3, 17));
        assert_eq!(s(load(3, 1.0, 2.5)), (1, 8));
        assert_eq!(s(load(10, 5000.0, 0.0)).0, MAX_USERS);
        let mut l = load(4, 1.0, 0.0);
        l.rate.start_subscription = 1.5;
        assert_eq!(sizes(&l).subscribers, 6);
        assert_eq!(sizes(&l).users, 1);
    }

    #[test]
    fn only_accepted_votes_count() {
        let vote = |poll: &str, option: &str, accepted| Vote {
            voter: 0,
            poll: poll.into(),
            option: option.into(),
            key: String::new(),
            accepted,
        };
        let c = accepted(&[
            vote("p", "a", Some(true)),
            vote("p", "a", Some(true)),
            vote("p", "b", Some(false)),
            vote("q", "b", None),
        ]);
        assert_eq!(c.len(), 1);
        assert_eq!(c["p"]["a"], 2);
        assert!(!c["p"].contains_key("b"));
    }
}
