//! Delivery's reads: pending rows in pages, in user order.
//!
//! An initial pass reads every row of a big audience back here, so the pages come through a
//! read-only rusqlite connection on a blocking thread rather than sqlx's row-at-a-time channel
//! (see `scan`).

use std::sync::LazyLock;

use rusqlite::{Connection, OpenFlags, params};

use super::stored::ACKED_APART;
use super::{Store, stored};
use crate::change::{PendingRow, PendingValue};
use crate::config::Kind;
use crate::state::delivery::{PendingPages, PendingReader, whole_users};

/// Reads pending pages of a fixed set of computations. Blocking.
struct Pages {
    db: Connection,
    /// The computations' numbers, as a JSON array.
    ids_json: String,
    times: stored::Times,
}

// INDEXED BY: left to itself the planner searches the primary key by computation and sorts,
// re-reading every remaining row of the computation for each page (quadratic). A row
// acknowledged with its desired value since the last diff is not pending (`acknowledged`).
static PAGE: LazyLock<String> = LazyLock::new(|| {
    format!(
        "SELECT m.user_id, c.key, m.desired, m.updated_at, c.kind \
         FROM member_rows m INDEXED BY member_rows_pending JOIN computations c ON c.id = m.computation_id \
         WHERE m.desired IS NOT m.synced AND m.quarantined_at IS NULL AND m.user_id > ?1 AND NOT {ACKED_APART} \
         AND m.computation_id IN (SELECT value FROM json_each(?2)) \
         ORDER BY m.user_id, m.computation_id LIMIT ?3"
    )
});
static ONE_USER: LazyLock<String> = LazyLock::new(|| {
    format!(
        "SELECT m.user_id, c.key, m.desired, m.updated_at, c.kind \
         FROM member_rows m INDEXED BY member_rows_pending JOIN computations c ON c.id = m.computation_id \
         WHERE m.desired IS NOT m.synced AND m.quarantined_at IS NULL AND m.user_id = ?1 AND NOT {ACKED_APART} \
         AND m.computation_id IN (SELECT value FROM json_each(?2)) ORDER BY c.key"
    )
});

impl Store {
    /// A reader of the pending rows of the computations `keys`. Blocking.
    pub fn pending_reader(&self, keys: &[String]) -> anyhow::Result<PendingReader> {
        let db = Connection::open_with_flags(
            &self.path,
            OpenFlags::SQLITE_OPEN_READ_ONLY | OpenFlags::SQLITE_OPEN_NO_MUTEX,
        )?;
        super::wait_for_locks(&db)?;
        let ids_json = db.query_row(
            "SELECT json_group_array(id) FROM computations WHERE key IN (SELECT value FROM json_each(?1))",
            [serde_json::to_string(keys)?],
            |r| r.get(0),
        )?;
        Ok(PendingReader::new(Box::new(Pages { db, ids_json, times: stored::Times::default() })))
    }
}

impl PendingPages for Pages {
    fn page(&mut self, after: &str, limit: usize) -> anyhow::Result<Vec<PendingRow>> {
        let rows = query(&self.db, &mut self.times, &PAGE, params![after, self.ids_json, limit as i64])?;
        whole_users(rows, limit, |last| query(&self.db, &mut self.times, &ONE_USER, params![last, self.ids_json]))
    }
}

/// The rows `sql` selects.
fn query(
    db: &Connection,
    times: &mut stored::Times,
    sql: &str,
    params: impl rusqlite::Params,
) -> anyhow::Result<Vec<PendingRow>> {
    let mut statement = db.prepare_cached(sql)?;
    let rows = statement.query_map(params, |r| {
        let value = stored::value_text(r.get_ref(2)?)?.to_string();
        let changed_at = times.text(r.get(3)?);
        let value = PendingValue { key: r.get(1)?, value, kind: kind(r, 4)?, changed_at };
        Ok(PendingRow { user_id: r.get(0)?, value })
    })?;
    Ok(rows.collect::<rusqlite::Result<Vec<_>>>()?)
}

/// `computations.kind` of column `i`, decoded.
fn kind(row: &rusqlite::Row, i: usize) -> rusqlite::Result<Kind> {
    match row.get_ref(i)?.as_str()? {
        "audience" => Ok(Kind::Audience),
        "computed_trait" => Ok(Kind::ComputedTrait),
        other => Err(rusqlite::Error::FromSqlConversionFailure(
            i,
            rusqlite::types::Type::Text,
            format!("unknown computation kind {other:?}").into(),
        )),
    }
}

#[cfg(test)]
mod tests {
    use crate::state::testing::store_with_audience;

    /// A row acknowledged since the last diff is not pending, though its `member_rows` row says
    /// so until the next diff folds the acknowledgement in; acknowledged with another value than
    /// the one wanted now, it still is.
    #[tokio::test]
    async fn a_row_acknowledged_with_its_value_since_the_last_diff_is_not_read_again() {
        let dir = tempfile::tempdir().unwrap();
        let (store, db) = store_with_audience(dir.path()).await;
        for user in ["u1", "u2", "u3"] {
            db.execute(
                "INSERT INTO member_rows (computation_id, user_id, desired, updated_at) VALUES (1, ?1, 1, 0)",
                [user],
            )
            .unwrap();
        }
        db.execute("INSERT INTO acknowledged VALUES (1, 'u1', 1, 5), (1, 'u3', 0, 5)", []).unwrap();

        let mut reader = store.pending_reader(&["a".into()]).unwrap();
        let users: Vec<String> = reader.page("", 10).unwrap().into_iter().map(|r| r.user_id).collect();
        assert_eq!(users, ["u2", "u3"]);
    }
}
