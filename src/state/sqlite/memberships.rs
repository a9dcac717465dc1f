//! The `memberships` table: the diff's reads and writes, delivery's pages and acknowledgements.

use std::collections::BTreeMap;

use std::sync::LazyLock;

use sqlx::AssertSqlSafe;

use super::Store;
use super::stored::{ACKED_APART, FOLD_ACKNOWLEDGED, millis, stored_time, stored_value};

/// A first sync's window: its users still without a row get one, pending, with the value sent.
/// Its users are in the first sync's queue ...
static SETTLE_QUEUED: LazyLock<String> = LazyLock::new(|| {
    format!(
        "INSERT INTO member_rows (computation_id, user_id, desired, updated_at, first_sent_at) \
         SELECT c.id, u.value ->> 0, {}, {}, ?4 \
         FROM first_sync_queue q JOIN computations c ON c.key = q.computation_key, json_each(q.users) u \
         WHERE q.computation_key = ?1 AND q.last_user > ?2 AND q.after_user < ?3 \
           AND u.value ->> 0 > ?2 AND u.value ->> 0 <= ?3 \
         ON CONFLICT (computation_id, user_id) DO NOTHING",
        stored_value("(u.value ->> 1)"),
        stored_time("q.changed_at")
    )
});

/// ... or, for a window noted by an older version, in the window.
static SETTLE_NOTED: LazyLock<String> = LazyLock::new(|| {
    format!(
        "INSERT INTO member_rows (computation_id, user_id, desired, updated_at, first_sent_at) \
         SELECT c.id, u.value ->> 0, {}, ?3, ?4 FROM computations c, json_each(?2) u WHERE c.key = ?1 \
         ON CONFLICT (computation_id, user_id) DO NOTHING",
        stored_value("(u.value ->> 1)")
    )
});

/// The acknowledgements of the computations `?1` (a JSON array of keys) not yet folded into their
/// rows by a diff, folded in.
static FOLD_OF_KEYS: LazyLock<String> = LazyLock::new(|| {
    format!(
        "{FOLD_ACKNOWLEDGED} (computation_id, user_id) IN (SELECT computation_id, user_id FROM acknowledged \
         WHERE computation_id IN (SELECT id FROM computations WHERE key IN (SELECT value FROM json_each(?1))))"
    )
});

/// A window's pending rows not acknowledged since: they may have reached the destination.
static MARK_SENT: LazyLock<String> = LazyLock::new(|| {
    format!(
        "UPDATE member_rows AS m SET first_sent_at = ?4 \
         WHERE computation_id = (SELECT id FROM computations WHERE key = ?1) AND user_id > ?2 AND user_id <= ?3 \
         AND desired IS NOT synced AND first_sent_at IS NULL AND NOT {ACKED_APART}"
    )
});

/// Pending rows per computation, through the pending index. The computation is tested first,
/// on the index entry: the lookup in `acknowledged` then runs only for rows of the computations
/// asked about, not for every pending row of the state (a pass of one computation asks).
static PENDING_COUNTS: LazyLock<String> = LazyLock::new(|| {
    format!(
        "SELECT c.key, count(*) FROM member_rows m INDEXED BY member_rows_pending \
         JOIN computations c ON c.id = m.computation_id \
         WHERE m.computation_id IN (SELECT id FROM computations WHERE key IN (SELECT value FROM json_each(?1))) \
         AND m.desired IS NOT m.synced AND NOT {ACKED_APART} GROUP BY c.key"
    )
});

/// A `sending_windows` row left by a process that died: after_user, last_user, noted_at, and a
/// first sync's users and changed_at.
type LeftWindow = (String, String, String, Option<String>, Option<String>);

