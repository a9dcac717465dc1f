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
