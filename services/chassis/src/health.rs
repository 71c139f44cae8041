//! Health as operators and load balancers read it: `grpc.health.v1`, with the
//! overall status derived from the status of each dependency.
//!
//! A service registers its dependencies (its store, Redis, a peer it needs);
//! while any of them is down, the service and the overall (`""`) entry report
//! NOT_SERVING, and come back on their own once it recovers.

use parking_lot::Mutex;
use std::collections::BTreeMap;
use std::future::Future;
use std::sync::Arc;
use std::time::Duration;
use tonic_health::ServingStatus;
use tonic_health::pb::health_server::{Health, HealthServer};
use tonic_health::server::HealthReporter;

/// Shared handle to a service's health.
#[derive(Clone)]
pub struct HealthHub {
    reporter: HealthReporter,
    service_names: Arc<Vec<String>>,
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
            service_names: Arc::new(service_names.iter().map(|s| s.to_string()).collect()),
            deps: Arc::new(Mutex::new(BTreeMap::new())),
            draining: Arc::new(std::sync::atomic::AtomicBool::new(false)),
        };
        (hub, server)
    }

    /// Records whether `dependency` is usable and republishes the status.
    pub async fn set_dependency(&self, dependency: &str, up: bool) {
        let changed = {
            let mut deps = self.deps.lock();
            deps.insert(dependency.to_string(), up) != Some(up)
        };
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

    async fn publish(&self) {
        let status = if self.is_serving() {
            ServingStatus::Serving
        } else {
            ServingStatus::NotServing
        };
        self.reporter.set_service_status("", status).await;
        for name in self.service_names.iter() {
            self.reporter.set_service_status(name, status).await;
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
