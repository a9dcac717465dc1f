//! The `leases` table: which process is running a pass of which computation.

use std::sync::Arc;
use std::time::{Duration, Instant};

use rusqlite::params;

use super::Store;
use crate::state::leases::holder_gone;
use crate::state::{HeldLease, LeaseLost, LeaseOwner, Tenure, now};

/// What a store's writes check: the leases of this owner. Every write transaction of a pass
/// verifies, inside itself, that its computations' leases are still this owner's: a takeover
/// needs the write lock too, so a check inside the transaction cannot be overtaken by one.
#[derive(Debug, Clone)]
pub(super) struct Claim {
    owner: Arc<str>,
    ttl: Duration,
    /// Extended by every renewal made through this claim.
    tenure: Tenure,
}

impl Store {
    /// This store, its pass's writes checked against the leases `owner` holds, and its sending
    /// bounded by their `tenure`.
    pub fn claimed_by(&self, owner: &LeaseOwner, ttl: Duration, tenure: &Tenure) -> Store {
        let claim = Claim { owner: owner.id.as_str().into(), ttl, tenure: tenure.clone() };
        Store { claim: Some(claim), ..self.clone() }
    }

    /// Until when this store's pass may send (unbounded without a claim).
    pub fn tenure(&self) -> Tenure {
        self.claim.as_ref().map(|c| c.tenure.clone()).unwrap_or_default()
    }

    /// What a writer of `keys` checks in each of its transactions: nothing without a claim.
    pub(super) fn lease_check(&self, keys: &[String]) -> anyhow::Result<Option<LeaseCheck>> {
        self.claim.as_ref().map(|claim| LeaseCheck::new(claim.clone(), keys)).transpose()
    }
}

/// The leases of some computations, as one writer's transactions check them (the keys are
/// serialized once: an answer writer checks in every one of its transactions).
pub(super) struct LeaseCheck {
    claim: Claim,
    keys: usize,
    keys_json: String,
    /// The keys as an operator reads them, for `LeaseLost`.
    names: String,
}

impl LeaseCheck {
    fn new(claim: Claim, keys: &[String]) -> anyhow::Result<LeaseCheck> {
        Ok(LeaseCheck { claim, keys: keys.len(), keys_json: serde_json::to_string(keys)?, names: keys.join(", ") })
    }

    /// Whether a writer's transaction should renew the leases it checks: when less than two
    /// thirds of their tenure is left, the heartbeat is late (SQLite's lock is not fair: a
    /// renewal can lose it to a busy writer again and again), and this transaction holds the
    /// lock already.
    pub(super) fn due(&self) -> bool {
        self.claim.tenure.running_out(self.claim.ttl * 2 / 3)
    }

    /// Inside a write transaction on `db`: fails with `LeaseLost` unless the leases are still
    /// the claim's, and (with `renew`) extends them, as a heartbeat would.
    pub(super) fn hold(&self, db: &rusqlite::Connection, renew: bool) -> anyhow::Result<()> {
        let (owner, keys) = (&*self.claim.owner, &self.keys_json);
        let asked = Instant::now();
        let held: usize = if renew {
            db.prepare_cached(
                "UPDATE leases SET heartbeat_at = ?3, expires_at = ?4 \
                 WHERE owner = ?1 AND computation_key IN (SELECT value FROM json_each(?2))",
            )?
            .execute(params![owner, keys, now(), expiry(self.claim.ttl)])?
        } else {
            db.prepare_cached(
                "SELECT count(*) FROM leases WHERE owner = ?1 AND computation_key IN (SELECT value FROM json_each(?2))",
            )?
            .query_row(params![owner, keys], |r| r.get::<_, i64>(0))? as usize
        };
        if held < self.keys {
            return Err(LeaseLost { keys: self.names.clone() }.into());
        }
        if renew {
            self.claim.tenure.renewed(asked, self.claim.ttl);
        }
        Ok(())
    }
}

