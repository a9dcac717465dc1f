//! Checkpoints off the writers' path.
//!
//! In WAL mode a committing connection checkpoints by itself once the log passes 1,000 pages:
//! it copies them back into the database and syncs it, which takes milliseconds. On the
//! committer that is time every request in flight waits before its slot is freed, and after a
//! big diff it is most of the commit (docs/performance.md). So the bulk writers do not checkpoint (`wal_autocheckpoint = 0`, see
//! `Store::bulk_writer`); they nudge this thread, which runs a PASSIVE checkpoint on its own
//! connection while writing goes on.
//!
//! A checkpoint alone does not keep the WAL small under a writer that never pauses: SQLite
//! starts the log over only when a write transaction begins with every frame copied back, and
//! by the time the checkpointer is done the writer has appended more. The log then grows for
//! the whole pass, and each frame written to new space in the file costs the kernel a page to
//! zero (a large share of the committer's time in the profile). So once a checkpoint is done, the writer copies the few frames written meanwhile
//! itself (`Checkpointer::catch_up`): cheap, and its next transaction starts the log over.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc::{SyncSender, sync_channel};
use std::thread::JoinHandle;

use super::Store;

/// A thread that checkpoints the state's WAL when nudged; dropping it waits for the one in progress.
pub struct Checkpointer {
    nudges: Option<SyncSender<()>>,
    thread: Option<JoinHandle<()>>,
    /// Set when the thread has run a checkpoint the writer has not caught up with yet.
    done: Arc<AtomicBool>,
}

impl Store {
    /// Starts a checkpointer, and asks it for a first checkpoint (of what a diff left).
    pub fn checkpointer(&self) -> Checkpointer {
        let (nudges, rx) = sync_channel::<()>(1);
        let path = self.path.clone();
        let done = Arc::new(AtomicBool::new(false));
        let checkpointed = done.clone();
        let thread = std::thread::spawn(move || {
            let db = match rusqlite::Connection::open(&path) {
                Ok(db) => db,
                Err(e) => return tracing::warn!(error = %e, "cannot open the state to checkpoint it"),
            };
            let _ = super::wait_for_locks(&db);
            for () in rx {
                // Until the writer has caught up, another checkpoint would only stand in its way.
                if checkpointed.load(Ordering::Acquire) {
                    continue;
                }
                // The writer's catch-up copies what this one could not: the frames appended while
                // it ran, or all of them when the writer's restarting the log made it give up.
                match checkpoint(&db) {
                    Ok(_) => checkpointed.store(true, Ordering::Release),
                    Err(e) => tracing::warn!(error = %e, "checkpoint failed; the next one will retry"),
                }
            }
        });
        let checkpointer = Checkpointer { nudges: Some(nudges), thread: Some(thread), done };
        checkpointer.nudge();
        checkpointer
    }
}

impl Checkpointer {
    /// Asks for a checkpoint; does nothing when one is already asked for.
    pub fn nudge(&self) {
        if let Some(n) = &self.nudges {
            let _ = n.try_send(());
        }
    }

    /// Once a checkpoint is done, copies back on the writer's own connection `db` the frames
    /// written since, so that the writer's next transaction starts the log over. Call it
    /// between transactions. True when it did; when a reader's older snapshot or another
    /// process's checkpoint stood in the way, the writer's next nudge tries again (asking at once
    /// would, while an operator holds a read transaction open, checkpoint after every commit).
    pub fn catch_up(&self, db: &rusqlite::Connection) -> rusqlite::Result<bool> {
        if !self.done.swap(false, Ordering::AcqRel) {
            return Ok(false);
        }
        checkpoint(db)
    }
}

#[cfg(test)]
impl Checkpointer {
    /// Waits until the thread has run a checkpoint the writer has not caught up with; false if
    /// none comes within ten million looks.
    fn wait_until_done(&self) -> bool {
        (0..10_000_000).any(|_| {
            std::thread::yield_now();
            self.done.load(Ordering::Acquire)
        })
    }
}

