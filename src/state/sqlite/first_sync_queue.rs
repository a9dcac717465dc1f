//! SQLite's side of a first sync's queue (`state::QueueWriter` runs it on its inserting
//! thread): a connection of its own and one IMMEDIATE transaction over every run.

use rusqlite::{Connection, params};

use super::Store;
use super::leases::{LeaseCheck, hold};
use crate::state::RunCounts;
use crate::state::first_sync_queue::{QueueRows, QueueRun, QueueWriter};

impl Store {
    /// Opens the queue of `key`'s first sync, whose values were decided at `changed_at`.
    /// Blocking: call it from a blocking thread.
    pub fn first_sync_queue(&self, key: &str, changed_at: &str) -> anyhow::Result<QueueWriter> {
        let db = self.bulk_writer()?;
        self.start_log_over(&db)?;
        let inserter = Inserter {
            db,
            store: self.clone(),
            lease: self.lease_check(&[key.to_string()])?,
            key: key.to_string(),
            changed_at: changed_at.to_string(),
            begun: false,
        };
        QueueWriter::start(Box::new(inserter))
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

    /// Gives the state file's free pages back to the file system: what is left of a first
    /// sync's queue once it is dropped (its runs were emptied as delivery went, and their
    /// space reused by the rows). Only in a state file created with
    /// incremental auto-vacuum (see `Store::open`); a no-op in an older one.
    pub async fn give_back_free_pages(&self) -> anyhow::Result<()> {
        sqlx::query("PRAGMA incremental_vacuum").execute(&self.pool).await?;
        Ok(())
    }
}

/// The inserting thread's side: one transaction over every run, committed on the empty run.
struct Inserter {
    db: Connection,
    /// The state, whose checkpointer copies the queue's pages back once it commits.
    store: Store,
    lease: Option<LeaseCheck>,
    key: String,
    changed_at: String,
    begun: bool,
}

impl QueueRows for Inserter {
    fn insert(&mut self, run: &QueueRun) -> anyhow::Result<()> {
        self.begin()?;
        let users = std::str::from_utf8(&run.users)?;
        self.db
            .prepare_cached(
                "INSERT INTO first_sync_queue (computation_key, after_user, last_user, entries, users, changed_at) \
                 VALUES (?1, ?2, ?3, ?4, ?5, ?6)",
            )?
            .execute(params![self.key, run.after, run.last, run.entries as i64, users, self.changed_at])?;
        Ok(())
    }

    fn commit(&mut self, run: i64, counts: &RunCounts) -> anyhow::Result<()> {
        self.begin()?;
        hold(&self.db, self.lease.as_ref(), true)?;
        self.db.prepare_cached(super::runs::NOTE_DIFF)?.execute(params![
            run,
            counts.snapshot_rows.map(|n| n as i64),
            counts.entered as i64,
            counts.exited as i64,
            counts.changed as i64
        ])?;
        self.db.execute_batch("COMMIT")?;
        self.store.checkpoint_beside();
        Ok(())
    }
}

impl Inserter {
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

#[cfg(test)]
mod tests {
    use crate::state::testing::store_with_audience;
    use crate::state::{Mode, RunCounts, Trigger};

    /// Queues `users` (user, value JSON) as audience "a"'s first sync in a state of its own, and
    /// commits with their count noted on the pass's run. The state's connection and that run.
    async fn queued(users: Vec<(String, String)>) -> (tempfile::TempDir, rusqlite::Connection, i64) {
        let dir = tempfile::tempdir().unwrap();
        let (store, db) = store_with_audience(dir.path()).await;
        let run = store.start_run("a", Trigger::Manual, Mode::Initial).await.unwrap();
        let n = users.len() as u64;
        let counts = RunCounts { snapshot_rows: Some(n), entered: n, ..RunCounts::default() };
        tokio::task::spawn_blocking(move || {
            let mut queue = store.first_sync_queue("a", "2026-12-07T00:00:00.000Z")?;
            users.iter().try_for_each(|(user, value)| queue.push(user, value))?;
            queue.commit(run, counts)
        })
        .await
        .unwrap()
        .unwrap();
        (dir, db, run)
    }

    /// A first sync notes its diff's counts in its queue's transaction, not in one of its own
    /// after it (whose commit on another connection copied the queue's whole log back into the
    /// database file before delivery could begin): the run shows them as soon as the queue.
    #[tokio::test]
    async fn a_first_syncs_counts_are_noted_in_its_queues_transaction() {
        let users = ["u1", "u2", "u3"].map(|u| (u.to_string(), "true".to_string())).to_vec();
        let (_dir, db, run) = queued(users).await;
        let noted: (i64, i64, i64) = db
            .query_row(
                "SELECT snapshot_rows, entered, (SELECT sum(entries) FROM first_sync_queue) FROM sync_runs WHERE id = ?1",
                [run],
                |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?)),
            )
            .unwrap();
        assert_eq!(noted, (3, 3, 3));
    }

    /// Review finding: a run was cut at 1,000 members whatever their values weighed, so a
    /// trait's 30 KB values made 30 MB runs, up to ten of them held at once.
    #[tokio::test]
    async fn a_run_of_large_values_is_cut_at_a_quarter_of_a_megabyte() {
        let value = format!("\"{}\"", "n".repeat(30 << 10));
        let (_dir, db, _) = queued((0..100).map(|i| (format!("u{i:03}"), value.clone())).collect()).await;
        let (runs, entries, longest): (i64, i64, i64) = db
            .query_row("SELECT count(*), sum(entries), max(length(users)) FROM first_sync_queue", [], |r| {
                Ok((r.get(0)?, r.get(1)?, r.get(2)?))
            })
            .unwrap();
        assert_eq!(entries, 100);
        assert!(runs >= 10, "{runs} runs");
        assert!(longest < (256 + 40) << 10, "a run of {longest} bytes");
    }
}
