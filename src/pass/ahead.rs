//! Snapshots read and sorted one computation ahead.
//!
//! A round diffs its computations one after another (each diff's writes hold the state's write
//! lock), and a small snapshot's read and sort are about half of its diff's time, on one core:
//! a round of a hundred small computations left the machine's other core idle for most of its
//! diffs. So while one computation diffs, the next one's file is read and sorted on a thread of
//! its own. Only small file snapshots go ahead, and the two sorts at work then have half of
//! `sort_buffer_mb` each: together they stay within it, and a large load keeps the whole budget.
//! Nothing is read ahead that the unchanged check is likely to skip.

use std::thread::JoinHandle;

use crate::config::{Computation, Source};
use crate::progress::{Progress, Stage};
use crate::source::{self, Deduplicated, SnapshotError};
use crate::state::Store;

/// A snapshot goes ahead when its file holds at most this share of the sort's budget (a
/// record sorted in memory takes about three times its bytes in the file).
const SMALL_SHARE: u64 = 16;

/// Where a diff's sorted snapshot comes from.
pub enum SnapshotLoad {
    /// Read and sorted in the diff's own time, in at most `budget` bytes.
    Now { budget: usize },
    /// Read ahead, on a thread of its own.
    Ahead(Preload),
}

impl SnapshotLoad {
    /// The sorted snapshot of `c`; `progress` shows a load done now.
    pub fn load(self, c: &Computation, progress: &Progress) -> Result<Deduplicated, SnapshotError> {
        match self {
            SnapshotLoad::Now { budget } => source::load_sorted(c, budget, &loading(c, progress)),
            SnapshotLoad::Ahead(preload) => preload.take(c),
        }
    }
}

fn loading(c: &Computation, progress: &Progress) -> Stage {
    progress.stage(format!("{}: loading", c.key), "rows read", None)
}

/// The snapshot of one computation, being read and sorted on a thread of its own.
pub struct Preload {
    key: String,
    thread: JoinHandle<Result<Deduplicated, SnapshotError>>,
}

impl Preload {
    /// Starts reading `c` in at most `budget` bytes; `None` when no thread could be started.
    fn start(c: &Computation, budget: usize, progress: &Progress) -> Option<Preload> {
        let (computation, loading) = (c.clone(), loading(c, progress));
        let thread = std::thread::Builder::new()
            .name("snapshot-ahead".into())
            .spawn(move || source::load_sorted(&computation, budget, &loading))
            .inspect_err(|e| tracing::debug!(key = %c.key, error = %e, "cannot read ahead; read in turn"))
            .ok()?;
        Some(Preload { key: c.key.clone(), thread })
    }

    /// Waits for the read of `c`. Blocking.
    fn take(self, c: &Computation) -> Result<Deduplicated, SnapshotError> {
        let panicked = || SnapshotError::new(&source::source_name(&c.source), None, None, "the read ahead panicked");
        self.thread.join().unwrap_or_else(|_| Err(panicked()))
    }
}

/// A round's reads ahead: at most one at a time, for the computation after the one diffing.
pub struct Ahead {
    budget: usize,
    next: Option<Preload>,
}

impl Ahead {
    /// Reads ahead within `budget`, the sort's whole budget (`sort_buffer_mb`).
    pub fn new(budget: usize) -> Ahead {
        Ahead { budget, next: None }
    }

    /// How `c`'s snapshot is to be loaded, starting the read of `next` ahead when both are small
    /// (`c` then loads in half of the budget, the read ahead in the other half).
    pub async fn load_of(
        &mut self,
        store: &Store,
        c: &Computation,
        next: Option<&Computation>,
        progress: &Progress,
    ) -> anyhow::Result<SnapshotLoad> {
        let ahead = self.next.take().filter(|p| p.key == c.key);
        let half = self.budget / 2;
        if let Some(next) = next.filter(|n| self.small(n) && (ahead.is_some() || self.small(c)))
            && may_change(store, next).await?
        {
            self.next = Preload::start(next, half, progress);
        }
        Ok(match ahead {
            Some(preload) => SnapshotLoad::Ahead(preload),
            None if self.next.is_some() => SnapshotLoad::Now { budget: half },
            None => SnapshotLoad::Now { budget: self.budget },
        })
    }

    /// Whether `c` is a file snapshot small enough to be read ahead.
    fn small(&self, c: &Computation) -> bool {
        matches!(c.source, Source::File { .. }) && snapshot_bytes(c) <= self.budget as u64 / SMALL_SHARE
    }
}

/// About how many bytes `c`'s snapshot holds once read, from its file's size; 0 when unknown
/// (HTTP and SQL sources, a missing file).
pub fn snapshot_bytes(c: &Computation) -> u64 {
    match &c.source {
        Source::File { path, gzip, .. } => {
            let bytes = std::fs::metadata(path).map(|m| m.len()).unwrap_or(0);
            // gzip shrinks a snapshot about four times.
            if *gzip { bytes.saturating_mul(4) } else { bytes }
        }
        Source::Http { .. } | Source::Sql { .. } => 0,
    }
}

