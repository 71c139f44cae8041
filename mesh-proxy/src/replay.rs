//! A request body that can be sent more than once (in the style of Linkerd's replay body).
//! The first attempt streams the caller's body as it arrives and keeps a copy, up to a limit;
//! a later attempt replays the copy and then continues with the rest of the original stream.
//! No waiting for the whole request, so interactive streams stay interactive; once the copy
//! would exceed the limit the body is no longer replayable and retries stop.
//!
//! It reports the end of the stream as soon as it is known, so hyper marks the last frame
//! END_STREAM. Reporting it late makes hyper send an extra empty DATA frame without END_STREAM
//! per request, and h2 answers the 101st such frame on a connection with GOAWAY
//! ENHANCE_YOUR_CALM (`too_many_data_frames`), failing every call on the shared connection.

use crate::body::{Body, BodyError};
use bytes::Bytes;
use http::HeaderMap;
use http_body::{Body as HttpBody, Frame};
use parking_lot::Mutex;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::task::{Context, Poll, Waker, ready};

struct State {
    /// The caller's body, until it has ended.
    rest: Option<Body>,
    /// Data read so far (empty once over the limit).
    copy: Vec<Bytes>,
    copied: usize,
    trailers: Option<HeaderMap>,
}

struct Shared {
    slot: Mutex<(Option<State>, Vec<Waker>)>,
    limit: usize,
    overflowed: AtomicBool,
    failed: AtomicBool,
    ended: AtomicBool,
    completed: tokio::sync::Notify,
}

/// One attempt's view of the request body. Only one attempt reads at a time; a new attempt
/// waits until the previous attempt's body has been dropped.
pub struct ReplayBody {
    shared: Arc<Shared>,
    state: Option<State>,
    /// Next chunk of `copy` to replay.
    pos: usize,
    trailers_sent: bool,
    done: bool,
    /// This attempt has read from the caller's stream itself.
    live: bool,
}

/// Handle used to make further attempts.
#[derive(Clone)]
pub struct Replay {
    shared: Arc<Shared>,
}

impl Replay {
    /// Wraps `body`; `limit` bounds the bytes kept for replay.
    pub fn new(body: Body, limit: usize) -> Self {
        let state = State {
            rest: Some(body),
            copy: Vec::new(),
            copied: 0,
            trailers: None,
        };
        Self {
            shared: Arc::new(Shared {
                slot: Mutex::new((Some(state), Vec::new())),
                limit,
                overflowed: AtomicBool::new(false),
                failed: AtomicBool::new(false),
                ended: AtomicBool::new(false),
                completed: tokio::sync::Notify::new(),
            }),
        }
    }

    /// A body for the next attempt, replaying from the start.
    pub fn body(&self) -> ReplayBody {
        ReplayBody {
            shared: self.shared.clone(),
            state: None,
            pos: 0,
            trailers_sent: false,
            done: false,
            live: false,
        }
    }

    /// True once the caller's whole request has been read.
    pub fn is_complete(&self) -> bool {
        self.shared.ended.load(Ordering::Acquire)
    }

    /// Resolves once the caller's whole request has been read.
    pub async fn wait_complete(&self) {
        loop {
            let notified = self.shared.completed.notified();
            if self.is_complete() {
                return;
            }
            notified.await;
        }
    }

    /// False once the kept copy would have exceeded the limit, or the caller's stream failed.
    pub fn is_replayable(&self) -> bool {
        !self.shared.overflowed.load(Ordering::Acquire)
            && !self.shared.failed.load(Ordering::Acquire)
    }
}

impl ReplayBody {
    fn acquire(&mut self, cx: &mut Context<'_>) -> Poll<()> {
        if self.state.is_some() {
            return Poll::Ready(());
        }
        let mut slot = self.shared.slot.lock();
        match slot.0.take() {
            Some(s) => {
                drop(slot);
                self.state = Some(s);
                Poll::Ready(())
            }
            None => {
                slot.1.push(cx.waker().clone());
                Poll::Pending
            }
        }
    }
}

fn is_empty_data(f: &Frame<Bytes>) -> bool {
    f.data_ref().is_some_and(Bytes::is_empty)
}

