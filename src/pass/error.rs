//! Why a computation's pass wrote and sent nothing: said as it is in every summary, log line
//! and exit reason (a guard hold is not a snapshot failure, nor a state failure one).

/// Why a computation's pass failed before its diff was recorded.
#[derive(Debug, thiserror::Error)]
pub enum PassError {
    /// The snapshot did not load whole, or is older than the last one used.
    #[error("snapshot failed: {0:#}")]
    Snapshot(anyhow::Error),
    /// The mass-exit guard held the snapshot back (the message says how to let it through).
    #[error("held back: {0}")]
    HeldBack(String),
    /// The state could not be read or written (or the lease was lost).
    #[error("state failed: {0:#}")]
    State(anyhow::Error),
    /// A shutdown came before the diff was recorded.
    #[error("shutting down: {0}")]
    Stopped(&'static str),
}

impl PassError {
    /// What an exit reason says of it, in a word or two.
    pub fn class(&self) -> &'static str {
        match self {
            PassError::Snapshot(_) => "snapshot failed",
            PassError::HeldBack(_) => "held back",
            PassError::State(e) => state_class(e),
            PassError::Stopped(_) => "shutting down",
        }
    }

    /// A load's error by its cause: the snapshot's own (`SnapshotError`), a shutdown, or else
    /// the state's (the diff's reads and writes).
    pub fn of_load(e: anyhow::Error) -> PassError {
        if let Some(stopped) = e.chain().find_map(|cause| cause.downcast_ref::<Stopped>()) {
            return PassError::Stopped(stopped.0);
        }
        if e.chain().any(|cause| cause.is::<crate::source::SnapshotError>()) {
            return PassError::Snapshot(e);
        }
        PassError::state(e)
    }

    /// The state's error `e`, said with why its lock wait ended if a shutdown ended it.
    pub fn state(e: anyhow::Error) -> PassError {
        PassError::State(crate::state::explain_lock_wait(e))
    }
}

/// The class of the state's error `e`: a lock wait that a shutdown ended is the shutdown's, not
/// a failure of the state (said as a warning, not an error, beside every stopped pass).
pub fn state_class(e: &anyhow::Error) -> &'static str {
    if crate::state::ended_by_stop(e) { PassError::Stopped("").class() } else { "state failed" }
}

/// A load or diff abandoned on shutdown; nothing of it was written.
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub struct Stopped(pub &'static str);
