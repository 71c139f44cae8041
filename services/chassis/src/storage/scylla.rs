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

use super::{OutboxEntry, OutboxEvent, Row, Store, StoreError, Write, WriteBatch};
use crate::config::StorageSettings;
use async_trait::async_trait;
use scylla::client::session::Session;
use scylla::client::session_builder::SessionBuilder;
use scylla::response::PagingState;
use scylla::response::query_result::QueryResult;
use scylla::statement::Consistency;
use scylla::statement::batch::{Batch, BatchType};
use scylla::statement::prepared::PreparedStatement;
use scylla::value::CqlValue;
use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::ops::ControlFlow;
use std::sync::Mutex;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};
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

const GET: &str = "SELECT key, value FROM {ks}.rows WHERE tbl = ? AND partition = ? AND key = ?";
const GET_SERIAL: &str =
    "SELECT value, WRITETIME(value) FROM {ks}.rows WHERE tbl = ? AND partition = ? AND key = ?";
const SCAN: &str = "SELECT key, value FROM {ks}.rows WHERE tbl = ? AND partition = ?";
const SCAN_AFTER: &str =
    "SELECT key, value FROM {ks}.rows WHERE tbl = ? AND partition = ? AND key > ?";
const PUT: &str = "INSERT INTO {ks}.rows (tbl, partition, key, value) VALUES (?, ?, ?, ?)";
const PUT_IF_ABSENT: &str =
    "INSERT INTO {ks}.rows (tbl, partition, key, value) VALUES (?, ?, ?, ?) IF NOT EXISTS";
const DELETE: &str = "DELETE FROM {ks}.rows WHERE tbl = ? AND partition = ? AND key = ?";
const UPDATE_IF: &str =
    "UPDATE {ks}.rows SET value = ? WHERE tbl = ? AND partition = ? AND key = ? IF value = ?";
const DELETE_IF: &str =
    "DELETE FROM {ks}.rows WHERE tbl = ? AND partition = ? AND key = ? IF value = ?";
const GUARD_ABSENT: &str =
    "UPDATE {ks}.rows SET value = null WHERE tbl = ? AND partition = ? AND key = ? IF value = null";
const LOCK_ACQUIRE: &str = "INSERT INTO {ks}.rows (tbl, partition, key, value) VALUES (?, ?, ?, ?) IF NOT EXISTS USING TTL {ttl}";
const OUTBOX_PUT: &str = "INSERT INTO {ks}.outbox (bucket, seq, aggregate_id, event_type, payload) VALUES (?, ?, ?, ?, ?)";
const OUTBOX_READ: &str =
    "SELECT seq, aggregate_id, event_type, payload FROM {ks}.outbox WHERE bucket = ? AND seq > ?";
const SEQ_READ: &str = "SELECT next FROM {ks}.outbox_seq WHERE name = ?";
const SEQ_INIT: &str = "INSERT INTO {ks}.outbox_seq (name, next) VALUES (?, ?) IF NOT EXISTS";
const SEQ_CAS: &str = "UPDATE {ks}.outbox_seq SET next = ? WHERE name = ? IF next = ?";

/// A row returned by a conditional write: column name to value.
type ReturnedRow = HashMap<String, Option<CqlValue>>;

/// A statement template and its bound values.
type Statement = (&'static str, Vec<CqlValue>);

/// A row's full address: table, partition, key.
type RowRef = (String, String, String);

/// The final effect of a batch on one row.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Mutation {
    Put(Vec<u8>),
    Delete,
}

