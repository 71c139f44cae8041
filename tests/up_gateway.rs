//! `tally up` runs the browser gateway: gRPC-Web over HTTP/1.1 to the
//! gateway port, through the mesh to the services. Public user methods work
//! without a token, polling needs one, and a call without it is refused by
//! the gateway itself (grpc-status 16).

use prost::Message;
use std::collections::BTreeMap;
use std::time::Duration;
use tally_api::poll::v1::{CreatePollRequest, CreatePollResponse};
use tally_api::user::v1::{LoginRequest, LoginResponse, SignUpRequest};
use tally_testkit::TallyUp;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

/// One gRPC-Web answer: HTTP status and headers, message frames, trailers.
struct WebReply {
    status: u16,
    headers: BTreeMap<String, String>,
    messages: Vec<Vec<u8>>,
    trailers: BTreeMap<String, String>,
}

impl WebReply {
    /// The final grpc-status: from the trailer frame, else the headers
    /// (a trailers-only answer).
    fn grpc_status(&self) -> Option<String> {
        self.trailers
            .get("grpc-status")
            .or_else(|| self.headers.get("grpc-status"))
            .cloned()
    }

    fn describe(&self) -> String {
        format!(
            "HTTP {} headers {:?} trailers {:?}",
            self.status, self.headers, self.trailers
        )
    }
}

/// Undoes `transfer-encoding: chunked`.
fn dechunk(mut body: &[u8]) -> Vec<u8> {
    let mut out = Vec::new();
    loop {
        let Some(eol) = body.windows(2).position(|w| w == b"\r\n") else {
            return out;
        };
        let size_text = String::from_utf8_lossy(&body[..eol]);
        let size = usize::from_str_radix(size_text.split(';').next().unwrap_or("").trim(), 16)
            .expect("chunk size");
        if size == 0 {
            return out;
        }
        let start = eol + 2;
        out.extend_from_slice(&body[start..start + size]);
        body = &body[start + size + 2..];
    }
}

