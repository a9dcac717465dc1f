//! `computations`, `sync_runs` and `destination_attributes`: one row per computation, per
//! pass, and per attribute known to the destination.

use std::collections::HashSet;

use anyhow::bail;
use sqlx::PgConnection;

use super::Store;
use crate::config::Computation;
use crate::source::fingerprint::Fingerprint;
use crate::state::{LeaseLost, Mode, RunCounts, RunEnd, Trigger, now};

impl Store {
    /// Records `computation` and tells whether its initial sync is done; a key that changes
    /// kind is refused (see the SQLite backend). Two workers registering at once: the row
    /// lock of the first insert makes the second wait, then find it.
    pub async fn register(&self, computation: &Computation) -> anyhow::Result<bool> {
        let mut tx = self.pool.begin().await?;
        let kind = computation.kind.as_str();
        sqlx::query("INSERT INTO computations (key, name, kind, created_at) VALUES ($1, $2, $3, $4) ON CONFLICT (key) DO NOTHING")
            .bind(&computation.key)
            .bind(&computation.name)
            .bind(kind)
            .bind(now())
            .execute(&mut *tx)
            .await?;
        let (old, done): (String, Option<String>) =
            sqlx::query_as("SELECT kind, initial_sync_done_at FROM computations WHERE key = $1 FOR UPDATE")
                .bind(&computation.key)
                .fetch_one(&mut *tx)
                .await?;
        if old != kind {
            bail!(
                "computation {:?} is recorded as {old} in the state but configured as {kind}; give it another key",
                computation.key
            );
        }
        sqlx::query("UPDATE computations SET name = $2 WHERE key = $1 AND name <> $2")
            .bind(&computation.key)
            .bind(&computation.name)
            .execute(&mut *tx)
            .await?;
        tx.commit().await?;
        Ok(done.is_some())
    }

    pub async fn snapshot_fingerprint(&self, key: &str) -> anyhow::Result<Option<(Fingerprint, u64)>> {
        type Row = (Option<i64>, Option<String>, Option<String>, Option<i64>);
        let row: Option<Row> = sqlx::query_as(
            "SELECT snapshot_size, snapshot_modified_at, snapshot_sha256, snapshot_rows FROM computations WHERE key = $1",
        )
        .bind(key)
        .fetch_optional(&self.pool)
        .await?;
        Ok(match row {
            Some((Some(size), Some(modified_at), sha256, rows)) => Some((
                Fingerprint { size: size as u64, modified_at, sha256: sha256.unwrap_or_default() },
                rows.unwrap_or(0) as u64,
            )),
            _ => None,
        })
    }

    pub async fn forget_snapshot_content(&self, key: &str) -> anyhow::Result<()> {
        sqlx::query("UPDATE computations SET snapshot_sha256 = NULL WHERE key = $1")
            .bind(key)
            .execute(&self.pool)
            .await?;
        Ok(())
    }

    pub async fn knows(&self, key: &str) -> anyhow::Result<bool> {
        let known = sqlx::query_scalar("SELECT EXISTS (SELECT 1 FROM computations WHERE key = $1)")
            .bind(key)
            .fetch_one(&self.pool)
            .await?;
        Ok(known)
    }

    pub async fn computation_keys(&self) -> anyhow::Result<Vec<String>> {
        Ok(sqlx::query_scalar("SELECT key FROM computations ORDER BY key COLLATE \"C\"").fetch_all(&self.pool).await?)
    }

    pub async fn mark_initial_sync_done(&self, key: &str) -> anyhow::Result<()> {
        sqlx::query(
            "UPDATE computations SET initial_sync_done_at = $2 WHERE key = $1 AND initial_sync_done_at IS NULL",
        )
        .bind(key)
        .bind(now())
        .execute(&self.pool)
        .await?;
        Ok(())
    }