/// A PASSIVE checkpoint on `db`; true when it copied back the whole log. It does not wait: a
/// reader's older snapshot holds back the frames after it, and a connection starting the log
/// over, or checkpointing, makes it give up.
fn checkpoint(db: &rusqlite::Connection) -> rusqlite::Result<bool> {
    db.query_row("PRAGMA wal_checkpoint(PASSIVE)", [], |r| {
        let (busy, log, copied): (i64, i64, i64) = (r.get(0)?, r.get(1)?, r.get(2)?);
        Ok(busy == 0 && log == copied)
    })
}

impl Drop for Checkpointer {
    fn drop(&mut self) {
        drop(self.nudges.take());
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

#[cfg(test)]
mod tests {
    use crate::diff::{Change, Op, OpSink};
    use crate::state::testing::store_with_audience;

    #[tokio::test]
    async fn a_writer_that_never_pauses_still_starts_the_log_over() {
        let dir = tempfile::tempdir().unwrap();
        let (store, reader) = store_with_audience(dir.path()).await;
        let db = store.bulk_writer().unwrap();
        db.execute_batch("CREATE TABLE scratch (n INTEGER PRIMARY KEY, b BLOB)").unwrap();
        let checkpointer = store.checkpointer();
        let mut n = 0;
        let mut write = || {
            n += 1;
            let blob = vec![7u8; 4000];
            db.execute("INSERT INTO scratch VALUES (?1, ?2)", rusqlite::params![n, blob]).unwrap();
        };
        for _ in 0..30 {
            for _ in 0..100 {
                write();
            }
            // A writer that never pauses has always written more by the time a checkpoint is
            // done; here a reader's snapshot holds the checkpoint back from the last write.
            reader.execute_batch("BEGIN; SELECT count(*) FROM scratch;").unwrap();
            write();
            checkpointer.nudge();
            assert!(checkpointer.wait_until_done(), "the checkpointer never finished a checkpoint");
            reader.execute_batch("COMMIT").unwrap();
            assert!(checkpointer.catch_up(&db).unwrap(), "the writer could not copy back the rest");
        }
        let wal = std::fs::metadata(dir.path().join("state.db-wal")).unwrap().len();
        let written = n as u64 * 4096;
        assert!(wal < written / 4, "the log grew to {wal} bytes for {written} bytes written");
    }

    #[tokio::test]
    async fn bulk_writes_reach_the_database_file_through_the_checkpointer() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("state.db");
        let (store, _) = store_with_audience(dir.path()).await;
        let db = store.bulk_writer().unwrap();
        db.execute_batch("CREATE TABLE scratch (n INTEGER PRIMARY KEY, b BLOB)").unwrap();
        let size = || std::fs::metadata(&path).unwrap().len();
        let before = size();
        db.execute_batch("BEGIN").unwrap();
        for n in 0..1000 {
            db.execute("INSERT INTO scratch VALUES (?1, ?2)", rusqlite::params![n, vec![7u8; 4000]]).unwrap();
        }
        db.execute_batch("COMMIT").unwrap();
        assert!(size() < before + 1000 * 4000, "the bulk writer checkpointed by itself ({} bytes)", size());

        drop(store.checkpointer()); // asks for a checkpoint, and waits for it
        assert!(size() > before + 1000 * 4000, "the rows are in the database file ({} bytes, was {before})", size());
    }

    /// A pass's diffs one after another must not pile up in the log: a diff's commit copies a
    /// long log back into the database file.
    #[tokio::test]
    async fn a_diffs_commit_copies_its_writes_back_into_the_database_file() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("state.db");
        let (store, _) = store_with_audience(dir.path()).await;
        let mut writer = store.diff_writer("a").unwrap();
        for i in 0..100_000 {
            let op = Op::Set { user_id: format!("user-{i:08}"), desired: "true".into(), change: Change::Entered };
            writer.apply(op).unwrap();
        }
        writer.commit(None).unwrap();
        let size = std::fs::metadata(&path).unwrap().len();
        assert!(size > 100_000 * 40, "the rows are in the database file ({size} bytes)");
    }
}
