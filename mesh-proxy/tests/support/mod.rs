//! Test harness: a controllable gRPC upstream (raw HTTP/2 + gRPC framing), a gRPC client
//! that shows everything on the wire (headers, messages, trailers), mesh certificates, and
//! real `tally-proxy` processes.
#![allow(dead_code)]

use bytes::{Buf, BufMut, Bytes, BytesMut};
use http::{HeaderMap, HeaderValue, Request, Response};
use http_body_util::{BodyExt, Full, StreamBody, combinators::BoxBody};
use hyper::body::{Frame, Incoming};
use hyper_util::rt::{TokioExecutor, TokioIo};
use std::collections::HashMap;
use std::convert::Infallible;
use std::io::{BufRead, BufReader};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tally_certs::{CertAuthority, SpiffeId};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::mpsc;

pub type TestBody = BoxBody<Bytes, Infallible>;

/// Generous bound for anything a test waits on.
pub const PATIENCE: Duration = Duration::from_secs(60);

// gRPC status codes the tests expect.
pub const OK: u16 = 0;
pub const CANCELLED: u16 = 1;
pub const DEADLINE_EXCEEDED: u16 = 4;
pub const NOT_FOUND: u16 = 5;
pub const PERMISSION_DENIED: u16 = 7;
pub const RESOURCE_EXHAUSTED: u16 = 8;
pub const UNAVAILABLE: u16 = 14;

/// A route that retries idempotent `Call`s on UNAVAILABLE, up to three attempts.
pub const RETRY: &str = r#"
[services.echo.retry]
max_attempts = 3
idempotent_methods = ["Call"]
backoff_base_ms = 5
backoff_max_ms = 20
"#;

/// Selects the TLS crypto provider once per test process.
pub fn init() {
    let _ = rustls::crypto::ring::default_provider().install_default();
}

pub fn frame(msg: &[u8]) -> Bytes {
    let mut b = BytesMut::with_capacity(msg.len() + 5);
    b.put_u8(0);
    b.put_u32(msg.len() as u32);
    b.put_slice(msg);
    b.freeze()
}

/// Splits a gRPC byte stream into messages; keeps a partial tail in `buf`.
pub fn deframe(buf: &mut BytesMut) -> Vec<Bytes> {
    let mut out = Vec::new();
    while buf.len() >= 5 {
        let len = u32::from_be_bytes([buf[1], buf[2], buf[3], buf[4]]) as usize;
        if buf.len() < 5 + len {
            break;
        }
        buf.advance(5);
        out.push(buf.split_to(len).freeze());
    }
    out
}

fn hv(h: &HeaderMap, name: &str) -> Option<String> {
    h.get(name)
        .and_then(|v| v.to_str().ok())
        .map(str::to_string)
}

// ---------------------------------------------------------------- upstream

/// A gRPC server whose behaviour each request chooses through `x-test-*` metadata:
/// - `x-test-delay-ms`: wait before answering;
/// - `x-test-status`: answer trailers-only with that status (`x-test-pushback-ms` adds
///   `grpc-retry-pushback-ms`); `x-test-status-in-trailers`: same status but in real trailers;
/// - `x-test-fail-times` + `x-test-key`: the first N calls with that key fail UNAVAILABLE;
/// - `x-test-repeat`: answer each request message N times (server streaming);
/// - `x-test-fail-on`: echo request messages until one equals this value, then fail the
///   response stream (the server resets it);
/// - otherwise echo every request message as it arrives (bidi), then OK trailers with
///   `x-trailer-echo` = the request's `x-meta`.
///
/// Response headers report `x-upstream` (name), `x-echo-peer`, `x-echo-timeout`, `x-echo-meta`.
pub struct Upstream {
    pub name: String,
    pub addr: SocketAddr,
    pub calls: Arc<AtomicUsize>,
    pub fail_all: Arc<AtomicBool>,
    keys: Arc<Mutex<HashMap<String, usize>>>,
    task: tokio::task::JoinHandle<()>,
}