/// A unary gRPC-Web call (`application/grpc-web+proto`) over HTTP/1.1,
/// framed by hand: flag byte, 4-byte big-endian length, message.
async fn grpc_web(addr: &str, path: &str, msg: &[u8], bearer: Option<&str>) -> WebReply {
    let mut body = vec![0u8];
    body.extend_from_slice(&u32::try_from(msg.len()).expect("small").to_be_bytes());
    body.extend_from_slice(msg);
    let auth = bearer
        .map(|t| format!("authorization: Bearer {t}\r\n"))
        .unwrap_or_default();
    let head = format!(
        "POST {path} HTTP/1.1\r\nhost: {addr}\r\ncontent-type: application/grpc-web+proto\r\n\
         x-grpc-web: 1\r\naccept: application/grpc-web+proto\r\n{auth}\
         content-length: {}\r\nconnection: close\r\n\r\n",
        body.len()
    );
    let mut stream = tokio::net::TcpStream::connect(addr)
        .await
        .unwrap_or_else(|e| panic!("connect {addr}: {e}"));
    stream.write_all(head.as_bytes()).await.expect("write");
    stream.write_all(&body).await.expect("write body");
    let mut raw = Vec::new();
    tokio::time::timeout(Duration::from_secs(60), stream.read_to_end(&mut raw))
        .await
        .expect("gateway answers in time")
        .expect("read");
    let split = raw
        .windows(4)
        .position(|w| w == b"\r\n\r\n")
        .expect("end of headers");
    let head = String::from_utf8_lossy(&raw[..split]).to_string();
    let mut lines = head.lines();
    let status: u16 = lines
        .next()
        .and_then(|l| l.split(' ').nth(1))
        .and_then(|s| s.parse().ok())
        .expect("status line");
    let headers: BTreeMap<String, String> = lines
        .filter_map(|l| l.split_once(':'))
        .map(|(k, v)| (k.trim().to_ascii_lowercase(), v.trim().to_string()))
        .collect();
    let mut rest = raw[split + 4..].to_vec();
    if headers
        .get("transfer-encoding")
        .is_some_and(|v| v.eq_ignore_ascii_case("chunked"))
    {
        rest = dechunk(&rest);
    }
    let mut messages = Vec::new();
    let mut trailers = BTreeMap::new();
    let mut at = 0;
    while at + 5 <= rest.len() {
        let flag = rest[at];
        let len =
            u32::from_be_bytes([rest[at + 1], rest[at + 2], rest[at + 3], rest[at + 4]]) as usize;
        let data = &rest[at + 5..at + 5 + len];
        if flag & 0x80 != 0 {
            for line in String::from_utf8_lossy(data).split("\r\n") {
                if let Some((k, v)) = line.split_once(':') {
                    trailers.insert(k.trim().to_ascii_lowercase(), v.trim().to_string());
                }
            }
        } else {
            messages.push(data.to_vec());
        }
        at += 5 + len;
    }
    WebReply {
        status,
        headers,
        messages,
        trailers,
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn browsers_reach_the_services_through_the_gateway_with_grpc_web() {
    let up = TallyUp::start(&[]).await;
    let out = up.ready_output();
    assert!(out.contains("browsers: gRPC-Web"), "{out}");
    let gw = up.gateway_addr();
    let port = gw.rsplit(':').next().expect("port");
    assert!(out.contains(&format!("gateway :{port}")), "{out}");

    // Public: sign up and log in without a token.
    let signup = SignUpRequest {
        email: "browser@example.com".into(),
        password: "correct horse battery".into(),
        display_name: "Browser".into(),
    };
    let r = grpc_web(
        &gw,
        "/tally.user.v1.UserService/SignUp",
        &signup.encode_to_vec(),
        None,
    )
    .await;
    assert_eq!(r.status, 200, "{}", r.describe());
    assert_eq!(r.grpc_status().as_deref(), Some("0"), "{}", r.describe());
    assert_eq!(
        r.headers.get("content-type").map(String::as_str),
        Some("application/grpc-web+proto")
    );
    let login = LoginRequest {
        email: "browser@example.com".into(),
        password: "correct horse battery".into(),
    };
    let r = grpc_web(
        &gw,
        "/tally.user.v1.UserService/Login",
        &login.encode_to_vec(),
        None,
    )
    .await;
    assert_eq!(r.grpc_status().as_deref(), Some("0"), "{}", r.describe());
    let login = LoginResponse::decode(r.messages.first().expect("a message").as_slice())
        .expect("LoginResponse");
    assert!(!login.access_token.is_empty());

    // Authenticated: the gateway refuses a call without a token itself.
    let create = CreatePollRequest {
        question: "Through the gateway?".into(),
        options: vec!["yes".into(), "no".into()],
        closes_at: None,
    };
    let r = grpc_web(
        &gw,
        "/tally.poll.v1.PollService/CreatePoll",
        &create.encode_to_vec(),
        None,
    )
    .await;
    assert_eq!(r.grpc_status().as_deref(), Some("16"), "{}", r.describe());
    assert_eq!(
        r.headers.get("tally-proxy-error").map(String::as_str),
        Some("unauthenticated"),
        "{}",
        r.describe()
    );

    // With the bearer token the call reaches polling through the mesh.
    let r = grpc_web(
        &gw,
        "/tally.poll.v1.PollService/CreatePoll",
        &create.encode_to_vec(),
        Some(&login.access_token),
    )
    .await;
    assert_eq!(r.grpc_status().as_deref(), Some("0"), "{}", r.describe());
    let poll = CreatePollResponse::decode(r.messages.first().expect("a message").as_slice())
        .expect("CreatePollResponse");
    assert_eq!(
        poll.poll.map(|p| p.question).as_deref(),
        Some("Through the gateway?")
    );

    // Feeds are not routed (no route: UNIMPLEMENTED from the gateway).
    let r = grpc_web(
        &gw,
        "/tally.events.v1.EventFeedService/GetHead",
        &[],
        Some(&login.access_token),
    )
    .await;
    assert_eq!(r.grpc_status().as_deref(), Some("12"), "{}", r.describe());
}