/// A row of a single-partition conditional batch: its pre-batch guard
/// (`Some(None)`: absent, `Some(Some(v))`: holds `v`) and its final mutation.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Guarded {
    row: RowRef,
    guard: Option<Option<Vec<u8>>>,
    mutation: Option<Mutation>,
}

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

    /// Writes as batch statements.
    fn write_statements(final_rows: Vec<(RowRef, Mutation)>) -> Vec<Statement> {
        final_rows
            .into_iter()
            .map(|((t, p, k), m)| match m {
                Mutation::Put(v) => (PUT, vec![text(t), text(p), text(k), CqlValue::Blob(v)]),
                Mutation::Delete => (DELETE, vec![text(t), text(p), text(k)]),
            })
            .collect()
    }

    fn outbox_statements(
        first: u64,
        events: Vec<OutboxEvent>,
    ) -> Result<Vec<Statement>, StoreError> {
        let mut out = Vec::with_capacity(events.len());
        for (offset, e) in (first..).zip(events) {
            out.push((
                OUTBOX_PUT,
                vec![
                    CqlValue::BigInt(to_i64(offset / BUCKET_SIZE)?),
                    CqlValue::BigInt(to_i64(offset)?),
                    text(e.aggregate_id),
                    text(e.event_type),
                    CqlValue::Blob(e.payload),
                ],
            ));
        }
        Ok(out)
    }

    /// Path 1: no conditions.
    async fn commit_blind(&self, batch: WriteBatch) -> Result<(), StoreError> {
        let partitions: BTreeSet<(String, String)> = batch
            .writes
            .iter()
            .map(|w| {
                let (t, p, _) = row_ref(w);
                (t, p)
            })
            .collect();
        let final_rows = evaluate(&batch.writes, &HashMap::new()).map_err(|index| {
            // Unreachable: a batch without conditions cannot fail one.
            condition_failed(&batch.writes, index)
        })?;
        let has_events = !batch.events.is_empty();
        let mut statements = Self::write_statements(final_rows);
        if has_events {
            let first = self.reserve_offsets(batch.events.len() as u64).await?;
            statements.extend(Self::outbox_statements(first, batch.events)?);
        }
        let kind = if partitions.len() > 1 || has_events {
            BatchType::Logged
        } else {
            BatchType::Unlogged
        };
        self.run_batch(kind, None, statements).await?;
        Ok(())
    }

    /// Path 2: one conditional batch on one partition.
    async fn commit_single_partition(
        &self,
        batch: &WriteBatch,
        plan: Vec<Guarded>,
        (table, partition): (String, String),
    ) -> Result<(), StoreError> {
        let lock_row: RowRef = (table.clone(), partition.clone(), LOCK_KEY.to_string());
        let (statements, guarded_rows) = conditional_statements(table, partition, plan);
        let deadline = Instant::now() + LOCK_WAIT;
        let mut attempt = 0u32;
        loop {
            let result = self
                .run_batch(BatchType::Logged, None, statements.clone())
                .await?;
            let (applied, returned) =
                lwt_outcome(result).map_err(|e| self.unavailable("batch", e))?;
            if applied {
                return Ok(());
            }
            let current = match current_from_returned(&returned, &guarded_rows) {
                Some(current) => current,
                None => self.read_serial(&guarded_rows).await?.0,
            };
            let locked = current.get(&lock_row).is_some_and(|v| v.is_some());
            if !locked && let Err(index) = evaluate(&batch.writes, &current) {
                return Err(condition_failed(&batch.writes, index));
            }
            // Either another commit holds the partition's lock, or the state
            // that failed the condition changed since: try again.
            if Instant::now() >= deadline {
                return Err(self.unavailable(
                    "commit",
                    "the partition stayed locked or contended; retry later",
                ));
            }
            tokio::time::sleep(backoff(attempt)).await;
            attempt += 1;
        }
    }

    /// Path 3: lock the guarded partitions, check, write everything in one
    /// logged batch, unlock.
    async fn commit_locked(&self, batch: WriteBatch) -> Result<(), StoreError> {
        let mut guarded_rows: Vec<RowRef> = Vec::new();
        let mut partitions: BTreeSet<(String, String)> = BTreeSet::new();
        for w in &batch.writes {
            if matches!(w, Write::InsertIfAbsent { .. } | Write::Expect { .. }) {
                let row = row_ref(w);
                partitions.insert((row.0.clone(), row.1.clone()));
                if !guarded_rows.contains(&row) {
                    guarded_rows.push(row);
                }
            }
        }
        let owner = uuid::Uuid::new_v4().as_bytes().to_vec();
        let mut held = Vec::new();
        if let Err(e) = self.acquire_locks(&partitions, &owner, &mut held).await {
            self.release_locks(&held, &owner).await;
            return Err(e);
        }
        let (result, written) = self.commit_under_locks(batch, &guarded_rows).await;
        // A logged batch that failed may still be replayed: then the lease
        // is left to expire rather than released early.
        if result.is_ok() || !written {
            self.release_locks(&held, &owner).await;
        }
        result
    }

    async fn acquire_locks(
        &self,
        partitions: &BTreeSet<(String, String)>,
        owner: &[u8],
        held: &mut Vec<(String, String)>,
    ) -> Result<(), StoreError> {
        let deadline = Instant::now() + LOCK_WAIT;
        for (t, p) in partitions {
            let mut attempt = 0u32;
            loop {
                let result = self
                    .execute(
                        LOCK_ACQUIRE,
                        vec![
                            text(t.clone()),
                            text(p.clone()),
                            text(LOCK_KEY.to_string()),
                            CqlValue::Blob(owner.to_vec()),
                        ],
                    )
                    .await?;
                let (applied, _) = lwt_outcome(result).map_err(|e| self.unavailable("lock", e))?;
                if applied {
                    held.push((t.clone(), p.clone()));
                    break;
                }
                if Instant::now() >= deadline {
                    return Err(self.unavailable(
                        "lock",
                        format!(
                            "partition {t}/{p} stayed locked by another commit for {LOCK_WAIT:?} \
                             (a lease expires after {LOCK_TTL_SECS} s); retry later"
                        ),
                    ));
                }
                tokio::time::sleep(backoff(attempt)).await;
                attempt += 1;
            }
        }
        Ok(())
    }

    async fn release_locks(&self, held: &[(String, String)], owner: &[u8]) {
        for (t, p) in held {
            let released = self
                .execute(
                    DELETE_IF,
                    vec![
                        text(t.clone()),
                        text(p.clone()),
                        text(LOCK_KEY.to_string()),
                        CqlValue::Blob(owner.to_vec()),
                    ],
                )
                .await;
            if let Err(e) = released {
                tracing::warn!(table = %t, partition = %p, error = %e,
                    "lock release failed; the lease expires by itself");
            }
        }
    }

    /// Returns the outcome and whether the logged batch was sent.
    async fn commit_under_locks(
        &self,
        batch: WriteBatch,
        guarded_rows: &[RowRef],
    ) -> (Result<(), StoreError>, bool) {
        let (current, newest) = match self.read_serial(guarded_rows).await {
            Ok(read) => read,
            Err(e) => return (Err(e), false),
        };
        let final_rows = match evaluate(&batch.writes, &current) {
            Ok(rows) => rows,
            Err(index) => return (Err(condition_failed(&batch.writes, index)), false),
        };
        let mut statements = Self::write_statements(final_rows);
        if !batch.events.is_empty() {
            let first = match self.reserve_offsets(batch.events.len() as u64).await {
                Ok(first) => first,
                Err(e) => return (Err(e), false),
            };
            match Self::outbox_statements(first, batch.events) {
                Ok(s) => statements.extend(s),
                Err(e) => return (Err(e), false),
            }
        }
        // Above every write time seen, so this write wins over them even if
        // this coordinator's clock lags.
        let timestamp = now_micros().max(newest.saturating_add(1));
        let result = self
            .run_batch(BatchType::Logged, Some(timestamp), statements)
            .await
            .map(|_| ());
        (result, true)
    }

    /// Linearizable reads of rows: their values and the newest write time.
    async fn read_serial(
        &self,
        rows: &[RowRef],
    ) -> Result<(HashMap<RowRef, Option<Vec<u8>>>, i64), StoreError> {
        let mut stmt = self.stmt(GET_SERIAL).await?;
        stmt.set_consistency(Consistency::Serial);
        let reads = rows.iter().map(|(t, p, k)| {
            let stmt = &stmt;
            async move {
                let values = vec![text(t.clone()), text(p.clone()), text(k.clone())];
                let result = self
                    .session
                    .execute_unpaged(stmt, values)
                    .await
                    .map_err(|e| self.unavailable("serial read", e))?;
                let rows = result
                    .into_rows_result()
                    .map_err(|e| self.unavailable("serial read", e))?;
                let row = rows
                    .maybe_first_row::<(Option<Vec<u8>>, Option<i64>)>()
                    .map_err(|e| self.unavailable("serial read", e))?;
                Ok::<_, StoreError>(row.unwrap_or((None, None)))
            }
        });
        let values = futures::future::try_join_all(reads).await?;
        let mut current = HashMap::new();
        let mut newest = 0i64;
        for (row, (value, written)) in rows.iter().zip(values) {
            newest = newest.max(written.unwrap_or(0));
            current.insert(row.clone(), value);
        }
        Ok((current, newest))
    }

    /// Reserves `n` consecutive outbox offsets; returns the first.
    async fn reserve_offsets(&self, n: u64) -> Result<u64, StoreError> {
        let n = to_i64(n)?;
        let mut known = self.read_next().await?;
        for attempt in 0..SEQ_ATTEMPTS {
            let result = match known {
                None => {
                    self.execute(
                        SEQ_INIT,
                        vec![text(SEQ_NAME.into()), CqlValue::BigInt(1 + n)],
                    )
                    .await?
                }
                Some(next) => {
                    self.execute(
                        SEQ_CAS,
                        vec![
                            CqlValue::BigInt(next + n),
                            text(SEQ_NAME.into()),
                            CqlValue::BigInt(next),
                        ],
                    )
                    .await?
                }
            };
            let (applied, returned) =
                lwt_outcome(result).map_err(|e| self.unavailable("outbox offsets", e))?;
            if applied {
                let first = known.unwrap_or(1);
                return u64::try_from(first)
                    .map_err(|_| StoreError::Corrupt(format!("outbox counter is {first}")));
            }
            known = match returned
                .first()
                .and_then(|r| r.get("next"))
                .and_then(|v| v.as_ref())
            {
                Some(CqlValue::BigInt(next)) => Some(*next),
                _ => self.read_next().await?,
            };
            if attempt >= 2 {
                tokio::time::sleep(backoff(attempt - 2)).await;
            }
        }
        Err(self.unavailable(
            "outbox offsets",
            format!("the counter stayed contended for {SEQ_ATTEMPTS} attempts; retry later"),
        ))
    }

    /// The next unreserved outbox offset, `None` before the first commit.
    async fn read_next(&self) -> Result<Option<i64>, StoreError> {
        let result = self.execute(SEQ_READ, vec![text(SEQ_NAME.into())]).await?;
        let rows = result
            .into_rows_result()
            .map_err(|e| self.unavailable("outbox counter", e))?;
        let row = rows
            .maybe_first_row::<(Option<i64>,)>()
            .map_err(|e| self.unavailable("outbox counter", e))?;
        Ok(row.and_then(|(next,)| next))
    }

    /// Outbox rows of one bucket with offsets of at least `from`, in order.
    async fn read_bucket(
        &self,
        bucket: u64,
        from: u64,
        want: usize,
    ) -> Result<Vec<OutboxEntry>, StoreError> {
        let mut stmt = self.stmt(OUTBOX_READ).await?;
        stmt.set_page_size(page_size(want));
        let values = vec![
            CqlValue::BigInt(to_i64(bucket)?),
            CqlValue::BigInt(to_i64(from)? - 1),
        ];
        let mut paging = PagingState::start();
        let mut out = Vec::new();
        loop {
            let (result, next) = self
                .session
                .execute_single_page(&stmt, &values, paging)
                .await
                .map_err(|e| self.unavailable("outbox read", e))?;
            let rows = result
                .into_rows_result()
                .map_err(|e| self.unavailable("outbox read", e))?;
            type OutboxRow = (i64, Option<String>, Option<String>, Option<Vec<u8>>);
            for row in rows
                .rows::<OutboxRow>()
                .map_err(|e| self.unavailable("outbox read", e))?
            {
                let (seq, aggregate_id, event_type, payload) =
                    row.map_err(|e| self.unavailable("outbox read", e))?;
                let (Some(aggregate_id), Some(event_type), Some(payload)) =
                    (aggregate_id, event_type, payload)
                else {
                    return Err(StoreError::Corrupt(format!(
                        "outbox row {seq} is incomplete"
                    )));
                };
                let offset = u64::try_from(seq)
                    .map_err(|_| StoreError::Corrupt(format!("outbox offset {seq}")))?;
                out.push(OutboxEntry {
                    offset,
                    event: OutboxEvent {
                        aggregate_id,
                        event_type,
                        payload,
                    },
                });
            }
            if out.len() >= want {
                return Ok(out);
            }
            match next.into_paging_control_flow() {
                ControlFlow::Break(()) => return Ok(out),
                ControlFlow::Continue(state) => paging = state,
            }
        }
    }

    /// Whether readers may step over missing offsets `from..=to` (checked
    /// for `from`), recording when each was first seen missing.
    fn gap_expired(&self, from: u64, to: u64) -> bool {
        let mut gaps = self
            .gaps
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        gaps.observe(from, to, Instant::now(), self.gap_grace)
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
        if limit == 0 {
            return Ok(Vec::new());
        }
        let Some(next) = self.read_next().await? else {
            return Ok(Vec::new());
        };
        let high = u64::try_from(next.saturating_sub(1)).unwrap_or(0);
        {
            let mut gaps = self
                .gaps
                .lock()
                .unwrap_or_else(|poisoned| poisoned.into_inner());
            gaps.prune(after);
        }
        let mut expected = after.saturating_add(1);
        let mut out = Vec::new();
        while expected <= high && out.len() < limit {
            let bucket = expected / BUCKET_SIZE;
            let bucket_last = (bucket + 1) * BUCKET_SIZE - 1;
            let rows = self
                .read_bucket(bucket, expected, limit - out.len())
                .await?;
            for entry in rows {
                while expected < entry.offset {
                    if !self.gap_expired(expected, entry.offset - 1) {
                        return Ok(out);
                    }
                    expected += 1;
                }
                expected = entry.offset + 1;
                out.push(entry);
                if out.len() >= limit {
                    return Ok(out);
                }
            }
            let last = high.min(bucket_last);
            while expected <= last {
                if !self.gap_expired(expected, last) {
                    return Ok(out);
                }
                expected += 1;
            }
        }
        Ok(out)
    }

    async fn ping(&self) -> Result<(), StoreError> {
        self.session
            .query_unpaged("SELECT release_version FROM system.local", ())
            .await
            .map(|_| ())
            .map_err(|e| self.unavailable("ping", e))
    }
}