impl Drop for Upstream {
    fn drop(&mut self) {
        self.task.abort();
    }
}

impl Upstream {
    pub async fn start(name: &str) -> Upstream {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let calls = Arc::new(AtomicUsize::new(0));
        let fail_all = Arc::new(AtomicBool::new(false));
        let keys = Arc::new(Mutex::new(HashMap::new()));
        let (c, f, k, n) = (
            calls.clone(),
            fail_all.clone(),
            keys.clone(),
            name.to_string(),
        );
        let task = tokio::spawn(async move {
            loop {
                let Ok((tcp, _)) = listener.accept().await else {
                    continue;
                };
                let (c, f, k, n) = (c.clone(), f.clone(), k.clone(), n.clone());
                tokio::spawn(async move {
                    let svc = hyper::service::service_fn(move |req: Request<Incoming>| {
                        let (c, f, k, n) = (c.clone(), f.clone(), k.clone(), n.clone());
                        async move {
                            if let Some(on) = hv(req.headers(), "x-test-fail-on") {
                                c.fetch_add(1, Ordering::SeqCst);
                                return Ok::<_, Infallible>(echo_then_fail(req, on));
                            }
                            let rsp = handle(req, c, f, k, n).await;
                            Ok::<_, Infallible>(rsp.map(|b| b.map_err(|n| match n {}).boxed()))
                        }
                    });
                    // Like a tonic server configured deliberately for a sidecar that multiplexes
                    // many callers: a burst of cancellations must not GOAWAY the connection.
                    let _ = hyper::server::conn::http2::Builder::new(TokioExecutor::new())
                        .max_pending_accept_reset_streams(10_000)
                        .serve_connection(TokioIo::new(tcp), svc)
                        .await;
                });
            }
        });
        Upstream {
            name: name.to_string(),
            addr,
            calls,
            fail_all,
            keys,
            task,
        }
    }

    pub fn calls(&self) -> usize {
        self.calls.load(Ordering::SeqCst)
    }
}

/// A response body of the upstream that may fail.
pub type FallibleBody = BoxBody<Bytes, Box<dyn std::error::Error + Send + Sync>>;

/// Echoes request messages until one equals `on`, then fails the response stream.
fn echo_then_fail(req: Request<Incoming>, on: String) -> Response<FallibleBody> {
    type Item = Result<Frame<Bytes>, Box<dyn std::error::Error + Send + Sync>>;
    let (tx, rx) = mpsc::channel::<Item>(16);
    let mut body = req.into_body();
    tokio::spawn(async move {
        let mut buf = BytesMut::new();
        while let Some(Ok(f)) = body.frame().await {
            let Ok(d) = f.into_data() else { continue };
            buf.extend_from_slice(&d);
            for m in deframe(&mut buf) {
                let item: Item = if m == on.as_bytes() {
                    Err("upstream failed midway".into())
                } else {
                    Ok(Frame::data(frame(&m)))
                };
                let failed = item.is_err();
                if tx.send(item).await.is_err() || failed {
                    return;
                }
            }
        }
    });
    let mut r = Response::new(StreamBody::new(tokio_stream_from(rx)).boxed());
    r.headers_mut()
        .insert("content-type", HeaderValue::from_static("application/grpc"));
    r
}

fn trailers_only(code: u16, extra: &[(&str, String)]) -> Response<TestBody> {
    let mut r = Response::new(Full::new(Bytes::new()).boxed());
    r.headers_mut()
        .insert("content-type", HeaderValue::from_static("application/grpc"));
    r.headers_mut()
        .insert("grpc-status", HeaderValue::from(code));
    r.headers_mut().insert(
        "grpc-message",
        HeaderValue::from_static("from test upstream"),
    );
    for (k, v) in extra {
        r.headers_mut().insert(
            http::HeaderName::from_bytes(k.as_bytes()).unwrap(),
            HeaderValue::from_str(v).unwrap(),
        );
    }
    r
}

