//! gRPC-Web ⇄ gRPC, as Envoy's `grpc_web` filter does it, so browser clients written for
//! Envoy work unchanged.
//!
//! Request: the four gRPC-Web content types become `application/grpc` with `te: trailers`
//! and no `content-length`; `-text` bodies are base64 and are decoded as they arrive (bad
//! base64 is an HTTP 400). Response: message frames pass through; the trailers become one last frame with flag
//! `0x80` holding `key:value\r\n` lines. When the caller's `accept` asks for
//! `application/grpc-web-text` (Envoy's rule), the response body is base64, encoded as it
//! streams, one padded base64 segment per complete gRPC frame (as Envoy does): however the
//! upstream splits its bytes into chunks, each message reaches the browser as soon as it is
//! complete and decodes on its own, so server streaming stays incremental.

use super::config::Bounds;
use super::request_body;
use crate::body::{self, Body, BodyError};
use crate::grpc::{self, Code};
use base64::Engine as _;
use base64::engine::general_purpose::STANDARD;
use bytes::{BufMut, Bytes, BytesMut};
use http::{HeaderMap, HeaderValue, header};
use http_body::{Body as HttpBody, Frame, SizeHint};
use http_body_util::BodyExt;
use std::pin::Pin;
use std::task::{Context, Poll, ready};

pub const GRPC_WEB: &str = "application/grpc-web";
pub const GRPC_WEB_PROTO: &str = "application/grpc-web+proto";
pub const GRPC_WEB_TEXT: &str = "application/grpc-web-text";
pub const GRPC_WEB_TEXT_PROTO: &str = "application/grpc-web-text+proto";
/// Flag byte of the frame that carries the trailers.
pub const TRAILER_FLAG: u8 = 0x80;

/// What kind of gRPC call a request is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Protocol {
    /// Plain gRPC (HTTP/2 with trailers): passes through untouched.
    Grpc,
    /// gRPC-Web; `text_request`: the body is base64; `text_response`: answer in base64.
    Web {
        text_request: bool,
        text_response: bool,
    },
}

impl Protocol {
    pub fn is_web(self) -> bool {
        matches!(self, Protocol::Web { .. })
    }
    pub fn text_response(self) -> bool {
        matches!(
            self,
            Protocol::Web {
                text_response: true,
                ..
            }
        )
    }
    /// The response `content-type` (Envoy answers with the `+proto` forms).
    pub fn response_content_type(self) -> &'static str {
        match self {
            Protocol::Grpc => "application/grpc",
            Protocol::Web {
                text_response: true,
                ..
            } => GRPC_WEB_TEXT_PROTO,
            Protocol::Web { .. } => GRPC_WEB_PROTO,
        }
    }
}

fn media_type(v: &HeaderValue) -> Option<String> {
    let s = v.to_str().ok()?;
    Some(s.split(';').next()?.trim().to_ascii_lowercase())
}

/// Classifies a request by `content-type` (and `accept` for the response encoding).
/// `None`: not gRPC at all.
pub fn classify(headers: &HeaderMap) -> Option<Protocol> {
    let ct = media_type(headers.get(header::CONTENT_TYPE)?)?;
    let text_response = headers
        .get(header::ACCEPT)
        .and_then(media_type)
        .is_some_and(|a| a == GRPC_WEB_TEXT || a == GRPC_WEB_TEXT_PROTO);
    match ct.as_str() {
        GRPC_WEB | GRPC_WEB_PROTO => Some(Protocol::Web {
            text_request: false,
            text_response,
        }),
        GRPC_WEB_TEXT | GRPC_WEB_TEXT_PROTO => Some(Protocol::Web {
            text_request: true,
            text_response,
        }),
        c if c == "application/grpc" || c.starts_with("application/grpc+") => Some(Protocol::Grpc),
        _ => None,
    }
}

#[derive(Debug, thiserror::Error)]
pub enum RequestError {
    #[error("invalid base64 in the grpc-web-text request body")]
    BadBase64,
    #[error("grpc-web request body larger than {0} bytes")]
    TooLarge(usize),
    #[error("grpc-web request body not received within {0:?}")]
    TimedOut(std::time::Duration),
    #[error("request body failed: {0}")]
    Body(String),
}

