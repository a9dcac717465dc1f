//! The `sync_runs` table: one row per pass of one computation.

use super::Store;
use crate::state::{Mode, RunCounts, RunEnd, Trigger, now};

/// Notes what a diff found on its running `sync_runs` row `?1`.
pub(super) const NOTE_DIFF: &str =
    "UPDATE sync_runs SET snapshot_rows = ?2, entered = ?3, exited = ?4, changed = ?5 WHERE id = ?1";

impl Store {
    /// Opens a `sync_runs` row with status `running`. Rows that an earlier, killed process left
    /// `running` for this computation are closed as `interrupted` first.
    pub async fn start_run(&self, key: &str, trigger: Trigger, mode: Mode) -> anyhow::Result<i64> {
        let mut tx = self.begin_holding(&[key.to_string()]).await?;
        let started = now();
        sqlx::query(
            "UPDATE sync_runs SET status = 'interrupted', finished_at = ?2 WHERE computation_key = ?1 AND status = 'running'",
        )
        .bind(key)
        .bind(&started)
        .execute(&mut *tx)
        .await?;
        let id: i64 = sqlx::query_scalar(
            "INSERT INTO sync_runs (computation_key, trigger, mode, status, started_at) VALUES (?1, ?2, ?3, 'running', ?4) RETURNING id",
        )
        .bind(key)
        .bind(trigger.as_str())
        .bind(mode.as_str())
        .bind(&started)
        .fetch_one(&mut *tx)
        .await?;
        tx.commit().await?;
        Ok(id)
    }

    /// Records on a running `sync_runs` row what its diff found, before delivery begins.
    pub async fn note_diff(&self, id: i64, counts: &RunCounts) -> anyhow::Result<()> {
        let mut tx = self.begin_holding_run(id).await?;
        sqlx::query(NOTE_DIFF)
            .bind(id)
            .bind(counts.snapshot_rows.map(|n| n as i64))
            .bind(counts.entered as i64)
            .bind(counts.exited as i64)
            .bind(counts.changed as i64)
            .execute(&mut *tx)
            .await?;
        tx.commit().await?;
        Ok(())
    }

    /// Closes a `sync_runs` row as failed, keeping the counts it noted (its diff's).
    pub async fn fail_run(&self, id: i64, error: &str) -> anyhow::Result<()> {
        let mut tx = self.begin_holding_run(id).await?;
        sqlx::query("UPDATE sync_runs SET status = 'failed', finished_at = ?2, error = ?3 WHERE id = ?1")
            .bind(id)
            .bind(now())
            .bind(error)
            .execute(&mut *tx)
            .await?;
        tx.commit().await?;
        Ok(())
    }

    /// Closes the running `sync_runs` rows of `keys` as interrupted, saying why: a pass this
    /// process abandons, while its leases are still its own (else `LeaseLost`: the runs are the
    /// new holder's).
    pub async fn interrupt_runs(&self, keys: &[String], why: &str) -> anyhow::Result<()> {
        let mut tx = self.begin_holding(keys).await?;
        sqlx::query(
            "UPDATE sync_runs SET status = 'interrupted', finished_at = ?2, error = ?3 \
             WHERE status = 'running' AND computation_key IN (SELECT value FROM json_each(?1))",
        )
        .bind(serde_json::to_string(keys)?)
        .bind(now())
        .bind(why)
        .execute(&mut *tx)
        .await?;
        tx.commit().await?;
        Ok(())
    }

    /// Closes `sync_runs` rows with their outcomes, in one transaction, those whose computation's
    /// lease this store's claim still holds. Returns the computations whose lease it lost: their
    /// runs are the new holder's to close.
    pub async fn finish_runs(&self, ends: &[RunEnd]) -> anyhow::Result<Vec<String>> {
        let keys: Vec<String> = ends.iter().map(|e| e.key.clone()).collect();
        let mut tx = self.begin_immediate().await?;
        let held = self.held_among(&mut tx, &keys).await?;
        let finished_at = now();
        let (closing, lost): (Vec<&RunEnd>, Vec<&RunEnd>) = ends.iter().partition(|e| held.contains(&e.key));
        for RunEnd { id, status, counts, error, .. } in closing {
            sqlx::query(
                "UPDATE sync_runs SET status = ?2, finished_at = ?3, snapshot_rows = ?4, entered = ?5, exited = ?6, \
                 changed = ?7, delivered = ?8, failed = ?9, error = ?10, retried = ?11, quarantined = ?12 WHERE id = ?1",
            )
            .bind(id)
            .bind(status.as_str())
            .bind(&finished_at)
            .bind(counts.snapshot_rows.map(|n| n as i64))
            .bind(counts.entered as i64)
            .bind(counts.exited as i64)
            .bind(counts.changed as i64)
            .bind(counts.delivered as i64)
            .bind(counts.failed as i64)
            .bind(error)
            .bind(counts.retried as i64)
            .bind(counts.quarantined as i64)
            .execute(&mut *tx)
            .await?;
        }
        tx.commit().await?;
        Ok(lost.into_iter().map(|e| e.key.clone()).collect())
    }
}