impl HttpBody for ReplayBody {
    type Data = Bytes;
    type Error = BodyError;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BodyError>>> {
        if self.done {
            return Poll::Ready(None);
        }
        if self.acquire(cx).is_pending() {
            return Poll::Pending;
        }
        let this = &mut *self;
        let Some(state) = this.state.as_mut() else {
            return Poll::Ready(None);
        };
        let overflowed = this.shared.overflowed.load(Ordering::Acquire);
        if overflowed && !this.live {
            // The copy is gone: this attempt cannot send the start of the body.
            return Poll::Ready(Some(Err(BodyError(
                "request body no longer replayable".into(),
            ))));
        }
        if !overflowed && this.pos < state.copy.len() {
            let chunk = state.copy[this.pos].clone();
            this.pos += 1;
            // The last kept chunk of a request that has ended without trailers carries the
            // end of the stream itself (no separate empty DATA frame follows).
            if this.pos == state.copy.len() && state.rest.is_none() && state.trailers.is_none() {
                this.done = true;
            }
            return Poll::Ready(Some(Ok(Frame::data(chunk))));
        }
        let Some(rest) = state.rest.as_mut() else {
            this.done = true;
            if !this.trailers_sent
                && let Some(t) = state.trailers.clone()
            {
                this.trailers_sent = true;
                return Poll::Ready(Some(Ok(Frame::trailers(t))));
            }
            return Poll::Ready(None);
        };
        this.live = true;
        loop {
            let polled = ready!(Pin::new(&mut *rest).poll_frame(cx));
            let ended = rest.is_end_stream();
            return match polled {
                None => {
                    state.rest = None;
                    this.shared.ended.store(true, Ordering::Release);
                    this.shared.completed.notify_waiters();
                    this.done = true;
                    Poll::Ready(None)
                }
                Some(Err(e)) => {
                    state.rest = None;
                    this.shared.failed.store(true, Ordering::Release);
                    Poll::Ready(Some(Err(e)))
                }
                // An empty DATA frame (h2 hands over only the one that carries END_STREAM)
                // has nothing to keep, and is not sent unless it ends the stream.
                Some(Ok(frame)) if is_empty_data(&frame) && !ended => continue,
                Some(Ok(frame)) => {
                    if let Some(d) = frame.data_ref() {
                        if !this.shared.overflowed.load(Ordering::Acquire) && !d.is_empty() {
                            state.copied += d.len();
                            if state.copied > this.shared.limit {
                                this.shared.overflowed.store(true, Ordering::Release);
                                state.copy.clear();
                            } else {
                                state.copy.push(d.clone());
                            }
                        }
                        this.pos = state.copy.len();
                    } else if let Some(t) = frame.trailers_ref() {
                        state.trailers = Some(t.clone());
                        this.trailers_sent = true;
                    }
                    if ended || frame.is_trailers() {
                        // The caller's stream is complete: this frame ends it, so hyper marks
                        // it END_STREAM instead of sending an extra empty DATA frame.
                        state.rest = None;
                        this.shared.ended.store(true, Ordering::Release);
                        this.shared.completed.notify_waiters();
                        this.done = true;
                    }
                    Poll::Ready(Some(Ok(frame)))
                }
            };
        }
    }

    fn is_end_stream(&self) -> bool {
        self.done
    }
}

impl Drop for ReplayBody {
    fn drop(&mut self) {
        if let Some(state) = self.state.take() {
            let wakers = {
                let mut slot = self.shared.slot.lock();
                slot.0 = Some(state);
                std::mem::take(&mut slot.1)
            };
            for w in wakers {
                w.wake();
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use http_body_util::{BodyExt, StreamBody};

    fn body_of(chunks: &[&'static [u8]]) -> Body {
        let frames: Vec<Result<Frame<Bytes>, BodyError>> = chunks
            .iter()
            .map(|c| Ok(Frame::data(Bytes::from_static(c))))
            .collect();
        StreamBody::new(futures::stream::iter(frames)).boxed_unsync()
    }

    async fn collect(b: ReplayBody) -> Vec<u8> {
        b.collect()
            .await
            .map(|c| c.to_bytes().to_vec())
            .unwrap_or_default()
    }

    #[tokio::test]
    async fn replays_what_was_read_then_the_rest() {
        let r = Replay::new(body_of(&[b"ab", b"cd", b"ef"]), 100);
        let mut first = r.body();
        // First attempt reads only part of the body, then fails.
        let f = first.frame().await.unwrap().unwrap();
        assert_eq!(f.into_data().unwrap(), Bytes::from_static(b"ab"));
        drop(first);
        assert!(r.is_replayable());
        assert_eq!(collect(r.body()).await, b"abcdef");
        assert_eq!(collect(r.body()).await, b"abcdef");
    }

    #[tokio::test]
    async fn no_empty_data_frames_and_the_end_is_reported_with_the_last_chunk() {
        // A caller that ends its stream with an empty DATA frame (tonic, grpc-go).
        let r = Replay::new(body_of(&[b"ab", b""]), 100);
        let mut first = r.body();
        let f = first.frame().await.unwrap().unwrap();
        assert_eq!(f.into_data().unwrap(), Bytes::from_static(b"ab"));
        assert!(first.frame().await.is_none(), "empty DATA frame passed on");
        drop(first);
        // A replay knows the whole request: its last chunk ends the stream.
        let mut second = r.body();
        let f = second.frame().await.unwrap().unwrap();
        assert_eq!(f.into_data().unwrap(), Bytes::from_static(b"ab"));
        assert!(second.is_end_stream());
        assert!(second.frame().await.is_none());
        // A caller body that knows its end: the end is reported with its last frame.
        let full = http_body_util::Full::new(Bytes::from_static(b"cd"))
            .map_err(|n| match n {})
            .boxed_unsync();
        let r = Replay::new(full, 100);
        let mut live = r.body();
        assert!(live.frame().await.unwrap().unwrap().is_data());
        assert!(live.is_end_stream());
        assert!(r.is_complete());
    }

    #[tokio::test]
    async fn over_the_limit_is_not_replayable() {
        let r = Replay::new(body_of(&[b"abcd", b"efgh"]), 5);
        assert_eq!(collect(r.body()).await, b"abcdefgh");
        assert!(!r.is_replayable());
    }

    #[tokio::test]
    async fn a_second_attempt_waits_for_the_first_to_be_dropped() {
        let r = Replay::new(body_of(&[b"xy"]), 100);
        let first = r.body();
        let mut first = Box::pin(first);
        let _ = first.frame().await;
        let second = tokio::spawn({
            let r = r.clone();
            async move { collect(r.body()).await }
        });
        tokio::task::yield_now().await;
        assert!(!second.is_finished());
        drop(first);
        assert_eq!(second.await.unwrap(), b"xy");
    }
}
