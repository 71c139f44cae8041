//! Asks an instance whether it is ready: services over `grpc.health.v1`, the
//! same check load balancers and operators use; sidecars over their admin
//! HTTP `/ready`; redis-server (`tally up --redis`) with a `PING`.

use super::plan::{Probe, ProbeKind};
use std::net::SocketAddr;
use std::time::Duration;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tonic_health::pb::HealthCheckRequest;
use tonic_health::pb::health_check_response::ServingStatus;
use tonic_health::pb::health_client::HealthClient;

/// How long one probe may take.
const PROBE_TIMEOUT: Duration = Duration::from_secs(3);

/// True when `service` at `addr` answers SERVING.
pub async fn is_serving(addr: SocketAddr, service: &str) -> bool {
    let Ok(endpoint) = tonic::transport::Endpoint::from_shared(format!("http://{addr}")) else {
        return false;
    };
    let endpoint = endpoint
        .connect_timeout(PROBE_TIMEOUT)
        .timeout(PROBE_TIMEOUT);
    let Ok(channel) = endpoint.connect().await else {
        return false;
    };
    let mut client = HealthClient::new(channel);
    match client
        .check(HealthCheckRequest {
            service: service.to_string(),
        })
        .await
    {
        Ok(res) => res.into_inner().status == ServingStatus::Serving as i32,
        Err(_) => false,
    }
}

/// True when the instance behind `probe` says it is ready.
pub async fn check(probe: &Probe) -> bool {
    match probe.kind {
        ProbeKind::Grpc => is_serving(probe.addr, &probe.service).await,
        ProbeKind::HttpReady => http_ok(probe.addr, &probe.service).await,
        ProbeKind::RedisPing => redis_pong(probe.addr).await,
    }
}

/// True when the Redis server at `addr` answers an inline `PING` with `+PONG`.
pub async fn redis_pong(addr: SocketAddr) -> bool {
    let attempt = async {
        let mut stream = tokio::net::TcpStream::connect(addr).await.ok()?;
        stream.write_all(b"PING\r\n").await.ok()?;
        let mut head = [0u8; 5];
        stream.read_exact(&mut head).await.ok()?;
        Some(&head == b"+PONG")
    };
    matches!(
        tokio::time::timeout(PROBE_TIMEOUT, attempt).await,
        Ok(Some(true))
    )
}

/// True when `GET path` on `addr` (HTTP/1.1) answers 200.
pub async fn http_ok(addr: SocketAddr, path: &str) -> bool {
    let attempt = async {
        let mut stream = tokio::net::TcpStream::connect(addr).await.ok()?;
        let request = format!("GET {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n");
        stream.write_all(request.as_bytes()).await.ok()?;
        let mut head = [0u8; 12];
        stream.read_exact(&mut head).await.ok()?;
        Some(head.starts_with(b"HTTP/1.1 200") || head.starts_with(b"HTTP/1.0 200"))
    };
    matches!(
        tokio::time::timeout(PROBE_TIMEOUT, attempt).await,
        Ok(Some(true))
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn a_redis_server_answers_ping_and_a_stopped_one_does_not() {
        let mut redis = tally_testkit::RedisServer::start().await;
        let addr = SocketAddr::from(([127, 0, 0, 1], redis.port()));
        assert!(redis_pong(addr).await);
        redis.stop();
        assert!(!redis_pong(addr).await);
    }
}
