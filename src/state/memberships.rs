//! The `memberships` table: the diff's reads and writes, delivery's pages and acknowledgements.

use super::Store;

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
