//! Recording what the destination answered.
//!
//! Every acknowledged update waits for its answer to be recorded before its slot is reused
//! (that bounds what a kill can make us re-send), so the time a record takes is time each
//! request holds a slot. Through sqlx, a transaction costs three round trips to the driver's
//! worker thread; here one blocking thread holds its own SQLite connection and runs cached
//! statements directly.

use rusqlite::{Connection, OpenFlags, params};

use super::{BUSY_TIMEOUT, Store, now};
use crate::state::Outcome;

/// A connection that records answers; used from one blocking thread.
pub struct AnswerWriter {
    db: Connection,
    quarantine_after: u32,
}

impl Store {
    /// Opens a writer of answers; a row failing on its `quarantine_after`-th pass is quarantined.
    pub fn answer_writer(&self, quarantine_after: u32) -> anyhow::Result<AnswerWriter> {
        let db = Connection::open_with_flags(
            &self.path,
            OpenFlags::SQLITE_OPEN_READ_WRITE | OpenFlags::SQLITE_OPEN_NO_MUTEX,
        )?;
        db.busy_timeout(BUSY_TIMEOUT)?;
        db.pragma_update(None, "synchronous", "NORMAL")?;
        Ok(AnswerWriter { db, quarantine_after })
    }
}

impl AnswerWriter {
    /// Notes, before they are sent, that users in (`after`, `last`] of the computations `keys`
    /// may reach the destination: one row per computation in `sending_windows`, committed
    /// before the requests go, so that a kill during them cannot make the diff forget a user
    /// the destination may hold. Returns the rows, for `record` to drop once answered.
    pub fn note_window(&mut self, keys: &[String], after: &str, last: &str) -> anyhow::Result<Vec<i64>> {
        let at = now();
        let tx = rusqlite::Transaction::new(&mut self.db, rusqlite::TransactionBehavior::Immediate)?;
        let mut ids = Vec::with_capacity(keys.len());
        {
            let mut note = tx.prepare_cached(
                "INSERT INTO sending_windows (computation_key, after_user, last_user, noted_at) VALUES (?1, ?2, ?3, ?4)",
            )?;
            for key in keys {
                note.execute(params![key, after, last, at])?;
                ids.push(tx.last_insert_rowid());
            }
        }
        tx.commit()?;
        Ok(ids)
    }

    /// Records answers in one IMMEDIATE transaction, and drops the `sending_windows` rows
    /// `answered` whose every call is now answered. An acknowledged row is marked synced with
    /// exactly the value sent (if `desired` changed meanwhile, the row stays pending); a failed
    /// one keeps its pending value, counts the attempt and is marked `first_sent_at` (a request
    /// that timed out may still have landed). Returns the computation key of each row
    /// quarantined now.
    pub fn record(&mut self, outcomes: &[Outcome], answered: &[i64]) -> anyhow::Result<Vec<String>> {
        let at = now();
        let tx = rusqlite::Transaction::new(&mut self.db, rusqlite::TransactionBehavior::Immediate)?;
        let mut quarantined = Vec::new();
        {
            let mut acked = tx.prepare_cached(
                "UPDATE memberships SET synced = ?3, synced_at = ?4, attempts = 0, last_error = NULL, quarantined_at = NULL, \
                 first_sent_at = NULL \
                 WHERE computation_key = ?1 AND user_id = ?2",
            )?;
            let mut failed = tx.prepare_cached(
                "UPDATE memberships SET attempts = attempts + 1, last_error = ?4, first_sent_at = coalesce(first_sent_at, ?6), \
                 quarantined_at = CASE WHEN attempts + 1 >= ?5 THEN ?6 END \
                 WHERE computation_key = ?1 AND user_id = ?2 AND desired = ?3 RETURNING quarantined_at IS NOT NULL",
            )?;
            for o in outcomes {
                match &o.error {
                    None => {
                        acked.execute(params![o.computation_key, o.user_id, o.sent, at])?;
                    }
                    Some(error) => {
                        let mut rows = failed.query(params![
                            o.computation_key,
                            o.user_id,
                            o.sent,
                            error,
                            self.quarantine_after,
                            at
                        ])?;
                        if let Some(row) = rows.next()?
                            && row.get::<_, bool>(0)?
                        {
                            quarantined.push(o.computation_key.clone());
                        }
                    }
                }
            }
        }
        {
            let mut drop_window = tx.prepare_cached("DELETE FROM sending_windows WHERE id = ?1")?;
            for id in answered {
                drop_window.execute([id])?;
            }
        }
        tx.commit()?;
        Ok(quarantined)
    }
}
