//! Checkpoints off the writers' path.
//!
//! In WAL mode a committing connection checkpoints by itself once the log passes 1,000 pages:
//! it copies them back into the database and syncs it, which takes milliseconds. On the
//! committer that is time every request in flight waits before its slot is freed (about 7 % of
//! Contentstack throughput at 5 ms and concurrency 64, measured), and after a big diff it is
//! most of the commit. So the bulk writers do not checkpoint (`wal_autocheckpoint = 0`, see
//! `Store::bulk_writer`); they nudge this thread, which runs a PASSIVE checkpoint on its own
//! connection while writing goes on.

use std::sync::mpsc::{SyncSender, sync_channel};
use std::thread::JoinHandle;

use super::{BUSY_TIMEOUT, Store};

/// A thread that checkpoints the state's WAL when nudged; dropping it waits for the one in progress.
pub struct Checkpointer {
    nudges: Option<SyncSender<()>>,
    thread: Option<JoinHandle<()>>,
}

impl Store {
    /// Starts a checkpointer, and asks it for a first checkpoint (of what a diff left).
    pub fn checkpointer(&self) -> Checkpointer {
        let (nudges, rx) = sync_channel::<()>(1);
        let path = self.path.clone();
        let thread = std::thread::spawn(move || {
            let db = match rusqlite::Connection::open(&path) {
                Ok(db) => db,
                Err(e) => return tracing::warn!(error = %e, "cannot open the state to checkpoint it"),
            };
            let _ = db.busy_timeout(BUSY_TIMEOUT);
            for () in rx {
                if let Err(e) = db.query_row("PRAGMA wal_checkpoint(PASSIVE)", [], |_| Ok(())) {
                    tracing::warn!(error = %e, "checkpoint failed; the next one will retry");
                }
            }
        });
        let checkpointer = Checkpointer { nudges: Some(nudges), thread: Some(thread) };
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
    async fn bulk_writes_reach_the_database_file_through_the_checkpointer() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("state.db");
        let (store, _) = store_with_audience(dir.path()).await;
        let mut writer = store.diff_writer("a").unwrap();
        for i in 0..20_000 {
            let op = Op::Set { user_id: format!("user-{i:08}"), desired: "true".into(), change: Change::Entered };
            writer.apply(op).unwrap();
        }
        writer.commit(None).unwrap();
        let size = || std::fs::metadata(&path).unwrap().len();
        let before = size();
        assert!(before < 20_000 * 20, "the bulk writer checkpointed by itself ({before} bytes)");

        drop(store.checkpointer()); // asks for a checkpoint, and waits for it
        assert!(size() > 20_000 * 40, "the rows are in the database file ({} bytes, was {before})", size());
    }
}
