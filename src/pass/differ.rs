//! Running a diff: the snapshot is loaded and merged with the state on one blocking thread
//! (plain iterators, no per-row hand-offs); only the ops, in batches, come back to the async
//! side that writes them.

use tokio::sync::mpsc;

use crate::config::Computation;
use crate::diff::{self, DiffCounts, Op, OpSink};
use crate::progress::Stage;
use crate::source;
use crate::state::Store;

/// Ops per batch sent to the writer.
const BATCH: usize = 1000;

/// Loads the snapshot of `c` and merges it with its state (`None`: no state yet) on a blocking
/// thread, handing every op to `sink`; gives the sink back with the counts.
pub async fn run<S: OpSink + Send + 'static>(
    store: Option<Store>,
    c: &Computation,
    sort_buffer_bytes: usize,
    loading: Stage,
    diffing: Stage,
    mut sink: S,
) -> anyhow::Result<(DiffCounts, S)> {
    let c = c.clone();
    tokio::task::spawn_blocking(move || {
        let snapshot = source::load_sorted(&c, sort_buffer_bytes, &loading)?;
        let snapshot = snapshot.map(|r| {
            diffing.inc(1);
            r.map_err(anyhow::Error::from)
        });
        let counts = match &store {
            Some(s) => s.with_state_rows(&c.key, |state| diff::merge(c.kind, state, snapshot, &mut sink))?,
            None => diff::merge(c.kind, std::iter::empty(), snapshot, &mut sink)?,
        };
        diffing.finish();
        Ok((counts, sink))
    })
    .await?
}

/// Sends ops in batches over a channel, from the blocking merge to the async writer.
pub struct Batches {
    tx: mpsc::Sender<Vec<Op>>,
    batch: Vec<Op>,
}

impl Batches {
    pub fn new(tx: mpsc::Sender<Vec<Op>>) -> Batches {
        Batches { tx, batch: Vec::with_capacity(BATCH) }
    }

    fn send(&mut self) -> anyhow::Result<()> {
        let batch = std::mem::replace(&mut self.batch, Vec::with_capacity(BATCH));
        self.tx.blocking_send(batch).map_err(|_| anyhow::anyhow!("the state writer stopped"))
    }
}

impl OpSink for Batches {
    fn apply(&mut self, op: Op) -> anyhow::Result<()> {
        self.batch.push(op);
        if self.batch.len() >= BATCH {
            self.send()?;
        }
        Ok(())
    }

    fn finish(&mut self) -> anyhow::Result<()> {
        if self.batch.is_empty() { Ok(()) } else { self.send() }
    }
}
