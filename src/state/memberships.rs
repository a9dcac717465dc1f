//! The `memberships` table: the diff's reads and writes, delivery's pages and acknowledgements.

use super::Store;

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
