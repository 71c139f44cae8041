//! Shared by the gateway suites: a tonic app (`tally.poll.v1.PollService` with echo,
//! streaming, errors and non-gRPC answers; `tally.user.v1.UserService` with GetJwks and
//! Login), signed test tokens, a gateway `tally-proxy` in front of inbound sidecars, a
//! gRPC-Web client written on hyper, and real Envoy for comparisons.
#![allow(dead_code)]

use crate::support::{PATIENCE, Pki, Proxy, wait_ready};
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
use tokio::net::TcpStream;
use tonic::Status;
use tonic::codec::{DecodeBuf, EncodeBuf};
// ---------------------------------------------------------------- the tonic app

/// Messages are raw bytes: the test looks at exactly what crossed the wire.
#[derive(Clone, Default)]
pub struct RawCodec;

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

pub type BoxFut<T> = Pin<Box<dyn std::future::Future<Output = T> + Send>>;
pub type MsgStream = Pin<Box<dyn futures::Stream<Item = Result<Bytes, Status>> + Send>>;

pub struct Unary(fn(tonic::Request<Bytes>) -> Result<tonic::Response<Bytes>, Status>);

impl tonic::server::UnaryService<Bytes> for Unary {
    type Response = Bytes;
    type Future = BoxFut<Result<tonic::Response<Bytes>, Status>>;
    fn call(&mut self, req: tonic::Request<Bytes>) -> Self::Future {
        let r = (self.0)(req);
        Box::pin(async move { r })
    }
}

pub struct Streaming(fn(Bytes) -> Vec<Result<Bytes, Status>>);

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

pub fn seen(
    req: &tonic::Request<Bytes>,
    key: &str,
) -> tonic::metadata::MetadataValue<tonic::metadata::Ascii> {
    req.metadata()
        .get(key)
        .cloned()
        .unwrap_or_else(|| tonic::metadata::MetadataValue::from_static("none"))
}

/// Request headers the echo reports back as `x-seen-<name without a leading x->` (`none`
/// when absent).
pub const SEEN: [&str; 8] = [
    "authorization",
    "x-api-key",
    "content-type",
    "x-request-id",
    "traceparent",
    "x-envoy-fault-abort-grpc-request",
    "tally-proxy-error",
    "x-tally-peer-spiffe-id",
];

pub fn echo(req: tonic::Request<Bytes>) -> Result<tonic::Response<Bytes>, Status> {
    let seen: Vec<_> = SEEN.iter().map(|k| (*k, seen(&req, k))).collect();
    let mut rsp = tonic::Response::new(req.into_inner());
    for (k, v) in seen {
        let name = format!("x-seen-{}", k.strip_prefix("x-").unwrap_or(k));
        let key = tonic::metadata::MetadataKey::from_bytes(name.as_bytes()).unwrap();
        rsp.metadata_mut().insert(key, v);
    }
    Ok(rsp)
}

/// An answer that is not gRPC at all, as a misconfigured or failing upstream sends it.
fn not_grpc(
    status: u16,
    content_type: &str,
    body: &'static [u8],
) -> http::Response<tonic::body::Body> {
    let mut rsp = http::Response::new(tonic::body::Body::new(Full::new(Bytes::from_static(body))));
    *rsp.status_mut() = http::StatusCode::from_u16(status).unwrap();
    rsp.headers_mut()
        .insert("content-type", HeaderValue::from_str(content_type).unwrap());
    rsp
}

/// The one API key the fake user service knows.
pub const TEST_API_KEY: &str = "tk_test_secret";