/// Rewrites a gRPC-Web request into a gRPC one (headers, and the body for `-text`), and
/// bounds the request body (see `request_body`).
pub async fn to_grpc_request(
    req: http::Request<Body>,
    protocol: Protocol,
    bounds: &Bounds,
) -> Result<http::Request<Body>, RequestError> {
    let (mut parts, body) = req.into_parts();
    let Protocol::Web { text_request, .. } = protocol else {
        let body = request_body::idle_bounded(body, bounds.request_body_idle_timeout);
        return Ok(http::Request::from_parts(parts, body));
    };
    let content_length = parts
        .headers
        .get(header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u64>().ok());
    let h = &mut parts.headers;
    h.remove(header::CONTENT_LENGTH);
    h.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/grpc"),
    );
    h.insert(header::TE, HeaderValue::from_static("trailers"));
    h.insert(header::ACCEPT, HeaderValue::from_static("application/grpc"));
    let whole = request_body::read_web_body(
        body,
        content_length,
        text_request,
        bounds.max_request_bytes,
        bounds.request_body_timeout,
    )
    .await?;
    Ok(http::Request::from_parts(parts, body::full(whole)))
}

/// The gRPC-Web trailer frame: `0x80`, big-endian length, `key:value\r\n` lines.
pub fn trailer_frame(trailers: &HeaderMap) -> Bytes {
    let mut lines = BytesMut::new();
    for (k, v) in trailers {
        lines.put_slice(k.as_str().as_bytes());
        lines.put_u8(b':');
        lines.put_slice(v.as_bytes());
        lines.put_slice(b"\r\n");
    }
    let mut out = BytesMut::with_capacity(lines.len() + 5);
    out.put_u8(TRAILER_FLAG);
    out.put_u32(u32::try_from(lines.len()).unwrap_or(u32::MAX));
    out.put_slice(&lines);
    out.freeze()
}

/// Largest part of a non-gRPC upstream body kept as its `grpc-message` (Envoy's
/// `MAX_BUFFERED_PLAINTEXT_LENGTH`).
const MAX_NON_GRPC_MESSAGE_BYTES: usize = 16 * 1024;

/// A gRPC answer: trailers-only (`grpc-status` in headers that end the stream), or HTTP 200
/// with a gRPC content type (Envoy's `isGrpcResponseHeaders`).
fn is_grpc_answer(parts: &http::response::Parts, end_stream: bool) -> bool {
    if end_stream {
        return parts.headers.contains_key("grpc-status");
    }
    parts.status == http::StatusCode::OK
        && parts
            .headers
            .get(header::CONTENT_TYPE)
            .and_then(media_type)
            .is_some_and(|c| c == "application/grpc" || c.starts_with("application/grpc+"))
}

/// Already gRPC-Web in binary: HTTP 200 with `application/grpc-web(+proto)`.
fn is_web_answer(parts: &http::response::Parts) -> bool {
    parts.status == http::StatusCode::OK
        && parts
            .headers
            .get(header::CONTENT_TYPE)
            .and_then(media_type)
            .is_some_and(|c| c == GRPC_WEB || c == GRPC_WEB_PROTO)
}

