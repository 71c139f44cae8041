//! Failure classification: decides which call outcomes say something about an endpoint's
//! health. The circuit breaker, outlier ejection and the balancer's failure penalty all move
//! on this one verdict, so an answer that describes the *request* (a malformed message, an
//! unknown id, a missing permission) can never open a breaker or eject an endpoint for
//! everyone. Kind names follow Envoy's `retry_on` / outlier-detection vocabulary.

use crate::grpc::Code;
use serde::{Deserialize, Serialize};
use std::time::Duration;

/// Kind: the TCP connect or the TLS handshake to the endpoint failed (Envoy `connect-failure`).
pub const CONNECT_FAILURE: &str = "connect-failure";
/// Kind: the endpoint reset the stream, sent GOAWAY for it or its connection broke, before any
/// response headers (Envoy `reset`).
pub const RESET: &str = "reset";
/// Kind: the stream was reset or broke after the response headers, in the middle of the body.
pub const RESET_DURING_RESPONSE: &str = "reset-during-response";
/// Kind: the endpoint refused the stream unprocessed (REFUSED_STREAM, above a GOAWAY's last
/// stream id) (Envoy `refused-stream`). Usually a sign of a draining endpoint, not a sick one.
pub const REFUSED_STREAM: &str = "refused-stream";
/// Kind: no response headers within the route's own `timeout_ms` (a caller's shorter
/// `grpc-timeout` is the caller's choice and never counts).
pub const TIMEOUT: &str = "timeout";
/// Kind: a non-gRPC HTTP answer 502, 503 or 504 (Envoy `gateway-error`).
pub const GATEWAY_ERROR: &str = "gateway-error";
/// Kind: any non-gRPC HTTP answer 500-599 (Envoy `5xx`).
pub const HTTP_5XX: &str = "5xx";

/// Every kind `on` accepts.
pub const KINDS: &[&str] = &[
    CONNECT_FAILURE,
    RESET,
    RESET_DURING_RESPONSE,
    REFUSED_STREAM,
    TIMEOUT,
    GATEWAY_ERROR,
    HTTP_5XX,
];

/// Kinds that count by default: only signals about the endpoint itself.
pub const DEFAULT_KINDS: &[&str] = &[CONNECT_FAILURE, RESET, TIMEOUT, GATEWAY_ERROR];
/// gRPC statuses that count by default. INTERNAL, UNKNOWN and DATA_LOSS are left out: tonic
/// answers INTERNAL for an undecodable request message, so any client could produce them.
pub const DEFAULT_GRPC_STATUSES: &[&str] = &["UNAVAILABLE"];

/// gRPC statuses that always describe the request (or the caller), never the endpoint; the
/// config refuses them so no setting can hand clients a way to open a breaker.
pub const REQUEST_STATUSES: &[Code] = &[
    Code::Ok,
    Code::Cancelled,
    Code::InvalidArgument,
    Code::NotFound,
    Code::AlreadyExists,
    Code::PermissionDenied,
    Code::ResourceExhausted,
    Code::FailedPrecondition,
    Code::Aborted,
    Code::OutOfRange,
    Code::Unimplemented,
    Code::Unauthenticated,
];

/// Per-service matcher: which outcomes count as endpoint failures
/// (`[services.<name>.failure]`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct FailureConfig {
    /// Error kinds that count (see [`KINDS`]).
    pub on: Vec<String>,
    /// gRPC status names that count (only endpoint-side statuses are accepted:
    /// UNAVAILABLE, INTERNAL, UNKNOWN, DATA_LOSS, DEADLINE_EXCEEDED).
    pub grpc_statuses: Vec<String>,
    /// Extra non-gRPC HTTP statuses (500-599) that count, besides `gateway-error` / `5xx`.
    pub http_statuses: Vec<u16>,
}

impl Default for FailureConfig {
    fn default() -> Self {
        Self {
            on: DEFAULT_KINDS.iter().map(|s| s.to_string()).collect(),
            grpc_statuses: DEFAULT_GRPC_STATUSES
                .iter()
                .map(|s| s.to_string())
                .collect(),
            http_statuses: Vec::new(),
        }
    }
}

/// Why a [`FailureConfig`] is invalid: the key below `failure` and the problem.
#[derive(Debug, thiserror::Error)]
#[error("{key}: {problem}")]
pub struct FailureConfigError {
    pub key: &'static str,
    pub problem: String,
}

