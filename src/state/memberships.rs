//! The `memberships` table: the diff's reads and writes, delivery's pages and acknowledgements.

use sqlx::{QueryBuilder, Sqlite, Transaction};

use super::{Store, now};
use crate::diff::Op;
use crate::source::fingerprint::Fingerprint;

/// Rows per multi-row statement; 4 binds a row stays far below SQLite's variable limit.
const WRITE_BATCH: usize = 1000;

/// A pending row handed to delivery.
#[derive(Debug, Clone, PartialEq, Eq, sqlx::FromRow)]
pub struct PendingRow {
    pub user_id: String,
    pub computation_key: String,
    pub desired: String,
    pub updated_at: String,
    /// The computation's kind: `audience` or `computed_trait`.
    pub kind: String,
}

/// What the destination said about one value sent for one row.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Outcome {
    pub computation_key: String,
    pub user_id: String,
    /// The JSON text that was sent.
    pub sent: String,
    /// `None` when acknowledged (2xx), else why not.
    pub error: Option<String>,
}

impl Store {
    /// Begins the write transaction of one computation's diff. Its writes count only once
    /// `commit` is called; dropping the writer (on any error) rolls them all back.
    pub async fn diff_writer(&self, key: &str) -> anyhow::Result<DiffWriter> {
        Ok(DiffWriter {
            tx: self.begin_immediate().await?,
            key: key.to_string(),
            now: now(),
            batch: Vec::with_capacity(WRITE_BATCH),
        })
    }

    /// Up to about `limit` pending rows of the computations `keys`, for users after `after`, in
    /// user order. A page never splits a user: the rows of its last user are all there.
    pub async fn pending_page(&self, keys: &[String], after: &str, limit: usize) -> anyhow::Result<Vec<PendingRow>> {
        let keys_json = serde_json::to_string(keys)?;
        // INDEXED BY: left to itself the planner searches the primary key by computation and
        // sorts, re-reading every remaining row of the computation for each page (quadratic).
        let query = "SELECT m.user_id, m.computation_key, m.desired, m.updated_at, c.kind \
             FROM memberships m INDEXED BY memberships_pending JOIN computations c ON c.key = m.computation_key \
             WHERE m.desired IS NOT m.synced AND m.quarantined_at IS NULL AND m.user_id > ?1 \
             AND m.computation_key IN (SELECT value FROM json_each(?2)) \
             ORDER BY m.user_id, m.computation_key LIMIT ?3";
        let mut rows: Vec<PendingRow> =
            sqlx::query_as(query).bind(after).bind(&keys_json).bind(limit as i64).fetch_all(&self.pool).await?;
        if rows.len() == limit
            && let Some(last) = rows.last().map(|r| r.user_id.clone())
        {
            let first_of_last = rows.iter().position(|r| r.user_id == last).unwrap_or(0);
            if first_of_last > 0 {
                // The last user may continue past the limit: leave them to the next page.
                rows.truncate(first_of_last);
            } else {
                // One user fills the whole page (more computations than the limit): take all of theirs.
                rows = sqlx::query_as(
                    "SELECT m.user_id, m.computation_key, m.desired, m.updated_at, c.kind \
                     FROM memberships m INDEXED BY memberships_pending JOIN computations c ON c.key = m.computation_key \
                     WHERE m.desired IS NOT m.synced AND m.quarantined_at IS NULL AND m.user_id = ?1 \
                     AND m.computation_key IN (SELECT value FROM json_each(?2)) ORDER BY m.computation_key",
                )
                .bind(&last)
                .bind(&keys_json)
                .fetch_all(&self.pool)
                .await?;
            }
        }
        Ok(rows)
    }

    /// Notes, before they are sent, that the never-acknowledged pending rows of users in
    /// (`after`, `last`] may reach the destination. Committed before the requests go, so that a
    /// kill during them cannot make the diff forget a user the destination may hold.
    pub async fn mark_sending(&self, keys: &[String], after: &str, last: &str) -> anyhow::Result<()> {
        sqlx::query(
            "UPDATE memberships INDEXED BY memberships_pending SET first_sent_at = ?1 \
             WHERE desired IS NOT synced AND quarantined_at IS NULL AND synced_at IS NULL AND first_sent_at IS NULL \
             AND user_id > ?2 AND user_id <= ?3 AND computation_key IN (SELECT value FROM json_each(?4))",
        )
        .bind(now())
        .bind(after)
        .bind(last)
        .bind(serde_json::to_string(keys)?)
        .execute(&self.pool)
        .await?;
        Ok(())
    }

