//! Traffic split between a target's stable endpoints and its canary endpoints: the
//! `[services.<name>.canary]` table (endpoints and a weight in percent), the runtime
//! weights the admin API reads and changes (`GET`/`PUT /split`), and the bottom-of-route
//! service that sends each call to one side.
//!
//! The choice is deterministic, not random: of every 100 consecutive calls exactly
//! `weight` go to the canary, spread evenly, so a rollout step's evidence does not depend
//! on luck and tests need no seed.

use crate::layer::Next;
use crate::{Req, Rsp};
use parking_lot::Mutex;
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::future::Future;
use std::sync::Arc;
use std::sync::atomic::{AtomicU8, AtomicU64, Ordering};

/// Highest weight: every call goes to the canary.
pub(crate) const MAX_WEIGHT: u8 = 100;
/// Weight of a canary table that does not name one: no traffic until a rollout sets it.
pub const DEFAULT_CANARY_WEIGHT: u8 = 0;

/// `[services.<name>.canary]`: a second set of endpoints for the same target (a new
/// version), and the share of calls it gets.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CanaryConfig {
    /// Addresses of the canary instances' inbound sidecars.
    pub endpoints: Vec<String>,
    /// Percent of calls (0–100) sent to the canary at start.
    #[serde(default = "default_weight")]
    pub weight: u8,
}

fn default_weight() -> u8 {
    DEFAULT_CANARY_WEIGHT
}

/// Why a weight or a split change is refused.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub(crate) enum SplitError {
    #[error("weight {0} is out of range; use 0 to {MAX_WEIGHT} (percent of calls to the canary)")]
    Weight(u16),
    #[error("service `{0}` has no canary; known: {1:?}")]
    Unknown(String, Vec<String>),
}

/// Checks a weight (config or admin API).
pub(crate) fn check_weight(weight: u16) -> Result<u8, SplitError> {
    u8::try_from(weight)
        .ok()
        .filter(|w| *w <= MAX_WEIGHT)
        .ok_or(SplitError::Weight(weight))
}

/// The live weights of every target that has a canary, shared by the stacks and the admin API.
#[derive(Clone, Default)]
pub(crate) struct SplitStore(Arc<Mutex<BTreeMap<String, Arc<AtomicU8>>>>);

/// One target's split as `GET /split` shows it.
#[derive(Debug, Serialize, PartialEq, Eq)]
pub(crate) struct SplitView {
    pub(crate) weight: u8,
}

/// `PUT /split` body.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct SplitUpdate {
    pub(crate) service: String,
    pub(crate) weight: u16,
}

impl SplitStore {
    /// Registers `service` with its configured weight; returns the handle its route reads.
    pub(crate) fn register(&self, service: &str, weight: u8) -> Arc<AtomicU8> {
        let w = Arc::new(AtomicU8::new(weight.min(MAX_WEIGHT)));
        self.0.lock().insert(service.to_string(), w.clone());
        w
    }

    /// Sets the weight of a registered service.
    pub(crate) fn set(&self, service: &str, weight: u16) -> Result<u8, SplitError> {
        let weight = check_weight(weight)?;
        let map = self.0.lock();
        let w = map.get(service).ok_or_else(|| {
            SplitError::Unknown(service.to_string(), map.keys().cloned().collect())
        })?;
        w.store(weight, Ordering::Relaxed);
        Ok(weight)
    }

    /// Every registered split.
    pub(crate) fn snapshot(&self) -> BTreeMap<String, SplitView> {
        self.0
            .lock()
            .iter()
            .map(|(k, w)| {
                (
                    k.clone(),
                    SplitView {
                        weight: w.load(Ordering::Relaxed),
                    },
                )
            })
            .collect()
    }
}

/// Largest `PUT /split` body.
const MAX_SPLIT_BODY: usize = 4 * 1024;

