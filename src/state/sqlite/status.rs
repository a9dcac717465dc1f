//! What `status` and the daemon read: one summary per computation and its last pass.

use super::Store;
use crate::state::{ComputationStatus, LastRun};

/// The columns of `sync_runs` a `LastRun` holds, for `concat!`.
macro_rules! last_run_columns {
    () => {
        "mode, status, started_at, finished_at, snapshot_rows, entered, exited, changed, delivered, failed, \
         retried, quarantined, error"
    };
}
pub(super) use last_run_columns;

impl Store {
    /// Every computation the state knows, by key.
    pub async fn statuses(&self) -> anyhow::Result<Vec<ComputationStatus>> {
        Ok(sqlx::query_as(
            "SELECT key, name, kind, members, pending, failed, quarantined, initial_sync_done_at FROM computation_status ORDER BY key",
        )
        .fetch_all(&self.pool)
        .await?)
    }

    /// The most recent pass of `key`, if any.
    pub async fn last_run(&self, key: &str) -> anyhow::Result<Option<LastRun>> {
        Ok(sqlx::query_as(concat!(
            "SELECT ",
            last_run_columns!(),
            " FROM sync_runs WHERE computation_key = ?1 ORDER BY id DESC LIMIT 1"
        ))
        .bind(key)
        .fetch_optional(&self.pool)
        .await?)
    }
}
