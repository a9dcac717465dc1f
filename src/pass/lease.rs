//! Holding leases on computations for the length of a pass (DESIGN §9.6): taken before the
//! pass, renewed by a heartbeat while it runs, released after. A process that dies stops
//! renewing, and its leases can be taken over once they expire.

use std::sync::Arc;
use std::time::Duration;

use tokio::task::JoinHandle;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use tracing::Level;

use crate::say::say;
use crate::state::{HeldLease, LeaseLost, LeaseOwner, Store, Tenure};

/// Leases held by this process on some computations.
pub struct Leases {
    store: Store,
    owner: LeaseOwner,
    keys: Vec<String>,
    /// Until when they are surely ours, extended by each renewal.
    tenure: Tenure,
    heartbeat: JoinHandle<()>,
}

impl Leases {
    pub fn keys(&self) -> &[String] {
        &self.keys
    }

    /// The store through which a pass under these leases writes and sends: its writes checked
    /// against them, its sending bounded by their tenure.
    pub fn claim(&self, ttl: Duration) -> Store {
        self.store.claimed_by(&self.owner, ttl, &self.tenure)
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
    let asked = std::time::Instant::now();
    let mut got = Vec::new();
    let mut held = Vec::new();
    for (key, taken) in keys.iter().zip(store.acquire_leases(keys, owner, ttl).await?) {
        match taken {
            Ok(()) => got.push(key.clone()),
            Err(h) => held.push(h),
        }
    }
    let renew: Renew = {
        let (store, owner, keys) = (store.clone(), owner.clone(), got.clone());
        Arc::new(move || store.renew_leases(&owner, &keys, ttl, ttl / 3))
    };
    let retried = crate::state::renewal({
        let renew = renew.clone();
        move || renew()
    });
    let tenure = Tenure::renewable(asked, ttl, Some(retried));
    let beat = Heartbeat { renew, ttl, tenure: tenure.clone() };
    let heartbeat = tokio::spawn(beat.run(lost.clone()));
    Ok((Leases { store: store.clone(), owner: owner.clone(), keys: got, tenure, heartbeat }, held))
}

/// One renewal of a pass's leases, each waiting at most a third of the lease for the write lock.
type Renew = Arc<dyn Fn() -> anyhow::Result<()> + Send + Sync>;

/// What renews a pass's leases.
struct Heartbeat {
    renew: Renew,
    ttl: Duration,
    tenure: Tenure,
}

impl Heartbeat {
    /// Renews the leases every third of `ttl`, each renewal waiting at most that long for the
    /// write lock; cancels `lost` and ends when one was taken over.
    async fn run(self, lost: CancellationToken) {
        let mut tick = tokio::time::interval(self.ttl / 3);
        tick.tick().await;
        loop {
            tick.tick().await;
            let asked = std::time::Instant::now();
            let renew = self.renew.clone();
            let renewed = tokio::task::spawn_blocking(move || renew()).await;
            if !self.renewed(renewed, asked, &lost) {
                return;
            }
        }
    }

    /// Takes in a renewal asked at `asked`: whether the leases are still ours.
    fn renewed(
        &self,
        renewed: Result<anyhow::Result<()>, tokio::task::JoinError>,
        asked: std::time::Instant,
        lost: &CancellationToken,
    ) -> bool {
        match renewed {
            Ok(Ok(())) => self.tenure.renewed(asked, self.ttl),
            Ok(Err(e)) if e.is::<LeaseLost>() => {
                tracing::error!(error = %e, "lease lost: stopping the pass");
                lost.cancel();
                return false;
            }
            Ok(Err(e)) => tracing::warn!(error = %format!("{e:#}"), "cannot renew leases"),
            Err(e) => tracing::warn!(error = %e, "cannot renew leases"),
        }
        true
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
