//! Holding leases on computations for the length of a pass (DESIGN §9.6): taken before the
//! pass, renewed by a heartbeat while it runs, released after. A process that dies stops
//! renewing, and its leases can be taken over once they expire.

use std::time::Duration;

use tokio::task::JoinHandle;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use tracing::Level;

use crate::say::say;
use crate::state::{HeldLease, LeaseLost, LeaseOwner, Store};

/// Leases held by this process on some computations.
pub struct Leases {
    store: Store,
    owner: LeaseOwner,
    keys: Vec<String>,
    heartbeat: JoinHandle<()>,
}

impl Leases {
    pub fn keys(&self) -> &[String] {
        &self.keys
    }

    /// Stops the heartbeat and gives the leases up.
    pub async fn release(self) -> anyhow::Result<()> {
        self.heartbeat.abort();
        self.store.release_leases(&self.owner, &self.keys).await
    }
}

/// Takes the leases of `keys` that are free. Returns them and, for the others, who holds them.
/// `lost` is cancelled if a renewal finds a lease taken over: the pass must stop.
pub async fn try_acquire(
    store: &Store,
    owner: &LeaseOwner,
    ttl: Duration,
    keys: &[String],
    lost: &CancellationToken,
) -> anyhow::Result<(Leases, Vec<HeldLease>)> {
    let mut got = Vec::new();
    let mut held = Vec::new();
    for (key, taken) in keys.iter().zip(store.acquire_leases(keys, owner, ttl).await?) {
        match taken {
            Ok(()) => got.push(key.clone()),
            Err(h) => held.push(h),
        }
    }
    let heartbeat = tokio::spawn(heartbeat(store.clone(), owner.clone(), got.clone(), ttl, lost.clone()));
    Ok((Leases { store: store.clone(), owner: owner.clone(), keys: got, heartbeat }, held))
}

/// Renews the leases of `keys` every third of `ttl`, each renewal waiting at most that long for
/// the write lock; cancels `lost` and ends when one was taken over.
async fn heartbeat(store: Store, owner: LeaseOwner, keys: Vec<String>, ttl: Duration, lost: CancellationToken) {
    let mut tick = tokio::time::interval(ttl / 3);
    tick.tick().await;
    loop {
        tick.tick().await;
        let (store, owner, keys) = (store.clone(), owner.clone(), keys.clone());
        let renewed = tokio::task::spawn_blocking(move || store.renew_leases(&owner, &keys, ttl, ttl / 3)).await;
        match renewed {
            Ok(Ok(())) => {}
            Ok(Err(e)) if e.is::<LeaseLost>() => {
                tracing::error!(error = %e, "lease lost: stopping the pass");
                lost.cancel();
                return;
            }
            Ok(Err(e)) => tracing::warn!(error = %format!("{e:#}"), "cannot renew leases"),
            Err(e) => tracing::warn!(error = %e, "cannot renew leases"),
        }
    }
}

/// Takes the leases of all `keys`, waiting up to `wait` for other processes to finish.
/// Fails, naming who holds what, if they are still held after that or `lost` (the shutdown
/// token) is cancelled meanwhile.
pub async fn acquire_all(
    store: &Store,
    owner: &LeaseOwner,
    ttl: Duration,
    keys: &[String],
    wait: Duration,
    lost: &CancellationToken,
) -> anyhow::Result<Leases> {
    let until = Instant::now() + wait;
    let mut told = false;
    loop {
        let (leases, held) = try_acquire(store, owner, ttl, keys, lost).await?;
        if held.is_empty() {
            return Ok(leases);
        }
        leases.release().await?;
        let busy: Vec<String> = held.iter().map(ToString::to_string).collect();
        if lost.is_cancelled() {
            anyhow::bail!("shutting down while waiting for a lease: {}", busy.join("; "));
        }
        if Instant::now() >= until {
            let hint = if wait.is_zero() { "; pass --wait SECS to wait for it" } else { "; gave up waiting" };
            anyhow::bail!("{}{hint}", busy.join("; "));
        }
        if !told {
            say(Level::INFO, &format!("audience-sync: waiting up to {}s: {}", wait.as_secs(), busy.join("; ")));
            told = true;
        }
        let pause = Duration::from_millis(500).min(until - Instant::now());
        tokio::select! {
            _ = tokio::time::sleep(pause) => {}
            _ = lost.cancelled() => {}
        }
    }
}
