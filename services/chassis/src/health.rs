//! Health as operators and load balancers read it: `grpc.health.v1`, with the
//! overall status derived from the status of each dependency.
//!
//! A service registers its dependencies (its store, Redis, a peer it needs);
//! while any of them is down, the service and the overall (`""`) entry report
//! NOT_SERVING, and come back on their own once it recovers. Every gRPC
//! service a port serves has an entry ([`HealthHub::cover`]); one that needs
//! only some dependencies (an event feed needs only the store) follows just
//! those. Each change is also published as `tally_dependency_up`.

use parking_lot::Mutex;
use std::collections::BTreeMap;
use std::future::Future;
use std::sync::Arc;
use std::time::Duration;
use tonic_health::ServingStatus;
use tonic_health::pb::health_server::{Health, HealthServer};
use tonic_health::server::HealthReporter;

/// The dependency every service registers for its store.
pub const STORAGE: &str = "storage";

/// The dependencies a chassis-provided gRPC service needs, when it needs
/// fewer than the whole service: the event feed and the consumer admin API
/// read only the store. `None`: all of them.
pub fn needs_of(service_name: &str) -> Option<&'static [&'static str]> {
    match service_name {
        "tally.events.v1.EventFeedService" | "tally.events.v1.ConsumerAdminService" => {
            Some(&[STORAGE])
        }
        _ => None,
    }
}

/// Which dependencies one reported name follows: all, or the listed ones.
type Needs = Option<Vec<String>>;

/// Shared handle to a service's health.
#[derive(Clone)]
pub struct HealthHub {
    reporter: HealthReporter,
    service_names: Arc<Mutex<BTreeMap<String, Needs>>>,
    deps: Arc<Mutex<BTreeMap<String, bool>>>,
    draining: Arc<std::sync::atomic::AtomicBool>,
}

impl HealthHub {
    /// A hub reporting for the given fully-qualified gRPC service names, plus
    /// the gRPC health server to mount.
    pub fn new(service_names: &[&str]) -> (Self, HealthServer<impl Health>) {
        let (reporter, server) = tonic_health::server::health_reporter();
        let hub = Self {
            reporter,
            service_names: Arc::new(Mutex::new(
                service_names
                    .iter()
                    .map(|s| (s.to_string(), None))
                    .collect(),
            )),
            deps: Arc::new(Mutex::new(BTreeMap::new())),
            draining: Arc::new(std::sync::atomic::AtomicBool::new(false)),
        };
        (hub, server)
    }

    /// Reports `service_name` too, following `needs` (every dependency when
    /// `None`); a name already reported keeps what it follows.
    pub async fn cover(&self, service_name: &str, needs: Option<&[&str]>) {
        {
            let mut names = self.service_names.lock();
            names
                .entry(service_name.to_string())
                .or_insert_with(|| needs.map(|n| n.iter().map(|d| d.to_string()).collect()));
        }
        self.publish().await;
    }

    /// Records whether `dependency` is usable and republishes the status.
    pub async fn set_dependency(&self, dependency: &str, up: bool) {
        let changed = {
            let mut deps = self.deps.lock();
            deps.insert(dependency.to_string(), up) != Some(up)
        };
        crate::metrics::record_health(Some((dependency, up)), self.is_serving());
        if changed {
            if up {
                tracing::info!(dependency, "dependency is up");
            } else {
                tracing::warn!(dependency, "dependency is down");
            }
        }
        self.publish().await;
    }

    /// Current status per dependency.
    pub fn dependencies(&self) -> BTreeMap<String, bool> {
        self.deps.lock().clone()
    }

    /// True when every dependency is up and the service is not draining.
    pub fn is_serving(&self) -> bool {
        !self.draining.load(std::sync::atomic::Ordering::SeqCst)
            && self.dependencies().values().all(|up| *up)
    }

    /// True once [`HealthHub::drain`] was called.
    pub fn is_draining(&self) -> bool {
        self.draining.load(std::sync::atomic::Ordering::SeqCst)
    }

    /// Marks the service as shutting down: NOT_SERVING from now on.
    pub async fn drain(&self) {
        self.draining
            .store(true, std::sync::atomic::Ordering::SeqCst);
        self.publish().await;
    }

    /// Whether a name following `needs` is serving.
    fn serves(&self, needs: &Needs) -> bool {
        match needs {
            None => self.is_serving(),
            Some(needs) => {
                let deps = self.dependencies();
                !self.is_draining() && needs.iter().all(|n| deps.get(n).copied().unwrap_or(true))
            }
        }
    }

    async fn publish(&self) {
        let word = |up: bool| {
            if up {
                ServingStatus::Serving
            } else {
                ServingStatus::NotServing
            }
        };
        let overall = self.is_serving();
        crate::metrics::record_health(None, overall);
        self.reporter.set_service_status("", word(overall)).await;
        let names: Vec<(String, Needs)> = self
            .service_names
            .lock()
            .iter()
            .map(|(k, v)| (k.clone(), v.clone()))
            .collect();
        for (name, needs) in names {
            self.reporter
                .set_service_status(&name, word(self.serves(&needs)))
                .await;
        }
    }

    /// Probes `dependency` every `interval` with `check` until the process ends.
    pub fn watch<F, Fut>(&self, dependency: &str, interval: Duration, check: F)
    where
        F: Fn() -> Fut + Send + 'static,
        Fut: Future<Output = bool> + Send,
    {
        let hub = self.clone();
        let name = dependency.to_string();
        tokio::spawn(async move {
            loop {
                let up = check().await;
                hub.set_dependency(&name, up).await;
                tokio::time::sleep(interval).await;
            }
        });
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    #[test]
    fn feeds_and_consumer_admin_need_only_the_store() {
        assert_eq!(
            needs_of("tally.events.v1.EventFeedService"),
            Some(&[STORAGE][..])
        );
        assert_eq!(
            needs_of("tally.events.v1.ConsumerAdminService"),
            Some(&[STORAGE][..])
        );
        assert_eq!(needs_of("tally.poll.v1.PollService"), None);
    }

    #[tokio::test]
    async fn a_covered_name_follows_only_what_it_needs() {
        let (hub, _server) = HealthHub::new(&["tally.poll.v1.PollService"]);
        hub.cover(
            "tally.events.v1.EventFeedService",
            needs_of("tally.events.v1.EventFeedService"),
        )
        .await;
        hub.set_dependency(STORAGE, true).await;
        hub.set_dependency("user", false).await;
        assert!(!hub.serves(&None), "the service needs user");
        let feed = Some(vec![STORAGE.to_string()]);
        assert!(hub.serves(&feed), "the feed needs only the store");
        hub.set_dependency(STORAGE, false).await;
        assert!(!hub.serves(&feed));
        hub.set_dependency(STORAGE, true).await;
        hub.drain().await;
        assert!(!hub.serves(&feed), "draining ends every name");
    }
}
