//! Checkpoints off the writers' path.
//!
//! In WAL mode a committing connection checkpoints by itself once the log passes 1,000 pages:
//! it copies them back into the database and syncs it, which takes milliseconds. On the
//! committer that is time every request in flight waits before its slot is freed, and after a
//! big diff it is most of the commit (docs/performance.md). So the bulk writers do not
//! checkpoint (`wal_autocheckpoint = 0`, see `Store::bulk_writer`); they nudge a thread, which
//! runs a PASSIVE checkpoint on its own connection while writing goes on.
//!
//! A checkpoint alone does not keep the WAL small: SQLite starts the log over only when a write
//! transaction begins with every frame copied back. Otherwise the log grows, and each frame
//! written to new space in the file costs the kernel a page to zero (a large share of the
//! committer's time in the profile), and every page read searches a longer log.
//! - Delivery's writer never pauses: by the time its checkpointer is done it has appended
//!   more. So once a checkpoint is done, it copies the few frames written meanwhile itself
//!   (`Checkpointer::catch_up`): cheap, and its next transaction starts the log over.
//! - A pass's diffs (and first syncs' queues) commit one computation after another: the store's
//!   checkpointer (`Store::checkpoint_beside`) copies one back while the next one loads and
//!   diffs. Before its transaction, a diff copies what was written since (the pass's own few
//!   rows) when that checkpointer is idle, and so starts the log over (`Store::start_log_over`).
//!   When it is still copying, the diff does not wait for it and the log grows by one diff, up
//!   to `LOG_FRAMES`: past them, the diff waits for the copy and starts the log over.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::mpsc::{SyncSender, sync_channel};
use std::sync::{Arc, Condvar, Mutex};
use std::thread::JoinHandle;

use super::Store;

/// Frames (pages) the log may hold before a diff waits for the store's checkpointer to have
/// copied them back, so that it can start the log over. (Tests pass it with smaller diffs.)
const LOG_FRAMES: u64 = if cfg!(test) { 256 } else { 8192 };

/// A thread that checkpoints the state's WAL when nudged; dropping it waits for the one in progress.
pub struct Checkpointer {
    nudges: Option<SyncSender<()>>,
    thread: Option<JoinHandle<()>>,
    /// Set when the thread has run a checkpoint the writer has not caught up with yet.
    done: Arc<AtomicBool>,
    tally: Arc<Tally>,
}

/// How far the thread is with what it was asked.
#[derive(Default)]
struct Tally {
    /// Nudges so far.
    asked: AtomicU64,
    /// Nudges the last checkpoint tried answered; signalled at each.
    tried: Mutex<u64>,
    tries: Condvar,
    /// Frames in the log at the last checkpoint (unknown, as many as can be, before the first).
    frames: AtomicU64,
}

impl Store {
    /// Starts a checkpointer, and asks it for a first checkpoint (of what a diff left).
    pub fn checkpointer(&self) -> Checkpointer {
        let checkpointer = Checkpointer::start(&self.path, true);
        checkpointer.nudge();
        checkpointer
    }

    /// Has the log copied back beside the writers once a diff or a first sync's queue commits
    /// (they do not checkpoint): a pass over many computations then diffs the next one while
    /// the last one's pages are copied, where each commit copied them itself first. The
    /// checkpointer is this handle's (and its clones'), started at the first call.
    pub(super) fn checkpoint_beside(&self) {
        self.checkpoints.get_or_init(|| Checkpointer::start(&self.path, false)).nudge();
    }

    /// Before a diff's (or a first sync queue's) transaction on `db`: once the store's
    /// checkpointer has tried everything it was asked (waited for when the log is long),
    /// copies what was written since, so that the transaction starts the log over.
    pub(super) fn start_log_over(&self, db: &rusqlite::Connection) -> rusqlite::Result<()> {
        let Some(checkpointer) = self.checkpoints.get() else { return Ok(()) };
        if checkpointer.idle(LOG_FRAMES) {
            checkpoint(db)?;
        }
        Ok(())
    }
}

