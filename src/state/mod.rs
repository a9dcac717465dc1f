//! The state: what each destination was told and what it acknowledged (DESIGN §8).
//!
//! What a pass needs of it is named here, in no driver's types: a `Store` that registers
//! computations, opens and closes runs, holds leases and answers `status` and `explain`; a `DiffWriter` (the
//! diff's sink), a `QueueWriter` (a first sync's queue), a `PendingReader` (delivery's pages) and
//! an `AnswerWriter` (delivery's acknowledgements). The rows and words they carry (`runs`,
//! `status`, `explain`, `leases`, `crate::change`) are the same for every backend. SQLite is the one
//! backend (`sqlite/`), and owns all of its SQL and every SQLite concern.

mod explain;
mod leases;
mod runs;
mod sqlite;
mod status;

pub use explain::{Delivery, DiffPass, MembershipRow, Queued, UserState};
pub use leases::{HeldLease, LeaseLost, LeaseOwner};
pub use runs::{Mode, RunCounts, RunStatus, Trigger};
pub use sqlite::{
    AnswerWriter, DiffWriter, PendingReader, QueueWriter, Store, explain_lock_wait, listen_for_signals,
    stop_waiting_for_locks,
};
pub use status::{ComputationStatus, LastRun, ObservedComputation};

#[cfg(test)]
pub(crate) use sqlite::testing;

/// Timestamps in the state: RFC 3339 in UTC with milliseconds, which sort as text.
pub fn now() -> String {
    chrono::Utc::now().to_rfc3339_opts(chrono::SecondsFormat::Millis, true)
}
