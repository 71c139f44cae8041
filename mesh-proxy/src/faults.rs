//! Fault injection for chaos tests: delay, abort with a gRPC status, and stream reset, for a
//! percentage of calls, from config, from the admin API at runtime, and from Envoy's
//! `x-envoy-fault-*` headers when the route allows them. Own layer rather than
//! tower-resilience's chaos because the settings change at runtime and per request.
//! A route's draws come from a seeded RNG when its settings carry a `seed` (set again on every
//! `PUT /faults`), so a chaos run can be replayed; otherwise from the thread RNG.

use crate::config::FaultConfig;
use crate::grpc::Code;
use crate::layer::{Layer, Next};
use crate::metrics::{FaultLabels, Metrics};
use crate::{Direction, ProxyError, Req, Rsp};
use http::HeaderMap;
use parking_lot::Mutex;
use parking_lot::RwLock;
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

/// Route name for the inbound listener's faults.
pub(crate) const INBOUND_ROUTE: &str = "inbound";

/// Envoy header: gRPC status code to abort the call with.
pub const H_ABORT_GRPC: &str = "x-envoy-fault-abort-grpc-request";
/// Envoy header: HTTP status to abort with, mapped to the matching gRPC code.
pub const H_ABORT_HTTP: &str = "x-envoy-fault-abort-request";
/// Envoy header: percentage of calls the requested abort applies to.
pub const H_ABORT_PCT: &str = "x-envoy-fault-abort-request-percentage";
/// Envoy header: delay in milliseconds to add before forwarding.
pub const H_DELAY: &str = "x-envoy-fault-delay-request";
/// Envoy header: percentage of calls the requested delay applies to.
pub const H_DELAY_PCT: &str = "x-envoy-fault-delay-request-percentage";

/// Current fault settings per route, shared with the admin API.
#[derive(Clone, Default)]
pub(crate) struct FaultStore(Arc<RwLock<BTreeMap<String, Route>>>);

/// One route's settings and, when seeded, the RNG its draws come from.
#[derive(Clone)]
struct Route {
    cfg: FaultConfig,
    draws: Draws,
}

/// Where a route's fault draws come from: a seeded RNG shared by its calls, or the thread RNG.
#[derive(Clone, Default)]
pub(crate) struct Draws(Option<Arc<Mutex<StdRng>>>);

impl Draws {
    fn seeded(seed: Option<u64>) -> Self {
        Self(seed.map(|s| Arc::new(Mutex::new(StdRng::seed_from_u64(s)))))
    }

    /// True for `percent` % of draws.
    fn roll(&self, percent: f64) -> bool {
        if percent <= 0.0 {
            return false;
        }
        let draw = match &self.0 {
            Some(rng) => rng.lock().random_range(0.0..100.0),
            None => rand::rng().random_range(0.0..100.0),
        };
        draw < percent
    }
}

impl FaultStore {
    pub(crate) fn get(&self, route: &str) -> Option<FaultConfig> {
        self.0.read().get(route).map(|r| r.cfg.clone())
    }
    /// Sets a route's settings; a `seed` restarts its draws from that seed.
    pub(crate) fn set(&self, route: &str, f: FaultConfig) {
        let draws = Draws::seeded(f.seed);
        self.0
            .write()
            .insert(route.to_string(), Route { cfg: f, draws });
    }
    pub(crate) fn snapshot(&self) -> BTreeMap<String, FaultConfig> {
        self.0
            .read()
            .iter()
            .map(|(k, r)| (k.clone(), r.cfg.clone()))
            .collect()
    }
    /// A route's settings and its draws.
    fn route(&self, route: &str) -> (FaultConfig, Draws) {
        self.0
            .read()
            .get(route)
            .map(|r| (r.cfg.clone(), r.draws.clone()))
            .unwrap_or_default()
    }
}

