//! What the daemon's `/metrics` and `/healthz` read of the state.

use super::Store;
use crate::state::{ObservedComputation, now};

impl Store {
    /// Per computation: pending and quarantined rows, whether `owner` holds its lease, its last
    /// successful pass, whether its last pass failed, and the progress of a first sync running
    /// under a live lease.
    pub async fn observe(&self, owner: &str) -> anyhow::Result<Vec<ObservedComputation>> {
        type Row =
            (String, i64, i64, bool, bool, Option<String>, Option<String>, Option<String>, Option<i64>, Option<i64>);
        let rows: Vec<Row> = sqlx::query_as(
            "SELECT s.key, s.pending, s.quarantined, \
               EXISTS (SELECT 1 FROM leases l WHERE l.computation_key = s.key AND l.owner = ?1 AND l.expires_at > ?2), \
               EXISTS (SELECT 1 FROM leases l WHERE l.computation_key = s.key AND l.expires_at > ?2), \
               (SELECT max(r.finished_at) FROM sync_runs r WHERE r.computation_key = s.key AND r.status = 'ok'), \
               last.status, last.mode, last.snapshot_rows, last.delivered + last.failed \
             FROM computation_status s \
             LEFT JOIN sync_runs last ON last.id = (SELECT max(r.id) FROM sync_runs r WHERE r.computation_key = s.key) \
             ORDER BY s.key",
        )
        .bind(owner)
        .bind(now())
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

    /// Whether the state file at its path can be opened and read now, on a connection of its
    /// own: the pool's connections would go on reading a file deleted or replaced under them.
    pub async fn check_readable(&self) -> anyhow::Result<()> {
        let path = self.path.clone();
        tokio::task::spawn_blocking(move || {
            let flags = rusqlite::OpenFlags::SQLITE_OPEN_READ_ONLY | rusqlite::OpenFlags::SQLITE_OPEN_NO_MUTEX;
            let db = rusqlite::Connection::open_with_flags(&path, flags)?;
            db.busy_timeout(std::time::Duration::from_secs(5))?;
            db.query_row("SELECT count(*) FROM computations", [], |r| r.get::<_, i64>(0))?;
            anyhow::Ok(())
        })
        .await?
    }
}