impl Store {
    /// Settles what a process that died mid-delivery left of `key`: in each of its windows
    /// (`sending_windows`), the unacknowledged pending rows may have reached the destination,
    /// so they are marked `first_sent_at` (the diff then tells a leaving user `false` instead of
    /// forgetting them, and re-sends a value that came back to the one last acknowledged), a first sync's users not in the state get such a
    /// row (from its queue, so call it before dropping that), and the windows are dropped.
    /// Call it holding the computation's lease, before its diff. Returns how many rows were marked.
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
        let mut tx = self.begin_holding(&[key.to_string()]).await?;
        let windows: Vec<LeftWindow> = sqlx::query_as(
            "SELECT after_user, last_user, noted_at, users, changed_at FROM sending_windows \
             WHERE computation_key = ?1 ORDER BY id",
        )
        .bind(key)
        .fetch_all(&mut *tx)
        .await?;
        let mut marked = 0;
        for (after, last, noted_at, users, changed_at) in &windows {
            let noted_ms = millis(noted_at)?;
            // A first sync's window: its users have no rows until acknowledged. Those still
            // without one get a pending row with the value sent, told; they are in the first
            // sync's queue (or, for a window noted by an older version, in the window). Then
            // the pending rows in the window are marked too.
            for sql in [&SETTLE_QUEUED, &MARK_SENT] {
                marked += sqlx::query(AssertSqlSafe(sql.as_str()))
                    .bind(key)
                    .bind(after)
                    .bind(last)
                    .bind(noted_ms)
                    .execute(&mut *tx)
                    .await?
                    .rows_affected();
            }
            if let Some(users) = users {
                marked += sqlx::query(AssertSqlSafe(SETTLE_NOTED.as_str()))
                    .bind(key)
                    .bind(users)
                    .bind(millis(changed_at.as_deref().unwrap_or(noted_at))?)
                    .bind(noted_ms)
                    .execute(&mut *tx)
                    .await?
                    .rows_affected();
            }
        }
        if !windows.is_empty() {
            sqlx::query("DELETE FROM sending_windows WHERE computation_key = ?1").bind(key).execute(&mut *tx).await?;
        }
        tx.commit().await?;
        Ok(marked)
    }

    /// Whether the state holds any row of `key`; without one its diff is a first sync.
    pub async fn has_rows(&self, key: &str) -> anyhow::Result<bool> {
        let any = sqlx::query_scalar(
            "SELECT EXISTS (SELECT 1 FROM member_rows WHERE computation_id = (SELECT id FROM computations WHERE key = ?1))",
        )
            .bind(key)
            .fetch_one(&self.pool)
            .await?;
        Ok(any)
    }

    /// Marks rows pending again so that their current value is re-sent: every row of the
    /// computations `keys`, or only `user`'s. Quarantine and failure counts start afresh.
    /// Returns how many rows were marked. `moving_to`: the destination the state moves to, in
    /// the same transaction.
    pub async fn mark_for_resync(
        &self,
        keys: &[String],
        user: Option<&str>,
        moving_to: Option<&str>,
    ) -> anyhow::Result<u64> {
        let mut tx = self.begin_immediate().await?;
        if let Some(identity) = moving_to {
            super::destination::move_to(&mut tx, identity).await?;
        }
        // A resync clears `synced` where the acknowledgements since the last diff would set it.
        let keys_json = serde_json::to_string(keys)?;
        fold_acknowledged(&mut tx, &keys_json).await?;
        let done = sqlx::query(
            "UPDATE member_rows SET synced = NULL, attempts = 0, last_error = NULL, quarantined_at = NULL \
             WHERE computation_id IN (SELECT id FROM computations WHERE key IN (SELECT value FROM json_each(?1))) \
             AND (?2 IS NULL OR user_id = ?2)",
        )
        .bind(&keys_json)
        .bind(user)
        .execute(&mut *tx)
        .await?;
        tx.commit().await?;
        Ok(done.rows_affected())
    }

    /// Folds the acknowledgements of `key` recorded since its last diff into its rows, when there
    /// are any. For a pass whose diff was skipped (the file unchanged): until folded, every pass
    /// reads them again with the pending rows, where a fold writes their pages once.
    pub async fn fold_acknowledged(&self, key: &str) -> anyhow::Result<()> {
        let any: bool = sqlx::query_scalar(
            "SELECT EXISTS (SELECT 1 FROM acknowledged WHERE computation_id = (SELECT id FROM computations WHERE key = ?1))",
        )
        .bind(key)
        .fetch_one(&self.pool)
        .await?;
        if any {
            let mut tx = self.begin_holding(&[key.to_string()]).await?;
            fold_acknowledged(&mut tx, &serde_json::to_string(&[key])?).await?;
            tx.commit().await?;
        }
        Ok(())
    }

    /// Pending rows of each of `keys` (those with none are left out), in one read of the
    /// pending index: a count per computation would read it whole once per computation.
    pub async fn pending_counts(&self, keys: &[String]) -> anyhow::Result<BTreeMap<String, u64>> {
        let counts: Vec<(String, i64)> = sqlx::query_as(AssertSqlSafe(PENDING_COUNTS.as_str()))
            .bind(serde_json::to_string(keys)?)
            .fetch_all(&self.pool)
            .await?;
        Ok(counts.into_iter().map(|(key, n)| (key, n as u64)).collect())
    }

    /// What is pending for `key` as `computation_status` counts it: its pending rows and the
    /// members a first sync still owes.
    pub async fn pending_count(&self, key: &str) -> anyhow::Result<u64> {
        let n: Option<i64> = sqlx::query_scalar("SELECT pending FROM computation_status WHERE key = ?1")
            .bind(key)
            .fetch_optional(&self.pool)
            .await?;
        Ok(n.unwrap_or(0) as u64)
    }
}