/// Faults requested by headers, already capped.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct HeaderFaults {
    /// Status to abort with; None when no valid abort was requested.
    pub abort: Option<Code>,
    /// Share of calls (0–100) that get the abort.
    pub abort_percent: f64,
    /// Delay to add; None when no valid delay was requested.
    pub delay: Option<Duration>,
    /// Share of calls (0–100) that get the delay.
    pub delay_percent: f64,
}

fn header_str<'a>(h: &'a HeaderMap, name: &str) -> Option<&'a str> {
    h.get(name).and_then(|v| v.to_str().ok()).map(str::trim)
}

fn header_percent(h: &HeaderMap, name: &str, cap: f64) -> f64 {
    let requested = match header_str(h, name) {
        None => 100.0,
        Some(s) => match s.parse::<f64>() {
            Ok(p) if p.is_finite() => p.clamp(0.0, 100.0),
            _ => 0.0,
        },
    };
    requested.min(cap)
}

/// Reads Envoy fault headers. Malformed values mean "no fault"; percentages are capped by `cap`.
pub fn header_faults(h: &HeaderMap, cap: f64) -> HeaderFaults {
    let cap = if cap.is_finite() {
        cap.clamp(0.0, 100.0)
    } else {
        0.0
    };
    let abort = header_str(h, H_ABORT_GRPC)
        .and_then(|s| s.parse::<u16>().ok())
        .and_then(Code::from_u16)
        .filter(|c| *c != Code::Ok)
        .or_else(|| {
            header_str(h, H_ABORT_HTTP)
                .and_then(|s| s.parse::<u16>().ok())
                .filter(|s| (200..600).contains(s) && *s != 200)
                .map(Code::from_http)
        });
    let delay = header_str(h, H_DELAY)
        .and_then(|s| s.parse::<u64>().ok())
        .map(Duration::from_millis);
    HeaderFaults {
        abort,
        abort_percent: if abort.is_some() {
            header_percent(h, H_ABORT_PCT, cap)
        } else {
            0.0
        },
        delay,
        delay_percent: if delay.is_some() {
            header_percent(h, H_DELAY_PCT, cap)
        } else {
            0.0
        },
    }
}

/// An injected delay clamped to the route's `max_delay_ms`, however it was requested.
pub(crate) fn capped_delay(d: Duration, cfg: &FaultConfig) -> Duration {
    d.min(Duration::from_millis(cfg.max_delay_ms))
}

pub(crate) struct FaultLayer {
    store: FaultStore,
    route: String,
    direction: Direction,
    metrics: Arc<Metrics>,
}

impl FaultLayer {
    pub(crate) fn new(
        store: FaultStore,
        route: &str,
        direction: Direction,
        metrics: Arc<Metrics>,
    ) -> Self {
        Self {
            store,
            route: route.to_string(),
            direction,
            metrics,
        }
    }

    fn count(&self, kind: &str) {
        self.metrics
            .faults
            .get_or_create(&FaultLabels {
                direction: self.direction.as_str().into(),
                route: self.route.clone(),
                kind: kind.into(),
            })
            .inc();
    }
}

impl<N: Next<Error = ProxyError>> Layer<N> for FaultLayer {
    type Error = ProxyError;