async fn handle(
    req: Request<Incoming>,
    calls: Arc<AtomicUsize>,
    fail_all: Arc<AtomicBool>,
    keys: Arc<Mutex<HashMap<String, usize>>>,
    name: String,
) -> Response<TestBody> {
    calls.fetch_add(1, Ordering::SeqCst);
    let h = req.headers().clone();
    let num = |k: &str| hv(&h, k).and_then(|v| v.parse::<u64>().ok());
    let mut head = vec![("x-upstream", name.clone())];
    if let Some(p) = hv(&h, "x-tally-peer-spiffe-id") {
        head.push(("x-echo-peer", p));
    }
    if let Some(t) = hv(&h, "grpc-timeout") {
        head.push(("x-echo-timeout", t));
    }
    if let Some(m) = hv(&h, "x-meta") {
        head.push(("x-echo-meta", m));
    }
    if let Some(ms) = num("x-test-delay-ms") {
        tokio::time::sleep(Duration::from_millis(ms)).await;
    }
    if fail_all.load(Ordering::SeqCst) {
        return trailers_only(14, &head);
    }
    if let (Some(n), Some(key)) = (num("x-test-fail-times"), hv(&h, "x-test-key")) {
        let seen = {
            let mut m = keys.lock().unwrap();
            let e = m.entry(key).or_insert(0);
            *e += 1;
            *e
        };
        if seen as u64 <= n {
            if h.contains_key("x-test-fail-in-trailers") {
                return status_in_trailers(14, head);
            }
            return trailers_only(14, &head);
        }
    }
    if let Some(code) = num("x-test-status") {
        if let Some(p) = hv(&h, "x-test-pushback-ms") {
            head.push(("grpc-retry-pushback-ms", p));
        }
        return trailers_only(code as u16, &head);
    }
    if let Some(code) = num("x-test-status-in-trailers") {
        return status_in_trailers(code as u16, head);
    }
    let repeat = num("x-test-repeat").unwrap_or(1) as usize;
    let meta = hv(&h, "x-meta").unwrap_or_default();
    let (tx, rx) = mpsc::channel::<Result<Frame<Bytes>, Infallible>>(16);
    let mut body = req.into_body();
    tokio::spawn(async move {
        let mut buf = BytesMut::new();
        while let Some(Ok(f)) = body.frame().await {
            if let Ok(d) = f.into_data() {
                buf.extend_from_slice(&d);
                for m in deframe(&mut buf) {
                    for _ in 0..repeat {
                        if tx.send(Ok(Frame::data(frame(&m)))).await.is_err() {
                            return;
                        }
                    }
                }
            }
        }
        let mut t = HeaderMap::new();
        t.insert("grpc-status", HeaderValue::from_static("0"));
        if let Ok(v) = HeaderValue::from_str(&meta) {
            t.insert("x-trailer-echo", v);
        }
        let _ = tx.send(Ok(Frame::trailers(t))).await;
    });
    let stream = tokio_stream_from(rx);
    let mut r = Response::new(StreamBody::new(stream).boxed());
    r.headers_mut()
        .insert("content-type", HeaderValue::from_static("application/grpc"));
    for (k, v) in head {
        r.headers_mut()
            .insert(k, HeaderValue::from_str(&v).unwrap());
    }
    r
}

fn status_in_trailers(code: u16, head: Vec<(&'static str, String)>) -> Response<TestBody> {
    let mut t = HeaderMap::new();
    t.insert("grpc-status", HeaderValue::from(code));
    let stream = futures::stream::iter(vec![Ok::<_, Infallible>(Frame::trailers(t))]);
    let mut r = Response::new(StreamBody::new(stream).boxed());
    r.headers_mut()
        .insert("content-type", HeaderValue::from_static("application/grpc"));
    for (k, v) in head {
        r.headers_mut()
            .insert(k, HeaderValue::from_str(&v).unwrap());
    }
    r
}

fn tokio_stream_from<T: Send + 'static>(
    mut rx: mpsc::Receiver<T>,
) -> impl futures::Stream<Item = T> + Send {
    futures::stream::poll_fn(move |cx| rx.poll_recv(cx))
}

