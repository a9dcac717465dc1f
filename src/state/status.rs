//! What `status` and the daemon read: one summary per computation and its last pass.

use serde::Serialize;

use super::{Mode, RunStatus};

/// The last pass of a computation.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, sqlx::FromRow)]
pub struct LastRun {
    #[sqlx(try_from = "String")]
    pub mode: Mode,
    #[sqlx(try_from = "String")]
    pub status: RunStatus,
    pub started_at: String,
    pub finished_at: Option<String>,
    pub snapshot_rows: Option<i64>,
    pub entered: i64,
    pub exited: i64,
    pub changed: i64,
    pub delivered: i64,
    pub failed: i64,
    pub retried: i64,
    pub quarantined: i64,
    pub error: Option<String>,
}

/// One row of the `computation_status` view.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, sqlx::FromRow)]
pub struct ComputationStatus {
    pub key: String,
    pub name: String,
    pub kind: String,
    pub members: i64,
    pub pending: i64,
    pub failed: i64,
    pub quarantined: i64,
    pub initial_sync_done_at: Option<String>,
}

/// What the daemon's `/metrics` reads of one computation at each scrape.
#[derive(Debug, Clone, PartialEq)]
pub struct ObservedComputation {
    pub key: String,
    /// As `computation_status.pending`: a running first sync's unanswered members included.
    pub pending: i64,
    pub quarantined: i64,
    /// The lease is held, unexpired, by the owner asked about.
    pub leased_here: bool,
    /// When a pass of it last ended `ok` (Unix time).
    pub last_success_unix: Option<i64>,
    /// Its last pass ended `failed` (nothing written or sent).
    pub last_pass_failed: bool,
    /// A first sync under a live lease: the share of its members answered.
    pub first_sync_progress: Option<f64>,
}

/// What `/metrics` shows of one computation, from what a backend read: its pending and
/// quarantined rows, whether its lease is held here and at all, when a pass last ended `ok`, and
/// its last pass's status, mode, members and answers.
pub(crate) fn observed(
    key: String,
    (pending, quarantined): (i64, i64),
    (leased_here, leased): (bool, bool),
    last_ok: Option<String>,
    (status, mode, members, answered): (Option<String>, Option<String>, Option<i64>, Option<i64>),
) -> ObservedComputation {
    let first_sync_running = leased && status.as_deref() == Some("running") && mode.as_deref() == Some("initial");
    ObservedComputation {
        key,
        pending,
        quarantined,
        leased_here,
        last_success_unix: last_ok.and_then(|t| chrono::DateTime::parse_from_rfc3339(&t).ok()).map(|t| t.timestamp()),
        last_pass_failed: status.as_deref() == Some("failed"),
        first_sync_progress: match (first_sync_running, members, answered) {
            (true, Some(members), Some(answered)) if members > 0 => Some((answered as f64 / members as f64).min(1.0)),
            (true, _, _) => Some(0.0),
            _ => None,
        },
    }
}
