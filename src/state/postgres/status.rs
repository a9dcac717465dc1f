//! What `status`, `explain` and the daemon read. PostgreSQL decodes strictly: counts and
//! integer columns are cast to the types the shared rows hold.

use super::{DB_NOW, Store};
use crate::state::{ComputationStatus, DiffPass, LastRun, MembershipRow, ObservedComputation, Queued, UserState};

/// The columns of `sync_runs` a `LastRun` holds, for `concat!`.
macro_rules! last_run_columns {
    () => {
        "mode, status, started_at, finished_at, snapshot_rows, entered, exited, changed, delivered, failed, \
         retried, quarantined, error"
    };
}

impl Store {
    pub async fn statuses(&self) -> anyhow::Result<Vec<ComputationStatus>> {
        Ok(sqlx::query_as(
            "SELECT key, name, kind, members, pending, failed, quarantined, initial_sync_done_at \
             FROM computation_status ORDER BY key COLLATE \"C\"",
        )
        .fetch_all(&self.pool)
        .await?)
    }

    pub async fn last_run(&self, key: &str) -> anyhow::Result<Option<LastRun>> {
        Ok(sqlx::query_as(concat!(
            "SELECT ",
            last_run_columns!(),
            " FROM sync_runs WHERE computation_key = $1 ORDER BY id DESC LIMIT 1"
        ))
        .bind(key)
        .fetch_optional(&self.pool)
        .await?)
    }

    /// As the SQLite backend's: per computation, what `/metrics` shows. A lease is live by the
    /// database's clock.
    pub async fn observe(&self, owner: &str) -> anyhow::Result<Vec<ObservedComputation>> {
        type Row =
            (String, i64, i64, bool, bool, Option<String>, Option<String>, Option<String>, Option<i64>, Option<i64>);
        let rows: Vec<Row> = sqlx::query_as(sqlx::AssertSqlSafe(format!(
            "SELECT s.key, s.pending, s.quarantined, \
               EXISTS (SELECT 1 FROM leases l WHERE l.computation_key = s.key AND l.owner = $1 AND l.expires_at > {DB_NOW}), \
               EXISTS (SELECT 1 FROM leases l WHERE l.computation_key = s.key AND l.expires_at > {DB_NOW}), \
               (SELECT max(r.finished_at) FROM sync_runs r WHERE r.computation_key = s.key AND r.status = 'ok'), \
               last.status, last.mode, last.snapshot_rows, last.delivered + last.failed \
             FROM computation_status s \
             LEFT JOIN sync_runs last ON last.id = (SELECT max(r.id) FROM sync_runs r WHERE r.computation_key = s.key) \
             ORDER BY s.key COLLATE \"C\""
        )))
        .bind(owner)
        .fetch_all(&self.pool)
        .await?;
        Ok(rows
            .into_iter()
            .map(|(key, pending, quarantined, leased_here, leased, last_ok, status, mode, members, answered)| {
                crate::state::status::observed(
                    key,
                    (pending, quarantined),
                    (leased_here, leased),
                    last_ok,
                    (status, mode, members, answered),
                )
            })
            .collect())
    }

    /// Whether the database answers now.
    pub async fn check_readable(&self) -> anyhow::Result<()> {
        sqlx::query_scalar::<_, i64>("SELECT count(*) FROM computations").fetch_one(&self.pool).await?;
        Ok(())
    }

    /// `user` in each computation of `keys`, with at most `history` of its latest deliveries,
    /// in one read-only snapshot of the state.
    pub async fn explain(&self, user: &str, keys: &[String], history: u32) -> anyhow::Result<Vec<UserState>> {
        let mut tx = self.pool.begin().await?;
        sqlx::query("SET TRANSACTION ISOLATION LEVEL REPEATABLE READ READ ONLY").execute(&mut *tx).await?;
        let mut states = Vec::with_capacity(keys.len());
        for key in keys {
            let last_diff: Option<DiffPass> = sqlx::query_as(concat!(
                "SELECT id AS run_id, ",
                last_run_columns!(),
                " FROM sync_runs WHERE computation_key = $1 AND snapshot_rows IS NOT NULL ORDER BY id DESC LIMIT 1"
            ))
            .bind(key)
            .fetch_optional(&mut *tx)
            .await?;
            let row: Option<MembershipRow> = sqlx::query_as(
                "SELECT desired, synced, updated_at, synced_at, attempts::bigint AS attempts, last_error, quarantined_at, \
                 first_sent_at FROM memberships WHERE computation_key = $1 AND user_id = $2",
            )
            .bind(key)
            .bind(user)
            .fetch_optional(&mut *tx)
            .await?;
            let queued: Option<Queued> = match row {
                Some(_) => None,
                None => {
                    sqlx::query_as(
                        "SELECT u.value ->> 1 AS value, q.changed_at AS queued_at \
                         FROM (SELECT after_user, users, changed_at FROM first_sync_queue \
                               WHERE computation_key = $1 AND last_user >= $2 ORDER BY last_user LIMIT 1) q, \
                              jsonb_array_elements(q.users::jsonb) u (value) \
                         WHERE q.after_user < $2 AND u.value ->> 0 = $2",
                    )
                    .bind(key)
                    .bind(user)
                    .fetch_optional(&mut *tx)
                    .await?
                }
            };
            let history = sqlx::query_as(
                "SELECT answered_at, run_id, value, acknowledged = 1 AS acknowledged, http_status::bigint AS http_status, \
                 error FROM delivery_history WHERE user_id = $2 AND computation_key = $1 ORDER BY id DESC LIMIT $3",
            )
            .bind(key)
            .bind(user)
            .bind(i64::from(history))
            .fetch_all(&mut *tx)
            .await?;
            states.push(UserState { last_diff, row, queued, history });
        }
        tx.commit().await?;
        Ok(states)
    }
}
