//! The committer: the one writer of delivery's state. It notes each window of users as about to
//! be sent, records answers as they come, as many per transaction as have arrived, and drops a
//! window's note with its last answer; with its own connection (see `state::AnswerWriter`),
//! on the sending thread or a thread of its own (`deliver` says which, and why).
//!
//! Both kinds of write go through this one writer on purpose: two connections writing in turn
//! meet SQLite's busy handler, which sleeps a millisecond or more whenever the other holds the
//! lock, and every request slot waits out that sleep.

use std::collections::{BTreeMap, HashMap};

use tokio::sync::{mpsc, oneshot};

use super::WindowNote;
use crate::state::{AnswerWriter, Checkpointer, Outcome, Store};

/// Most answers recorded in one transaction.
const MAX_ACK_BATCH: usize = 4096;
/// Transactions, or answers, between two checkpoints asked of the checkpointer, whichever
/// comes first. Each ends with the committer catching up (two fsyncs and the frames written
/// meanwhile, see `state::Checkpointer`): a thousand Contentstack transactions leave about 12 MB
/// of log; 65,536 answers of a batch destination about 8 MB (after every 4,096-answer commit,
/// catching up was a third of the committer's time in a file destination's first sync).
const COMMITS_PER_CHECKPOINT: u32 = 1000;
const ANSWERS_PER_CHECKPOINT: usize = 65_536;

/// A write asked of the committer.
pub enum Write {
    /// The answers of one call of window `window`, and where to hand them back once recorded.
    Answers { window: u64, outcomes: Vec<Outcome>, committed: oneshot::Sender<Vec<Outcome>> },
    /// A window is about to be sent; say when that is noted.
    Sending { note: WindowNote, noted: oneshot::Sender<anyhow::Result<()>> },
}

/// Serves writes for the computations `keys` (of which `first_sync` are on their first sync,
/// and `runs` gives each one's running `sync_runs` row) until the channel closes; returns how many rows each computation had quarantined.
/// Between writes it waits without blocking; each write blocks the thread for its transaction
/// (tens of microseconds for a few answers).
pub async fn commit_loop(
    store: Store,
    keys: Vec<String>,
    first_sync: Vec<String>,
    runs: BTreeMap<String, i64>,
    mut writes: mpsc::Receiver<Write>,
    quarantine_after: u32,
) -> anyhow::Result<BTreeMap<String, u64>> {
    let mut committer = Committer {
        writer: store.answer_writer(&keys, quarantine_after, &first_sync)?.counting_on(runs),
        checkpointer: store.checkpointer(),
        keys,
        windows: HashMap::new(),
        quarantined: BTreeMap::new(),
        commits: 0,
        answers: 0,
    };
    let mut next = writes.recv().await;
    while let Some(write) = next.take() {
        next = match write {
            Write::Sending { note, noted } => {
                let _ = noted.send(committer.note(note));
                None
            }
            Write::Answers { window, outcomes, committed } => {
                committer.record_arrived((window, outcomes, committed), &mut writes)?
            }
        };
        if next.is_none() {
            next = writes.recv().await;
        }
    }
    Ok(committer.quarantined)
}

/// One call's answers: its window, its outcomes, where to say they are recorded.
type Answers = (u64, Vec<Outcome>, oneshot::Sender<Vec<Outcome>>);

struct Committer {
    writer: AnswerWriter,
    checkpointer: Checkpointer,
    keys: Vec<String>,
    /// Per window noted: its calls not yet answered, and its rows in `sending_windows`.
    windows: HashMap<u64, (usize, Vec<i64>)>,
    quarantined: BTreeMap<String, u64>,
    /// Transactions and answers recorded since the last checkpoint asked for.
    commits: u32,
    answers: usize,
}

impl Committer {
    fn note(&mut self, note: WindowNote) -> anyhow::Result<()> {
        let ids = self.writer.note_window(&self.keys, &note.after, &note.last)?;
        self.windows.insert(note.window, (note.calls, ids));
        Ok(())
    }

    /// Records `first` and every answer that has already arrived behind it, in one
    /// transaction, then hands each call its answers back. Returns the first other write it met.
    fn record_arrived(&mut self, first: Answers, writes: &mut mpsc::Receiver<Write>) -> anyhow::Result<Option<Write>> {
        let (mut calls, mut waiting, mut answered) = (Vec::new(), Vec::new(), Vec::new());
        let (mut rows, mut other) = (0, None);
        let mut next = Some(first);
        while let Some((window, outcomes, committed)) = next.take() {
            rows += outcomes.len();
            calls.push(outcomes);
            waiting.push(committed);
            if let Some((left, ids)) = self.windows.get_mut(&window) {
                *left -= 1;
                if *left == 0 {
                    answered.append(ids);
                    self.windows.remove(&window);
                }
            }
            if rows < MAX_ACK_BATCH {
                match writes.try_recv() {
                    Ok(Write::Answers { window, outcomes, committed }) => next = Some((window, outcomes, committed)),
                    Ok(write) => other = Some(write),
                    Err(_) => {}
                }
            }
        }
        for key in self.writer.record(&calls, &answered)? {
            *self.quarantined.entry(key).or_default() += 1;
        }
        self.commits += 1;
        self.answers += rows;
        if self.commits >= COMMITS_PER_CHECKPOINT || self.answers >= ANSWERS_PER_CHECKPOINT {
            self.checkpointer.nudge();
            (self.commits, self.answers) = (0, 0);
        }
        for (committed, outcomes) in waiting.into_iter().zip(calls) {
            let _ = committed.send(outcomes);
        }
        // The answers are recorded; a log that stays long is no reason to stop delivering.
        if let Err(e) = self.writer.catch_up(&self.checkpointer) {
            tracing::warn!(error = %e, "checkpoint failed; the next one will retry");
        }
        Ok(other)
    }
}
