//! A pass: for each selected computation load the snapshot, diff it into the state (or, for a
//! computation with no state yet, into a spool: see `first_sync`), then deliver everything
//! pending, and record one `sync_runs` row per computation.
//!
//! A computation whose snapshot fails to load whole changes nothing and sends nothing
//! (DESIGN §9.2); the others still sync.

mod differ;
mod first_sync;
pub mod lease;
pub mod plan;

use std::collections::BTreeMap;

use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use crate::config::{Computation, Config};
use crate::delivery::{self, KeyReport};
use crate::destination::{Destination, Patience};
use crate::diff::DiffCounts;
use crate::progress::Progress;
use crate::source::{self, fingerprint};
use crate::state::{RunCounts, RunStatus, Store};

use first_sync::Spooled;

/// What a pass did for one computation.
#[derive(Debug, Clone)]
pub struct ComputationReport {
    pub key: String,
    pub mode: &'static str,
    pub status: RunStatus,
    pub diff: Option<DiffCounts>,
    pub delivery: KeyReport,
    pub pending: u64,
    pub error: Option<String>,
}

impl ComputationReport {
    /// The one-line summary printed after a pass.
    pub fn summary(&self) -> String {
        let Some(d) = &self.diff else {
            let error = self.error.as_deref().unwrap_or("unknown error");
            return format!("{}: {} pass failed, nothing written or sent: {error}", self.key, self.mode);
        };
        let r = &self.delivery;
        let mut line = format!(
            "{}: {} pass {}: {} in snapshot, {} entered, {} exited, {} changed; {} delivered, {} retried, {} failed, {} quarantined, {} pending",
            self.key,
            self.mode,
            self.status.as_str(),
            d.snapshot_rows,
            d.entered,
            d.exited,
            d.changed,
            r.delivered,
            r.retried,
            r.failed,
            r.quarantined,
            self.pending
        );
        if let Some(e) = &self.error {
            line.push_str(&format!(" ({e})"));
        }
        line
    }
}

/// Computations with at most this many rows pending are delivered before bigger ones, so that
/// a multi-hour initial sync does not hold back the deltas of the others.
const SMALL_FIRST_ROWS: u64 = 100_000;

/// How a pass was asked for.
pub struct PassOptions {
    /// Recorded in `sync_runs.trigger`: manual or schedule.
    pub trigger: &'static str,
    /// Record the pass as a `resync` (rows were marked pending again before it).
    pub resync: bool,
    /// Cancelled on shutdown: nothing new starts, what is in flight finishes and is recorded.
    pub stop: CancellationToken,
    pub progress: Progress,
    /// Let snapshots through that the mass-exit guard would hold back (this pass only).
    pub allow_mass_exit: bool,
    /// Other passes may run in this process at the same time (the daemon).
    pub beside_other_passes: bool,
}

