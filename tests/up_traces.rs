//! `tally up` traces a call end to end: a vote cast through the gateway is exported over
//! OTLP by the gateway, the sidecars and the services to the embedded receiver, as one
//! trace holding the gateway, both sidecars of each hop, polling, the `GetJwks` call polling
//! makes to verify the token, and analytics' consumer span linked to polling's publish;
//! `tally traces` lists it and `tally trace <id>` prints it as a tree. The gateway span
//! holds the authentication and rate-limit events, each hop its retry, breaker and
//! bulkhead decisions, and analytics' subscription to polling's feed is its own trace.

use serde_json::Value;
use std::process::Command;
use std::time::Duration;
use tally_api::poll::v1::poll_service_client::PollServiceClient;
use tally_api::poll::v1::{CastVoteRequest, CreatePollRequest};
use tally_api::user::v1::LoginRequest;
use tally_api::user::v1::user_service_client::UserServiceClient;
use tally_testkit::{TallyUp, bin_path};
use tokio::time::Instant;
use tonic::transport::Channel;

/// Longest wait for the exported trace to be complete in the receiver.
const EXPORTED: Duration = Duration::from_secs(60);
/// How often the receiver is asked while waiting.
const POLL_EVERY: Duration = Duration::from_millis(250);
/// A little more than the verifier's least time between two unknown-kid fetches
/// (`tally_authn::JWKS_MIN_REFETCH`), so polling fetches the rotated key set in the call.
const REFETCH_WINDOW: Duration = Duration::from_secs(6);
const CAST_VOTE: &str = "tally.poll.v1.PollService/CastVote";
const GET_JWKS: &str = "tally.user.v1.UserService/GetJwks";
const POLL_VOTED: &str = "consume tally.events.v1.PollVoted";
const SUBSCRIBE: &str = "tally.events.v1.EventFeedService/Subscribe";
/// The `service.name` the user service reports.
const USER: &str = "tally-user";

fn tally(data: &std::path::Path, args: &[&str]) -> (bool, String, String) {
    let out = Command::new(bin_path("tally"))
        .args(args)
        .arg("--data-dir")
        .arg(data)
        .output()
        .expect("run tally");
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stdout).to_string(),
        String::from_utf8_lossy(&out.stderr).to_string(),
    )
}

fn bearer<T>(msg: T, token: &str) -> tonic::Request<T> {
    let mut req = tonic::Request::new(msg);
    req.metadata_mut().insert(
        "authorization",
        format!("Bearer {token}").parse().expect("ascii"),
    );
    req
}

async fn login(users: &mut UserServiceClient<Channel>) -> String {
    users
        .login(LoginRequest {
            email: "tracer@example.com".into(),
            password: tally_testkit::TALLY_UP_PASSWORD.into(),
        })
        .await
        .expect("login")
        .into_inner()
        .access_token
}

/// Spans of `trace` whose service and name match.
fn spans<'a>(trace: &'a [Value], service: &str, name: &str) -> Vec<&'a Value> {
    trace
        .iter()
        .filter(|s| s["service"] == service && s["name"] == name)
        .collect()
}

fn has(trace: &[Value], service: &str, name: &str) -> bool {
    !spans(trace, service, name).is_empty()
}

/// The spans the vote's trace must hold, by service and name: the edge, each hop's
/// sidecars, each service's server span, polling's GetJwks call, the publish and the
/// analytics consumer.
fn expected() -> Vec<(&'static str, String)> {
    vec![
        ("tally-gateway", format!("gateway {CAST_VOTE}")),
        ("tally-gateway", format!("outbound {CAST_VOTE}")),
        ("polling-sidecar", format!("inbound {CAST_VOTE}")),
        ("polling", CAST_VOTE.to_string()),
        ("polling", GET_JWKS.to_string()),
        ("polling-sidecar", format!("outbound {GET_JWKS}")),
        ("user-sidecar", format!("inbound {GET_JWKS}")),
        (USER, GET_JWKS.to_string()),
        ("polling", "publish tally.events.v1.PollVoted".to_string()),
        ("analytics", POLL_VOTED.to_string()),
    ]
}

