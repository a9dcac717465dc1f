//! What a pass did for one computation, as its summary line, log and exit reason say it.

use crate::delivery::KeyReport;
use crate::diff::DiffCounts;
use crate::state::{Mode, RunStatus};

use super::PassError;

/// What a pass did for one computation.
#[derive(Debug)]
pub struct ComputationReport {
    pub key: String,
    pub mode: Mode,
    pub status: RunStatus,
    pub outcome: Outcome,
}

/// How a computation's pass ended.
#[derive(Debug)]
pub enum Outcome {
    /// Nothing written or sent.
    Failed(PassError),
    /// The diff was recorded; `pending` rows are left, and why, if any are.
    Diffed { diff: DiffCounts, delivery: KeyReport, pending: u64, error: Option<String> },
}

impl ComputationReport {
    /// The one-line summary printed after a pass.
    pub fn summary(&self) -> String {
        let (d, r, pending, error) = match &self.outcome {
            Outcome::Failed(e) => {
                return format!("{}: {} pass failed, nothing written or sent: {e}", self.key, self.mode);
            }
            Outcome::Diffed { diff, delivery, pending, error } => (diff, delivery, pending, error),
        };
        let mut line = format!(
            "{}: {} pass {}: {} in snapshot, {} entered, {} exited, {} changed; {} delivered, {} retried, {} failed, {} quarantined, {} pending",
            self.key,
            self.mode,
            self.status,
            d.snapshot_rows,
            d.entered,
            d.exited,
            d.changed,
            r.delivered,
            r.retried,
            r.failed,
            r.quarantined,
            pending
        );
        if let Some(e) = error {
            line.push_str(&format!(" ({e})"));
        }
        line
    }

    /// Why the computation is not delivered, for the exit message; `None` when it is.
    pub fn unfinished(&self) -> Option<String> {
        match &self.outcome {
            Outcome::Failed(e) => Some(format!("{} ({})", self.key, e.class())),
            Outcome::Diffed { pending: 0, .. } => None,
            Outcome::Diffed { pending, .. } => Some(format!("{} ({pending} pending)", self.key)),
        }
    }

    /// What delivery did for it (nothing, for a failed pass).
    pub fn delivery(&self) -> KeyReport {
        match &self.outcome {
            Outcome::Failed(_) => KeyReport::default(),
            Outcome::Diffed { delivery, .. } => delivery.clone(),
        }
    }
}

/// Why rows are still pending: why delivery stopped, if it did, and the last error.
pub fn pending_error(pending: u64, delivery: &KeyReport) -> String {
    let mut error = format!("{pending} rows still pending");
    if let Some(why) = &delivery.stopped {
        error.push_str(&format!("; delivery stopped: {why}"));
    }
    if let Some(e) = &delivery.last_error {
        error.push_str(&format!("; last error: {e}"));
    }
    error
}
