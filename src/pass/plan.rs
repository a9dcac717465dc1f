//! `sync --dry-run`: what a pass would do, computed from the snapshots and the state without
//! writing anything or sending anything.

use super::ahead::SnapshotLoad;
use super::differ;
use crate::config::{Computation, Config};
use crate::diff::{Change, DiffCounts, Op, OpSink};
use crate::progress::Progress;
use crate::state::Store;

/// Sample users shown per kind of change.
const SAMPLES: usize = 5;

/// The plan of one computation.
#[derive(Debug, Clone, Default)]
pub struct Plan {
    pub counts: DiffCounts,
    pub entered: Vec<String>,
    pub exited: Vec<String>,
    pub changed: Vec<String>,
    /// Rows already pending in the state (left by earlier passes), which the pass would send too.
    pub already_pending: u64,
}

impl Plan {
    pub fn summary(&self, key: &str) -> String {
        let sample =
            |users: &[String]| if users.is_empty() { String::new() } else { format!(" (e.g. {})", users.join(", ")) };
        let c = &self.counts;
        format!(
            "{key}: plan: {} in snapshot, {} entered{}, {} exited{}, {} changed{}; {} already pending",
            c.snapshot_rows,
            c.entered,
            sample(&self.entered),
            c.exited,
            sample(&self.exited),
            c.changed,
            sample(&self.changed),
            self.already_pending
        )
    }
}

impl OpSink for Plan {
    fn apply(&mut self, op: Op) -> anyhow::Result<()> {
        let (user, list) = match op {
            Op::Set { user_id, change: Change::Entered, .. } => (user_id, &mut self.entered),
            Op::Set { user_id, change: Change::Changed, .. } => (user_id, &mut self.changed),
            Op::Set { user_id, change: Change::Exited, .. } | Op::Forget { user_id } => (user_id, &mut self.exited),
        };
        if list.len() < SAMPLES {
            list.push(user);
        }
        Ok(())
    }
}

/// Plans `c` against `store` (a read-only state, or none yet).
pub async fn plan(config: &Config, store: Option<&Store>, c: &Computation) -> anyhow::Result<Plan> {
    let store = match store {
        Some(s) if s.knows(&c.key).await? => Some(s.clone()),
        _ => None,
    };
    let already_pending = match &store {
        Some(s) => s.pending_count(&c.key).await?,
        None => 0,
    };
    let snapshot = SnapshotLoad::Now { budget: config.sort_buffer_bytes };
    let diffed = differ::run(store, c, snapshot, &Progress::off(), Plan::default(), &Default::default()).await?;
    Ok(Plan { counts: diffed.counts, already_pending, ..diffed.sink })
}
