//! The pure rules of a commit: which row each write addresses, how a batch's
//! conditions evaluate against the stored values (in batch order, exactly
//! like the embedded store), how a single-partition batch folds into one
//! guarded statement per row, and how an LWT answer is read.

use crate::storage::{StoreError, Write};
use scylla::response::query_result::QueryResult;
use scylla::value::CqlValue;
use std::collections::HashMap;

/// A row returned by a conditional write: column name to value.
pub(super) type ReturnedRow = HashMap<String, Option<CqlValue>>;

/// A row's full address: table, partition, key.
pub(super) type RowRef = (String, String, String);

/// The final effect of a batch on one row.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) enum Mutation {
    Put(Vec<u8>),
    Delete,
}

/// A row of a single-partition conditional batch: its pre-batch guard
/// (`Some(None)`: absent, `Some(Some(v))`: holds `v`) and its final mutation.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) struct Guarded {
    pub(super) row: RowRef,
    pub(super) guard: Option<Option<Vec<u8>>>,
    pub(super) mutation: Option<Mutation>,
}

pub(super) fn row_ref(w: &Write) -> RowRef {
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

pub(super) fn condition_failed(writes: &[Write], index: usize) -> StoreError {
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
pub(super) fn evaluate(
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
pub(super) fn merge(writes: &[Write]) -> Option<Vec<Guarded>> {
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
pub(super) fn lwt_outcome(result: QueryResult) -> Result<(bool, Vec<ReturnedRow>), String> {
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
pub(super) fn current_from_returned(
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::storage::WriteBatch;

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
}
