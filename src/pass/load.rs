//! A computation's load: its snapshot loaded and merged into the state in one transaction,
//! skipped when the file is provably unchanged, or spooled for a first sync.

use tokio_util::sync::CancellationToken;

use crate::config::Computation;
use crate::source::{self, fingerprint};
use crate::state::Store;

use super::ahead::SnapshotLoad;
use super::first_sync::{self, Spooled};
use super::{PassError, PassOptions, differ};
use crate::diff::DiffCounts;

/// What a load left for delivery.
pub enum Loaded {
    /// The changes are pending rows in the state.
    Diffed(DiffCounts),
    /// The file is the one the last diff read: nothing changed, the diff skipped.
    Unchanged(DiffCounts),
    /// A first sync: the entries are in a spool, not in the state.
    FirstSync(DiffCounts, Spooled),
}

/// Loads the snapshot of `c` and merges it into the state in one transaction, which commits
/// only if the whole snapshot loaded, passed the guards and every write succeeded; or, when the
/// state holds nothing of `c` (`has_rows` false), spools it for a first sync, whose counts it
/// notes on the pass's `sync_runs` row `run_id` with its queue.
pub async fn load(
    store: &Store,
    c: &Computation,
    options: &PassOptions,
    (run_id, has_rows): (i64, bool),
    snapshot: SnapshotLoad,
) -> Result<Loaded, PassError> {
    if let Some(rows) = unchanged(store, c, &options.stop).await? {
        tracing::info!(key = %c.key, "snapshot unchanged (same size and SHA-256): diff skipped");
        return Ok(Loaded::Unchanged(DiffCounts { snapshot_rows: rows, ..DiffCounts::default() }));
    }
    if !has_rows {
        // From the first row a first sync writes, the state is no longer what any recorded
        // fingerprint produced.
        store.forget_snapshot_content(&c.key).await.map_err(PassError::state)?;
        let (counts, spooled) =
            first_sync::diff(store, c, options, (run_id, snapshot)).await.map_err(PassError::of_load)?;
        return Ok(Loaded::FirstSync(counts, spooled));
    }
    let writer = {
        let (store, key) = (store.clone(), c.key.clone());
        tokio::task::spawn_blocking(move || store.diff_writer(&key)).await.map_err(state)?.map_err(PassError::state)?
    };
    let differ::Diffed { counts, sink: writer, fingerprint } =
        differ::run(Some(store.clone()), c, snapshot, &options.progress, writer, &options.stop)
            .await
            .map_err(PassError::of_load)?;
    if !options.allow_mass_exit {
        guard(c, &counts)?;
    }
    let rows = counts.snapshot_rows;
    let commit = tokio::task::spawn_blocking(move || writer.commit(fingerprint.as_ref().map(|f| (f, rows))));
    commit.await.map_err(state)?.map_err(PassError::state)?;
    Ok(Loaded::Diffed(counts))
}

fn state(e: tokio::task::JoinError) -> PassError {
    PassError::state(e.into())
}

/// The row count of the last recorded diff, if the file is provably the one it read: the same
/// size and hash. A file older than that one is refused. The file is hashed only when its size
/// is the recorded one, and the read ends on shutdown.
async fn unchanged(store: &Store, c: &Computation, stop: &CancellationToken) -> Result<Option<u64>, PassError> {
    let Some((last, rows)) = store.snapshot_fingerprint(&c.key).await.map_err(PassError::state)? else {
        return Ok(None);
    };
    let Some((size, modified_at)) = fingerprint::size_and_time(&c.source) else { return Ok(None) };
    if is_older(&modified_at, &last.modified_at) {
        return Err(PassError::Snapshot(anyhow::anyhow!(
            "{}: stale snapshot: modified {modified_at}, older than the one the last pass used ({}); refusing to go back",
            source::source_name(&c.source),
            last.modified_at
        )));
    }
    if !last.may_be(size) {
        return Ok(None);
    }
    // What a diff records is the fingerprint taken in its own load.
    let source = c.source.clone();
    let hashing = tokio::task::spawn_blocking(move || fingerprint::fingerprint(&source));
    let now = tokio::select! {
        now = hashing => now.map_err(state)?,
        _ = stop.cancelled() => return Err(PassError::Stopped("snapshot check abandoned, nothing written")),
    };
    let Some(now) = now.filter(|now| now.same_content(&last)) else { return Ok(None) };
    // Rewritten with the same bytes: the diff would find nothing, but the newer modification
    // time is what the next pass's staleness check compares with.
    if now.modified_at != last.modified_at {
        let (store, key) = (store.clone(), c.key.clone());
        let commit = tokio::task::spawn_blocking(move || store.diff_writer(&key)?.commit(Some((&now, rows))));
        commit.await.map_err(state)?.map_err(PassError::state)?;
    } else {
        // What a diff would have folded in (the diff writer's commit above does).
        store.fold_acknowledged(&c.key).await.map_err(PassError::state)?;
    }
    Ok(Some(rows))
}

fn is_older(a: &str, b: &str) -> bool {
    match (chrono::DateTime::parse_from_rfc3339(a), chrono::DateTime::parse_from_rfc3339(b)) {
        (Ok(a), Ok(b)) => a < b,
        _ => false,
    }
}

/// The mass-exit guard (DESIGN §9.3): a snapshot that would remove more than `max_exit_ratio`
/// of at least `min_members` members is held back; the caller drops the diff unrecorded.
pub fn guard(c: &Computation, counts: &DiffCounts) -> Result<(), PassError> {
    let before = counts.members_before;
    if before < c.guard.min_members || before == 0 {
        return Ok(());
    }
    let ratio = counts.exited as f64 / before as f64;
    if ratio <= c.guard.max_exit_ratio {
        return Ok(());
    }
    let what = match c.kind {
        crate::config::Kind::Audience => "members",
        crate::config::Kind::ComputedTrait => "users with a value",
    };
    Err(PassError::HeldBack(format!(
        "this snapshot would remove {} of {before} {what} ({:.0} %), more than max_exit_ratio = {} allows; \
         nothing written or sent. If the snapshot is right, run `audience-sync sync --allow-mass-exit --audience {}` once, \
         or raise max_exit_ratio in config.toml",
        counts.exited,
        ratio * 100.0,
        c.guard.max_exit_ratio,
        c.key
    )))
}
