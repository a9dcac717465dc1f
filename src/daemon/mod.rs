//! The daemon: passes on the cron schedule until SIGTERM or SIGINT.
//!
//! tokio-cron-scheduler fires the schedules (six fields, UTC); each firing names the
//! computations due. A computation whose previous pass is still running in this process is
//! skipped (the scheduler itself would happily overlap runs), and one being synced by another
//! process is skipped through its lease. Each computation's pass runs as its own task under its
//! own lease, so a multi-hour initial sync of one never holds back the others; the
//! destination's own limit bounds their requests in flight together.

mod server;

use std::collections::{BTreeMap, HashSet};
use std::sync::{Arc, Mutex};

use anyhow::Context;
use tokio::sync::mpsc;
use tokio::task::JoinSet;
use tokio_cron_scheduler::{Job, JobScheduler};
use tokio_util::sync::CancellationToken;

use crate::config::{Computation, Config, schedule};
use crate::delivery::{self, shards::Sharding};
use crate::destination::Destination;
use crate::metrics::Metrics;
use crate::pass::{self, PassOptions, lease};
use crate::progress::{Progress, Stage};
use crate::shutdown::shutdown_signal;
use crate::state::{LeaseOwner, RunStatus, Store, Trigger};

use server::Health;

/// What a pass task needs, shared by all of them.
struct Shared {
    config: Config,
    store: Store,
    destination: Destination,
    owner: LeaseOwner,
    metrics: Arc<Metrics>,
    health: Health,
    /// Computations with a pass running in this process.
    running: Mutex<HashSet<String>>,
}

pub async fn run(config: Config) -> anyhow::Result<()> {
    let store = Store::open(&config.state, config.lease_ttl).await?.keeping_history(config.keep_history_days);
    // Refused before the destination opens (a file destination is created as it opens).
    store.check_destination(&config.destination.identity()).await?;
    let metrics = Arc::new(Metrics::new());
    let now = chrono::Utc::now();
    for c in &config.computations {
        let interval = schedule::interval_at(&c.cron, now).and_then(|i| i.to_std().ok());
        metrics.computation(&c.key, interval);
    }
    let destination = Destination::from_config(&config.destination, &metrics)?;
    if !recorded_at_start(&store, &config).await? {
        return Ok(());
    }
    pass::warn_of_unconfigured(&store, &config).await?;
    let shared = Arc::new(Shared {
        store,
        destination,
        owner: LeaseOwner::this_process(),
        metrics,
        health: Health::new(),
        running: Mutex::new(HashSet::new()),
        config,
    });
    serve_metrics(&shared).await?;
    let (due_tx, due_rx) = mpsc::channel::<Vec<String>>(64);
    let mut scheduler = schedule(&shared, &due_tx).await?;
    let overdue = catch_up(&shared.store, &shared.config.computations).await?;
    if !overdue.is_empty() {
        tracing::info!(computations = %overdue.join(","), "catching up: last pass unfinished or older than its interval");
        due_tx.send(overdue).await?;
    }
    let stop = CancellationToken::new();
    let helping = help_while_idle(shared.clone(), stop.clone());
    let passes = run_passes_until_signal(&shared, due_rx, &stop, helping).await;
    shared.health.stop();
    tracing::info!(grace_s = shared.config.shutdown_grace.as_secs(), "shutting down: starting nothing new");
    scheduler.shutdown().await?;
    stop.cancel();
    wind_down(passes, shared.config.shutdown_grace).await;
    shared.store.close().await;
    tracing::info!("stopped");
    Ok(())
}

/// Serves `/metrics` and `/healthz` on `[metrics] listen`, if set.
async fn serve_metrics(shared: &Arc<Shared>) -> anyhow::Result<()> {
    let Some(addr) = shared.config.metrics_listen else { return Ok(()) };
    let listener =
        tokio::net::TcpListener::bind(addr).await.with_context(|| format!("cannot listen on {addr} for metrics"))?;
    tracing::info!(%addr, "serving /metrics and /healthz");
    let shared = shared.clone();
    tokio::spawn(server::serve(listener, shared));
    Ok(())
}

