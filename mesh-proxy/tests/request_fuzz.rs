//! A structured fuzzer over real processes: seeded random HTTP/2 requests (method, scheme,
//! authority, path, header names and values including `te`, `content-type` and
//! `grpc-timeout`, mesh-internal and fault headers, gRPC bodies well and badly framed) sent to
//! each listener kind: the outbound listener, the mTLS inbound listener and the gateway.
//! Every request gets a well-formed answer (an HTTP status, and a gRPC status 0..=16 wherever
//! the answer is gRPC) or a stream reset, never a hang; no proxy dies; and each listener
//! still serves a good call afterwards.
//!
//! The seed is printed; `TALLY_FUZZ_SEED=<seed>` replays a run, `TALLY_FUZZ_CASES` sets the
//! number of requests per listener.

mod support;

use bytes::{BufMut, Bytes, BytesMut};
use http::{HeaderName, HeaderValue, Request};
use http_body_util::{BodyExt, Full};
use hyper::client::conn::http2::SendRequest;
use hyper_util::rt::{TokioExecutor, TokioIo};
use rand::rngs::StdRng;
use rand::{Rng, RngCore, SeedableRng};
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;
use support::*;
use tally_proxy::transport::ClientTransport;

/// Requests per listener when `TALLY_FUZZ_CASES` is not set.
const DEFAULT_CASES: usize = 60;
/// Longest a fuzzed request may take to be answered.
const ANSWER_WITHIN: Duration = Duration::from_secs(15);

const CONTENT_TYPES: [&str; 9] = [
    "application/grpc",
    "application/grpc+proto",
    "application/grpc-web",
    "application/grpc-web+proto",
    "application/grpc-web-text",
    "application/grpc-web-text+proto",
    "application/json",
    "text/plain",
    "application/grpc;charset=utf-8",
];
const TIMEOUTS: [&str; 10] = [
    "1S",
    "100m",
    "99999999H",
    "0n",
    "5",
    "-1S",
    "1.5S",
    "123456789S",
    "S",
    "10u",
];
const NAMES: [&str; 16] = [
    "te",
    "content-type",
    "grpc-timeout",
    "grpc-encoding",
    "grpc-accept-encoding",
    "x-request-id",
    "traceparent",
    "authorization",
    "x-api-key",
    "x-tally-peer-spiffe-id",
    "tally-proxy-error",
    "x-envoy-fault-abort-grpc-request",
    "x-envoy-fault-abort-request-percentage",
    "x-envoy-fault-delay-request",
    "x-forwarded-for",
    "content-length",
];

/// Where a listener is and how to reach it.
#[derive(Clone, Copy)]
enum Kind {
    Outbound,
    Inbound,
    Gateway,
}

fn seed() -> u64 {
    let seed = std::env::var("TALLY_FUZZ_SEED")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| rand::rng().next_u64());
    eprintln!("request fuzz seed {seed} (replay: TALLY_FUZZ_SEED={seed})");
    seed
}

fn token(rng: &mut StdRng, alphabet: &[u8], max: usize) -> String {
    let n = rng.random_range(0..=max);
    (0..n)
        .map(|_| alphabet[rng.random_range(0..alphabet.len())] as char)
        .collect()
}

/// A header value: printable, sometimes odd (spaces, tabs, obs-text, very long).
fn value(rng: &mut StdRng) -> HeaderValue {
    match rng.random_range(0..6) {
        0 => HeaderValue::from_static(""),
        1 => HeaderValue::from_str(&"v".repeat(rng.random_range(1..6000))).unwrap(),
        2 => {
            let bytes: Vec<u8> = (0..rng.random_range(1..40))
                .map(|_| rng.random_range(0x80..=0xffu8))
                .collect();
            HeaderValue::from_bytes(&bytes).unwrap()
        }
        _ => {
            let s = token(rng, b"abcXYZ0123456789 \t-_.:/;=,%+*\"'<>{}()[]~!@#$&?", 40);
            HeaderValue::from_str(s.trim_start()).unwrap_or(HeaderValue::from_static("x"))
        }
    }
}

