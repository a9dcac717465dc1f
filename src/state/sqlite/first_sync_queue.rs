//! A first sync's queue: its members, in the state until each is answered, so that `pending`,
//! `computation_status` and `status` show a first sync's work while it runs (migration 0010).
//!
//! Delivery reads a first sync's members from its spool (`diff::spool`), not from here: the
//! queue is written once, a run of members per row, and only read by operators. A row per
//! member would cost a first sync a B-tree write per member and another to delete it.

use std::sync::mpsc::{Receiver, SyncSender, sync_channel};
use std::thread::JoinHandle;

use rusqlite::{Connection, params};

use super::Store;
use super::leases::{LeaseCheck, hold};

/// Members per queue row: small enough that finding one user reads one short JSON text.
const RUN_ENTRIES: u64 = 1000;
/// Runs handed to the writing thread and not written yet, at most.
const RUNS_AHEAD: usize = 8;

/// A run of queued members: users after `after` up to `last`, as a JSON array of pairs.
#[derive(Default)]
struct Run {
    after: String,
    last: String,
    users: Vec<u8>,
    entries: u64,
}

/// The writer of one first sync's queue: the diff's thread builds the runs, a thread of the
/// writer's own inserts them (beside the diff, which is single-threaded, rather than in its
/// time). It counts only once `commit` is called; dropping it rolls everything back.
pub struct QueueWriter {
    run: Run,
    runs: Option<SyncSender<Run>>,
    inserting: Option<JoinHandle<anyhow::Result<()>>>,
}

impl Store {
    /// Opens the queue of `key`'s first sync, whose values were decided at `changed_at`.
    /// Blocking: call it from a blocking thread.
    pub fn first_sync_queue(&self, key: &str, changed_at: &str) -> anyhow::Result<QueueWriter> {
        let inserter = Inserter {
            db: self.bulk_writer()?,
            lease: self.lease_check(&[key.to_string()])?,
            key: key.to_string(),
            changed_at: changed_at.to_string(),
            begun: false,
        };
        let (runs, received) = sync_channel(RUNS_AHEAD);
        let inserting =
            std::thread::Builder::new().name("first-sync-queue".into()).spawn(move || inserter.insert_all(received))?;
        Ok(QueueWriter { run: Run::default(), runs: Some(runs), inserting: Some(inserting) })
    }

    /// Drops the queue of `key`'s first sync once every entry has an answer recorded. (A diff
    /// that commits drops it too: see `DiffWriter::commit`.) Call it holding the lease.
    pub async fn drop_first_sync_queue(&self, key: &str) -> anyhow::Result<()> {
        // Almost always there is none: find that out without waiting for the write lock.
        let left: bool =
            sqlx::query_scalar("SELECT EXISTS (SELECT 1 FROM first_sync_queue WHERE computation_key = ?1)")
                .bind(key)
                .fetch_one(&self.pool)
                .await?;
        if left {
            sqlx::query("DELETE FROM first_sync_queue WHERE computation_key = ?1")
                .bind(key)
                .execute(&self.pool)
                .await?;
        }
        Ok(())
    }

    /// Gives the state file's free pages back to the file system: a first sync's queue held
    /// every member once more until the sync ended. Only in a state file created with
    /// incremental auto-vacuum (see `Store::open`); a no-op in an older one.
    pub async fn give_back_free_pages(&self) -> anyhow::Result<()> {
        sqlx::query("PRAGMA incremental_vacuum").execute(&self.pool).await?;
        Ok(())
    }
}

impl QueueWriter {
    /// Queues `user_id` (after every user queued before) with its value's JSON text.
    pub fn push(&mut self, user_id: &str, desired: &str) -> anyhow::Result<()> {
        let run = &mut self.run;
        run.users.push(if run.entries == 0 { b'[' } else { b',' });
        run.users.push(b'[');
        serde_json::to_writer(&mut run.users, user_id)?;
        run.users.push(b',');
        serde_json::to_writer(&mut run.users, desired)?;
        run.users.push(b']');
        run.entries += 1;
        user_id.clone_into(&mut run.last);
        if run.entries == RUN_ENTRIES {
            self.hand_over()?;
        }
        Ok(())
    }

    /// Commits the queue, checking (and renewing) the lease in its transaction. Blocking.
    pub fn commit(mut self) -> anyhow::Result<()> {
        self.hand_over()?;
        // The last run is an empty one: it says "commit".
        self.send(Run::default())?;
        self.runs = None;
        self.finish()
    }

    fn hand_over(&mut self) -> anyhow::Result<()> {
        if self.run.entries == 0 {
            return Ok(());
        }
        self.run.users.push(b']');
        let next = Run { after: self.run.last.clone(), ..Run::default() };
        let run = std::mem::replace(&mut self.run, next);
        self.send(run)
    }

    fn send(&mut self, run: Run) -> anyhow::Result<()> {
        match self.runs.as_ref().map(|runs| runs.send(run)) {
            Some(Ok(())) => Ok(()),
            // The inserting thread stopped: its error says why.
            _ => {
                self.runs = None;
                self.finish().and_then(|()| Err(anyhow::anyhow!("the first sync's queue stopped")))
            }
        }
    }

    fn finish(&mut self) -> anyhow::Result<()> {
        let inserting = self.inserting.take().ok_or_else(|| anyhow::anyhow!("the first sync's queue stopped"))?;
        inserting.join().map_err(|_| anyhow::anyhow!("the first sync's queue panicked"))?
    }
}

/// The inserting thread's side: one transaction over every run, committed on the empty run.
struct Inserter {
    db: Connection,
    lease: Option<LeaseCheck>,
    key: String,
    changed_at: String,
    begun: bool,
}

impl Inserter {
    /// Inserts runs until the empty one (then commits) or until the writer is dropped (then the
    /// transaction rolls back with the connection).
    fn insert_all(mut self, runs: Receiver<Run>) -> anyhow::Result<()> {
        while let Ok(run) = runs.recv() {
            self.begin()?;
            if run.entries == 0 {
                hold(&self.db, self.lease.as_ref(), true)?;
                self.db.execute_batch("COMMIT")?;
                return Ok(());
            }
            let users = std::str::from_utf8(&run.users)?;
            self.db
                .prepare_cached(
                    "INSERT INTO first_sync_queue (computation_key, after_user, last_user, entries, users, changed_at) \
                     VALUES (?1, ?2, ?3, ?4, ?5, ?6)",
                )?
                .execute(params![self.key, run.after, run.last, run.entries as i64, users, self.changed_at])?;
        }
        Ok(())
    }

    /// Begins the transaction at the first run (after the snapshot loaded and sorted), and
    /// replaces whatever an earlier first sync left.
    fn begin(&mut self) -> rusqlite::Result<()> {
        if !self.begun {
            self.db.execute_batch("BEGIN IMMEDIATE")?;
            self.db.execute("DELETE FROM first_sync_queue WHERE computation_key = ?1", [&self.key])?;
            self.begun = true;
        }
        Ok(())
    }
}