/// Runs one pass over `selected` (whose leases the caller holds).
/// Errors only when the state itself fails; a computation's own failure is in its report.
pub async fn run(
    config: &Config,
    store: &Store,
    destination: &Destination,
    selected: &[Computation],
    options: &PassOptions,
) -> anyhow::Result<Vec<ComputationReport>> {
    let trigger = options.trigger;
    let mut started = Vec::new();
    for c in selected {
        if options.stop.is_cancelled() {
            break;
        }
        let initial_done = store.register(c).await?;
        let marked = store.settle_sending_windows(&c.key).await?;
        if marked > 0 {
            tracing::warn!(
                key = %c.key, rows = marked,
                "the last delivery was interrupted: rows it may have sent are treated as told"
            );
        }
        // A computation the state holds no row of goes through a first sync, whatever an
        // earlier (empty) first snapshot left in `initial_sync_done_at`.
        let has_rows = store.has_rows(&c.key).await?;
        let mode = match (options.resync, initial_done && has_rows) {
            (true, _) => "resync",
            (false, true) => "delta",
            (false, false) => "initial",
        };
        let run_id = store.start_run(&c.key, trigger, mode).await?;
        tracing::debug!(key = %c.key, mode, "pass started");
        let diff = load_and_diff(config, store, c, options, has_rows).await;
        match &diff {
            Ok((d, _)) => {
                tracing::info!(
                    key = %c.key, snapshot_rows = d.snapshot_rows, entered = d.entered, exited = d.exited, changed = d.changed,
                    "snapshot diffed"
                );
                store.note_diff(run_id, &RunCounts::of_diff(d)).await?;
            }
            Err(e) => {
                tracing::error!(key = %c.key, error = %format!("{e:#}"), "snapshot failed; nothing written or sent")
            }
        }
        started.push((c, mode, run_id, diff));
    }

    let loaded: Vec<&Computation> = started.iter().filter(|s| s.3.is_ok()).map(|s| s.0).collect();
    let outcome = async {
        // The retry budget counts from delivery, not from the loads before it: a slow source
        // must not leave the other computations no retries.
        let deadline = Instant::now() + config.retry.budget;
        let patience = Patience { deadline, stop: &options.stop };
        let blocked = delivery::ensure_attributes(store, destination, &loaded, &patience).await?;
        // Small before large. A first sync that is not delivered (its attribute is blocked)
        // keeps its entries: `finish` writes them as pending rows.
        let work = || delivery::Work { beside_other_passes: options.beside_other_passes, ..Default::default() };
        let (mut small, mut large, mut total) = (work(), work(), 0);
        for (c, _, run_id, d) in started.iter_mut().filter(|s| !blocked.contains_key(&s.0.key)) {
            let Ok((_, spooled)) = d else { continue };
            let first = spooled.as_mut().and_then(|s| s.entries.take());
            let pending = match &first {
                Some(f) => f.entries.len(),
                None => store.pending_count(&c.key).await?,
            };
            total += pending;
            let group = if pending <= SMALL_FIRST_ROWS { &mut small } else { &mut large };
            match first {
                Some(f) => group.first.push(f),
                None => group.keys.push(c.key.clone()),
            }
            group.runs.insert(c.key.clone(), *run_id);
        }
        let delivering = options.progress.stage("delivering".into(), "rows answered", Some(total));
        let delivering = &delivering;
        let run = |work| async move {
            delivery::deliver(store, destination, work, &config.retry, deadline, &options.stop, delivering).await
        };
        let mut report = run(small).await?;
        // A destination paused past the budget takes nothing more in this pass.
        match report.per_key.values().find_map(|r| r.stopped.clone()) {
            None => report.per_key.extend(run(large).await?.per_key),
            Some(why) => {
                for key in large.runs.into_keys() {
                    report.per_key.entry(key).or_default().stopped = Some(why.clone());
                }
            }
        }
        delivering.finish();
        anyhow::Ok((blocked, report))
    };
    let (blocked, delivered) = match outcome.await {
        Ok(r) => r,
        Err(e) => {
            let message = format!("delivery stopped: {e:#}");
            for (_, _, run_id, _) in &started {
                store.fail_run(*run_id, &message).await?;
            }
            return Err(e.context("delivery stopped"));
        }
    };

    let mut reports = Vec::new();
    for (c, mode, run_id, diff) in started {
        let report = match diff {
            Err(e) => {
                let error = format!("{e:#}");
                store.finish_run(run_id, RunStatus::Failed, &RunCounts::default(), Some(&error)).await?;
                let delivery = KeyReport::default();
                ComputationReport {
                    key: c.key.clone(),
                    mode,
                    status: RunStatus::Failed,
                    diff: None,
                    delivery,
                    pending: 0,
                    error: Some(error),
                }
            }
            Ok(diffed) => finish(store, c, mode, run_id, diffed, &delivered.per_key, &blocked).await?,
        };
        tracing::info!(key = %report.key, status = report.status.as_str(), "{}", report.summary());
        reports.push(report);
    }
    Ok(reports)
}

/// Closes the run of a computation whose diff was recorded.
async fn finish(
    store: &Store,
    c: &Computation,
    mode: &'static str,
    run_id: i64,
    (d, spooled): (DiffCounts, Option<Spooled>),
    delivered: &BTreeMap<String, KeyReport>,
    blocked: &BTreeMap<String, String>,
) -> anyhow::Result<ComputationReport> {
    let delivery = delivered.get(&c.key).cloned().unwrap_or_default();
    let unsent = match spooled {
        Some(spooled) => first_sync::close(store, &c.key, &d, spooled, &delivery).await?,
        None => 0,
    };
    let pending = store.pending_count(&c.key).await? + unsent;
    let status = if pending == 0 { RunStatus::Ok } else { RunStatus::Incomplete };
    if status == RunStatus::Ok && mode == "initial" {
        store.mark_initial_sync_done(&c.key).await?;
    }
    let counts = RunCounts {
        delivered: delivery.delivered,
        failed: delivery.failed,
        retried: delivery.retried,
        quarantined: delivery.quarantined,
        ..RunCounts::of_diff(&d)
    };
    let error = match blocked.get(&c.key) {
        Some(why) => Some(format!("nothing sent: {why}")),
        None if pending == 0 => None,
        None => Some(pending_error(pending, &delivery)),
    };
    store.finish_run(run_id, status, &counts, error.as_deref()).await?;
    Ok(ComputationReport { key: c.key.clone(), mode, status, diff: Some(d), delivery, pending, error })
}