/// A started scheduler that sends, at each firing, the keys of the computations due to `due`,
/// and beats for `/healthz`.
async fn schedule(shared: &Arc<Shared>, due: &mpsc::Sender<Vec<String>>) -> anyhow::Result<JobScheduler> {
    let scheduler = JobScheduler::new().await?;
    let beating = shared.clone();
    scheduler
        .add(
            Job::new_repeated(server::HEARTBEAT_EVERY, move |_, _| beating.health.beat())
                .context("cannot schedule the heartbeat")?,
        )
        .await?;
    let mut by_cron: BTreeMap<String, Vec<String>> = BTreeMap::new();
    for c in &shared.config.computations {
        by_cron.entry(c.cron.clone()).or_default().push(c.key.clone());
    }
    for (cron, keys) in by_cron {
        let tx = due.clone();
        tracing::info!(cron = %cron, computations = %keys.join(","), "scheduled");
        let job = Job::new_async(cron.as_str(), move |_, _| {
            let (tx, keys) = (tx.clone(), keys.clone());
            Box::pin(async move {
                let _ = tx.send(keys).await;
            })
        })
        .with_context(|| format!("cannot schedule {cron:?}"))?;
        scheduler.add(job).await?;
    }
    scheduler.start().await?;
    Ok(scheduler)
}

/// Starts a pass task for each computation due, until SIGTERM or SIGINT; returns the tasks
/// still running.
async fn run_passes_until_signal(
    shared: &Arc<Shared>,
    mut due: mpsc::Receiver<Vec<String>>,
    stop: &CancellationToken,
    helping: impl std::future::Future<Output = ()> + Send + 'static,
) -> JoinSet<()> {
    let mut passes = JoinSet::new();
    // Wound down with the passes: a shard being delivered ends as a pass does.
    passes.spawn(helping);
    let signal = shutdown_signal();
    tokio::pin!(signal);
    loop {
        tokio::select! {
            Some(keys) = due.recv() => {
                // Each computation's pass holds only its own lease and ends on its own: a
                // multi-hour first sync holds back nothing else.
                for key in keys {
                    let (shared, stop) = (shared.clone(), stop.clone());
                    passes.spawn(async move { pass_task(&shared, key, stop).await });
                }
            }
            Some(done) = passes.join_next(), if !passes.is_empty() => {
                if let Err(e) = done {
                    tracing::error!(error = %e, "a pass task panicked");
                }
            }
            _ = &mut signal => return passes,
        }
    }
}

/// Waits for the passes to end: each abandons what is still in flight after the grace period,
/// and says so in its run; the backstop bounds the wait for one stuck on the state itself.
async fn wind_down(mut passes: JoinSet<()>, grace: std::time::Duration) {
    let backstop = grace + std::time::Duration::from_secs(10);
    let finished = tokio::time::timeout(backstop, async { while passes.join_next().await.is_some() {} }).await;
    if finished.is_err() {
        tracing::warn!("passes still running after the grace period: abandoned as a kill would leave them");
        passes.abort_all();
    }
}

/// One computation's pass, unless one is already running here or it is leased elsewhere.
async fn pass_task(shared: &Shared, key: String, stop: CancellationToken) {
    let free = shared.running.lock().unwrap_or_else(|p| p.into_inner()).insert(key.clone());
    if !free {
        tracing::info!(computation = %key, "previous pass still running; skipping this trigger");
        return;
    }
    let keys = std::slice::from_ref(&key);
    let mut ran = leased_pass(shared, keys, stop.clone()).await;
    // Held by another worker: if that worker dies mid-pass, this one takes the pass over once
    // its lease lapses, rather than at the next tick.
    // Meanwhile it delivers the shards of that pass it can claim.
    while matches!(ran, Ok(Ran::HeldElsewhere)) && holders_pass_unfinished(shared, &key, &stop).await {
        help_deliver(shared, &key, &stop).await;
        ran = leased_pass(shared, keys, stop.clone()).await;
    }
    if let Err(e) = ran {
        let e = crate::state::explain_lock_wait(e);
        pass::log_failure(&key, None, None, pass::state_class(&e), &format!("{e:#}"));
    }
    shared.running.lock().unwrap_or_else(|p| p.into_inner()).remove(&key);
}