/// Folds the acknowledgements of the computations `keys_json` (a JSON array) into their rows.
async fn fold_acknowledged(tx: &mut sqlx::SqliteConnection, keys_json: &str) -> anyhow::Result<()> {
    sqlx::query(AssertSqlSafe(FOLD_OF_KEYS.as_str())).bind(keys_json).execute(&mut *tx).await?;
    sqlx::query(
        "DELETE FROM acknowledged WHERE computation_id IN \
         (SELECT id FROM computations WHERE key IN (SELECT value FROM json_each(?1)))",
    )
    .bind(keys_json)
    .execute(&mut *tx)
    .await?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use crate::state::testing::{second, store_with_audience};

    /// user_id, desired, synced, updated_at, first_sent_at
    type Row = (String, String, Option<String>, String, Option<String>);

    /// A resync re-sends a row acknowledged since the last diff too, and keeps it told (its
    /// `synced_at`), so that a later exit is sent as `false`.
    #[tokio::test]
    async fn a_resync_re_sends_a_row_acknowledged_since_the_last_diff_and_keeps_it_told() {
        let dir = tempfile::tempdir().unwrap();
        let (store, db) = store_with_audience(dir.path()).await;
        let ms = |t: &str| super::millis(t).unwrap();
        db.execute(
            "INSERT INTO member_rows (computation_id, user_id, desired, updated_at) VALUES (1, 'u1', 1, ?1)",
            [ms(&second(1))],
        )
        .unwrap();
        db.execute("INSERT INTO acknowledged VALUES (1, 'u1', 1, ?1)", [ms(&second(2))]).unwrap();
        assert_eq!(store.pending_counts(&["a".into()]).await.unwrap().len(), 0);

        assert_eq!(store.mark_for_resync(&["a".into()], None, None).await.unwrap(), 1);
        let row: (String, Option<String>, Option<String>) = db
            .query_row("SELECT desired, synced, synced_at FROM memberships WHERE user_id = 'u1'", [], |r| {
                Ok((r.get(0)?, r.get(1)?, r.get(2)?))
            })
            .unwrap();
        assert_eq!(row, ("true".to_string(), None, Some(second(2))));
        assert_eq!(store.pending_counts(&["a".into()]).await.unwrap().get("a"), Some(&1));
    }

    #[tokio::test]
    async fn a_first_syncs_left_window_gives_its_users_their_sent_value_told_and_pending() {
        let dir = tempfile::tempdir().unwrap();
        let (store, db) = store_with_audience(dir.path()).await;
        // u2's answer was recorded before the kill; u1 and u3 were in flight.
        let (t1, t2) = (second(1), second(2));
        let ms = |t: &str| super::millis(t).unwrap();
        db.execute(
            "INSERT INTO member_rows (computation_id, user_id, desired, synced, updated_at, synced_at) \
             VALUES (1, 'u2', '5', '5', ?1, ?2)",
            [ms(&t1), ms(&t2)],
        )
        .unwrap();
        db.execute(
            "INSERT INTO sending_windows (computation_key, after_user, last_user, noted_at, users, changed_at) \
             VALUES ('a', '', 'u3', ?2, ?1, ?3)",
            [r#"[["u1","\"gold\""],["u2","5"],["u3","true"]]"#, &t2, &t1],
        )
        .unwrap();

        assert_eq!(store.settle_sending_windows("a").await.unwrap(), 2);
        let mut rows = db
            .prepare("SELECT user_id, desired, synced, updated_at, first_sent_at FROM memberships ORDER BY user_id")
            .unwrap();
        let rows: Vec<Row> = rows
            .query_map([], |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?, r.get(3)?, r.get(4)?)))
            .unwrap()
            .collect::<Result<_, _>>()
            .unwrap();
        let row = |u: &str, d: &str, s: Option<&str>, at: &str, first: Option<&str>| -> Row {
            (u.to_string(), d.to_string(), s.map(String::from), at.to_string(), first.map(String::from))
        };
        assert_eq!(
            rows,
            vec![
                row("u1", "\"gold\"", None, &t1, Some(&t2)),
                row("u2", "5", Some("5"), &t1, None),
                row("u3", "true", None, &t1, Some(&t2)),
            ]
        );
        let left: i64 = db.query_row("SELECT count(*) FROM sending_windows", [], |r| r.get(0)).unwrap();
        assert_eq!(left, 0);
    }
}