/// The spans of the vote's trace once every expected span has been exported (each
/// process exports on its own schedule).
async fn vote_trace(data: &std::path::Path) -> (String, Vec<Value>) {
    let deadline = Instant::now() + EXPORTED;
    let mut last = String::new();
    loop {
        let (ok, out, err) = tally(data, &["traces", "--json", "--limit", "500"]);
        assert!(ok, "tally traces failed: {err}");
        let list: Value = serde_json::from_str(&out).expect("json");
        let id = list["traces"]
            .as_array()
            .expect("traces")
            .iter()
            .find(|t| t["root"] == format!("gateway {CAST_VOTE}"))
            .and_then(|t| t["trace_id"].as_str())
            .map(str::to_string);
        if let Some(id) = id {
            let (ok, out, err) = tally(data, &["trace", &id, "--json"]);
            assert!(ok, "tally trace failed: {err}");
            let trace: Value = serde_json::from_str(&out).expect("json");
            let spans = trace["spans"].as_array().expect("spans").clone();
            if expected().iter().all(|(svc, name)| has(&spans, svc, name)) {
                return (id, spans);
            }
            last = out;
        }
        assert!(
            Instant::now() < deadline,
            "no complete CastVote trace within {EXPORTED:?}; last seen: {last}"
        );
        tokio::time::sleep(POLL_EVERY).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_vote_through_the_gateway_is_one_trace_from_edge_to_consumer() {
    let mut up = TallyUp::builder()
        // Polling's health probe refreshes the key set; once an hour here, so the
        // rotated key below is fetched by the vote itself.
        .env("TALLY_POLLING_POLLING__HEALTH_INTERVAL_SECS", "3600")
        .start()
        .await;
    let data = up.data();
    let out = up.ready_output();
    assert!(out.contains("traces: OTLP receiver at"), "{out}");
    let gateway = format!("http://{}", up.gateway_addr());
    let channel = Channel::from_shared(gateway)
        .expect("uri")
        .connect()
        .await
        .expect("connect to the gateway");
    let mut users = UserServiceClient::new(channel.clone());
    let mut polls = PollServiceClient::new(channel);

    let token = up.sign_up("tracer@example.com").await;
    let poll = polls
        .create_poll(bearer(
            CreatePollRequest {
                question: "Traced?".into(),
                options: vec!["yes".into(), "no".into()],
                closes_at: None,
            },
            &token,
        ))
        .await
        .expect("create poll")
        .into_inner()
        .poll
        .expect("poll");

    // A new signing key: the next token has a kid polling has not seen.
    let admin_token = data.join("data/user/admin-token");
    let rotate = Command::new(bin_path("tally"))
        .args(["keys", "rotate", "--admin-token-file"])
        .arg(&admin_token)
        .args(["--user-addr", &up.addr("user")])
        .output()
        .expect("tally keys rotate");
    assert!(
        rotate.status.success(),
        "{}",
        String::from_utf8_lossy(&rotate.stderr)
    );
    tokio::time::sleep(REFETCH_WINDOW).await;
    let token = login(&mut users).await;
    polls
        .cast_vote(bearer(
            CastVoteRequest {
                poll_id: poll.poll_id.clone(),
                option_id: poll.options[0].option_id.clone(),
                idempotency_key: "traced-vote".into(),
            },
            &token,
        ))
        .await
        .expect("cast vote");

    let (id, trace) = vote_trace(data).await;
    assert!(trace.iter().all(|s| s["trace_id"] == id.as_str()));
    for (service, name) in expected() {
        assert!(
            has(&trace, service, &name),
            "no span `{name}` from {service} in {trace:#?}"
        );
    }
    // Parent links hold: polling's server span is under its inbound sidecar's.
    let by_id = |id: &str| trace.iter().find(|s| s["span_id"] == id);
    let parent_name = |s: &Value| {
        by_id(s["parent_span_id"].as_str().unwrap_or(""))
            .map(|p| p["name"].as_str().unwrap_or("").to_string())
            .unwrap_or_default()
    };
    let server = spans(&trace, "polling", CAST_VOTE)[0];
    assert_eq!(parent_name(server), format!("inbound {CAST_VOTE}"));
    let jwks_server = spans(&trace, USER, GET_JWKS)[0];
    assert_eq!(parent_name(jwks_server), format!("inbound {GET_JWKS}"));
    // The consumer's span is linked to (and under) polling's publish span.
    let consumer = spans(&trace, "analytics", POLL_VOTED)[0];
    let publish = spans(&trace, "polling", "publish tally.events.v1.PollVoted")[0];
    let links = consumer["links"].as_array().expect("links");
    assert!(
        links.iter().any(|l| l[1] == publish["span_id"]),
        "{consumer:#}"
    );
    assert_eq!(consumer["parent_span_id"], publish["span_id"]);
    // The edge checks run inside the gateway span; each hop records its decisions.
    // Each event is kept as `name key=value ...`; the names are what is asserted.
    let events = |s: &Value| -> Vec<String> {
        let name = |e: &str| {
            let words: Vec<&str> = e.split(' ').take_while(|w| !w.contains('=')).collect();
            words.join(" ")
        };
        s["events"]
            .as_array()
            .map(|a| a.iter().filter_map(|e| e.as_str()).map(name).collect())
            .unwrap_or_default()
    };
    let edge = spans(&trace, "tally-gateway", &format!("gateway {CAST_VOTE}"))[0];
    for e in ["authenticate", "rate limit"] {
        assert!(events(edge).iter().any(|n| n == e), "no `{e}` in {edge:#}");
    }
    let hop = spans(&trace, "tally-gateway", &format!("outbound {CAST_VOTE}"))[0];
    assert_eq!(hop["parent_span_id"], edge["span_id"]);
    for e in ["retry attempt", "breaker", "bulkhead"] {
        assert!(events(hop).iter().any(|n| n == e), "no `{e}` in {hop:#}");
    }
    let inbound = spans(&trace, "polling-sidecar", &format!("inbound {CAST_VOTE}"))[0];
    assert!(
        events(inbound).iter().any(|n| n == "bulkhead"),
        "{inbound:#}"
    );

    // Analytics' subscription to polling's feed is a trace of its own that reaches polling.
    let (ok, out, err) = tally(data, &["traces", "--json", "--limit", "500"]);
    assert!(ok, "{err}");
    let list: Value = serde_json::from_str(&out).expect("json");
    let subscribe =
        list["traces"].as_array().expect("traces").iter().find(|t| {
            t["root"] == SUBSCRIBE && t["services"].to_string().contains("\"analytics\"")
        });
    let subscribe =
        subscribe.unwrap_or_else(|| panic!("no `{SUBSCRIBE}` trace from analytics: {out}"));
    assert!(
        subscribe["services"].to_string().contains("\"polling\""),
        "the producer joins the subscription's trace: {subscribe}"
    );

    // The tree as a person reads it.
    let (ok, tree, err) = tally(data, &["trace", &id[..12]]);
    assert!(ok, "{err}");
    eprintln!("{tree}");
    assert!(tree.starts_with(&format!("trace {id} (")), "{tree}");
    let line = |name: &str| {
        tree.lines()
            .find(|l| l.trim_start().starts_with(name))
            .unwrap_or_else(|| panic!("no `{name}` line in\n{tree}"))
            .to_string()
    };
    let depth = |l: &str| l.len() - l.trim_start().len();
    let gateway = line(&format!("gateway {CAST_VOTE}"));
    let inbound = line(&format!("inbound {CAST_VOTE}"));
    assert!(depth(&gateway) < depth(&inbound), "{tree}");
    assert!(gateway.contains(" ms"), "{tree}");
    assert!(line(POLL_VOTED).contains("linked to publish"), "{tree}");
    let (ok, list, _) = tally(data, &["traces"]);
    assert!(ok && list.contains(&id), "{list}");

    up.stop(Duration::from_secs(30)).await;
}
