//! `leases` on the database's clock: which worker runs a pass of which computation. A lease is
//! live while its `expires_at` is after the database's now (`DB_NOW`), whatever the workers'
//! clocks say; every write transaction of a pass checks its leases inside itself, with their
//! rows locked `FOR KEY SHARE`, so that a takeover, which locks those rows `FOR UPDATE` first,
//! waits for it to end and the next one finds the lease gone. `KEY SHARE` lets the holder's
//! heartbeat, an `UPDATE` of no key, renew the lease meanwhile.

use std::sync::Arc;
use std::time::{Duration, Instant};

use sqlx::{AssertSqlSafe, PgConnection};

use super::{DB_NOW, Store};
use crate::state::leases::holder_gone;
use crate::state::{HeldLease, LeaseLost, LeaseOwner, Tenure};

/// What a store's writes check: the leases of this owner.
#[derive(Debug, Clone)]
pub(super) struct Claim {
    owner: Arc<LeaseOwner>,
    ttl: Duration,
    /// Extended by every renewal made through this claim.
    tenure: Tenure,
}

impl Claim {
    pub(super) fn ttl(&self) -> Duration {
        self.ttl
    }

    pub(super) fn owner(&self) -> &LeaseOwner {
        &self.owner
    }
}

/// How long taking a lease waits for its row, locked by the holder's transaction: a holder
/// that stalled inside one keeps it until the server ends it (see `Store::blocking`); meanwhile
/// the lease is reported held, and a waiting command tries again.
const TAKE_LOCK_TIMEOUT: &str = "SET LOCAL lock_timeout = '1s'";

/// SQL: `ttl_ms` (a parameter) after the database's now, as the state's text.
pub(super) fn expiry(ttl_param: &str) -> String {
    format!("state_time((extract(epoch FROM clock_timestamp()) * 1000)::bigint + {ttl_param})")
}

impl Store {
    /// This store, its pass's writes checked against the leases `owner` holds.
    pub fn claimed_by(&self, owner: &LeaseOwner, ttl: Duration, tenure: &Tenure) -> Store {
        let claim = Claim { owner: Arc::new(owner.clone()), ttl, tenure: tenure.clone() };
        Store { claim: Some(claim), ..self.clone() }
    }

    /// Until when this store's pass, or its shard's delivery, may send (unbounded without a claim).
    pub fn tenure(&self) -> Tenure {
        self.claim.as_ref().map(|c| c.tenure.clone()).unwrap_or_default()
    }

    /// This store, its sending bounded by `tenure` (a delivery shard's claim).
    pub(super) fn with_tenure(&self, tenure: &Tenure) -> Store {
        let claim = self.claim.as_ref().map(|c| Claim { tenure: tenure.clone(), ..c.clone() });
        Store { claim, ..self.clone() }
    }

    /// What a writer of `keys` checks in each of its transactions: nothing without a claim.
    /// Delivering a shard, the shard's claim too; a worker helping with another's pass holds
    /// no lease of `keys`, only its shard.
    pub(super) fn lease_check(&self, keys: &[String]) -> Option<LeaseCheck> {
        let shard = self.shard.as_ref();
        let keys = if shard.is_some_and(|s| !s.holds_pass) { Vec::new() } else { keys.to_vec() };
        let shard = shard.map(|s| (s.claim.round, s.claim.shard));
        self.claim.as_ref().map(|claim| LeaseCheck { claim: claim.clone(), keys, shard })
    }

    /// Takes the lease of `key` if it is free, lapsed, ours, or held by a process certainly
    /// gone; else says who holds it.
    pub async fn acquire_lease(
        &self,
        key: &str,
        owner: &LeaseOwner,
        ttl: Duration,
    ) -> anyhow::Result<Result<(), HeldLease>> {
        match self.take_lease(key, owner, ttl).await {
            Err(e) if lock_timed_out(&e) => match self.holder(key).await? {
                Some(h) => Ok(Err(h)),
                None => Err(e),
            },
            taken => taken,
        }
    }

