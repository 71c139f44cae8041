//! The HTTP/2 connections to one endpoint, and the one way to send a request over them.
//!
//! Hand-written rather than hyper-util's legacy pool, for two reasons:
//! - No waiting caller keeps a connection's request queue alive. hyper hands a request to a
//!   connection's dispatch task through a tokio channel. That task exits on its first wake-up
//!   after the peer's GOAWAY, which is usually the wake-up by the next queued request; a
//!   request pushed while the exiting task drains the channel can be missed by the drain
//!   and then stays queued until every sender of the channel is dropped. hyper-util's pool
//!   keeps a sender in every caller that waits for its response, so such a caller waited
//!   forever. Here only the pool holds a sender, and it drops it as soon as the connection's
//!   task ends: a stranded request then comes back unsent and goes out on another connection.
//! - A connection whose peer announced a graceful shutdown gets no new request, and a busy
//!   endpoint may get more than one connection (`choose`).

use super::connector::Connector;
use super::drain::DrainState;
use crate::body::{self, Body, BoxError};
use crate::{Req, Rsp};
use http_body_util::BodyExt;
use hyper::client::conn::http2;
use hyper_util::rt::{TokioExecutor, TokioTimer};
use parking_lot::Mutex;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use tokio::sync::watch;

/// Times one call may come back unsent (its connection closed before taking it) and be
/// handed to another connection.
const NOT_SENT_ATTEMPTS: u32 = 3;

/// How many connections one endpoint may have, and when to open another.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ConnLimits {
    /// Most connections to the endpoint at once (at least 1).
    pub max_connections: usize,
    /// Streams in flight on the least busy connection at which another one is opened.
    pub streams_per_connection: usize,
}

/// What the next call does with the connections it sees.
#[derive(Debug, PartialEq, Eq)]
pub enum Choice {
    /// Send on the connection at this index.
    Use(usize),
    /// Send on the connection at this index, and open another connection meanwhile.
    UseAndOpen(usize),
    /// No connection can take the call: wait for a new one.
    Open,
}

/// Picks the connection for the next call, given the streams in flight on each usable
/// connection (drained and closed ones are not listed) and whether one is being opened.
/// The least busy connection wins (the first of equals); another connection is opened only
/// when even that one has reached `streams_per_connection`, none is being opened, and the
/// endpoint is below `max_connections`. One connection is opened at a time.
pub fn choose(in_flight: &[usize], connecting: bool, limits: ConnLimits) -> Choice {
    let best = in_flight
        .iter()
        .enumerate()
        .min_by_key(|(_, n)| **n)
        .map(|(i, _)| i);
    let Some(i) = best else {
        return Choice::Open;
    };
    let room = !connecting && in_flight.len() < limits.max_connections;
    if room && in_flight[i] >= limits.streams_per_connection {
        Choice::UseAndOpen(i)
    } else {
        Choice::Use(i)
    }
}

/// Why a connection to the endpoint could not be opened.
#[derive(Debug, thiserror::Error)]
#[error(transparent)]
pub struct ConnectError(BoxError);

/// Why a request got no response.
#[derive(Debug, thiserror::Error)]
pub enum SendError {
    /// No connection to the endpoint could be opened.
    #[error("connect to {addr} failed: {source}")]
    Connect {
        addr: String,
        #[source]
        source: Arc<ConnectError>,
    },
    /// The request failed on a connection.
    #[error("request failed: {source}")]
    Request {
        #[source]
        source: hyper::Error,
        /// The drain state of the connection it failed on.
        drain: DrainState,
    },
}

impl SendError {
    /// True when no connection could be made, so the endpoint never saw the request.
    pub fn is_connect(&self) -> bool {
        matches!(self, SendError::Connect { .. })
    }

    /// True when the request failed on a connection whose peer had announced a graceful
    /// shutdown (GOAWAY with NO_ERROR).
    pub fn drained(&self) -> bool {
        matches!(self, SendError::Request { drain, .. } if drain.drained())
    }
}

/// Counts a call as in flight on its connection until dropped.
struct InFlight(Arc<AtomicUsize>);

impl InFlight {
    fn new(count: &Arc<AtomicUsize>) -> Self {
        count.fetch_add(1, Ordering::Relaxed);
        Self(count.clone())
    }
}

impl Drop for InFlight {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::Relaxed);
    }
}

/// One open connection.
struct Slot {
    id: u64,
    tx: http2::SendRequest<Body>,
    in_flight: Arc<AtomicUsize>,
    drain: DrainState,
}

#[derive(Default)]
struct State {
    slots: Vec<Slot>,
    connecting: bool,
}

/// The outcome of the latest connection attempt, for the callers that waited on it.
#[derive(Clone, Default)]
struct Attempt {
    generation: u64,
    failure: Option<Arc<ConnectError>>,
}

/// The HTTP/2 connections to one endpoint.
pub struct EndpointConns {
    connector: Connector,
    builder: http2::Builder<TokioExecutor>,
    limits: ConnLimits,
    state: Mutex<State>,
    attempts: watch::Sender<Attempt>,
    next_id: AtomicU64,
}

/// HTTP/2 client settings of the connections the proxy opens.
#[derive(Clone, Debug)]
pub struct H2Settings {
    pub stream_window: u32,
    pub connection_window: u32,
    pub max_frame_size: u32,
    pub adaptive_window: bool,
    pub keepalive_interval: std::time::Duration,
    pub keepalive_timeout: std::time::Duration,
    pub max_header_list_size: u32,
}

