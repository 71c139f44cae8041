//! The open-loop load generator. Calls are scheduled on a fixed timeline (constant
//! arrival rate) by a dedicated thread, whatever the system under test is doing, and
//! each call's latency is measured from its *scheduled* send time. A stall therefore
//! shows up as the queueing delay every caller would really have seen, instead of
//! silently pausing the generator (coordinated omission, as corrected by wrk2).

use crate::edge::web::{Mode, WebConn};
use crate::error::BenchError;
use hdrhistogram::Histogram;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tally_api::events::v1::SubscribeRequest;
use tally_api::events::v1::event_feed_service_client::EventFeedServiceClient;
use tally_api::poll::v1::GetPollRequest;
use tally_api::poll::v1::poll_service_client::PollServiceClient;
use tokio::time::Instant;
use tonic::transport::{Channel, Endpoint, Uri};

/// Highest latency the histograms track (60 s, in microseconds).
const HIST_MAX_US: u64 = 60_000_000;
/// Scheduled calls beyond this many in flight are dropped and counted: the system is
/// overloaded and an unbounded backlog would only exhaust memory.
pub const MAX_IN_FLIGHT: u64 = 20_000;
/// Calls in the HTTP/2 client's own queue per connection.
const CHANNEL_BUFFER: usize = 20_000;

/// What one call does.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Workload {
    /// `PollService.GetPoll`, answered with the id that was sent.
    Unary,
    /// `EventFeedService.Subscribe`, answered with `messages` events then OK.
    Stream { messages: u64 },
    /// `GetPoll` with an id of `bytes` bytes, echoed back: a message of that size each way.
    Sized { bytes: usize },
    /// `GetPoll` as gRPC-Web (needs a target made by `Target::connect_web`).
    Web { mode: Mode },
}

impl Workload {
    pub fn label(&self) -> String {
        match self {
            Workload::Unary => "unary".into(),
            Workload::Stream { messages } => format!("stream x{messages}"),
            Workload::Sized { bytes } => format!("unary {bytes} B"),
            Workload::Web { mode } => format!("grpc-web {}", mode.label()),
        }
    }
}

/// One connection of a target: gRPC (tonic) or gRPC-Web.
#[derive(Clone)]
enum Conn {
    Grpc(Channel),
    Web(WebConn),
}

/// HTTP/2 connections to the entry point of a setup, used round robin.
#[derive(Clone)]
pub struct Target {
    conns: Vec<Conn>,
}

impl Target {
    /// Opens `connections` HTTP/2 connections to `addr`, sending `:authority` = `authority`
    /// (the sidecars route on it).
    pub async fn connect(
        addr: SocketAddr,
        authority: &str,
        connections: usize,
    ) -> Result<Target, BenchError> {
        let mut conns = Vec::with_capacity(connections);
        for _ in 0..connections.max(1) {
            conns.push(Conn::Grpc(grpc_channel(addr, authority).await?));
        }
        Ok(Target { conns })
    }

    /// Opens `connections` gRPC-Web (h2c) connections to an edge at `addr`; every call
    /// carries `authorization`.
    pub async fn connect_web(
        addr: SocketAddr,
        authority: &str,
        authorization: &str,
        connections: usize,
    ) -> Result<Target, BenchError> {
        let mut conns = Vec::with_capacity(connections);
        for _ in 0..connections.max(1) {
            let conn = WebConn::connect(addr, authority, authorization)
                .await
                .map_err(|detail| BenchError::Connect {
                    target: addr.to_string(),
                    detail,
                })?;
            conns.push(Conn::Web(conn));
        }
        Ok(Target { conns })
    }
}

/// One gRPC (HTTP/2) connection to `addr` with `:authority` = `authority`, connected now.
pub async fn grpc_channel(addr: SocketAddr, authority: &str) -> Result<Channel, BenchError> {
    let err = |detail: String| BenchError::Connect {
        target: addr.to_string(),
        detail,
    };
    let origin: Uri = format!("http://{authority}")
        .parse()
        .map_err(|e| err(format!("authority `{authority}`: {e}")))?;
    let endpoint = Endpoint::from_shared(format!("http://{addr}"))
        .map_err(|e| err(e.to_string()))?
        .origin(origin)
        .tcp_nodelay(true)
        .buffer_size(CHANNEL_BUFFER)
        .connect_timeout(Duration::from_secs(5));
    endpoint.connect().await.map_err(|e| err(e.to_string()))
}

