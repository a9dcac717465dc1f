//! A pass: for each selected computation load the snapshot, diff it into the state (or, for a
//! computation with no state yet, into a spool: see `first_sync`), then deliver everything
//! pending, and record one `sync_runs` row per computation.
//!
//! Each computation's pass moves through `begin` (its run opened, its snapshot loaded: a
//! `Stage`), `plan` (what delivery takes of it), delivery, and `finish` (its run closed, its
//! report). A computation whose snapshot fails to load whole changes nothing and sends nothing
//! (DESIGN §9.2); the others still sync.

mod ahead;
mod differ;
mod error;
mod first_sync;
pub mod lease;
mod load;
pub mod plan;
mod report;
mod unconfigured;

use std::collections::BTreeMap;
use std::sync::Arc;

use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use crate::config::{Computation, Config};
use crate::delivery::shards::Sharding;
use crate::delivery::{self, DeliveryReport, KeyReport};
use crate::destination::{Destination, Patience};
use crate::diff::DiffCounts;
use crate::metrics::Metrics;
use crate::progress::Progress;
use crate::source::fingerprint::Fingerprint;
use crate::state::{Mode, RunCounts, RunEnd, RunStatus, Store, Trigger};

use ahead::{Ahead, SnapshotLoad};
pub use error::{PassError, state_class};
use first_sync::Spooled;
use load::Loaded;
pub use load::guard;
pub use report::{ComputationReport, Outcome, Unfinished, log_failure};
pub use unconfigured::{unconfigured, warn_of_unconfigured};

/// Computations with at most this many rows pending are delivered before bigger ones, so that
/// a multi-hour initial sync does not hold back the deltas of the others.
const SMALL_FIRST_ROWS: u64 = 100_000;

/// How a pass was asked for.
pub struct PassOptions {
    pub trigger: Trigger,
    /// Record the pass as a `resync` (rows were marked pending again before it).
    pub resync: bool,
    /// Cancelled on shutdown: nothing new starts, what is in flight finishes and is recorded.
    pub stop: CancellationToken,
    pub progress: Progress,
    /// Let snapshots through that the mass-exit guard would hold back (this pass only).
    pub allow_mass_exit: bool,
    /// Other passes may run in this process at the same time (the daemon).
    pub beside_other_passes: bool,
    /// Where the pass counts what it does (`crate::metrics`).
    pub metrics: Arc<Metrics>,
}

/// One computation's pass: its run, and where it stands.
struct Pass<'a> {
    c: &'a Computation,
    mode: Mode,
    run_id: i64,
    stage: Stage,
}

/// Where a computation's pass stands between its load and its finish.
enum Stage {
    /// Its changes are pending rows in the state.
    Diffed(DiffCounts),
    /// A first sync whose entries wait in their spool (delivery did not take them).
    FirstSync(DiffCounts, Spooled),
    /// A first sync whose entries delivery took: the fingerprint to record once all answered.
    FirstSyncSent(DiffCounts, Option<Fingerprint>),
    /// Nothing written or sent.
    Failed(PassError),
}

/// What delivery did, and the computations it could not send anything of (and why).
#[derive(Default)]
struct Delivered {
    per_key: BTreeMap<String, KeyReport>,
    blocked: BTreeMap<String, String>,
}

/// Runs one pass over `selected` (whose leases the caller holds).
/// Errors only when the state itself fails; a computation's own failure is in its report.
/// The first syncs of computations whose snapshots look large go in a second round, loaded only
/// once the others are delivered: a ten-million-member first sync must not hold back the deltas
/// of small ones.
pub async fn run(
    config: &Config,
    store: &Store,
    destination: &Destination,
    selected: &[Computation],
    options: &PassOptions,
) -> anyhow::Result<Vec<ComputationReport>> {
    store.prune_history().await?;
    if store.delivers_in_shards() && destination.shared_by_workers() {
        let keys: Vec<String> = selected.iter().map(|c| c.key.clone()).collect();
        let progress = options.progress.stage("finishing shards".into(), "rows answered", None);
        let deadline = Instant::now() + config.retry.budget;
        let sharding = sharding(config, store, destination, deadline, options, &progress);
        // A shard that cannot be delivered (mangled by hand) must not hold every pass back:
        // this pass's start closes the run it belonged to.
        if let Err(e) = delivery::shards::finish_deliveries_left(&sharding, &keys).await {
            tracing::warn!(error = %format!("{e:#}"), "cannot finish the shards of a pass taken over; going on");
        }
        progress.finish();
    }
    let (mut small, mut large) = (Vec::new(), Vec::new());
    for c in selected {
        // Only a first sync goes second: a delta of a large file stays in the first round, where
        // a user in it and in another computation gets one request (Contentstack).
        let later = expected_rows(c) > LARGE_LOAD_ROWS && !store.has_rows(&c.key).await?;
        if later { large.push(c) } else { small.push(c) }
    }
    let mut reports = Vec::new();
    for round in [small, large] {
        if !round.is_empty() && !options.stop.is_cancelled() {
            reports.extend(run_round(config, store, destination, &round, options).await?);
        }
    }
    Ok(reports)
}

