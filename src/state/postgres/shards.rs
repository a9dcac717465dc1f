//! Delivery shards in PostgreSQL (`delivery_shards`): opened by the worker that holds a pass,
//! claimed by any worker, on the database's clock as leases are. A claim is checked inside every
//! answer transaction of its shard (`hold_shard`), so a worker whose claim lapsed, or whose
//! pass was taken over (its round's run no longer running), writes nothing more.

use std::collections::BTreeMap;

use sqlx::{AssertSqlSafe, PgConnection};

use super::{DB_NOW, Store};
use crate::state::{LeaseLost, ShardClaim, ShardProgress, ShardsOf, Tenure};

/// The shard a store's delivery reads and records: its claim, and whether this worker also
/// holds the pass (then the computations' leases are checked too).
#[derive(Debug, Clone)]
pub(super) struct Delivering {
    pub claim: ShardClaim,
    pub holds_pass: bool,
}

/// SQL: the pending row `m`'s user is in shard `$shard` of `$shards`.
pub(super) fn in_shard(shard: &str, shards: &str) -> String {
    format!("abs(hashtextextended(m.user_id, 0) % {shards}) = {shard}")
}

/// SQL: the `delivery_shards` row `d` is one of `ShardsOf`, bound by `which` as $1, $2 and
/// `except`. A computation is found in `runs` as text (`"key":`), not cast to JSON: a row an
/// operator mangled by hand must not fail every worker's query (it is parsed only once claimed,
/// and a delivery whose run ended is ignored).
fn which_sql(except: &str) -> String {
    format!(
        "(d.round_id = $1 OR strpos(d.runs, to_json($2::text)::text || ':') > 0 \
         OR ({except}::bigint[] IS NOT NULL AND d.round_id <> ALL({except})))"
    )
}

/// `ShardsOf` as the parameters of `which_sql`: a round, a computation, the rounds excepted.
fn which<'a>(of: ShardsOf<'a>) -> (Option<i64>, Option<&'a str>, Option<&'a [i64]>) {
    match of {
        ShardsOf::Round(round) => (Some(round), None, None),
        ShardsOf::Computation(key) => (None, Some(key), None),
        ShardsOf::Any { except } => (None, None, Some(except)),
    }
}

/// SQL: the round of the `delivery_shards` row `d` is still being delivered.
const ROUND_RUNNING: &str = "EXISTS (SELECT 1 FROM sync_runs r WHERE r.id = d.round_id AND r.status = 'running')";

impl Store {
    /// This store, reading and recording the users of the shard `claim` only.
    /// Its sending is bounded by the shard claim's `tenure`.
    pub fn delivering_shard(&self, claim: &ShardClaim, holds_pass: bool, tenure: &Tenure) -> Store {
        Store { shard: Some(Delivering { claim: claim.clone(), holds_pass }), ..self.with_tenure(tenure) }
    }

    pub fn is_claimed(&self) -> bool {
        self.claim.is_some()
    }

    /// The shard this store delivers, as (shard, shards).
    pub(super) fn shard_filter(&self) -> Option<(i32, i32)> {
        self.shard.as_ref().map(|d| (d.claim.shard, d.claim.shards))
    }

    /// Opens `shards` shards of the delivery `round` of `runs` to `destination` (checked against
    /// the pass's leases), and drops the shards of deliveries whose runs have ended.
    pub async fn open_shards(
        &self,
        round: i64,
        shards: i32,
        runs: &BTreeMap<String, i64>,
        destination: &str,
    ) -> anyhow::Result<()> {
        let keys: Vec<String> = runs.keys().cloned().collect();
        let mut tx = self.begin_holding(&keys).await?;
        sqlx::query(AssertSqlSafe(format!("DELETE FROM delivery_shards d WHERE NOT {ROUND_RUNNING}")))
            .execute(&mut *tx)
            .await?;
        sqlx::query(
            "INSERT INTO delivery_shards (round_id, shard, shards, runs, destination) \
             SELECT $1, s, $2, $3, $4 FROM generate_series(0, $2 - 1) s ON CONFLICT DO NOTHING",
        )
        .bind(round)
        .bind(shards)
        .bind(serde_json::to_string(runs)?)
        .bind(destination)
        .execute(&mut *tx)
        .await?;
        tx.commit().await?;
        Ok(())
    }

