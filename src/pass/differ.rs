//! Running a diff: the snapshot is loaded and merged with the state on one blocking thread,
//! over plain iterators, and every op goes straight to a sink on that thread (the state's
//! writer, or a dry run's plan): no per-row hand-offs.

use std::cell::Cell;

use tokio_util::sync::CancellationToken;

use crate::config::Computation;
use crate::diff::{self, DiffCounts, OpSink};
use crate::progress::Stage;
use crate::source;
use crate::source::fingerprint::Fingerprint;
use crate::state::Store;

use super::error::Stopped;

/// Snapshot rows between two checks for a stop (a stop is still seen within milliseconds).
const CHECK_EVERY: u64 = 4096;

/// What a diff found, the sink it wrote to, and the fingerprint of the file it read (if any).
pub struct Diffed<S> {
    pub counts: DiffCounts,
    pub sink: S,
    pub fingerprint: Option<Fingerprint>,
}

/// Loads the snapshot of `c` and merges it with its state (`None`: no state yet) on a blocking
/// thread, handing every op to `sink`; gives the sink back with the counts.
pub async fn run<S: OpSink + Send + 'static>(
    store: Option<Store>,
    c: &Computation,
    sort_buffer_bytes: usize,
    (loading, diffing): (Stage, Stage),
    mut sink: S,
    stop: &CancellationToken,
) -> anyhow::Result<Diffed<S>> {
    let c = c.clone();
    let stopped = stop.clone();
    let diff = tokio::task::spawn_blocking(move || {
        let mut snapshot = source::load_sorted(&c, sort_buffer_bytes, &loading)?;
        let fingerprint = snapshot.fingerprint.take();
        let rows = Cell::new(0u64);
        let snapshot = snapshot.map(|r| {
            rows.set(rows.get() + 1);
            // Now and then: the token's check takes a lock, and counting shows on a bar.
            if rows.get().is_multiple_of(CHECK_EVERY) {
                diffing.inc(CHECK_EVERY);
                if stopped.is_cancelled() {
                    return Err(Stopped("diff abandoned, nothing written").into());
                }
            }
            r.map_err(anyhow::Error::from)
        });
        let counts = match &store {
            Some(s) => s.with_state_rows_read_ahead(&c.key, |state| diff::merge(c.kind, state, snapshot, &mut sink))?,
            None => diff::merge(c.kind, std::iter::empty(), snapshot, &mut sink)?,
        };
        diffing.inc(rows.get() % CHECK_EVERY);
        diffing.finish();
        Ok(Diffed { counts, sink, fingerprint })
    });
    // A load may wait on a source that does not answer: on shutdown the pass does not wait for
    // it (nothing of it is written; its thread is left to the process's exit).
    tokio::select! {
        diffed = diff => diffed?,
        _ = stop.cancelled() => Err(Stopped("snapshot load abandoned, nothing written").into()),
    }
}
