//! Request bodies at the edge, bounded in size and time.
//!
//! A gRPC-Web body (browsers send whole requests: gRPC-Web has no client streaming) is read in
//! full before the call goes on. `-text` bodies are base64-decoded chunk by chunk as they
//! arrive; the decoded size is checked against `max_request_bytes` on every chunk (and
//! against `content-length` before anything is read); the whole body must arrive within
//! `request_body_timeout`, whatever the route's timeout. Reading it first means a slow or
//! oversize body holds no bulkhead permit and reaches no endpoint, and its failure gets a clean
//! status instead of a reset that an endpoint's health would be blamed for.
//!
//! Plain gRPC bodies may be client streams, so they stream through; each ends with an error
//! when no frame arrives for `request_body_idle_timeout`.

use super::grpc_web::RequestError;
use crate::body::{Body, BodyError};
use base64::Engine as _;
use base64::engine::general_purpose::STANDARD;
use bytes::Bytes;
use http_body::{Body as HttpBody, Frame};
use http_body_util::BodyExt;
use std::pin::Pin;
use std::task::{Context, Poll, ready};
use std::time::Duration;
use tokio::time::Sleep;

/// Decodes a base64 body. Padding may end each chunk a client encoded separately, so the
/// text is decoded as a run of padded segments (as Envoy accepts it).
pub fn decode_text(input: &[u8]) -> Result<Bytes, RequestError> {
    let mut out = Vec::with_capacity(input.len() / 4 * 3);
    decode_into(input, &mut out)?;
    Ok(out.into())
}

fn decode_into(input: &[u8], out: &mut Vec<u8>) -> Result<(), RequestError> {
    if !input.len().is_multiple_of(4) {
        return Err(RequestError::BadBase64);
    }
    let mut start = 0;
    for (i, quad) in input.chunks(4).enumerate() {
        if quad.contains(&b'=') {
            let end = (i + 1) * 4;
            STANDARD
                .decode_vec(&input[start..end], out)
                .map_err(|_| RequestError::BadBase64)?;
            start = end;
        }
    }
    STANDARD
        .decode_vec(&input[start..], out)
        .map_err(|_| RequestError::BadBase64)
}

/// Base64 decoded as it arrives: every complete 4-character group is decoded at once, and at
/// most three characters wait for the next chunk.
#[derive(Default)]
struct TextDecoder {
    pending: Vec<u8>,
}

impl TextDecoder {
    fn push(&mut self, chunk: &[u8], out: &mut Vec<u8>) -> Result<(), RequestError> {
        self.pending.extend_from_slice(chunk);
        let whole = self.pending.len() / 4 * 4;
        decode_into(&self.pending[..whole], out)?;
        self.pending.drain(..whole);
        Ok(())
    }

    fn finish(&self) -> Result<(), RequestError> {
        if self.pending.is_empty() {
            Ok(())
        } else {
            Err(RequestError::BadBase64)
        }
    }
}

/// Reads a whole gRPC-Web request body: decoded (for `-text`), at most `max` bytes after
/// decoding, within `timeout`.
pub(crate) async fn read_web_body(
    body: Body,
    content_length: Option<u64>,
    text: bool,
    max: usize,
    timeout: Duration,
) -> Result<Bytes, RequestError> {
    if let Some(len) = content_length {
        let decoded = if text {
            (len / 4 * 3).saturating_sub(2)
        } else {
            len
        };
        if decoded > max as u64 {
            return Err(RequestError::TooLarge(max));
        }
    }
    tokio::time::timeout(timeout, read_bounded(body, text, max))
        .await
        .map_err(|_| RequestError::TimedOut(timeout))?
}

async fn read_bounded(mut body: Body, text: bool, max: usize) -> Result<Bytes, RequestError> {
    let mut out = Vec::new();
    let mut decoder = TextDecoder::default();
    while let Some(frame) = body.frame().await {
        let frame = frame.map_err(|e| RequestError::Body(e.to_string()))?;
        let Ok(data) = frame.into_data() else {
            continue;
        };
        if text {
            decoder.push(&data, &mut out)?;
        } else {
            out.extend_from_slice(&data);
        }
        if out.len() > max {
            return Err(RequestError::TooLarge(max));
        }
    }
    decoder.finish()?;
    Ok(out.into())
}

#[derive(Debug, thiserror::Error)]
#[error("no request data for {0:?}: request body idle timeout")]
pub(crate) struct BodyIdle(Duration);

/// A streaming request body that fails when no frame arrives for `idle`.
pub(crate) fn idle_bounded(body: Body, idle: Duration) -> Body {
    IdleBounded {
        inner: body,
        idle,
        timer: Box::pin(tokio::time::sleep(idle)),
        failed: false,
    }
    .boxed_unsync()
}

struct IdleBounded {
    inner: Body,
    idle: Duration,
    timer: Pin<Box<Sleep>>,
    failed: bool,
}

impl HttpBody for IdleBounded {
    type Data = Bytes;
    type Error = BodyError;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BodyError>>> {
        if self.failed {
            return Poll::Ready(None);
        }
        if let Poll::Ready(frame) = Pin::new(&mut self.inner).poll_frame(cx) {
            let deadline = tokio::time::Instant::now() + self.idle;
            self.timer.as_mut().reset(deadline);
            return Poll::Ready(frame);
        }
        ready!(self.timer.as_mut().poll(cx));
        self.failed = true;
        let idle = self.idle;
        Poll::Ready(Some(Err(BodyError(Box::new(BodyIdle(idle))))))
    }