impl Store {
    /// An IMMEDIATE transaction in which this store's claim still holds the leases of `keys`,
    /// else `LeaseLost` (no check without a claim). A pass that waited past its lease (stalled,
    /// or behind a lock) must not settle, open or close what the new holder's pass is doing.
    pub(super) async fn begin_holding(
        &self,
        keys: &[String],
    ) -> anyhow::Result<sqlx::Transaction<'static, sqlx::Sqlite>> {
        let mut tx = self.begin_immediate().await?;
        let Some(claim) = &self.claim else { return Ok(tx) };
        let held: i64 = sqlx::query_scalar(
            "SELECT count(*) FROM leases WHERE owner = ?1 AND computation_key IN (SELECT value FROM json_each(?2))",
        )
        .bind(&*claim.owner)
        .bind(serde_json::to_string(keys)?)
        .fetch_one(&mut *tx)
        .await?;
        if (held as usize) < keys.len() {
            return Err(LeaseLost { keys: keys.join(", ") }.into());
        }
        Ok(tx)
    }

    /// Which of `keys` this store's claim still holds, inside the write transaction `tx` (all of
    /// them without a claim).
    pub(super) async fn held_among(
        &self,
        tx: &mut sqlx::SqliteConnection,
        keys: &[String],
    ) -> anyhow::Result<Vec<String>> {
        let Some(claim) = &self.claim else { return Ok(keys.to_vec()) };
        Ok(sqlx::query_scalar(
            "SELECT computation_key FROM leases WHERE owner = ?1 AND computation_key IN (SELECT value FROM json_each(?2))",
        )
        .bind(&*claim.owner)
        .bind(serde_json::to_string(keys)?)
        .fetch_all(&mut *tx)
        .await?)
    }

    /// As `begin_holding`, for the computation of the `sync_runs` row `run`.
    pub(super) async fn begin_holding_run(&self, run: i64) -> anyhow::Result<sqlx::Transaction<'static, sqlx::Sqlite>> {
        if self.claim.is_none() {
            return Ok(self.begin_immediate().await?);
        }
        let key: Option<String> = sqlx::query_scalar("SELECT computation_key FROM sync_runs WHERE id = ?1")
            .bind(run)
            .fetch_optional(&self.pool)
            .await?;
        self.begin_holding(&key.into_iter().collect::<Vec<_>>()).await
    }
}

/// Inside a write transaction of `check`'s writer: `LeaseCheck::hold`, when there is a check.
pub(super) fn hold(db: &rusqlite::Connection, check: Option<&LeaseCheck>, renew: bool) -> anyhow::Result<()> {
    check.map_or(Ok(()), |c| c.hold(db, renew))
}