impl EndpointConns {
    pub fn new(connector: Connector, h2: &H2Settings, limits: ConnLimits) -> Arc<Self> {
        let mut builder = http2::Builder::new(TokioExecutor::new());
        builder
            .timer(TokioTimer::new())
            .initial_stream_window_size(h2.stream_window)
            .initial_connection_window_size(h2.connection_window)
            .max_frame_size(h2.max_frame_size)
            .adaptive_window(h2.adaptive_window)
            .keep_alive_interval(h2.keepalive_interval)
            .keep_alive_timeout(h2.keepalive_timeout)
            .max_header_list_size(h2.max_header_list_size);
        Arc::new(Self {
            connector,
            builder,
            limits: ConnLimits {
                max_connections: limits.max_connections.max(1),
                streams_per_connection: limits.streams_per_connection.max(1),
            },
            state: Mutex::new(State::default()),
            attempts: watch::Sender::new(Attempt::default()),
            next_id: AtomicU64::new(0),
        })
    }

    /// Sends `req` on one of the endpoint's connections. A request a connection handed back
    /// unsent (it closed before taking it) goes out again on another one.
    pub async fn send(self: &Arc<Self>, mut req: Req) -> Result<Rsp, SendError> {
        let mut attempt = 1;
        loop {
            let (mut tx, in_flight, drain) = self.checkout().await?;
            let sent = tx.try_send_request(req);
            // The pool's own handle is the only one left while the call waits (module doc).
            drop(tx);
            let mut e = match sent.await {
                Ok(rsp) => {
                    return Ok(rsp.map(move |b| {
                        body::incoming(b)
                            .map_frame(move |f| {
                                let _counted = &in_flight;
                                f
                            })
                            .boxed_unsync()
                    }));
                }
                Err(e) => e,
            };
            drop(in_flight);
            match e.take_message() {
                Some(back) if attempt < NOT_SENT_ATTEMPTS => {
                    tracing::debug!(endpoint = %self.connector.addr, attempt, "connection closed before taking the request; sending it on another");
                    req = back;
                    attempt += 1;
                }
                _ => {
                    return Err(SendError::Request {
                        source: e.into_error(),
                        drain,
                    });
                }
            }
        }
    }

    /// A connection for the next call (opening one when `choose` says so), with the call
    /// counted on it.
    async fn checkout(
        self: &Arc<Self>,
    ) -> Result<(http2::SendRequest<Body>, InFlight, DrainState), SendError> {
        let mut attempts = self.attempts.subscribe();
        loop {
            let seen = attempts.borrow_and_update().generation;
            let (picked, open) = {
                let mut st = self.state.lock();
                st.slots.retain(|s| !s.tx.is_closed());
                let usable: Vec<&Slot> = st.slots.iter().filter(|s| !s.drain.drained()).collect();
                let loads: Vec<usize> = usable
                    .iter()
                    .map(|s| s.in_flight.load(Ordering::Relaxed))
                    .collect();
                let (pick, open) = match choose(&loads, st.connecting, self.limits) {
                    Choice::Use(i) => (Some(i), false),
                    Choice::UseAndOpen(i) => (Some(i), true),
                    Choice::Open => (None, !st.connecting),
                };
                let picked = pick
                    .and_then(|i| usable.get(i))
                    .map(|s| (s.tx.clone(), InFlight::new(&s.in_flight), s.drain.clone()));
                if open {
                    st.connecting = true;
                }
                (picked, open)
            };
            if open {
                self.spawn_connect();
            }
            if let Some(p) = picked {
                return Ok(p);
            }
            let changed = attempts.changed().await;
            let latest = attempts.borrow_and_update().clone();
            if (changed.is_err() || latest.generation != seen)
                && let Some(failure) = latest.failure
            {
                return Err(SendError::Connect {
                    addr: self.connector.addr.clone(),
                    source: failure,
                });
            }
        }
    }

    /// Opens a connection in its own task (a caller that goes away does not cancel it), then
    /// tells the callers waiting for it.
    fn spawn_connect(self: &Arc<Self>) {
        let this = self.clone();
        tokio::spawn(async move {
            let outcome = this.open().await;
            let failure = {
                let mut st = this.state.lock();
                st.connecting = false;
                match outcome {
                    Ok(slot) => {
                        st.slots.push(slot);
                        None
                    }
                    Err(e) => Some(Arc::new(e)),
                }
            };
            this.attempts.send_modify(|a| {
                a.generation += 1;
                a.failure = failure;
            });
        });
    }

    /// One new connection, driven by its own task, which drops the pool's handle (the last
    /// sender of its request queue) when the connection ends.
    async fn open(self: &Arc<Self>) -> Result<Slot, ConnectError> {
        let io = self.connector.connect().await.map_err(ConnectError)?;
        let drain = io.drain_state();
        let (tx, conn) = self
            .builder
            .handshake(io)
            .await
            .map_err(|e| ConnectError(Box::new(e)))?;
        let id = self.next_id.fetch_add(1, Ordering::Relaxed);
        let pool = Arc::downgrade(self);
        tokio::spawn(async move {
            if let Err(e) = conn.await {
                tracing::debug!(error = %e, "endpoint connection ended with an error");
            }
            if let Some(p) = pool.upgrade() {
                p.state.lock().slots.retain(|s| s.id != id);
            }
        });
        Ok(Slot {
            id,
            tx,
            in_flight: Arc::default(),
            drain,
        })
    }

    /// Connections open now (drained ones included), for tests.
    #[cfg(test)]
    fn open_connections(&self) -> usize {
        let mut st = self.state.lock();
        st.slots.retain(|s| !s.tx.is_closed());
        st.slots.len()
    }
}

#[cfg(test)]
mod tests;