    /// Claims a shard that is neither done nor claimed (or whose claim lapsed) of a delivery to
    /// `destination` still running; `None` when there is none.
    pub async fn claim_shard(&self, of: ShardsOf<'_>, destination: &str) -> anyhow::Result<Option<ShardClaim>> {
        let Some(claim) = &self.claim else { return Ok(None) };
        let (round, key, except) = which(of);
        let owner = claim.owner();
        loop {
            let row: Option<(i64, i32, i32, String)> = sqlx::query_as(AssertSqlSafe(format!(
                "UPDATE delivery_shards SET owner = $3, pid = $4, host = $5, expires_at = {expiry} \
                 WHERE (round_id, shard) = (SELECT round_id, shard FROM delivery_shards d \
                     WHERE d.done_at IS NULL AND (d.owner IS NULL OR d.expires_at <= {DB_NOW}) \
                     AND {which} AND d.destination = $8 AND {ROUND_RUNNING} \
                     ORDER BY d.round_id, d.shard LIMIT 1 FOR UPDATE SKIP LOCKED) \
                 RETURNING round_id, shard, shards, runs",
                expiry = super::leases::expiry("$6"),
                which = which_sql("$7"),
            )))
            .bind(round)
            .bind(key)
            .bind(&owner.id)
            .bind(i64::from(owner.pid))
            .bind(&owner.host)
            .bind(claim.ttl().as_millis() as i64)
            .bind(except)
            .bind(destination)
            .fetch_optional(&self.pool)
            .await?;
            let Some((round, shard, shards, runs)) = row else { return Ok(None) };
            let runs = match serde_json::from_str(&runs) {
                Ok(_) if !(0..shards).contains(&shard) => Err(format!("shard {shard} of {shards} is no shard")),
                parsed => parsed.map_err(|e| format!("runs are not JSON: {e}")),
            };
            match runs {
                Ok(runs) => return Ok(Some(ShardClaim { round, shard, shards, runs })),
                Err(why) => self.set_aside(round, shard, &why).await?,
            }
        }
    }

    /// Marks done, undelivered, a claimed shard that cannot be delivered as written (edited by
    /// hand: `runs` not JSON, a shard number outside its count, which would divide by zero or
    /// match no one): its rows stay pending, and its pass ends incomplete, for the next one to
    /// send them; claimed again and again instead, it would hold its pass until every worker
    /// gave up.
    async fn set_aside(&self, round: i64, shard: i32, why: &str) -> anyhow::Result<()> {
        tracing::error!(
            round_id = round,
            shard,
            why,
            "a delivery_shards row cannot be delivered (edited by hand?): set aside; its rows stay pending for the next pass"
        );
        sqlx::query(AssertSqlSafe(format!(
            "UPDATE delivery_shards SET done_at = {DB_NOW}, expires_at = NULL WHERE round_id = $1 AND shard = $2"
        )))
        .bind(round)
        .bind(shard)
        .execute(&self.pool)
        .await?;
        Ok(())
    }

    /// The answers recorded on the run `run`: delivered, failed.
    pub async fn run_answers(&self, run: i64) -> anyhow::Result<Option<(i64, i64)>> {
        Ok(sqlx::query_as("SELECT delivered, failed FROM sync_runs WHERE id = $1")
            .bind(run)
            .fetch_optional(&self.pool)
            .await?)
    }

    /// Extends this worker's claim of `shard`; `LeaseLost` when it lapsed, went to another
    /// worker, or its delivery ended.
    pub async fn renew_shard(&self, shard: &ShardClaim) -> anyhow::Result<()> {
        let Some(claim) = &self.claim else { return Ok(()) };
        let renewed = sqlx::query(AssertSqlSafe(format!(
            "UPDATE delivery_shards d SET expires_at = {} WHERE round_id = $1 AND shard = $2 AND owner = $3 \
             AND expires_at > {DB_NOW} AND done_at IS NULL AND {ROUND_RUNNING}",
            super::leases::expiry("$4")
        )))
        .bind(shard.round)
        .bind(shard.shard)
        .bind(&claim.owner().id)
        .bind(claim.ttl().as_millis() as i64)
        .execute(&self.pool)
        .await?
        .rows_affected();
        lost_unless(renewed == 1, shard.round, shard.shard)
    }

    /// Marks `shard` delivered, with what delivering it did (`report`, JSON).
    pub async fn finish_shard(&self, shard: &ShardClaim, report: &str) -> anyhow::Result<()> {
        let Some(claim) = &self.claim else { return Ok(()) };
        let mut tx = self.pool.begin().await?;
        hold_shard(&mut tx, &claim.owner().id, shard.round, shard.shard, true).await?;
        sqlx::query(AssertSqlSafe(format!(
            "UPDATE delivery_shards SET done_at = {DB_NOW}, expires_at = NULL, report = $3 \
             WHERE round_id = $1 AND shard = $2"
        )))
        .bind(shard.round)
        .bind(shard.shard)
        .bind(report)
        .execute(&mut *tx)
        .await?;
        tx.commit().await?;
        Ok(())
    }