/// Why rows are still pending: why delivery stopped, if it did, and the last error.
fn pending_error(pending: u64, delivery: &KeyReport) -> String {
    let mut error = format!("{pending} rows still pending");
    if let Some(why) = &delivery.stopped {
        error.push_str(&format!("; delivery stopped: {why}"));
    }
    if let Some(e) = &delivery.last_error {
        error.push_str(&format!("; last error: {e}"));
    }
    error
}

/// Loads the snapshot of `c` and merges it into the state in one transaction, which commits
/// only if the whole snapshot loaded, passed the guards and every write succeeded; or, when the
/// state holds nothing of `c` (`has_rows` false), spools it for a first sync.
async fn load_and_diff(
    config: &Config,
    store: &Store,
    c: &Computation,
    options: &PassOptions,
    has_rows: bool,
) -> anyhow::Result<(DiffCounts, Option<Spooled>)> {
    // The file as it is now: the same size and hash as the last recorded diff's mean provably
    // unchanged. What a diff records is the fingerprint taken in its own load.
    let source = c.source.clone();
    let now = tokio::task::spawn_blocking(move || fingerprint::fingerprint(&source)).await?;
    if let (Some(now), Some((last, rows))) = (&now, store.snapshot_fingerprint(&c.key).await?) {
        if is_older(&now.modified_at, &last.modified_at) {
            anyhow::bail!(
                "{}: stale snapshot: modified {}, older than the one the last pass used ({}); refusing to go back",
                source::source_name(&c.source),
                now.modified_at,
                last.modified_at
            );
        }
        if now.same_content(&last) {
            // Rewritten with the same bytes: the diff would find nothing, but the newer
            // modification time is what the next pass's staleness check compares with.
            if now.modified_at != last.modified_at {
                let (store, key, now) = (store.clone(), c.key.clone(), now.clone());
                tokio::task::spawn_blocking(move || store.diff_writer(&key)?.commit(Some((&now, rows)))).await??;
            }
            tracing::info!(key = %c.key, "snapshot unchanged (same size and SHA-256): diff skipped");
            return Ok((DiffCounts { snapshot_rows: rows, ..DiffCounts::default() }, None));
        }
    }
    if !has_rows {
        // From the first row a first sync writes, the state is no longer what any recorded
        // fingerprint produced.
        store.forget_snapshot_content(&c.key).await?;
        let (counts, spooled) = first_sync::diff(config, store, c, options).await?;
        return Ok((counts, Some(spooled)));
    }
    let progress = &options.progress;
    let loading = progress.stage(format!("{}: loading", c.key), "rows read", None);
    let diffing = progress.stage(format!("{}: diff", c.key), "rows compared", None);
    let writer = {
        let (store, key) = (store.clone(), c.key.clone());
        tokio::task::spawn_blocking(move || store.diff_writer(&key)).await??
    };
    let differ::Diffed { counts, sink: writer, fingerprint } =
        differ::run(Some(store.clone()), c, config.sort_buffer_bytes, (loading, diffing), writer, &options.stop)
            .await?;
    if !options.allow_mass_exit {
        guard(c, &counts)?;
    }
    let rows = counts.snapshot_rows;
    tokio::task::spawn_blocking(move || writer.commit(fingerprint.as_ref().map(|f| (f, rows)))).await??;
    Ok((counts, None))
}

fn is_older(a: &str, b: &str) -> bool {
    match (chrono::DateTime::parse_from_rfc3339(a), chrono::DateTime::parse_from_rfc3339(b)) {
        (Ok(a), Ok(b)) => a < b,
        _ => false,
    }
}

/// The mass-exit guard (DESIGN §9.3): a snapshot that would remove more than `max_exit_ratio`
/// of at least `min_members` members is held back; the caller drops the diff unrecorded.
pub fn guard(c: &Computation, counts: &DiffCounts) -> anyhow::Result<()> {
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
    anyhow::bail!(
        "held back: this snapshot would remove {} of {before} {what} ({:.0} %), more than max_exit_ratio = {} allows; \
         nothing written or sent. If the snapshot is right, run `audience-sync sync --allow-mass-exit --audience {}` once, \
         or raise max_exit_ratio in config.toml",
        counts.exited,
        ratio * 100.0,
        c.guard.max_exit_ratio,
        c.key
    )
}
