//! The ScyllaDB adapter against CQL servers.
//!
//! `scylla_*` tests run the storage port's behaviour suite (the same cases as
//! the embedded store's, plus contention) against a real cluster named by
//! `SCYLLA_NODES` (comma-separated `host:port`); each uses a fresh keyspace.
//! They are `#[ignore]`d, so a plain `cargo test` reports them as ignored;
//! `scripts/test` runs them with `--ignored` when `SCYLLA_NODES` is set.
//!
//! `kassandra_*` tests always run, against the in-memory CQL server of the
//! `kassandra-tester` crate. It has no lightweight transactions and no
//! clustering ranges, so they cover only schema creation, unconditional
//! batches, point reads, deletes and scans from a partition's start.

use std::collections::BTreeMap;
use std::sync::Arc;

use kassandra_tester::KassandraTester;
use kassandra_tester::kassandra::session::KassandraSession;
use scylla::client::session_builder::SessionBuilder;
use tally_chassis::config::StorageSettings;
use tally_chassis::storage::scylla::ScyllaStore;
use tally_chassis::storage::{OutboxEvent, Store, StoreError, WriteBatch};

fn settings(nodes: Vec<String>, keyspace: &str) -> StorageSettings {
    StorageSettings::Scylla {
        nodes,
        keyspace: keyspace.to_string(),
        replication_factor: 1,
    }
}

fn fresh_keyspace() -> String {
    format!("tally_test_{}", uuid::Uuid::new_v4().simple())
}

/// The cluster under test, or `None` (after saying so) without one.
fn cluster(test: &str) -> Option<Vec<String>> {
    let nodes: Vec<String> = std::env::var("SCYLLA_NODES")
        .unwrap_or_default()
        .split(',')
        .map(str::trim)
        .filter(|n| !n.is_empty())
        .map(String::from)
        .collect();
    // These tests are #[ignore]d unless asked for; asked for without a
    // cluster, they fail rather than pass without testing anything.
    assert!(
        !nodes.is_empty(),
        "{test}: set SCYLLA_NODES=host:9042[,...] to run the ScyllaDB tests"
    );
    Some(nodes)
}

async fn real_store(test: &str) -> Option<(Vec<String>, String, ScyllaStore)> {
    let nodes = cluster(test)?;
    let keyspace = fresh_keyspace();
    let store = ScyllaStore::connect(&settings(nodes.clone(), &keyspace))
        .await
        .expect("connect to SCYLLA_NODES");
    Some((nodes, keyspace, store))
}

fn event(aggregate: &str, payload: Vec<u8>) -> OutboxEvent {
    OutboxEvent {
        aggregate_id: aggregate.into(),
        event_type: "tally.events.v1.PollVoted".into(),
        payload,
    }
}

#[tokio::test]
#[ignore = "needs a ScyllaDB cluster: set SCYLLA_NODES and run with --ignored"]
async fn scylla_put_get_scan_in_partition_order() {
    let Some((_, _, s)) = real_store("scylla_put_get_scan_in_partition_order").await else {
        return;
    };
    s.ping().await.expect("ping");
    let mut b = WriteBatch::new();
    b.put("t", "p1", "b", b"2".to_vec())
        .put("t", "p1", "a", b"1".to_vec())
        .put("t", "p1", "c", b"3".to_vec())
        .put("t", "p2", "a", b"x".to_vec());
    s.commit(b).await.expect("commit");
    assert_eq!(
        s.get("t", "p1", "a").await.expect("get"),
        Some(b"1".to_vec())
    );
    assert_eq!(s.get("t", "p3", "a").await.expect("get"), None);
    assert_eq!(s.get("missing", "p", "k").await.expect("get"), None);
    let keys = |rows: Vec<tally_chassis::storage::Row>| {
        rows.into_iter().map(|r| r.key).collect::<Vec<_>>()
    };
    assert_eq!(
        keys(s.scan("t", "p1", None, 10).await.expect("scan")),
        ["a", "b", "c"]
    );
    assert_eq!(
        keys(s.scan("t", "p1", Some("a".into()), 10).await.expect("scan")),
        ["b", "c"]
    );
    assert_eq!(
        keys(s.scan("t", "p1", Some("a".into()), 1).await.expect("scan")),
        ["b"]
    );
    assert!(s.scan("t", "p9", None, 10).await.expect("scan").is_empty());
    let mut d = WriteBatch::new();
    d.delete("t", "p1", "b");
    s.commit(d).await.expect("delete");
    assert_eq!(
        keys(s.scan("t", "p1", None, 10).await.expect("scan")),
        ["a", "c"]
    );
}