/// One checked unary call on `channel` (the idle-connection steps make one per connection).
pub async fn one_unary(channel: Channel, seq: u64) -> Result<(), String> {
    call(Conn::Grpc(channel), Workload::Unary, seq).await
}

/// What one phase at one rate produced.
#[derive(Debug, Clone)]
pub struct PhaseResult {
    pub workload: Workload,
    pub target_rate: f64,
    pub duration: Duration,
    pub scheduled: u64,
    pub ok: u64,
    pub errors: u64,
    pub timeouts: u64,
    pub dropped: u64,
    /// From the first scheduled send to the last completion (at least `duration`).
    pub elapsed: Duration,
    /// Latency of successful calls, microseconds from the scheduled send time.
    pub hist: Histogram<u64>,
    pub first_error: Option<String>,
}

impl PhaseResult {
    /// Successful calls per second over the phase.
    pub fn achieved_rate(&self) -> f64 {
        let secs = self.elapsed.max(self.duration).as_secs_f64();
        if secs > 0.0 {
            self.ok as f64 / secs
        } else {
            0.0
        }
    }

    /// Latency at quantile `q` in milliseconds (0 when nothing succeeded).
    pub fn quantile_ms(&self, q: f64) -> f64 {
        if self.hist.is_empty() {
            return 0.0;
        }
        self.hist.value_at_quantile(q) as f64 / 1_000.0
    }

    /// Calls that did not succeed, of any kind.
    pub fn failed(&self) -> u64 {
        self.errors + self.timeouts + self.dropped
    }
}

struct Shared {
    hist: Mutex<Histogram<u64>>,
    ok: AtomicU64,
    errors: AtomicU64,
    timeouts: AtomicU64,
    in_flight: AtomicU64,
    /// Microseconds after the phase start of the latest completion.
    last_done_us: AtomicU64,
    first_error: Mutex<Option<String>>,
}

impl Shared {
    fn error(&self, e: String) {
        self.errors.fetch_add(1, Ordering::Relaxed);
        if let Ok(mut first) = self.first_error.lock()
            && first.is_none()
        {
            *first = Some(e);
        }
    }
}