/// When readers first saw each missing outbox offset.
#[derive(Debug, Default)]
struct GapTracker {
    first_seen: BTreeMap<u64, Instant>,
}

impl GapTracker {
    /// Records `from..=to` as missing at `now` (keeping earlier sightings)
    /// and tells whether `from` has been missing for at least `grace`.
    fn observe(&mut self, from: u64, to: u64, now: Instant, grace: Duration) -> bool {
        let to = to.min(from.saturating_add(MAX_TRACKED_GAP));
        for offset in from..=to {
            self.first_seen.entry(offset).or_insert(now);
        }
        self.first_seen
            .get(&from)
            .is_some_and(|seen| now.saturating_duration_since(*seen) >= grace)
    }

    /// Forgets offsets at or below `upto` (already consumed).
    fn prune(&mut self, upto: u64) {
        self.first_seen = self.first_seen.split_off(&upto.saturating_add(1));
    }
}

fn text(s: String) -> CqlValue {
    CqlValue::Text(s)
}

/// The statements of a single-partition conditional batch: a guard that the
/// partition is not locked, then one statement per row; and the rows whose
/// pre-batch values decide a failure (the lock lease first).
fn conditional_statements(
    table: String,
    partition: String,
    plan: Vec<Guarded>,
) -> (Vec<Statement>, Vec<RowRef>) {
    let mut guarded_rows = vec![(table.clone(), partition.clone(), LOCK_KEY.to_string())];
    let mut statements = vec![(
        GUARD_ABSENT,
        vec![text(table), text(partition), text(LOCK_KEY.to_string())],
    )];
    for g in plan {
        let (t, p, k) = g.row.clone();
        let key = vec![text(t), text(p), text(k)];
        if g.guard.is_some() {
            guarded_rows.push(g.row.clone());
        }
        // Bind order: INSERT and DELETE take the address first, UPDATE
        // takes the new value first; conditions come last.
        let statement = match (g.guard, g.mutation) {
            (None, Some(Mutation::Put(v))) => (PUT, cat([key, vec![CqlValue::Blob(v)]])),
            (None, Some(Mutation::Delete)) => (DELETE, key),
            (None, None) => continue,
            (Some(None), Some(Mutation::Put(v))) => {
                (PUT_IF_ABSENT, cat([key, vec![CqlValue::Blob(v)]]))
            }
            (Some(None), _) => (GUARD_ABSENT, key),
            (Some(Some(e)), Some(Mutation::Put(v))) => (
                UPDATE_IF,
                cat([vec![CqlValue::Blob(v)], key, vec![CqlValue::Blob(e)]]),
            ),
            (Some(Some(e)), Some(Mutation::Delete)) => {
                (DELETE_IF, cat([key, vec![CqlValue::Blob(e)]]))
            }
            (Some(Some(e)), None) => (
                UPDATE_IF,
                cat([
                    vec![CqlValue::Blob(e.clone())],
                    key,
                    vec![CqlValue::Blob(e)],
                ]),
            ),
        };
        statements.push(statement);
    }
    (statements, guarded_rows)
}

