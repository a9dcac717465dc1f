//! What a pass did for one computation, as its summary line, log and exit reason say it.
//!
//! Its log is one event, `pass finished`, and a failure as it happens is one `pass failed`
//! event, with the same field names in both (README, "Logs"): aggregators key on them.

use crate::delivery::KeyReport;
use crate::diff::DiffCounts;
use crate::state::{Mode, RunStatus};

use super::PassError;

/// What a pass did for one computation.
#[derive(Debug)]
pub struct ComputationReport {
    pub key: String,
    /// Its `sync_runs` row: the pass id of its log events.
    pub run_id: i64,
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
    Diffed { diff: DiffCounts, delivery: KeyReport, pending: u64, error: Option<Unfinished> },
}

/// Why rows are still pending after a pass: `class` is `destination` when the destination
/// refused rows, paused past the budget or lacks an attribute, else `incomplete`.
#[derive(Debug)]
pub struct Unfinished {
    pub class: &'static str,
    pub error: String,
}

impl Unfinished {
    /// Why `pending` rows are left after `delivery`: why delivery stopped, if it did, and the
    /// last error.
    pub fn of(pending: u64, delivery: &KeyReport) -> Unfinished {
        let mut error = format!("{pending} rows still pending");
        if let Some(why) = &delivery.stopped {
            error.push_str(&format!("; delivery stopped: {why}"));
        }
        if let Some(e) = &delivery.last_error {
            error.push_str(&format!("; last error: {e}"));
        }
        let refused = delivery.failed > 0 || delivery.stopped.is_some() || delivery.last_error.is_some();
        Unfinished { class: if refused { "destination" } else { "incomplete" }, error }
    }
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
            line.push_str(&format!(" ({})", e.error));
        }
        line
    }

    /// Logs the pass as one `pass finished` event: info when it delivered everything, warn
    /// when rows are left, error when it failed.
    pub fn log(&self) {
        let (d, r, pending, class, error) = match &self.outcome {
            Outcome::Failed(e) => {
                (&DiffCounts::default(), &KeyReport::default(), None, Some(e.class()), Some(e.to_string()))
            }
            Outcome::Diffed { diff, delivery, pending, error } => (
                diff,
                delivery,
                Some(*pending),
                error.as_ref().map(|e| e.class),
                error.as_ref().map(|e| e.error.clone()),
            ),
        };
        macro_rules! finished {
            ($level:expr) => {
                tracing::event!(
                    $level,
                    computation = %self.key,
                    pass_id = self.run_id,
                    mode = %self.mode,
                    status = %self.status,
                    snapshot_rows = d.snapshot_rows,
                    entered = d.entered,
                    exited = d.exited,
                    changed = d.changed,
                    delivered = r.delivered,
                    retried = r.retried,
                    failed = r.failed,
                    quarantined = r.quarantined,
                    pending,
                    error_class = class,
                    error,
                    "pass finished"
                )
            };
        }
        match self.status {
            RunStatus::Ok => finished!(tracing::Level::INFO),
            RunStatus::Failed => finished!(tracing::Level::ERROR),
            RunStatus::Incomplete | RunStatus::Interrupted | RunStatus::Running => finished!(tracing::Level::WARN),
        }
    }

    /// Why the computation is not delivered, for the exit message; `None` when it is.
    pub fn unfinished(&self) -> Option<String> {
        match &self.outcome {
            Outcome::Failed(e) => Some(format!("{} ({})", self.key, e.class())),
            Outcome::Diffed { pending: 0, .. } => None,
            Outcome::Diffed { pending, .. } => Some(format!("{} ({pending} pending)", self.key)),
        }
    }

    /// Whether the mass-exit guard held its snapshot back.
    pub fn held_back(&self) -> bool {
        matches!(&self.outcome, Outcome::Failed(PassError::HeldBack(_)))
    }

    /// The rows it left pending; `None` when its diff failed.
    pub fn pending(&self) -> Option<u64> {
        match &self.outcome {
            Outcome::Diffed { pending, .. } => Some(*pending),
            Outcome::Failed(_) => None,
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

/// A failure as it happens, as one `pass failed` event: of computation `key`, in the pass
/// `run_id` of `mode` when its run was opened, of class `class` (`PassError::class`, or
/// `state failed` for a state failure outside a load).
/// A shutdown is no error: it is said as a warning.
pub fn log_failure(key: &str, run_id: Option<i64>, mode: Option<Mode>, class: &str, error: &str) {
    let mode = mode.map(tracing::field::display);
    macro_rules! failed {
        ($level:expr) => {
            tracing::event!($level, computation = %key, pass_id = run_id, mode, error_class = class, error, "pass failed")
        };
    }
    if class == PassError::Stopped("").class() { failed!(tracing::Level::WARN) } else { failed!(tracing::Level::ERROR) }
}