// ---------------------------------------------------------------- client

/// Everything a call produced.
#[derive(Debug, Default)]
pub struct CallResult {
    pub http_status: u16,
    pub headers: HeaderMap,
    pub messages: Vec<Bytes>,
    pub trailers: HeaderMap,
    /// The stream failed (reset) instead of ending.
    pub error: Option<String>,
}

impl CallResult {
    /// `grpc-status` from the trailers-only headers or the trailers.
    pub fn status(&self) -> Option<u16> {
        hv(&self.headers, "grpc-status")
            .or_else(|| hv(&self.trailers, "grpc-status"))
            .and_then(|s| s.parse().ok())
    }
    pub fn header(&self, name: &str) -> Option<String> {
        hv(&self.headers, name)
    }
    pub fn trailer(&self, name: &str) -> Option<String> {
        hv(&self.trailers, name)
    }
    pub fn proxy_error(&self) -> Option<String> {
        self.header("tally-proxy-error")
            .or_else(|| self.trailer("tally-proxy-error"))
    }
}

/// An HTTP/2 connection to a proxy's outbound port, sending with any `:authority`.
#[derive(Clone)]
pub struct Client {
    send: hyper::client::conn::http2::SendRequest<TestBody>,
}

impl Client {
    /// A client over an HTTP/2 connection the test made itself (e.g. over mTLS).
    pub fn from_sender(send: hyper::client::conn::http2::SendRequest<TestBody>) -> Client {
        Client { send }
    }

    pub async fn connect(addr: SocketAddr) -> Client {
        let tcp = TcpStream::connect(addr).await.unwrap();
        let (send, conn) =
            hyper::client::conn::http2::handshake(TokioExecutor::new(), TokioIo::new(tcp))
                .await
                .unwrap();
        tokio::spawn(conn);
        Client { send }
    }

    fn request(
        authority: &str,
        path: &str,
        headers: &[(&str, &str)],
        body: TestBody,
    ) -> Request<TestBody> {
        let mut req = Request::post(format!("http://{authority}{path}"))
            .body(body)
            .unwrap();
        let h = req.headers_mut();
        h.insert("content-type", HeaderValue::from_static("application/grpc"));
        h.insert("te", HeaderValue::from_static("trailers"));
        for (k, v) in headers {
            h.append(
                http::HeaderName::from_bytes(k.as_bytes()).unwrap(),
                HeaderValue::from_str(v).unwrap(),
            );
        }
        req
    }

    /// Sends all `messages`, then reads the whole response.
    pub async fn call(
        &self,
        authority: &str,
        path: &str,
        headers: &[(&str, &str)],
        messages: &[&[u8]],
    ) -> CallResult {
        let mut data = BytesMut::new();
        for m in messages {
            data.extend_from_slice(&frame(m));
        }
        let body = Full::new(data.freeze()).boxed();
        let req = Self::request(authority, path, headers, body);
        let mut send = self.send.clone();
        tokio::time::timeout(PATIENCE, async move {
            send.ready().await.unwrap();
            match send.send_request(req).await {
                Ok(rsp) => read_response(rsp).await,
                Err(e) => CallResult {
                    error: Some(e.to_string()),
                    ..Default::default()
                },
            }
        })
        .await
        .expect("call finished in time")
    }

    /// Sends each of `frames` as its own DATA frame, then ends the stream with an empty DATA
    /// frame carrying END_STREAM, as tonic and grpc-go clients do (a body whose end is not
    /// known in advance). An empty entry sends an empty DATA frame. Reads the whole response.
    pub async fn call_frames(
        &self,
        authority: &str,
        path: &str,
        headers: &[(&str, &str)],
        frames: Vec<Bytes>,
    ) -> CallResult {
        let stream = futures::stream::iter(
            frames
                .into_iter()
                .map(|f| Ok::<_, Infallible>(Frame::data(f))),
        );
        let req = Self::request(authority, path, headers, StreamBody::new(stream).boxed());
        let mut send = self.send.clone();
        tokio::time::timeout(PATIENCE, async move {
            if let Err(e) = send.ready().await {
                return CallResult {
                    error: Some(e.to_string()),
                    ..Default::default()
                };
            }
            match send.send_request(req).await {
                Ok(rsp) => read_response(rsp).await,
                Err(e) => CallResult {
                    error: Some(e.to_string()),
                    ..Default::default()
                },
            }
        })
        .await
        .expect("call finished in time")
    }