fn cat<const N: usize>(parts: [Vec<CqlValue>; N]) -> Vec<CqlValue> {
    parts.into_iter().flatten().collect()
}

fn row_ref(w: &Write) -> RowRef {
    let (t, p, k) = match w {
        Write::Put {
            table,
            partition,
            key,
            ..
        }
        | Write::InsertIfAbsent {
            table,
            partition,
            key,
            ..
        }
        | Write::Delete {
            table,
            partition,
            key,
        }
        | Write::Expect {
            table,
            partition,
            key,
            ..
        } => (table, partition, key),
    };
    (t.to_string(), p.clone(), k.clone())
}

fn condition_failed(writes: &[Write], index: usize) -> StoreError {
    let (table, partition, key) = writes.get(index).map(row_ref).unwrap_or_default();
    StoreError::ConditionFailed {
        index,
        table,
        partition,
        key,
    }
}

/// Runs the batch in order against `current` (the stored values of the rows
/// it guards; rows not listed are absent), exactly like the embedded store:
/// returns the final mutation of every written row, or the index of the first
/// condition that does not hold.
fn evaluate(
    writes: &[Write],
    current: &HashMap<RowRef, Option<Vec<u8>>>,
) -> Result<Vec<(RowRef, Mutation)>, usize> {
    let mut pending: HashMap<RowRef, Option<Vec<u8>>> = HashMap::new();
    let mut order: Vec<RowRef> = Vec::new();
    for (index, write) in writes.iter().enumerate() {
        let row = row_ref(write);
        let now = match pending.get(&row) {
            Some(v) => v.clone(),
            None => current.get(&row).cloned().flatten(),
        };
        let next = match write {
            Write::Put { value, .. } => Some(value.clone()),
            Write::Delete { .. } => None,
            Write::InsertIfAbsent { value, .. } => {
                if now.is_some() {
                    return Err(index);
                }
                Some(value.clone())
            }
            Write::Expect { expected, .. } => {
                if now != *expected {
                    return Err(index);
                }
                continue;
            }
        };
        if !pending.contains_key(&row) {
            order.push(row.clone());
        }
        pending.insert(row, next);
    }
    Ok(order
        .into_iter()
        .map(|row| {
            let m = match pending.remove(&row).flatten() {
                Some(v) => Mutation::Put(v),
                None => Mutation::Delete,
            };
            (row, m)
        })
        .collect())
}