/// Runs `workload` at `rate` calls per second for `duration`, then waits (at most
/// `call_timeout` plus a second) for the calls still in flight.
pub async fn run_phase(
    target: &Target,
    workload: Workload,
    rate: f64,
    duration: Duration,
    call_timeout: Duration,
) -> PhaseResult {
    let hist = new_hist();
    let shared = Arc::new(Shared {
        hist: Mutex::new(hist),
        ok: AtomicU64::new(0),
        errors: AtomicU64::new(0),
        timeouts: AtomicU64::new(0),
        in_flight: AtomicU64::new(0),
        last_done_us: AtomicU64::new(0),
        first_error: Mutex::new(None),
    });
    let total = (rate * duration.as_secs_f64()).round().max(1.0) as u64;
    let interval = Duration::from_secs_f64(1.0 / rate.max(0.001));
    let start = Instant::now() + Duration::from_millis(5);
    let handle = tokio::runtime::Handle::current();
    let channels = target.conns.clone();
    let (done_tx, done_rx) = tokio::sync::oneshot::channel::<u64>();
    let driver_shared = shared.clone();
    // The schedule runs on its own OS thread: a precise sleep there costs no runtime
    // worker, and a busy runtime cannot delay the schedule (only the calls).
    let spawned = std::thread::Builder::new()
        .name("bench-driver".into())
        .spawn(move || {
            let mut dropped = 0u64;
            for i in 0..total {
                let scheduled = start + interval.mul_f64(i as f64);
                let now = Instant::now();
                if scheduled > now {
                    // The driver is a plain OS thread (above): blocking it is the point.
                    #[allow(clippy::disallowed_methods)]
                    std::thread::sleep(scheduled - now);
                }
                if driver_shared.in_flight.load(Ordering::Relaxed) >= MAX_IN_FLIGHT {
                    dropped += 1;
                    continue;
                }
                driver_shared.in_flight.fetch_add(1, Ordering::Relaxed);
                let channel = channels[(i as usize) % channels.len()].clone();
                handle.spawn(one_call(
                    channel,
                    workload,
                    i,
                    scheduled,
                    start,
                    call_timeout,
                    driver_shared.clone(),
                ));
            }
            let _ = done_tx.send(dropped);
        });
    let dropped = match spawned {
        Ok(_) => done_rx.await.unwrap_or(total),
        Err(e) => {
            shared.error(format!("cannot start the driver thread: {e}"));
            total
        }
    };
    let drain_deadline = Instant::now() + call_timeout + Duration::from_secs(1);
    while shared.in_flight.load(Ordering::Relaxed) > 0 && Instant::now() < drain_deadline {
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    // Whatever is still out after the deadline is counted as timed out.
    let stuck = shared.in_flight.load(Ordering::Relaxed);
    let hist = shared
        .hist
        .lock()
        .map(|h| h.clone())
        .unwrap_or_else(|p| p.into_inner().clone());
    let first_error = shared.first_error.lock().map(|e| e.clone()).unwrap_or(None);
    PhaseResult {
        workload,
        target_rate: rate,
        duration,
        scheduled: total,
        ok: shared.ok.load(Ordering::Relaxed),
        errors: shared.errors.load(Ordering::Relaxed),
        timeouts: shared.timeouts.load(Ordering::Relaxed) + stuck,
        dropped,
        elapsed: Duration::from_micros(shared.last_done_us.load(Ordering::Relaxed)),
        hist,
        first_error,
    }
}

/// An empty latency histogram (microseconds, 3 significant digits).
pub fn new_hist() -> Histogram<u64> {
    // Constant bounds that satisfy hdrhistogram's rules (low >= 1, high >= 2 * low,
    // precision <= 5), so this cannot fail.
    #[allow(clippy::expect_used)]
    Histogram::new_with_bounds(1, HIST_MAX_US, 3).expect("valid constant histogram bounds")
}

async fn one_call(
    channel: Conn,
    workload: Workload,
    seq: u64,
    scheduled: Instant,
    start: Instant,
    call_timeout: Duration,
    shared: Arc<Shared>,
) {
    let outcome = tokio::time::timeout(call_timeout, call(channel, workload, seq)).await;
    let done = Instant::now();
    match outcome {
        Ok(Ok(())) => {
            let us = done.saturating_duration_since(scheduled).as_micros() as u64;
            if let Ok(mut h) = shared.hist.lock() {
                h.saturating_record(us.max(1));
            }
            shared.ok.fetch_add(1, Ordering::Relaxed);
        }
        Ok(Err(e)) => shared.error(e),
        Err(_) => {
            shared.timeouts.fetch_add(1, Ordering::Relaxed);
        }
    }
    let since_start = done.saturating_duration_since(start).as_micros() as u64;
    shared
        .last_done_us
        .fetch_max(since_start, Ordering::Relaxed);
    shared.in_flight.fetch_sub(1, Ordering::Relaxed);
}

/// The poll id of call `seq`, padded to `bytes` bytes when given.
fn poll_id(seq: u64, bytes: Option<usize>) -> String {
    let mut id = format!("poll-{seq}");
    if let Some(n) = bytes
        && n > id.len()
    {
        id.push('-');
        id.extend(std::iter::repeat_n('x', n - id.len()));
    }
    id
}

/// One call, checked: the answer must be the echo of what was sent.
async fn call(conn: Conn, workload: Workload, seq: u64) -> Result<(), String> {
    let channel = match (conn, workload) {
        (Conn::Web(web), Workload::Web { mode }) => return web_call(&web, seq, mode).await,
        (Conn::Grpc(channel), _) => channel,
        (Conn::Web(_), other) => {
            return Err(format!("{} cannot run on a gRPC-Web target", other.label()));
        }
    };
    match workload {
        Workload::Web { .. } => Err("gRPC-Web calls need a target from connect_web".into()),
        Workload::Unary | Workload::Sized { .. } => {
            let bytes = match workload {
                Workload::Sized { bytes } => Some(bytes),
                _ => None,
            };
            let id = poll_id(seq, bytes);
            let rsp = PollServiceClient::new(channel)
                .get_poll(GetPollRequest {
                    poll_id: id.clone(),
                })
                .await
                .map_err(|s| format!("{:?}: {}", s.code(), s.message()))?;
            match rsp.into_inner().poll {
                Some(p) if p.poll_id == id => Ok(()),
                Some(p) => Err(format!(
                    "answer for poll id of {} bytes, sent {}",
                    p.poll_id.len(),
                    id.len()
                )),
                None => Err("answer without a poll".into()),
            }
        }
        Workload::Stream { messages } => {
            let mut stream = EventFeedServiceClient::new(channel)
                .subscribe(SubscribeRequest {
                    from_offset: messages,
                    consumer: format!("c-{seq}"),
                    event_types: Vec::new(),
                })
                .await
                .map_err(|s| format!("{:?}: {}", s.code(), s.message()))?
                .into_inner();
            let mut got = 0u64;
            while let Some(item) = stream
                .message()
                .await
                .map_err(|s| format!("{:?}: {}", s.code(), s.message()))?
            {
                got += 1;
                if item.offset != got {
                    return Err(format!("message {got} had offset {}", item.offset));
                }
            }
            if got == messages {
                Ok(())
            } else {
                Err(format!("stream ended after {got} of {messages} messages"))
            }
        }
    }
}

/// One gRPC-Web `GetPoll`, checked like the gRPC one.
async fn web_call(conn: &WebConn, seq: u64, mode: Mode) -> Result<(), String> {
    use prost::Message as _;
    let id = poll_id(seq, None);
    let req = GetPollRequest {
        poll_id: id.clone(),
    };
    let messages = conn.call(WEB_GET_POLL, &req.encode_to_vec(), mode).await?;
    let [only] = messages.as_slice() else {
        return Err(format!(
            "{} messages in the answer, wanted 1",
            messages.len()
        ));
    };
    let rsp = tally_api::poll::v1::GetPollResponse::decode(only.clone())
        .map_err(|e| format!("undecodable answer: {e}"))?;
    match rsp.poll {
        Some(p) if p.poll_id == id => Ok(()),
        other => Err(format!("unexpected answer {other:?}")),
    }
}

/// The path of the gRPC-Web workload's method.
const WEB_GET_POLL: &str = "/tally.poll.v1.PollService/GetPoll";

/// Closed loop: `concurrency` callers, each sending its next call as soon as the previous
/// one ended, for `duration` (as h2load does). The throughput is what the system under test
/// can complete; latency here is per call (from its send), not coordinated-omission corrected.
pub async fn run_closed(
    target: &Target,
    workload: Workload,
    concurrency: usize,
    duration: Duration,
    call_timeout: Duration,
) -> PhaseResult {
    let shared = Arc::new(Shared {
        hist: Mutex::new(new_hist()),
        ok: AtomicU64::new(0),
        errors: AtomicU64::new(0),
        timeouts: AtomicU64::new(0),
        in_flight: AtomicU64::new(0),
        last_done_us: AtomicU64::new(0),
        first_error: Mutex::new(None),
    });
    let start = Instant::now();
    let end = start + duration;
    let sent = Arc::new(AtomicU64::new(0));
    let mut callers = Vec::with_capacity(concurrency);
    for c in 0..concurrency.max(1) {
        let channel = target.conns[c % target.conns.len()].clone();
        let (shared, sent) = (shared.clone(), sent.clone());
        callers.push(tokio::spawn(async move {
            while Instant::now() < end {
                let seq = sent.fetch_add(1, Ordering::Relaxed);
                let at = Instant::now();
                shared.in_flight.fetch_add(1, Ordering::Relaxed);
                one_call(
                    channel.clone(),
                    workload,
                    seq,
                    at,
                    start,
                    call_timeout,
                    shared.clone(),
                )
                .await;
            }
        }));
    }
    for caller in callers {
        let _ = caller.await;
    }
    let hist = shared
        .hist
        .lock()
        .map(|h| h.clone())
        .unwrap_or_else(|p| p.into_inner().clone());
    let ok = shared.ok.load(Ordering::Relaxed);
    let elapsed = start.elapsed();
    PhaseResult {
        workload,
        target_rate: 0.0,
        duration: elapsed,
        scheduled: sent.load(Ordering::Relaxed),
        ok,
        errors: shared.errors.load(Ordering::Relaxed),
        timeouts: shared.timeouts.load(Ordering::Relaxed),
        dropped: 0,
        elapsed,
        hist,
        first_error: shared.first_error.lock().map(|e| e.clone()).unwrap_or(None),
    }
}