    /// Sends a whole request (`messages`, then the end of the stream) and returns the response
    /// as soon as its headers arrive, for reading a server stream message by message.
    pub async fn start_stream(
        &self,
        authority: &str,
        path: &str,
        headers: &[(&str, &str)],
        messages: &[&[u8]],
    ) -> Response<Incoming> {
        let mut data = BytesMut::new();
        for m in messages {
            data.extend_from_slice(&frame(m));
        }
        let req = Self::request(authority, path, headers, Full::new(data.freeze()).boxed());
        let mut send = self.send.clone();
        send.ready().await.unwrap();
        tokio::time::timeout(PATIENCE, send.send_request(req))
            .await
            .expect("response headers in time")
            .expect("response")
    }

    /// Opens a bidi stream: returns the sender of request messages and the response.
    pub async fn open(
        &self,
        authority: &str,
        path: &str,
        headers: &[(&str, &str)],
    ) -> (mpsc::Sender<Bytes>, Response<Incoming>) {
        let (tx, mut rx) = mpsc::channel::<Bytes>(16);
        let stream = futures::stream::poll_fn(move |cx| {
            rx.poll_recv(cx)
                .map(|o| o.map(|m| Ok::<_, Infallible>(Frame::data(frame(&m)))))
        });
        let req = Self::request(authority, path, headers, StreamBody::new(stream).boxed());
        let mut send = self.send.clone();
        send.ready().await.unwrap();
        let rsp = tokio::time::timeout(PATIENCE, send.send_request(req))
            .await
            .expect("response headers in time")
            .expect("response");
        (tx, rsp)
    }
}

pub async fn read_response(rsp: Response<Incoming>) -> CallResult {
    let (parts, mut body) = rsp.into_parts();
    let mut out = CallResult {
        http_status: parts.status.as_u16(),
        headers: parts.headers,
        ..Default::default()
    };
    let mut buf = BytesMut::new();
    loop {
        match body.frame().await {
            None => break,
            Some(Err(e)) => {
                out.error = Some(e.to_string());
                break;
            }
            Some(Ok(f)) => match f.into_data() {
                Ok(d) => {
                    buf.extend_from_slice(&d);
                    out.messages.extend(deframe(&mut buf));
                }
                Err(f) => {
                    if let Ok(t) = f.into_trailers() {
                        out.trailers = t;
                    }
                }
            },
        }
    }
    out
}

/// Reads the next gRPC message of a streaming response.
pub async fn next_message(body: &mut Incoming, buf: &mut BytesMut) -> Option<Bytes> {
    loop {
        let mut ready = deframe(buf);
        if !ready.is_empty() {
            // Put back any extra complete messages in front of the tail.
            let first = ready.remove(0);
            let mut rest = BytesMut::new();
            for m in ready {
                rest.extend_from_slice(&frame(&m));
            }
            rest.extend_from_slice(buf);
            *buf = rest;
            return Some(first);
        }
        let f = tokio::time::timeout(PATIENCE, body.frame())
            .await
            .ok()??
            .ok()?;
        if let Ok(d) = f.into_data() {
            buf.extend_from_slice(&d);
        } else {
            return None;
        }
    }
}

// ---------------------------------------------------------------- admin

/// Admin tokens of the proxies started by [`Proxy::start`], by admin address.
static ADMIN_TOKENS: Mutex<Vec<(SocketAddr, String)>> = Mutex::new(Vec::new());

