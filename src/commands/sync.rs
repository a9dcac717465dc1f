//! `sync`, `sync --dry-run` and `resync`.

use std::process::ExitCode;
use std::sync::Arc;
use std::time::Duration;

use tracing::Level;

use super::answer_line;
use super::{conclude, stop_on_signal};
use crate::config::{Computation, Config};
use crate::destination::Destination;
use crate::metrics::Metrics;
use crate::pass::{self, PassOptions, lease, plan};
use crate::progress::Progress;
use crate::say::say;
use crate::state::{LeaseOwner, Store, Trigger};

/// A pass asked for on the command line, validated: the computations it selects (known keys
/// only), how long to wait for other processes' leases, and what kind of pass.
pub struct PassRequest {
    pub selected: Vec<Computation>,
    pub wait: Duration,
    pub kind: PassKind,
}

/// `sync` or `resync`, with what each takes.
pub enum PassKind {
    /// A pass now; `allow_mass_exit` lets held-back snapshots through this once.
    Sync { allow_mass_exit: bool },
    /// Rows marked pending again first (only `user`'s when given), then a pass recorded as `resync`.
    Resync { user: Option<String> },
}

impl PassRequest {
    /// The request for the computations named by `keys` (all when empty); an unknown key is
    /// an error naming the known ones.
    pub fn new(config: &Config, keys: &[String], wait: Duration, kind: PassKind) -> anyhow::Result<PassRequest> {
        Ok(PassRequest { selected: config.select(keys)?, wait, kind })
    }

    /// Whether this pass moves the state to the configured destination: a resync of every
    /// computation (no `--user`) sends every row again, so the new destination gets the whole
    /// picture. Any other pass must find the state there.
    fn moves_state(&self, config: &Config) -> bool {
        matches!(self.kind, PassKind::Resync { user: None }) && self.selected.len() == config.computations.len()
    }

    fn keys(&self) -> Vec<String> {
        self.selected.iter().map(|c| c.key.clone()).collect()
    }
}

/// Runs the pass `request` asks for, under the leases of its computations.
pub async fn sync(config: &Config, request: PassRequest) -> anyhow::Result<ExitCode> {
    let store = Store::open(&config.state, config.lease_ttl).await?.keeping_history(config.keep_history_days);
    // Nobody scrapes a command's series: they are counted and dropped.
    let metrics = Arc::new(Metrics::new());
    let keys = request.keys();
    let owner = LeaseOwner::this_process();
    let stop = stop_on_signal();
    let leases = lease::acquire_all(&store, &owner, config.lease_ttl, &keys, request.wait, &stop).await?;
    let store = leases.claim(config.lease_ttl);
    let destination = match prepare(&store, config, &request, &metrics).await {
        Ok(destination) => destination,
        Err(e) => {
            leases.release().await?;
            return Err(e);
        }
    };
    let pass = async {
        let allow_mass_exit = matches!(request.kind, PassKind::Sync { allow_mass_exit: true });
        let options = PassOptions {
            trigger: Trigger::Manual,
            resync: matches!(request.kind, PassKind::Resync { .. }),
            stop: stop.clone(),
            allow_mass_exit,
            beside_other_passes: false,
            progress: Progress::for_command(),
            metrics: metrics.clone(),
        };
        pass::run(config, &store, &destination, &request.selected, &options).await
    };
    let result = pass::within_grace(pass, &stop, config.shutdown_grace).await;
    if result.is_none() {
        tracing::warn!("requests still in flight after shutdown_grace_secs: abandoned; the next pass settles them");
        store.interrupt_runs(&keys, pass::ABANDONED).await?;
    }
    leases.release().await?;
    store.close().await;
    match result {
        Some(reports) => Ok(conclude(&keys, &reports?)),
        None => {
            let interrupted: Vec<String> =
                keys.iter().map(|k| format!("{k} (interrupted: {})", pass::ABANDONED)).collect();
            eprintln!("audience-sync: not everything was delivered: {}", interrupted.join(", "));
            Ok(ExitCode::FAILURE)
        }
    }
}

/// What a pass does under its leases before it starts, where nothing else can change it: a
/// state synced to another destination (a resync may have moved it while this one waited for
/// the leases) is refused before the destination opens (a file destination is created as it
/// opens); once it opened, the state records it where none is, and a resync marks its rows,
/// moving the state in the same transaction where it moves it.
async fn prepare(
    store: &Store,
    config: &Config,
    request: &PassRequest,
    metrics: &Arc<Metrics>,
) -> anyhow::Result<Destination> {
    let identity = config.destination.identity();
    let moves = request.moves_state(config);
    if moves {
        refuse_to_strand(store, config, &identity).await?;
    } else {
        store.check_destination(&identity).await?;
    }
    let destination = Destination::from_config(&config.destination, metrics)?;
    if !moves {
        store.claim_destination(&identity).await?;
    }
    pass::warn_of_unconfigured(store, config).await?;
    if let PassKind::Resync { user } = &request.kind {
        // Moving, in one transaction: a state moved and killed before marking would send the
        // new destination nothing but deltas, and an answer from the old one recorded between
        // the two would mark a row synced that the new one never gets.
        let moving_to = moves.then_some(identity.as_str());
        let marked = store.mark_for_resync(&request.keys(), user.as_deref(), moving_to).await?;
        let whose = user.as_ref().map(|u| format!(" of user {u:?}")).unwrap_or_default();
        answer_line!("resync: {marked} rows{whose} marked to be sent again");
    }
    Ok(destination)
}

/// Refuses to move a state holding computations the config does not name: this resync would
/// not send their rows, and the new destination would never get them.
async fn refuse_to_strand(store: &Store, config: &Config, identity: &str) -> anyhow::Result<()> {
    if store.check_destination(identity).await.is_ok() {
        return Ok(());
    }
    let stranded = pass::unconfigured(store, config).await?;
    if stranded.is_empty() {
        return Ok(());
    }
    anyhow::bail!(
        "cannot move the state to {identity}: it holds computations this config does not name ({}), \
         whose rows this resync would not send there; name them in the config, or give the new \
         destination a state of its own",
        stranded.join(", ")
    )
}

/// Prints what a pass would do; touches neither the state nor the destination.
pub async fn dry_run(config: &Config, keys: &[String]) -> anyhow::Result<ExitCode> {
    let selected = config.select(keys)?;
    let store = Store::open_read_only(&config.state).await?;
    if let Some(store) = &store {
        store.require_current_schema().await?;
        store.check_destination(&config.destination.identity()).await?;
        pass::warn_of_unconfigured(store, config).await?;
    }
    let mut failed = Vec::new();
    for c in &selected {
        match plan::plan(config, store.as_ref(), c).await {
            Ok(p) => {
                answer_line!("{}", p.summary(&c.key));
                if let Err(held) = pass::guard(c, &p.counts) {
                    answer_line!("{}: {held}", c.key);
                }
            }
            Err(e) => {
                answer_line!("{}: snapshot failed: {e:#}", c.key);
                failed.push(c.key.clone());
            }
        }
    }
    if failed.is_empty() {
        return Ok(ExitCode::SUCCESS);
    }
    say(Level::ERROR, &format!("audience-sync: snapshots failed to load: {}", failed.join(", ")));
    Ok(ExitCode::FAILURE)
}