    /// Gives `shard` back undone (a stop, a failure), for any worker to claim at once.
    pub async fn release_shard(&self, shard: &ShardClaim) -> anyhow::Result<()> {
        let Some(claim) = &self.claim else { return Ok(()) };
        sqlx::query(
            "UPDATE delivery_shards SET owner = NULL, pid = NULL, host = NULL, expires_at = NULL \
             WHERE round_id = $1 AND shard = $2 AND owner = $3 AND done_at IS NULL",
        )
        .bind(shard.round)
        .bind(shard.shard)
        .bind(&claim.owner().id)
        .execute(&self.pool)
        .await?;
        Ok(())
    }

    /// How many shards of `of` are not done yet, of deliveries to `destination` still running.
    pub async fn shards_left(&self, of: ShardsOf<'_>, destination: &str) -> anyhow::Result<u64> {
        let (round, key, except) = which(of);
        let left: i64 = sqlx::query_scalar(AssertSqlSafe(format!(
            "SELECT count(*) FROM delivery_shards d WHERE d.done_at IS NULL \
             AND {} AND d.destination = $4 AND {ROUND_RUNNING}",
            which_sql("$3")
        )))
        .bind(round)
        .bind(key)
        .bind(except)
        .bind(destination)
        .fetch_one(&self.pool)
        .await?;
        Ok(left as u64)
    }

    /// The deliveries in shards still running, with the workers delivering them now.
    pub async fn shard_progress(&self) -> anyhow::Result<Vec<ShardProgress>> {
        let rows: Vec<(String, i64, i64, Option<String>)> = sqlx::query_as(AssertSqlSafe(format!(
            "SELECT d.runs, count(*), count(d.done_at), string_agg(DISTINCT CASE WHEN d.done_at IS NULL \
             AND d.expires_at > {DB_NOW} THEN 'pid ' || d.pid || ' on ' || d.host END, ', ') \
             FROM delivery_shards d WHERE {ROUND_RUNNING} GROUP BY d.round_id, d.runs ORDER BY d.round_id"
        )))
        .fetch_all(&self.pool)
        .await?;
        rows.into_iter()
            .map(|(runs, total, done, workers)| {
                let keys = serde_json::from_str::<BTreeMap<String, i64>>(&runs)?.into_keys().collect();
                let workers = workers.map(|w| w.split(", ").map(String::from).collect()).unwrap_or_default();
                Ok(ShardProgress { keys, done, total, workers })
            })
            .collect()
    }

    /// The reports of the done shards of `round`.
    pub async fn shard_reports(&self, round: i64) -> anyhow::Result<Vec<String>> {
        Ok(sqlx::query_scalar(
            "SELECT report FROM delivery_shards WHERE round_id = $1 AND done_at IS NOT NULL AND report IS NOT NULL",
        )
        .bind(round)
        .fetch_all(&self.pool)
        .await?)
    }
}

/// Inside a write transaction: fails with `LeaseLost` unless `owner` still holds the claim of
/// the shard, unlapsed, undone, its delivery still running, the state still synced to its
/// destination; the rows stay locked until the transaction ends, so a claim taken over, or a
/// resync moving the state (it locks `state_destination` first), waits for it.
pub(super) async fn hold_shard(
    db: &mut PgConnection,
    owner: &str,
    round: i64,
    shard: i32,
    lock: bool,
) -> anyhow::Result<()> {
    let lock = if lock { "FOR KEY SHARE OF d, s" } else { "" };
    let held = sqlx::query(AssertSqlSafe(format!(
        "SELECT 1 FROM delivery_shards d JOIN state_destination s ON s.identity = d.destination \
         WHERE d.round_id = $1 AND d.shard = $2 AND d.owner = $3 \
         AND d.expires_at > {DB_NOW} AND d.done_at IS NULL AND {ROUND_RUNNING} {lock}"
    )))
    .bind(round)
    .bind(shard)
    .bind(owner)
    .fetch_optional(&mut *db)
    .await?;
    lost_unless(held.is_some(), round, shard)
}

fn lost_unless(held: bool, round: i64, shard: i32) -> anyhow::Result<()> {
    if held {
        return Ok(());
    }
    Err(LeaseLost { keys: format!("delivery shard {shard} of pass {round}") }.into())
}