/// The admin token a started proxy was given, if any.
pub fn admin_token(addr: SocketAddr) -> Option<String> {
    let tokens = ADMIN_TOKENS.lock().unwrap();
    tokens
        .iter()
        .find(|(a, _)| *a == addr)
        .map(|(_, t)| t.clone())
}

/// A plain HTTP/1.1 request to an admin port, as an operator on the host makes it: loopback
/// `Host`, and the proxy's admin token when the harness gave it one.
pub async fn admin(addr: SocketAddr, method: &str, path: &str, body: &str) -> (u16, String) {
    let mut headers = vec![("host".to_string(), addr.to_string())];
    if let Some(t) = admin_token(addr) {
        headers.push(("authorization".to_string(), format!("Bearer {t}")));
    }
    admin_with(addr, method, path, body, &headers).await
}

/// An HTTP/1.1 request to an admin port with exactly `headers` (plus `content-type`).
pub async fn admin_with(
    addr: SocketAddr,
    method: &str,
    path: &str,
    body: &str,
    headers: &[(String, String)],
) -> (u16, String) {
    let tcp = TcpStream::connect(addr).await.unwrap();
    let (mut send, conn) = hyper::client::conn::http1::handshake(TokioIo::new(tcp))
        .await
        .unwrap();
    tokio::spawn(conn);
    let mut req = Request::builder()
        .method(method)
        .uri(path)
        .header("content-type", "application/json");
    for (k, v) in headers {
        req = req.header(k.as_str(), v.as_str());
    }
    let req = req.body(Full::new(Bytes::from(body.to_string()))).unwrap();
    let rsp = tokio::time::timeout(PATIENCE, send.send_request(req))
        .await
        .unwrap()
        .unwrap();
    let status = rsp.status().as_u16();
    let bytes = rsp.into_body().collect().await.unwrap().to_bytes();
    (status, String::from_utf8_lossy(&bytes).to_string())
}

/// Sum of the samples of `name` whose labels contain every `labels` fragment (e.g. `route="echo"`).
pub fn metric(text: &str, name: &str, labels: &[&str]) -> f64 {
    text.lines()
        .filter(|l| !l.starts_with('#'))
        .filter(|l| l.starts_with(&format!("{name}{{")) || l.starts_with(&format!("{name} ")))
        .filter(|l| labels.iter().all(|f| l.contains(f)))
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .sum()
}

pub async fn metrics(addr: SocketAddr) -> String {
    admin(addr, "GET", "/metrics", "").await.1
}

// ---------------------------------------------------------------- certificates

pub struct Pki {
    pub dir: tempfile::TempDir,
    pub ca: CertAuthority,
}

pub struct Identity {
    pub bundle: PathBuf,
    pub cert: PathBuf,
    pub key: PathBuf,
    pub namespace: String,
    pub service: String,
}

impl Identity {
    pub fn toml(&self) -> String {
        format!(
            "[identity]\nbundle = {:?}\ncert = {:?}\nkey = {:?}\nnamespace = {:?}\nservice = {:?}\n",
            self.bundle, self.cert, self.key, self.namespace, self.service
        )
    }
    pub fn spiffe(&self) -> String {
        format!(
            "spiffe://tally.local/ns/{}/sa/{}",
            self.namespace, self.service
        )
    }
}

impl Pki {
    pub fn new() -> Pki {
        let dir = tempfile::tempdir().unwrap();
        let ca = CertAuthority::generate("tally.local").unwrap();
        std::fs::write(dir.path().join("bundle.pem"), ca.cert_pem()).unwrap();
        Pki { dir, ca }
    }

    pub fn identity(&self, namespace: &str, service: &str) -> Identity {
        let id = SpiffeId::local(namespace, service).unwrap();
        let sub = self.dir.path().join(namespace);
        let issued = self.ca.issue(&id, Duration::from_secs(3600)).unwrap();
        let paths = tally_certs::write_workload(&sub, &id, &issued).unwrap();
        Identity {
            bundle: self.dir.path().join("bundle.pem"),
            cert: paths.cert,
            key: paths.key,
            namespace: namespace.into(),
            service: service.into(),
        }
    }
}

