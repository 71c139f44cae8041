//! ScyllaDB calls through the resilient stack (`storage::resilient`).
//!
//! `kassandra_*` runs always, against the in-memory CQL server of the
//! `kassandra-tester` crate over a real socket: calls work through the stack
//! while the server is up; once it is gone every call is answered within the
//! time limit with `Unavailable`, and after a few the breaker fails them fast.
//! `scylla_*` needs a real cluster (`SCYLLA_NODES`, run with `--ignored`):
//! `storage::open` puts the stack in front of it and calls round-trip.

use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::time::Instant;

use kassandra_tester::KassandraTester;
use kassandra_tester::kassandra::session::KassandraSession;
use scylla::client::session_builder::SessionBuilder;
use tally_chassis::config::StorageSettings;
use tally_chassis::resilience::{self, Settings};
use tally_chassis::storage::resilient::ResilientStore;
use tally_chassis::storage::scylla::ScyllaStore;
use tally_chassis::storage::{Store, StoreError, WriteBatch};
use tower_resilience::circuitbreaker::CircuitState;

/// Longest answer accepted from a store that is gone: the time limit plus
/// room for a loaded machine.
const ANSWER_BOUND: Duration = Duration::from_secs(2);

fn settings(nodes: Vec<String>, keyspace: &str) -> StorageSettings {
    StorageSettings::Scylla {
        nodes,
        keyspace: keyspace.to_string(),
        replication_factor: 1,
    }
}

#[tokio::test]
async fn kassandra_calls_fail_fast_once_the_server_is_gone() {
    let kept: Arc<Mutex<Option<ResilientStore>>> = Arc::new(Mutex::new(None));
    let slot = kept.clone();
    let _ = KassandraTester::new(KassandraSession::new())
        .in_scope(|addr| {
            let slot = slot.clone();
            async move {
                let cfg = settings(vec![addr.to_string()], "tally_r");
                let builder = SessionBuilder::new()
                    .auto_await_schema_agreement(false)
                    .fetch_schema_metadata(false);
                let raw = ScyllaStore::connect_with(&cfg, builder)
                    .await
                    .expect("connect and create schema");
                let s = ResilientStore::new("test-kassandra", Arc::new(raw), &Settings::default())
                    .expect("stack");
                let mut b = WriteBatch::new();
                b.put("t", "p", "k", b"v".to_vec());
                s.commit(b).await.expect("commit through the stack");
                assert_eq!(
                    s.get("t", "p", "k").await.expect("get"),
                    Some(b"v".to_vec())
                );
                s.ping().await.expect("ping");
                if let Ok(mut g) = slot.lock() {
                    *g = Some(s);
                }
                Ok::<(), ()>(())
            }
        })
        .await;
    let s = kept
        .lock()
        .ok()
        .and_then(|mut g| g.take())
        .expect("the store was built while the server ran");

    // The server is gone: every call answers in time with Unavailable.
    let mut fast_failures = 0;
    for _ in 0..4 * resilience::DEFAULT_CONSECUTIVE_FAILURES {
        let started = Instant::now();
        let r = s.get("t", "p", "k").await;
        let took = started.elapsed();
        assert!(took < ANSWER_BOUND, "a call took {took:?}");
        match r {
            Err(StoreError::Unavailable(m)) => {
                if m.contains("circuit breaker open") {
                    fast_failures += 1;
                }
            }
            other => panic!("expected Unavailable, got {other:?}"),
        }
    }
    assert_eq!(s.breaker(), CircuitState::Open);
    assert!(fast_failures > 0, "the breaker never failed a call fast");
    assert!(s.ping().await.is_err(), "health sees the store down");
}

#[tokio::test]
#[ignore = "needs a ScyllaDB cluster: set SCYLLA_NODES and run with --ignored"]
async fn scylla_open_puts_the_resilient_stack_in_front() {
    let nodes: Vec<String> = std::env::var("SCYLLA_NODES")
        .unwrap_or_default()
        .split(',')
        .map(str::trim)
        .filter(|n| !n.is_empty())
        .map(String::from)
        .collect();
    assert!(
        !nodes.is_empty(),
        "set SCYLLA_NODES=host:9042[,...] to run the ScyllaDB tests"
    );
    let keyspace = format!("tally_test_{}", uuid::Uuid::new_v4().simple());
    let s = tally_chassis::storage::open(&settings(nodes, &keyspace))
        .await
        .expect("open");
    let mut b = WriteBatch::new();
    b.put("t", "p", "k", b"v".to_vec());
    s.commit(b).await.expect("commit");
    assert_eq!(
        s.get("t", "p", "k").await.expect("get"),
        Some(b"v".to_vec())
    );
    s.ping().await.expect("ping");
    let metrics = tally_chassis::metrics::encode();
    assert!(
        metrics.contains("tally_store_client_breaker_state{client=\"scylla\"} 0"),
        "{metrics}"
    );
}
