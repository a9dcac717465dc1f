//! Holding leases on computations for the length of a pass (DESIGN §9.6): taken before the
//! pass, renewed by a heartbeat while it runs, released after. A process that dies stops
//! renewing, and its leases can be taken over once they expire.

use std::time::Duration;

use tokio::task::JoinHandle;
use tokio::time::Instant;

use crate::state::{HeldLease, LeaseOwner, Store};

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
pub async fn try_acquire(
    store: &Store,
    owner: &LeaseOwner,
    ttl: Duration,
    keys: &[String],
) -> anyhow::Result<(Leases, Vec<HeldLease>)> {
    let mut got = Vec::new();
    let mut held = Vec::new();
    for key in keys {
        match store.acquire_lease(key, owner, ttl).await? {
            Ok(()) => got.push(key.clone()),
            Err(h) => held.push(h),
        }
    }
    let heartbeat = {
        let (store, owner) = (store.clone(), owner.clone());
        tokio::spawn(async move {
            let mut tick = tokio::time::interval(ttl / 3);
            tick.tick().await;
            loop {
                tick.tick().await;
                if let Err(e) = store.renew_leases(&owner, ttl).await {
                    tracing::warn!(error = %format!("{e:#}"), "cannot renew leases");
                }
            }
        })
    };
    Ok((Leases { store: store.clone(), owner: owner.clone(), keys: got, heartbeat }, held))
}

/// Takes the leases of all `keys`, waiting up to `wait` for other processes to finish.
/// Fails, naming who holds what, if they are still held after that.
pub async fn acquire_all(
    store: &Store,
    owner: &LeaseOwner,
    ttl: Duration,
    keys: &[String],
    wait: Duration,
) -> anyhow::Result<Leases> {
    let until = Instant::now() + wait;
    let mut told = false;
    loop {
        let (leases, held) = try_acquire(store, owner, ttl, keys).await?;
        if held.is_empty() {
            return Ok(leases);
        }
        leases.release().await?;
        let busy: Vec<String> = held.iter().map(ToString::to_string).collect();
        if Instant::now() >= until {
            let hint = if wait.is_zero() { "; pass --wait SECS to wait for it" } else { "; gave up waiting" };
            anyhow::bail!("{}{hint}", busy.join("; "));
        }
        if !told {
            eprintln!("audience-sync: waiting up to {}s: {}", wait.as_secs(), busy.join("; "));
            told = true;
        }
        tokio::time::sleep(Duration::from_millis(500).min(until - Instant::now())).await;
    }
}
