//! The CQL side of the adapter: the statement templates and the functions
//! that bind a batch's rows and outbox events to them, in CQL marker order.

use super::plan::{Guarded, Mutation, RowRef};
use super::{BUCKET_SIZE, LOCK_KEY, PAGE_SIZE};
use crate::storage::{OutboxEvent, StoreError};
use scylla::value::CqlValue;

pub(super) const GET: &str =
    "SELECT key, value FROM {ks}.rows WHERE tbl = ? AND partition = ? AND key = ?";
pub(super) const GET_SERIAL: &str =
    "SELECT value, WRITETIME(value) FROM {ks}.rows WHERE tbl = ? AND partition = ? AND key = ?";
pub(super) const SCAN: &str = "SELECT key, value FROM {ks}.rows WHERE tbl = ? AND partition = ?";
pub(super) const SCAN_AFTER: &str =
    "SELECT key, value FROM {ks}.rows WHERE tbl = ? AND partition = ? AND key > ?";
pub(super) const PUT: &str =
    "INSERT INTO {ks}.rows (tbl, partition, key, value) VALUES (?, ?, ?, ?)";
pub(super) const PUT_IF_ABSENT: &str =
    "INSERT INTO {ks}.rows (tbl, partition, key, value) VALUES (?, ?, ?, ?) IF NOT EXISTS";
pub(super) const DELETE: &str = "DELETE FROM {ks}.rows WHERE tbl = ? AND partition = ? AND key = ?";
pub(super) const UPDATE_IF: &str =
    "UPDATE {ks}.rows SET value = ? WHERE tbl = ? AND partition = ? AND key = ? IF value = ?";
pub(super) const DELETE_IF: &str =
    "DELETE FROM {ks}.rows WHERE tbl = ? AND partition = ? AND key = ? IF value = ?";
pub(super) const GUARD_ABSENT: &str =
    "UPDATE {ks}.rows SET value = null WHERE tbl = ? AND partition = ? AND key = ? IF value = null";
pub(super) const LOCK_ACQUIRE: &str = "INSERT INTO {ks}.rows (tbl, partition, key, value) VALUES (?, ?, ?, ?) IF NOT EXISTS USING TTL {ttl}";
pub(super) const OUTBOX_PUT: &str = "INSERT INTO {ks}.outbox (bucket, seq, aggregate_id, event_type, payload) VALUES (?, ?, ?, ?, ?)";
pub(super) const OUTBOX_READ: &str =
    "SELECT seq, aggregate_id, event_type, payload FROM {ks}.outbox WHERE bucket = ? AND seq > ?";
pub(super) const SEQ_READ: &str = "SELECT next FROM {ks}.outbox_seq WHERE name = ?";
pub(super) const SEQ_INIT: &str =
    "INSERT INTO {ks}.outbox_seq (name, next) VALUES (?, ?) IF NOT EXISTS";
pub(super) const SEQ_CAS: &str = "UPDATE {ks}.outbox_seq SET next = ? WHERE name = ? IF next = ?";

/// A statement template and its bound values.
pub(super) type Statement = (&'static str, Vec<CqlValue>);

pub(super) fn text(s: String) -> CqlValue {
    CqlValue::Text(s)
}

/// The statements of a single-partition conditional batch: a guard that the
/// partition is not locked, then one statement per row; and the rows whose
/// pre-batch values decide a failure (the lock lease first).
pub(super) fn conditional_statements(
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

pub(super) fn cat<const N: usize>(parts: [Vec<CqlValue>; N]) -> Vec<CqlValue> {
    parts.into_iter().flatten().collect()
}

/// Writes as batch statements.
pub(super) fn write_statements(final_rows: Vec<(RowRef, Mutation)>) -> Vec<Statement> {
    final_rows
        .into_iter()
        .map(|((t, p, k), m)| match m {
            Mutation::Put(v) => (PUT, vec![text(t), text(p), text(k), CqlValue::Blob(v)]),
            Mutation::Delete => (DELETE, vec![text(t), text(p), text(k)]),
        })
        .collect()
}

/// Outbox rows for `events` at consecutive offsets from `first`.
pub(super) fn outbox_statements(
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

pub(super) fn page_size(want: usize) -> i32 {
    want.clamp(1, PAGE_SIZE) as i32
}

pub(super) fn to_i64(v: u64) -> Result<i64, StoreError> {
    i64::try_from(v).map_err(|_| StoreError::Corrupt(format!("offset {v} is out of range")))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::storage::WriteBatch;
    use crate::storage::scylla::plan::merge;

    fn r(t: &str, p: &str, k: &str) -> RowRef {
        (t.into(), p.into(), k.into())
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
        assert_binds_match(&write_statements(writes));
        let events = vec![
            OutboxEvent {
                aggregate_id: "a".into(),
                event_type: "T".into(),
                payload: vec![1],
            };
            2
        ];
        let first = BUCKET_SIZE - 1;
        let outbox = outbox_statements(first, events).expect("in range");
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
}