/// Records the state's destination where none is yet; false when a shutdown ended the wait
/// for the write lock to do it (an operator's open transaction held it).
async fn recorded_at_start(store: &Store, config: &Config) -> anyhow::Result<bool> {
    // A signal ends that wait too, though nothing listens for signals yet.
    crate::state::listen_for_signals();
    match store.claim_destination(&config.destination.identity()).await {
        Err(e) if crate::state::ended_by_stop(&e) => {
            tracing::warn!(error = %format!("{:#}", crate::state::explain_lock_wait(e)), "stopped before starting");
            Ok(false)
        }
        claimed => claimed.map(|()| true),
    }
}

/// What became of a pass task's try.
enum Ran {
    Pass,
    /// Another process holds the lease: nothing ran here.
    HeldElsewhere,
}

/// After a quarter of the lease's length (or at shutdown: false), whether the pass of `key`
/// that another worker holds is still unfinished: its run still `running`, as a worker that
/// died or stalled mid-pass leaves it.
async fn holders_pass_unfinished(shared: &Shared, key: &str, stop: &CancellationToken) -> bool {
    let poll = watch_poll(&shared.config);
    tokio::select! {
        _ = tokio::time::sleep(poll) => {}
        _ = stop.cancelled() => return false,
    }
    match shared.store.last_run(key).await {
        Ok(Some(run)) => run.status == RunStatus::Running,
        Ok(None) => true,
        Err(e) => {
            tracing::warn!(computation = %key, error = %e, "cannot read the state; the next tick will try again");
            false
        }
    }
}

/// Delivers the shards it can claim of the pass of `key` another worker holds
/// (`delivery::shards`); a failure is logged, and the holder or another worker delivers them.
async fn help_deliver(shared: &Shared, key: &str, stop: &CancellationToken) {
    let Some(store) = sharing_store(shared) else { return };
    let progress = Progress::off().stage(format!("{key}: delivering shards"), "rows answered", None);
    help(shared, &store, stop, &progress, Some(key)).await;
}

/// Between its own passes, a daemon delivers the shards of other workers' passes of its
/// computations, whether or not its schedule met them (a `sync` run by hand, say), until `stop`.
async fn help_while_idle(shared: Arc<Shared>, stop: CancellationToken) {
    let Some(store) = sharing_store(&shared) else { return };
    let progress = Progress::off().stage("delivering shards".into(), "rows answered", None);
    loop {
        tokio::select! {
            _ = tokio::time::sleep(watch_poll(&shared.config)) => {}
            _ = stop.cancelled() => return,
        }
        help(&shared, &store, &stop, &progress, None).await;
    }
}

/// Delivers the shards this daemon can claim of other workers' deliveries of its computations,
/// but those of a computation it runs or watches a pass of itself, unless it is `watched` (the
/// one the caller watches): that pass delivers its own, and a watch helps only its own.
async fn help(shared: &Shared, store: &Store, stop: &CancellationToken, progress: &Stage, watched: Option<&str>) {
    let known: Vec<String> = shared.config.computations.iter().map(|c| c.key.clone()).collect();
    let busy =
        |key: &str| watched != Some(key) && shared.running.lock().unwrap_or_else(|p| p.into_inner()).contains(key);
    match delivery::shards::help_any(&sharding(shared, store, stop, progress), &known, busy).await {
        Ok(0) => {}
        Ok(shards) => tracing::info!(shards, "delivered shards of other workers' passes"),
        Err(e) => tracing::warn!(error = %format!("{e:#}"), "stopped delivering a shard"),
    }
}

