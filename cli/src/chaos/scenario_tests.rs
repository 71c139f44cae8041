use super::*;

const GOOD: &str = r#"
name = "abort storm"
[load]
duration = "20s"
rate = { GetPoll = 10, CastVote = 2.5 }

[[fault]]
sidecar = "polling-proxy"
route = "inbound"
at = "2s"
until = "15s"
abort_percent = 20

[[fault]]
sidecar = "polling-proxy"
route = "inbound"
at = "15s"
delay_percent = 50
delay_ms = 100

[[kill]]
instance = "analytics"
signal = "SIGKILL"
at = "5s"

[[slo]]
method = "GetPoll"
min_success_rate = 0.95
max_p99 = "500ms"

[[slo]]
method = "all"
max_p99 = "2s"
"#;

fn parse(text: &str) -> Result<Scenario, ScenarioError> {
    Scenario::parse("t.toml", text)
}

#[test]
fn a_full_scenario_parses_with_its_defaults() {
    let s = parse(GOOD).expect("parses");
    assert_eq!(s.load.duration, Duration::from_secs(20));
    assert_eq!(s.load.timeout, DEFAULT_CALL_TIMEOUT);
    assert_eq!(s.load.rate.of(Method::GetPoll), 10.0);
    assert_eq!(s.load.rate.of(Method::GetResults), 0.0);
    assert_eq!(s.faults[0].abort_grpc_status, DEFAULT_ABORT_GRPC_STATUS);
    assert_eq!(s.fault_end(&s.faults[0]), Duration::from_secs(15));
    assert_eq!(s.fault_end(&s.faults[1]), Duration::from_secs(20));
    assert_eq!(s.kills[0].signal, Signal::Kill);
    assert_eq!(s.slos[0].method(), Some(Method::GetPoll));
    assert_eq!(s.slos[1].method(), None);
    assert_eq!(s.invariants, Invariants::default());
}

#[test]
fn unknown_keys_are_refused_by_name() {
    for (bad, word) in [
        (
            "name = \"x\"\ncolour = 1\n[load]\nduration=\"1s\"\nrate={GetPoll=1}",
            "colour",
        ),
        (
            "name = \"x\"\n[load]\nduration=\"1s\"\nrate={GetPol=1}",
            "GetPol",
        ),
        (
            "name = \"x\"\n[load]\nduration=\"1s\"\nrate={GetPoll=1}\n[[fault]]\nsidecar=\"a\"\nroute=\"inbound\"\nat=\"0s\"\nabort_pct=5",
            "abort_pct",
        ),
        (
            "name = \"x\"\n[load]\nduration=\"1s\"\nrate={GetPoll=1}\n[invariants]\nno_leaks=true",
            "no_leaks",
        ),
    ] {
        let e = parse(bad).expect_err(bad).to_string();
        assert!(e.contains("unknown field") && e.contains(word), "{e}");
        assert!(e.starts_with("scenario t.toml:"), "{e}");
    }
}

#[test]
fn values_serde_cannot_check_are_refused_with_the_reason() {
    let base = "name = \"x\"\n[load]\nduration=\"10s\"\nrate={GetPoll=1}\n";
    for (extra, why) in [
        (
            "[[fault]]\nsidecar=\"a\"\nroute=\"inbound\"\nat=\"11s\"\nabort_percent=5",
            "within load.duration",
        ),
        (
            "[[fault]]\nsidecar=\"a\"\nroute=\"inbound\"\nat=\"1s\"\nabort_percent=500",
            "not between 0 and 100",
        ),
        (
            "[[fault]]\nsidecar=\"a\"\nroute=\"inbound\"\nat=\"1s\"",
            "sets no fault",
        ),
        (
            "[[fault]]\nsidecar=\"a\"\nroute=\"inbound\"\nat=\"1s\"\nabort_percent=5\n\
             [[fault]]\nsidecar=\"a\"\nroute=\"inbound\"\nat=\"3s\"\nabort_percent=5",
            "overlaps",
        ),
        (
            "[[kill]]\ninstance=\"a\"\nsignal=\"SIGHUP\"\nat=\"1s\"",
            "SIGHUP",
        ),
        (
            "[[slo]]\nmethod=\"SignUp\"\nmax_p99=\"1s\"",
            "unknown method `SignUp`",
        ),
        ("[[slo]]\nmethod=\"all\"", "set min_success_rate or max_p99"),
        ("[[slo]]\nmethod=\"all\"\nmin_success_rate=99", "fraction"),
    ] {
        let e = parse(&format!("{base}{extra}"))
            .expect_err(extra)
            .to_string();
        assert!(e.contains(why), "{extra}: {e}");
    }
    let e = parse("name=\"x\"\n[load]\nduration=\"10\"\nrate={GetPoll=1}").expect_err("unit");
    assert!(e.to_string().contains("add a unit"), "{e}");
    let e = parse("name=\"x\"\n[load]\nduration=\"1s\"\nrate={}").expect_err("no load");
    assert!(e.to_string().contains("at least one method"), "{e}");
}

#[test]
fn the_shipped_scenarios_parse() {
    for (file, text) in [
        (
            "abort-storm-polling",
            include_str!("../../../tests/chaos/abort-storm-polling.toml"),
        ),
        (
            "delay-storm-polling",
            include_str!("../../../tests/chaos/delay-storm-polling.toml"),
        ),
        (
            "kill-polling",
            include_str!("../../../tests/chaos/kill-polling.toml"),
        ),
        (
            "impossible-slo",
            include_str!("../../../tests/chaos/impossible-slo.toml"),
        ),
    ] {
        let s = Scenario::parse(file, text).unwrap_or_else(|e| panic!("{e}"));
        assert!(!s.slos.is_empty(), "{file}");
    }
    for (file, text) in [
        (
            "rolling-restart",
            include_str!("../../../tests/chaos/rolling-restart.toml"),
        ),
        (
            "payment-outage",
            include_str!("../../../tests/chaos/payment-outage.toml"),
        ),
        (
            "cert-rotation",
            include_str!("../../../tests/chaos/cert-rotation.toml"),
        ),
    ] {
        let s = Scenario::parse(file, text).unwrap_or_else(|e| panic!("{e}"));
        assert!(s.invariants.sagas_ended, "{file}");
        assert!(s.load.rate.start_subscription > 0.0, "{file}");
    }
}

#[test]
fn the_redis_restart_requires_redis_and_drives_the_session_calls() {
    let s = Scenario::parse(
        "redis-restart",
        include_str!("../../../tests/chaos/redis-restart.toml"),
    )
    .unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(s.requires, ["redis"]);
    assert!(s.load.rate.of(Method::Login) > 0.0);
    assert!(s.load.rate.of(Method::RefreshAccessToken) > 0.0);
    assert!(s.invariants.sessions_survive);
    assert_eq!(s.kills[0].instance, "redis");
    assert!(s.slos.iter().any(|o| o.method() == Some(Method::Login)));
    let err = parse(&format!("requires = [\"kafka\"]\n{GOOD}")).expect_err("unknown");
    assert!(
        err.message.contains("unknown instance `kafka`") && err.message.contains("redis"),
        "{err}"
    );
    assert!(parse(GOOD).expect("parses").requires.is_empty());
}

#[test]
fn durations() {
    assert_eq!(parse_duration("500ms"), Ok(Duration::from_millis(500)));
    assert_eq!(parse_duration("2m"), Ok(Duration::from_secs(120)));
    assert!(parse_duration("1h").is_err());
    assert!(parse_duration("s").is_err());
}
