//! The per-call metrics of the observe layer, resolved without allocating: label values are
//! looked up once per distinct value (the label sets are bounded, see `metrics`), and each
//! (route, caller) pair keeps its counter per final status and its latency histogram as
//! handles into the registry's families. A call then costs a map lookup and two atomic
//! updates instead of building label `String`s and looking up families under their lock.
//! Series still appear in the registry only when first used, as before.

use crate::grpc::Code;
use crate::metrics::{CallLabels, Metrics, OTHER, RouteLabels};
use crate::{Direction, PeerId, Req, grpc, route};
use parking_lot::RwLock;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::histogram::Histogram;
use std::collections::HashMap;
use std::sync::{Arc, OnceLock};

/// The final status of a call, as counted.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Outcome {
    /// The gRPC status (CANCELLED when the caller went away first).
    Code(Code),
    /// The proxy reset the stream (an injected reset fault).
    Reset,
}

impl Outcome {
    /// The `grpc_status` label value.
    pub fn name(self) -> &'static str {
        match self {
            Outcome::Code(c) => c.name(),
            Outcome::Reset => "RESET",
        }
    }

    fn slot(self) -> usize {
        match self {
            Outcome::Code(c) => usize::from(c.as_u16()),
            Outcome::Reset => RESET_SLOT,
        }
    }
}

/// One slot per gRPC code (0..=16) plus one for RESET.
const STATUS_SLOTS: usize = 18;
const RESET_SLOT: usize = 17;

/// The handles of one (direction, route, caller): what a finished call updates.
pub struct CallHandles {
    metrics: Arc<Metrics>,
    direction: Direction,
    route: Arc<RouteLatency>,
    caller: String,
    requests: [OnceLock<Counter>; STATUS_SLOTS],
}

/// A route label and its latency histogram, shared by its callers' handles.
struct RouteLatency {
    label: String,
    latency: OnceLock<Histogram>,
}

impl CallHandles {
    fn new(
        metrics: Arc<Metrics>,
        direction: Direction,
        route: Arc<RouteLatency>,
        caller: &str,
    ) -> Self {
        Self {
            metrics,
            direction,
            route,
            caller: caller.to_string(),
            requests: std::array::from_fn(|_| OnceLock::new()),
        }
    }

    pub fn route(&self) -> &str {
        &self.route.label
    }

    pub fn caller(&self) -> &str {
        &self.caller
    }

    /// Counts one finished call and its duration.
    pub fn record(&self, outcome: Outcome, seconds: f64) {
        self.requests[outcome.slot()]
            .get_or_init(|| {
                self.metrics
                    .requests
                    .get_or_create(&CallLabels {
                        direction: self.direction.as_str().into(),
                        route: self.route.label.clone(),
                        caller: self.caller.clone(),
                        grpc_status: outcome.name().into(),
                    })
                    .clone()
            })
            .inc();
        self.route
            .latency
            .get_or_init(|| {
                self.metrics
                    .latency
                    .get_or_create(&RouteLabels {
                        direction: self.direction.as_str().into(),
                        route: self.route.label.clone(),
                    })
                    .clone()
            })
            .observe(seconds);
    }
}

/// One route label's handles, by caller.
pub struct RouteHandles {
    shared: Arc<RouteLatency>,
    /// By caller label value that is its own label (bounded by the caller label set).
    callers: RwLock<HashMap<String, Arc<CallHandles>>>,
    /// `local` outbound, `anonymous` inbound without an identity, `other` past the set.
    fixed: [Arc<CallHandles>; 3],
}

const LOCAL: usize = 0;
const ANONYMOUS: usize = 1;
const OTHER_CALLER: usize = 2;

/// Every route's handles for one direction of one listener.
pub struct DirectionHandles {
    metrics: Arc<Metrics>,
    direction: Direction,
    /// By label value: the configured routes (filled at start) and learned ones.
    routes: RwLock<HashMap<String, Arc<RouteHandles>>>,
    other: Arc<RouteHandles>,
}

impl DirectionHandles {
    /// Handles for `direction`; outbound routes are the configured services, known at start.
    pub fn new(direction: Direction, metrics: Arc<Metrics>) -> Self {
        let this = Self {
            other: Self::route_handles(&metrics, direction, OTHER),
            routes: RwLock::new(HashMap::new()),
            metrics,
            direction,
        };
        if direction == Direction::Outbound {
            let mut routes = this.routes.write();
            for name in this.metrics.labels.outbound.fixed() {
                routes.insert(
                    name.to_string(),
                    Self::route_handles(&this.metrics, direction, name),
                );
            }
            drop(routes);
        }
        this
    }

    fn route_handles(
        metrics: &Arc<Metrics>,
        direction: Direction,
        label: &str,
    ) -> Arc<RouteHandles> {
        let shared = Arc::new(RouteLatency {
            label: label.to_string(),
            latency: OnceLock::new(),
        });
        let make = |caller: &str| {
            Arc::new(CallHandles::new(
                metrics.clone(),
                direction,
                shared.clone(),
                caller,
            ))
        };
        Arc::new(RouteHandles {
            fixed: [make("local"), make("anonymous"), make(OTHER)],
            shared,
            callers: RwLock::new(HashMap::new()),
        })
    }

