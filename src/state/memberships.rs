//! The `memberships` table: the diff's reads and writes, delivery's pages and acknowledgements.

use super::Store;

/// What the destination said about one value sent for one row.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Outcome {
    pub computation_key: String,
    pub user_id: String,
    /// The JSON text that was sent.
    pub sent: String,
    /// The row's `updated_at` when it was read for sending.
    pub changed_at: String,
    /// `None` when acknowledged (2xx), else why not.
    pub error: Option<String>,
}

impl Store {
    /// Settles what a process that died mid-delivery left of `key`: in each of its windows
    /// (`sending_windows`), the never-acknowledged pending rows may have reached the
    /// destination, so they are marked `first_sent_at` (the diff then tells a leaving user
    /// `false` instead of forgetting them), and the windows are dropped. Call it holding the
    /// computation's lease, before its diff. Returns how many rows were marked.
    pub async fn settle_sending_windows(&self, key: &str) -> anyhow::Result<u64> {
        // Almost always there is nothing to settle: find that out without waiting for the write
        // lock, which another pass's long diff may hold.
        let left: bool = sqlx::query_scalar("SELECT EXISTS (SELECT 1 FROM sending_windows WHERE computation_key = ?1)")
            .bind(key)
            .fetch_one(&self.pool)
            .await?;
        if !left {
            return Ok(0);
        }
        let mut tx = self.begin_immediate().await?;
        let windows: Vec<(String, String, String)> = sqlx::query_as(
            "SELECT after_user, last_user, noted_at FROM sending_windows WHERE computation_key = ?1 ORDER BY id",
        )
        .bind(key)
        .fetch_all(&mut *tx)
        .await?;
        let mut marked = 0;
        for (after, last, noted_at) in &windows {
            marked += sqlx::query(
                "UPDATE memberships SET first_sent_at = ?4 \
                 WHERE computation_key = ?1 AND user_id > ?2 AND user_id <= ?3 \
                 AND desired IS NOT synced AND synced_at IS NULL AND first_sent_at IS NULL",
            )
            .bind(key)
            .bind(after)
            .bind(last)
            .bind(noted_at)
            .execute(&mut *tx)
            .await?
            .rows_affected();
        }
        if !windows.is_empty() {
            sqlx::query("DELETE FROM sending_windows WHERE computation_key = ?1").bind(key).execute(&mut *tx).await?;
        }
        tx.commit().await?;
        Ok(marked)
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