/// Folds a batch into one statement per row with its pre-batch guard, or
/// `None` when that cannot express it (a condition on a row the batch already
/// wrote, or two different guards on one row): path 3 handles those.
fn merge(writes: &[Write]) -> Option<Vec<Guarded>> {
    let mut out: Vec<Guarded> = Vec::new();
    for write in writes {
        let row = row_ref(write);
        let i = match out.iter().position(|g| g.row == row) {
            Some(i) => i,
            None => {
                out.push(Guarded {
                    row,
                    guard: None,
                    mutation: None,
                });
                out.len() - 1
            }
        };
        let g = &mut out[i];
        let guard = match write {
            Write::Put { value, .. } => {
                g.mutation = Some(Mutation::Put(value.clone()));
                continue;
            }
            Write::Delete { .. } => {
                g.mutation = Some(Mutation::Delete);
                continue;
            }
            Write::InsertIfAbsent { .. } => None,
            Write::Expect { expected, .. } => expected.clone(),
        };
        if g.mutation.is_some() {
            return None;
        }
        match &g.guard {
            None => g.guard = Some(guard),
            Some(existing) if *existing == guard => {}
            Some(_) => return None,
        }
        if let Write::InsertIfAbsent { value, .. } = write {
            g.mutation = Some(Mutation::Put(value.clone()));
        }
    }
    Some(out)
}