#[tokio::test]
#[ignore = "needs a ScyllaDB cluster: set SCYLLA_NODES and run with --ignored"]
async fn scylla_failed_condition_writes_nothing() {
    let Some((_, _, s)) = real_store("scylla_failed_condition_writes_nothing").await else {
        return;
    };
    let mut b = WriteBatch::new();
    b.insert_if_absent("t", "p", "k", b"1".to_vec());
    s.commit(b).await.expect("first insert");
    // With an event: the lock-lease path.
    let mut b2 = WriteBatch::new();
    b2.put("t", "p", "other", b"x".to_vec())
        .insert_if_absent("t", "p", "k", b"2".to_vec())
        .emit(event("a", vec![1]));
    match s.commit(b2).await {
        Err(StoreError::ConditionFailed { index, key, .. }) => {
            assert_eq!((index, key.as_str()), (1, "k"))
        }
        other => panic!("expected condition failure, got {other:?}"),
    }
    // Without events, one partition: the single conditional batch.
    let mut b3 = WriteBatch::new();
    b3.put("t", "p", "other", b"x".to_vec())
        .insert_if_absent("t", "p", "fresh", b"f".to_vec())
        .insert_if_absent("t", "p", "k", b"3".to_vec());
    match s.commit(b3).await {
        Err(StoreError::ConditionFailed { index, key, .. }) => {
            assert_eq!((index, key.as_str()), (2, "k"))
        }
        other => panic!("expected condition failure, got {other:?}"),
    }
    assert_eq!(s.get("t", "p", "other").await.expect("get"), None);
    assert_eq!(s.get("t", "p", "fresh").await.expect("get"), None);
    assert_eq!(
        s.get("t", "p", "k").await.expect("get"),
        Some(b"1".to_vec())
    );
    assert!(s.read_outbox(0, 10).await.expect("outbox").is_empty());
}

#[tokio::test]
#[ignore = "needs a ScyllaDB cluster: set SCYLLA_NODES and run with --ignored"]
async fn scylla_expect_guards_current_value() {
    let Some((_, _, s)) = real_store("scylla_expect_guards_current_value").await else {
        return;
    };
    let mut b = WriteBatch::new();
    b.expect("t", "p", "k", None)
        .put("t", "p", "k", b"v1".to_vec());
    s.commit(b).await.expect("absent ok");
    let mut stale = WriteBatch::new();
    stale
        .expect("t", "p", "k", None)
        .put("t", "p", "k", b"v2".to_vec());
    assert!(matches!(
        s.commit(stale).await,
        Err(StoreError::ConditionFailed { index: 0, .. })
    ));
    let mut wrong = WriteBatch::new();
    wrong
        .expect("t", "p", "k", Some(b"v0".to_vec()))
        .delete("t", "p", "k");
    assert!(matches!(
        s.commit(wrong).await,
        Err(StoreError::ConditionFailed { index: 0, .. })
    ));
    let mut fresh = WriteBatch::new();
    fresh
        .expect("t", "p", "k", Some(b"v1".to_vec()))
        .put("t", "p", "k", b"v2".to_vec());
    s.commit(fresh).await.expect("cas ok");
    assert_eq!(
        s.get("t", "p", "k").await.expect("get"),
        Some(b"v2".to_vec())
    );
    // A guard-only row leaves the row as it was.
    let mut guard_only = WriteBatch::new();
    guard_only
        .expect("t", "p", "k", Some(b"v2".to_vec()))
        .put("t", "p", "side", b"s".to_vec());
    s.commit(guard_only).await.expect("guarded put");
    assert_eq!(
        s.get("t", "p", "k").await.expect("get"),
        Some(b"v2".to_vec())
    );
    assert_eq!(
        s.get("t", "p", "side").await.expect("get"),
        Some(b"s".to_vec())
    );
}

