//! The load generator's gRPC-Web client, as a browser library speaks it: each call is
//! a POST with one length-prefixed message (base64 for `grpc-web-text`), and the answer
//! carries the messages and then a trailer frame (flag 0x80) with `grpc-status`. Calls
//! go over HTTP/2 without TLS (h2c, prior knowledge), as browsers on HTTPS use HTTP/2;
//! the gateway and Envoy accept it on the same port as HTTP/1.1. Written on hyper
//! because no gRPC-Web client crate for Rust speaks both binary and text.

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD;
use bytes::{BufMut, Bytes, BytesMut};
use http_body_util::{BodyExt, Full};
use hyper::client::conn::http2::SendRequest;
use hyper_util::rt::{TokioExecutor, TokioIo};
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

/// The browser origin the edge allows (CORS) and the calls send.
pub const ORIGIN: &str = "https://app.tally.test";
/// Largest gRPC-Web answer the client reads.
const MAX_ANSWER_BYTES: usize = 8 * 1024 * 1024;
/// HTTP/2 stream window of the client's connections (as the load generator's gRPC side).
const STREAM_WINDOW: u32 = 1024 * 1024;
/// HTTP/2 connection window.
const CONNECTION_WINDOW: u32 = 4 * 1024 * 1024;
/// Time to open one connection.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);

/// Binary (`application/grpc-web+proto`) or text (`application/grpc-web-text`, base64).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Mode {
    /// Frames as bytes.
    Binary,
    /// Frames in base64.
    Text,
}

impl Mode {
    /// The content type a browser sends and accepts.
    pub fn content_type(&self) -> &'static str {
        match self {
            Mode::Binary => "application/grpc-web+proto",
            Mode::Text => "application/grpc-web-text",
        }
    }

    /// Short name for reports.
    pub fn label(&self) -> &'static str {
        match self {
            Mode::Binary => "binary",
            Mode::Text => "text",
        }
    }
}

/// One HTTP/2 connection to an edge, with what every call on it sends.
#[derive(Clone)]
pub struct WebConn {
    send: SendRequest<Full<Bytes>>,
    authority: Arc<str>,
    authorization: Arc<str>,
}

impl WebConn {
    /// Opens an h2c connection to `addr`; calls carry `:authority` = `authority` and
    /// `authorization` = `authorization`.
    pub async fn connect(
        addr: SocketAddr,
        authority: &str,
        authorization: &str,
    ) -> Result<WebConn, String> {
        let tcp = tokio::time::timeout(CONNECT_TIMEOUT, tokio::net::TcpStream::connect(addr))
            .await
            .map_err(|_| format!("connect to {addr} timed out"))?
            .map_err(|e| format!("connect to {addr}: {e}"))?;
        tcp.set_nodelay(true).map_err(|e| e.to_string())?;
        let (send, driver) = hyper::client::conn::http2::Builder::new(TokioExecutor::new())
            .initial_stream_window_size(STREAM_WINDOW)
            .initial_connection_window_size(CONNECTION_WINDOW)
            .handshake(TokioIo::new(tcp))
            .await
            .map_err(|e| format!("HTTP/2 handshake with {addr}: {e}"))?;
        tokio::spawn(async move {
            let _ = driver.await;
        });
        Ok(WebConn {
            send,
            authority: authority.into(),
            authorization: authorization.into(),
        })
    }

    /// One gRPC-Web call of `path` with `message`; the messages of a status-0 answer.
    pub async fn call(&self, path: &str, message: &[u8], mode: Mode) -> Result<Vec<Bytes>, String> {
        let body = request_body(message, mode);
        let req = hyper::Request::post(format!("http://{}{path}", self.authority))
            .header("content-type", mode.content_type())
            .header("accept", mode.content_type())
            .header("x-grpc-web", "1")
            .header("x-user-agent", "grpc-web-javascript/0.1")
            .header("origin", ORIGIN)
            .header("authorization", &*self.authorization)
            .body(Full::new(body))
            .map_err(|e| e.to_string())?;
        let mut send = self.send.clone();
        send.ready().await.map_err(|e| e.to_string())?;
        let rsp = send.send_request(req).await.map_err(|e| e.to_string())?;
        let (parts, body) = rsp.into_parts();
        if parts.status != hyper::StatusCode::OK {
            return Err(format!("HTTP status {}", parts.status));
        }
        let header_status = parts
            .headers
            .get("grpc-status")
            .and_then(|v| v.to_str().ok())
            .map(str::to_string);
        let raw = http_body_util::Limited::new(body, MAX_ANSWER_BYTES)
            .collect()
            .await
            .map_err(|e| format!("reading the answer: {e}"))?
            .to_bytes();
        let answer = parse_answer(&raw, mode)?;
        match answer.status.or(header_status).as_deref() {
            Some("0") => Ok(answer.messages),
            Some(code) => Err(format!(
                "grpc-status {code}: {}",
                answer.message.unwrap_or_default()
            )),
            None => Err("answer without grpc-status".into()),
        }
    }
}