/// Whether `c`'s file differs from the one its last diff read, by its size or its modification
/// time. (One that differs by neither is not read ahead: the unchanged check will most likely
/// skip it. A file rewritten with the same bytes is read ahead for nothing.)
async fn may_change(store: &Store, c: &Computation) -> anyhow::Result<bool> {
    let Some((last, _)) = store.snapshot_fingerprint(&c.key).await? else { return Ok(true) };
    let now = source::fingerprint::size_and_time(&c.source);
    Ok(now.is_none_or(|(size, modified_at)| !last.may_be(size) || modified_at != last.modified_at))
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;
    use crate::config::{Config, StateLocation};

    /// Three audiences in `dir`: `small1` and `small2` of 2,000 members (about 30 KB each, small
    /// beside a 1 MB sort budget), `large` of 10,000 (150 KB, past a sixteenth of it).
    async fn three_audiences(dir: &std::path::Path) -> (Config, Store) {
        let members = |n: usize| (0..n).fold(String::from("user_id\n"), |s, i| s + &format!("user-{i:08}\n"));
        for (file, n) in [("small1.csv", 2000), ("small2.csv", 2000), ("large.csv", 10_000)] {
            std::fs::write(dir.join(file), members(n)).unwrap();
        }
        let audiences = ["small1", "small2", "large"]
            .map(|a| format!("[[audience]]\nname = \"{a}\"\nsource = {{ type = \"file\", path = \"{a}.csv\" }}\n"));
        let text = format!(
            "[state]\npath = \"state.db\"\n[sync]\nsort_buffer_mb = 1\n[destination]\ntype = \"file\"\npath = \"out.ndjson\"\n{}",
            audiences.concat()
        );
        let config = Config::parse(&dir.join("config.toml"), &text).unwrap();
        let store = Store::open(&StateLocation::File(dir.join("state.db")), Duration::from_secs(60)).await.unwrap();
        for c in &config.computations {
            store.register(c).await.unwrap();
        }
        (config, store)
    }

    fn budget_of(load: &SnapshotLoad) -> Option<usize> {
        match load {
            SnapshotLoad::Now { budget } => Some(*budget),
            SnapshotLoad::Ahead(_) => None,
        }
    }

    #[tokio::test]
    async fn the_next_small_snapshot_is_read_ahead_and_the_two_sorts_share_the_budget() {
        let dir = tempfile::tempdir().unwrap();
        let (config, store) = three_audiences(dir.path()).await;
        let [small1, small2, large] = [0, 1, 2].map(|i| &config.computations[i]);
        let (budget, progress) = (config.sort_buffer_bytes, Progress::off());
        let mut ahead = Ahead::new(budget);

        let first = ahead.load_of(&store, small1, Some(small2), &progress).await.unwrap();
        assert_eq!(budget_of(&first), Some(budget / 2), "a load beside a read ahead has half of the budget");
        let second = ahead.load_of(&store, small2, Some(large), &progress).await.unwrap();
        let SnapshotLoad::Ahead(preload) = second else { panic!("small2 was not read ahead") };
        let users = preload.take(small2).unwrap().map(|r| r.unwrap().user_id).collect::<Vec<_>>();
        assert_eq!(users.len(), 2000, "the read ahead holds the whole snapshot");
        assert!(users.is_sorted(), "in user order");

        let third = ahead.load_of(&store, large, None, &progress).await.unwrap();
        assert_eq!(
            budget_of(&third),
            Some(budget),
            "a large snapshot is not read ahead, and loads in the whole budget"
        );
    }

    #[tokio::test]
    async fn nothing_is_read_beside_a_large_snapshot() {
        let dir = tempfile::tempdir().unwrap();
        let (config, store) = three_audiences(dir.path()).await;
        let [small1, _, large] = [0, 1, 2].map(|i| &config.computations[i]);
        let mut ahead = Ahead::new(config.sort_buffer_bytes);
        let load = ahead.load_of(&store, large, Some(small1), &Progress::off()).await.unwrap();
        assert_eq!(budget_of(&load), Some(config.sort_buffer_bytes));
        let next = ahead.load_of(&store, small1, None, &Progress::off()).await.unwrap();
        assert_eq!(budget_of(&next), Some(config.sort_buffer_bytes), "small1 was read beside the large load");
    }

    #[tokio::test]
    async fn a_file_as_the_last_diff_read_it_is_left_to_the_unchanged_check() {
        let dir = tempfile::tempdir().unwrap();
        let (config, store) = three_audiences(dir.path()).await;
        let [small1, small2, _] = [0, 1, 2].map(|i| &config.computations[i]);
        let read = source::fingerprint::fingerprint(&small2.source).unwrap();
        let writer = {
            let store = store.clone();
            tokio::task::spawn_blocking(move || store.diff_writer("small2")?.commit(Some((&read, 2000))))
        };
        writer.await.unwrap().unwrap();
        let mut ahead = Ahead::new(config.sort_buffer_bytes);
        let load = ahead.load_of(&store, small1, Some(small2), &Progress::off()).await.unwrap();
        assert_eq!(budget_of(&load), Some(config.sort_buffer_bytes), "small2, unchanged, was read ahead");

        // Rewritten since (a new modification time): it may have changed, and is read ahead.
        let later = std::time::SystemTime::now() + Duration::from_secs(5);
        std::fs::File::options().write(true).open(dir.path().join("small2.csv")).unwrap().set_modified(later).unwrap();
        let mut ahead = Ahead::new(config.sort_buffer_bytes);
        let load = ahead.load_of(&store, small1, Some(small2), &Progress::off()).await.unwrap();
        assert_eq!(budget_of(&load), Some(config.sort_buffer_bytes / 2), "small2, rewritten, was not read ahead");
    }
}
