//! The diff's writes: every op of one computation's diff in one IMMEDIATE transaction.
//!
//! An initial pass writes every member, ten million rows for a big audience, so the writer runs
//! on the diff's own blocking thread with its own connection and cached single-row statements
//! (rusqlite, on the same bundled SQLite as sqlx): no op crosses a channel or an async driver.
//! The transaction begins at the first op, after the snapshot has loaded and sorted, so a
//! long load does not hold the state's one write lock.

use rusqlite::{Connection, params};

use super::{Store, now};
use crate::diff::{Op, OpSink};
use crate::source::fingerprint::Fingerprint;

/// The diff's writes for one computation. They count only once `commit` is called; dropping
/// the writer (on any error, or when a guard holds the snapshot back) rolls them all back.
pub struct DiffWriter {
    db: Connection,
    key: String,
    now: String,
    begun: bool,
}

impl Store {
    /// Opens the writer of `key`'s diff. Blocking: call it from a blocking thread.
    pub fn diff_writer(&self, key: &str) -> anyhow::Result<DiffWriter> {
        let db = self.bulk_writer()?;
        Ok(DiffWriter { db, key: key.to_string(), now: now(), begun: false })
    }
}

impl DiffWriter {
    fn begin(&mut self) -> rusqlite::Result<()> {
        if !self.begun {
            self.db.execute_batch("BEGIN IMMEDIATE")?;
            self.begun = true;
        }
        Ok(())
    }

    /// Commits the diff, noting the fingerprint of the file snapshot it came from (and its
    /// rows) in the same transaction. Blocking.
    pub fn commit(mut self, snapshot: Option<(&Fingerprint, u64)>) -> anyhow::Result<()> {
        if let Some((fp, rows)) = snapshot {
            self.begin()?;
            self.db.execute(
                "UPDATE computations SET snapshot_size = ?2, snapshot_modified_at = ?3, snapshot_sha256 = ?4, snapshot_rows = ?5 \
                 WHERE key = ?1",
                params![self.key, fp.size as i64, fp.modified_at, fp.sha256, rows as i64],
            )?;
        }
        if self.begun {
            self.db.execute_batch("COMMIT")?;
        }
        Ok(())
    }
}

impl OpSink for DiffWriter {
    fn apply(&mut self, op: Op) -> anyhow::Result<()> {
        self.begin()?;
        match op {
            Op::Set { user_id, desired, .. } => {
                // A new desired value is a new delivery: its attempts and error start afresh.
                let mut upsert = self.db.prepare_cached(
                    "INSERT INTO memberships (computation_key, user_id, desired, updated_at) VALUES (?1, ?2, ?3, ?4) \
                     ON CONFLICT (computation_key, user_id) DO UPDATE SET desired = excluded.desired, \
                     updated_at = excluded.updated_at, attempts = 0, last_error = NULL, quarantined_at = NULL",
                )?;
                upsert.execute(params![self.key, user_id, desired, self.now])?;
            }
            Op::Forget { user_id } => {
                let mut forget =
                    self.db.prepare_cached("DELETE FROM memberships WHERE computation_key = ?1 AND user_id = ?2")?;
                forget.execute(params![self.key, user_id])?;
            }
        }
        Ok(())
    }
}
