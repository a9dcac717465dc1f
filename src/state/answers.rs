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
    /// Notes, before they are sent, that the never-acknowledged pending rows of the
    /// computations `keys` for users in (`after`, `last`] may reach the destination. Committed
    /// before the requests go, so that a kill during them cannot make the diff forget a user
    /// the destination may hold.
    pub fn mark_sending(&mut self, keys: &[String], after: &str, last: &str) -> anyhow::Result<()> {
        let mut mark = self.db.prepare_cached(
            "UPDATE memberships INDEXED BY memberships_pending SET first_sent_at = ?1 \
             WHERE desired IS NOT synced AND quarantined_at IS NULL AND synced_at IS NULL AND first_sent_at IS NULL \
             AND user_id > ?2 AND user_id <= ?3 AND computation_key IN (SELECT value FROM json_each(?4))",
        )?;
        mark.execute(params![now(), after, last, serde_json::to_string(keys)?])?;
        Ok(())
    }

    /// Records answers in one IMMEDIATE transaction. An acknowledged row is marked synced with
    /// exactly the value sent (if `desired` changed meanwhile, the row stays pending); a failed
    /// one keeps its pending value and counts the attempt. Returns the computation key of each
    /// row quarantined now.
    pub fn record(&mut self, outcomes: &[Outcome]) -> anyhow::Result<Vec<String>> {
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
                "UPDATE memberships SET attempts = attempts + 1, last_error = ?4, \
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
        tx.commit()?;
        Ok(quarantined)
    }
}
