//! The ScyllaDB adapter for the storage port, for production clusters.
//!
//! # Data model
//!
//! Every logical table maps onto one generic CQL table, so services need no
//! migrations of their own:
//!
//! ```text
//! rows       (tbl text, partition text, key text, value blob,
//!             PRIMARY KEY ((tbl, partition), key))
//! outbox     (bucket bigint, seq bigint, aggregate_id text, event_type text, payload blob,
//!             PRIMARY KEY (bucket, seq))
//! outbox_seq (name text PRIMARY KEY, next bigint)
//! ```
//!
//! A port partition is a Scylla partition, and its sort key the clustering
//! key, so `get` is a point read and `scan` a paged clustering range
//! (`key > ?`). The key `"\0lock"` is reserved in every partition (see below).
//!
//! # Outbox
//!
//! Offsets come from one counter row, `outbox_seq`, advanced by a
//! compare-and-set (LWT) that reserves a block of offsets per commit. Rows live
//! in `outbox`, partitioned into buckets of 16 384 offsets, so partitions stay
//! bounded and a reader walks buckets in order with a clustering range.
//! Trade-offs: offsets are dense and totally ordered like the embedded store's,
//! at the price of one Paxos round per committing batch with events on a single
//! hot row: event throughput is bounded by Paxos on that row (not measured
//! here), with CAS retries under contention. A time-UUID key would avoid the hot row but gives readers no
//! way to tell "not written yet" from "never", so they could skip events.
//!
//! An offset is reserved before its row is written, so a reader can see a gap
//! (a commit in flight, or one that failed or died after reserving). [`Store::read_outbox`]
//! returns only the contiguous run of offsets; it steps over a missing offset
//! only after it has been missing for the gap grace period (60 s by default,
//! [`ScyllaStore::with_outbox_gap_grace`]), so offsets a consumer sees are
//! increasing but may skip numbers reserved by commits that failed.
//!
//! # Commit paths and their guarantees
//!
//! Scylla makes a conditional (LWT) batch atomic only inside one partition,
//! and a logged batch atomic (eventually all-or-nothing) but without
//! conditions and without isolation. So a [`WriteBatch`] takes one of three
//! paths:
//!
//! 1. **No conditions**: one batch with every write and outbox row (logged
//!    when it spans partitions or carries events, unlogged otherwise). All of
//!    it applies or none of it, eventually; readers may briefly see part of a
//!    multi-partition batch.
//! 2. **Conditions, all writes in one partition, no events**: one conditional
//!    batch (`IF NOT EXISTS`, `IF value = ?`), plus a guard that the partition
//!    is not locked by path 3. Atomic and isolated (Paxos). When `[applied]` is
//!    false, the rows Scylla returns (or, if they do not cover every guarded
//!    row, a SERIAL read) tell which condition failed, evaluated in batch order
//!    exactly like the embedded store.
//! 3. **Anything else with conditions** (several partitions, or events):
//!    every guarded partition is locked with an LWT lease row (`"\0lock"`,
//!    TTL 30 s, taken in sorted order so commits cannot deadlock), the guarded
//!    rows are read with SERIAL consistency, the conditions are evaluated in
//!    batch order, outbox offsets are reserved, and every write and outbox row
//!    goes out in one logged batch with a timestamp above every observed write
//!    time; then the locks are released. Conditions and writes are therefore
//!    atomic with respect to other conditional commits, and the events commit
//!    with the change (a crash before the logged batch writes nothing).
//!
//! Limits of path 3: unconditional writes do not take locks (they are
//! last-writer-wins, as in any Scylla table); readers can see a partially
//! applied logged batch for a moment; if the logged batch times out it may
//! still be replayed from the batch log after the lease expired, racing a
//! later commit on the same rows; and with large clock skew between nodes a
//! later path-2 Paxos write can carry a lower timestamp than a path-3 write.
//! A failed condition leaves no trace: offsets are reserved only after the
//! conditions held.
//!
//! Every driver error becomes [`StoreError::Unavailable`] naming the nodes.
//! A timeout can leave a commit's outcome unknown (Scylla may still apply
//! it), so callers retry with the idempotency their batches already carry
//! (insert-if-absent keys, expected values).

mod commit;
mod cql;
mod outbox;
mod plan;

use super::{OutboxEntry, Row, Store, StoreError, Write, WriteBatch};
use crate::config::StorageSettings;
use async_trait::async_trait;
use cql::{GET, SCAN, SCAN_AFTER, Statement, page_size, text};
use outbox::GapTracker;
use parking_lot::Mutex;
use plan::{merge, row_ref};
use scylla::client::session::Session;
use scylla::client::session_builder::SessionBuilder;
use scylla::response::PagingState;
use scylla::response::query_result::QueryResult;
use scylla::statement::batch::{Batch, BatchType};
use scylla::statement::prepared::PreparedStatement;
use scylla::value::CqlValue;
use std::collections::{BTreeSet, HashMap};
use std::ops::ControlFlow;
use std::time::Duration;
use tokio::sync::RwLock;