    fn is_end_stream(&self) -> bool {
        self.failed || self.inner.is_end_stream()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use http_body_util::StreamBody;

    fn chunked(chunks: Vec<&'static [u8]>) -> Body {
        let frames: Vec<Result<Frame<Bytes>, BodyError>> = chunks
            .into_iter()
            .map(|c| Ok(Frame::data(Bytes::from_static(c))))
            .collect();
        StreamBody::new(futures::stream::iter(frames)).boxed_unsync()
    }

    const LONG: Duration = Duration::from_secs(3600);

    #[test]
    fn decodes_padded_segments_and_rejects_garbage() {
        let a = STANDARD.encode(b"ab");
        let b = STANDARD.encode(b"cdef");
        let joined = format!("{a}{b}");
        assert_eq!(&decode_text(joined.as_bytes()).unwrap()[..], b"abcdef");
        assert!(decode_text(b"abc").is_err());
        assert!(decode_text(b"!!!!").is_err());
        assert!(decode_text(b"").unwrap().is_empty());
    }

    #[tokio::test]
    async fn text_is_decoded_across_any_chunk_split() {
        let text = format!(
            "{}{}",
            STANDARD.encode(b"hello"),
            STANDARD.encode(b"world!")
        );
        let bytes: &'static [u8] = Box::leak(text.into_bytes().into_boxed_slice());
        for split in [1, 2, 3, 5, 7, 64] {
            let body = chunked(bytes.chunks(split).collect());
            let out = read_web_body(body, None, true, 1024, LONG).await.unwrap();
            assert_eq!(&out[..], b"helloworld!", "split {split}");
        }
        let bad = read_web_body(chunked(vec![b"aGVsbG8", b"="]), None, true, 1024, LONG).await;
        assert_eq!(&bad.unwrap()[..], b"hello");
        let cut = read_web_body(chunked(vec![b"aGVsbG"]), None, true, 1024, LONG).await;
        assert!(matches!(cut, Err(RequestError::BadBase64)));
    }

    #[tokio::test]
    async fn the_size_cap_holds_while_streaming_and_from_content_length() {
        // Refused at the chunk that crosses the cap; the rest is never read.
        let body = chunked(vec![&[1; 600], &[2; 600]]);
        let r = read_web_body(body, None, false, 1000, LONG).await;
        assert!(matches!(r, Err(RequestError::TooLarge(1000))));
        // Decoded bytes count: 1336 base64 characters are 1002 bytes.
        let text: &'static [u8] =
            Box::leak(STANDARD.encode([0u8; 1002]).into_bytes().into_boxed_slice());
        let r = read_web_body(chunked(text.chunks(100).collect()), None, true, 1000, LONG).await;
        assert!(matches!(r, Err(RequestError::TooLarge(1000))));
        // A declared length over the cap is refused before reading.
        let pending = http_body_util::StreamBody::new(futures::stream::pending()).boxed_unsync();
        let r = read_web_body(pending, Some(1001), false, 1000, LONG).await;
        assert!(matches!(r, Err(RequestError::TooLarge(1000))));
        let ok = read_web_body(chunked(vec![&[0; 1000]]), Some(1000), false, 1000, LONG).await;
        assert_eq!(ok.unwrap().len(), 1000);
    }

    #[tokio::test(start_paused = true)]
    async fn a_slow_body_times_out() {
        let pending = StreamBody::new(futures::stream::pending()).boxed_unsync();
        let r = read_web_body(pending, None, false, 1000, Duration::from_secs(30)).await;
        assert!(matches!(r, Err(RequestError::TimedOut(_))));
    }

    #[tokio::test(start_paused = true)]
    async fn a_streaming_body_fails_after_an_idle_gap_only() {
        let (tx, rx) = tokio::sync::mpsc::channel::<Result<Frame<Bytes>, BodyError>>(4);
        let inner = StreamBody::new(tokio_stream_from(rx)).boxed_unsync();
        let mut body = idle_bounded(inner, Duration::from_secs(10));
        let start = tokio::time::Instant::now();
        for i in 0..3u8 {
            let tx = tx.clone();
            tokio::spawn(async move {
                tokio::time::sleep(Duration::from_secs(9)).await;
                let _ = tx.send(Ok(Frame::data(Bytes::from(vec![i])))).await;
            });
            let f = body.frame().await.unwrap().unwrap();
            assert_eq!(f.into_data().unwrap()[0], i);
        }
        // Three frames 9 s apart passed; then nothing for 10 s.
        let e = body.frame().await.unwrap().unwrap_err();
        assert!(e.to_string().contains("idle"), "{e}");
        assert_eq!(start.elapsed(), Duration::from_secs(37));
        assert!(body.frame().await.is_none());
    }

    fn tokio_stream_from<T: Send + 'static>(
        mut rx: tokio::sync::mpsc::Receiver<T>,
    ) -> impl futures::Stream<Item = T> {
        futures::stream::poll_fn(move |cx| rx.poll_recv(cx))
    }
}