/// The state as this daemon's shard deliveries write it, where deliveries are shared out (each
/// shard's delivery bounds its sending by its own claim's tenure).
fn sharing_store(shared: &Shared) -> Option<Store> {
    let store = shared.store.claimed_by(&shared.owner, shared.config.lease_ttl, &crate::tenure::UNBOUNDED);
    (store.delivers_in_shards() && shared.destination.shared_by_workers()).then_some(store)
}

fn sharding<'a>(
    shared: &'a Shared,
    store: &'a Store,
    stop: &'a CancellationToken,
    progress: &'a Stage,
) -> Sharding<'a> {
    Sharding {
        store,
        destination: &shared.destination,
        policy: &shared.config.retry,
        deadline: tokio::time::Instant::now() + shared.config.retry.budget,
        stop,
        progress,
        metrics: &shared.metrics,
        ttl: shared.config.lease_ttl,
        shard_rows: shared.config.delivery_shard_rows,
        destination_id: shared.config.destination.identity(),
    }
}

/// How often a daemon looks at passes other workers hold: a quarter of the lease, 2 s at most.
fn watch_poll(config: &Config) -> std::time::Duration {
    (config.lease_ttl / 4).clamp(std::time::Duration::from_millis(250), std::time::Duration::from_secs(2))
}

async fn leased_pass(shared: &Shared, keys: &[String], stop: CancellationToken) -> anyhow::Result<Ran> {
    let ttl = shared.config.lease_ttl;
    let stop = stop.child_token();
    let (leases, held) = lease::try_acquire(&shared.store, &shared.owner, ttl, keys, &stop).await?;
    // Under the leases: a `resync` elsewhere may have moved the state to another destination.
    if let Err(e) = shared.store.claim_destination(&shared.config.destination.identity()).await {
        leases.release().await?;
        return Err(e);
    }
    let store = leases.claim(ttl);
    for h in &held {
        tracing::info!("skipping: {h}");
    }
    if leases.keys().is_empty() && !held.is_empty() {
        leases.release().await?;
        return Ok(Ran::HeldElsewhere);
    }
    let selected: Vec<Computation> =
        shared.config.computations.iter().filter(|c| leases.keys().contains(&c.key)).cloned().collect();
    let started = std::time::Instant::now();
    let options = PassOptions {
        trigger: Trigger::Schedule,
        resync: false,
        stop: stop.clone(),
        progress: Progress::off(),
        allow_mass_exit: false,
        beside_other_passes: true,
        metrics: shared.metrics.clone(),
    };
    let pass = pass::run(&shared.config, &store, &shared.destination, &selected, &options);
    let result = pass::within_grace(pass, &stop, shared.config.shutdown_grace).await;
    if result.is_none() {
        tracing::warn!(computations = %leases.keys().join(","), "requests still in flight after shutdown_grace_secs: abandoned");
        for key in leases.keys() {
            shared.metrics.pass_ended(key, RunStatus::Interrupted, started.elapsed());
        }
        store.interrupt_runs(leases.keys(), pass::ABANDONED).await?;
    }
    leases.release().await?;
    result.transpose()?;
    Ok(Ran::Pass)
}

/// Computations to run at once on start: never synced, last pass unfinished (running,
/// interrupted, incomplete, failed), or finished longer ago than their schedule's interval.
pub async fn catch_up(store: &Store, computations: &[Computation]) -> anyhow::Result<Vec<String>> {
    let now = chrono::Utc::now();
    let mut due = Vec::new();
    for c in computations {
        let overdue = match store.last_run(&c.key).await? {
            None => true,
            Some(run) if run.status != RunStatus::Ok => true,
            Some(run) => {
                let finished = run.finished_at.as_deref().and_then(|t| chrono::DateTime::parse_from_rfc3339(t).ok());
                match (finished, schedule::interval_at(&c.cron, now)) {
                    (Some(f), Some(interval)) => now - f.with_timezone(&chrono::Utc) > interval,
                    _ => true,
                }
            }
        };
        if overdue {
            due.push(c.key.clone());
        }
    }
    Ok(due)
}
