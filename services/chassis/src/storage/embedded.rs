//! The embedded adapter: one redb file per service.
//!
//! redb is chosen because it is pure Rust (no C toolchain, builds fast on CI),
//! crash-safe with ACID write transactions and copy-on-write B-trees, stable
//! in its file format, and actively maintained. Its single-writer model gives
//! the batch conditions of the storage port serialisable semantics for free.
//! The API is synchronous, so every call runs on the blocking pool.
//!
//! The file holds secrets (the user service keeps password hashes and its
//! signing key in it), so a new file is created 0600 in directories created
//! 0700, and an existing file that group or others can read is refused at
//! open with the `chmod` that fixes it.

use super::{OutboxEntry, OutboxEvent, Row, Store, StoreError, Write, WriteBatch};
use async_trait::async_trait;
use redb::{Database, ReadableDatabase, ReadableTable, TableDefinition, TableError};
use std::path::Path;
use std::sync::Arc;

type RowKey<'a> = (&'a str, &'a str);

const OUTBOX: TableDefinition<'static, u64, &'static [u8]> = TableDefinition::new("__outbox");

fn table(name: &'static str) -> TableDefinition<'static, RowKey<'static>, &'static [u8]> {
    TableDefinition::new(name)
}

/// A service's own database file.
#[derive(Clone)]
pub struct EmbeddedStore {
    db: Arc<Database>,
}

fn unavailable(e: impl std::fmt::Display) -> StoreError {
    StoreError::Unavailable(e.to_string())
}

impl EmbeddedStore {
    /// Opens (or creates) the database at `path`, creating parent directories
    /// (0700) and the file (0600); refuses a file others can read.
    pub async fn open(path: &Path) -> Result<Self, StoreError> {
        let path = path.to_path_buf();
        tokio::task::spawn_blocking(move || {
            if let Some(parent) = path.parent().filter(|p| !p.as_os_str().is_empty()) {
                private::create_dirs(parent).map_err(|e| {
                    StoreError::Unavailable(format!("cannot create {}: {e}", parent.display()))
                })?;
            }
            private::create_or_check_file(&path)?;
            let db = Database::create(&path).map_err(|e| {
                StoreError::Unavailable(format!("cannot open {}: {e}", path.display()))
            })?;
            Ok(Self { db: Arc::new(db) })
        })
        .await
        .map_err(unavailable)?
    }

    async fn blocking<T, F>(&self, f: F) -> Result<T, StoreError>
    where
        T: Send + 'static,
        F: FnOnce(&Database) -> Result<T, StoreError> + Send + 'static,
    {
        let db = self.db.clone();
        tokio::task::spawn_blocking(move || f(&db))
            .await
            .map_err(unavailable)?
    }
}

fn apply(db: &Database, batch: WriteBatch) -> Result<(), StoreError> {
    let txn = db.begin_write().map_err(unavailable)?;
    for (index, write) in batch.writes.iter().enumerate() {
        match write {
            Write::Put {
                table: t,
                partition,
                key,
                value,
            } => {
                let mut tbl = txn.open_table(table(t)).map_err(unavailable)?;
                tbl.insert((partition.as_str(), key.as_str()), value.as_slice())
                    .map_err(unavailable)?;
            }
            Write::InsertIfAbsent {
                table: t,
                partition,
                key,
                value,
            } => {
                let mut tbl = txn.open_table(table(t)).map_err(unavailable)?;
                let exists = tbl
                    .get((partition.as_str(), key.as_str()))
                    .map_err(unavailable)?
                    .is_some();
                if exists {
                    return Err(condition_failed(index, t, partition, key));
                }
                tbl.insert((partition.as_str(), key.as_str()), value.as_slice())
                    .map_err(unavailable)?;
            }
            Write::Delete {
                table: t,
                partition,
                key,
            } => {
                let mut tbl = txn.open_table(table(t)).map_err(unavailable)?;
                tbl.remove((partition.as_str(), key.as_str()))
                    .map_err(unavailable)?;
            }
            Write::Expect {
                table: t,
                partition,
                key,
                expected,
            } => {
                let tbl = txn.open_table(table(t)).map_err(unavailable)?;
                let current = tbl
                    .get((partition.as_str(), key.as_str()))
                    .map_err(unavailable)?
                    .map(|v| v.value().to_vec());
                if current != *expected {
                    return Err(condition_failed(index, t, partition, key));
                }
            }
        }
    }
    if !batch.events.is_empty() {
        let mut outbox = txn.open_table(OUTBOX).map_err(unavailable)?;
        let first = outbox
            .last()
            .map_err(unavailable)?
            .map(|(k, _)| k.value() + 1)
            .unwrap_or(1);
        for (offset, event) in (first..).zip(&batch.events) {
            outbox
                .insert(offset, encode_event(event).as_slice())
                .map_err(unavailable)?;
        }
    }
    txn.commit().map_err(unavailable)?;
    Ok(())
}

fn condition_failed(index: usize, table: &str, partition: &str, key: &str) -> StoreError {
    StoreError::ConditionFailed {
        index,
        table: table.to_string(),
        partition: partition.to_string(),
        key: key.to_string(),
    }
}

/// Outbox rows: three length-prefixed fields (aggregate id, type, payload).
fn encode_event(e: &OutboxEvent) -> Vec<u8> {
    let mut out =
        Vec::with_capacity(12 + e.aggregate_id.len() + e.event_type.len() + e.payload.len());
    for field in [
        e.aggregate_id.as_bytes(),
        e.event_type.as_bytes(),
        &e.payload,
    ] {
        out.extend_from_slice(&(field.len() as u32).to_le_bytes());
        out.extend_from_slice(field);
    }
    out
}

fn decode_event(mut bytes: &[u8]) -> Result<OutboxEvent, StoreError> {
    let mut fields: Vec<Vec<u8>> = Vec::with_capacity(3);
    for _ in 0..3 {
        let (len, rest) = bytes
            .split_first_chunk::<4>()
            .ok_or_else(|| StoreError::Corrupt("truncated outbox row".into()))?;
        let len = u32::from_le_bytes(*len) as usize;
        if rest.len() < len {
            return Err(StoreError::Corrupt("truncated outbox row".into()));
        }
        fields.push(rest[..len].to_vec());
        bytes = &rest[len..];
    }
    let payload = fields.pop().unwrap_or_default();
    let event_type = String::from_utf8(fields.pop().unwrap_or_default())
        .map_err(|e| StoreError::Corrupt(e.to_string()))?;
    let aggregate_id = String::from_utf8(fields.pop().unwrap_or_default())
        .map_err(|e| StoreError::Corrupt(e.to_string()))?;
    Ok(OutboxEvent {
        aggregate_id,
        event_type,
        payload,
    })
}

#[async_trait]
impl Store for EmbeddedStore {
    async fn get(
        &self,
        t: &'static str,
        partition: &str,
        key: &str,
    ) -> Result<Option<Vec<u8>>, StoreError> {
        let (partition, key) = (partition.to_string(), key.to_string());
        self.blocking(move |db| {
            let txn = db.begin_read().map_err(unavailable)?;
            let tbl = match txn.open_table(table(t)) {
                Ok(tbl) => tbl,
                Err(TableError::TableDoesNotExist(_)) => return Ok(None),
                Err(e) => return Err(unavailable(e)),
            };
            let value = tbl
                .get((partition.as_str(), key.as_str()))
                .map_err(unavailable)?
                .map(|v| v.value().to_vec());
            Ok(value)
        })
        .await
    }

    async fn scan(
        &self,
        t: &'static str,
        partition: &str,
        after: Option<String>,
        limit: usize,
    ) -> Result<Vec<Row>, StoreError> {
        let partition = partition.to_string();
        self.blocking(move |db| {
            let txn = db.begin_read().map_err(unavailable)?;
            let tbl = match txn.open_table(table(t)) {
                Ok(tbl) => tbl,
                Err(TableError::TableDoesNotExist(_)) => return Ok(Vec::new()),
                Err(e) => return Err(unavailable(e)),
            };
            let start = after.clone().unwrap_or_default();
            let range = tbl
                .range((partition.as_str(), start.as_str())..)
                .map_err(unavailable)?;
            let mut rows = Vec::new();
            for item in range {
                let (k, v) = item.map_err(unavailable)?;
                let (p, key) = k.value();
                if p != partition {
                    break;
                }
                if after.as_deref() == Some(key) {
                    continue;
                }
                rows.push(Row {
                    key: key.to_string(),
                    value: v.value().to_vec(),
                });
                if rows.len() >= limit {
                    break;
                }
            }
            Ok(rows)
        })
        .await
    }

    async fn commit(&self, batch: WriteBatch) -> Result<(), StoreError> {
        self.blocking(move |db| apply(db, batch)).await
    }

    async fn read_outbox(&self, after: u64, limit: usize) -> Result<Vec<OutboxEntry>, StoreError> {
        self.blocking(move |db| {
            let txn = db.begin_read().map_err(unavailable)?;
            let tbl = match txn.open_table(OUTBOX) {
                Ok(tbl) => tbl,
                Err(TableError::TableDoesNotExist(_)) => return Ok(Vec::new()),
                Err(e) => return Err(unavailable(e)),
            };
            let mut out = Vec::new();
            for item in tbl.range(after.saturating_add(1)..).map_err(unavailable)? {
                let (k, v) = item.map_err(unavailable)?;
                out.push(OutboxEntry {
                    offset: k.value(),
                    event: decode_event(v.value())?,
                });
                if out.len() >= limit {
                    break;
                }
            }
            Ok(out)
        })
        .await
    }

    async fn ping(&self) -> Result<(), StoreError> {
        self.blocking(|db| db.begin_read().map(|_| ()).map_err(unavailable))
            .await
    }
}

/// Owner-only permissions for the database file and its directories.
mod private {
    use super::StoreError;
    use std::path::Path;

    /// Mode of a new database file: read and write for the owner only.
    pub const FILE_MODE: u32 = 0o600;
    /// Mode of directories created for a database.
    pub const DIR_MODE: u32 = 0o700;
    /// Permission bits that must be clear on an existing file.
    const OPEN_TO_OTHERS: u32 = 0o077;

    #[cfg(unix)]
    pub fn create_dirs(dir: &Path) -> std::io::Result<()> {
        use std::os::unix::fs::DirBuilderExt;
        std::fs::DirBuilder::new()
            .recursive(true)
            .mode(DIR_MODE)
            .create(dir)
    }

    #[cfg(not(unix))]
    pub fn create_dirs(dir: &Path) -> std::io::Result<()> {
        std::fs::create_dir_all(dir)
    }

    /// Creates an empty 0600 file (redb initialises an empty file), or checks
    /// that the existing one is closed to group and others.
    #[cfg(unix)]
    pub fn create_or_check_file(path: &Path) -> Result<(), StoreError> {
        use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
        let created = std::fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(FILE_MODE)
            .open(path);
        match created {
            Ok(_) => return Ok(()),
            Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => {}
            Err(e) => {
                return Err(StoreError::Unavailable(format!(
                    "cannot create {}: {e}",
                    path.display()
                )));
            }
        }
        let mode = std::fs::metadata(path)
            .map_err(|e| StoreError::Unavailable(format!("cannot read {}: {e}", path.display())))?
            .permissions()
            .mode();
        if mode & OPEN_TO_OTHERS != 0 {
            return Err(StoreError::Unavailable(format!(
                "{} holds secrets but has mode {:04o}, open to other users; \
                 fix it with `chmod 600 {}`",
                path.display(),
                mode & 0o7777,
                path.display()
            )));
        }
        Ok(())
    }

    #[cfg(not(unix))]
    pub fn create_or_check_file(_path: &Path) -> Result<(), StoreError> {
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    async fn store() -> (tempfile::TempDir, EmbeddedStore) {
        let dir = tempfile::tempdir().expect("tempdir");
        let s = EmbeddedStore::open(&dir.path().join("t.redb"))
            .await
            .expect("open");
        (dir, s)
    }

    #[tokio::test]
    async fn put_get_scan_in_partition_order() {
        let (_d, s) = store().await;
        let mut b = WriteBatch::new();
        b.put("t", "p1", "b", b"2".to_vec())
            .put("t", "p1", "a", b"1".to_vec())
            .put("t", "p2", "a", b"x".to_vec());
        s.commit(b).await.expect("commit");
        assert_eq!(
            s.get("t", "p1", "a").await.expect("get"),
            Some(b"1".to_vec())
        );
        assert_eq!(s.get("t", "p3", "a").await.expect("get"), None);
        assert_eq!(s.get("missing", "p", "k").await.expect("get"), None);
        let rows = s.scan("t", "p1", None, 10).await.expect("scan");
        let keys: Vec<_> = rows.iter().map(|r| r.key.as_str()).collect();
        assert_eq!(keys, ["a", "b"]);
        let rows = s.scan("t", "p1", Some("a".into()), 10).await.expect("scan");
        assert_eq!(rows.len(), 1);
        assert_eq!(rows[0].key, "b");
    }

    #[tokio::test]
    async fn failed_condition_writes_nothing() {
        let (_d, s) = store().await;
        let mut b = WriteBatch::new();
        b.insert_if_absent("t", "p", "k", b"1".to_vec());
        s.commit(b.clone()).await.expect("first insert");
        let mut b2 = WriteBatch::new();
        b2.put("t", "p", "other", b"x".to_vec())
            .insert_if_absent("t", "p", "k", b"2".to_vec())
            .emit(OutboxEvent {
                aggregate_id: "a".into(),
                event_type: "T".into(),
                payload: vec![1],
            });
        match s.commit(b2).await {
            Err(StoreError::ConditionFailed { index, .. }) => assert_eq!(index, 1),
            other => panic!("expected condition failure, got {other:?}"),
        }
        assert_eq!(s.get("t", "p", "other").await.expect("get"), None);
        assert_eq!(
            s.get("t", "p", "k").await.expect("get"),
            Some(b"1".to_vec())
        );
        assert!(s.read_outbox(0, 10).await.expect("outbox").is_empty());
    }

    #[tokio::test]
    async fn expect_guards_current_value() {
        let (_d, s) = store().await;
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
            Err(StoreError::ConditionFailed { .. })
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
    }

    #[tokio::test]
    async fn outbox_commits_with_state_and_survives_reopen() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("o.redb");
        {
            let s = EmbeddedStore::open(&path).await.expect("open");
            for i in 0..3u8 {
                let mut b = WriteBatch::new();
                b.put("t", "p", format!("k{i}"), vec![i]).emit(OutboxEvent {
                    aggregate_id: "agg".into(),
                    event_type: "tally.events.v1.PollVoted".into(),
                    payload: vec![i, i],
                });
                s.commit(b).await.expect("commit");
            }
        }
        let s = EmbeddedStore::open(&path).await.expect("reopen");
        let all = s.read_outbox(0, 100).await.expect("outbox");
        assert_eq!(all.iter().map(|e| e.offset).collect::<Vec<_>>(), [1, 2, 3]);
        assert_eq!(all[2].event.payload, vec![2, 2]);
        let tail = s.read_outbox(2, 100).await.expect("outbox");
        assert_eq!(tail.len(), 1);
        assert_eq!(tail[0].offset, 3);
        assert_eq!(s.get("t", "p", "k1").await.expect("get"), Some(vec![1]));
    }

    #[test]
    fn truncated_outbox_rows_are_reported_not_panicked() {
        let row = encode_event(&OutboxEvent {
            aggregate_id: "a".into(),
            event_type: "b".into(),
            payload: vec![1, 2, 3],
        });
        for cut in 0..row.len() {
            assert!(decode_event(&row[..cut]).is_err(), "cut at {cut}");
        }
        assert!(decode_event(&row).is_ok());
    }

    #[cfg(unix)]
    #[tokio::test]
    async fn new_files_are_0600_in_0700_directories() {
        use std::os::unix::fs::PermissionsExt;
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("a/b/t.redb");
        let _s = EmbeddedStore::open(&path).await.expect("open");
        let mode = |p: &Path| std::fs::metadata(p).expect("stat").permissions().mode() & 0o777;
        assert_eq!(mode(&path), 0o600);
        assert_eq!(mode(&dir.path().join("a")), 0o700);
        assert_eq!(mode(&dir.path().join("a/b")), 0o700);
    }

    #[cfg(unix)]
    #[tokio::test]
    async fn a_file_open_to_others_is_refused_with_the_fix() {
        use std::os::unix::fs::PermissionsExt;
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("t.redb");
        drop(EmbeddedStore::open(&path).await.expect("open"));
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o644)).expect("chmod");
        let Err(e) = EmbeddedStore::open(&path).await else {
            panic!("a 0644 store file was opened");
        };
        let msg = e.to_string();
        assert!(
            msg.contains(&format!("chmod 600 {}", path.display())),
            "{msg}"
        );
        assert!(msg.contains("0644"), "{msg}");
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o600)).expect("chmod");
        EmbeddedStore::open(&path)
            .await
            .expect("open after the fix");
    }
}