    /// The handles for `req`: its route label and caller label, as the observe layer defines
    /// them (outbound: the configured target service and `local`; inbound: the gRPC service
    /// when the config names it, and the caller's identity).
    pub fn for_call(&self, req: &Req) -> Arc<CallHandles> {
        match self.direction {
            Direction::Outbound => self.outbound_route(req).fixed[LOCAL].clone(),
            Direction::Inbound => {
                let route = match grpc::split_path(req.uri().path()) {
                    Some((service, _)) => self.inbound_route(service),
                    None => self.other.clone(),
                };
                match req.extensions().get::<PeerId>() {
                    Some(PeerId(Some(id))) => self.caller(&route, id),
                    _ => route.fixed[ANONYMOUS].clone(),
                }
            }
        }
    }

    /// The route the router would pick (`user`, `user:80`, `user.tally.svc` → `user`).
    fn outbound_route(&self, req: &Req) -> Arc<RouteHandles> {
        let authority = match req.uri().authority() {
            Some(a) => Some(a.as_str()),
            None => req
                .headers()
                .get(http::header::HOST)
                .and_then(|h| h.to_str().ok()),
        };
        let Some(host) = authority.and_then(route::host_of) else {
            return self.other.clone();
        };
        let lower;
        let host = if host.bytes().any(|b| b.is_ascii_uppercase()) {
            lower = host.to_ascii_lowercase();
            lower.as_str()
        } else {
            host
        };
        let routes = self.routes.read();
        let first = host.split('.').next().unwrap_or(host);
        routes
            .get(host)
            .or_else(|| routes.get(first))
            .cloned()
            .unwrap_or_else(|| self.other.clone())
    }

    fn inbound_route(&self, service: &str) -> Arc<RouteHandles> {
        if let Some(r) = self.routes.read().get(service) {
            return r.clone();
        }
        // First sight of this value: the label set decides (and may learn it).
        let label = self.metrics.labels.inbound.get(service);
        if label == OTHER {
            return self.other.clone();
        }
        let mut routes = self.routes.write();
        routes
            .entry(label.clone())
            .or_insert_with(|| Self::route_handles(&self.metrics, self.direction, &label))
            .clone()
    }

    fn caller(&self, route: &Arc<RouteHandles>, id: &str) -> Arc<CallHandles> {
        if let Some(c) = route.callers.read().get(id) {
            return c.clone();
        }
        let label = self.metrics.labels.callers.get(id);
        if label == OTHER {
            return route.fixed[OTHER_CALLER].clone();
        }
        let mut callers = route.callers.write();
        callers
            .entry(label.clone())
            .or_insert_with(|| {
                Arc::new(CallHandles::new(
                    self.metrics.clone(),
                    self.direction,
                    route.shared.clone(),
                    &label,
                ))
            })
            .clone()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::metrics::{LabelPolicy, LabelSet};

    fn req(authority: &str, path: &str, peer: Option<&str>) -> Req {
        let mut r = http::Request::builder()
            .uri(format!("http://{authority}{path}"))
            .body(crate::body::empty())
            .unwrap();
        r.extensions_mut().insert(PeerId(peer.map(str::to_string)));
        r
    }

    fn metrics() -> Arc<Metrics> {
        Metrics::with_labels(LabelPolicy {
            outbound: LabelSet::new(["user".to_string()], 0),
            inbound: LabelSet::new(["tally.Poll".to_string()], 0),
            callers: LabelSet::new(["spiffe://a".to_string()], 1),
        })
    }

    #[test]
    fn outbound_routes_resolve_like_the_router() {
        let h = DirectionHandles::new(Direction::Outbound, metrics());
        for a in ["user", "user:80", "USER.tally.svc:80"] {
            let c = h.for_call(&req(a, "/x.Y/Z", None));
            assert_eq!((c.route(), c.caller()), ("user", "local"), "{a}");
        }
        assert_eq!(h.for_call(&req("junk", "/x.Y/Z", None)).route(), OTHER);
    }

    #[test]
    fn inbound_labels_stay_bounded_and_series_appear_on_first_use() {
        let m = metrics();
        let h = DirectionHandles::new(Direction::Inbound, m.clone());
        let known = h.for_call(&req("x", "/tally.Poll/Get", Some("spiffe://a")));
        assert_eq!(
            (known.route(), known.caller()),
            ("tally.Poll", "spiffe://a")
        );
        // One caller may be learned, the next one is `other`; unknown services are `other`.
        let learned = h.for_call(&req("x", "/tally.Poll/Get", Some("spiffe://b")));
        assert_eq!(learned.caller(), "spiffe://b");
        let past = h.for_call(&req("x", "/tally.Poll/Get", Some("spiffe://c")));
        assert_eq!(past.caller(), OTHER);
        for i in 0..50 {
            let c = h.for_call(&req("x", &format!("/junk.S{i}/M"), None));
            assert_eq!((c.route(), c.caller()), (OTHER, "anonymous"));
        }
        assert_eq!(
            h.routes.read().len(),
            1,
            "only accepted label values are cached"
        );
        assert!(
            !m.encode().contains("tally.Poll"),
            "no series before a call ends"
        );
        known.record(Outcome::Code(Code::Ok), 0.001);
        past.record(Outcome::Reset, 0.001);
        let text = m.encode();
        assert!(
            text.contains(
                r#"direction="inbound",route="tally.Poll",caller="spiffe://a",grpc_status="OK"} 1"#
            ),
            "{text}"
        );
        assert!(
            text.contains(r#"caller="other",grpc_status="RESET"} 1"#),
            "{text}"
        );
    }
}