/// `UserService/VerifyApiKey`: knows [`TEST_API_KEY`], refuses everything else.
pub fn verify_api_key(req: tonic::Request<Bytes>) -> Result<tonic::Response<Bytes>, Status> {
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

pub fn fail(_req: tonic::Request<Bytes>) -> Result<tonic::Response<Bytes>, Status> {
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
pub fn big_payload() -> Bytes {
    (0..200_001u32).map(|i| (i % 251) as u8).collect()
}

pub fn big(_req: tonic::Request<Bytes>) -> Result<tonic::Response<Bytes>, Status> {
    Ok(tonic::Response::new(big_payload()))
}

/// The request names how many items to send.
pub fn items(req: Bytes) -> Vec<Result<Bytes, Status>> {
    let n: usize = std::str::from_utf8(&req)
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(1);
    (0..n)
        .map(|i| Ok(Bytes::from(format!("item-{i}"))))
        .collect()
}

/// Two items, then an error status in the trailers.
pub fn items_then_abort(_req: Bytes) -> Vec<Result<Bytes, Status>> {
    vec![
        Ok(Bytes::from_static(b"first")),
        Ok(Bytes::from_static(b"second")),
        Err(Status::aborted("stopped midway")),
    ]
}

/// Gates that hold a `Gated` stream between its two messages, by request payload.
pub fn gate(key: &str) -> Arc<tokio::sync::Notify> {
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
pub struct Gated;

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
pub struct PbJwk {
    #[prost(string, tag = "1")]
    pub kty: String,
    #[prost(string, tag = "2")]
    pub crv: String,
    #[prost(string, tag = "3")]
    pub kid: String,
    #[prost(string, tag = "4")]
    pub x: String,
    #[prost(string, tag = "5")]
    pub alg: String,
    #[prost(string, tag = "6")]
    pub r#use: String,
}

#[derive(Clone, PartialEq, prost::Message)]
pub struct PbGetJwksResponse {
    #[prost(message, repeated, tag = "1")]
    pub keys: Vec<PbJwk>,
    #[prost(string, tag = "2")]
    pub jwks_json: String,
}

pub fn unimplemented() -> http::Response<tonic::body::Body> {
    Status::unimplemented("no such method").into_http()
}

pub async fn dispatch<B>(
    req: http::Request<B>,
    jwks: Arc<Bytes>,
) -> http::Response<tonic::body::Body>
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
        "/tally.poll.v1.PollService/Http503" => {
            not_grpc(503, "text/plain", b"upstream overloaded: 100% busy\n")
        }
        "/tally.poll.v1.PollService/Html200" => not_grpc(200, "text/html", b"<html>hi</html>"),
        "/tally.poll.v1.PollService/Http404Empty" => not_grpc(404, "text/plain", b""),
        "/tally.poll.v1.PollService/Http400Grpc" => not_grpc(400, "application/grpc", b"bad"),
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

pub struct App {
    pub addr: SocketAddr,
    pub task: tokio::task::JoinHandle<()>,
}

impl Drop for App {
    fn drop(&mut self) {
        self.task.abort();
    }
}

pub async fn start_app(jwks: Bytes) -> App {
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

pub struct SigningKey {
    pub kid: String,
    pub encoding: jsonwebtoken::EncodingKey,
    pub jwk: PbJwk,
}

pub fn signing_key(kid: &str) -> SigningKey {
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
pub struct Claims<'a> {
    pub sub: &'a str,
    pub iss: &'a str,
    pub aud: &'a str,
    pub exp: u64,
}

pub fn now_secs() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_secs()
}

pub fn token(key: &SigningKey, sub: &str, exp: u64) -> String {
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

pub fn bearer(key: &SigningKey, sub: &str) -> String {
    format!("Bearer {}", token(key, sub, now_secs() + 3600))
}

// ---------------------------------------------------------------- processes

/// A `tally-proxy` started with a `[gateway]` section.
pub struct GatewayProc {
    pub child: Child,
    pub admin: SocketAddr,
    pub addr: SocketAddr,
    pub _dir: tempfile::TempDir,
}

impl Drop for GatewayProc {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

#[derive(serde::Deserialize)]
pub struct Bound {
    pub admin: SocketAddr,
    pub gateway: Option<SocketAddr>,
}

pub async fn start_gateway(config: &str) -> GatewayProc {
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

pub const ORIGIN: &str = "https://app.tally.test";

/// Extra config lines for a fixture.
#[derive(Default)]
pub struct Extra {
    /// Keys of the `[gateway]` table.
    pub gateway: &'static str,
    /// Tables after the polling sidecar's `[inbound]` (e.g. `[inbound.faults]`).
    pub polling_inbound: &'static str,
    /// Tables after the gateway's `[services.polling]` (e.g. `[services.polling.faults]`).
    pub polling_service: &'static str,
    /// What the `user` sidecar fronts instead of the test app (e.g. a real `tally-user`).
    pub user_app: Option<String>,
}

pub struct Fixture {
    pub key: SigningKey,
    pub gateway: GatewayProc,
    pub _sidecars: Vec<Proxy>,
    pub app: App,
    pub _pki: Pki,
}

/// Big enough that only the rate-limit test ever meets a limit.
pub const NO_LIMITS: &str = "per_client_per_second = 10000.0\nper_client_burst = 10000\nglobal_per_second = 10000.0\nglobal_burst = 10000\n";

impl Fixture {
    pub async fn start(rate_limit: &str) -> Fixture {
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
    pub async fn start_with(
        key: SigningKey,
        app: App,
        rate_limit: &str,
        auth_and_tls: &str,
    ) -> Fixture {
        Self::start_opts(key, app, rate_limit, auth_and_tls, &Extra::default()).await
    }

    /// As `start_with`, with the `user` sidecar in front of `user_app` instead of the app.
    pub async fn start_with_user(
        key: SigningKey,
        app: App,
        user_app: &str,
        rate_limit: &str,
        auth_and_tls: &str,
    ) -> Fixture {
        let extra = Extra {
            user_app: Some(user_app.to_string()),
            ..Extra::default()
        };
        Self::start_opts(key, app, rate_limit, auth_and_tls, &extra).await
    }

    /// A fixture with the default key and app, and `extra` config.
    pub async fn start_extra(rate_limit: &str, extra: &Extra) -> Fixture {
        let key = signing_key("test-key-1");
        let jwks = PbGetJwksResponse {
            keys: vec![key.jwk.clone()],
            jwks_json: String::new(),
        };
        let app = start_app(prost::Message::encode_to_vec(&jwks).into()).await;
        let auth = "[gateway.auth]\njwks_service = \"user\"\n";
        Self::start_opts(key, app, rate_limit, auth, extra).await
    }

    pub async fn start_opts(
        key: SigningKey,
        app: App,
        rate_limit: &str,
        auth_and_tls: &str,
        extra: &Extra,
    ) -> Fixture {
        let pki = Pki::new();
        let mut sidecars = Vec::new();
        let mut endpoints = Vec::new();
        for service in ["polling", "user"] {
            let id = pki.identity("tally", service);
            let inbound_extra = if service == "polling" {
                extra.polling_inbound
            } else {
                ""
            };
            let local_app = match (service, &extra.user_app) {
                ("user", Some(user_app)) => user_app.clone(),
                _ => app.addr.to_string(),
            };
            let cfg = format!(
                "[admin]\nlisten = \"127.0.0.1:0\"\n{}\n[inbound]\nlisten = \"127.0.0.1:0\"\nlocal_app = \"{}\"\n{inbound_extra}\n",
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
{gateway_extra}

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
{polling_service_extra}

[services.user]
endpoints = ["{user}"]
"#,
            identity = gw_id.toml(),
            gateway_extra = extra.gateway,
            polling_service_extra = extra.polling_service,
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

    pub fn bearer(&self, sub: &str) -> String {
        bearer(&self.key, sub)
    }
}

// ---------------------------------------------------------------- the gRPC-Web client

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Mode {
    Binary,
    Text,
}

/// Status, message, messages and trailer lines: what a client application sees.
pub type Decoded = (
    Option<u16>,
    Option<String>,
    Vec<Bytes>,
    Vec<(String, String)>,
);

/// Everything a gRPC-Web call produced, decoded.
#[derive(Debug, Default)]
pub struct WebReply {
    pub http_status: u16,
    pub headers: HeaderMap,
    /// The response body as received (base64 for text).
    pub raw: Bytes,
    pub messages: Vec<Bytes>,
    /// Lines of the 0x80 trailer frame, in order.
    pub trailers: Vec<(String, String)>,
    pub trailer_frames: usize,
}

impl WebReply {
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers.get(name).and_then(|v| v.to_str().ok())
    }
    pub fn trailer(&self, name: &str) -> Option<&str> {
        self.trailers
            .iter()
            .find(|(k, _)| k == name)
            .map(|(_, v)| v.as_str())
    }
    /// `grpc-status` from the trailer frame, else from the headers (trailers-only).
    pub fn status(&self) -> Option<u16> {
        self.trailer("grpc-status")
            .or_else(|| self.header("grpc-status"))
            .and_then(|s| s.parse().ok())
    }
    /// `grpc-message`, percent-decoded as gRPC clients do.
    pub fn message(&self) -> Option<String> {
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
    pub fn decoded(&self) -> Decoded {
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

pub fn web_frame(flag: u8, payload: &[u8]) -> Bytes {
    let mut b = BytesMut::with_capacity(payload.len() + 5);
    b.put_u8(flag);
    b.put_u32(payload.len() as u32);
    b.put_slice(payload);
    b.freeze()
}

/// Base64 that may be a run of separately padded segments.
pub fn decode_base64_segments(input: &[u8]) -> Bytes {
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

pub fn parse_web_body(body: &[u8], reply: &mut WebReply) {
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
pub async fn http1(addr: SocketAddr, req: Request<Full<Bytes>>) -> (u16, HeaderMap, Bytes) {
    http1_from(None, addr, req).await
}

/// A TCP connection to `addr`, from the loopback address `source` when given.
pub async fn connect_from(source: Option<std::net::IpAddr>, addr: SocketAddr) -> TcpStream {
    let Some(ip) = source else {
        return TcpStream::connect(addr).await.unwrap();
    };
    let socket = tokio::net::TcpSocket::new_v4().unwrap();
    socket.bind(SocketAddr::new(ip, 0)).unwrap();
    socket.connect(addr).await.unwrap()
}

/// Like `http1`, from the loopback address `source` when given.
pub async fn http1_from(
    source: Option<std::net::IpAddr>,
    addr: SocketAddr,
    req: Request<Full<Bytes>>,
) -> (u16, HeaderMap, Bytes) {
    let tcp = connect_from(source, addr).await;
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
/// The `Host` the gateway tests call.
pub const GATEWAY_HOST: &str = "gateway.test";

/// A POST to the gateway for `path`, addressed as the tests address it.
pub fn gateway_post(path: &str) -> http::request::Builder {
    Request::post(path).header("host", GATEWAY_HOST)
}

/// A CORS preflight for `ECHO` from `origin`, asking for gRPC-Web's request headers.
pub async fn preflight(addr: SocketAddr, origin: &str) -> (u16, HeaderMap) {
    let req = Request::options(ECHO)
        .header("host", GATEWAY_HOST)
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

pub async fn web_call(
    addr: SocketAddr,
    path: &str,
    headers: &[(&str, &str)],
    messages: &[&[u8]],
    mode: Mode,
) -> WebReply {
    web_call_from(None, addr, path, headers, messages, mode).await
}

/// Like `web_call`, from the loopback address `source` when given.
pub async fn web_call_from(
    source: Option<std::net::IpAddr>,
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
    let mut req = gateway_post(path)
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
    let (http_status, headers, raw) = http1_from(source, addr, req).await;
    web_reply(http_status, headers, raw)
}

/// Decodes a raw gRPC-Web answer (binary or text, by its content type).
pub fn web_reply(http_status: u16, headers: HeaderMap, raw: Bytes) -> WebReply {
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

pub const ECHO: &str = "/tally.poll.v1.PollService/Echo";

pub fn envoy_binary() -> Option<std::path::PathBuf> {
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

pub struct Envoy {
    pub child: Child,
    pub addr: SocketAddr,
    pub _dir: tempfile::TempDir,
}

impl Drop for Envoy {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Envoy with only `grpc_web` + router in front of the app (HTTP/2 upstream).
pub async fn start_envoy(bin: &std::path::Path, app: SocketAddr) -> Envoy {
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
