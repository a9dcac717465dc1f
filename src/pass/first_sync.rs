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

use crate::config::{Computation, Config};
use crate::delivery::{FirstSync, KeyReport};
use crate::diff::spool::Spool;
use crate::diff::{Change, DiffCounts, Op, OpSink};
use crate::source::fingerprint::Fingerprint;
use crate::state::{QueueWriter, Store, now};

use super::{PassOptions, differ};

/// A first sync's diff: its counts, its spooled entries (until delivery takes them), and the
/// fingerprint to record once they all have answers.
pub struct Spooled {
    pub entries: Option<FirstSync>,
    fingerprint: Option<Fingerprint>,
}

/// Loads and sorts the snapshot of `c` (which has no state) and spools its entries, queueing
/// them in the state too.
pub async fn diff(
    config: &Config,
    store: &Store,
    c: &Computation,
    options: &PassOptions,
) -> anyhow::Result<(DiffCounts, Spooled)> {
    let progress = &options.progress;
    let loading = progress.stage(format!("{}: loading", c.key), "rows read", None);
    let diffing = progress.stage(format!("{}: diff", c.key), "rows compared", None);
    let changed_at = now();
    let sink = {
        let (store, key, changed_at) = (store.clone(), c.key.clone(), changed_at.clone());
        tokio::task::spawn_blocking(move || {
            anyhow::Ok(Spooling { spool: Spool::new()?, queue: store.first_sync_queue(&key, &changed_at)? })
        })
        .await??
    };
    let differ::Diffed { counts, sink, fingerprint } =
        differ::run(None, c, config.sort_buffer_bytes, (loading, diffing), sink, &options.stop).await?;
    let Spooling { spool, queue } = sink;
    tokio::task::spawn_blocking(move || queue.commit()).await??;
    let entries = FirstSync { key: c.key.clone(), kind: c.kind, changed_at, entries: spool.into_reader()? };
    Ok((counts, Spooled { entries: Some(entries), fingerprint }))
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

/// After delivery: records the snapshot's fingerprint once the state holds it whole, and
/// returns how many entries are neither in the state nor delivered (a shutdown or a failing
/// state stopped delivery; the next diff finds them again). Entries delivery never took (their
/// attribute is blocked) are written as pending rows, for the operator to see.
pub async fn close(
    store: &Store,
    key: &str,
    counts: &DiffCounts,
    spooled: Spooled,
    delivery: &KeyReport,
) -> anyhow::Result<u64> {
    let rows = counts.snapshot_rows;
    let fingerprint = spooled.fingerprint;
    let unsent = match spooled.entries {
        Some(_) => 0,
        None => counts.entered.saturating_sub(delivery.delivered + delivery.failed),
    };
    // Nothing to write for a delivered first sync of a source without a fingerprint (HTTP, SQL).
    if unsent == 0 && (spooled.entries.is_some() || fingerprint.is_some()) {
        let (store, key) = (store.clone(), key.to_string());
        tokio::task::spawn_blocking(move || {
            let mut writer = store.diff_writer(&key)?;
            for entry in spooled.entries.into_iter().flat_map(|f| f.entries) {
                let (user_id, desired) = entry?;
                writer.apply(Op::Set { user_id, desired, change: Change::Entered })?;
            }
            writer.commit(fingerprint.as_ref().map(|f| (f, rows)))
        })
        .await??;
    }
    // Every entry is now answered or pending in the state. Entries still owed stay queued,
    // and so pending to the operator, until the next diff that commits finds them again.
    if unsent == 0 {
        store.drop_first_sync_queue(key).await?;
    }
    Ok(unsent)
}
