//! The `leases` table: which process is running a pass of which computation.

use std::time::Duration;

use super::{Store, now};

/// Who holds a lease: this process, described for operators.
#[derive(Debug, Clone)]
pub struct LeaseOwner {
    pub id: String,
    pub pid: u32,
    pub host: String,
}

impl LeaseOwner {
    /// An owner id unique to this process.
    pub fn this_process() -> LeaseOwner {
        let host = std::fs::read_to_string("/proc/sys/kernel/hostname")
            .map(|h| h.trim().to_string())
            .unwrap_or_else(|_| "unknown".into());
        let pid = std::process::id();
        LeaseOwner { id: format!("{host}:{pid}:{:016x}", fastrand::u64(..)), pid, host }
    }
}

/// A live lease held by someone else.
#[derive(Debug, Clone, PartialEq, Eq, sqlx::FromRow)]
pub struct HeldLease {
    pub computation_key: String,
    pub pid: i64,
    pub host: String,
    pub expires_at: String,
}

impl std::fmt::Display for HeldLease {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "{} is being synced by pid {} on {} (lease expires {})",
            self.computation_key, self.pid, self.host, self.expires_at
        )
    }
}

/// Whether a process with this pid runs on this host.
fn process_alive(pid: i64) -> bool {
    std::path::Path::new(&format!("/proc/{pid}")).exists()
}

fn expiry(ttl: Duration) -> String {
    let at = chrono::Utc::now() + chrono::Duration::from_std(ttl).unwrap_or(chrono::Duration::seconds(60));
    at.to_rfc3339_opts(chrono::SecondsFormat::Millis, true)
}

impl Store {
    /// Takes the lease of `key` if it is free, expired, or already ours; else says who holds it.
    pub async fn acquire_lease(
        &self,
        key: &str,
        owner: &LeaseOwner,
        ttl: Duration,
    ) -> anyhow::Result<Result<(), HeldLease>> {
        let mut tx = self.begin_immediate().await?;
        let at = now();
        let held: Option<HeldLease> = sqlx::query_as(
            "SELECT computation_key, pid, host, expires_at FROM leases WHERE computation_key = ?1 AND owner <> ?2 AND expires_at > ?3",
        )
        .bind(key)
        .bind(&owner.id)
        .bind(&at)
        .fetch_optional(&mut *tx)
        .await?;
        if let Some(h) = held {
            // A holder on this host whose process is gone (killed, crashed) cannot renew its
            // lease: take it over now rather than when it expires.
            if h.host != owner.host || process_alive(h.pid) {
                return Ok(Err(h));
            }
            tracing::info!(key, pid = h.pid, "taking over the lease of a process that is gone");
        }
        sqlx::query(
            "INSERT INTO leases (computation_key, owner, pid, host, acquired_at, heartbeat_at, expires_at) \
             VALUES (?1, ?2, ?3, ?4, ?5, ?5, ?6) ON CONFLICT (computation_key) DO UPDATE SET owner = excluded.owner, \
             pid = excluded.pid, host = excluded.host, acquired_at = excluded.acquired_at, \
             heartbeat_at = excluded.heartbeat_at, expires_at = excluded.expires_at",
        )
        .bind(key)
        .bind(&owner.id)
        .bind(i64::from(owner.pid))
        .bind(&owner.host)
        .bind(&at)
        .bind(expiry(ttl))
        .execute(&mut *tx)
        .await?;
        tx.commit().await?;
        Ok(Ok(()))
    }

    /// Extends every lease `owner` holds.
    pub async fn renew_leases(&self, owner: &LeaseOwner, ttl: Duration) -> anyhow::Result<()> {
        sqlx::query("UPDATE leases SET heartbeat_at = ?2, expires_at = ?3 WHERE owner = ?1")
            .bind(&owner.id)
            .bind(now())
            .bind(expiry(ttl))
            .execute(&self.pool)
            .await?;
        Ok(())
    }

    /// Gives up the leases of `keys` that `owner` holds.
    pub async fn release_leases(&self, owner: &LeaseOwner, keys: &[String]) -> anyhow::Result<()> {
        sqlx::query("DELETE FROM leases WHERE owner = ?1 AND computation_key IN (SELECT value FROM json_each(?2))")
            .bind(&owner.id)
            .bind(serde_json::to_string(keys)?)
            .execute(&self.pool)
            .await?;
        Ok(())
    }
}
