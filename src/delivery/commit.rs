//! The committer: the one writer of delivery's state. It notes each window of users as about to
//! be sent, records answers as they come, as many per transaction as have arrived, and drops a
//! window's note with its last answer; on a blocking thread with its own connection (see
//! `state::AnswerWriter`).
//!
//! Both kinds of write go through this one thread on purpose: two connections writing in turn
//! meet SQLite's busy handler, which sleeps a millisecond or more whenever the other holds the
//! lock, and every request slot waits out that sleep.

use std::collections::{BTreeMap, HashMap};

use tokio::sync::{mpsc, oneshot};

use crate::state::{Outcome, Store};

/// Most answers recorded in one transaction.
const MAX_ACK_BATCH: usize = 4096;
/// Transactions between two checkpoints asked of the checkpointer.
const COMMITS_PER_CHECKPOINT: u32 = 200;

/// A write asked of the committer.
pub enum Write {
    /// The answers of one call of window `window`, and where to say they are recorded.
    Answers { window: u64, outcomes: Vec<Outcome>, committed: oneshot::Sender<()> },
    /// Window `window`, users in (`after`, `last`] sent in `calls` calls, is about to be sent;
    /// say when that is noted.
    Sending { window: u64, calls: usize, after: String, last: String, noted: oneshot::Sender<anyhow::Result<()>> },
}

/// Serves writes for the computations `keys` until the channel closes; returns how many rows
/// each computation had quarantined. Blocking: run it with `spawn_blocking`.
pub fn commit_loop(
    store: Store,
    keys: Vec<String>,
    mut writes: mpsc::Receiver<Write>,
    quarantine_after: u32,
) -> anyhow::Result<BTreeMap<String, u64>> {
    let mut writer = store.answer_writer(quarantine_after)?;
    let checkpointer = store.checkpointer();
    let mut commits = 0u32;
    let mut quarantined: BTreeMap<String, u64> = BTreeMap::new();
    // Per window noted: its calls not yet answered, and its rows in `sending_windows`.
    let mut windows: HashMap<u64, (usize, Vec<i64>)> = HashMap::new();
    let mut waiting: Vec<oneshot::Sender<()>> = Vec::new();
    let mut calls: Vec<Vec<Outcome>> = Vec::new();
    let mut rows;
    let mut answered: Vec<i64> = Vec::new();
    let mut next = writes.blocking_recv();
    while let Some(write) = next.take() {
        let mut answers = match write {
            Write::Sending { window, calls, after, last, noted } => {
                let result = writer.note_window(&keys, &after, &last).map(|ids| {
                    windows.insert(window, (calls, ids));
                });
                let _ = noted.send(result);
                None
            }
            Write::Answers { window, outcomes, committed } => Some((window, outcomes, committed)),
        };
        calls.clear();
        rows = 0;
        answered.clear();
        // Gather the answers that have already arrived, up to the first other write.
        while let Some((window, outcomes, committed)) = answers.take() {
            rows += outcomes.len();
            calls.push(outcomes);
            waiting.push(committed);
            if let Some((calls, ids)) = windows.get_mut(&window) {
                *calls -= 1;
                if *calls == 0 {
                    answered.append(ids);
                    windows.remove(&window);
                }
            }
            if rows < MAX_ACK_BATCH {
                match writes.try_recv() {
                    Ok(Write::Answers { window, outcomes, committed }) => answers = Some((window, outcomes, committed)),
                    Ok(other) => next = Some(other),
                    Err(_) => {}
                }
            }
        }
        if !waiting.is_empty() {
            for key in writer.record(&calls, &answered)? {
                *quarantined.entry(key).or_default() += 1;
            }
            commits += 1;
            if commits.is_multiple_of(COMMITS_PER_CHECKPOINT) || rows >= MAX_ACK_BATCH {
                checkpointer.nudge();
            }
            for committed in waiting.drain(..) {
                let _ = committed.send(());
            }
        }
        if next.is_none() {
            next = writes.blocking_recv();
        }
    }
    Ok(quarantined)
}