    async fn take_lease(&self, key: &str, owner: &LeaseOwner, ttl: Duration) -> anyhow::Result<Result<(), HeldLease>> {
        let mut tx = self.pool.begin().await?;
        sqlx::query(TAKE_LOCK_TIMEOUT).execute(&mut *tx).await?;
        let holder = live_holder(&mut tx, key, owner).await?;
        let gone_owner = match holder {
            Some((h, _)) if !holder_gone(&h, owner) => {
                // Now, not when the pool next uses the connection: the row is locked until then,
                // and the holder's heartbeat and answers wait for it.
                tx.rollback().await?;
                return Ok(Err(h));
            }
            Some((h, their_id)) => {
                tracing::info!(key, pid = h.pid, "taking over the lease of a process that is gone");
                Some(their_id)
            }
            None => None,
        };
        // Another worker may have inserted the row since: the update takes it only from
        // this owner, a lapsed lease, or the holder found gone.
        let taken = sqlx::query(AssertSqlSafe(format!(
            "INSERT INTO leases (computation_key, owner, pid, host, acquired_at, heartbeat_at, expires_at, process) \
             VALUES ($1, $2, $3, $4, {DB_NOW}, {DB_NOW}, {}, $6) ON CONFLICT (computation_key) DO UPDATE SET \
             owner = excluded.owner, pid = excluded.pid, host = excluded.host, acquired_at = excluded.acquired_at, \
             heartbeat_at = excluded.heartbeat_at, expires_at = excluded.expires_at, process = excluded.process \
             WHERE leases.owner = $2 OR leases.expires_at <= {DB_NOW} OR leases.owner = $7",
            expiry("$5")
        )))
        .bind(key)
        .bind(&owner.id)
        .bind(i64::from(owner.pid))
        .bind(&owner.host)
        .bind(ttl.as_millis() as i64)
        .bind(owner.process.as_ref().map(ToString::to_string))
        .bind(gone_owner)
        .execute(&mut *tx)
        .await?
        .rows_affected();
        if taken == 0 {
            tx.rollback().await?;
            return match self.holder(key).await? {
                Some(h) => Ok(Err(h)),
                None => anyhow::bail!("the lease of {key} changed hands while it was being taken; try again"),
            };
        }
        tx.commit().await?;
        Ok(Ok(()))
    }

    /// Extends the leases of `keys` that `owner` holds, on a connection of its own; fails with
    /// `LeaseLost` when one of them is no longer ours or has lapsed. Blocking.
    pub fn renew_leases(
        &self,
        owner: &LeaseOwner,
        keys: &[String],
        ttl: Duration,
        wait: Duration,
    ) -> anyhow::Result<()> {
        let claim = Claim { owner: Arc::new(owner.clone()), ttl, tenure: Tenure::default() };
        let check = LeaseCheck { claim, keys: keys.to_vec(), shard: None };
        let mut db = self.blocking()?;
        db.run(async |conn| {
            let mut tx = sqlx::Connection::begin(conn).await?;
            let wait_ms = wait.as_millis().max(1).to_string();
            sqlx::query(AssertSqlSafe(format!("SET LOCAL lock_timeout = {wait_ms}"))).execute(&mut *tx).await?;
            check.hold(&mut tx, Hold::Renew).await?;
            tx.commit().await?;
            Ok(())
        })
    }

    /// Every live lease, by the database's clock: which worker runs a pass of what now.
    pub async fn live_leases(&self) -> anyhow::Result<Vec<HeldLease>> {
        Ok(sqlx::query_as(AssertSqlSafe(format!(
            "SELECT computation_key, pid, host, expires_at, process FROM leases WHERE expires_at > {DB_NOW} \
             ORDER BY computation_key COLLATE \"C\""
        )))
        .fetch_all(&self.pool)
        .await?)
    }

    /// Gives up the leases of `keys` that `owner` holds.
    pub async fn release_leases(&self, owner: &LeaseOwner, keys: &[String]) -> anyhow::Result<()> {
        sqlx::query("DELETE FROM leases WHERE owner = $1 AND computation_key = ANY($2)")
            .bind(&owner.id)
            .bind(keys)
            .execute(&self.pool)
            .await?;
        Ok(())
    }
}

impl Store {
    /// Who holds the lease of `key`, read without waiting for its row's lock.
    async fn holder(&self, key: &str) -> anyhow::Result<Option<HeldLease>> {
        Ok(sqlx::query_as(
            "SELECT computation_key, pid, host, expires_at, process FROM leases WHERE computation_key = $1",
        )
        .bind(key)
        .fetch_optional(&self.pool)
        .await?)
    }
}

/// Whether `e` is PostgreSQL's "lock not available" (a `lock_timeout` ran out).
pub(super) fn lock_timed_out(e: &anyhow::Error) -> bool {
    e.downcast_ref::<sqlx::Error>()
        .and_then(|e| e.as_database_error())
        .is_some_and(|e| e.code().as_deref() == Some("55P03"))
}

