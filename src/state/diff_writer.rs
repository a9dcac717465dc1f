//! The diff's writes, whatever the backend: every op of one computation's diff in one
//! transaction, written on a thread of its own fed ops in batches.
//!
//! An initial pass writes every member, ten million rows for a big audience, and a delta of a
//! big audience writes its changes while the merge reads the whole state: the writes run beside
//! the merge rather than in its time (they were a third of the merge thread in a 10M delta).
//! A backend's `DiffRows` begins its transaction at the first op, after the snapshot has loaded
//! and sorted, so a long load does not hold the state's write lock.

use std::sync::mpsc::{Receiver, SyncSender, sync_channel};
use std::thread::JoinHandle;

use crate::diff::{Op, OpSink};
use crate::source::fingerprint::Fingerprint;
use crate::weigh::Weigh;

/// Ops handed to the writing thread at a time, and batches queued for it at most. A batch goes
/// sooner once its ops weigh `BATCH_BYTES`: a trait's values may be 32 KB each, and six batches
/// of 1,024 such held 190 MB (review finding).
const OPS_PER_BATCH: usize = 1024;
const BATCH_BYTES: usize = 1 << 20;
const BATCHES_AHEAD: usize = 4;

/// One write of the diff, as the writing thread receives it.
pub enum DiffWrite {
    Set { user_id: String, desired: String },
    Forget { user_id: String },
}

impl Weigh for DiffWrite {
    fn weight(&self) -> usize {
        match self {
            DiffWrite::Set { user_id, desired } => user_id.len() + desired.len(),
            DiffWrite::Forget { user_id } => user_id.len(),
        }
    }
}

/// A backend's side of a diff: its connection and its transaction, on the writing thread.
pub trait DiffRows: Send {
    /// Writes `batch` in the diff's transaction (beginning it at the first batch).
    fn write(&mut self, batch: Vec<DiffWrite>) -> anyhow::Result<()>;
    /// Commits everything written, noting the snapshot's fingerprint and rows (a diff of any
    /// other source withdraws the recorded hash), after checking and renewing the lease.
    fn commit(&mut self, snapshot: Option<(&Fingerprint, u64)>) -> anyhow::Result<()>;
}

/// The diff's writes for one computation. They count only once `commit` is called; dropping
/// the writer (on any error, or when a guard holds the snapshot back) rolls them all back.
pub struct DiffWriter {
    batch: Vec<DiffWrite>,
    /// What the batch's ops weigh.
    weight: usize,
    batches: Option<SyncSender<Vec<DiffWrite>>>,
    writing: Option<JoinHandle<anyhow::Result<Box<dyn DiffRows>>>>,
}

impl DiffWriter {
    /// Starts the writing thread over a backend's `rows`.
    pub fn start(mut rows: Box<dyn DiffRows>) -> anyhow::Result<DiffWriter> {
        let (batches, received) = sync_channel(BATCHES_AHEAD);
        let write_all = move |received: Receiver<Vec<DiffWrite>>| {
            for batch in received {
                rows.write(batch)?;
            }
            Ok(rows)
        };
        let writing = std::thread::Builder::new().name("diff-writer".into()).spawn(move || write_all(received))?;
        let batch = Vec::with_capacity(OPS_PER_BATCH);
        Ok(DiffWriter { batch, weight: 0, batches: Some(batches), writing: Some(writing) })
    }

    /// Commits the diff, noting the fingerprint of the file snapshot it came from (and its
    /// rows) in the same transaction. Blocking.
    pub fn commit(mut self, snapshot: Option<(&Fingerprint, u64)>) -> anyhow::Result<()> {
        self.send()?;
        self.written()?.commit(snapshot)
    }

    /// Hands the ops gathered so far to the writing thread; its error if it stopped on one.
    fn send(&mut self) -> anyhow::Result<()> {
        let batch = std::mem::replace(&mut self.batch, Vec::with_capacity(OPS_PER_BATCH));
        self.weight = 0;
        let sent = self.batches.as_ref().is_some_and(|b| b.send(batch).is_ok());
        if sent {
            Ok(())
        } else {
            Err(self.written().err().unwrap_or_else(|| anyhow::anyhow!("the diff's writer stopped")))
        }
    }

    /// Waits for the writing thread to have written every op sent; its side, or its error.
    fn written(&mut self) -> anyhow::Result<Box<dyn DiffRows>> {
        drop(self.batches.take());
        let writing = self.writing.take().ok_or_else(|| anyhow::anyhow!("the diff's writer stopped"))?;
        writing.join().map_err(|_| anyhow::anyhow!("the diff's writer panicked"))?
    }
}

impl Drop for DiffWriter {
    /// Not committed: the thread writes what it was sent, then its connection closes, which
    /// rolls the transaction back. Waited for, so that the write lock is free on return.
    fn drop(&mut self) {
        let _ = self.written();
    }
}

impl OpSink for DiffWriter {
    fn apply(&mut self, op: Op) -> anyhow::Result<()> {
        let write = match op {
            Op::Set { user_id, desired, .. } => DiffWrite::Set { user_id, desired },
            Op::Forget { user_id } => DiffWrite::Forget { user_id },
        };
        self.weight += write.weight();
        self.batch.push(write);
        if self.batch.len() == OPS_PER_BATCH || self.weight >= BATCH_BYTES {
            self.send()?;
        }
        Ok(())
    }
}
