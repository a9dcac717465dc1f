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
use crate::change::Outcome;
use crate::state::{AnswerWriter, Store};

/// Most answers recorded in one transaction.
const MAX_ACK_BATCH: usize = 4096;

/// A write asked of the committer.
pub enum Write {
    /// The answers of one call.
    Answers(CallAnswers),
    /// A window is about to be sent; say when that is noted.
    Sending { note: WindowNote, noted: oneshot::Sender<anyhow::Result<()>> },
    /// Sending ended of itself (not abandoned): every call that went out has its answers
    /// recorded, so the windows still noted hold only users never sent, whose notes go.
    Done,
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
        keys,
        windows: HashMap::new(),
        quarantined: BTreeMap::new(),
    };
    let mut next = writes.recv().await;
    while let Some(write) = next.take() {
        next = match write {
            Write::Sending { note, noted } => {
                let _ = noted.send(committer.note(note));
                None
            }
            Write::Answers(answers) => committer.record_arrived(answers, &mut writes)?,
            Write::Done => {
                committer.forget_unsent()?;
                None
            }
        };
        if next.is_none() {
            next = writes.recv().await;
        }
    }
    Ok(committer.quarantined)
}

/// The answers of one call of window `window`, and where to hand them back once recorded.
pub struct CallAnswers {
    pub window: u64,
    pub outcomes: Vec<Outcome>,
    pub committed: oneshot::Sender<Vec<Outcome>>,
}

/// A window noted and not yet wholly answered: its calls still out, its `sending_windows` rows.
struct NotedWindow {
    calls_left: usize,
    ids: Vec<i64>,
}

struct Committer {
    writer: AnswerWriter,
    keys: Vec<String>,
    windows: HashMap<u64, NotedWindow>,
    quarantined: BTreeMap<String, u64>,
}

impl Committer {
    /// Drops the notes of the windows not wholly answered: after a clean end of sending, the
    /// rest of their users never went out, and the next pass must not treat them as told.
    fn forget_unsent(&mut self) -> anyhow::Result<()> {
        let ids: Vec<i64> = self.windows.drain().flat_map(|(_, noted)| noted.ids).collect();
        if !ids.is_empty() {
            self.writer.record(&[], &ids)?;
        }
        Ok(())
    }

    fn note(&mut self, note: WindowNote) -> anyhow::Result<()> {
        let ids = self.writer.note_window(&self.keys, &note.after, &note.last)?;
        self.windows.insert(note.window, NotedWindow { calls_left: note.calls, ids });
        Ok(())
    }

    /// Records `first` and every answer that has already arrived behind it, in one
    /// transaction, then hands each call its answers back. Returns the first other write it met.
    fn record_arrived(
        &mut self,
        first: CallAnswers,
        writes: &mut mpsc::Receiver<Write>,
    ) -> anyhow::Result<Option<Write>> {
        let (mut calls, mut waiting, mut answered) = (Vec::new(), Vec::new(), Vec::new());
        let (mut rows, mut other) = (0, None);
        let mut next = Some(first);
        while let Some(CallAnswers { window, outcomes, committed }) = next.take() {
            rows += outcomes.len();
            calls.push(outcomes);
            waiting.push(committed);
            if let Some(noted) = self.windows.get_mut(&window) {
                noted.calls_left -= 1;
                if noted.calls_left == 0 {
                    answered.append(&mut noted.ids);
                    self.windows.remove(&window);
                }
            }
            if rows < MAX_ACK_BATCH {
                match writes.try_recv() {
                    Ok(Write::Answers(answers)) => next = Some(answers),
                    Ok(write) => other = Some(write),
                    Err(_) => {}
                }
            }
        }
        for key in self.writer.record(&calls, &answered)? {
            *self.quarantined.entry(key).or_default() += 1;
        }
        for (committed, outcomes) in waiting.into_iter().zip(calls) {
            let _ = committed.send(outcomes);
        }
        self.writer.catch_up();
        Ok(other)
    }
}
