//! The `computations` table: one row per configured audience or computed trait.

use anyhow::bail;

use super::{Store, now};
use crate::config::Computation;
use crate::source::fingerprint::Fingerprint;

impl Store {
    /// Records `computation` (creating its row on first sight, keeping its name current) and
    /// tells whether its initial sync is done. A key that changes kind is refused: its rows
    /// hold `false` for exits or `null` for removals, and mixing them would send nonsense.
    pub async fn register(&self, computation: &Computation) -> anyhow::Result<bool> {
        // Almost always the row is there as configured: a read, where a write transaction for
        // each computation would slow a pass over many unchanged ones.
        let known: Option<(String, String, Option<String>)> =
            sqlx::query_as("SELECT kind, name, initial_sync_done_at FROM computations WHERE key = ?1")
                .bind(&computation.key)
                .fetch_optional(&self.pool)
                .await?;
        if let Some((kind, name, done)) = known
            && kind == computation.kind.as_str()
            && name == computation.name
        {
            return Ok(done.is_some());
        }
        let mut tx = self.begin_immediate().await?;
        let existing: Option<(String, Option<String>)> =
            sqlx::query_as("SELECT kind, initial_sync_done_at FROM computations WHERE key = ?1")
                .bind(&computation.key)
                .fetch_optional(&mut *tx)
                .await?;
        let kind = computation.kind.as_str();
        let done = match existing {
            Some((old, _)) if old != kind => bail!(
                "computation {:?} is recorded as {old} in the state but configured as {kind}; give it another key",
                computation.key
            ),
            Some((_, done)) => {
                sqlx::query("UPDATE computations SET name = ?2 WHERE key = ?1")
                    .bind(&computation.key)
                    .bind(&computation.name)
                    .execute(&mut *tx)
                    .await?;
                done.is_some()
            }
            None => {
                sqlx::query("INSERT INTO computations (key, name, kind, created_at) VALUES (?1, ?2, ?3, ?4)")
                    .bind(&computation.key)
                    .bind(&computation.name)
                    .bind(kind)
                    .bind(now())
                    .execute(&mut *tx)
                    .await?;
                false
            }
        };
        tx.commit().await?;
        Ok(done)
    }

    /// The fingerprint of the file snapshot of the last recorded diff of `key`, and how many
    /// rows it had.
    pub async fn snapshot_fingerprint(&self, key: &str) -> anyhow::Result<Option<(Fingerprint, u64)>> {
        let row: Option<RecordedSnapshot> = sqlx::query_as(
            "SELECT snapshot_size, snapshot_modified_at, snapshot_sha256, snapshot_rows FROM computations WHERE key = ?1",
        )
        .bind(key)
        .fetch_optional(&self.pool)
        .await?;
        Ok(match row {
            Some(RecordedSnapshot {
                snapshot_size: Some(size),
                snapshot_modified_at: Some(modified_at),
                snapshot_sha256,
                snapshot_rows,
            }) => Some((
                Fingerprint { size: size as u64, modified_at, sha256: snapshot_sha256.unwrap_or_default() },
                snapshot_rows.unwrap_or(0) as u64,
            )),
            _ => None,
        })
    }

    /// Withdraws the recorded snapshot hash of `key` (its time stays, for the staleness check):
    /// no unchanged file may skip the diff until a diff records a hash again.
    pub async fn forget_snapshot_content(&self, key: &str) -> anyhow::Result<()> {
        sqlx::query("UPDATE computations SET snapshot_sha256 = NULL WHERE key = ?1")
            .bind(key)
            .execute(&self.pool)
            .await?;
        Ok(())
    }

    /// Whether the state has seen computation `key`.
    pub async fn knows(&self, key: &str) -> anyhow::Result<bool> {
        let n: i64 = sqlx::query_scalar("SELECT count(*) FROM computations WHERE key = ?1")
            .bind(key)
            .fetch_one(&self.pool)
            .await?;
        Ok(n > 0)
    }

    /// The key of every computation the state has rows for.
    pub async fn computation_keys(&self) -> anyhow::Result<Vec<String>> {
        Ok(sqlx::query_scalar("SELECT key FROM computations ORDER BY key").fetch_all(&self.pool).await?)
    }

    /// Notes that the first pass of `key` left nothing pending.
    pub async fn mark_initial_sync_done(&self, key: &str) -> anyhow::Result<()> {
        sqlx::query(
            "UPDATE computations SET initial_sync_done_at = ?2 WHERE key = ?1 AND initial_sync_done_at IS NULL",
        )
        .bind(key)
        .bind(now())
        .execute(&self.pool)
        .await?;
        Ok(())
    }
}

/// What `computations` records of the last diff's file snapshot.
#[derive(sqlx::FromRow)]
struct RecordedSnapshot {
    snapshot_size: Option<i64>,
    snapshot_modified_at: Option<String>,
    snapshot_sha256: Option<String>,
    snapshot_rows: Option<i64>,
}