/// One gRPC length-prefixed message, honest or not.
fn grpc_message(rng: &mut StdRng, out: &mut BytesMut) {
    let len = rng.random_range(0..512);
    let mut payload = vec![0u8; len];
    rng.fill_bytes(&mut payload);
    match rng.random_range(0..6) {
        // A lying length prefix (short or huge), or a compressed flag nobody negotiated.
        0 => {
            out.put_u8(0);
            out.put_u32(rng.random());
        }
        1 => {
            out.put_u8(1);
            out.put_u32(len as u32);
        }
        2 => {
            out.put_u8(rng.random());
        }
        _ => {
            out.put_u8(0);
            out.put_u32(len as u32);
        }
    }
    out.put_slice(&payload);
}

fn request(rng: &mut StdRng, kind: Kind) -> Request<Full<Bytes>> {
    let authority = match (kind, rng.random_range(0..5)) {
        (_, 0) => token(rng, b"abc.-:0123", 20),
        (Kind::Gateway, _) => "gateway.test".to_string(),
        _ => SVC.to_string(),
    };
    let authority = if authority.parse::<http::uri::Authority>().is_ok() {
        authority
    } else {
        SVC.to_string()
    };
    let path = match rng.random_range(0..6) {
        0 => "/".to_string(),
        1 => format!("/{}", token(rng, b"abcAB./%-_:0123", 60)),
        2 => format!("/test.Echo/{}", token(rng, b"abcXYZ/", 10)),
        3 => format!("{PATH}?{}", token(rng, b"a=b&%20", 20)),
        _ => PATH.to_string(),
    };
    let scheme = if rng.random_range(0..8) == 0 {
        "https"
    } else {
        "http"
    };
    let uri = format!("{scheme}://{authority}{path}");
    let uri: http::Uri = uri
        .parse()
        .unwrap_or_else(|_| format!("http://{SVC}{PATH}").parse().unwrap());
    let method = match rng.random_range(0..10) {
        0 => http::Method::GET,
        1 => http::Method::PUT,
        2 => http::Method::OPTIONS,
        3 => http::Method::from_bytes(token(rng, b"ABCXYZ", 8).as_bytes())
            .unwrap_or(http::Method::DELETE),
        _ => http::Method::POST,
    };
    let mut b = Request::builder().method(method).uri(uri);
    // Usually a plausible gRPC call, then noise on top.
    if rng.random_range(0..4) != 0 {
        b = b.header("content-type", CONTENT_TYPES[rng.random_range(0..3)]);
    }
    if rng.random_range(0..3) != 0 {
        b = b.header("te", "trailers");
    }
    for _ in 0..rng.random_range(0..8) {
        let name = match rng.random_range(0..4) {
            0 => HeaderName::from_bytes(token(rng, b"abcxyz-_0189", 12).as_bytes()).ok(),
            _ => Some(HeaderName::from_static(
                NAMES[rng.random_range(0..NAMES.len())],
            )),
        };
        let Some(name) = name else { continue };
        let v = match name.as_str() {
            "content-type" => HeaderValue::from_static(CONTENT_TYPES[rng.random_range(0..9)]),
            "grpc-timeout" => HeaderValue::from_static(TIMEOUTS[rng.random_range(0..10)]),
            // A declared length that disagrees with the body is the client's own protocol
            // error (hyper refuses to send it); keep it honest or absent.
            "content-length" => continue,
            _ => value(rng),
        };
        b = b.header(name, v);
    }
    let mut body = BytesMut::new();
    for _ in 0..rng.random_range(0..4) {
        grpc_message(rng, &mut body);
    }
    if rng.random_range(0..5) == 0 {
        let mut noise = vec![0u8; rng.random_range(0..2048)];
        rng.fill_bytes(&mut noise);
        body.put_slice(&noise);
    }
    b.body(Full::new(body.freeze()))
        .unwrap_or_else(|_| Request::new(Full::new(Bytes::new())))
}