/// `PUT /split` with `{"service": "<name>", "weight": <0-100>}` (the admin listener has
/// already checked the bearer token): the status and a one-line answer.
pub(crate) async fn admin_put<B>(store: &SplitStore, body: B) -> (http::StatusCode, String)
where
    B: http_body::Body,
    B::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
{
    use http::StatusCode;
    use http_body_util::{BodyExt, Limited};
    let bytes = match Limited::new(body, MAX_SPLIT_BODY).collect().await {
        Ok(c) => c.to_bytes(),
        Err(e) => return (StatusCode::BAD_REQUEST, format!("cannot read body: {e}\n")),
    };
    let update: SplitUpdate = match serde_json::from_slice(&bytes) {
        Ok(u) => u,
        Err(e) => {
            return (
                StatusCode::BAD_REQUEST,
                format!("expected {{\"service\": \"<name>\", \"weight\": <0-100>}}: {e}\n"),
            );
        }
    };
    match store.set(&update.service, update.weight) {
        Ok(w) => {
            tracing::info!(service = %update.service, weight = w, "canary weight changed");
            (
                StatusCode::OK,
                format!("{}: {w}% of calls to the canary\n", update.service),
            )
        }
        Err(e @ SplitError::Unknown(..)) => (StatusCode::NOT_FOUND, format!("{e}\n")),
        Err(e) => (StatusCode::BAD_REQUEST, format!("{e}\n")),
    }
}

/// Sends each call to `stable` or `canary` by the current weight.
pub(crate) struct Split<S, C> {
    stable: S,
    canary: C,
    weight: Arc<AtomicU8>,
    calls: AtomicU64,
}

impl<S, C> Split<S, C> {
    pub(crate) fn new(stable: S, canary: C, weight: Arc<AtomicU8>) -> Self {
        Self {
            stable,
            canary,
            weight,
            calls: AtomicU64::new(0),
        }
    }

    /// Whether the next call goes to the canary: call `n` does when `n * w / 100` steps up,
    /// which is exactly `w` of every 100 calls, evenly spaced.
    fn next_is_canary(&self) -> bool {
        let w = u64::from(self.weight.load(Ordering::Relaxed).min(MAX_WEIGHT));
        let n = self.calls.fetch_add(1, Ordering::Relaxed) % u64::from(MAX_WEIGHT);
        (n + 1) * w / u64::from(MAX_WEIGHT) > n * w / u64::from(MAX_WEIGHT)
    }
}

