//! A first sync: the diff of a computation with no state spools its entries (`diff::spool`)
//! instead of writing them as pending rows; delivery writes each row with its first answer.
//!
//! While delivery runs, the entries are also in the state's `first_sync_queue`, for operators
//! to see what is still to be sent. It goes once every entry is answered or pending in the
//! state: at the end of a delivered first sync, or with the next diff that commits.
//!
//! The snapshot's fingerprint is recorded only once every entry has an answer recorded: until
//! then the state does not hold the whole snapshot, and an unchanged file must not skip the
//! diff that finds the rest.

use anyhow::Context;

use crate::config::Computation;
use crate::delivery::{FirstSync, KeyReport};
use crate::diff::spool::Spool;
use crate::diff::{Change, DiffCounts, Op, OpSink};
use crate::source::fingerprint::Fingerprint;
use crate::state::{QueueWriter, RunCounts, Store, now};

use super::ahead::SnapshotLoad;
use super::{PassOptions, differ};

/// A first sync's spooled entries, and the fingerprint to record once they all have answers.
pub struct Spooled {
    pub entries: FirstSync,
    pub fingerprint: Option<Fingerprint>,
}

/// Loads and sorts the snapshot of `c` (which has no state) and spools its entries, queueing
/// them in the state too, with the counts noted on the pass's `sync_runs` row `run_id`.
pub async fn diff(
    store: &Store,
    c: &Computation,
    options: &PassOptions,
    (run_id, snapshot): (i64, SnapshotLoad),
) -> anyhow::Result<(DiffCounts, Spooled)> {
    let changed_at = now();
    let sink = {
        let (store, key, changed_at) = (store.clone(), c.key.clone(), changed_at.clone());
        tokio::task::spawn_blocking(move || {
            let spool = Spool::new().with_context(|| {
                format!("cannot create the first sync's spool, a temp file in {}", std::env::temp_dir().display())
            })?;
            anyhow::Ok(Spooling { spool, queue: store.first_sync_queue(&key, &changed_at)? })
        })
        .await??
    };
    let differ::Diffed { counts, sink, fingerprint } =
        differ::run(None, c, snapshot, &options.progress, sink, &options.stop).await?;
    let Spooling { spool, queue } = sink;
    let noted = RunCounts::of_diff(&counts);
    tokio::task::spawn_blocking(move || queue.commit(run_id, noted)).await??;
    let entries = FirstSync { key: c.key.clone(), kind: c.kind, changed_at, entries: spool.into_reader()? };
    Ok((counts, Spooled { entries, fingerprint }))
}

/// The first sync's sink: every entry goes to the spool, for delivery, and to the state's
/// queue, for operators.
struct Spooling {
    spool: Spool,
    queue: QueueWriter,
}

impl OpSink for Spooling {
    fn apply(&mut self, op: Op) -> anyhow::Result<()> {
        if let Op::Set { user_id, desired, .. } = &op {
            self.queue.push(user_id, desired)?;
        }
        self.spool.apply(op)
    }
}

/// After delivery took the entries: records the snapshot's fingerprint once the state holds it
/// whole, and returns how many entries are neither in the state nor answered (a shutdown or a
/// failing state stopped delivery; they stay queued until the next diff finds them again).
pub async fn close(
    store: &Store,
    key: &str,
    counts: &DiffCounts,
    fingerprint: Option<Fingerprint>,
    delivery: &KeyReport,
) -> anyhow::Result<u64> {
    let unsent = counts.entered.saturating_sub(delivery.delivered + delivery.failed);
    if unsent > 0 {
        return Ok(unsent);
    }
    // Recording the fingerprint drops the queue in its transaction (`DiffWriter::commit`); a
    // source without one (HTTP, SQL) has only the queue to drop.
    match fingerprint {
        Some(_) => write(store, key, None, fingerprint, counts.snapshot_rows).await?,
        None => store.drop_first_sync_queue(key).await?,
    }
    store.give_back_free_pages().await?;
    Ok(0)
}

/// A first sync delivery never took (its attribute is blocked): its entries are written as
/// pending rows, for the operator to see and the next pass to send.
pub async fn keep(store: &Store, key: &str, counts: &DiffCounts, spooled: Spooled) -> anyhow::Result<()> {
    write(store, key, Some(spooled.entries), spooled.fingerprint, counts.snapshot_rows).await
}

/// Writes `entries` as pending rows and records `fingerprint`, in one transaction, which drops
/// the queue too (`DiffWriter::commit`).
async fn write(
    store: &Store,
    key: &str,
    entries: Option<FirstSync>,
    fingerprint: Option<Fingerprint>,
    rows: u64,
) -> anyhow::Result<()> {
    let (store, key) = (store.clone(), key.to_string());
    tokio::task::spawn_blocking(move || {
        let mut writer = store.diff_writer(&key)?;
        for entry in entries.into_iter().flat_map(|f| f.entries) {
            let (user_id, desired) = entry?;
            writer.apply(Op::Set { user_id, desired, change: Change::Entered })?;
        }
        writer.commit(fingerprint.as_ref().map(|f| (f, rows)))
    })
    .await?
}
