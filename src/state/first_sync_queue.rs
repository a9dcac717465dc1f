//! A first sync's queue: its members, in the state until each is answered, so that `pending`,
//! `computation_status` and `status` show a first sync's work while it runs (migration 0010).
//!
//! Delivery reads a first sync's members from its spool (`diff::spool`), not from here: the
//! queue is written once, a run of members per row, and only read by operators. A row per
//! member would cost a first sync a B-tree write per member and another to delete it.

use rusqlite::{Connection, params};

use super::Store;
use super::leases::{LeaseCheck, hold};

/// Members per queue row: small enough that finding one user reads one short JSON text.
const RUN_ENTRIES: u64 = 1000;

/// The writer of one first sync's queue. It counts only once `commit` is called; dropping it
/// rolls everything back.
pub struct QueueWriter {
    db: Connection,
    lease: Option<LeaseCheck>,
    key: String,
    changed_at: String,
    begun: bool,
    /// The run being built: users after `after`, as JSON pairs in `users`, `entries` of them.
    after: String,
    last: String,
    users: Vec<u8>,
    entries: u64,
}

impl Store {
    /// Opens the queue of `key`'s first sync, whose values were decided at `changed_at`.
    /// Blocking: call it from a blocking thread.
    pub fn first_sync_queue(&self, key: &str, changed_at: &str) -> anyhow::Result<QueueWriter> {
        Ok(QueueWriter {
            db: self.bulk_writer()?,
            lease: self.lease_check(&[key.to_string()])?,
            key: key.to_string(),
            changed_at: changed_at.to_string(),
            begun: false,
            after: String::new(),
            last: String::new(),
            users: Vec::new(),
            entries: 0,
        })
    }

    /// Drops what a first sync of `key` left in its queue: it ended, or its process died (the
    /// next diff finds its unanswered members again). Call it holding the computation's lease.
    pub async fn drop_first_sync_queue(&self, key: &str) -> anyhow::Result<()> {
        // Almost always there is none: find that out without waiting for the write lock.
        let left: bool =
            sqlx::query_scalar("SELECT EXISTS (SELECT 1 FROM first_sync_queue WHERE computation_key = ?1)")
                .bind(key)
                .fetch_one(&self.pool)
                .await?;
        if left {
            sqlx::query("DELETE FROM first_sync_queue WHERE computation_key = ?1").bind(key).execute(&self.pool).await?;
        }
        Ok(())
    }
}

impl QueueWriter {
    /// Queues `user_id` (after every user queued before) with its value's JSON text.
    pub fn push(&mut self, user_id: &str, desired: &str) -> anyhow::Result<()> {
        self.users.push(if self.entries == 0 { b'[' } else { b',' });
        self.users.push(b'[');
        serde_json::to_writer(&mut self.users, user_id)?;
        self.users.push(b',');
        serde_json::to_writer(&mut self.users, desired)?;
        self.users.push(b']');
        self.entries += 1;
        user_id.clone_into(&mut self.last);
        if self.entries == RUN_ENTRIES {
            self.flush()?;
        }
        Ok(())
    }

    /// Commits the queue, checking (and renewing) the lease in its transaction. Blocking.
    pub fn commit(mut self) -> anyhow::Result<()> {
        self.flush()?;
        self.begin()?;
        hold(&self.db, self.lease.as_ref(), true)?;
        self.db.execute_batch("COMMIT")?;
        Ok(())
    }

    /// Begins the transaction at the first write (after the snapshot loaded and sorted), and
    /// replaces whatever an earlier first sync left.
    fn begin(&mut self) -> rusqlite::Result<()> {
        if !self.begun {
            self.db.execute_batch("BEGIN IMMEDIATE")?;
            self.db.execute("DELETE FROM first_sync_queue WHERE computation_key = ?1", [&self.key])?;
            self.begun = true;
        }
        Ok(())
    }

    fn flush(&mut self) -> anyhow::Result<()> {
        if self.entries == 0 {
            return Ok(());
        }
        self.begin()?;
        self.users.push(b']');
        let users = std::str::from_utf8(&self.users)?;
        self.db
            .prepare_cached(
                "INSERT INTO first_sync_queue (computation_key, after_user, last_user, entries, users, changed_at) \
                 VALUES (?1, ?2, ?3, ?4, ?5, ?6)",
            )?
            .execute(params![self.key, self.after, self.last, self.entries as i64, users, self.changed_at])?;
        std::mem::swap(&mut self.after, &mut self.last);
        self.users.clear();
        self.entries = 0;
        Ok(())
    }
}