impl FailureConfig {
    /// Checks every name and number; see [`REQUEST_STATUSES`].
    pub fn validate(&self) -> Result<(), FailureConfigError> {
        for k in &self.on {
            if !KINDS.contains(&k.as_str()) {
                return Err(FailureConfigError {
                    key: "on",
                    problem: format!("`{k}` is not a failure kind (known: {})", KINDS.join(", ")),
                });
            }
        }
        for s in &self.grpc_statuses {
            let Some(code) = Code::from_name(s) else {
                return Err(FailureConfigError {
                    key: "grpc_statuses",
                    problem: format!("`{s}` is not a gRPC status name"),
                });
            };
            if REQUEST_STATUSES.contains(&code) {
                return Err(FailureConfigError {
                    key: "grpc_statuses",
                    problem: format!(
                        "`{s}` describes the request, not the endpoint; counting it would let any client open the breaker"
                    ),
                });
            }
        }
        for s in &self.http_statuses {
            if !(500..=599).contains(s) {
                return Err(FailureConfigError {
                    key: "http_statuses",
                    problem: format!("{s} is not a 5xx status"),
                });
            }
        }
        Ok(())
    }
}

/// What happened to one call, as the balancer saw it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Signal {
    /// Connect or TLS handshake failure.
    ConnectFailure,
    /// Reset, GOAWAY or broken connection before response headers.
    Reset,
    /// The endpoint refused the stream unprocessed.
    RefusedStream,
    /// No response headers within the route's timeout.
    Timeout,
    /// The stream broke after the response headers.
    ResetDuringResponse,
    /// A non-gRPC HTTP answer (no `grpc-status`), by status.
    Http(u16),
    /// A gRPC status, from trailers or a trailers-only answer.
    Grpc(Code),
    /// Nothing learned about the endpoint (the caller went away, no status at all).
    Neutral,
}

impl Signal {
    /// A bounded name for metrics and logs.
    pub fn kind(self) -> String {
        match self {
            Signal::ConnectFailure => CONNECT_FAILURE.into(),
            Signal::Reset => RESET.into(),
            Signal::RefusedStream => REFUSED_STREAM.into(),
            Signal::Timeout => TIMEOUT.into(),
            Signal::ResetDuringResponse => RESET_DURING_RESPONSE.into(),
            Signal::Http(s) if (100..=599).contains(&s) => format!("http-{s}"),
            Signal::Http(_) => "http-other".into(),
            Signal::Grpc(c) => format!("grpc-{}", c.name()),
            Signal::Neutral => "neutral".into(),
        }
    }
}

/// The classifier's answer for one call.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Verdict {
    /// The endpoint answered: it is alive, whatever it said about the request.
    Success,
    /// Counts against the endpoint (breaker, outlier ejection, EWMA penalty).
    Failure,
    /// Counts neither way.
    Neutral,
}

impl Verdict {
    /// The breaker's and outlier detector's form: `Some(true)` failure, `None` neutral.
    pub fn as_failed(self) -> Option<bool> {
        match self {
            Verdict::Success => Some(false),
            Verdict::Failure => Some(true),
            Verdict::Neutral => None,
        }
    }
}

/// A validated [`FailureConfig`] in the form the hot path wants.
#[derive(Debug, Clone)]
pub struct Classifier {
    connect_failure: bool,
    reset: bool,
    reset_during_response: bool,
    refused_stream: bool,
    timeout: bool,
    gateway_error: bool,
    http_5xx: bool,
    grpc: Vec<Code>,
    http: Vec<u16>,
    /// The route's own timeout (`timeout_ms`); `None` when the route has none.
    route_timeout: Option<Duration>,
}

impl Default for Classifier {
    fn default() -> Self {
        Self::new(&FailureConfig::default(), None)
    }
}

impl Classifier {
    /// Unknown names (already refused by validation) are ignored; request statuses never count.
    pub fn new(cfg: &FailureConfig, route_timeout: Option<Duration>) -> Self {
        let on = |k: &str| cfg.on.iter().any(|x| x == k);
        Self {
            connect_failure: on(CONNECT_FAILURE),
            reset: on(RESET),
            reset_during_response: on(RESET_DURING_RESPONSE),
            refused_stream: on(REFUSED_STREAM),
            timeout: on(TIMEOUT),
            gateway_error: on(GATEWAY_ERROR),
            http_5xx: on(HTTP_5XX),
            grpc: cfg
                .grpc_statuses
                .iter()
                .filter_map(|s| Code::from_name(s))
                .filter(|c| !REQUEST_STATUSES.contains(c))
                .collect(),
            http: cfg.http_statuses.clone(),
            route_timeout,
        }
    }

