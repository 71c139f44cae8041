//! The consumer's durable offset and bookkeeping rows: reading the offset,
//! adding a guarded forward move of it to a batch, clearing a partition.

use crate::storage::{Store, StoreError, WriteBatch};

/// Offsets (and the rebuild marker) per consumer.
pub const OFFSETS: &str = "__consumer_offsets";
/// One row per processed event id per consumer.
pub const PROCESSED: &str = "__consumer_processed";

pub(super) const OFFSET_KEY: &str = "offset";
pub(super) const REBUILD_KEY: &str = "rebuilding";
const PAGE: usize = 256;

/// Deletes every row of one partition (for [`super::Handler::reset`] implementations too).
pub async fn clear_partition(
    store: &dyn Store,
    table: &'static str,
    partition: &str,
) -> Result<(), StoreError> {
    loop {
        let rows = store.scan(table, partition, None, PAGE).await?;
        if rows.is_empty() {
            return Ok(());
        }
        let mut batch = WriteBatch::new();
        for row in rows {
            batch.delete(table, partition, row.key);
        }
        store.commit(batch).await?;
    }
}

async fn read_offset_raw(
    store: &dyn Store,
    consumer: &str,
) -> Result<(Option<Vec<u8>>, u64), StoreError> {
    let raw = store.get(OFFSETS, consumer, OFFSET_KEY).await?;
    let value = match &raw {
        None => 0,
        Some(bytes) => std::str::from_utf8(bytes)
            .ok()
            .and_then(|s| s.parse().ok())
            .ok_or_else(|| StoreError::Corrupt(format!("offset of consumer {consumer}")))?,
    };
    Ok((raw, value))
}

pub(super) async fn read_offset(store: &dyn Store, consumer: &str) -> Result<u64, StoreError> {
    Ok(read_offset_raw(store, consumer).await?.1)
}

/// Adds "offset := position" to `batch` when it moves the offset forward,
/// guarded by the value read (so concurrent writers never move it back).
pub(super) async fn push_offset(
    store: &dyn Store,
    consumer: &str,
    batch: &mut WriteBatch,
    position: u64,
) -> Result<(), StoreError> {
    let (raw, current) = read_offset_raw(store, consumer).await?;
    if position > current {
        batch.expect(OFFSETS, consumer, OFFSET_KEY, raw).put(
            OFFSETS,
            consumer,
            OFFSET_KEY,
            position.to_string().into_bytes(),
        );
    }
    Ok(())
}