/// The live lease of `key` held by someone other than `owner`, and its owner's id. The row is
/// locked `FOR UPDATE` whoever holds it, live or lapsed: the lock waits for the transactions
/// still writing under the old holder's lease (`FOR KEY SHARE`), so that their rows are in
/// before the new holder's pass reads the state.
async fn live_holder(
    db: &mut PgConnection,
    key: &str,
    owner: &LeaseOwner,
) -> sqlx::Result<Option<(HeldLease, String)>> {
    type Row = (String, i64, String, String, Option<String>, String, bool);
    let row: Option<Row> = sqlx::query_as(AssertSqlSafe(format!(
        "SELECT computation_key, pid, host, expires_at, process, owner, owner <> $2 AND expires_at > {DB_NOW} \
         FROM leases WHERE computation_key = $1 FOR UPDATE"
    )))
    .bind(key)
    .bind(&owner.id)
    .fetch_optional(db)
    .await?;
    Ok(row.filter(|row| row.6).map(|(computation_key, pid, host, expires_at, process, id, _)| {
        (HeldLease { computation_key, pid, host, expires_at, process }, id)
    }))
}

impl Store {
    /// A transaction in which this store's claim still holds the leases of `keys`, their rows
    /// locked `FOR KEY SHARE`, else `LeaseLost` (no check without a claim). A pass that waited past its lease
    /// (stalled, or behind a lock) must not settle, open or close what the new holder's pass is
    /// doing.
    pub(super) async fn begin_holding(
        &self,
        keys: &[String],
    ) -> anyhow::Result<sqlx::Transaction<'static, sqlx::Postgres>> {
        let mut tx = self.pool.begin().await?;
        hold(&mut tx, self.lease_check(keys).as_ref(), Hold::Share).await?;
        Ok(tx)
    }

    /// As `begin_holding`, for the computation of the `sync_runs` row `run`.
    pub(super) async fn begin_holding_run(
        &self,
        run: i64,
    ) -> anyhow::Result<sqlx::Transaction<'static, sqlx::Postgres>> {
        if self.claim.is_none() {
            return Ok(self.pool.begin().await?);
        }
        let key: Option<String> = sqlx::query_scalar("SELECT computation_key FROM sync_runs WHERE id = $1")
            .bind(run)
            .fetch_optional(&self.pool)
            .await?;
        self.begin_holding(&key.into_iter().collect::<Vec<_>>()).await
    }
}

/// The leases of some computations, as one writer's transactions check them.
pub(super) struct LeaseCheck {
    claim: Claim,
    keys: Vec<String>,
    /// The delivery shard (round, shard) whose claim must be this owner's too.
    shard: Option<(i64, i32)>,
}

impl LeaseCheck {
    /// Inside a write transaction: fails with `LeaseLost` unless every lease (and the delivery
    /// shard's claim) is still the claim's and unexpired by the database's clock. `how` says
    /// whether the rows are then locked until the transaction ends, or extended too.
    pub(super) async fn hold(&self, db: &mut PgConnection, how: Hold) -> anyhow::Result<()> {
        let owner = self.claim.owner.id.as_str();
        let asked = Instant::now();
        if let Some((round, shard)) = self.shard {
            super::shards::hold_shard(db, owner, round, shard, how != Hold::Look).await?;
        }
        let held = if how == Hold::Renew {
            sqlx::query(AssertSqlSafe(format!(
                "UPDATE leases SET heartbeat_at = {DB_NOW}, expires_at = {} \
                 WHERE owner = $1 AND computation_key = ANY($2) AND expires_at > {DB_NOW}",
                expiry("$3")
            )))
            .bind(owner)
            .bind(&self.keys)
            .bind(self.claim.ttl.as_millis() as i64)
            .execute(&mut *db)
            .await?
            .rows_affected() as usize
        } else {
            let lock = if how == Hold::Share { "FOR KEY SHARE" } else { "" };
            sqlx::query(AssertSqlSafe(format!(
                "SELECT 1 FROM leases WHERE owner = $1 AND computation_key = ANY($2) AND expires_at > {DB_NOW} {lock}"
            )))
            .bind(owner)
            .bind(&self.keys)
            .fetch_all(&mut *db)
            .await?
            .len()
        };
        if held < self.keys.len() {
            return Err(LeaseLost { keys: self.keys.join(", ") }.into());
        }
        if how == Hold::Renew {
            self.claim.tenure.renewed(asked, self.claim.ttl);
        }
        Ok(())
    }
}

/// How a write transaction holds its leases (`LeaseCheck::hold`).
#[derive(Clone, Copy, PartialEq, Eq)]
pub(super) enum Hold {
    /// Checked and extended: the rows stay locked for update.
    Renew,
    /// Checked and locked `FOR KEY SHARE` (the shard's claim too) until the transaction ends:
    /// a takeover waits for it; the holder's heartbeat does not.
    Share,
    /// Checked only, no lock: whether the lease is gone, after a write failed.
    Look,
}

/// Inside a write transaction: `LeaseCheck::hold`, when there is a check.
pub(super) async fn hold(db: &mut PgConnection, check: Option<&LeaseCheck>, how: Hold) -> anyhow::Result<()> {
    match check {
        Some(c) => c.hold(db, how).await,
        None => Ok(()),
    }
}
