//! Waiting for a service to report SERVING over `grpc.health.v1`.

use std::time::Duration;
use tokio::time::Instant;
use tonic_health::pb::HealthCheckRequest;
use tonic_health::pb::health_check_response::ServingStatus;
use tonic_health::pb::health_client::HealthClient;

/// True when `service` (`""` for the whole server) at `addr` answers SERVING.
/// `addr` is `host:port` or `http://host:port`.
pub async fn is_serving(addr: &str, service: &str) -> bool {
    let uri = if addr.contains("://") {
        addr.to_string()
    } else {
        format!("http://{addr}")
    };
    let Ok(endpoint) = tonic::transport::Endpoint::from_shared(uri) else {
        return false;
    };
    let Ok(channel) = endpoint
        .connect_timeout(Duration::from_secs(3))
        .timeout(Duration::from_secs(3))
        .connect()
        .await
    else {
        return false;
    };
    HealthClient::new(channel)
        .check(HealthCheckRequest {
            service: service.to_string(),
        })
        .await
        .map(|r| r.into_inner().status == ServingStatus::Serving as i32)
        .unwrap_or(false)
}

/// Polls until `service` at `addr` is SERVING; panics after `timeout`.
pub async fn wait_for_health(addr: &str, service: &str, timeout: Duration) {
    let deadline = Instant::now() + timeout;
    while !is_serving(addr, service).await {
        assert!(
            Instant::now() < deadline,
            "{service:?} at {addr} was not SERVING within {timeout:?}"
        );
        tokio::time::sleep(Duration::from_millis(150)).await;
    }
}
