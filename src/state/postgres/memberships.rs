//! `member_rows` and what hangs on them outside the bulk paths: settling what a dead worker's
//! delivery left, resyncs, pending counts, a first sync's queue dropped, history pruned.

use std::collections::BTreeMap;

use super::Store;
use crate::state::times::millis;

/// A `sending_windows` row left by a process that died: after_user, last_user, noted_at, and a
/// first sync's users and changed_at.
type LeftWindow = (String, String, String, Option<String>, Option<String>);

impl Store {
    /// Settles what a process that died mid-delivery left of `key` (see the SQLite backend):
    /// in each of its windows, unacknowledged pending rows are marked `first_sent_at`, a first
    /// sync's users not in the state get such a row, and the windows are dropped.
    pub async fn settle_sending_windows(&self, key: &str) -> anyhow::Result<u64> {
        let left: bool = sqlx::query_scalar("SELECT EXISTS (SELECT 1 FROM sending_windows WHERE computation_key = $1)")
            .bind(key)
            .fetch_one(&self.pool)
            .await?;
        if !left {
            return Ok(0);
        }
        let mut tx = self.begin_holding(&[key.to_string()]).await?;
        let windows: Vec<LeftWindow> = sqlx::query_as(
            "SELECT after_user, last_user, noted_at, users, changed_at FROM sending_windows \
             WHERE computation_key = $1 ORDER BY id FOR UPDATE",
        )
        .bind(key)
        .fetch_all(&mut *tx)
        .await?;
        let mut marked = 0;
        for (after, last, noted_at, users, changed_at) in &windows {
            let noted_ms = millis(noted_at)?;
            marked += sqlx::query(
                "INSERT INTO member_rows (computation_id, user_id, desired, updated_at, first_sent_at) \
                 SELECT c.id, u.value ->> 0, u.value ->> 1, \
                        (extract(epoch FROM q.changed_at::timestamptz) * 1000)::bigint, $4 \
                 FROM first_sync_queue q JOIN computations c ON c.key = q.computation_key, \
                      jsonb_array_elements(q.users::jsonb) u (value) \
                 WHERE q.computation_key = $1 AND q.last_user > $2 AND q.after_user < $3 \
                   AND u.value ->> 0 > $2 AND u.value ->> 0 <= $3 \
                 ON CONFLICT (computation_id, user_id) DO NOTHING",
            )
            .bind(key)
            .bind(after)
            .bind(last)
            .bind(noted_ms)
            .execute(&mut *tx)
            .await?
            .rows_affected();
            if let Some(users) = users {
                marked += sqlx::query(
                    "INSERT INTO member_rows (computation_id, user_id, desired, updated_at, first_sent_at) \
                     SELECT c.id, u.value ->> 0, u.value ->> 1, $3, $4 \
                     FROM computations c, jsonb_array_elements($2::jsonb) u (value) WHERE c.key = $1 \
                     ON CONFLICT (computation_id, user_id) DO NOTHING",
                )
                .bind(key)
                .bind(users)
                .bind(millis(changed_at.as_deref().unwrap_or(noted_at))?)
                .bind(noted_ms)
                .execute(&mut *tx)
                .await?
                .rows_affected();
            }
            marked += sqlx::query(
                "UPDATE member_rows SET first_sent_at = $4 \
                 WHERE computation_id = (SELECT id FROM computations WHERE key = $1) AND user_id > $2 AND user_id <= $3 \
                 AND desired IS DISTINCT FROM synced AND first_sent_at IS NULL",
            )
            .bind(key)
            .bind(after)
            .bind(last)
            .bind(noted_ms)
            .execute(&mut *tx)
            .await?
            .rows_affected();
        }
        sqlx::query("DELETE FROM sending_windows WHERE computation_key = $1").bind(key).execute(&mut *tx).await?;
        tx.commit().await?;
        Ok(marked)
    }

    pub async fn has_rows(&self, key: &str) -> anyhow::Result<bool> {
        let any = sqlx::query_scalar(
            "SELECT EXISTS (SELECT 1 FROM member_rows WHERE computation_id = (SELECT id FROM computations WHERE key = $1))",
        )
        .bind(key)
        .fetch_one(&self.pool)
        .await?;
        Ok(any)
    }

    /// Marks every row of `keys`, or only `user`'s, pending again; returns how many.
    /// As the SQLite backend's. Moving, the destination's row is locked first: a shard's
    /// answers check it (`hold_shard`), so none recorded from the old destination lands after
    /// the rows are marked.
    pub async fn mark_for_resync(
        &self,
        keys: &[String],
        user: Option<&str>,
        moving_to: Option<&str>,
    ) -> anyhow::Result<u64> {
        let mut tx = self.pool.begin().await?;
        if let Some(identity) = moving_to {
            super::destination::move_to(&mut tx, identity).await?;
        }
        let done = sqlx::query(
            "UPDATE member_rows SET synced = NULL, attempts = 0, last_error = NULL, quarantined_at = NULL \
             WHERE computation_id IN (SELECT id FROM computations WHERE key = ANY($1)) \
             AND ($2::text IS NULL OR user_id = $2)",
        )
        .bind(keys)
        .bind(user)
        .execute(&mut *tx)
        .await?;
        tx.commit().await?;
        Ok(done.rows_affected())
    }

    pub async fn pending_counts(&self, keys: &[String]) -> anyhow::Result<BTreeMap<String, u64>> {
        let counts: Vec<(String, i64)> = sqlx::query_as(
            "SELECT c.key, count(*) FROM member_rows m JOIN computations c ON c.id = m.computation_id \
             WHERE m.desired IS DISTINCT FROM m.synced AND c.key = ANY($1) GROUP BY c.key",
        )
        .bind(keys)
        .fetch_all(&self.pool)
        .await?;
        Ok(counts.into_iter().map(|(key, n)| (key, n as u64)).collect())
    }

    pub async fn pending_count(&self, key: &str) -> anyhow::Result<u64> {
        let n: Option<i64> = sqlx::query_scalar("SELECT pending FROM computation_status WHERE key = $1")
            .bind(key)
            .fetch_optional(&self.pool)
            .await?;
        Ok(n.unwrap_or(0) as u64)
    }

    pub async fn drop_first_sync_queue(&self, key: &str) -> anyhow::Result<()> {
        sqlx::query("DELETE FROM first_sync_queue WHERE computation_key = $1").bind(key).execute(&self.pool).await?;
        Ok(())
    }

    /// After a first sync: autovacuum gives back what its queue held; the planner's statistics
    /// of the rows it wrote are refreshed at once (`writers::analyze`).
    pub async fn give_back_free_pages(&self) -> anyhow::Result<()> {
        super::writers::analyze(&mut *self.pool.acquire().await?).await
    }

    /// Deletes the history older than the days kept.
    pub async fn prune_history(&self) -> anyhow::Result<()> {
        let Some((days, cutoff)) = crate::state::history_cutoff(self.keep_history_days) else { return Ok(()) };
        let gone = sqlx::query("DELETE FROM delivery_history WHERE answered_at < $1")
            .bind(&cutoff)
            .execute(&self.pool)
            .await?
            .rows_affected();
        tracing::debug!(rows = gone, days, "delivery history pruned");
        Ok(())
    }
}