/// Opens an HTTP/2 connection to a listener (`tls`: the mesh's mTLS as `client` would).
async fn connect(
    addr: SocketAddr,
    tls: Option<&Arc<dyn ClientTransport>>,
) -> SendRequest<Full<Bytes>> {
    let tcp = tokio::net::TcpStream::connect(addr).await.unwrap();
    let io: tally_proxy::transport::BoxIo = match tls {
        Some(t) => t
            .connect(tcp, "spiffe://tally.local/ns/test/sa/echo")
            .await
            .expect("mTLS handshake with the inbound listener"),
        None => Box::new(tcp),
    };
    let (send, conn) =
        hyper::client::conn::http2::handshake(TokioExecutor::new(), TokioIo::new(io))
            .await
            .expect("HTTP/2 handshake");
    tokio::spawn(conn);
    send
}

/// Checks one answer; returns what happened for the summary.
async fn check(
    send: &mut SendRequest<Full<Bytes>>,
    req: Request<Full<Bytes>>,
    what: &str,
) -> &'static str {
    let answer = tokio::time::timeout(ANSWER_WITHIN, async {
        if send.ready().await.is_err() {
            return Err("connection closed");
        }
        let rsp = match send.send_request(req).await {
            Ok(r) => r,
            Err(_) => return Ok("reset"),
        };
        let (parts, body) = rsp.into_parts();
        let ct = parts
            .headers
            .get("content-type")
            .and_then(|v| v.to_str().ok())
            .unwrap_or("")
            .to_string();
        let grpc = ct.starts_with("application/grpc");
        let (bytes, trailers, complete) = match body.collect().await {
            Ok(c) => {
                let t = c.trailers().cloned();
                (c.to_bytes(), t, true)
            }
            Err(_) => (Bytes::new(), None, false),
        };
        if grpc && parts.status == 200 {
            let in_headers = parts
                .headers
                .get("grpc-status")
                .or_else(|| trailers.as_ref().and_then(|t| t.get("grpc-status")))
                .and_then(|v| v.to_str().ok())
                .map(str::to_string);
            // gRPC-Web: the status is in the body's trailer frame unless trailers-only.
            let in_body = (complete && ct.starts_with("application/grpc-web"))
                .then(|| web_status(&bytes, ct.contains("-text")))
                .flatten();
            let status = in_headers.or(in_body).map(|s| s.parse::<u16>());
            match (status, complete) {
                (Some(Ok(code)), _) => assert!(code <= 16, "{what}: grpc-status {code}"),
                // A response stream the proxy reset mid-way is an answer too.
                (None, false) => return Ok("reset"),
                (s, _) => panic!("{what}: a gRPC answer without a valid grpc-status: {s:?}"),
            }
            return Ok("grpc");
        }
        assert!(
            (100..600).contains(&parts.status.as_u16()),
            "{what}: status {}",
            parts.status
        );
        Ok("http")
    })
    .await
    .unwrap_or_else(|_| panic!("{what}: no answer within {ANSWER_WITHIN:?}"));
    answer.unwrap_or("connection closed")
}

/// `grpc-status` from the trailer frame (flag 0x80) of a gRPC-Web body.
fn web_status(body: &[u8], text: bool) -> Option<String> {
    use base64::Engine as _;
    let raw = if text {
        // Text bodies may be several base64 segments, each with its own padding.
        let mut out = Vec::new();
        for seg in body.split_inclusive(|b| *b == b'=') {
            let seg: Vec<u8> = seg.iter().copied().filter(|b| *b != b'=').collect();
            if seg.is_empty() {
                continue;
            }
            out.extend(
                base64::engine::general_purpose::STANDARD_NO_PAD
                    .decode(&seg)
                    .ok()?,
            );
        }
        out
    } else {
        body.to_vec()
    };
    let mut rest = &raw[..];
    while rest.len() >= 5 {
        let len = u32::from_be_bytes([rest[1], rest[2], rest[3], rest[4]]) as usize;
        let payload = rest.get(5..5 + len)?;
        if rest[0] & 0x80 != 0 {
            let text = String::from_utf8_lossy(payload);
            return text
                .split("\r\n")
                .find_map(|l| l.strip_prefix("grpc-status:"))
                .map(|v| v.trim().to_string());
        }
        rest = &rest[5 + len..];
    }
    None
}

