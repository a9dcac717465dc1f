//! The diff: a sorted snapshot merged against the sorted state of one computation.
//!
//! Both sides arrive ordered by `user_id` (byte order, which is SQLite's BINARY collation and
//! Rust's `str` order), so the diff is one streaming merge: memory does not grow with the number
//! of members. It decides, for each user, what the destination should now hold (DESIGN §4).

pub mod spool;

use std::cmp::Ordering;

use crate::config::Kind;
use crate::record::{FALSE, JsonText, NULL, SnapshotRecord};

/// One row of state as the diff needs it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StateRow {
    pub user_id: String,
    pub desired: JsonText,
    /// Whether the destination may hold a value for this row: it acknowledged one (a resync
    /// clears `synced` but not that), or one was about to be sent (and may have landed).
    pub told: bool,
}

impl crate::weigh::Weigh for StateRow {
    fn weight(&self) -> usize {
        self.user_id.len() + self.desired.len()
    }
}

/// What a change means for the user, for counts and plans.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Change {
    /// Joined the audience, or gained a trait value.
    Entered,
    /// Left the audience, or lost the trait value.
    Exited,
    /// A trait value changed.
    Changed,
}

/// A change to the state that the diff decided.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Op {
    /// Set `desired` (the row becomes pending unless the destination already holds it).
    Set { user_id: String, desired: String, change: Change },
    /// Drop the row: the user left before the destination ever acknowledged a value for them,
    /// so there is nothing to take back (a user never told `true` gets no `false`).
    Forget { user_id: String },
}

/// What a diff found, as recorded in `sync_runs`.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct DiffCounts {
    /// Members (audience) or users with a value (trait) before this snapshot.
    pub members_before: u64,
    pub snapshot_rows: u64,
    pub entered: u64,
    pub exited: u64,
    pub changed: u64,
}

/// Receives the ops of a diff (batches for the state's write transaction, or a dry-run plan).
pub trait OpSink {
    fn apply(&mut self, op: Op) -> anyhow::Result<()>;

    /// Called once after the last op of a merge that succeeded.
    fn finish(&mut self) -> anyhow::Result<()> {
        Ok(())
    }
}

/// The value a user who is not in the snapshot holds: `false` for audiences, `null` for traits.
pub fn absent(kind: Kind) -> &'static str {
    match kind {
        Kind::Audience => FALSE,
        Kind::ComputedTrait => NULL,
    }
}

/// Decides one user's fate. `state` is what we last wanted the destination to hold,
/// `snapshot` what the snapshot says now; at least one of them is present.
pub fn decide(
    kind: Kind,
    state: Option<&StateRow>,
    snapshot: Option<SnapshotRecord>,
    counts: &mut DiffCounts,
) -> Option<Op> {
    let gone = absent(kind);
    match (state, snapshot) {
        (None, Some(snap)) => {
            counts.entered += 1;
            Some(Op::Set { user_id: snap.user_id, desired: snap.value.into_owned(), change: Change::Entered })
        }
        (Some(row), Some(snap)) => {
            if row.desired == snap.value {
                return None;
            }
            let change = if row.desired == gone {
                counts.entered += 1;
                Change::Entered
            } else {
                counts.changed += 1;
                Change::Changed
            };
            Some(Op::Set { user_id: snap.user_id, desired: snap.value.into_owned(), change })
        }
        (Some(row), None) => {
            if row.desired == gone {
                return None;
            }
            counts.exited += 1;
            if !row.told {
                Some(Op::Forget { user_id: row.user_id.clone() })
            } else {
                Some(Op::Set { user_id: row.user_id.clone(), desired: gone.to_string(), change: Change::Exited })
            }
        }
        (None, None) => None,
    }
}

/// Merges the sorted `state` and `snapshot` of one computation, sending every change to `sink`.
/// Either side failing fails the merge; the caller then discards what the sink got.
///
/// It is a plain loop over iterators, run on a blocking thread: at ten million rows a row's trip
/// through async streams and channels costs more than the comparison itself.
pub fn merge<St, Sn, W>(kind: Kind, mut state: St, mut snapshot: Sn, sink: &mut W) -> anyhow::Result<DiffCounts>
where
    St: Iterator<Item = anyhow::Result<StateRow>>,
    Sn: Iterator<Item = anyhow::Result<SnapshotRecord>>,
    W: OpSink + ?Sized,
{
    let mut counts = DiffCounts::default();
    let mut st = state.next().transpose()?;
    let mut sn = snapshot.next().transpose()?;
    loop {
        let order = match (&st, &sn) {
            (None, None) => break,
            (Some(_), None) => Ordering::Less,
            (None, Some(_)) => Ordering::Greater,
            (Some(a), Some(b)) => a.user_id.as_str().cmp(b.user_id.as_str()),
        };
        let (row, snap) = match order {
            Ordering::Less => (st.take(), None),
            Ordering::Greater => (None, sn.take()),
            Ordering::Equal => (st.take(), sn.take()),
        };
        if snap.is_some() {
            counts.snapshot_rows += 1;
            sn = snapshot.next().transpose()?;
        }
        let advance_state = row.is_some();
        if row.as_ref().is_some_and(|r| r.desired != absent(kind)) {
            counts.members_before += 1;
        }
        if let Some(op) = decide(kind, row.as_ref(), snap, &mut counts) {
            sink.apply(op)?;
        }
        if advance_state {
            st = state.next().transpose()?;
        }
    }
    sink.finish()?;
    Ok(counts)
}

#[cfg(test)]
mod tests;
