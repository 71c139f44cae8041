//! Resilient calls to a backing store (Redis, ScyllaDB), which the mesh does
//! not see: every call goes through one `tower-resilience` stack, retry
//! (idempotent reads only) → bulkhead → circuit breaker → time limiter, so a
//! slow or down backend answers at once with a typed error instead of holding
//! its callers, and recovers by itself (the breaker half-opens and probes).
//! The breaker's state is exported as a metric and readable for health.
//!
//! The store adapters (`session::resilient`, `storage::resilient`) describe
//! each port method as a cloneable request and map [`ResilienceError`] back
//! to their own error type.

use std::sync::{Arc, Mutex};
use std::time::Duration;
use tower::util::BoxCloneService;
use tower::{Service, ServiceBuilder, ServiceExt};
use tower_resilience::bulkhead::BulkheadLayer;
use tower_resilience::circuitbreaker::{CircuitBreakerLayer, CircuitState};
use tower_resilience::core::UnifiedErrors;
use tower_resilience::retry::RetryLayer;
use tower_resilience::timelimiter::TimeLimiterLayer;

pub use tower_resilience::core::ResilienceError;

/// Default deadline of one call (each attempt of a read).
pub const DEFAULT_CALL_TIMEOUT: Duration = Duration::from_millis(500);
/// Default attempts of an idempotent read, the first included.
pub const DEFAULT_READ_ATTEMPTS: usize = 2;
/// Default pause before a read is tried again.
pub const DEFAULT_RETRY_BACKOFF: Duration = Duration::from_millis(50);
/// Default consecutive failed calls that open the breaker.
pub const DEFAULT_CONSECUTIVE_FAILURES: usize = 5;
/// Default time the breaker stays open before it lets a probe through.
pub const DEFAULT_OPEN_WAIT: Duration = Duration::from_secs(2);
/// Default calls in flight at once; more are refused at once.
pub const DEFAULT_MAX_CONCURRENT: usize = 256;

/// The tunables of one client's stack.
#[derive(Debug, Clone, PartialEq)]
pub struct Settings {
    /// Deadline of one call, and of each attempt of a read.
    pub call_timeout: Duration,
    /// Attempts an idempotent read gets, the first included.
    pub read_attempts: usize,
    /// Base pause before a read is tried again (grows exponentially).
    pub retry_backoff: Duration,
    /// Consecutive outages that open the breaker.
    pub consecutive_failures: usize,
    /// How long the open breaker refuses calls before it lets a probe through.
    pub open_wait: Duration,
    /// Calls allowed in flight at once; the bulkhead refuses the rest at once.
    pub max_concurrent: usize,
}

impl Default for Settings {
    fn default() -> Self {
        Self {
            call_timeout: DEFAULT_CALL_TIMEOUT,
            read_attempts: DEFAULT_READ_ATTEMPTS,
            retry_backoff: DEFAULT_RETRY_BACKOFF,
            consecutive_failures: DEFAULT_CONSECUTIVE_FAILURES,
            open_wait: DEFAULT_OPEN_WAIT,
            max_concurrent: DEFAULT_MAX_CONCURRENT,
        }
    }
}

/// The stack could not be built from its settings.
#[derive(Debug, thiserror::Error)]
#[error("resilience settings of {client}: {problem}")]
pub struct SettingsError {
    /// The client (metric label) whose stack failed to build.
    pub client: String,
    /// What the resilience library rejected.
    pub problem: String,
}

/// What a request is, for the stack.
pub trait Call: Clone + Send + 'static {
    /// Safe to repeat (a read): only these are retried.
    fn idempotent(&self) -> bool;
}

type Stack<Req, Res, E> = BoxCloneService<Req, Res, ResilienceError<E>>;
type StateFn = Arc<dyn Fn() -> CircuitState + Send + Sync>;

/// One client's stack, shared by every caller (clones share the breaker and
/// the bulkhead).
pub struct Resilient<Req, Res, E> {
    name: String,
    stack: Arc<Mutex<Stack<Req, Res, E>>>,
    state: StateFn,
}

impl<Req, Res, E> Clone for Resilient<Req, Res, E> {
    fn clone(&self) -> Self {
        Self {
            name: self.name.clone(),
            stack: self.stack.clone(),
            state: self.state.clone(),
        }
    }
}

/// The breaker state as the metric encodes it.
pub fn state_code(state: CircuitState) -> i64 {
    match state {
        CircuitState::Closed => 0,
        CircuitState::Open => 1,
        CircuitState::HalfOpen => 2,
    }
}

