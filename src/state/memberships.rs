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

/// A `sending_windows` row left by a process that died: after_user, last_user, noted_at, and a
/// first sync's users and changed_at.
type LeftWindow = (String, String, String, Option<String>, Option<String>);

impl Store {
    /// Settles what a process that died mid-delivery left of `key`: in each of its windows
    /// (`sending_windows`), the never-acknowledged pending rows may have reached the
    /// destination, so they are marked `first_sent_at` (the diff then tells a leaving user
    /// `false` instead of forgetting them), a first sync's users not in the state get such a
    /// row, and the windows are dropped. Call it holding the
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
        let windows: Vec<LeftWindow> = sqlx::query_as(
            "SELECT after_user, last_user, noted_at, users, changed_at FROM sending_windows \
             WHERE computation_key = ?1 ORDER BY id",
        )
        .bind(key)
        .fetch_all(&mut *tx)
        .await?;
        let mut marked = 0;
        for (after, last, noted_at, users, changed_at) in &windows {
            // A first sync's window: its users have no rows until acknowledged. Those still
            // without one get a pending row with the value sent, told (see migration 0008).
            if let Some(users) = users {
                marked += sqlx::query(
                    "INSERT INTO memberships (computation_key, user_id, desired, updated_at, first_sent_at) \
                     SELECT ?1, u.value ->> 0, u.value ->> 1, ?3, ?4 FROM json_each(?2) u WHERE true \
                     ON CONFLICT (computation_key, user_id) DO NOTHING",
                )
                .bind(key)
                .bind(users)
                .bind(changed_at.as_deref().unwrap_or(noted_at))
                .bind(noted_at)
                .execute(&mut *tx)
                .await?
                .rows_affected();
            }
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

    /// Whether the state holds any row of `key`; without one its diff is a first sync.
    pub async fn has_rows(&self, key: &str) -> anyhow::Result<bool> {
        let any = sqlx::query_scalar("SELECT EXISTS (SELECT 1 FROM memberships WHERE computation_key = ?1)")
            .bind(key)
            .fetch_one(&self.pool)
            .await?;
        Ok(any)
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
