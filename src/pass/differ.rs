//! Running a diff: the snapshot is loaded and merged with the state on one blocking thread,
//! over plain iterators, and every op goes to a sink on that thread (the state's writer, which
//! hands batches of them to a thread of its own, or a dry run's plan).

use std::cell::Cell;

use tokio_util::sync::CancellationToken;

use crate::config::{Computation, Kind};
use crate::diff::{self, DiffCounts, OpSink, StateRow};
use crate::progress::Progress;
use crate::read_ahead;
use crate::record::SnapshotRecord;
use crate::source::fingerprint::Fingerprint;
use crate::state::Store;

use super::ahead::SnapshotLoad;
use super::error::Stopped;

/// Rows read between two checks for a stop (a stop is still seen within milliseconds), and
/// snapshot rows between two counts of the diff's progress.
const CHECK_EVERY: u64 = 4096;

/// Stops a merge on a stop, looked at every `CHECK_EVERY` rows of either side (the token's
/// check takes a lock). Both sides count: a small snapshot against a big state reads millions of
/// state rows between two of its own, and a review's 4,000-row snapshot was never looked at.
struct StopCheck<'a> {
    token: &'a CancellationToken,
    rows: Cell<u64>,
}

impl StopCheck<'_> {
    fn stopped(&self) -> bool {
        self.rows.set(self.rows.get() + 1);
        self.rows.get().is_multiple_of(CHECK_EVERY) && self.token.is_cancelled()
    }

    /// `diff::merge`, ending with `Stopped` once a stop is seen.
    fn merge<St, Sn, W, E>(&self, kind: Kind, state: St, snapshot: Sn, sink: &mut W) -> anyhow::Result<DiffCounts>
    where
        St: Iterator<Item = anyhow::Result<StateRow>>,
        Sn: Iterator<Item = Result<SnapshotRecord, E>>,
        E: Into<anyhow::Error>,
        W: OpSink + ?Sized,
    {
        let abandoned = || -> anyhow::Error { Stopped("diff abandoned, nothing written").into() };
        let state = state.map(|r| if self.stopped() { Err(abandoned()) } else { r });
        let snapshot = snapshot.map(|r| if self.stopped() { Err(abandoned()) } else { r.map_err(Into::into) });
        diff::merge(kind, state, snapshot, sink)
    }
}

/// What a diff found, the sink it wrote to, and the fingerprint of the file it read (if any).
pub struct Diffed<S> {
    pub counts: DiffCounts,
    pub sink: S,
    pub fingerprint: Option<Fingerprint>,
}

/// Loads the snapshot of `c` (or takes it as read ahead) and merges it with its state (`None`:
/// no state yet) on a blocking thread, handing every op to `sink`; gives the sink back with the
/// counts.
pub async fn run<S: OpSink + Send + 'static>(
    store: Option<Store>,
    c: &Computation,
    snapshot: SnapshotLoad,
    progress: &Progress,
    mut sink: S,
    stop: &CancellationToken,
) -> anyhow::Result<Diffed<S>> {
    let (c, progress) = (c.clone(), progress.clone());
    let stopped = stop.clone();
    let diff = tokio::task::spawn_blocking(move || {
        let mut snapshot = snapshot.load(&c, &progress)?;
        let diffing = progress.stage(format!("{}: diff", c.key), "rows compared", None);
        let fingerprint = snapshot.fingerprint.take();
        let check = StopCheck { token: &stopped, rows: Cell::new(0) };
        let mut rows = 0u64;
        let counts = std::thread::scope(|scope| {
            // The sorted runs are merged ahead of the diff, beside it rather than in its time.
            let snapshot = read_ahead::spawn(scope, move |ahead| ahead.send_all(snapshot)).inspect(|_| {
                rows += 1;
                if rows.is_multiple_of(CHECK_EVERY) {
                    diffing.inc(CHECK_EVERY);
                }
            });
            match &store {
                Some(s) => {
                    s.with_state_rows_read_ahead(&c.key, |state| check.merge(c.kind, state, snapshot, &mut sink))
                }
                None => check.merge(c.kind, std::iter::empty(), snapshot, &mut sink),
            }
        })?;
        diffing.inc(rows % CHECK_EVERY);
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::diff::Op;

    /// Counts the ops it is handed.
    struct Counting(u64);

    impl OpSink for Counting {
        fn apply(&mut self, _: Op) -> anyhow::Result<()> {
            self.0 += 1;
            Ok(())
        }
    }

    #[test]
    fn a_stop_is_seen_among_state_rows_when_the_snapshot_has_few() {
        // Review finding: checked only every 4,096 snapshot rows, a 4,000-row snapshot against
        // a 10M state was never looked at, and its diff went on holding the write lock.
        let token = CancellationToken::new();
        token.cancel();
        let check = StopCheck { token: &token, rows: Cell::new(0) };
        let state = (0..100_000u64).map(|i| {
            Ok(StateRow { user_id: format!("u{i:06}"), desired: crate::record::json_text("true"), told: true })
        });
        let snapshot = std::iter::empty::<Result<SnapshotRecord, anyhow::Error>>();
        let mut sink = Counting(0);
        let stopped = check.merge(Kind::Audience, state, snapshot, &mut sink).unwrap_err();
        assert!(stopped.downcast_ref::<Stopped>().is_some(), "{stopped:#}");
        assert!(sink.0 < CHECK_EVERY, "{} exits written after the stop", sink.0);
    }
}