/// Reads `[applied]` and the returned rows (column name to value).
fn lwt_outcome(result: QueryResult) -> Result<(bool, Vec<ReturnedRow>), String> {
    let rows = result.into_rows_result().map_err(|e| e.to_string())?;
    let names: Vec<String> = rows
        .column_specs()
        .iter()
        .map(|c| c.name().to_string())
        .collect();
    let mut out = Vec::new();
    for row in rows
        .rows::<scylla::value::Row>()
        .map_err(|e| e.to_string())?
    {
        let row = row.map_err(|e| e.to_string())?;
        out.push(
            names
                .iter()
                .cloned()
                .zip(row.columns)
                .collect::<HashMap<_, _>>(),
        );
    }
    let applied = match out.first().and_then(|r| r.get("[applied]")) {
        Some(Some(CqlValue::Boolean(applied))) => *applied,
        _ => return Err("the conditional write returned no [applied] column".into()),
    };
    Ok((applied, out))
}

/// The pre-batch values of `rows`, when the rows returned by a failed
/// conditional batch cover all of them.
fn current_from_returned(
    returned: &[ReturnedRow],
    rows: &[RowRef],
) -> Option<HashMap<RowRef, Option<Vec<u8>>>> {
    let mut seen: HashMap<RowRef, Option<Vec<u8>>> = HashMap::new();
    for r in returned {
        let field = |name: &str| match r.get(name) {
            Some(Some(CqlValue::Text(s))) => Some(s.clone()),
            _ => None,
        };
        let (Some(t), Some(p), Some(k)) = (field("tbl"), field("partition"), field("key")) else {
            continue;
        };
        let value = match r.get("value") {
            Some(Some(CqlValue::Blob(v))) => Some(v.clone()),
            Some(None) => None,
            _ => continue,
        };
        seen.insert((t, p, k), value);
    }
    rows.iter()
        .map(|row| seen.get(row).map(|v| (row.clone(), v.clone())))
        .collect()
}

fn backoff(attempt: u32) -> Duration {
    let base = 5u64.saturating_mul(1 << attempt.min(6)).min(200);
    // Jitter so contending commits do not retry in lockstep.
    let jitter = (uuid::Uuid::new_v4().as_u128() % 16) as u64;
    Duration::from_millis(base + jitter)
}

fn page_size(want: usize) -> i32 {
    want.clamp(1, PAGE_SIZE) as i32
}