impl<Req, Res, E> Resilient<Req, Res, E>
where
    Req: Call,
    Res: Send + 'static,
    E: std::fmt::Debug + Send + Sync + 'static,
{
    /// Wraps `inner`. `is_outage(e)` says whether an application error is the
    /// backend failing (counted by the breaker, worth retrying a read) rather
    /// than an answer (a failed condition, a corrupt record).
    pub fn new<S>(
        name: &str,
        settings: &Settings,
        inner: S,
        is_outage: fn(&E) -> bool,
    ) -> Result<Self, SettingsError>
    where
        S: Service<Req, Response = Res, Error = E> + Clone + Send + 'static,
        S::Future: Send + 'static,
    {
        let bad = |problem: String| SettingsError {
            client: name.to_string(),
            problem,
        };
        let time_limiter = TimeLimiterLayer::builder()
            .timeout_duration(settings.call_timeout)
            .cancel_running_future(true)
            .name(name)
            .build();
        let (breaker, handle) = CircuitBreakerLayer::builder()
            .name(name)
            .consecutive_failures(settings.consecutive_failures.max(1))
            .wait_duration_in_open(settings.open_wait)
            .failure_classifier(move |r: &Result<Res, ResilienceError<E>>| match r {
                Ok(_) => false,
                Err(ResilienceError::Application(e)) => is_outage(e),
                Err(e) => e.is_timeout(),
            })
            .build_with_handle()
            .map_err(|e| bad(format!("circuit breaker: {e}")))?;
        let bulkhead = BulkheadLayer::builder()
            .max_concurrent_calls(settings.max_concurrent)
            .reject_when_full()
            .name(name)
            .build()
            .map_err(|e| bad(format!("bulkhead: {e}")))?;
        let attempts = settings.read_attempts.max(1);
        let retry = RetryLayer::<Req, Res, ResilienceError<E>>::builder()
            .max_attempts_fn(move |req: &Req| if req.idempotent() { attempts } else { 1 })
            .exponential_backoff(settings.retry_backoff)
            .retry_on(move |e: &ResilienceError<E>| match e {
                ResilienceError::Application(e) => is_outage(e),
                other => other.is_timeout() && !bulkhead_full(other),
            })
            .build();
        let stack = ServiceBuilder::new()
            .layer(retry)
            .layer(bulkhead.unified::<E>())
            .layer(breaker.unified::<E>())
            .layer(time_limiter.unified::<E>())
            .service(inner);
        let state: StateFn = Arc::new(move || handle.state());
        crate::metrics::record_store_breaker(name, state_code(CircuitState::Closed));
        Ok(Self {
            name: name.to_string(),
            stack: Arc::new(Mutex::new(BoxCloneService::new(stack))),
            state,
        })
    }

    /// Runs `req` through the stack.
    pub async fn call(&self, req: Req) -> Result<Res, ResilienceError<E>> {
        let svc = match self.stack.lock() {
            Ok(g) => g.clone(),
            Err(poisoned) => poisoned.into_inner().clone(),
        };
        let out = svc.oneshot(req).await;
        crate::metrics::record_store_breaker(&self.name, state_code(self.state()));
        if let Err(e) = &out {
            let reason = if e.is_circuit_open() {
                "circuit_open"
            } else if bulkhead_full(e) {
                "bulkhead_full"
            } else if e.is_timeout() {
                "timeout"
            } else {
                "error"
            };
            crate::metrics::count_store_failure(&self.name, reason);
        }
        out
    }

    /// The breaker's state now.
    pub fn state(&self) -> CircuitState {
        (self.state)()
    }

    /// The client's name (metric label).
    pub fn name(&self) -> &str {
        &self.name
    }
}

/// The layer name a bulkhead rejection carries (`reject_when_full` reports
/// a full bulkhead as a zero-wait timeout).
const BULKHEAD_LAYER: &str = "bulkhead";

/// True when the bulkhead refused the call (too many in flight).
pub fn bulkhead_full<E>(e: &ResilienceError<E>) -> bool {
    e.is_bulkhead_full()
        || matches!(e, ResilienceError::Timeout { layer } if *layer == BULKHEAD_LAYER)
}