/// One message as a gRPC-Web request body.
pub fn request_body(message: &[u8], mode: Mode) -> Bytes {
    let framed = frame(0, message);
    match mode {
        Mode::Binary => framed,
        Mode::Text => Bytes::from(STANDARD.encode(&framed)),
    }
}

/// A length-prefixed frame: flag byte, 4-byte big-endian length, payload.
pub fn frame(flag: u8, payload: &[u8]) -> Bytes {
    let mut b = BytesMut::with_capacity(payload.len() + 5);
    b.put_u8(flag);
    b.put_u32(payload.len() as u32);
    b.put_slice(payload);
    b.freeze()
}

/// A decoded gRPC-Web answer body.
#[derive(Debug, Default, PartialEq)]
pub struct Answer {
    /// Data frames, in order.
    pub messages: Vec<Bytes>,
    /// `grpc-status` from the trailer frame.
    pub status: Option<String>,
    /// `grpc-message` from the trailer frame.
    pub message: Option<String>,
}

/// Decodes an answer body (base64 first for text; a text body may be several separately
/// padded base64 chunks, one per frame the server flushed).
pub fn parse_answer(raw: &[u8], mode: Mode) -> Result<Answer, String> {
    let bytes = match mode {
        Mode::Binary => Bytes::copy_from_slice(raw),
        Mode::Text => decode_base64_chunks(raw)?,
    };
    let mut out = Answer::default();
    let mut buf = &bytes[..];
    while !buf.is_empty() {
        if buf.len() < 5 {
            return Err(format!("truncated frame header ({} bytes)", buf.len()));
        }
        let flag = buf[0];
        let len = u32::from_be_bytes([buf[1], buf[2], buf[3], buf[4]]) as usize;
        let payload = buf
            .get(5..5 + len)
            .ok_or_else(|| format!("truncated frame: {len} bytes announced"))?;
        if flag & 0x80 != 0 {
            let text = std::str::from_utf8(payload).map_err(|e| e.to_string())?;
            for line in text.split("\r\n").filter(|l| !l.is_empty()) {
                let Some((k, v)) = line.split_once(':') else {
                    return Err(format!("trailer line without a colon: {line:?}"));
                };
                match k.trim().to_ascii_lowercase().as_str() {
                    "grpc-status" => out.status = Some(v.trim().to_string()),
                    "grpc-message" => out.message = Some(v.trim().to_string()),
                    _ => {}
                }
            }
        } else {
            out.messages.push(Bytes::copy_from_slice(payload));
        }
        buf = &buf[5 + len..];
    }
    Ok(out)
}

fn decode_base64_chunks(input: &[u8]) -> Result<Bytes, String> {
    let mut out = Vec::with_capacity(input.len() / 4 * 3);
    let mut start = 0;
    for (i, quad) in input.chunks(4).enumerate() {
        if quad.contains(&b'=') {
            STANDARD
                .decode_vec(&input[start..(i + 1) * 4], &mut out)
                .map_err(|e| format!("base64: {e}"))?;
            start = (i + 1) * 4;
        }
    }
    STANDARD
        .decode_vec(&input[start.min(input.len())..], &mut out)
        .map_err(|e| format!("base64: {e}"))?;
    Ok(out.into())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn answer(frames: &[Bytes]) -> Vec<u8> {
        frames.iter().flat_map(|f| f.to_vec()).collect()
    }

    #[test]
    fn binary_answers_give_messages_then_status() {
        let raw = answer(&[
            frame(0, b"one"),
            frame(0, b""),
            frame(0x80, b"grpc-status:0\r\ngrpc-message: ok\r\n"),
        ]);
        let a = parse_answer(&raw, Mode::Binary).unwrap();
        assert_eq!(a.messages, vec![Bytes::from("one"), Bytes::new()]);
        assert_eq!(a.status.as_deref(), Some("0"));
        assert_eq!(a.message.as_deref(), Some("ok"));
    }

    #[test]
    fn text_answers_may_be_several_padded_chunks() {
        let msg = frame(0, b"ab");
        let trailer = frame(0x80, b"grpc-status: 5\r\n");
        let raw = format!("{}{}", STANDARD.encode(&msg), STANDARD.encode(&trailer));
        assert!(
            STANDARD.encode(&msg).ends_with('='),
            "the test needs padding inside"
        );
        let a = parse_answer(raw.as_bytes(), Mode::Text).unwrap();
        assert_eq!(a.messages, vec![Bytes::from("ab")]);
        assert_eq!(a.status.as_deref(), Some("5"));
    }

    #[test]
    fn requests_are_one_frame_in_either_mode() {
        assert_eq!(
            &request_body(b"xyz", Mode::Binary)[..],
            b"\x00\x00\x00\x00\x03xyz"
        );
        assert_eq!(
            &request_body(b"xyz", Mode::Text)[..],
            STANDARD.encode(b"\x00\x00\x00\x00\x03xyz").as_bytes()
        );
    }

    #[test]
    fn truncated_answers_are_errors() {
        assert!(parse_answer(b"\x00\x00\x00", Mode::Binary).is_err());
        assert!(parse_answer(b"\x00\x00\x00\x00\x09abc", Mode::Binary).is_err());
        assert!(parse_answer(b"!!!", Mode::Text).is_err());
    }
}