fn to_i64(v: u64) -> Result<i64, StoreError> {
    i64::try_from(v).map_err(|_| StoreError::Corrupt(format!("offset {v} is out of range")))
}

fn now_micros() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| i64::try_from(d.as_micros()).unwrap_or(i64::MAX))
        .unwrap_or(0)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn r(t: &str, p: &str, k: &str) -> RowRef {
        (t.into(), p.into(), k.into())
    }

    #[test]
    fn evaluate_runs_conditions_in_batch_order_like_the_embedded_store() {
        let mut b = WriteBatch::new();
        b.expect("t", "p", "k", Some(b"v1".to_vec()))
            .put("t", "p", "k", b"v2".to_vec())
            .expect("t", "p", "k", Some(b"v2".to_vec()))
            .insert_if_absent("u", "q", "new", b"n".to_vec());
        let current = HashMap::from([(r("t", "p", "k"), Some(b"v1".to_vec()))]);
        let rows = evaluate(&b.writes, &current).expect("conditions hold");
        assert_eq!(
            rows,
            [
                (r("t", "p", "k"), Mutation::Put(b"v2".to_vec())),
                (r("u", "q", "new"), Mutation::Put(b"n".to_vec())),
            ]
        );
        let stale = HashMap::from([(r("t", "p", "k"), Some(b"other".to_vec()))]);
        assert_eq!(evaluate(&b.writes, &stale), Err(0));
        let taken = HashMap::from([
            (r("t", "p", "k"), Some(b"v1".to_vec())),
            (r("u", "q", "new"), Some(b"x".to_vec())),
        ]);
        assert_eq!(evaluate(&b.writes, &taken), Err(3));
    }

    #[test]
    fn evaluate_keeps_the_last_write_per_row() {
        let mut b = WriteBatch::new();
        b.put("t", "p", "a", b"1".to_vec())
            .delete("t", "p", "a")
            .delete("t", "p", "b")
            .put("t", "p", "b", b"2".to_vec());
        let rows = evaluate(&b.writes, &HashMap::new()).expect("no conditions");
        assert_eq!(
            rows,
            [
                (r("t", "p", "a"), Mutation::Delete),
                (r("t", "p", "b"), Mutation::Put(b"2".to_vec())),
            ]
        );
    }

    #[test]
    fn merge_attaches_guards_to_the_row_statement() {
        let mut b = WriteBatch::new();
        b.expect("t", "p", "tally", Some(b"3".to_vec()))
            .put("t", "p", "tally", b"4".to_vec())
            .insert_if_absent("t", "p", "vote", b"v".to_vec())
            .expect("t", "p", "guard", None)
            .delete("t", "p", "gone");
        let plan = merge(&b.writes).expect("expressible");
        assert_eq!(
            plan,
            [
                Guarded {
                    row: r("t", "p", "tally"),
                    guard: Some(Some(b"3".to_vec())),
                    mutation: Some(Mutation::Put(b"4".to_vec())),
                },
                Guarded {
                    row: r("t", "p", "vote"),
                    guard: Some(None),
                    mutation: Some(Mutation::Put(b"v".to_vec())),
                },
                Guarded {
                    row: r("t", "p", "guard"),
                    guard: Some(None),
                    mutation: None,
                },
                Guarded {
                    row: r("t", "p", "gone"),
                    guard: None,
                    mutation: Some(Mutation::Delete),
                },
            ]
        );
    }

    #[test]
    fn merge_declines_what_one_conditional_batch_cannot_say() {
        let mut after_write = WriteBatch::new();
        after_write
            .put("t", "p", "k", b"1".to_vec())
            .expect("t", "p", "k", Some(b"1".to_vec()));
        assert_eq!(merge(&after_write.writes), None);
        let mut contradictory = WriteBatch::new();
        contradictory
            .expect("t", "p", "k", Some(b"1".to_vec()))
            .expect("t", "p", "k", None);
        assert_eq!(merge(&contradictory.writes), None);
    }

    #[test]
    fn returned_rows_give_the_state_only_when_they_cover_every_guard() {
        let row = |k: &str, v: Option<&[u8]>| {
            HashMap::from([
                ("[applied]".to_string(), Some(CqlValue::Boolean(false))),
                ("tbl".to_string(), Some(CqlValue::Text("t".into()))),
                ("partition".to_string(), Some(CqlValue::Text("p".into()))),
                ("key".to_string(), Some(CqlValue::Text(k.into()))),
                ("value".to_string(), v.map(|v| CqlValue::Blob(v.to_vec()))),
            ])
        };
        let returned = vec![row("a", Some(b"1")), row("b", None)];
        let current = current_from_returned(&returned, &[r("t", "p", "a"), r("t", "p", "b")])
            .expect("covered");
        assert_eq!(current[&r("t", "p", "a")], Some(b"1".to_vec()));
        assert_eq!(current[&r("t", "p", "b")], None);
        assert!(current_from_returned(&returned, &[r("t", "p", "c")]).is_none());
    }

    #[test]
    fn gaps_block_readers_until_the_grace_period_passes() {
        let grace = Duration::from_secs(60);
        let t0 = Instant::now();
        let mut gaps = GapTracker::default();
        assert!(!gaps.observe(5, 7, t0, grace));
        assert!(!gaps.observe(5, 7, t0 + Duration::from_secs(59), grace));
        assert!(gaps.observe(5, 7, t0 + grace, grace));
        // Offsets seen missing in the same observation expire together.
        assert!(gaps.observe(6, 7, t0 + grace, grace));
        // An offset first seen later gets its own grace period.
        assert!(!gaps.observe(8, 8, t0 + grace, grace));
        gaps.prune(7);
        assert_eq!(gaps.first_seen.keys().copied().collect::<Vec<_>>(), [8]);
    }

    fn blob(v: &[u8]) -> CqlValue {
        CqlValue::Blob(v.to_vec())
    }

    fn assert_binds_match(statements: &[Statement]) {
        for (template, values) in statements {
            assert_eq!(template.matches('?').count(), values.len(), "{template}");
        }
    }

    #[test]
    fn conditional_statements_bind_in_cql_order() {
        let mut b = WriteBatch::new();
        b.expect("t", "p", "tally", Some(b"3".to_vec()))
            .put("t", "p", "tally", b"4".to_vec())
            .insert_if_absent("t", "p", "vote", b"v".to_vec())
            .expect("t", "p", "same", Some(b"s".to_vec()))
            .expect("t", "p", "guard", None)
            .delete("t", "p", "gone")
            .put("t", "p", "plain", b"x".to_vec());
        let plan = merge(&b.writes).expect("expressible");
        let (statements, guarded) = conditional_statements("t".into(), "p".into(), plan);
        assert_binds_match(&statements);
        let templates: Vec<_> = statements.iter().map(|(t, _)| *t).collect();
        assert_eq!(
            templates,
            [
                GUARD_ABSENT,
                UPDATE_IF,
                PUT_IF_ABSENT,
                UPDATE_IF,
                GUARD_ABSENT,
                DELETE,
                PUT
            ]
        );
        let key = |k: &str| vec![text("t".into()), text("p".into()), text(k.into())];
        assert_eq!(statements[0].1, key(LOCK_KEY));
        // UPDATE .. SET value = new WHERE address IF value = expected
        assert_eq!(
            statements[1].1,
            cat([vec![blob(b"4")], key("tally"), vec![blob(b"3")]])
        );
        // INSERT (address, value) IF NOT EXISTS
        assert_eq!(statements[2].1, cat([key("vote"), vec![blob(b"v")]]));
        // A guard without a write rewrites the expected value.
        assert_eq!(
            statements[3].1,
            cat([vec![blob(b"s")], key("same"), vec![blob(b"s")]])
        );
        assert_eq!(
            guarded,
            [
                r("t", "p", LOCK_KEY),
                r("t", "p", "tally"),
                r("t", "p", "vote"),
                r("t", "p", "same"),
                r("t", "p", "guard"),
            ]
        );
    }

    #[test]
    fn write_and_outbox_statements_bind_every_marker() {
        let writes = vec![
            (r("t", "p", "a"), Mutation::Put(b"1".to_vec())),
            (r("t", "p", "b"), Mutation::Delete),
        ];
        assert_binds_match(&ScyllaStore::write_statements(writes));
        let events = vec![
            OutboxEvent {
                aggregate_id: "a".into(),
                event_type: "T".into(),
                payload: vec![1],
            };
            2
        ];
        let first = BUCKET_SIZE - 1;
        let outbox = ScyllaStore::outbox_statements(first, events).expect("in range");
        assert_binds_match(&outbox);
        // Consecutive offsets, bucketed by offset.
        let placed: Vec<_> = outbox
            .iter()
            .map(|(_, v)| (v[0].clone(), v[1].clone()))
            .collect();
        assert_eq!(
            placed,
            [
                (CqlValue::BigInt(0), CqlValue::BigInt(first as i64)),
                (CqlValue::BigInt(1), CqlValue::BigInt(first as i64 + 1)),
            ]
        );
    }

    #[test]
    fn backoff_stays_bounded() {
        for attempt in 0..100 {
            assert!(backoff(attempt) <= Duration::from_millis(216));
        }
    }
}