    async fn handle(&self, mut req: Req, next: &N) -> Result<Rsp, ProxyError> {
        let (cfg, draws) = self.store.route(&self.route);
        let roll = |percent| draws.roll(percent);
        let hf = if cfg.allow_header_faults {
            let hf = header_faults(req.headers(), cfg.header_max_percent);
            for h in [
                H_ABORT_GRPC,
                H_ABORT_HTTP,
                H_ABORT_PCT,
                H_DELAY,
                H_DELAY_PCT,
            ] {
                req.headers_mut().remove(h);
            }
            hf
        } else {
            HeaderFaults::default()
        };
        // Decide everything before awaiting: the RNG is not Send.
        let delay = if let Some(d) = hf.delay.filter(|_| roll(hf.delay_percent)) {
            Some(d)
        } else if roll(cfg.delay_percent) {
            Some(Duration::from_millis(cfg.delay_ms))
        } else {
            None
        }
        .map(|d| capped_delay(d, &cfg));
        let abort = if let Some(c) = hf.abort.filter(|_| roll(hf.abort_percent)) {
            Some(c)
        } else if roll(cfg.abort_percent) {
            Some(Code::from_u16(cfg.abort_grpc_status).unwrap_or(Code::Unavailable))
        } else {
            None
        };
        let reset = roll(cfg.reset_percent);
        if let Some(d) = delay {
            self.count("delay");
            tokio::time::sleep(d).await;
        }
        if let Some(code) = abort {
            self.count("abort");
            return Err(ProxyError::FaultAbort(code));
        }
        if reset {
            self.count("reset");
            return Err(ProxyError::FaultReset);
        }
        next.call(req).await
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn h(pairs: &[(&str, &str)]) -> HeaderMap {
        let mut m = HeaderMap::new();
        for (k, v) in pairs {
            m.insert(
                http::HeaderName::from_bytes(k.as_bytes()).unwrap(),
                v.parse().unwrap(),
            );
        }
        m
    }

    /// 200 draws at 50 % from `route` of `store`.
    fn draws(store: &FaultStore, route: &str) -> Vec<bool> {
        let (cfg, draws) = store.route(route);
        assert_eq!(cfg.abort_percent, 50.0);
        (0..200).map(|_| draws.roll(cfg.abort_percent)).collect()
    }

    #[test]
    fn a_seed_replays_the_same_fault_draws() {
        let seeded = FaultConfig {
            abort_percent: 50.0,
            seed: Some(42),
            ..FaultConfig::default()
        };
        let (a, b) = (FaultStore::default(), FaultStore::default());
        a.set("polling", seeded.clone());
        b.set("polling", seeded.clone());
        let first = draws(&a, "polling");
        assert_eq!(first, draws(&b, "polling"), "same seed, same draws");
        assert!(first.contains(&true) && first.contains(&false), "{first:?}");
        // Setting the seed again (a replayed run) starts the draws over.
        a.set("polling", seeded.clone());
        assert_eq!(draws(&a, "polling"), first);
        b.set(
            "polling",
            FaultConfig {
                seed: Some(43),
                ..seeded
            },
        );
        assert_ne!(draws(&b, "polling"), first, "another seed, other draws");
        // The seed shows in the settings (GET /faults), so a run can be repeated.
        assert_eq!(a.snapshot()["polling"].seed, Some(42));
    }

    #[test]
    fn abort_header_with_cap() {
        let f = header_faults(&h(&[(H_ABORT_GRPC, "8"), (H_ABORT_PCT, "90")]), 50.0);
        assert_eq!(f.abort, Some(Code::ResourceExhausted));
        assert_eq!(f.abort_percent, 50.0);
    }

    #[test]
    fn http_abort_maps_to_grpc() {
        let f = header_faults(&h(&[(H_ABORT_HTTP, "503")]), 100.0);
        assert_eq!(f.abort, Some(Code::Unavailable));
        assert_eq!(f.abort_percent, 100.0);
    }

    #[test]
    fn delays_are_clamped_to_the_cap() {
        let cfg = FaultConfig::default();
        let cap = crate::defaults::FAULT_MAX_DELAY;
        assert_eq!(capped_delay(Duration::from_secs(3600), &cfg), cap);
        assert_eq!(
            capped_delay(Duration::from_millis(5), &cfg),
            Duration::from_millis(5)
        );
        let f = header_faults(&h(&[(H_DELAY, "99999999")]), 100.0);
        assert_eq!(capped_delay(f.delay.unwrap(), &cfg), cap);
    }

    #[test]
    fn malformed_headers_mean_no_fault() {
        let f = header_faults(&h(&[(H_ABORT_GRPC, "x"), (H_DELAY, "-5")]), 100.0);
        assert_eq!(f, HeaderFaults::default());
    }
}
