//! What a request may carry across the edge. Headers that steer the mesh (`x-envoy-*` fault,
//! retry and route overrides, `tally-*`/`x-tally-*` proxy headers, `l5d-*`, Envoy's client
//! certificate header) are dropped, whoever sent them. The gateway issues its own
//! `x-request-id` and starts a new trace, unless the TCP peer is a trusted proxy, whose
//! request id (when well formed) and trace context are kept.

use crate::defaults::MAX_REQUEST_ID_LEN;
pub(crate) use crate::defaults::REQUEST_ID_HEADER;
use http::{HeaderMap, HeaderName, HeaderValue};

/// Prefixes of headers only the mesh may set.
const INTERNAL_PREFIXES: [&str; 4] = ["x-envoy-", "tally-", "x-tally-", "l5d-"];
/// Internal headers without one of those prefixes.
const INTERNAL_NAMES: [&str; 2] = ["x-forwarded-client-cert", "x-client-trace-id"];
/// Trace context headers (W3C, B3, OpenTracing): a new trace starts at the edge.
const TRACE_HEADERS: [&str; 9] = [
    "traceparent",
    "tracestate",
    "baggage",
    "b3",
    "x-b3-traceid",
    "x-b3-spanid",
    "x-b3-parentspanid",
    "x-b3-sampled",
    "x-ot-span-context",
];

/// The request id the gateway gave a call; also put in the request's extensions.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RequestId(pub HeaderValue);

fn is_internal(name: &HeaderName) -> bool {
    let n = name.as_str();
    INTERNAL_PREFIXES.iter().any(|p| n.starts_with(p)) || INTERNAL_NAMES.contains(&n)
}

/// A request id a trusted proxy may hand in: short, visible ASCII.
fn acceptable_id(v: &HeaderValue) -> bool {
    let b = v.as_bytes();
    !b.is_empty() && b.len() <= MAX_REQUEST_ID_LEN && b.iter().all(|c| c.is_ascii_graphic())
}

/// A fresh request id: 128 random bits in hex.
pub fn new_request_id() -> HeaderValue {
    let id = format!("{:032x}", rand::random::<u128>());
    HeaderValue::from_str(&id).unwrap_or_else(|_| HeaderValue::from_static("0"))
}

/// Applies the edge policy to the headers of a request from outside; `trusted`: the TCP
/// peer is one of `trusted_proxies`. Returns the call's request id.
pub fn sanitize(h: &mut HeaderMap, trusted: bool) -> RequestId {
    let internal: Vec<HeaderName> = h.keys().filter(|n| is_internal(n)).cloned().collect();
    for name in internal {
        h.remove(&name);
    }
    if !trusted {
        for name in TRACE_HEADERS {
            h.remove(name);
        }
    }
    let kept = match h.get_all(REQUEST_ID_HEADER).iter().collect::<Vec<_>>()[..] {
        [one] if trusted && acceptable_id(one) => Some(one.clone()),
        _ => None,
    };
    let id = kept.unwrap_or_else(new_request_id);
    h.insert(REQUEST_ID_HEADER, id.clone());
    RequestId(id)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn headers(pairs: &[(&'static str, &'static str)]) -> HeaderMap {
        let mut h = HeaderMap::new();
        for (k, v) in pairs {
            h.append(*k, HeaderValue::from_static(v));
        }
        h
    }

    const FROM_OUTSIDE: [(&str, &str); 12] = [
        ("x-envoy-fault-abort-grpc-request", "14"),
        ("x-envoy-fault-abort-request-percentage", "100"),
        ("x-envoy-retry-on", "5xx"),
        ("x-envoy-upstream-rq-timeout-ms", "1"),
        ("tally-proxy-error", "breaker-open"),
        (
            "x-tally-peer-spiffe-id",
            "spiffe://tally.local/ns/tally/sa/billing",
        ),
        ("l5d-dst-override", "billing:80"),
        ("x-forwarded-client-cert", "By=spiffe://x"),
        (
            "traceparent",
            "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",
        ),
        ("tracestate", "a=b"),
        ("x-request-id", "chosen-by-the-client"),
        ("authorization", "Bearer t"),
    ];

    #[test]
    fn untrusted_callers_lose_internal_headers_trace_and_request_id() {
        let mut h = headers(&FROM_OUTSIDE);
        let id = sanitize(&mut h, false);
        let names: Vec<&str> = h.keys().map(|k| k.as_str()).collect();
        assert_eq!(names, vec!["authorization", "x-request-id"]);
        assert_ne!(id.0, "chosen-by-the-client");
        assert_eq!(id.0.len(), 32);
        assert_eq!(h[REQUEST_ID_HEADER], id.0);
        // Each call gets its own id.
        assert_ne!(sanitize(&mut headers(&[]), false), id);
    }

    #[test]
    fn trusted_proxies_keep_request_id_and_trace_but_not_internal_headers() {
        let mut h = headers(&FROM_OUTSIDE);
        let id = sanitize(&mut h, true);
        assert_eq!(id.0, "chosen-by-the-client");
        assert!(h.contains_key("traceparent") && h.contains_key("tracestate"));
        assert!(!h.keys().any(is_internal));
        // A malformed or repeated id is replaced even from a trusted proxy.
        let mut h = headers(&[("x-request-id", "a"), ("x-request-id", "b")]);
        assert_eq!(h.get_all(REQUEST_ID_HEADER).iter().count(), 2);
        let id = sanitize(&mut h, true);
        assert_eq!(id.0.len(), 32);
        assert_eq!(h.get_all(REQUEST_ID_HEADER).iter().count(), 1);
        let long = "x".repeat(MAX_REQUEST_ID_LEN + 1);
        let mut h = HeaderMap::new();
        h.insert(REQUEST_ID_HEADER, HeaderValue::from_str(&long).unwrap());
        assert_ne!(sanitize(&mut h, true).0, long.as_str());
    }
}