/// A short text for a stack failure that is not the application's own error.
pub fn describe<E: std::fmt::Display>(client: &str, e: &ResilienceError<E>) -> String {
    match e {
        ResilienceError::CircuitOpen { .. } => {
            format!("{client} circuit breaker open: failing fast while it recovers")
        }
        e if bulkhead_full(e) => format!("{client} has too many calls in flight"),
        ResilienceError::Timeout { .. } => format!("{client} did not answer in time"),
        other => format!("{client}: {other}"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::{AtomicUsize, Ordering};

    #[derive(Clone, Debug)]
    enum Req {
        Read,
        Write,
    }

    impl Call for Req {
        fn idempotent(&self) -> bool {
            matches!(self, Req::Read)
        }
    }

    #[derive(Debug, Clone, PartialEq)]
    enum Err {
        Down,
        Answer,
    }

    impl std::fmt::Display for Err {
        fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
            write!(f, "{self:?}")
        }
    }

    fn is_outage(e: &Err) -> bool {
        *e == Err::Down
    }

    /// A backend that answers with `reply` after `delay`, counting calls.
    fn backend(
        calls: Arc<AtomicUsize>,
        delay: Duration,
        reply: Result<u32, Err>,
    ) -> impl Service<
        Req,
        Response = u32,
        Error = Err,
        Future = futures::future::BoxFuture<'static, Result<u32, Err>>,
    > + Clone
    + Send
    + 'static {
        tower::service_fn(move |_req: Req| {
            calls.fetch_add(1, Ordering::SeqCst);
            let reply = reply.clone();
            let fut: futures::future::BoxFuture<'static, Result<u32, Err>> = Box::pin(async move {
                tokio::time::sleep(delay).await;
                reply
            });
            fut
        })
    }

    #[tokio::test(start_paused = true)]
    async fn a_hung_backend_is_cut_off_at_the_call_timeout() {
        let calls = Arc::new(AtomicUsize::new(0));
        let r = Resilient::new(
            "test-hung",
            &Settings::default(),
            backend(calls.clone(), Duration::from_secs(3600), Ok(1)),
            is_outage,
        )
        .expect("stack");
        let t0 = tokio::time::Instant::now();
        let err = r.call(Req::Write).await.expect_err("timeout");
        assert!(err.is_timeout(), "{err:?}");
        assert_eq!(t0.elapsed(), DEFAULT_CALL_TIMEOUT);
        assert_eq!(calls.load(Ordering::SeqCst), 1, "writes are not retried");
        let err = r.call(Req::Read).await.expect_err("timeout");
        assert!(err.is_timeout(), "{err:?}");
        assert_eq!(calls.load(Ordering::SeqCst), 3, "reads are tried twice");
    }

    /// Real time: the breaker's open window runs on the std clock.
    #[tokio::test]
    async fn the_breaker_opens_fails_fast_and_recovers_by_itself() {
        let calls = Arc::new(AtomicUsize::new(0));
        let up = Arc::new(std::sync::atomic::AtomicBool::new(false));
        let inner = {
            let calls = calls.clone();
            let up = up.clone();
            tower::service_fn(move |_req: Req| {
                calls.fetch_add(1, Ordering::SeqCst);
                let ok = up.load(Ordering::SeqCst);
                async move { if ok { Ok(7u32) } else { Err(Err::Down) } }
            })
        };
        let settings = Settings {
            open_wait: Duration::from_millis(50),
            ..Settings::default()
        };
        let r = Resilient::new("test-breaker", &settings, inner, is_outage).expect("stack");
        for _ in 0..DEFAULT_CONSECUTIVE_FAILURES {
            let e = r.call(Req::Write).await.expect_err("down");
            assert!(
                matches!(e, ResilienceError::Application(Err::Down)),
                "{e:?}"
            );
        }
        assert_eq!(r.state(), CircuitState::Open);
        let before = calls.load(Ordering::SeqCst);
        let e = r.call(Req::Read).await.expect_err("open");
        assert!(e.is_circuit_open(), "{e:?}");
        assert_eq!(calls.load(Ordering::SeqCst), before, "fails fast");
        assert!(describe("redis", &e).contains("circuit breaker open"));
        // The backend is back; once the open wait is over a probe closes it.
        up.store(true, Ordering::SeqCst);
        let deadline = tokio::time::Instant::now() + Duration::from_secs(5);
        loop {
            match r.call(Req::Read).await {
                Ok(v) => {
                    assert_eq!(v, 7);
                    break;
                }
                Err(e) => assert!(
                    e.is_circuit_open() && tokio::time::Instant::now() < deadline,
                    "{e:?}"
                ),
            }
            tokio::task::yield_now().await;
        }
        for _ in 0..5 {
            assert_eq!(r.call(Req::Write).await.expect("closed"), 7);
        }
        assert_eq!(r.state(), CircuitState::Closed);
    }

    #[tokio::test(start_paused = true)]
    async fn answers_are_not_outages() {
        let calls = Arc::new(AtomicUsize::new(0));
        let r = Resilient::new(
            "test-answers",
            &Settings::default(),
            backend(calls.clone(), Duration::ZERO, Err(Err::Answer)),
            is_outage,
        )
        .expect("stack");
        for _ in 0..3 * DEFAULT_CONSECUTIVE_FAILURES {
            let e = r.call(Req::Read).await.expect_err("answer");
            assert!(matches!(e, ResilienceError::Application(Err::Answer)));
        }
        assert_eq!(r.state(), CircuitState::Closed);
        assert_eq!(
            calls.load(Ordering::SeqCst),
            3 * DEFAULT_CONSECUTIVE_FAILURES,
            "an answer is not retried"
        );
    }

    #[tokio::test(start_paused = true)]
    async fn the_bulkhead_refuses_calls_beyond_its_bound() {
        let calls = Arc::new(AtomicUsize::new(0));
        let settings = Settings {
            max_concurrent: 2,
            call_timeout: Duration::from_secs(10),
            ..Settings::default()
        };
        let r = Resilient::new(
            "test-bulkhead",
            &settings,
            backend(calls.clone(), Duration::from_secs(1), Ok(1)),
            is_outage,
        )
        .expect("stack");
        let (a, b, c) = tokio::join!(r.call(Req::Write), r.call(Req::Write), r.call(Req::Write));
        let refused = [&a, &b, &c]
            .iter()
            .filter(|x| x.as_ref().is_err_and(bulkhead_full))
            .count();
        assert_eq!(refused, 1, "{a:?} {b:?} {c:?}");
    }
}