/// Inside a write transaction: takes the lease of `key` unless a live process holds it.
async fn take_lease(
    tx: &mut sqlx::SqliteConnection,
    key: &str,
    owner: &LeaseOwner,
    at: &str,
    expires: &str,
) -> anyhow::Result<Result<(), HeldLease>> {
    let held: Option<HeldLease> = sqlx::query_as(
        "SELECT computation_key, pid, host, expires_at, process FROM leases WHERE computation_key = ?1 AND owner <> ?2 AND expires_at > ?3",
    )
    .bind(key)
    .bind(&owner.id)
    .bind(at)
    .fetch_optional(&mut *tx)
    .await?;
    if let Some(h) = held {
        // A holder whose process is gone (killed, crashed) cannot renew its lease: take it
        // over now rather than when it expires.
        if !holder_gone(&h, owner) {
            return Ok(Err(h));
        }
        tracing::info!(key, pid = h.pid, "taking over the lease of a process that is gone");
    }
    sqlx::query(
        "INSERT INTO leases (computation_key, owner, pid, host, acquired_at, heartbeat_at, expires_at, process) \
         VALUES (?1, ?2, ?3, ?4, ?5, ?5, ?6, ?7) ON CONFLICT (computation_key) DO UPDATE SET owner = excluded.owner, \
         pid = excluded.pid, host = excluded.host, acquired_at = excluded.acquired_at, \
         heartbeat_at = excluded.heartbeat_at, expires_at = excluded.expires_at, process = excluded.process",
    )
    .bind(key)
    .bind(&owner.id)
    .bind(i64::from(owner.pid))
    .bind(&owner.host)
    .bind(at)
    .bind(expires)
    .bind(owner.process.as_ref().map(ToString::to_string))
    .execute(&mut *tx)
    .await?;
    Ok(Ok(()))
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
        let mut taken = self.acquire_leases(&[key.to_string()], owner, ttl).await?;
        Ok(taken.pop().expect("one answer per key"))
    }

    /// `acquire_lease` for each of `keys`, in one transaction: a pass over a thousand
    /// computations would otherwise open a thousand before its first load.
    pub async fn acquire_leases(
        &self,
        keys: &[String],
        owner: &LeaseOwner,
        ttl: Duration,
    ) -> anyhow::Result<Vec<Result<(), HeldLease>>> {
        let mut tx = self.begin_immediate().await?;
        let (at, expires) = (now(), expiry(ttl));
        let mut answers = Vec::with_capacity(keys.len());
        for key in keys {
            answers.push(take_lease(&mut tx, key, owner, &at, &expires).await?);
        }
        tx.commit().await?;
        Ok(answers)
    }

    /// Extends the leases of `keys` that `owner` holds, on a connection of its own whose lock
    /// wait is bounded by `wait` (a renewal stuck behind a long write would outlive the lease).
    /// Fails with `LeaseLost` when one of them is no longer ours. Blocking.
    pub fn renew_leases(
        &self,
        owner: &LeaseOwner,
        keys: &[String],
        ttl: Duration,
        wait: Duration,
    ) -> anyhow::Result<()> {
        let db = rusqlite::Connection::open_with_flags(&self.path, rusqlite::OpenFlags::SQLITE_OPEN_READ_WRITE)?;
        db.busy_timeout(wait)?;
        let check = LeaseCheck::new(Claim { owner: owner.id.as_str().into(), ttl, tenure: Tenure::default() }, keys)?;
        db.execute_batch("BEGIN IMMEDIATE")?;
        check.hold(&db, true)?;
        db.execute_batch("COMMIT")?;
        Ok(())
    }

    /// Every live lease: who runs a pass of what now.
    pub async fn live_leases(&self) -> anyhow::Result<Vec<HeldLease>> {
        Ok(sqlx::query_as(
            "SELECT computation_key, pid, host, expires_at, process FROM leases WHERE expires_at > ?1 ORDER BY computation_key",
        )
        .bind(now())
        .fetch_all(&self.pool)
        .await?)
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

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use crate::state::testing::store_with_audience;
    use crate::state::{LeaseLost, LeaseOwner, Mode, Trigger};

    /// A pass that waited past its lease (stalled, or behind a lock) while another process took
    /// the computation over: what it would settle or close is the new holder's (review finding).
    #[tokio::test]
    async fn a_pass_whose_lease_was_taken_neither_settles_nor_opens_nor_closes_runs() {
        let dir = tempfile::tempdir().unwrap();
        let (store, db) = store_with_audience(dir.path()).await;
        let (old, new) = (LeaseOwner::this_process(), LeaseOwner::this_process());
        let ttl = Duration::from_secs(60);
        store.acquire_lease("a", &old, ttl).await.unwrap().unwrap();
        let stale = store.claimed_by(&old, ttl, &crate::tenure::UNBOUNDED);
        let own = stale.start_run("a", Trigger::Manual, Mode::Initial).await.unwrap();
        // The new holder took the lease, closed the stale run as interrupted (starting its
        // own), and noted a window it is sending.
        db.execute("UPDATE leases SET owner = ?1", [&new.id]).unwrap();
        let running = store
            .claimed_by(&new, ttl, &crate::tenure::UNBOUNDED)
            .start_run("a", Trigger::Manual, Mode::Initial)
            .await
            .unwrap();
        db.execute(
            "INSERT INTO sending_windows (computation_key, after_user, last_user, noted_at) VALUES ('a', '', 'u9', 't')",
            [],
        )
        .unwrap();

        let lost = |e: anyhow::Error| e.downcast_ref::<LeaseLost>().is_some();
        assert!(lost(stale.settle_sending_windows("a").await.unwrap_err()));
        assert!(lost(stale.start_run("a", Trigger::Manual, Mode::Delta).await.unwrap_err()));
        assert!(lost(stale.interrupt_runs(&["a".to_string()], "abandoned").await.unwrap_err()));
        // Not even its own run: the new holder closed it.
        let counts = crate::state::RunCounts::default();
        assert!(lost(stale.note_diff(own, &counts).await.unwrap_err()));
        assert!(lost(stale.fail_run(own, "failed").await.unwrap_err()));
        let end =
            crate::state::RunEnd { id: own, key: "a".into(), status: crate::state::RunStatus::Ok, counts, error: None };
        assert_eq!(stale.finish_runs(&[end]).await.unwrap(), ["a"], "its run is not closed, its lease is lost");
        let closed: String = db.query_row("SELECT status FROM sync_runs WHERE id = ?1", [own], |r| r.get(0)).unwrap();
        assert_eq!(closed, "interrupted");
        let windows: i64 = db.query_row("SELECT count(*) FROM sending_windows", [], |r| r.get(0)).unwrap();
        assert_eq!(windows, 1, "the new holder's window is still noted");
        let status: String =
            db.query_row("SELECT status FROM sync_runs WHERE id = ?1", [running], |r| r.get(0)).unwrap();
        assert_eq!(status, "running", "the new holder's run is still running");
    }

    /// A pass takes the leases of all its computations in one transaction: each free one is
    /// taken, each held by a live process is left to it and named.
    #[tokio::test]
    async fn leases_taken_together_leave_the_ones_a_live_process_holds() {
        let dir = tempfile::tempdir().unwrap();
        let (store, db) = store_with_audience(dir.path()).await;
        let (other, ours) = (LeaseOwner::this_process(), LeaseOwner::this_process());
        let ttl = Duration::from_secs(60);
        store.acquire_lease("b", &other, ttl).await.unwrap().unwrap();

        let keys: Vec<String> = ["a", "b", "c"].map(String::from).to_vec();
        let taken = store.acquire_leases(&keys, &ours, ttl).await.unwrap();
        assert!(taken[0].is_ok() && taken[2].is_ok(), "{taken:?}");
        assert_eq!(taken[1].as_ref().unwrap_err().computation_key, "b");
        let owners: Vec<(String, String)> = db
            .prepare("SELECT computation_key, owner FROM leases ORDER BY computation_key")
            .unwrap()
            .query_map([], |r| Ok((r.get(0)?, r.get(1)?)))
            .unwrap()
            .map(Result::unwrap)
            .collect();
        let expected = [("a", &ours.id), ("b", &other.id), ("c", &ours.id)];
        assert_eq!(owners, expected.map(|(k, o)| (k.to_string(), o.clone())).to_vec());
    }

    /// A pass whose lease of one computation was taken over closes the runs of the others and
    /// names only the one lost (review finding: closing them all in one transaction that checked
    /// every lease left every run of the round open and named them all).
    #[tokio::test]
    async fn runs_close_but_the_one_whose_lease_was_taken() {
        let dir = tempfile::tempdir().unwrap();
        let (store, db) = store_with_audience(dir.path()).await;
        db.execute("INSERT INTO computations (key, name, kind, created_at) VALUES ('b', 'B', 'audience', 't0')", [])
            .unwrap();
        let (ours, thief) = (LeaseOwner::this_process(), LeaseOwner::this_process());
        let ttl = Duration::from_secs(60);
        let keys: Vec<String> = ["a", "b"].map(String::from).to_vec();
        assert!(store.acquire_leases(&keys, &ours, ttl).await.unwrap().iter().all(Result::is_ok));
        let pass = store.claimed_by(&ours, ttl, &crate::tenure::UNBOUNDED);
        let a = pass.start_run("a", Trigger::Manual, Mode::Delta).await.unwrap();
        let b = pass.start_run("b", Trigger::Manual, Mode::Delta).await.unwrap();
        db.execute("UPDATE leases SET owner = ?1 WHERE computation_key = 'b'", [&thief.id]).unwrap();

        let end = |id, key: &str| crate::state::RunEnd {
            id,
            key: key.into(),
            status: crate::state::RunStatus::Ok,
            counts: crate::state::RunCounts::default(),
            error: None,
        };
        assert_eq!(pass.finish_runs(&[end(a, "a"), end(b, "b")]).await.unwrap(), ["b"]);
        let status = |id: i64| -> String {
            db.query_row("SELECT status FROM sync_runs WHERE id = ?1", [id], |r| r.get(0)).unwrap()
        };
        assert_eq!((status(a), status(b)), ("ok".to_string(), "running".to_string()));
    }
}