    /// Marks rows pending again so that their current value is re-sent: every row of the
    /// computations `keys`, or only `user`'s. Quarantine and failure counts start afresh.
    /// Returns how many rows were marked.
    pub async fn mark_for_resync(&self, keys: &[String], user: Option<&str>) -> anyhow::Result<u64> {
        let mut tx = self.begin_immediate().await?;
        let done = sqlx::query(
            "UPDATE memberships SET synced = NULL, attempts = 0, last_error = NULL, quarantined_at = NULL \
             WHERE computation_key IN (SELECT value FROM json_each(?1)) AND (?2 IS NULL OR user_id = ?2)",
        )
        .bind(serde_json::to_string(keys)?)
        .bind(user)
        .execute(&mut *tx)
        .await?;
        tx.commit().await?;
        Ok(done.rows_affected())
    }

    /// Pending rows of `key` (all of them, failed or not).
    pub async fn pending_count(&self, key: &str) -> anyhow::Result<u64> {
        let n: i64 = sqlx::query_scalar(
            "SELECT count(*) FROM memberships INDEXED BY memberships_pending \
             WHERE desired IS NOT synced AND computation_key = ?1",
        )
        .bind(key)
        .fetch_one(&self.pool)
        .await?;
        Ok(n as u64)
    }
}

/// The diff's writes for one computation, batched inside one IMMEDIATE transaction.
pub struct DiffWriter {
    tx: Transaction<'static, Sqlite>,
    key: String,
    now: String,
    batch: Vec<Op>,
}

impl DiffWriter {
    /// Adds one op of the diff, writing a batch when enough have gathered.
    pub async fn push(&mut self, op: Op) -> anyhow::Result<()> {
        self.batch.push(op);
        if self.batch.len() >= WRITE_BATCH {
            self.flush().await?;
        }
        Ok(())
    }

    async fn flush(&mut self) -> anyhow::Result<()> {
        let (sets, forgets): (Vec<Op>, Vec<Op>) = self.batch.drain(..).partition(|op| matches!(op, Op::Set { .. }));
        if !sets.is_empty() {
            let mut q =
                QueryBuilder::<Sqlite>::new("INSERT INTO memberships (computation_key, user_id, desired, updated_at) ");
            q.push_values(sets, |mut row, op| {
                let Op::Set { user_id, desired, .. } = op else { unreachable!("partitioned") };
                row.push_bind(self.key.clone()).push_bind(user_id).push_bind(desired).push_bind(self.now.clone());
            });
            // A new desired value is a new delivery: its attempts and error start afresh.
            q.push(
                " ON CONFLICT (computation_key, user_id) DO UPDATE SET desired = excluded.desired, \
                 updated_at = excluded.updated_at, attempts = 0, last_error = NULL, quarantined_at = NULL",
            );
            q.build().execute(&mut *self.tx).await?;
        }
        if !forgets.is_empty() {
            let mut q = QueryBuilder::<Sqlite>::new("DELETE FROM memberships WHERE computation_key = ");
            q.push_bind(self.key.clone()).push(" AND user_id IN (");
            let mut list = q.separated(", ");
            for op in forgets {
                let Op::Forget { user_id } = op else { unreachable!("partitioned") };
                list.push_bind(user_id);
            }
            q.push(")");
            q.build().execute(&mut *self.tx).await?;
        }
        Ok(())
    }

    /// Writes what is buffered and commits the diff, noting the fingerprint of the file snapshot
    /// it came from (and its rows), in the same transaction.
    pub async fn commit(mut self, snapshot: Option<(&Fingerprint, u64)>) -> anyhow::Result<()> {
        self.flush().await?;
        if let Some((fp, rows)) = snapshot {
            sqlx::query(
                "UPDATE computations SET snapshot_size = ?2, snapshot_modified_at = ?3, snapshot_sha256 = ?4, snapshot_rows = ?5 \
                 WHERE key = ?1",
            )
            .bind(&self.key)
            .bind(fp.size as i64)
            .bind(&fp.modified_at)
            .bind(&fp.sha256)
            .bind(rows as i64)
            .execute(&mut *self.tx)
            .await?;
        }
        self.tx.commit().await?;
        Ok(())
    }
}
