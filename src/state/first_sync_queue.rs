//! A first sync's queue, whatever the backend: its members, in the state until each is
//! answered, so that `pending`, `computation_status` and `status` show a first sync's work
//! while it runs (migration 0010).
//!
//! Delivery reads a first sync's members from its spool (`diff::spool`), not from here: the
//! queue is written once, a run of members per row, and only read by operators (and, after a
//! kill, by the next pass settling the windows that were out). A row per member would cost a
//! first sync a B-tree write per member and another to delete it. A run is emptied once every
//! member in it is answered (`AnswerRecords::answered_through`): the rows written next reuse
//! its space.

use std::sync::mpsc::{Receiver, SyncSender, sync_channel};
use std::thread::JoinHandle;

use super::RunCounts;

/// Members per queue row: small enough that finding one user reads one short JSON text.
const RUN_ENTRIES: u64 = 1000;
/// A run is cut sooner once its text reaches this: a trait's values may be 32 KB each, and a
/// thousand of them made runs of 32 MB, ten at a time in memory (review finding).
const RUN_BYTES: usize = 256 << 10;
/// Runs handed to the writing thread and not written yet, at most.
const RUNS_AHEAD: usize = 8;

/// A run of queued members: users after `after` up to `last`, as a JSON array of pairs.
#[derive(Default)]
pub struct QueueRun {
    pub after: String,
    pub last: String,
    pub users: Vec<u8>,
    pub entries: u64,
}

/// A backend's side of a queue: one transaction over every run, which replaces whatever an
/// earlier first sync of the computation left.
pub trait QueueRows: Send {
    fn insert(&mut self, run: &QueueRun) -> anyhow::Result<()>;
    /// Notes the diff's counts on its `sync_runs` row `run` (as `Store::note_diff`) and
    /// commits, checking (and renewing) the lease in the transaction.
    fn commit(&mut self, run: i64, counts: &RunCounts) -> anyhow::Result<()>;
}

/// The writer of one first sync's queue: the diff's thread builds the runs, a thread of the
/// writer's own inserts them (beside the diff, which is single-threaded, rather than in its
/// time). It counts only once `commit` is called; dropping it rolls everything back.
pub struct QueueWriter {
    run: QueueRun,
    runs: Option<SyncSender<Queued>>,
    inserting: Option<JoinHandle<anyhow::Result<()>>>,
}

/// What the inserting thread is handed: a run to insert, or, last, the counts to note on the
/// `sync_runs` row as it commits.
enum Queued {
    Run(QueueRun),
    Commit(i64, RunCounts),
}

impl QueueWriter {
    /// Starts the inserting thread over a backend's `rows`.
    pub fn start(rows: Box<dyn QueueRows>) -> anyhow::Result<QueueWriter> {
        let (runs, received) = sync_channel(RUNS_AHEAD);
        let inserting =
            std::thread::Builder::new().name("first-sync-queue".into()).spawn(move || insert_all(rows, received))?;
        Ok(QueueWriter { run: QueueRun::default(), runs: Some(runs), inserting: Some(inserting) })
    }

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
        if run.entries == RUN_ENTRIES || run.users.len() >= RUN_BYTES {
            self.hand_over()?;
        }
        Ok(())
    }

    /// Commits the queue with the diff's `counts` noted on its `sync_runs` row `run`, checking
    /// (and renewing) the lease in its transaction. Blocking. The counts go in this transaction
    /// rather than one of their own after it: on SQLite the next commit of another connection
    /// would copy the queue's whole log back into the database file before delivery could
    /// begin, where the answers' checkpointer does it beside delivery (docs/performance.md).
    pub fn commit(mut self, run: i64, counts: RunCounts) -> anyhow::Result<()> {
        self.hand_over()?;
        self.send(Queued::Commit(run, counts))?;
        self.runs = None;
        self.finish()
    }

    fn hand_over(&mut self) -> anyhow::Result<()> {
        if self.run.entries == 0 {
            return Ok(());
        }
        self.run.users.push(b']');
        let next = QueueRun { after: self.run.last.clone(), ..QueueRun::default() };
        let run = std::mem::replace(&mut self.run, next);
        self.send(Queued::Run(run))
    }

    fn send(&mut self, queued: Queued) -> anyhow::Result<()> {
        match self.runs.as_ref().map(|runs| runs.send(queued)) {
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

/// Inserts runs until told to commit, or until the writer is dropped (then the transaction
/// rolls back with the connection).
fn insert_all(mut rows: Box<dyn QueueRows>, queued: Receiver<Queued>) -> anyhow::Result<()> {
    while let Ok(next) = queued.recv() {
        match next {
            Queued::Run(run) => rows.insert(&run)?,
            Queued::Commit(run, counts) => return rows.commit(run, &counts),
        }
    }
    Ok(())
}