#[tokio::test]
#[ignore = "needs a ScyllaDB cluster: set SCYLLA_NODES and run with --ignored"]
async fn scylla_multi_partition_conditions_are_all_or_nothing() {
    let Some((_, _, s)) = real_store("scylla_multi_partition_conditions_are_all_or_nothing").await
    else {
        return;
    };
    let mut seed = WriteBatch::new();
    seed.put("voter_keys", "alice", "idem-1", b"r".to_vec());
    s.commit(seed).await.expect("seed");
    let mut b = WriteBatch::new();
    b.insert_if_absent("tallies", "poll", "tally", b"1".to_vec())
        .insert_if_absent("votes", "poll", "0001", b"v".to_vec())
        .insert_if_absent("voter_keys", "alice", "idem-1", b"r2".to_vec())
        .put("open", "all", "poll", Vec::new())
        .emit(event("poll", vec![1]));
    match s.commit(b.clone()).await {
        Err(StoreError::ConditionFailed {
            index,
            table,
            partition,
            ..
        }) => assert_eq!(
            (index, table.as_str(), partition.as_str()),
            (2, "voter_keys", "alice")
        ),
        other => panic!("expected condition failure, got {other:?}"),
    }
    assert_eq!(s.get("tallies", "poll", "tally").await.expect("get"), None);
    assert_eq!(s.get("votes", "poll", "0001").await.expect("get"), None);
    assert_eq!(s.get("open", "all", "poll").await.expect("get"), None);
    assert!(s.read_outbox(0, 10).await.expect("outbox").is_empty());

    let mut ok = WriteBatch::new();
    ok.insert_if_absent("tallies", "poll", "tally", b"1".to_vec())
        .insert_if_absent("votes", "poll", "0001", b"v".to_vec())
        .insert_if_absent("voter_keys", "alice", "idem-2", b"r".to_vec())
        .put("open", "all", "poll", Vec::new())
        .emit(event("poll", vec![1]));
    s.commit(ok).await.expect("commit");
    assert_eq!(
        s.get("tallies", "poll", "tally").await.expect("get"),
        Some(b"1".to_vec())
    );
    assert_eq!(
        s.get("open", "all", "poll").await.expect("get"),
        Some(Vec::new())
    );
    let outbox = s.read_outbox(0, 10).await.expect("outbox");
    assert_eq!(outbox.len(), 1);
    assert_eq!(outbox[0].offset, 1);
    // The lock leases are gone and invisible to scans.
    let keys: Vec<_> = s
        .scan("tallies", "poll", None, 10)
        .await
        .expect("scan")
        .into_iter()
        .map(|r| r.key)
        .collect();
    assert_eq!(keys, ["tally"]);
}

#[tokio::test]
#[ignore = "needs a ScyllaDB cluster: set SCYLLA_NODES and run with --ignored"]
async fn scylla_outbox_commits_in_order_and_survives_reconnect() {
    let Some((nodes, keyspace, s)) =
        real_store("scylla_outbox_commits_in_order_and_survives_reconnect").await
    else {
        return;
    };
    for i in 0..3u8 {
        let mut b = WriteBatch::new();
        b.put("t", "p", format!("k{i}"), vec![i])
            .emit(event("agg", vec![i, i]));
        s.commit(b).await.expect("commit");
    }
    let mut two = WriteBatch::new();
    two.expect("t", "p", "k0", Some(vec![0]))
        .emit(event("agg", vec![3]))
        .emit(event("agg", vec![4]));
    s.commit(two).await.expect("guarded commit with events");
    drop(s);
    let s = ScyllaStore::connect(&settings(nodes, &keyspace))
        .await
        .expect("reconnect");
    let all = s.read_outbox(0, 100).await.expect("outbox");
    assert_eq!(
        all.iter().map(|e| e.offset).collect::<Vec<_>>(),
        [1, 2, 3, 4, 5]
    );
    assert_eq!(all[2].event.payload, vec![2, 2]);
    assert_eq!(all[4].event.payload, vec![4]);
    assert_eq!(all[0].event.event_type, "tally.events.v1.PollVoted");
    let tail = s.read_outbox(2, 2).await.expect("outbox");
    assert_eq!(tail.iter().map(|e| e.offset).collect::<Vec<_>>(), [3, 4]);
    assert_eq!(s.get("t", "p", "k1").await.expect("get"), Some(vec![1]));
}

