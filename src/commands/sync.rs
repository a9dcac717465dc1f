//! `sync`, `sync --dry-run` and `resync`.

use std::process::ExitCode;
use std::time::Duration;

use super::{conclude, stop_on_signal};
use crate::config::Config;
use crate::destination::Destination;
use crate::pass::{self, PassOptions, lease, plan};
use crate::progress::Progress;
use crate::state::{LeaseOwner, Store, Trigger};

/// One pass now over the computations named by `keys` (all when empty).
pub async fn sync(config: &Config, keys: &[String], wait: Duration, allow_mass_exit: bool) -> anyhow::Result<ExitCode> {
    leased_pass(config, keys, wait, None, allow_mass_exit).await
}

/// Marks the selected rows (or `user`'s) pending again, then runs a pass recorded as `resync`.
pub async fn resync(config: &Config, keys: &[String], user: Option<&str>, wait: Duration) -> anyhow::Result<ExitCode> {
    leased_pass(config, keys, wait, Some(user), false).await
}

/// A pass under leases; `resync` is `Some(user filter)` for a resync.
async fn leased_pass(
    config: &Config,
    keys: &[String],
    wait: Duration,
    resync: Option<Option<&str>>,
    allow_mass_exit: bool,
) -> anyhow::Result<ExitCode> {
    let selected = config.select(keys)?;
    let store = Store::open(&config.state_path).await?;
    let destination = Destination::from_config(&config.destination)?;
    let selected_keys: Vec<String> = selected.iter().map(|c| c.key.clone()).collect();
    let owner = LeaseOwner::this_process();
    let stop = stop_on_signal();
    let leases = lease::acquire_all(&store, &owner, config.lease_ttl, &selected_keys, wait, &stop).await?;
    let store = store.claimed_by(&owner, config.lease_ttl);
    let pass = async {
        if let Some(user) = resync {
            let marked = store.mark_for_resync(&selected_keys, user).await?;
            let whose = user.map(|u| format!(" of user {u:?}")).unwrap_or_default();
            println!("resync: {marked} rows{whose} marked to be sent again");
        }
        let options = PassOptions {
            trigger: Trigger::Manual,
            resync: resync.is_some(),
            stop: stop.clone(),
            allow_mass_exit,
            beside_other_passes: false,
            progress: Progress::for_command(),
        };
        pass::run(config, &store, &destination, &selected, &options).await
    };
    let result = pass::within_grace(pass, &stop, config.shutdown_grace).await;
    if result.is_none() {
        tracing::warn!("requests still in flight after shutdown_grace_secs: abandoned; the next pass settles them");
        store.interrupt_runs(&selected_keys, pass::ABANDONED).await?;
    }
    leases.release().await?;
    store.close().await;
    let reports = result.transpose()?.unwrap_or_default();
    Ok(conclude(&selected_keys, &reports))
}

/// Prints what a pass would do; touches neither the state nor the destination.
pub async fn dry_run(config: &Config, keys: &[String]) -> anyhow::Result<ExitCode> {
    let selected = config.select(keys)?;
    let store = Store::open_read_only(&config.state_path).await?;
    let mut failed = Vec::new();
    for c in &selected {
        match plan::plan(config, store.as_ref(), c).await {
            Ok(p) => {
                println!("{}", p.summary(&c.key));
                if let Err(held) = pass::guard(c, &p.counts) {
                    println!("{}: {held}", c.key);
                }
            }
            Err(e) => {
                println!("{}: snapshot failed: {e:#}", c.key);
                failed.push(c.key.clone());
            }
        }
    }
    if failed.is_empty() {
        return Ok(ExitCode::SUCCESS);
    }
    eprintln!("audience-sync: snapshots failed to load: {}", failed.join(", "));
    Ok(ExitCode::FAILURE)
}