impl Checkpointer {
    /// A thread that checkpoints the state at `path` when nudged. One that `catches_up` runs no
    /// checkpoint after one is done until its writer has caught up (`catch_up`).
    fn start(path: &std::path::Path, catches_up: bool) -> Checkpointer {
        let (nudges, rx) = sync_channel::<()>(1);
        let path = path.to_path_buf();
        let (done, tally) = (Arc::new(AtomicBool::new(false)), Arc::new(Tally::default()));
        let (checkpointed, tallied) = (done.clone(), tally.clone());
        let thread = std::thread::Builder::new().name("checkpointer".into()).spawn(move || {
            let db = match rusqlite::Connection::open(&path) {
                Ok(db) => db,
                Err(e) => return tracing::warn!(error = %e, "cannot open the state to checkpoint it"),
            };
            let _ = super::wait_for_locks(&db);
            // Until its first checkpoint says, the log may be long: a diff finding this thread
            // at work waits for it (else, with a first copy slowed by a loaded machine, diff
            // after diff went on beside it and the log grew by each).
            tallied.frames.store(u64::MAX, Ordering::Release);
            for () in rx {
                // Until the writer has caught up, another checkpoint would only stand in its way.
                if catches_up && checkpointed.load(Ordering::Acquire) {
                    continue;
                }
                // The writer's catch-up copies what this one could not: the frames appended while
                // it ran, or all of them when the writer's restarting the log made it give up.
                let asked = tallied.asked.load(Ordering::Acquire);
                match checkpoint_counting(&db) {
                    Ok((_, frames)) => {
                        checkpointed.store(true, Ordering::Release);
                        tallied.frames.store(frames, Ordering::Release);
                    }
                    Err(e) => tracing::warn!(error = %e, "checkpoint failed; the next one will retry"),
                }
                *tallied.tried.lock().unwrap_or_else(|e| e.into_inner()) = asked;
                tallied.tries.notify_all();
            }
        });
        let thread = thread.inspect_err(|e| tracing::warn!(error = %e, "cannot start the checkpointer")).ok();
        Checkpointer { nudges: Some(nudges), thread, done, tally }
    }

    /// Asks for a checkpoint; does nothing when one is already asked for.
    pub fn nudge(&self) {
        if let Some(n) = &self.nudges {
            self.tally.asked.fetch_add(1, Ordering::AcqRel);
            let _ = n.try_send(());
        }
    }

    /// Whether the thread has tried every checkpoint asked of it; when the log held more than
    /// `frames` at its last one, after waiting for it to. (Only a thread at work counts frames,
    /// and it tries each nudge in turn: the wait ends.)
    fn idle(&self, frames: u64) -> bool {
        let asked = self.tally.asked.load(Ordering::Acquire);
        let tried = self.tally.tried.lock().unwrap_or_else(|e| e.into_inner());
        if *tried >= asked {
            return true;
        }
        if self.tally.frames.load(Ordering::Acquire) <= frames {
            return false;
        }
        self.tally.tries.wait_while(tried, |tried| *tried < asked).is_ok()
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
    checkpoint_counting(db).map(|(whole, _)| whole)
}

/// `checkpoint`, and how many frames the log held.
fn checkpoint_counting(db: &rusqlite::Connection) -> rusqlite::Result<(bool, u64)> {
    db.query_row("PRAGMA wal_checkpoint(PASSIVE)", [], |r| {
        let (busy, log, copied): (i64, i64, i64) = (r.get(0)?, r.get(1)?, r.get(2)?);
        Ok((busy == 0 && log == copied, log.max(0) as u64))
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

    /// A pass's diffs one after another must not pile up in the log, nor each wait for its own
    /// pages to be copied back: the store's checkpointer copies them beside the next diff.
    #[tokio::test]
    async fn a_diffs_writes_reach_the_database_file_through_the_stores_checkpointer() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("state.db");
        let (store, _) = store_with_audience(dir.path()).await;
        let mut writer = store.diff_writer("a").unwrap();
        for i in 0..100_000 {
            let op = Op::Set { user_id: format!("user-{i:08}"), desired: "true".into(), change: Change::Entered };
            writer.apply(op).unwrap();
        }
        writer.commit(None).unwrap();
        let checkpointer = store.checkpoints.get().expect("the diff's commit asked for no checkpoint");
        assert!(checkpointer.wait_until_done(), "the checkpointer never finished a checkpoint");
        let size = std::fs::metadata(&path).unwrap().len();
        assert!(size > 100_000 * 40, "the rows are in the database file ({size} bytes)");
    }

    /// Diffs one after another, each opened as the last one's checkpoint is still copying,
    /// never find the checkpointer idle: without a bound the log grew by every diff of a pass
    /// (285 MB for 100 first syncs of 100,000 members).
    #[tokio::test]
    async fn diffs_one_after_another_keep_the_log_within_its_bound() {
        let dir = tempfile::tempdir().unwrap();
        let (store, _) = store_with_audience(dir.path()).await;
        let value = format!("\"{}\"", "v".repeat(1000));
        let log = || std::fs::metadata(dir.path().join("state.db-wal")).unwrap().len();
        let mut one_diff = 0;
        for diff in 0..30 {
            let mut writer = store.diff_writer("a").unwrap();
            for i in 0..1000 {
                let user_id = format!("user-{diff:02}-{i:05}");
                writer.apply(Op::Set { user_id, desired: value.clone(), change: Change::Entered }).unwrap();
            }
            writer.commit(None).unwrap();
            if diff == 0 {
                one_diff = log();
            }
        }
        // Past the bound a diff waits for the copy of those before it: the log holds a few.
        assert!(log() < 4 * one_diff, "the log grew to {} bytes, {one_diff} after one diff", log());
    }
}