/// Many writers racing on one counter (the polling service's vote shape):
/// every increment lands once, with its vote row and its event.
#[tokio::test]
#[ignore = "needs a ScyllaDB cluster: set SCYLLA_NODES and run with --ignored"]
async fn scylla_concurrent_guarded_increments_all_land_once() {
    let Some((_, _, s)) = real_store("scylla_concurrent_guarded_increments_all_land_once").await
    else {
        return;
    };
    let s = Arc::new(s);
    let mut seed = WriteBatch::new();
    seed.insert_if_absent("tallies", "poll", "tally", b"0".to_vec());
    s.commit(seed).await.expect("seed");
    let writers = 8;
    let mut tasks = Vec::new();
    for w in 0..writers {
        let s = s.clone();
        tasks.push(tokio::spawn(async move {
            for attempt in 0..200 {
                let raw = s
                    .get("tallies", "poll", "tally")
                    .await
                    .expect("get")
                    .expect("seeded");
                let n: u64 = String::from_utf8(raw.clone())
                    .expect("utf8")
                    .parse()
                    .expect("number");
                let mut b = WriteBatch::new();
                b.expect("tallies", "poll", "tally", Some(raw))
                    .put("tallies", "poll", "tally", (n + 1).to_string().into_bytes())
                    .insert_if_absent("votes", "poll", format!("{:04}", n + 1), vec![w])
                    .insert_if_absent("voter_keys", format!("voter-{w}"), "idem", vec![w])
                    .emit(event("poll", vec![w]));
                match s.commit(b).await {
                    Ok(()) => return,
                    Err(StoreError::ConditionFailed { index: 0, .. }) => continue,
                    Err(StoreError::Unavailable(e)) if attempt < 199 => {
                        eprintln!("writer {w}: retrying after: {e}");
                        continue;
                    }
                    Err(e) => panic!("writer {w}: {e}"),
                }
            }
            panic!("writer {w} never committed");
        }));
    }
    for t in tasks {
        t.await.expect("writer");
    }
    assert_eq!(
        s.get("tallies", "poll", "tally").await.expect("get"),
        Some(writers.to_string().into_bytes())
    );
    let votes = s.scan("votes", "poll", None, 100).await.expect("scan");
    assert_eq!(votes.len(), usize::from(writers));
    let outbox = s.read_outbox(0, 100).await.expect("outbox");
    assert_eq!(
        outbox.iter().map(|e| e.offset).collect::<Vec<_>>(),
        (1..=u64::from(writers)).collect::<Vec<_>>()
    );
    let mut per_writer = BTreeMap::new();
    for e in &outbox {
        *per_writer.entry(e.event.payload[0]).or_insert(0) += 1;
    }
    assert!(per_writer.values().all(|n| *n == 1), "{per_writer:?}");
}

#[tokio::test]
#[ignore = "needs a ScyllaDB cluster: set SCYLLA_NODES and run with --ignored"]
async fn scylla_reserved_lock_key_is_refused() {
    let Some((_, _, s)) = real_store("scylla_reserved_lock_key_is_refused").await else {
        return;
    };
    let mut b = WriteBatch::new();
    b.put("t", "p", tally_chassis::storage::scylla::LOCK_KEY, vec![1]);
    assert!(matches!(s.commit(b).await, Err(StoreError::Unavailable(_))));
}

/// Runs without a cluster: a closed port is reported, with the node list.
#[tokio::test]
async fn unreachable_nodes_are_unavailable_not_a_panic() {
    // Below the ephemeral range, so no outgoing connection can be using it.
    let closed = std::net::SocketAddr::from(([127, 0, 0, 1], tally_testkit::free_port()));
    let node = closed.to_string();
    let builder = SessionBuilder::new().connection_timeout(std::time::Duration::from_secs(5));
    match ScyllaStore::connect_with(&settings(vec![node.clone()], "tally_t"), builder).await {
        Err(StoreError::Unavailable(msg)) => assert!(msg.contains(&node), "{msg}"),
        Ok(_) => panic!("connected to a closed port"),
        Err(e) => panic!("expected unavailable, got {e}"),
    }
    let embedded = StorageSettings::Embedded {
        path: "x.redb".into(),
    };
    assert!(matches!(
        ScyllaStore::connect(&embedded).await,
        Err(StoreError::Unavailable(_))
    ));
    assert!(matches!(
        ScyllaStore::connect(&settings(vec![node], "bad-name")).await,
        Err(StoreError::Unavailable(_))
    ));
}

