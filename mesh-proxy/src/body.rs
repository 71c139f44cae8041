//! The one body type every layer speaks, plus the body wrappers that let layers act at the
//! end of a stream (gRPC reports its status in trailers, after the response future resolved).

use crate::ProxyError;
use crate::error::respond;
use crate::grpc::{self, Code};
use bytes::Bytes;
use http::HeaderMap;
use http_body::{Body as HttpBody, Frame, SizeHint};
use http_body_util::{BodyExt, Empty, Full, combinators::UnsyncBoxBody};
use std::pin::Pin;
use std::task::{Context, Poll, ready};
use tokio::time::{Instant, Sleep};

pub type BoxError = Box<dyn std::error::Error + Send + Sync>;
pub type Body = UnsyncBoxBody<Bytes, BodyError>;

/// A body stream failure. A named type rather than a boxed trait object keeps the layers'
/// `Send` bounds free of trait-object lifetimes.
#[derive(Debug)]
pub struct BodyError(pub BoxError);

impl std::fmt::Display for BodyError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        self.0.fmt(f)
    }
}

impl std::error::Error for BodyError {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        Some(&*self.0)
    }
}

pub fn empty() -> Body {
    Empty::new().map_err(|n| match n {}).boxed_unsync()
}

pub fn full(b: Bytes) -> Body {
    Full::new(b).map_err(|n| match n {}).boxed_unsync()
}

pub fn incoming(b: hyper::body::Incoming) -> Body {
    b.map_err(|e| BodyError(Box::new(e))).boxed_unsync()
}

/// How a call ended, as seen by a layer watching its response.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum End {
    /// `grpc-status` from trailers or a trailers-only response.
    Status(Code),
    /// The stream ended without a `grpc-status`.
    NoStatus,
    /// The upstream reset or broke the stream.
    Error,
    /// The downstream went away before the end.
    Dropped,
}

impl End {
    /// The status to report for the call.
    pub fn code(self) -> Code {
        match self {
            End::Status(c) => c,
            End::NoStatus => Code::Unknown,
            End::Error => Code::Unavailable,
            End::Dropped => Code::Cancelled,
        }
    }
}

type Callback = Box<dyn FnOnce(End) + Send>;

/// Calls `f` exactly once, when the response's call has ended (or immediately for trailers-only).
pub fn on_end(
    rsp: http::Response<Body>,
    f: impl FnOnce(End) + Send + 'static,
) -> http::Response<Body> {
    if let Some(code) = immediate_status(&rsp) {
        f(End::Status(code));
        return rsp;
    }
    rsp.map(|inner| {
        OnEnd {
            inner,
            f: Some(Box::new(f)),
        }
        .boxed_unsync()
    })
}

/// Status known from the response head alone: trailers-only gRPC, or a non-200 HTTP status.
pub fn immediate_status(rsp: &http::Response<Body>) -> Option<Code> {
    if let Some(c) = grpc::status_of(rsp.headers()) {
        return Some(c);
    }
    if rsp.status() != http::StatusCode::OK {
        return Some(Code::from_http(rsp.status().as_u16()));
    }
    None
}

struct OnEnd {
    inner: Body,
    f: Option<Callback>,
}

impl OnEnd {
    fn fire(&mut self, end: End) {
        if let Some(f) = self.f.take() {
            f(end);
        }
    }
}

impl HttpBody for OnEnd {
    type Data = Bytes;
    type Error = BodyError;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BodyError>>> {
        let polled = ready!(Pin::new(&mut self.inner).poll_frame(cx));
        match &polled {
            Some(Ok(frame)) => {
                if let Some(t) = frame.trailers_ref() {
                    let end = grpc::status_of(t).map_or(End::NoStatus, End::Status);
                    self.fire(end);
                }
            }
            Some(Err(e)) => {
                tracing::debug!(error = %e, detail = ?e, "response stream failed");
                let end = if crate::error::is_cancellation(e) {
                    End::Dropped
                } else {
                    End::Error
                };
                self.fire(end);
            }
            None => self.fire(End::NoStatus),
        }
        Poll::Ready(polled)
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}

impl Drop for OnEnd {
    fn drop(&mut self) {
        self.fire(End::Dropped);
    }
}

/// What the first frame of a response body was.
pub enum Peeked {
    Data,
    Trailers(HeaderMap),
    End,
    Error,
}

/// Puts an already-read first frame back in front of the rest of its body.
pub fn unread(first: Option<Result<Frame<Bytes>, BodyError>>, rest: Body) -> (Peeked, Body) {
    let peeked = match &first {
        Some(Ok(f)) if f.is_data() => Peeked::Data,
        Some(Ok(f)) => f
            .trailers_ref()
            .map_or(Peeked::Data, |t| Peeked::Trailers(t.clone())),
        Some(Err(_)) => Peeked::Error,
        None => Peeked::End,
    };
    (peeked, Prefixed { first, rest }.boxed_unsync())
}

/// Yields one already-read frame, then the rest of a body.
pub struct Prefixed {
    pub first: Option<Result<Frame<Bytes>, BodyError>>,
    pub rest: Body,
}

impl HttpBody for Prefixed {
    type Data = Bytes;
    type Error = BodyError;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BodyError>>> {
        if let Some(f) = self.first.take() {
            return Poll::Ready(Some(f));
        }
        Pin::new(&mut self.rest).poll_frame(cx)
    }