/// `grpc-message` text as Envoy writes it: bytes outside `' '..'~'` (exclusive) and `%` as `%XX`.
fn envoy_percent_encode(raw: &[u8]) -> String {
    let mut out = String::with_capacity(raw.len());
    for &b in raw {
        if (b' '..b'~').contains(&b) && b != b'%' {
            out.push(char::from(b));
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

/// Rewrites a gRPC response into gRPC-Web: content type, no length, trailers in the body.
/// A trailers-only response keeps its status in the headers, as Envoy leaves it. An answer
/// that is not gRPC at all is handled as Envoy's `grpc_web` filter does (see `non_grpc`).
pub async fn to_web_response(
    rsp: http::Response<Body>,
    protocol: Protocol,
) -> http::Response<Body> {
    if !protocol.is_web() {
        return rsp;
    }
    let (mut parts, body) = rsp.into_parts();
    let end_stream = body.is_end_stream();
    let needs_transformation = !is_grpc_answer(&parts, end_stream) && !is_web_answer(&parts);
    parts.headers.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static(protocol.response_content_type()),
    );
    if needs_transformation && !end_stream {
        return non_grpc(parts, body).await;
    }
    let trailers_only = grpc::status_of(&parts.headers).is_some() || end_stream;
    parts.headers.remove(header::CONTENT_LENGTH);
    let body = if trailers_only {
        body
    } else {
        WebBody {
            inner: body,
            text: protocol.text_response(),
            pending: BytesMut::new(),
            done: false,
        }
        .boxed_unsync()
    };
    http::Response::from_parts(parts, body)
}

/// An upstream answer that is not gRPC (an HTTP error page, a proxy's 503, ...), as Envoy's
/// `grpc_web` filter answers it: the HTTP status stays, `grpc-status` is mapped from it, the
/// body (its first 16 KiB) becomes the percent-encoded `grpc-message`, and the body is empty.
async fn non_grpc(mut parts: http::response::Parts, mut body: Body) -> http::Response<Body> {
    let mut kept = BytesMut::new();
    while let Some(frame) = body.frame().await {
        let Ok(frame) = frame else { break };
        if let Ok(data) = frame.into_data() {
            let room = MAX_NON_GRPC_MESSAGE_BYTES.saturating_sub(kept.len());
            kept.extend_from_slice(&data[..data.len().min(room)]);
        }
    }
    let code = Code::from_http(parts.status.as_u16());
    let h = &mut parts.headers;
    h.insert("grpc-status", HeaderValue::from(code.as_u16()));
    if let Ok(v) = HeaderValue::from_str(&envoy_percent_encode(&kept)) {
        h.insert("grpc-message", v);
    }
    h.insert(header::CONTENT_LENGTH, HeaderValue::from(0u32));
    http::Response::from_parts(parts, body::empty())
}

/// Streams a gRPC response body as a gRPC-Web body.
struct WebBody {
    inner: Body,
    text: bool,
    /// Text mode: bytes of a gRPC frame that has not fully arrived yet.
    pending: BytesMut,
    done: bool,
}

impl WebBody {
    /// Encodes `data` for the wire. Binary passes through; text emits every complete frame
    /// as its own padded base64 segment and keeps a partial frame for later. `last` flushes
    /// whatever is left (only a malformed upstream leaves a partial frame at the end).
    fn encode(&mut self, data: &[u8], last: bool) -> Bytes {
        if !self.text {
            return Bytes::copy_from_slice(data);
        }
        self.pending.extend_from_slice(data);
        let mut out = String::new();
        while self.pending.len() >= 5 {
            let p = &self.pending;
            let len = u32::from_be_bytes([p[1], p[2], p[3], p[4]]) as usize;
            if self.pending.len() - 5 < len {
                break;
            }
            let frame = self.pending.split_to(5 + len);
            STANDARD.encode_string(&frame, &mut out);
        }
        if last && !self.pending.is_empty() {
            let rest = self.pending.split();
            STANDARD.encode_string(&rest, &mut out);
        }
        Bytes::from(out)
    }

    /// The final frame (trailers), encoded after anything still pending.
    fn finish(&mut self, trailers: &HeaderMap) -> Bytes {
        self.done = true;
        let mut out = BytesMut::new();
        out.extend_from_slice(&self.encode(&[], true));
        out.extend_from_slice(&self.encode(&trailer_frame(trailers), true));
        out.freeze()
    }
}

impl HttpBody for WebBody {
    type Data = Bytes;
    type Error = BodyError;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BodyError>>> {
        loop {
            if self.done {
                return Poll::Ready(None);
            }
            let polled = ready!(Pin::new(&mut self.inner).poll_frame(cx));
            let out = match polled {
                Some(Ok(frame)) => match frame.into_data() {
                    Ok(data) => self.encode(&data, false),
                    Err(frame) => {
                        let trailers = frame.into_trailers().unwrap_or_default();
                        self.finish(&trailers)
                    }
                },
                Some(Err(e)) => {
                    // An HTTP/1.1 caller cannot see a stream reset: end with a status instead.
                    tracing::debug!(error = %e, "upstream stream failed under a grpc-web call");
                    let t = crate::error::respond::grpc_trailers(
                        Code::Unavailable,
                        crate::error::respond::public_message("upstream-failed"),
                        "upstream-failed",
                    );
                    self.finish(&t)
                }
                None => {
                    self.done = true;
                    self.encode(&[], true)
                }
            };
            if !out.is_empty() {
                return Poll::Ready(Some(Ok(Frame::data(out))));
            }
        }
    }

    fn is_end_stream(&self) -> bool {
        self.done
    }

    fn size_hint(&self) -> SizeHint {
        SizeHint::default()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use http_body_util::StreamBody;

    fn headers(pairs: &[(&'static str, &'static str)]) -> HeaderMap {
        let mut h = HeaderMap::new();
        for (k, v) in pairs {
            h.insert(*k, HeaderValue::from_static(v));
        }
        h
    }

    #[test]
    fn classifies_content_types() {
        let web = |ct, accept| classify(&headers(&[("content-type", ct), ("accept", accept)]));
        assert_eq!(
            web("application/grpc-web", "*/*"),
            Some(Protocol::Web {
                text_request: false,
                text_response: false
            })
        );
        assert_eq!(
            web(
                "application/grpc-web-text+proto",
                "application/grpc-web-text"
            ),
            Some(Protocol::Web {
                text_request: true,
                text_response: true
            })
        );
        assert_eq!(web("application/grpc+proto", "*/*"), Some(Protocol::Grpc));
        assert_eq!(web("text/plain", "*/*"), None);
        assert_eq!(classify(&HeaderMap::new()), None);
    }

    #[test]
    fn trailer_frame_layout() {
        let t = trailer_frame(&headers(&[("grpc-status", "0"), ("x-a", "b")]));
        assert_eq!(t[0], 0x80);
        let len = u32::from_be_bytes([t[1], t[2], t[3], t[4]]) as usize;
        assert_eq!(&t[5..], b"grpc-status:0\r\nx-a:b\r\n");
        assert_eq!(len, t.len() - 5);
    }

    async fn run_body(chunks: Vec<Bytes>, text: bool) -> Vec<u8> {
        let mut frames: Vec<Result<Frame<Bytes>, BodyError>> =
            chunks.into_iter().map(|c| Ok(Frame::data(c))).collect();
        frames.push(Ok(Frame::trailers(headers(&[("grpc-status", "0")]))));
        let inner = StreamBody::new(futures::stream::iter(frames)).boxed_unsync();
        let mut rsp = http::Response::new(inner);
        rsp.headers_mut()
            .insert("content-type", HeaderValue::from_static("application/grpc"));
        let protocol = Protocol::Web {
            text_request: false,
            text_response: text,
        };
        let out = to_web_response(rsp, protocol).await;
        assert_eq!(
            out.headers()["content-type"],
            protocol.response_content_type()
        );
        out.into_body().collect().await.unwrap().to_bytes().to_vec()
    }

    #[tokio::test]
    async fn non_grpc_answers_keep_their_http_status_as_in_envoy() {
        let web = Protocol::Web {
            text_request: false,
            text_response: true,
        };
        let mut rsp = http::Response::new(body::full(Bytes::from_static(b"down 100%\n")));
        *rsp.status_mut() = http::StatusCode::SERVICE_UNAVAILABLE;
        let out = to_web_response(rsp, web).await;
        assert_eq!(out.status(), http::StatusCode::SERVICE_UNAVAILABLE);
        assert_eq!(out.headers()["grpc-status"], "14");
        assert_eq!(out.headers()["grpc-message"], "down 100%25%0A");
        assert_eq!(out.headers()["content-length"], "0");
        assert_eq!(out.headers()["content-type"], GRPC_WEB_TEXT_PROTO);
        assert!(
            out.into_body()
                .collect()
                .await
                .unwrap()
                .to_bytes()
                .is_empty()
        );
        // HTTP 200 that is not gRPC: UNKNOWN, message from the body.
        let mut rsp = http::Response::new(body::full(Bytes::from_static(b"<html>")));
        rsp.headers_mut()
            .insert("content-type", HeaderValue::from_static("text/html"));
        let out = to_web_response(rsp, web).await;
        assert_eq!(out.status(), http::StatusCode::OK);
        assert_eq!(out.headers()["grpc-status"], "2");
        assert_eq!(out.headers()["grpc-message"], "<html>");
        // Headers that end the stream are left as they are (no status is invented).
        let mut rsp = http::Response::new(body::empty());
        *rsp.status_mut() = http::StatusCode::NOT_FOUND;
        let out = to_web_response(rsp, web).await;
        assert_eq!(out.status(), http::StatusCode::NOT_FOUND);
        assert!(!out.headers().contains_key("grpc-status"));
    }

    fn grpc_frame(msg: &[u8]) -> Vec<u8> {
        let mut f = vec![0u8];
        f.extend_from_slice(&(msg.len() as u32).to_be_bytes());
        f.extend_from_slice(msg);
        f
    }

    #[tokio::test]
    async fn text_encoding_is_one_padded_segment_per_frame_across_chunk_boundaries() {
        let msgs: [&[u8]; 3] = [b"a", b"bcdefgh", &[7u8; 100]];
        let payload: Vec<u8> = msgs.iter().flat_map(|m| grpc_frame(m)).collect();
        let trailer = trailer_frame(&headers(&[("grpc-status", "0")]));
        let mut segments: Vec<u8> = Vec::new();
        for m in msgs {
            segments.extend(STANDARD.encode(grpc_frame(m)).bytes());
        }
        segments.extend(STANDARD.encode(&trailer).bytes());
        // Split at every awkward offset: partial frames must wait for the rest.
        for split in [1usize, 2, 4, 5, 7, 100, 1000] {
            let chunks: Vec<Bytes> = payload.chunks(split).map(Bytes::copy_from_slice).collect();
            let text = run_body(chunks.clone(), true).await;
            let binary = run_body(chunks, false).await;
            assert_eq!(text, segments, "split {split}");
            let mut expected = payload.clone();
            expected.extend_from_slice(&trailer);
            assert_eq!(binary, expected);
        }
    }
}