/// First syncs of snapshots expected to hold more rows than this go in a pass's second round.
const LARGE_LOAD_ROWS: u64 = 1_000_000;

/// How many rows `c`'s snapshot is likely to hold, from its file's size; 0 when unknown (HTTP
/// and SQL sources, a missing file), which puts it in the first round.
fn expected_rows(c: &Computation) -> u64 {
    // A CSV row of a short id is about 16 bytes.
    ahead::snapshot_bytes(c) / 16
}

/// Loads, delivers and records the computations of one round.
async fn run_round(
    config: &Config,
    store: &Store,
    destination: &Destination,
    selected: &[&Computation],
    options: &PassOptions,
) -> anyhow::Result<Vec<ComputationReport>> {
    let started = Instant::now();
    let mut passes = Vec::new();
    let mut ahead = Ahead::new(config.sort_buffer_bytes);
    for (i, c) in selected.iter().enumerate() {
        if options.stop.is_cancelled() {
            break;
        }
        let snapshot = ahead.load_of(store, c, selected.get(i + 1).copied(), &options.progress).await?;
        passes.push(begin(store, c, options, snapshot).await?);
    }
    let (passes, delivered) = match deliver(config, store, destination, passes, options).await {
        Ok(done) => done,
        Err((runs, e)) => {
            let e = crate::state::explain_lock_wait(e);
            let message = format!("delivery stopped: {e:#}");
            for (key, mode, run_id) in runs {
                log_failure(&key, Some(run_id), Some(mode), state_class(&e), &message);
                options.metrics.pass_ended(&key, RunStatus::Failed, started.elapsed());
                store.fail_run(run_id, &message).await?;
            }
            return Err(e.context("delivery stopped"));
        }
    };
    let mut closed = Vec::with_capacity(passes.len());
    for pass in passes {
        closed.push(close_first_sync(store, pass, &delivered).await?);
    }
    let keys: Vec<String> = closed.iter().map(|p| p.c.key.clone()).collect();
    let pending = store.pending_counts(&keys).await?;
    let (mut reports, mut ends) = (Vec::new(), Vec::new());
    for pass in closed {
        let (report, end) = finish(store, pass, &delivered, &pending).await?;
        reports.push(report);
        ends.push(end);
    }
    let lost = store.finish_runs(&ends).await?;
    for report in reports.iter().filter(|r| !lost.contains(&r.key)) {
        report.log();
        let (held_back, pending) = (report.held_back(), report.pending());
        options.metrics.pass_finished(&report.key, report.status, started.elapsed(), held_back, pending);
    }
    if !lost.is_empty() {
        return Err(crate::state::LeaseLost { keys: lost.join(", ") }.into());
    }
    Ok(reports)
}

/// Why a pass is abandoned, in its `sync_runs` row.
pub const ABANDONED: &str = "shutting down: requests still in flight after shutdown_grace_secs were abandoned; \
     the next pass treats them as possibly sent";

/// Runs `pass` to its end, or, once `stop` is cancelled, for at most `grace` more: `None` when
/// it was still going then (its caller abandons it: `Store::interrupt_runs` with `ABANDONED`,
/// and its leases released). A request that never answers holds a shutdown no longer.
pub async fn within_grace<T>(
    pass: impl std::future::Future<Output = T>,
    stop: &CancellationToken,
    grace: std::time::Duration,
) -> Option<T> {
    tokio::pin!(pass);
    tokio::select! {
        done = &mut pass => return Some(done),
        _ = stop.cancelled() => {}
    }
    tokio::time::timeout(grace, pass).await.ok()
}

