//! The committer: records answers as they come, as many per transaction as have arrived, on
//! a blocking thread with its own connection (see `state::AnswerWriter`).

use std::collections::BTreeMap;

use tokio::sync::{mpsc, oneshot};

use crate::state::{Outcome, Store};

/// Most answers recorded in one transaction.
const MAX_ACK_BATCH: usize = 4096;

/// One call's answers, and where to say they are recorded.
pub struct Ack {
    pub outcomes: Vec<Outcome>,
    pub committed: oneshot::Sender<()>,
}

/// Records every call's answers until the channel closes; returns how many rows each
/// computation had quarantined. Blocking: run it with `spawn_blocking`.
pub fn commit_loop(
    store: Store,
    mut acks: mpsc::Receiver<Ack>,
    quarantine_after: u32,
) -> anyhow::Result<BTreeMap<String, u64>> {
    let mut writer = store.answer_writer(quarantine_after)?;
    let mut quarantined: BTreeMap<String, u64> = BTreeMap::new();
    let mut batch: Vec<Ack> = Vec::new();
    let mut outcomes: Vec<Outcome> = Vec::new();
    while let Some(first) = acks.blocking_recv() {
        let mut rows = first.outcomes.len();
        batch.push(first);
        while rows < MAX_ACK_BATCH {
            match acks.try_recv() {
                Ok(a) => {
                    rows += a.outcomes.len();
                    batch.push(a);
                }
                Err(_) => break,
            }
        }
        outcomes.clear();
        for a in &mut batch {
            outcomes.append(&mut a.outcomes);
        }
        for key in writer.record(&outcomes)? {
            *quarantined.entry(key).or_default() += 1;
        }
        for a in batch.drain(..) {
            let _ = a.committed.send(());
        }
    }
    Ok(quarantined)
}