/// A session tuned for kassandra: it has no peers table to agree on.
fn kassandra_builder() -> SessionBuilder {
    SessionBuilder::new()
        .auto_await_schema_agreement(false)
        .fetch_schema_metadata(false)
}

#[tokio::test]
async fn kassandra_schema_put_get_delete_scan() {
    let _ = KassandraTester::new(KassandraSession::new())
        .in_scope(|addr| async move {
            let cfg = settings(vec![addr.to_string()], "tally_k");
            let s = ScyllaStore::connect_with(&cfg, kassandra_builder())
                .await
                .expect("connect and create schema");
            s.ping().await.expect("ping");
            let mut b = WriteBatch::new();
            b.put("t", "p1", "b", b"2".to_vec())
                .put("t", "p1", "a", b"1".to_vec())
                .put("t", "p1", "c", b"3".to_vec())
                .put("t", "p2", "a", b"x".to_vec())
                .put("u", "p1", "a", b"other table".to_vec());
            s.commit(b).await.expect("multi-partition batch");
            assert_eq!(
                s.get("t", "p1", "a").await.expect("get"),
                Some(b"1".to_vec())
            );
            assert_eq!(
                s.get("u", "p1", "a").await.expect("get"),
                Some(b"other table".to_vec())
            );
            assert_eq!(s.get("t", "p3", "a").await.expect("get"), None);
            let rows = s.scan("t", "p1", None, 10).await.expect("scan");
            let keys: Vec<_> = rows.iter().map(|r| r.key.as_str()).collect();
            assert_eq!(keys, ["a", "b", "c"]);
            assert_eq!(rows[1].value, b"2".to_vec());
            let first = s.scan("t", "p1", None, 2).await.expect("scan");
            assert_eq!(first.len(), 2);
            let mut d = WriteBatch::new();
            d.delete("t", "p1", "b").put("t", "p1", "a", b"1b".to_vec());
            s.commit(d).await.expect("single-partition batch");
            assert_eq!(s.get("t", "p1", "b").await.expect("get"), None);
            assert_eq!(
                s.get("t", "p1", "a").await.expect("get"),
                Some(b"1b".to_vec())
            );
            // Connecting again finds the schema in place.
            let again = ScyllaStore::connect_with(&cfg, kassandra_builder())
                .await
                .expect("reconnect");
            assert_eq!(
                again.get("t", "p2", "a").await.expect("get"),
                Some(b"x".to_vec())
            );
            Ok::<(), ()>(())
        })
        .await;
}

/// kassandra has no lightweight transactions: it runs `IF` statements as
/// plain writes and answers without `[applied]`. The adapter must report
/// that as unavailable, never as a commit that held its conditions.
#[tokio::test]
async fn kassandra_conditional_writes_without_lwt_are_unavailable() {
    let _ = KassandraTester::new(KassandraSession::new())
        .in_scope(|addr| async move {
            let cfg = settings(vec![addr.to_string()], "tally_k");
            let s = ScyllaStore::connect_with(&cfg, kassandra_builder())
                .await
                .expect("connect and create schema");
            let mut guarded = WriteBatch::new();
            guarded.insert_if_absent("t", "p", "k", b"1".to_vec());
            match s.commit(guarded).await {
                Err(StoreError::Unavailable(msg)) => assert!(msg.contains(&addr.to_string())),
                other => panic!("expected unavailable, got {other:?}"),
            }
            let mut with_event = WriteBatch::new();
            with_event
                .put("t", "p", "k2", b"2".to_vec())
                .emit(event("a", vec![1]));
            assert!(matches!(
                s.commit(with_event).await,
                Err(StoreError::Unavailable(_))
            ));
            // Nothing of the refused batch was written.
            assert_eq!(s.get("t", "p", "k2").await.expect("get"), None);
            Ok::<(), ()>(())
        })
        .await;
}