// ---------------------------------------------------------------- proxy processes

#[derive(serde::Deserialize, Debug)]
struct Bound {
    admin: SocketAddr,
    inbound: Option<SocketAddr>,
    outbound: Option<SocketAddr>,
    gateway: Option<SocketAddr>,
}

pub struct Proxy {
    child: Child,
    pub admin: SocketAddr,
    pub inbound: Option<SocketAddr>,
    pub outbound: Option<SocketAddr>,
    pub gateway: Option<SocketAddr>,
    _dir: tempfile::TempDir,
}

impl Drop for Proxy {
    fn drop(&mut self) {
        // Forget the token before the port is free for another proxy to take.
        if let Ok(mut tokens) = ADMIN_TOKENS.lock() {
            tokens.retain(|(a, _)| *a != self.admin);
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Proxy {
    /// Starts `tally-proxy` with `config` and waits for its bound addresses and `/ready`.
    pub async fn start(config: &str) -> Proxy {
        Self::start_logging(config, None).await
    }

    /// Like `start`, with JSON logs written to `log_file` instead of the test's stderr.
    pub async fn start_logging(config: &str, log_file: Option<&Path>) -> Proxy {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("proxy.toml");
        // Like `tally up`: an owner-only admin token file, unless the test configures one.
        let mut token = None;
        let config = if config.contains("[admin]\n") && !config.contains("token_file") {
            let t = format!("test-token-{}", rand_token());
            let file = dir.path().join("admin.token");
            write_secret(&file, &t);
            token = Some(t);
            config.replacen(
                "[admin]\n",
                &format!("[admin]\ntoken_file = {:?}\n", file),
                1,
            )
        } else {
            config.to_string()
        };
        let config = config.as_str();
        std::fs::write(&path, config).unwrap();
        let mut cmd = Command::new(env!("CARGO_BIN_EXE_tally-proxy"));
        cmd.arg("--config").arg(&path).env(
            "RUST_LOG",
            std::env::var("TEST_PROXY_LOG").unwrap_or_else(|_| "info".into()),
        );
        match log_file {
            Some(f) => {
                cmd.env("TALLY_LOG_FORMAT", "json")
                    .stderr(Stdio::from(std::fs::File::create(f).unwrap()));
            }
            None => {
                cmd.stderr(Stdio::inherit());
            }
        }
        let mut child = cmd.stdout(Stdio::piped()).spawn().unwrap();
        let stdout = child.stdout.take().unwrap();
        let line = tokio::task::spawn_blocking(move || {
            let mut line = String::new();
            BufReader::new(stdout).read_line(&mut line).map(|_| line)
        })
        .await
        .unwrap()
        .unwrap();
        let bound: Bound = serde_json::from_str(line.trim()).unwrap_or_else(|e| {
            panic!("proxy did not start ({e}); stdout: {line:?}; config:\n{config}")
        });
        if let Some(t) = token {
            // An earlier proxy may have had this admin port: the newest registration wins.
            let mut tokens = ADMIN_TOKENS.lock().unwrap();
            tokens.retain(|(a, _)| *a != bound.admin);
            tokens.push((bound.admin, t));
        }
        let p = Proxy {
            child,
            admin: bound.admin,
            inbound: bound.inbound,
            outbound: bound.outbound,
            gateway: bound.gateway,
            _dir: dir,
        };
        wait_ready(p.admin).await;
        p
    }

    pub fn is_running(&mut self) -> bool {
        matches!(self.child.try_wait(), Ok(None))
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    pub fn config_path(dir: &Path) -> PathBuf {
        dir.join("proxy.toml")
    }
}

/// A token no other test shares.
pub fn rand_token() -> String {
    use std::hash::{BuildHasher, Hasher};
    let mut h = std::collections::hash_map::RandomState::new().build_hasher();
    h.write_u128(
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .as_nanos(),
    );
    format!("{:016x}", h.finish())
}

/// Writes `text` to `path` with mode 0600.
pub fn write_secret(path: &Path, text: &str) {
    use std::os::unix::fs::OpenOptionsExt;
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(0o600)
        .open(path)
        .unwrap();
    std::io::Write::write_all(&mut f, text.as_bytes()).unwrap();
}

pub async fn wait_ready(admin_addr: SocketAddr) {
    let deadline = tokio::time::Instant::now() + PATIENCE;
    loop {
        if let Ok(Ok((200, _))) = tokio::time::timeout(
            Duration::from_secs(5),
            admin(admin_addr, "GET", "/ready", ""),
        )
        .await
        .map(Ok::<_, ()>)
        {
            return;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "proxy never became ready"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// A callee sidecar (inbound → `upstream`) per upstream, and one caller sidecar whose
/// `[services.echo]` lists them. `route_extra` is appended inside `[services.echo]`
/// (sub-tables allowed), `inbound_extra` inside each callee's `[inbound]`.
pub struct Mesh {
    pub pki: Pki,
    pub caller: Proxy,
    pub callees: Vec<Proxy>,
    pub client_id: String,
}

pub const SVC: &str = "echo";
pub const PATH: &str = "/test.Echo/Call";

impl Mesh {
    pub async fn start(upstreams: &[&Upstream], route_extra: &str, inbound_extra: &str) -> Mesh {
        let apps: Vec<SocketAddr> = upstreams.iter().map(|u| u.addr).collect();
        Self::start_with_apps(&apps, route_extra, inbound_extra).await
    }

    /// Like `start`, with any local apps (one callee sidecar per address).
    pub async fn start_with_apps(
        apps: &[SocketAddr],
        route_extra: &str,
        inbound_extra: &str,
    ) -> Mesh {
        let pki = Pki::new();
        let callee_id = pki.identity("test", SVC);
        let client = pki.identity("test", "client");
        let mut callees = Vec::new();
        for app in apps {
            let cfg = format!(
                "[admin]\nlisten = \"127.0.0.1:0\"\n{}\n[inbound]\nlisten = \"127.0.0.1:0\"\nlocal_app = \"{}\"\n{inbound_extra}\n",
                callee_id.toml(),
                app
            );
            callees.push(Proxy::start(&cfg).await);
        }
        let endpoints: Vec<String> = callees
            .iter()
            .map(|p| format!("\"{}\"", p.inbound.unwrap()))
            .collect();
        let cfg = format!(
            "[admin]\nlisten = \"127.0.0.1:0\"\n{}\n[outbound]\nlisten = \"127.0.0.1:0\"\n\n[services.{SVC}]\nendpoints = [{}]\n{route_extra}\n",
            client.toml(),
            endpoints.join(", ")
        );
        let caller = Proxy::start(&cfg).await;
        Mesh {
            client_id: client.spiffe(),
            pki,
            caller,
            callees,
        }
    }

    pub async fn client(&self) -> Client {
        Client::connect(self.caller.outbound.unwrap()).await
    }

    pub async fn call(&self, headers: &[(&str, &str)], messages: &[&[u8]]) -> CallResult {
        self.client().await.call(SVC, PATH, headers, messages).await
    }
}

impl Client {
    /// Like `connect`, but `None` when the HTTP/2 handshake fails (e.g. a TLS-only port).
    pub async fn connect_lenient(addr: SocketAddr) -> Option<Client> {
        let tcp = TcpStream::connect(addr).await.ok()?;
        let (send, conn) = tokio::time::timeout(
            PATIENCE,
            hyper::client::conn::http2::handshake(TokioExecutor::new(), TokioIo::new(tcp)),
        )
        .await
        .ok()?
        .ok()?;
        tokio::spawn(conn);
        Some(Client { send })
    }
}

impl Proxy {
    /// Exit code once the process has ended.
    pub fn exit_code(&mut self) -> Option<i32> {
        self.child.try_wait().ok().flatten().and_then(|s| s.code())
    }
}