/// Opens the run of `c` and loads its snapshot.
async fn begin<'a>(
    store: &Store,
    c: &'a Computation,
    options: &PassOptions,
    snapshot: SnapshotLoad,
) -> anyhow::Result<Pass<'a>> {
    let initial_done = store.register(c).await?;
    let marked = store.settle_sending_windows(&c.key).await?;
    if marked > 0 {
        tracing::warn!(
            key = %c.key, rows = marked,
            "the last delivery was interrupted: rows it may have sent stay pending, and count as told \
             (a later exit is sent to them)"
        );
    }
    // A computation the state holds no row of goes through a first sync, whatever an earlier
    // (empty) first snapshot left in `initial_sync_done_at`.
    let has_rows = store.has_rows(&c.key).await?;
    let mode = match (options.resync, initial_done && has_rows) {
        (true, _) => Mode::Resync,
        (false, true) => Mode::Delta,
        (false, false) => Mode::Initial,
    };
    let run_id = store.start_run(&c.key, options.trigger, mode).await?;
    tracing::debug!(computation = %c.key, pass_id = run_id, %mode, "pass started");
    let loading = Instant::now();
    let loaded = load::load(store, c, options, (run_id, has_rows), snapshot).await;
    let skipped = matches!(loaded, Ok(Loaded::Unchanged(_)));
    let stage = match loaded {
        Ok(Loaded::Diffed(d) | Loaded::Unchanged(d)) => Stage::Diffed(d),
        Ok(Loaded::FirstSync(d, spooled)) => Stage::FirstSync(d, spooled),
        Err(e) => {
            log_failure(&c.key, Some(run_id), Some(mode), e.class(), &e.to_string());
            return Ok(Pass { c, mode, run_id, stage: Stage::Failed(e) });
        }
    };
    let d = stage.counts().expect("a loaded stage has counts");
    options.metrics.snapshot_loaded(&c.key, loading.elapsed(), d.snapshot_rows);
    tracing::info!(
        computation = %c.key, pass_id = run_id, snapshot_rows = d.snapshot_rows, entered = d.entered,
        exited = d.exited, changed = d.changed, "snapshot diffed"
    );
    // A skipped diff found nothing to show before delivery: its run's close records its counts,
    // and a pass over many unchanged computations spares a transaction for each. A first sync's
    // counts went in with its queue.
    if !skipped && !matches!(stage, Stage::FirstSync(..)) {
        store.note_diff(run_id, &RunCounts::of_diff(d)).await?;
    }
    Ok(Pass { c, mode, run_id, stage })
}

impl Stage {
    fn counts(&self) -> Option<&DiffCounts> {
        match self {
            Stage::Diffed(d) | Stage::FirstSync(d, _) | Stage::FirstSyncSent(d, _) => Some(d),
            Stage::Failed(_) => None,
        }
    }
}

/// Delivers what the loaded passes left pending; on a failure of the state, gives back the runs
/// to close as failed (with their computation and mode).
async fn deliver<'a>(
    config: &Config,
    store: &Store,
    destination: &Destination,
    passes: Vec<Pass<'a>>,
    options: &PassOptions,
) -> Result<(Vec<Pass<'a>>, Delivered), (Vec<(String, Mode, i64)>, anyhow::Error)> {
    let runs = passes.iter().map(|p| (p.c.key.clone(), p.mode, p.run_id)).collect();
    let delivered = async {
        // The retry budget counts from delivery, not from the loads before it: a slow source
        // must not leave the other computations no retries.
        let deadline = Instant::now() + config.retry.budget;
        let tenure = store.tenure();
        let patience = Patience { deadline, stop: &options.stop, tenure: &tenure };
        let loaded: Vec<&Computation> =
            passes.iter().filter(|p| !matches!(p.stage, Stage::Failed(_))).map(|p| p.c).collect();
        let blocked = delivery::ensure_attributes(store, destination, &loaded, &patience).await?;
        let shard_rows =
            (store.delivers_in_shards() && destination.shared_by_workers()).then_some(config.delivery_shard_rows);
        let (passes, work) = plan(store, passes, &blocked, options, shard_rows).await?;
        let report = send(config, store, destination, work, deadline, options).await?;
        anyhow::Ok((passes, Delivered { per_key: report.per_key, blocked }))
    };
    delivered.await.map_err(|e| (runs, e))
}

