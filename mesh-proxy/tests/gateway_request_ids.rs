//! Every answer the gateway makes itself (authentication, rate limit, CORS refusal, size and
//! time limits, not gRPC) carries the call's request id, as forwarded answers do: in
//! `x-request-id` (which browser code may read: it is in `access-control-expose-headers`) and
//! at the end of the message, over a real gateway process.

mod gateway_fixture;
mod support;

use bytes::Bytes;
use gateway_fixture::*;
use http_body_util::Full;

/// The reply's request id, after checking the message names the same one.
fn request_id_of(r: &WebReply) -> String {
    let id = r
        .header("x-request-id")
        .unwrap_or_else(|| panic!("no x-request-id: {r:?}"))
        .to_string();
    assert!(!id.is_empty());
    let message = r.message().unwrap_or_default();
    assert!(
        message.ends_with(&format!("(request id {id})")),
        "message `{message}` does not name request id {id}"
    );
    id
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn refusals_by_authentication_and_rate_limit_name_the_request_id() {
    let f = Fixture::start(
        "per_client_per_second = 0.001\nper_client_burst = 3\nglobal_per_second = 10000.0\nglobal_burst = 10000\n",
    )
    .await;
    // No token: UNAUTHENTICATED, made by the gateway (binary and text gRPC-Web).
    let mut ids = Vec::new();
    for mode in [Mode::Binary, Mode::Text] {
        let r = web_call(f.gateway.addr, ECHO, &[], &[b"x"], mode).await;
        assert_eq!(r.status(), Some(16), "{r:?}");
        assert_eq!(r.header("tally-proxy-error"), Some("unauthenticated"));
        ids.push(request_id_of(&r));
    }
    assert_ne!(ids[0], ids[1], "each call has its own id");
    // Plain gRPC over HTTP/2 gets the id the same way (trailers-only). Failed attempts spend
    // the IP's bucket: this is the third of three.
    let c = support::Client::connect(f.gateway.addr).await;
    let r = c.call(GATEWAY_HOST, ECHO, &[], &[b"x"]).await;
    assert_eq!(r.status(), Some(16), "{r:?}");
    let id = r.header("x-request-id").expect("x-request-id on gRPC too");
    let message = r.header("grpc-message").unwrap_or_default();
    assert!(
        message.ends_with(&format!("(request id {id})")),
        "{message}"
    );
    // A caller's own id is not taken (the test client is not a trusted proxy).
    let alice = f.bearer("alice");
    for i in 0..3 {
        let r = web_call(
            f.gateway.addr,
            ECHO,
            &[("authorization", &alice), ("x-request-id", "mine")],
            &[b"x"],
            Mode::Binary,
        )
        .await;
        assert_eq!(r.status(), Some(0), "call {i} fits the burst: {r:?}");
        assert_ne!(r.header("x-request-id"), Some("mine"));
    }
    // The next is over the per-client limit: RESOURCE_EXHAUSTED from the gateway.
    let r = web_call(
        f.gateway.addr,
        ECHO,
        &[("authorization", &alice)],
        &[b"x"],
        Mode::Binary,
    )
    .await;
    assert_eq!(r.status(), Some(8), "{r:?}");
    assert_eq!(r.header("tally-proxy-error"), Some("rate-limited"));
    request_id_of(&r);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn size_limits_plain_http_errors_and_cors_refusals_name_the_request_id() {
    let f = Fixture::start_extra(
        NO_LIMITS,
        &Extra {
            gateway: "max_request_bytes = 1024",
            ..Extra::default()
        },
    )
    .await;
    // Over the size cap (declared length): RESOURCE_EXHAUSTED, request-too-large.
    let big = vec![b'x'; 4096];
    let r = web_call(
        f.gateway.addr,
        ECHO,
        &[("authorization", &f.bearer("alice"))],
        &[&big],
        Mode::Binary,
    )
    .await;
    assert_eq!(r.status(), Some(8), "{r:?}");
    assert_eq!(r.header("tally-proxy-error"), Some("request-too-large"));
    request_id_of(&r);

    // Not a usable gRPC call: plain HTTP errors name the id in their body and header.
    let req = gateway_post("/tally.user.v1.UserService/Login")
        .header("content-type", "application/grpc-web-text")
        .body(Full::new(Bytes::from_static(b"AAAA*not-base64*")))
        .unwrap();
    let (status, h, body) = http1(f.gateway.addr, req).await;
    assert_eq!(status, 400);
    let id = h["x-request-id"].to_str().unwrap();
    let text = String::from_utf8_lossy(&body);
    assert!(text.contains(&format!("(request id {id})")), "{text}");

    // A refused CORS preflight still says which call it was.
    let (status, h) = preflight(f.gateway.addr, "https://elsewhere.test").await;
    assert_eq!(status, 403);
    assert!(h.contains_key("x-request-id"), "{h:?}");

    // Browser code may read the id: it is exposed on preflights and on answers.
    let (status, h) = preflight(f.gateway.addr, ORIGIN).await;
    assert_eq!(status, 204);
    let expose = h["access-control-expose-headers"].to_str().unwrap();
    assert!(expose.contains("x-request-id"), "{expose}");
    let r = web_call(
        f.gateway.addr,
        ECHO,
        &[("origin", ORIGIN)],
        &[b"x"],
        Mode::Binary,
    )
    .await;
    assert_eq!(r.status(), Some(16), "{r:?}");
    let expose = r
        .header("access-control-expose-headers")
        .unwrap_or_default();
    assert!(expose.contains("x-request-id"), "{expose}");
    request_id_of(&r);
}