    fn is_end_stream(&self) -> bool {
        self.first.is_none() && self.rest.is_end_stream()
    }
}

/// Last time a stream moved in either direction, shared by its request and response bodies.
#[derive(Clone)]
pub struct Activity {
    base: Instant,
    last_nanos: std::sync::Arc<std::sync::atomic::AtomicU64>,
}

impl Activity {
    pub fn new() -> Self {
        Self {
            base: Instant::now(),
            last_nanos: std::sync::Arc::new(std::sync::atomic::AtomicU64::new(0)),
        }
    }
    fn touch(&self) {
        let n = u64::try_from(self.base.elapsed().as_nanos()).unwrap_or(u64::MAX);
        self.last_nanos
            .store(n, std::sync::atomic::Ordering::Relaxed);
    }
    fn last(&self) -> Instant {
        self.base
            + std::time::Duration::from_nanos(
                self.last_nanos.load(std::sync::atomic::Ordering::Relaxed),
            )
    }
}

impl Default for Activity {
    fn default() -> Self {
        Self::new()
    }
}

/// Marks `activity` on every frame of a request body.
pub fn touching(body: Body, activity: Activity) -> Body {
    Touching {
        inner: body,
        activity,
    }
    .boxed_unsync()
}

struct Touching {
    inner: Body,
    activity: Activity,
}

impl HttpBody for Touching {
    type Data = Bytes;
    type Error = BodyError;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BodyError>>> {
        let f = ready!(Pin::new(&mut self.inner).poll_frame(cx));
        if f.is_some() {
            self.activity.touch();
        }
        Poll::Ready(f)
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }
}

/// Ends a response stream with DEADLINE_EXCEEDED trailers when the call's deadline passes, or
/// when the stream stays idle (no frame either way) for `idle`, dropping (and so cancelling)
/// the upstream stream.
pub fn with_limits(
    body: Body,
    deadline: Option<Instant>,
    idle: Option<(std::time::Duration, Activity)>,
) -> Body {
    if deadline.is_none() && idle.is_none() {
        return body;
    }
    TimedBody {
        inner: Some(body),
        deadline: deadline.map(|d| Box::pin(tokio::time::sleep_until(d))),
        idle: idle.map(|(d, a)| {
            a.touch();
            (d, a, Box::pin(tokio::time::sleep(d)))
        }),
    }
    .boxed_unsync()
}

struct TimedBody {
    inner: Option<Body>,
    deadline: Option<Pin<Box<Sleep>>>,
    idle: Option<(std::time::Duration, Activity, Pin<Box<Sleep>>)>,
}

impl HttpBody for TimedBody {
    type Data = Bytes;
    type Error = BodyError;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BodyError>>> {
        let Some(inner) = self.inner.as_mut() else {
            return Poll::Ready(None);
        };
        if let Poll::Ready(f) = Pin::new(inner).poll_frame(cx) {
            if matches!(&f, Some(Ok(fr)) if fr.is_trailers()) || f.is_none() {
                self.inner = None;
            } else if let Some((_, a, _)) = &self.idle {
                a.touch();
            }
            return Poll::Ready(f);
        }
        if let Some(d) = self.deadline.as_mut()
            && d.as_mut().poll(cx).is_ready()
        {
            self.inner = None;
            let t = respond::trailers(&ProxyError::DeadlineExceeded);
            return Poll::Ready(Some(Ok(Frame::trailers(t))));
        }
        if let Some((idle, activity, sleep)) = self.idle.as_mut() {
            while sleep.as_mut().poll(cx).is_ready() {
                let due = activity.last() + *idle;
                if Instant::now() >= due {
                    self.inner = None;
                    let t = respond::trailers(&ProxyError::StreamIdleTimeout);
                    return Poll::Ready(Some(Ok(Frame::trailers(t))));
                }
                sleep.as_mut().reset(due);
            }
        }
        Poll::Pending
    }

    fn is_end_stream(&self) -> bool {
        self.inner.as_ref().is_none_or(|b| b.is_end_stream())
    }
}
