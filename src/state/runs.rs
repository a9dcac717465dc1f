//! The `sync_runs` table: one row per pass of one computation.

use super::{Store, now};

/// Where a pass stands, as `sync_runs.status` says.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "snake_case")]
pub enum RunStatus {
    /// Still running (or its process died and no pass of the computation started since).
    Running,
    /// Everything selected was delivered.
    Ok,
    /// The snapshot loaded and the diff was recorded, but rows are still pending.
    Incomplete,
    /// Nothing was recorded or sent, or delivery stopped on the state's failure.
    Failed,
    /// Its process died; the next pass of the computation closed it.
    Interrupted,
}

/// What a pass does: a computation's first sync, a delta, or a resync asked for by command.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Mode {
    Initial,
    Delta,
    Resync,
}

/// Who asked for a pass.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Trigger {
    Manual,
    Schedule,
}

/// The words stored in `sync_runs`, both ways: what the state holds is decoded here, at its
/// edge, and nowhere else.
macro_rules! stored_words {
    ($type:ty { $($variant:ident => $word:literal),+ $(,)? }) => {
        impl $type {
            pub fn as_str(self) -> &'static str {
                match self {
                    $(Self::$variant => $word),+
                }
            }
        }

        impl TryFrom<String> for $type {
            type Error = String;
            fn try_from(word: String) -> Result<Self, String> {
                match word.as_str() {
                    $($word => Ok(Self::$variant),)+
                    other => Err(format!("unknown {} {other:?} in sync_runs", stringify!($type))),
                }
            }
        }

        impl std::fmt::Display for $type {
            fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                f.write_str(self.as_str())
            }
        }
    };
}

stored_words!(RunStatus { Running => "running", Ok => "ok", Incomplete => "incomplete", Failed => "failed", Interrupted => "interrupted" });
stored_words!(Mode { Initial => "initial", Delta => "delta", Resync => "resync" });
stored_words!(Trigger { Manual => "manual", Schedule => "schedule" });

/// The counts a pass records.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct RunCounts {
    pub snapshot_rows: Option<u64>,
    pub entered: u64,
    pub exited: u64,
    pub changed: u64,
    pub delivered: u64,
    pub failed: u64,
    pub retried: u64,
    pub quarantined: u64,
}

impl RunCounts {
    /// What a diff found; nothing delivered yet.
    pub fn of_diff(d: &crate::diff::DiffCounts) -> RunCounts {
        RunCounts {
            snapshot_rows: Some(d.snapshot_rows),
            entered: d.entered,
            exited: d.exited,
            changed: d.changed,
            ..RunCounts::default()
        }
    }
}

impl Store {
    /// Opens a `sync_runs` row with status `running`. Rows that an earlier, killed process left
    /// `running` for this computation are closed as `interrupted` first.
    pub async fn start_run(&self, key: &str, trigger: Trigger, mode: Mode) -> anyhow::Result<i64> {
        let mut tx = self.begin_immediate().await?;
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
        sqlx::query("UPDATE sync_runs SET snapshot_rows = ?2, entered = ?3, exited = ?4, changed = ?5 WHERE id = ?1")
            .bind(id)
            .bind(counts.snapshot_rows.map(|n| n as i64))
            .bind(counts.entered as i64)
            .bind(counts.exited as i64)
            .bind(counts.changed as i64)
            .execute(&self.pool)
            .await?;
        Ok(())
    }

    /// Closes a `sync_runs` row as failed, keeping the counts it noted (its diff's).
    pub async fn fail_run(&self, id: i64, error: &str) -> anyhow::Result<()> {
        sqlx::query("UPDATE sync_runs SET status = 'failed', finished_at = ?2, error = ?3 WHERE id = ?1")
            .bind(id)
            .bind(now())
            .bind(error)
            .execute(&self.pool)
            .await?;
        Ok(())
    }

    /// Closes the running `sync_runs` rows of `keys` as interrupted, saying why: a pass this
    /// process abandons (its leases are still its own).
    pub async fn interrupt_runs(&self, keys: &[String], why: &str) -> anyhow::Result<()> {
        sqlx::query(
            "UPDATE sync_runs SET status = 'interrupted', finished_at = ?2, error = ?3 \
             WHERE status = 'running' AND computation_key IN (SELECT value FROM json_each(?1))",
        )
        .bind(serde_json::to_string(keys)?)
        .bind(now())
        .bind(why)
        .execute(&self.pool)
        .await?;
        Ok(())
    }

    /// Closes a `sync_runs` row with its outcome.
    pub async fn finish_run(
        &self,
        id: i64,
        status: RunStatus,
        counts: &RunCounts,
        error: Option<&str>,
    ) -> anyhow::Result<()> {
        sqlx::query(
            "UPDATE sync_runs SET status = ?2, finished_at = ?3, snapshot_rows = ?4, entered = ?5, exited = ?6, \
             changed = ?7, delivered = ?8, failed = ?9, error = ?10, retried = ?11, quarantined = ?12 WHERE id = ?1",
        )
        .bind(id)
        .bind(status.as_str())
        .bind(now())
        .bind(counts.snapshot_rows.map(|n| n as i64))
        .bind(counts.entered as i64)
        .bind(counts.exited as i64)
        .bind(counts.changed as i64)
        .bind(counts.delivered as i64)
        .bind(counts.failed as i64)
        .bind(error)
        .bind(counts.retried as i64)
        .bind(counts.quarantined as i64)
        .execute(&self.pool)
        .await?;
        Ok(())
    }
}
