//! The `sync_runs` table: one row per pass of one computation.

/// Where a pass stands, as `sync_runs.status` says.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "snake_case")]
pub enum RunStatus {
    /// Still running (or its process died and no pass of the computation started since).
    Running,
    /// Everything selected was delivered.
    Ok,
    /// The snapshot loaded and the diff was recorded, but rows are still pending.
    Incomplete,
    /// Nothing was recorded or sent, or delivery stopped on the state's failure.
    Failed,
    /// Its process died; the next pass of the computation closed it.
    Interrupted,
}

/// What a pass does: a computation's first sync, a delta, or a resync asked for by command.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Mode {
    Initial,
    Delta,
    Resync,
}

/// Who asked for a pass.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Trigger {
    Manual,
    Schedule,
}

/// The words stored in `sync_runs`, both ways: what the state holds is decoded here, at its
/// edge, and nowhere else.
macro_rules! stored_words {
    ($type:ty { $($variant:ident => $word:literal),+ $(,)? }) => {
        impl $type {
            pub fn as_str(self) -> &'static str {
                match self {
                    $(Self::$variant => $word),+
                }
            }
        }

        impl TryFrom<String> for $type {
            type Error = String;
            fn try_from(word: String) -> Result<Self, String> {
                match word.as_str() {
                    $($word => Ok(Self::$variant),)+
                    other => Err(format!("unknown {} {other:?} in sync_runs", stringify!($type))),
                }
            }
        }

        impl std::fmt::Display for $type {
            fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                f.write_str(self.as_str())
            }
        }
    };
}

stored_words!(RunStatus { Running => "running", Ok => "ok", Incomplete => "incomplete", Failed => "failed", Interrupted => "interrupted" });
stored_words!(Mode { Initial => "initial", Delta => "delta", Resync => "resync" });
stored_words!(Trigger { Manual => "manual", Schedule => "schedule" });

/// How a pass closes its run (`Store::finish_runs`).
#[derive(Debug, Clone)]
pub struct RunEnd {
    pub id: i64,
    /// The run's computation, whose lease the closing must still hold.
    pub key: String,
    pub status: RunStatus,
    pub counts: RunCounts,
    pub error: Option<String>,
}

/// The counts a pass records.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct RunCounts {
    pub snapshot_rows: Option<u64>,
    pub entered: u64,
    pub exited: u64,
    pub changed: u64,
    pub delivered: u64,
    pub failed: u64,
    pub retried: u64,
    pub quarantined: u64,
}

impl RunCounts {
    /// What a diff found; nothing delivered yet.
    pub fn of_diff(d: &crate::diff::DiffCounts) -> RunCounts {
        RunCounts {
            snapshot_rows: Some(d.snapshot_rows),
            entered: d.entered,
            exited: d.exited,
            changed: d.changed,
            ..RunCounts::default()
        }
    }
}