/// A call that must work on every listener afterwards.
fn good_call(kind: Kind) -> Request<Full<Bytes>> {
    let authority = match kind {
        Kind::Gateway => "gateway.test",
        _ => SVC,
    };
    Request::post(format!("http://{authority}{PATH}"))
        .header("content-type", "application/grpc")
        .header("te", "trailers")
        .body(Full::new(frame(b"still-serving")))
        .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn random_requests_get_well_formed_answers_on_every_listener() {
    init();
    let seed = seed();
    let cases = std::env::var("TALLY_FUZZ_CASES")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(DEFAULT_CASES);
    let up = Upstream::start("a").await;
    let mut mesh = Mesh::start(&[&up], "", "").await;
    let inbound = mesh.callees[0].inbound.unwrap();
    let gw_id = mesh.pki.identity("test", "gateway");
    let mut gateway = Proxy::start(&format!(
        "[admin]\nlisten = \"127.0.0.1:0\"\n{}\n[gateway]\nlisten = \"127.0.0.1:0\"\n\n[[gateway.routes]]\nprefix = \"test\"\nservice = \"echo\"\naccess = \"public\"\n\n[services.echo]\nendpoints = [\"{inbound}\"]\n",
        gw_id.toml()
    ))
    .await;
    let client_id = mesh.pki.identity("test", "client");
    let tls = tally_proxy::transport::tls::build(
        &tally_proxy::config::IdentityConfig {
            bundle: client_id.bundle.clone(),
            cert: client_id.cert.clone(),
            key: client_id.key.clone(),
            namespace: "test".into(),
            service: "client".into(),
        },
        5_000,
    )
    .expect("client identity")
    .client;

    let listeners = [
        (Kind::Outbound, mesh.caller.outbound.unwrap(), None),
        (Kind::Inbound, inbound, Some(&tls)),
        (Kind::Gateway, gateway.gateway.unwrap(), None),
    ];
    let mut rng = StdRng::seed_from_u64(seed);
    for (kind, addr, tls) in listeners {
        let name = match kind {
            Kind::Outbound => "outbound",
            Kind::Inbound => "inbound",
            Kind::Gateway => "gateway",
        };
        let mut send = connect(addr, tls).await;
        let mut seen = std::collections::BTreeMap::<&str, usize>::new();
        for i in 0..cases {
            let req = request(&mut rng, kind);
            let what = format!(
                "seed {seed}, {name} case {i}: {} {} {:?}",
                req.method(),
                req.uri(),
                req.headers()
            );
            let outcome = check(&mut send, req, &what).await;
            *seen.entry(outcome).or_default() += 1;
            if outcome == "connection closed" {
                // The proxy may close a connection that broke the protocol; a new one works.
                send = connect(addr, tls).await;
            }
        }
        eprintln!("{name}: {seen:?}");
        // Still serving: a good call on a fresh connection.
        let mut send = connect(addr, tls).await;
        let rsp = tokio::time::timeout(ANSWER_WITHIN, send.send_request(good_call(kind)))
            .await
            .expect("good call answered")
            .expect("good call");
        let (parts, body) = rsp.into_parts();
        let body = body.collect().await.expect("good call body");
        let status = parts
            .headers
            .get("grpc-status")
            .cloned()
            .or_else(|| body.trailers().and_then(|t| t.get("grpc-status").cloned()));
        assert_eq!(
            status.as_ref().and_then(|v| v.to_str().ok()),
            Some("0"),
            "seed {seed}: {name} no longer serves a good call: {parts:?}"
        );
    }
    assert!(
        mesh.caller.is_running(),
        "seed {seed}: the caller sidecar died"
    );
    assert!(
        mesh.callees[0].is_running(),
        "seed {seed}: the callee sidecar died"
    );
    assert!(gateway.is_running(), "seed {seed}: the gateway died");
}