/// What one pass delivers: small computations first, then large ones, and how many rows in all.
struct Planned {
    small: Group,
    large: Group,
    total: u64,
    /// Set where deliveries of more rows than this are shared out in shards (`delivery::shards`).
    shard_rows: Option<u64>,
}

/// Computations delivered together, and their rows.
#[derive(Default)]
struct Group {
    work: delivery::Work,
    rows: u64,
}

impl Group {
    /// Whether other workers can deliver this group too: all of its rows are pending in the
    /// state, and more of them than one shard.
    fn shared_out(&self, shard_rows: Option<u64>) -> bool {
        shard_rows.is_some_and(|n| self.rows > n) && self.work.first.is_empty()
    }
}

/// Hands delivery the pending rows of each loaded pass and the entries of each first sync, but
/// those of a computation whose attribute is `blocked` (a first sync's stay in its spool). With
/// `shard_rows`, the entries of a first sync of more than one shard are written pending first,
/// where every worker can read them.
async fn plan<'a>(
    store: &Store,
    passes: Vec<Pass<'a>>,
    blocked: &BTreeMap<String, String>,
    options: &PassOptions,
    shard_rows: Option<u64>,
) -> anyhow::Result<(Vec<Pass<'a>>, Planned)> {
    let work = || delivery::Work { beside_other_passes: options.beside_other_passes, ..Default::default() };
    let group = || Group { work: work(), rows: 0 };
    let mut planned = Planned { small: group(), large: group(), total: 0, shard_rows };
    let keys: Vec<String> = passes.iter().map(|p| p.c.key.clone()).collect();
    let counts = store.pending_counts(&keys).await?;
    let mut kept = Vec::with_capacity(passes.len());
    for mut pass in passes {
        let key = pass.c.key.clone();
        if blocked.contains_key(&key) {
            kept.push(pass);
            continue;
        }
        let (stage, pending, first) = match pass.stage {
            Stage::Diffed(d) => (Stage::Diffed(d), counts.get(&key).copied().unwrap_or(0), None),
            Stage::FirstSync(d, spooled) if shard_rows.is_some_and(|n| spooled.entries.entries.len() > n) => {
                let rows = spooled.entries.entries.len();
                first_sync::keep(store, &key, &d, spooled).await?;
                (Stage::Diffed(d), rows, None)
            }
            Stage::FirstSync(d, Spooled { entries, fingerprint }) => {
                (Stage::FirstSyncSent(d, fingerprint), entries.entries.len(), Some(entries))
            }
            other => (other, 0, None),
        };
        pass.stage = stage;
        if !matches!(pass.stage, Stage::Failed(_)) {
            planned.total += pending;
            let group = if pending <= SMALL_FIRST_ROWS { &mut planned.small } else { &mut planned.large };
            group.rows += pending;
            match first {
                Some(f) => group.work.first.push(f),
                None => group.work.keys.push(key.clone()),
            }
            group.work.counters.insert(key.clone(), options.metrics.delivery(&key));
            group.work.runs.insert(key, pass.run_id);
        }
        kept.push(pass);
    }
    Ok((kept, planned))
}

/// Sends the small computations' rows, then the large ones' unless the destination paused past
/// the budget (then they are reported stopped, for that reason).
async fn send(
    config: &Config,
    store: &Store,
    destination: &Destination,
    work: Planned,
    deadline: Instant,
    options: &PassOptions,
) -> anyhow::Result<DeliveryReport> {
    let delivering = options.progress.stage("delivering".into(), "rows answered", Some(work.total));
    let sharding = sharding(config, store, destination, deadline, options, &delivering);
    let run = async |group: Group| {
        if group.shared_out(work.shard_rows) {
            delivery::shards::deliver_in_shards(&sharding, group.work, group.rows).await
        } else {
            delivery::deliver(store, destination, group.work, &config.retry, deadline, &options.stop, &delivering).await
        }
    };
    let mut report = run(work.small).await?;
    match report.per_key.values().find_map(|r| r.stopped.clone()) {
        None => report.per_key.extend(run(work.large).await?.per_key),
        Some(why) => {
            for key in work.large.work.runs.into_keys() {
                report.per_key.entry(key).or_default().stopped = Some(why.clone());
            }
        }
    }
    delivering.finish();
    Ok(report)
}