    /// The route's own timeout, for deciding whether an abandoned call timed out.
    pub fn route_timeout(&self) -> Option<Duration> {
        self.route_timeout
    }

    pub fn classify(&self, s: Signal) -> Verdict {
        let fail_if = |b: bool| {
            if b {
                Verdict::Failure
            } else {
                Verdict::Neutral
            }
        };
        match s {
            Signal::ConnectFailure => fail_if(self.connect_failure),
            Signal::Reset => fail_if(self.reset),
            Signal::RefusedStream => fail_if(self.refused_stream),
            Signal::Timeout => fail_if(self.timeout),
            Signal::ResetDuringResponse => fail_if(self.reset_during_response),
            Signal::Neutral => Verdict::Neutral,
            Signal::Grpc(c) if self.grpc.contains(&c) => Verdict::Failure,
            Signal::Grpc(_) => Verdict::Success,
            Signal::Http(s) => {
                let counts = self.http.contains(&s)
                    || (self.gateway_error && matches!(s, 502..=504))
                    || (self.http_5xx && (500..=599).contains(&s));
                if counts {
                    Verdict::Failure
                } else {
                    Verdict::Success
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults_count_only_endpoint_signals() {
        let c = Classifier::default();
        for s in [
            Signal::ConnectFailure,
            Signal::Reset,
            Signal::Timeout,
            Signal::Grpc(Code::Unavailable),
            Signal::Http(503),
        ] {
            assert_eq!(c.classify(s), Verdict::Failure, "{s:?}");
        }
        for code in [
            Code::Ok,
            Code::InvalidArgument,
            Code::Internal,
            Code::Unknown,
            Code::DataLoss,
            Code::NotFound,
            Code::PermissionDenied,
            Code::Unauthenticated,
            Code::ResourceExhausted,
            Code::DeadlineExceeded,
        ] {
            assert_eq!(c.classify(Signal::Grpc(code)), Verdict::Success, "{code:?}");
        }
        assert_eq!(c.classify(Signal::Http(500)), Verdict::Success);
        assert_eq!(c.classify(Signal::Http(404)), Verdict::Success);
        for s in [
            Signal::RefusedStream,
            Signal::ResetDuringResponse,
            Signal::Neutral,
        ] {
            assert_eq!(c.classify(s), Verdict::Neutral, "{s:?}");
        }
    }

    #[test]
    fn matcher_opts_in_endpoint_statuses_and_kinds() {
        let cfg = FailureConfig {
            on: vec![HTTP_5XX.into(), REFUSED_STREAM.into()],
            grpc_statuses: vec!["INTERNAL".into(), "unknown".into()],
            http_statuses: vec![],
        };
        cfg.validate().unwrap();
        let c = Classifier::new(&cfg, None);
        assert_eq!(c.classify(Signal::Grpc(Code::Internal)), Verdict::Failure);
        assert_eq!(c.classify(Signal::Grpc(Code::Unknown)), Verdict::Failure);
        assert_eq!(
            c.classify(Signal::Grpc(Code::Unavailable)),
            Verdict::Success
        );
        assert_eq!(c.classify(Signal::Http(500)), Verdict::Failure);
        assert_eq!(c.classify(Signal::RefusedStream), Verdict::Failure);
        assert_eq!(c.classify(Signal::ConnectFailure), Verdict::Neutral);
    }

    #[test]
    fn request_statuses_and_unknown_names_are_refused() {
        for bad in [
            "INVALID_ARGUMENT",
            "PERMISSION_DENIED",
            "RESOURCE_EXHAUSTED",
            "NOPE",
        ] {
            let cfg = FailureConfig {
                grpc_statuses: vec![bad.into()],
                ..FailureConfig::default()
            };
            let e = cfg.validate().unwrap_err();
            assert_eq!(e.key, "grpc_statuses", "{bad}: {e}");
        }
        let cfg = FailureConfig {
            on: vec!["retriable-4xx".into()],
            ..FailureConfig::default()
        };
        assert_eq!(cfg.validate().unwrap_err().key, "on");
        let cfg = FailureConfig {
            http_statuses: vec![404],
            ..FailureConfig::default()
        };
        assert_eq!(cfg.validate().unwrap_err().key, "http_statuses");
        FailureConfig::default().validate().unwrap();
    }
}
