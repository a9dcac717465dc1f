//! The committer: the one writer of delivery's state. It marks each window of users as about to
//! be sent, and records answers as they come, as many per transaction as have arrived, on a
//! blocking thread with its own connection (see `state::AnswerWriter`).
//!
//! Both kinds of write go through this one thread on purpose: two connections writing in turn
//! meet SQLite's busy handler, which sleeps a millisecond or more whenever the other holds the
//! lock, and every request slot waits out that sleep.

use std::collections::BTreeMap;

use tokio::sync::{mpsc, oneshot};

use crate::state::{Outcome, Store};

/// Most answers recorded in one transaction.
const MAX_ACK_BATCH: usize = 4096;

/// A write asked of the committer.
pub enum Write {
    /// One call's answers, and where to say they are recorded.
    Answers { outcomes: Vec<Outcome>, committed: oneshot::Sender<()> },
    /// Users in (`after`, `last`] are about to be sent; say when that is noted.
    Sending { after: String, last: String, noted: oneshot::Sender<anyhow::Result<()>> },
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
    let mut quarantined: BTreeMap<String, u64> = BTreeMap::new();
    let mut waiting: Vec<oneshot::Sender<()>> = Vec::new();
    let mut outcomes: Vec<Outcome> = Vec::new();
    let mut next = writes.blocking_recv();
    while let Some(write) = next.take() {
        match write {
            Write::Sending { after, last, noted } => {
                let _ = noted.send(writer.mark_sending(&keys, &after, &last));
            }
            Write::Answers { outcomes: mut first, committed } => {
                outcomes.clear();
                outcomes.append(&mut first);
                waiting.push(committed);
                // Gather the answers that have already arrived, up to the first other write.
                while outcomes.len() < MAX_ACK_BATCH {
                    match writes.try_recv() {
                        Ok(Write::Answers { outcomes: mut more, committed }) => {
                            outcomes.append(&mut more);
                            waiting.push(committed);
                        }
                        Ok(other) => {
                            next = Some(other);
                            break;
                        }
                        Err(_) => break,
                    }
                }
                for key in writer.record(&outcomes)? {
                    *quarantined.entry(key).or_default() += 1;
                }
                for committed in waiting.drain(..) {
                    let _ = committed.send(());
                }
            }
        }
        if next.is_none() {
            next = writes.blocking_recv();
        }
    }
    Ok(quarantined)
}
