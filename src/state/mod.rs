//! The state: what each destination was told and what it acknowledged (DESIGN §8).
//!
//! What a pass needs of it is named here, in no driver's types: a `Store` (`store.rs`) that
//! registers computations, opens and closes runs, holds leases and answers `status` and
//! `explain`; a `DiffWriter` (the diff's sink), a `QueueWriter` (a first sync's queue), a
//! `PendingReader` (delivery's pages) and an `AnswerWriter` (delivery's acknowledgements). The
//! rows and words they carry (`runs`, `status`, `explain`, `leases`, `crate::change`) are the same
//! for every backend. Each backend (`sqlite/`, the default; `postgres/`) owns all of its SQL and
//! every concern of its database.

mod delivery;
mod destination;
mod diff_writer;
mod explain;
mod first_sync_queue;
mod leases;
mod postgres;
mod runs;
mod shards;
mod sqlite;
mod status;
mod store;
mod times;

pub use crate::tenure::Tenure;
pub use delivery::{AnswerRecords, AnswerWriter, PendingPages, PendingReader};
pub use destination::OtherDestination;
pub use diff_writer::{DiffRows, DiffWrite, DiffWriter};
pub use explain::{Delivery, DiffPass, MembershipRow, Queued, UserState};
pub use first_sync_queue::{QueueRows, QueueRun, QueueWriter};
pub use leases::{HeldLease, LeaseLost, LeaseOwner, holder_gone, renewal};
pub use runs::{Mode, RunCounts, RunEnd, RunStatus, Trigger};
pub use shards::{ShardClaim, ShardProgress, ShardsOf};
pub use sqlite::{ended_by_stop, explain_lock_wait, listen_for_signals, signalled, stop_waiting_for_locks};
pub use status::{ComputationStatus, LastRun, ObservedComputation};
pub use store::Store;

#[cfg(test)]
pub(crate) use sqlite::testing;

/// With `keep_history_days`, those days and the time before which `delivery_history` goes.
fn history_cutoff(keep_history_days: Option<u32>) -> Option<(u32, String)> {
    let days = keep_history_days?;
    let cutoff = chrono::Utc::now().checked_sub_signed(chrono::TimeDelta::days(days.into()))?;
    Some((days, cutoff.to_rfc3339_opts(chrono::SecondsFormat::Millis, true)))
}

/// Timestamps in the state: RFC 3339 in UTC with milliseconds, which sort as text.
pub fn now() -> String {
    chrono::Utc::now().to_rfc3339_opts(chrono::SecondsFormat::Millis, true)
}
