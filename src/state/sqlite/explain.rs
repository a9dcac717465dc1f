//! What `explain` reads of one user: read-only, in one read transaction, so that every
//! computation's answer comes from the same moment of the state.

use sqlx::SqliteConnection;

use super::Store;
use super::status::last_run_columns;
use crate::state::{DiffPass, MembershipRow, Queued, UserState};

impl Store {
    /// `user` in each computation of `keys`, with at most `history` of its latest deliveries.
    /// A state written before the first-sync queue or the history existed has none of them.
    pub async fn explain(&self, user: &str, keys: &[String], history: u32) -> anyhow::Result<Vec<UserState>> {
        let mut tx = self.pool.begin().await?;
        let has_queue = has_table(&mut tx, "first_sync_queue").await?;
        let has_history = has_table(&mut tx, "delivery_history").await?;
        let mut states = Vec::with_capacity(keys.len());
        for key in keys {
            let last_diff: Option<DiffPass> = sqlx::query_as(concat!(
                "SELECT id AS run_id, ",
                last_run_columns!(),
                " FROM sync_runs WHERE computation_key = ?1 AND snapshot_rows IS NOT NULL ORDER BY id DESC LIMIT 1"
            ))
            .bind(key)
            .fetch_optional(&mut *tx)
            .await?;
            let row: Option<MembershipRow> = sqlx::query_as(
                "SELECT desired, synced, updated_at, synced_at, attempts, last_error, quarantined_at, first_sent_at \
                 FROM memberships WHERE computation_key = ?1 AND user_id = ?2",
            )
            .bind(key)
            .bind(user)
            .fetch_optional(&mut *tx)
            .await?;
            // Runs of the queue cover consecutive users: the first ending at or after `user` is
            // the one run that can hold it. A member with a row has been answered.
            let queued: Option<Queued> = match row.is_none() && has_queue {
                true => {
                    sqlx::query_as(
                        "SELECT u.value ->> 1 AS value, q.changed_at AS queued_at \
                         FROM (SELECT after_user, users, changed_at FROM first_sync_queue \
                               WHERE computation_key = ?1 AND last_user >= ?2 ORDER BY last_user LIMIT 1) q, \
                              json_each(q.users) u \
                         WHERE q.after_user < ?2 AND u.value ->> 0 = ?2",
                    )
                    .bind(key)
                    .bind(user)
                    .fetch_optional(&mut *tx)
                    .await?
                }
                false => None,
            };
            let history = match has_history {
                true => {
                    sqlx::query_as(
                        "SELECT answered_at, run_id, value, acknowledged, http_status, error FROM delivery_history \
                         WHERE user_id = ?2 AND computation_key = ?1 ORDER BY id DESC LIMIT ?3",
                    )
                    .bind(key)
                    .bind(user)
                    .bind(history)
                    .fetch_all(&mut *tx)
                    .await?
                }
                false => Vec::new(),
            };
            states.push(UserState { last_diff, row, queued, history });
        }
        tx.commit().await?;
        Ok(states)
    }
}

async fn has_table(db: &mut SqliteConnection, name: &str) -> sqlx::Result<bool> {
    sqlx::query_scalar("SELECT EXISTS (SELECT 1 FROM sqlite_schema WHERE type = 'table' AND name = ?1)")
        .bind(name)
        .fetch_one(db)
        .await
}