    /// Opens a `sync_runs` row `running`, closing as `interrupted` the rows a killed process
    /// left `running` for this computation (the caller holds its lease).
    pub async fn start_run(&self, key: &str, trigger: Trigger, mode: Mode) -> anyhow::Result<i64> {
        let mut tx = self.begin_holding(&[key.to_string()]).await?;
        let started = now();
        sqlx::query(
            "UPDATE sync_runs SET status = 'interrupted', finished_at = $2 WHERE computation_key = $1 AND status = 'running'",
        )
        .bind(key)
        .bind(&started)
        .execute(&mut *tx)
        .await?;
        let id: i64 = sqlx::query_scalar(
            "INSERT INTO sync_runs (computation_key, trigger, mode, status, started_at) VALUES ($1, $2, $3, 'running', $4) RETURNING id",
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

    pub async fn note_diff(&self, id: i64, counts: &RunCounts) -> anyhow::Result<()> {
        let mut tx = self.begin_holding_run(id).await?;
        note_diff(&mut tx, id, counts).await?;
        tx.commit().await?;
        Ok(())
    }

    pub async fn fail_run(&self, id: i64, error: &str) -> anyhow::Result<()> {
        let mut tx = self.begin_holding_run(id).await?;
        sqlx::query("UPDATE sync_runs SET status = 'failed', finished_at = $2, error = $3 WHERE id = $1")
            .bind(id)
            .bind(now())
            .bind(error)
            .execute(&mut *tx)
            .await?;
        tx.commit().await?;
        Ok(())
    }

    pub async fn interrupt_runs(&self, keys: &[String], why: &str) -> anyhow::Result<()> {
        let mut tx = self.begin_holding(keys).await?;
        sqlx::query(
            "UPDATE sync_runs SET status = 'interrupted', finished_at = $2, error = $3 \
             WHERE status = 'running' AND computation_key = ANY($1)",
        )
        .bind(keys)
        .bind(now())
        .bind(why)
        .execute(&mut *tx)
        .await?;
        tx.commit().await?;
        Ok(())
    }

    /// Closes `sync_runs` rows with their outcomes, each in a transaction that still holds its
    /// computation's lease. Returns the computations whose lease was lost: their runs are the
    /// new holder's to close.
    pub async fn finish_runs(&self, ends: &[RunEnd]) -> anyhow::Result<Vec<String>> {
        let mut lost = Vec::new();
        let finished_at = now();
        for RunEnd { id, key, status, counts, error } in ends {
            let mut tx = match self.begin_holding(std::slice::from_ref(key)).await {
                Err(e) if e.is::<LeaseLost>() => {
                    lost.push(key.clone());
                    continue;
                }
                holding => holding?,
            };
            sqlx::query(
                "UPDATE sync_runs SET status = $2, finished_at = $3, snapshot_rows = $4, entered = $5, exited = $6, \
                 changed = $7, delivered = $8, failed = $9, error = $10, retried = $11, quarantined = $12 WHERE id = $1",
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
            tx.commit().await?;
        }
        Ok(lost)
    }

    pub async fn known_attributes(&self) -> anyhow::Result<HashSet<String>> {
        let keys: Vec<String> =
            sqlx::query_scalar("SELECT key FROM destination_attributes").fetch_all(&self.pool).await?;
        Ok(keys.into_iter().collect())
    }

    pub async fn remember_attribute(&self, key: &str, created_by_us: bool) -> anyhow::Result<()> {
        sqlx::query(
            "INSERT INTO destination_attributes (key, created_at, created_by_us) VALUES ($1, $2, $3) ON CONFLICT (key) DO NOTHING",
        )
        .bind(key)
        .bind(now())
        .bind(i32::from(created_by_us))
        .execute(&self.pool)
        .await?;
        Ok(())
    }
}

/// Notes what a diff found on its running `sync_runs` row `id`, in the transaction of `conn`.
pub(super) async fn note_diff(conn: &mut PgConnection, id: i64, counts: &RunCounts) -> anyhow::Result<()> {
    sqlx::query("UPDATE sync_runs SET snapshot_rows = $2, entered = $3, exited = $4, changed = $5 WHERE id = $1")
        .bind(id)
        .bind(counts.snapshot_rows.map(|n| n as i64))
        .bind(counts.entered as i64)
        .bind(counts.exited as i64)
        .bind(counts.changed as i64)
        .execute(conn)
        .await?;
    Ok(())
}