impl<S, C, E> Next for Split<S, C>
where
    S: Next<Error = E>,
    C: Next<Error = E>,
    E: Send + 'static,
{
    type Error = E;

    fn call(&self, req: Req) -> impl Future<Output = Result<Rsp, E>> + Send {
        let to_canary = self.next_is_canary();
        async move {
            if to_canary {
                self.canary.call(req).await
            } else {
                self.stable.call(req).await
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::body;

    struct Side(&'static str);

    impl Next for Side {
        type Error = ();
        async fn call(&self, _req: Req) -> Result<Rsp, ()> {
            let mut rsp = Rsp::new(body::empty());
            rsp.headers_mut()
                .insert("side", http::HeaderValue::from_static(self.0));
            Ok(rsp)
        }
    }

    async fn sides(split: &Split<Side, Side>, calls: usize) -> Vec<bool> {
        let mut out = Vec::new();
        for _ in 0..calls {
            let rsp = split.call(Req::new(body::empty())).await.expect("ok");
            out.push(rsp.headers()["side"] == "canary");
        }
        out
    }

    #[tokio::test]
    async fn exactly_weight_percent_go_to_the_canary_evenly_spread() {
        for w in [0u8, 1, 5, 25, 50, 99, 100] {
            let split = Split::new(Side("stable"), Side("canary"), Arc::new(AtomicU8::new(w)));
            let seen = sides(&split, 200).await;
            let canary = seen.iter().filter(|c| **c).count();
            assert_eq!(canary, 2 * usize::from(w), "weight {w}");
            // Evenly spread: each half of a hundred gets half the canary calls (±1).
            let first: usize = seen[..50].iter().filter(|c| **c).count();
            assert!(
                first.abs_diff(usize::from(w) / 2) <= 1,
                "weight {w}: {first}"
            );
        }
    }

    #[tokio::test]
    async fn a_weight_change_applies_to_the_next_calls() {
        let store = SplitStore::default();
        let w = store.register("user", 0);
        let split = Split::new(Side("stable"), Side("canary"), w);
        assert!(sides(&split, 100).await.iter().all(|c| !c));
        assert_eq!(store.set("user", 100), Ok(100));
        assert!(sides(&split, 100).await.iter().all(|c| *c));
        assert_eq!(store.snapshot()["user"], SplitView { weight: 100 });
    }

    #[test]
    fn bad_weights_and_unknown_services_are_refused() {
        let store = SplitStore::default();
        store.register("user", 5);
        assert_eq!(store.set("user", 101), Err(SplitError::Weight(101)));
        assert_eq!(
            store.set("polling", 5),
            Err(SplitError::Unknown("polling".into(), vec!["user".into()]))
        );
        assert_eq!(store.snapshot()["user"].weight, 5);
        assert_eq!(check_weight(100), Ok(100));
    }

    #[tokio::test]
    async fn the_admin_put_sets_a_weight_or_names_the_problem() {
        use http_body_util::Full;
        let store = SplitStore::default();
        store.register("user", 0);
        let put = |s: &'static str| admin_put(&store, Full::new(bytes::Bytes::from(s)));
        let (status, _) = put(r#"{"service":"user","weight":25}"#).await;
        assert_eq!(status, http::StatusCode::OK);
        assert_eq!(store.snapshot()["user"].weight, 25);
        assert_eq!(
            put(r#"{"service":"user","weight":101}"#).await.0,
            http::StatusCode::BAD_REQUEST
        );
        assert_eq!(
            put(r#"{"service":"nope","weight":1}"#).await.0,
            http::StatusCode::NOT_FOUND
        );
        assert_eq!(put("{").await.0, http::StatusCode::BAD_REQUEST);
        assert_eq!(store.snapshot()["user"].weight, 25);
    }

    #[test]
    fn a_canary_must_not_share_endpoints_and_needs_a_weight_in_range() {
        let base = "[admin]\nlisten = \"127.0.0.1:9901\"\n[outbound]\nlisten = \"127.0.0.1:4140\"\n[services.user]\nendpoints = [\"127.0.0.1:4143\"]\n[services.user.canary]\n";
        let check = |extra: &str| {
            let c =
                crate::config::Config::parse("t.toml", &format!("{base}{extra}")).expect("parses");
            c.validate("t.toml").map_err(|e| e.to_string())
        };
        assert!(check("endpoints = [\"127.0.0.1:5143\"]\nweight = 5\n").is_ok());
        let e = check("endpoints = [\"127.0.0.1:4143\"]\n").unwrap_err();
        assert!(e.contains("services.user.canary.endpoints"), "{e}");
        let e = check("endpoints = [\"127.0.0.1:5143\"]\nweight = 101\n").unwrap_err();
        assert!(e.contains("services.user.canary.weight"), "{e}");
        let e = check("endpoints = []\n").unwrap_err();
        assert!(e.contains("services.user.canary.endpoints"), "{e}");
    }

    #[test]
    fn the_canary_table_reads_with_a_default_weight_of_zero() {
        let c: CanaryConfig = toml::from_str(r#"endpoints = ["127.0.0.1:1"]"#).expect("parses");
        assert_eq!(c.weight, DEFAULT_CANARY_WEIGHT);
        assert!(toml::from_str::<CanaryConfig>("endpoints = []\nweights = 3").is_err());
    }
}