/// Offsets per outbox partition.
const BUCKET_SIZE: u64 = 1 << 14;
/// The reserved clustering key of a partition's lock lease.
pub const LOCK_KEY: &str = "\u{0}lock";
/// How long a lock lease lives if its holder dies.
const LOCK_TTL_SECS: u32 = 30;
/// How long a commit waits for a busy partition before giving up.
const LOCK_WAIT: Duration = Duration::from_secs(10);
/// The name of the outbox counter row.
const SEQ_NAME: &str = "outbox";
/// CAS attempts on the outbox counter before reporting contention.
const SEQ_ATTEMPTS: u32 = 64;
/// Rows fetched per page.
const PAGE_SIZE: usize = 1000;
/// Default time a missing outbox offset blocks readers.
pub const DEFAULT_OUTBOX_GAP_GRACE: Duration = Duration::from_secs(60);
/// Most missing offsets tracked per observation.
const MAX_TRACKED_GAP: u64 = 10_000;

/// The store, over one Scylla session.
pub struct ScyllaStore {
    session: Session,
    keyspace: String,
    nodes: String,
    prepared: RwLock<HashMap<&'static str, PreparedStatement>>,
    gaps: Mutex<GapTracker>,
    gap_grace: Duration,
}

impl ScyllaStore {
    /// Connects to the nodes in `settings` and creates the schema if missing.
    pub async fn connect(settings: &StorageSettings) -> Result<Self, StoreError> {
        Self::connect_with(settings, SessionBuilder::new()).await
    }

    /// Like [`ScyllaStore::connect`], over a caller-tuned session builder
    /// (timeouts, schema agreement); the settings' nodes are added to it.
    pub async fn connect_with(
        settings: &StorageSettings,
        builder: SessionBuilder,
    ) -> Result<Self, StoreError> {
        let StorageSettings::Scylla {
            nodes,
            keyspace,
            replication_factor,
        } = settings
        else {
            return Err(StoreError::Unavailable(
                "the ScyllaDB adapter needs storage.backend = \"scylla\"".into(),
            ));
        };
        let label = nodes.join(",");
        if nodes.is_empty() {
            return Err(StoreError::Unavailable(
                "ScyllaDB: storage.nodes lists no node".into(),
            ));
        }
        if keyspace.is_empty()
            || !keyspace
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || c == '_')
        {
            return Err(StoreError::Unavailable(format!(
                "ScyllaDB [{label}]: keyspace `{keyspace}` is not an identifier"
            )));
        }
        if *replication_factor == 0 {
            return Err(StoreError::Unavailable(format!(
                "ScyllaDB [{label}]: replication_factor must be at least 1"
            )));
        }
        let session =
            builder.known_nodes(nodes).build().await.map_err(|e| {
                StoreError::Unavailable(format!("ScyllaDB [{label}]: connect: {e}"))
            })?;
        let store = Self {
            session,
            keyspace: keyspace.clone(),
            nodes: label,
            prepared: RwLock::new(HashMap::new()),
            gaps: Mutex::new(GapTracker::default()),
            gap_grace: DEFAULT_OUTBOX_GAP_GRACE,
        };
        store.create_schema(*replication_factor).await?;
        Ok(store)
    }

    /// Sets how long a missing outbox offset blocks readers before they step
    /// over it (see the module docs).
    pub fn with_outbox_gap_grace(mut self, grace: Duration) -> Self {
        self.gap_grace = grace;
        self
    }

    fn unavailable(&self, what: &str, e: impl std::fmt::Display) -> StoreError {
        StoreError::Unavailable(format!("ScyllaDB [{}]: {what}: {e}", self.nodes))
    }

    async fn create_schema(&self, replication_factor: u32) -> Result<(), StoreError> {
        let ks = &self.keyspace;
        let ddl = [
            format!(
                "CREATE KEYSPACE IF NOT EXISTS {ks} WITH replication = \
                 {{'class': 'SimpleStrategy', 'replication_factor': {replication_factor}}}"
            ),
            format!(
                "CREATE TABLE IF NOT EXISTS {ks}.rows (tbl text, partition text, key text, \
                 value blob, PRIMARY KEY ((tbl, partition), key))"
            ),
            format!(
                "CREATE TABLE IF NOT EXISTS {ks}.outbox (bucket bigint, seq bigint, \
                 aggregate_id text, event_type text, payload blob, PRIMARY KEY (bucket, seq))"
            ),
            format!(
                "CREATE TABLE IF NOT EXISTS {ks}.outbox_seq (name text PRIMARY KEY, next bigint)"
            ),
        ];
        for statement in ddl {
            self.session
                .query_unpaged(statement.as_str(), ())
                .await
                .map_err(|e| self.unavailable("create schema", e))?;
        }
        Ok(())
    }

    /// The prepared form of a statement template, prepared once.
    async fn stmt(&self, template: &'static str) -> Result<PreparedStatement, StoreError> {
        if let Some(p) = self.prepared.read().await.get(template) {
            return Ok(p.clone());
        }
        let cql = template
            .replace("{ks}", &self.keyspace)
            .replace("{ttl}", &LOCK_TTL_SECS.to_string());
        let prepared = self
            .session
            .prepare(cql.as_str())
            .await
            .map_err(|e| self.unavailable("prepare", e))?;
        self.prepared
            .write()
            .await
            .insert(template, prepared.clone());
        Ok(prepared)
    }

    async fn execute(
        &self,
        template: &'static str,
        values: Vec<CqlValue>,
    ) -> Result<QueryResult, StoreError> {
        let stmt = self.stmt(template).await?;
        self.session
            .execute_unpaged(&stmt, values)
            .await
            .map_err(|e| self.unavailable("execute", e))
    }

    async fn run_batch(
        &self,
        kind: BatchType,
        timestamp: Option<i64>,
        statements: Vec<Statement>,
    ) -> Result<QueryResult, StoreError> {
        let mut batch = Batch::new(kind);
        batch.set_timestamp(timestamp);
        let mut values = Vec::with_capacity(statements.len());
        for (template, v) in statements {
            batch.append_statement(self.stmt(template).await?);
            values.push(v);
        }
        self.session
            .batch(&batch, values)
            .await
            .map_err(|e| self.unavailable("batch", e))
    }
}

