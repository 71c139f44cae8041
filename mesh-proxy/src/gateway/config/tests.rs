use super::*;
use crate::config::Config;

const GATEWAY: &str = r#"
[admin]
listen = "127.0.0.1:9901"

[gateway]
listen = "127.0.0.1:8080"

[gateway.cors]
allowed_origins = ["https://app.tally.example"]

[gateway.auth]
jwks_service = "user"

[[gateway.routes]]
prefix = "tally.poll.v1"
service = "polling"

[[gateway.routes]]
prefix = "tally.user.v1.UserService/Login"
service = "user"
access = "public"

[services.polling]
endpoints = ["127.0.0.1:4243"]

[services.user]
endpoints = ["127.0.0.1:4343"]
"#;

fn check(text: &str) -> Result<Config, String> {
    let c = Config::parse("gw.toml", text).map_err(|e| e.to_string())?;
    c.validate("gw.toml").map_err(|e| e.to_string())?;
    Ok(c)
}

#[test]
fn gateway_only_config_is_valid_with_defaults() {
    let c = check(GATEWAY).unwrap();
    let g = c.gateway.unwrap();
    assert_eq!(g.bounds(), Bounds::default());
    assert_eq!(g.routes[0].access, Access::Authenticated);
    assert_eq!(g.rate_limit.per_client_burst, d::GATEWAY_PER_CLIENT_BURST);
    assert_eq!(g.auth.unwrap().issuer, "tally-user");
    assert!(g.cors.allow_headers.iter().any(|h| h == "x-grpc-web"));
}

#[test]
fn bounds_are_configurable_and_never_zero() {
    let c = check(&GATEWAY.replace(
        "listen = \"127.0.0.1:8080\"",
        "listen = \"127.0.0.1:8080\"\nidle_timeout_ms = 250\nmax_text_request_bytes = 2048",
    ))
    .unwrap();
    let b = c.gateway.unwrap().bounds();
    assert_eq!(b.idle_timeout, Duration::from_millis(250));
    assert_eq!(b.max_request_bytes, 2048);
    for key in [
        "header_read_timeout_ms",
        "idle_timeout_ms",
        "request_body_timeout_ms",
        "request_body_idle_timeout_ms",
    ] {
        let e = check(&GATEWAY.replace(
            "listen = \"127.0.0.1:8080\"",
            &format!("listen = \"127.0.0.1:8080\"\n{key} = 0"),
        ))
        .unwrap_err();
        assert!(e.contains(&format!("gateway.{key}")), "{e}");
    }
}

#[test]
fn errors_name_the_key() {
    let e = check(&GATEWAY.replace("service = \"polling\"", "service = \"nope\"")).unwrap_err();
    assert!(e.contains("gateway.routes[0].service"), "{e}");
    let e = check(&GATEWAY.replace("jwks_service = \"user\"", "")).unwrap_err();
    assert!(e.contains("gateway.auth") && e.contains("fix:"), "{e}");
    let e = check(&GATEWAY.replace(
        "jwks_service = \"user\"",
        "jwks_service = \"user\"\njwks_file = \"k.json\"",
    ))
    .unwrap_err();
    assert!(e.contains("exactly one"), "{e}");
    let e =
        check(&GATEWAY.replace("prefix = \"tally.poll.v1\"", "prefix = \"/tally\"")).unwrap_err();
    assert!(e.contains("gateway.routes[0].prefix"), "{e}");
    let e = check(&GATEWAY.replace("https://app.tally.example", "app.tally.example")).unwrap_err();
    assert!(e.contains("gateway.cors.allowed_origins"), "{e}");
    let e = check(&format!(
        "{GATEWAY}\n[gateway.rate_limit]\nper_client_burst = 0\n"
    ))
    .unwrap_err();
    assert!(e.contains("gateway.rate_limit.per_client_burst"), "{e}");
}

#[test]
fn prefixes() {
    assert!(is_route_prefix("tally.poll.v1"));
    assert!(is_route_prefix("tally.poll.v1.PollService"));
    assert!(is_route_prefix("tally.user.v1.UserService/Login"));
    assert!(!is_route_prefix(""));
    assert!(!is_route_prefix("tally..v1"));
    assert!(!is_route_prefix("/tally.v1"));
    assert!(!is_route_prefix("a/b/c"));
}
