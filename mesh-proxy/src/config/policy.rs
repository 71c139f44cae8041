//! The resilience policy subsections a route or listener carries: load balancing, retries,
//! breaker, bulkhead, outlier ejection and fault injection, each defaulted from `defaults`.

use super::ms;
use crate::defaults as d;
use serde::{Deserialize, Serialize};

/// The `load_balancer` subsection: how the peak-EWMA latency estimate behaves.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct LoadBalancerConfig {
    /// RTT assumed for an endpoint that has not answered yet.
    pub default_rtt_ms: u64,
    /// Decay time constant of the peak-EWMA estimate.
    pub decay_ms: u64,
    /// A failed call counts as at least this slow (0 = failures do not inflate the estimate).
    pub failure_penalty_ms: u64,
}

impl Default for LoadBalancerConfig {
    fn default() -> Self {
        Self {
            default_rtt_ms: d::EWMA_DEFAULT_RTT_MS,
            decay_ms: d::EWMA_DECAY_MS,
            failure_penalty_ms: d::EWMA_FAILURE_PENALTY_MS,
        }
    }
}

/// The `retry` subsection: when a failed call is tried again and how much retrying may add.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct RetryConfig {
    /// Total attempts including the first; 1 disables retries.
    pub max_attempts: u32,
    /// gRPC status names (e.g. `UNAVAILABLE`) that may be retried.
    pub retryable_statuses: Vec<String>,
    /// Methods safe to repeat: `Method`, `pkg.Service/Method` or `*`.
    pub idempotent_methods: Vec<String>,
    /// Backoff before the first retry; doubles per attempt (full jitter).
    pub backoff_base_ms: u64,
    /// Upper bound on the backoff between attempts.
    pub backoff_max_ms: u64,
    /// Retries allowed as a fraction of recent requests (0.2 = at most 20 % extra load).
    pub budget_ratio: f64,
    /// Retries per second always allowed, whatever the ratio.
    pub budget_min_per_second: u32,
    /// Window over which the budget counts requests and retries.
    pub budget_window_ms: u64,
}

impl Default for RetryConfig {
    fn default() -> Self {
        Self {
            max_attempts: d::RETRY_MAX_ATTEMPTS,
            retryable_statuses: d::RETRY_STATUSES.iter().map(|s| s.to_string()).collect(),
            idempotent_methods: Vec::new(),
            backoff_base_ms: d::RETRY_BACKOFF_BASE_MS,
            backoff_max_ms: d::RETRY_BACKOFF_MAX_MS,
            budget_ratio: d::RETRY_BUDGET_RATIO,
            budget_min_per_second: d::RETRY_BUDGET_MIN_PER_SECOND,
            budget_window_ms: d::RETRY_BUDGET_WINDOW_MS,
        }
    }
}

/// The `breaker` subsection: when an endpoint's circuit opens and for how long.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct BreakerConfig {
    /// Failures in a row that open the circuit.
    pub consecutive_failures: u32,
    /// Failure share within the window that opens the circuit (0.0..=1.0).
    pub failure_rate: f64,
    /// Number of most recent calls the failure rate is computed over.
    pub window: u32,
    /// Calls the window must hold before the failure rate counts.
    pub min_calls: u32,
    /// Time the circuit stays open before a trial call is let through.
    pub open_ms: u64,
}

impl Default for BreakerConfig {
    fn default() -> Self {
        Self {
            consecutive_failures: d::BREAKER_CONSECUTIVE_FAILURES,
            failure_rate: d::BREAKER_FAILURE_RATE,
            window: d::BREAKER_WINDOW,
            min_calls: d::BREAKER_MIN_CALLS,
            open_ms: d::BREAKER_OPEN_MS,
        }
    }
}

/// The `bulkhead` subsection: how many calls may run and wait at once.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct BulkheadConfig {
    /// Calls in flight at once.
    pub max_concurrent: usize,
    /// Calls waiting for a slot; further ones are refused with RESOURCE_EXHAUSTED.
    pub max_queue: usize,
}

impl Default for BulkheadConfig {
    fn default() -> Self {
        Self {
            max_concurrent: d::BULKHEAD_MAX_CONCURRENT,
            max_queue: d::BULKHEAD_MAX_QUEUE,
        }
    }
}

/// The `outlier` subsection: when an endpoint is taken out of the balancer for a while.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct OutlierConfig {
    /// Endpoint failures in a row that eject it.
    pub consecutive_5xx: u32,
    /// Healthy time after a return that forgives one earlier ejection (Envoy-style decay).
    pub interval_ms: u64,
    /// First ejection time; grows with each further ejection of the same endpoint.
    pub base_ejection_time_ms: u64,
    /// Largest share of a service's endpoints ejected at once, in percent.
    pub max_ejection_percent: u32,
}

impl Default for OutlierConfig {
    fn default() -> Self {
        Self {
            consecutive_5xx: d::OUTLIER_CONSECUTIVE_5XX,
            interval_ms: d::OUTLIER_INTERVAL_MS,
            base_ejection_time_ms: d::OUTLIER_BASE_EJECTION_TIME_MS,
            max_ejection_percent: d::OUTLIER_MAX_EJECTION_PERCENT,
        }
    }
}

/// The `faults` subsection: delays, aborts and resets injected for chaos tests.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct FaultConfig {
    /// Share of calls delayed, in percent.
    pub delay_percent: f64,
    /// Delay added to a delayed call.
    pub delay_ms: u64,
    /// Share of calls aborted with `abort_grpc_status`, in percent.
    pub abort_percent: f64,
    /// gRPC status code number used by aborts.
    pub abort_grpc_status: u16,
    /// Percentage of calls whose stream is reset.
    pub reset_percent: f64,
    /// Honour Envoy's `x-envoy-fault-*` request headers.
    pub allow_header_faults: bool,
    /// Cap on percentages requested by headers.
    pub header_max_percent: f64,
    /// Cap on any injected delay (config, admin API or header); longer delays are clamped.
    pub max_delay_ms: u64,
    /// Seed of this route's fault draws, so a chaos run can be replayed; unseeded when absent.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub seed: Option<u64>,
}

impl Default for FaultConfig {
    fn default() -> Self {
        Self {
            delay_percent: 0.0,
            delay_ms: 0,
            abort_percent: 0.0,
            abort_grpc_status: d::FAULT_ABORT_GRPC_STATUS,
            reset_percent: 0.0,
            allow_header_faults: false,
            header_max_percent: d::HEADER_FAULT_MAX_PERCENT,
            max_delay_ms: ms(d::FAULT_MAX_DELAY),
            seed: None,
        }
    }
}