#[async_trait]
impl Store for ScyllaStore {
    async fn get(
        &self,
        table: &'static str,
        partition: &str,
        key: &str,
    ) -> Result<Option<Vec<u8>>, StoreError> {
        if key == LOCK_KEY {
            return Ok(None);
        }
        let result = self
            .execute(
                GET,
                vec![text(table.into()), text(partition.into()), text(key.into())],
            )
            .await?;
        let rows = result
            .into_rows_result()
            .map_err(|e| self.unavailable("get", e))?;
        let row = rows
            .maybe_first_row::<(String, Option<Vec<u8>>)>()
            .map_err(|e| self.unavailable("get", e))?;
        // The key is checked, not assumed: some CQL servers (the in-memory
        // one used in tests) answer a point read with the next row.
        Ok(row
            .filter(|(found, _)| found == key)
            .and_then(|(_, value)| value))
    }

    async fn scan(
        &self,
        table: &'static str,
        partition: &str,
        after: Option<String>,
        limit: usize,
    ) -> Result<Vec<Row>, StoreError> {
        if limit == 0 {
            return Ok(Vec::new());
        }
        let (template, mut values) = match after {
            None => (SCAN, Vec::new()),
            Some(after) => (SCAN_AFTER, vec![text(after)]),
        };
        values.splice(0..0, [text(table.into()), text(partition.into())]);
        let mut stmt = self.stmt(template).await?;
        // One spare row for the lock lease, which is skipped.
        stmt.set_page_size(page_size(limit.saturating_add(1)));
        let mut paging = PagingState::start();
        let mut out = Vec::new();
        loop {
            let (result, next) = self
                .session
                .execute_single_page(&stmt, &values, paging)
                .await
                .map_err(|e| self.unavailable("scan", e))?;
            let rows = result
                .into_rows_result()
                .map_err(|e| self.unavailable("scan", e))?;
            for row in rows
                .rows::<(String, Option<Vec<u8>>)>()
                .map_err(|e| self.unavailable("scan", e))?
            {
                let (key, value) = row.map_err(|e| self.unavailable("scan", e))?;
                let Some(value) = value else { continue };
                if key == LOCK_KEY {
                    continue;
                }
                out.push(Row { key, value });
                if out.len() >= limit {
                    return Ok(out);
                }
            }
            match next.into_paging_control_flow() {
                ControlFlow::Break(()) => return Ok(out),
                ControlFlow::Continue(state) => paging = state,
            }
        }
    }

    async fn commit(&self, batch: WriteBatch) -> Result<(), StoreError> {
        if batch.writes.is_empty() && batch.events.is_empty() {
            return Ok(());
        }
        if let Some(w) = batch.writes.iter().find(|w| row_ref(w).2 == LOCK_KEY) {
            let (t, p, _) = row_ref(w);
            return Err(StoreError::Unavailable(format!(
                "ScyllaDB: the key {LOCK_KEY:?} in {t}/{p} is reserved for commit locks"
            )));
        }
        let conditional = batch
            .writes
            .iter()
            .any(|w| matches!(w, Write::InsertIfAbsent { .. } | Write::Expect { .. }));
        if !conditional {
            return self.commit_blind(batch).await;
        }
        let partitions: BTreeSet<(String, String)> = batch
            .writes
            .iter()
            .map(|w| {
                let (t, p, _) = row_ref(w);
                (t, p)
            })
            .collect();
        if batch.events.is_empty()
            && partitions.len() == 1
            && let Some(plan) = merge(&batch.writes)
            && let Some(partition) = partitions.into_iter().next()
        {
            return self.commit_single_partition(&batch, plan, partition).await;
        }
        self.commit_locked(batch).await
    }

    async fn read_outbox(&self, after: u64, limit: usize) -> Result<Vec<OutboxEntry>, StoreError> {
        self.read_contiguous_outbox(after, limit).await
    }

    async fn ping(&self) -> Result<(), StoreError> {
        self.session
            .query_unpaged("SELECT release_version FROM system.local", ())
            .await
            .map(|_| ())
            .map_err(|e| self.unavailable("ping", e))
    }
}