/// How this pass delivers in shards, where it does (`Store::delivers_in_shards`).
fn sharding<'a>(
    config: &'a Config,
    store: &'a Store,
    destination: &'a Destination,
    deadline: Instant,
    options: &'a PassOptions,
    progress: &'a crate::progress::Stage,
) -> Sharding<'a> {
    Sharding {
        store,
        destination,
        policy: &config.retry,
        deadline,
        stop: &options.stop,
        progress,
        metrics: &options.metrics,
        ttl: config.lease_ttl,
        shard_rows: config.delivery_shard_rows,
        destination_id: config.destination.identity(),
    }
}

/// A computation's pass once delivery is over and its first sync (if any) closed: what is
/// left of it to record.
struct Closed<'a> {
    c: &'a Computation,
    mode: Mode,
    run_id: i64,
    /// The diff's counts and the entries neither in the state nor answered; or why it failed.
    outcome: Result<(DiffCounts, u64), PassError>,
}

/// Closes a first sync: its entries written as pending rows if delivery never took them, its
/// fingerprint recorded once all are answered.
async fn close_first_sync<'a>(store: &Store, pass: Pass<'a>, delivered: &Delivered) -> anyhow::Result<Closed<'a>> {
    let Pass { c, mode, run_id, stage } = pass;
    let outcome = match stage {
        Stage::Failed(e) => Err(e),
        Stage::Diffed(d) => Ok((d, 0)),
        Stage::FirstSync(d, spooled) => {
            first_sync::keep(store, &c.key, &d, spooled).await?;
            Ok((d, 0))
        }
        Stage::FirstSyncSent(d, fingerprint) => {
            let delivery = delivered.per_key.get(&c.key).cloned().unwrap_or_default();
            let unsent = first_sync::close(store, &c.key, &d, fingerprint, &delivery).await?;
            Ok((d, unsent))
        }
    };
    Ok(Closed { c, mode, run_id, outcome })
}

/// Says what the pass of a computation did, and how its run closes (the caller closes them
/// all at once); `pending` counts the state's pending rows of each computation.
async fn finish(
    store: &Store,
    pass: Closed<'_>,
    delivered: &Delivered,
    pending: &BTreeMap<String, u64>,
) -> anyhow::Result<(ComputationReport, RunEnd)> {
    let Closed { c, mode, run_id, outcome } = pass;
    let key = c.key.clone();
    let end = |status, counts, error| RunEnd { id: run_id, key: key.clone(), status, counts, error };
    let (d, unsent) = match outcome {
        Err(e) => {
            let end = end(RunStatus::Failed, RunCounts::default(), Some(e.to_string()));
            let status = RunStatus::Failed;
            return Ok((ComputationReport { key, run_id, mode, status, outcome: Outcome::Failed(e) }, end));
        }
        Ok(closed) => closed,
    };
    let delivery = delivered.per_key.get(&key).cloned().unwrap_or_default();
    let pending = pending.get(&key).copied().unwrap_or(0) + unsent;
    let status = if pending == 0 { RunStatus::Ok } else { RunStatus::Incomplete };
    // A resync completes a first sync it finished as well as one that ran before.
    if status == RunStatus::Ok && mode != Mode::Delta {
        store.mark_initial_sync_done(&key).await?;
    }
    let counts = RunCounts {
        delivered: delivery.delivered,
        failed: delivery.failed,
        retried: delivery.retried,
        quarantined: delivery.quarantined,
        ..RunCounts::of_diff(&d)
    };
    let error = match delivered.blocked.get(&key) {
        Some(why) => Some(Unfinished { class: "destination", error: format!("nothing sent: {why}") }),
        None if pending == 0 => None,
        None => Some(Unfinished::of(pending, &delivery)),
    };
    let end = end(status, counts, error.as_ref().map(|e| e.error.clone()));
    let outcome = Outcome::Diffed { diff: d, delivery, pending, error };
    Ok((ComputationReport { key, run_id, mode, status, outcome }, end))
}
